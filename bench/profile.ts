/**
 * Workloads to profile (not a benchmark: `bench/run.ts` only runs `*.bench.ts`). Each mode
 * repeats one hot path for a few seconds so a CPU profile has enough samples:
 *
 *   fault        kvmTdpPageFault over every page of a 1 GiB memfd slot, frames zeroed on hand-out
 *   fault-fresh  the same on a fresh host: no frame needs zeroing (the fault path without memset)
 *   guest-fault  a guest program writing every page of a 1 GiB memfd slot (vCPU → fault path)
 *   private      kvmTdpPageFault over every page of a 1 GiB private guest_memfd slot
 *   access       guest 8-byte loads over 1 MiB of mapped memory (JIT)
 *   interp       the same with the interpreter (vcpu.useJit = false)
 *   scan         a guest reading one dword per 4 KiB page over 256 MiB of KVM_MEM_ALLONES holes
 *                (bench/allones.bench.ts's ECAM scan), SPTEs warm: every read a TLB miss
 *   scan-cold    the same with the SPTEs zapped before each scan: every read a fault
 *   setup        32764 × KVM_SET_USER_MEMORY_REGION into an empty VM
 *   convert      4 KiB attribute conversions inside a 1 GiB guest_memfd slot
 *   punch        punch 1 GiB of a guest_memfd whose pages are all mapped private (the faults that
 *                map them are not measured), then fallocate the 1 GiB again (measured too)
 *
 * Profile one, then list where its time goes (self time, restricted to the measured intervals):
 *
 *   node --import tsx --cpu-prof --cpu-prof-dir=.prof_tmp bench/profile.ts fault .prof_tmp/fault.json
 *   npx tsx bench/cpuprofile_top.ts .prof_tmp/*.cpuprofile --windows .prof_tmp/fault.json
 *
 * The second argument names a file that receives the measured intervals (timestamps on the
 * profiler's clock): the analyser keeps only the samples inside them, garbage collection
 * included, so set-up and tear-down around the measured part do not count. (`--cpu-prof` also
 * writes a profile of tsx's loader thread; the analyser picks the file with the most samples in
 * the intervals.)
 */
import { writeFileSync } from 'node:fs';
import { createHost } from '../src/core/host.js';
import type { TdpMmu } from '../src/core/mmu/tdp_mmu.js';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  KVM_CAP_GUESTMEM_ALLONES,
  KVM_MEM_ALLONES,
  MAP_ANONYMOUS,
  MAP_NORESERVE,
  MAP_PRIVATE,
  PROT_READ,
  PROT_WRITE,
} from '../src/core/uapi.js';
import { type Program, program } from '../src/core/vcpu/program.js';
import type { KvmVcpu } from '../src/core/vcpu/vcpu.js';
import {
  closeGmemVm,
  closeRamVm,
  faultAll,
  GiB,
  gmemVm,
  PAGE,
  PAGES_1G,
  pinDirtySections,
  ramVm,
} from './kvm_fixtures.js';

const SECONDS = Number(process.env['PROFILE_SECONDS'] ?? 8);

/** The measured intervals, [start, end] in µs of the monotonic clock V8's profiler stamps samples with. */
const windows: [number, number][] = [];

/** Runs the measured part of a workload, recording its interval (set-up and tear-down stay out). */
function measured<T>(fn: () => T): T {
  const t0 = Number(process.hrtime.bigint() / 1000n);
  const r = fn();
  windows.push([t0, Number(process.hrtime.bigint() / 1000n)]);
  return r;
}

function repeat(work: () => void): number {
  const end = performance.now() + SECONDS * 1e3;
  let n = 0;
  while (performance.now() < end) {
    work();
    n++;
  }
  return n;
}

function touchEveryPage(): Program {
  return program((b) =>
    b
      .mov('r9', 0)
      .loop('r10', PAGES_1G, (l) => l.storeImm(8, { base: 'r9', disp: 0 }, 1).add('r9', PAGE))
      .halt(),
  );
}

/** Runs `mode`, its measured part inside `measured(…)`. */
function workload(mode: string): void {
  const host = createHost();
  switch (mode) {
    case 'fault':
    case 'fault-fresh': {
      if (mode === 'fault') pinDirtySections(host.kernel.alloc, PAGES_1G + 1024);
      repeat(() => {
        const r = ramVm(host, GiB);
        measured(() => faultAll(r.vm, PAGES_1G));
        closeRamVm(host, r);
      });
      break;
    }
    case 'private': {
      pinDirtySections(host.kernel.alloc, PAGES_1G + 1024);
      repeat(() => {
        const g = gmemVm(host, GiB, true);
        measured(() => faultAll(g.vm, PAGES_1G));
        closeGmemVm(host, g);
      });
      break;
    }
    case 'guest-fault': {
      pinDirtySections(host.kernel.alloc, PAGES_1G + 1024);
      const prog = touchEveryPage();
      repeat(() => {
        const r = ramVm(host, GiB);
        const v = r.vm.createVcpu(0) as KvmVcpu;
        v.setProgram(prog);
        measured(() => v.run());
        v.close();
        closeRamVm(host, r);
      });
      break;
    }
    case 'access':
    case 'interp': {
      const r = ramVm(host, 8 * 2 ** 20);
      const v = r.vm.createVcpu(0) as KvmVcpu;
      v.useJit = mode === 'access';
      const prog = program((b) =>
        b
          .loop('r12', 16, (outer) =>
            outer.mov('r9', 2 * 2 ** 20).loop('r10', 2 ** 20 / 8 / 64, (l) => {
              for (let i = 0; i < 64; i++) l.load(8, 'r11', { base: 'r9', disp: 8 * i });
              l.add('r9', 512);
            }),
          )
          .halt(),
      );
      repeat(() => {
        v.setProgram(prog);
        measured(() => v.run());
      });
      break;
    }
    case 'setup': {
      const N = 32764;
      const SLOT = 2 * 2 ** 20;
      repeat(() => {
        const kvm = host.openKvm();
        const vm = kvm.createVm(0);
        kvm.close();
        const hva = host.mmap(
          0,
          N * SLOT,
          PROT_READ | PROT_WRITE,
          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
          -1,
          0,
        );
        measured(() => {
          for (let i = 0; i < N; i++) {
            vm.setUserMemoryRegion({
              slot: i,
              flags: 0,
              guestPhysAddr: i * SLOT,
              memorySize: SLOT,
              userspaceAddr: hva + i * SLOT,
            });
          }
        });
        vm.close();
        host.munmap(hva, N * SLOT);
      });
      break;
    }
    case 'convert': {
      const g = gmemVm(host, GiB, false);
      let first = 0;
      repeat(() => {
        measured(() => {
          for (let i = 0; i < 2048; i++) {
            const address = (first + 2 * i) * PAGE;
            g.vm.setMemoryAttributes({ address, size: PAGE, attributes: 8, flags: 0 });
          }
          for (let i = 0; i < 2048; i++) {
            const address = (first + 2 * i) * PAGE;
            g.vm.setMemoryAttributes({ address, size: PAGE, attributes: 0, flags: 0 });
          }
        });
        first = (first + 40_961) % (PAGES_1G - 4096);
      });
      closeGmemVm(host, g);
      break;
    }
    case 'scan':
    case 'scan-cold': {
      const ecam = 0xb000_0000;
      const bytes = 256 * 2 ** 20;
      const h = createHost({ kvm: { extensions: { allones: true } } });
      const r = ramVm(h, 2 ** 20);
      r.vm.enableCap({ cap: KVM_CAP_GUESTMEM_ALLONES, args: [] });
      r.vm.setUserMemoryRegion2({
        slot: 1,
        flags: KVM_MEM_ALLONES,
        guestPhysAddr: ecam,
        memorySize: bytes,
        userspaceAddr: 0,
      });
      const v = r.vm.createVcpu(0) as KvmVcpu;
      v.setProgram(
        program((b) =>
          b
            .mov('r9', ecam)
            .loop('r10', bytes / PAGE, (l) => l.load(4, 'r8', { base: 'r9', disp: 0 }).add('r9', PAGE))
            .halt(),
        ),
      );
      v.run(); // maps every hole page and compiles the program
      const mmu = r.vm.kvm.mmu[0] as TdpMmu;
      repeat(() => {
        if (mode === 'scan-cold') mmu.zapAll();
        v.setRegs({ rip: 0x1000n }); // restart the loaded program (DEFAULT_PROGRAM_LAYOUT)
        measured(() => v.run());
      });
      v.close();
      closeRamVm(h, r);
      h.dispose();
      break;
    }
    case 'punch': {
      pinDirtySections(host.kernel.alloc, PAGES_1G + 1024);
      const g = gmemVm(host, GiB, true);
      repeat(() => {
        faultAll(g.vm, PAGES_1G);
        measured(() => host.fallocate(g.gmem, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, GiB));
        measured(() => host.fallocate(g.gmem, FALLOC_FL_KEEP_SIZE, 0, GiB));
        host.fallocate(g.gmem, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, GiB);
      });
      closeGmemVm(host, g);
      break;
    }
    default:
      throw new Error(
        `unknown mode ${mode}: fault, fault-fresh, guest-fault, private, access, interp, scan, scan-cold, setup, convert, punch`,
      );
  }
}

const mode = process.argv[2] ?? 'fault';
workload(mode);
const out = process.argv[3];
if (out) writeFileSync(out, JSON.stringify(windows));
console.log(`${mode}: ${windows.length} measured intervals${out ? ` written to ${out}` : ''}`);
