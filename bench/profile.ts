/**
 * Workloads to profile (not a benchmark: `bench/run.ts` only runs `*.bench.ts`). Each mode
 * repeats one hot path for a few seconds so a CPU profile has enough samples:
 *
 *   fault        kvmTdpPageFault over every page of a 1 GiB memfd slot, frames zeroed on hand-out
 *   guest-fault  a guest program writing every page of a 1 GiB memfd slot (vCPU → fault path)
 *   private      kvmTdpPageFault over every page of a 1 GiB private guest_memfd slot
 *   access       guest 8-byte loads over 1 MiB of mapped memory (JIT)
 *   interp       the same with the interpreter (vcpu.useJit = false)
 *   setup        32764 × KVM_SET_USER_MEMORY_REGION into an empty VM
 *   convert      4 KiB attribute conversions inside a 1 GiB guest_memfd slot
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
import { MAP_ANONYMOUS, MAP_NORESERVE, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../src/core/uapi.js';
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
    case 'fault': {
      pinDirtySections(host.kernel.alloc, PAGES_1G + 1024);
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
    default:
      throw new Error(`unknown mode ${mode}: fault, guest-fault, private, access, interp, setup, convert`);
  }
}

const mode = process.argv[2] ?? 'fault';
workload(mode);
const out = process.argv[3];
if (out) writeFileSync(out, JSON.stringify(windows));
console.log(`${mode}: ${windows.length} measured intervals${out ? ` written to ${out}` : ''}`);
