/**
 * The model against the real /dev/kvm: the same operation sequences on both backends in one run,
 * through the `Host` interface of src/core/api.ts only, reported side by side with their ratio
 * (on the real row: real ÷ model, or model ÷ real when the model is the slower one).
 *
 * 1. a memslot create + delete pair (a 2 MiB slot over a memfd mapping), median per pair;
 * 2. fallocate of 1 GiB (KEEP_SIZE) of a guest_memfd, and the punch of 1 GiB, per operation
 *    (an MMAP + INIT_SHARED guest_memfd of a DEFAULT VM);
 * 3. an MMIO exit round trip: a guest loop of loads from a gpa without a memslot, each exiting
 *    as KVM_EXIT_MMIO and completed by the bench through `vcpu.kvmRun.mmio.data`, per exit;
 * 4. a guest loop of 8-byte reads over a few mapped pages (no exits), per read. The number of
 *    passes is calibrated on the real backend (measured first) so that one real run takes about
 *    0.35 s, however loaded the machine is; the model runs the same program.
 *
 * On the development machines /dev/kvm is PVM (docs/host-deviations.md #12): guest code runs at
 * about 2 M instructions/s and an exit costs 8–15 µs, so every real-kernel row says "software KVM
 * (PVM)" and none of its figures carries over to hardware KVM. Where the real backend cannot be
 * used here, its rows are left out and one row says why; the model rows are always measured.
 * Every guest program ends in HLT (the real vCPU's run watchdog is a safety net, never a stop).
 * The real memslot pair is the least stable figure: on a busy 2-CPU development machine the same
 * loop measured about 70 µs in one run and 8–14 ms in another (and moved between the two within
 * one process), so compare it only within a run, on a quiet machine.
 *
 * Run alone: `npx tsx bench/realkvm.bench.ts`.
 */
import { existsSync } from 'node:fs';
import type { Host, RunResult, Vcpu, Vm } from '../src/core/api.js';
import { createHost } from '../src/core/host.js';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  GUEST_MEMFD_FLAG_INIT_SHARED,
  GUEST_MEMFD_FLAG_MMAP,
  KVM_EXIT_HLT,
  KVM_EXIT_INTR,
  KVM_EXIT_MMIO,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  MAP_SHARED,
  PROT_READ,
  PROT_WRITE,
} from '../src/core/uapi.js';
import { type Program, program } from '../src/core/vcpu/program.js';
import { createRealHost, realKvmAvailable } from '../src/host/index.js';
import { type BenchRow, isMain, printRows, type Timing, time } from './harness.js';

const AREA = 'model vs real /dev/kvm (software KVM)';
const PAGE = 4096;
const MiB = 2 ** 20;
const GiB = 2 ** 30;
const RW = PROT_READ | PROT_WRITE;

/** Slot 0: [0, 1 MiB) of anonymous RAM — code at 0x1000, the real backend's page tables at 0x10000. */
const CODE_SLOT_BYTES = MiB;
/** The memslot of the create/delete pair: 2 MiB at 1 GiB. */
const PAIR_SLOT_BYTES = 2 * MiB;
const PAIR_SLOT_GPA = GiB;
/** The read loop's data: DATA_PAGES pages of RAM in slot 1 at 2 MiB. */
const DATA_GPA = 2 * MiB;
const DATA_PAGES = 4;
const READS_PER_PASS = (DATA_PAGES * PAGE) / 8;
/**
 * Passes over the data pages when the real backend cannot calibrate them: 64 × 2048 = 131072 reads,
 * about 0.26 s at PVM's nominal 2 M instructions/s (4 instructions per read).
 */
const DEFAULT_READ_PASSES = 64;
/** What one real read-loop run should take (0.2–0.5 s is the aim), and the bounds on its passes. */
const READ_RUN_TARGET_S = 0.35;
const MIN_READ_PASSES = 8;
const MAX_READ_PASSES = 1024;
/** A gpa without a memslot (inside the real backend's identity map). */
const HOLE_GPA = 5 * MiB;
/** MMIO exits per guest run (per timed call). */
const MMIO_EXITS = 1000;
/** The most a real KVM_RUN here may block (the programs below halt long before). */
const RUN_TIMEOUT_MS = 5000;

/** Why the real backend cannot be measured here, or null when it can. */
function realUnavailable(): string | null {
  if (process.env['GUESTMEM_NO_REAL_KVM'] === '1') return 'disabled by GUESTMEM_NO_REAL_KVM=1';
  const probe = realKvmAvailable();
  return probe.ok ? null : probe.reason;
}

/** What the real rows say about the kernel they ran on. */
function realKernelNote(): string {
  return existsSync('/sys/module/kvm_pvm')
    ? 'software KVM (PVM)'
    : 'hardware KVM (kvm_pvm not loaded; this bench is calibrated for software KVM (PVM))';
}

// ---- the operation sequences, written once against `Host` -----------------------------------

/** One backend's figures; a missing one carries the error that stopped it. */
interface Figures {
  readonly memslotPair: Timing | Error;
  readonly gmemFallocate: Timing | Error;
  readonly gmemPunch: Timing | Error;
  readonly mmioExit: Timing | Error;
  readonly guestRead: Timing | Error;
}

async function attempt(fn: () => Promise<Timing>): Promise<Timing | Error> {
  try {
    return await fn();
  } catch (e) {
    return e instanceof Error ? e : new Error(String(e));
  }
}

/** KVM_RUN, re-entered after a stray signal's EINTR (the real vCPU runs on Node's main thread). */
function run(vcpu: Vcpu): RunResult {
  for (let i = 0; ; i++) {
    const r = vcpu.run();
    const stray =
      r.ret === -1 &&
      r.errno === 'EINTR' &&
      r.exitReason === KVM_EXIT_INTR &&
      r.watchdog !== true &&
      vcpu.kvmRun.immediateExit === 0;
    if (!stray || i >= 100) return r;
  }
}

function describeRun(r: RunResult): string {
  return `ret ${r.ret}${r.errno ? ` ${r.errno}` : ''} ${r.exitReasonName}${r.watchdog ? ' (run watchdog)' : ''}`;
}

/** A VM with slot 0 of anonymous RAM (code and page tables) and vCPU 0; `close()` undoes it all. */
interface Guest {
  readonly vm: Vm;
  readonly vcpu: Vcpu;
  /** Host mappings behind the VM's memslots, unmapped by `close()` after the VM is closed. */
  readonly maps: [hva: number, bytes: number][];
  close(): void;
}

function guest(host: Host): Guest {
  const kvm = host.openKvm();
  const vm = kvm.createVm(0);
  kvm.close();
  const ram = host.mmap(0, CODE_SLOT_BYTES, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  vm.setUserMemoryRegion({
    slot: 0,
    flags: 0,
    guestPhysAddr: 0,
    memorySize: CODE_SLOT_BYTES,
    userspaceAddr: ram,
  });
  const maps: [number, number][] = [[ram, CODE_SLOT_BYTES]];
  const vcpu = vm.createVcpu(0);
  return {
    vm,
    vcpu,
    maps,
    close() {
      vcpu.close();
      vm.close();
      for (const [hva, bytes] of maps) host.munmap(hva, bytes);
    },
  };
}

/** 1. KVM_SET_USER_MEMORY_REGION create + delete of a 2 MiB slot over a memfd mapping. */
async function memslotPair(host: Host): Promise<Timing> {
  const kvm = host.openKvm();
  const vm = kvm.createVm(0);
  kvm.close();
  const fd = host.memfdCreate('bench-slot');
  host.ftruncate(fd, PAIR_SLOT_BYTES);
  const hva = host.mmap(0, PAIR_SLOT_BYTES, RW, MAP_SHARED, fd, 0);
  const region = { slot: 1, flags: 0, guestPhysAddr: PAIR_SLOT_GPA, userspaceAddr: hva };
  try {
    return await time('memslot create + delete (2 MiB)', () => {
      vm.setUserMemoryRegion({ ...region, memorySize: PAIR_SLOT_BYTES });
      vm.setUserMemoryRegion({ ...region, memorySize: 0 });
    });
  } finally {
    vm.close();
    host.munmap(hva, PAIR_SLOT_BYTES);
    host.close(fd);
  }
}

/** 2. fallocate (KEEP_SIZE) and punch of 1 GiB of an MMAP + INIT_SHARED guest_memfd, each timed alone. */
async function gmemFallocate(host: Host): Promise<[Timing | Error, Timing | Error]> {
  const kvm = host.openKvm();
  const vm = kvm.createVm(0);
  kvm.close();
  const gmem = vm.createGuestMemfd({
    size: GiB,
    flags: GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED,
  });
  const allocate = (): void => {
    host.fallocate(gmem, FALLOC_FL_KEEP_SIZE, 0, GiB);
  };
  const punch = (): void => {
    host.fallocate(gmem, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, GiB);
  };
  const opts = { timeMs: 1000, iterations: 5 };
  try {
    const fa = await attempt(() => time('guest_memfd fallocate 1 GiB', allocate, { ...opts, setup: punch }));
    const pu = await attempt(() => time('guest_memfd punch 1 GiB', punch, { ...opts, setup: allocate }));
    punch();
    return [fa, pu];
  } finally {
    host.close(gmem);
    vm.close();
  }
}

/** 3. A guest loop of MMIO_EXITS 8-byte loads from a gpa without a memslot, then HLT. */
async function mmioExit(host: Host): Promise<Timing> {
  const g = guest(host);
  const vcpu = g.vcpu;
  const prog: Program = program((b) => b.loop('r10', MMIO_EXITS, (l) => l.load(8, 'r8', HOLE_GPA)).halt());
  const data = vcpu.kvmRun.mmio.data;
  const answer = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]);
  try {
    return await time(
      `MMIO exit round trip × ${MMIO_EXITS}`,
      () => {
        let exits = 0;
        for (;;) {
          const r = run(vcpu);
          if (r.ret === 0 && r.exitReason === KVM_EXIT_MMIO) {
            data.set(answer);
            exits++;
            continue;
          }
          if (r.ret === 0 && r.exitReason === KVM_EXIT_HLT && exits === MMIO_EXITS) return;
          throw new Error(
            `MMIO loop: unexpected ${describeRun(r)} after ${exits} of ${MMIO_EXITS} MMIO exits`,
          );
        }
      },
      { batch: MMIO_EXITS, setup: () => vcpu.setProgram(prog) },
    );
  } finally {
    g.close();
  }
}

/** The read loop's program: `passes` × READS_PER_PASS 8-byte loads over the data pages, then HLT. */
function readLoop(passes: number): Program {
  return program((b) =>
    b
      .loop('r11', passes, (pass) =>
        pass
          .mov('r9', DATA_GPA)
          .loop('r10', READS_PER_PASS, (l) => l.load(8, 'r8', { base: 'r9', disp: 0 }).add('r9', 8)),
      )
      .halt(),
  );
}

/** A VM for the read loop: `guest()` plus DATA_PAGES written pages of RAM in slot 1 at DATA_GPA. */
function readGuest(host: Host): Guest {
  const g = guest(host);
  const bytes = DATA_PAGES * PAGE;
  const mem = host.mmap(0, bytes, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  // Written, so the guest reads real pages rather than the shared zero page.
  host.writeMemory(
    mem,
    new Uint8Array(bytes).map((_, i) => (i * 7 + 1) & 0xff),
  );
  g.maps.push([mem, bytes]);
  g.vm.setUserMemoryRegion({
    slot: 1,
    flags: 0,
    guestPhysAddr: DATA_GPA,
    memorySize: bytes,
    userspaceAddr: mem,
  });
  return g;
}

function runToHlt(vcpu: Vcpu, what: string): void {
  const r = run(vcpu);
  if (r.ret !== 0 || r.exitReason !== KVM_EXIT_HLT) throw new Error(`${what}: ${describeRun(r)}`);
}

/**
 * The passes that make one read-loop run take about READ_RUN_TARGET_S on this backend: two runs
 * of MIN_READ_PASSES (the first faults the pages in), scaled from the faster one.
 */
function calibrateReadPasses(host: Host): number {
  const g = readGuest(host);
  const vcpu = g.vcpu;
  try {
    let best = Number.POSITIVE_INFINITY;
    for (let i = 0; i < 2; i++) {
      vcpu.setProgram(readLoop(MIN_READ_PASSES));
      const t0 = performance.now();
      runToHlt(vcpu, 'read-loop calibration');
      best = Math.min(best, (performance.now() - t0) / 1e3);
    }
    const passes = Math.round((MIN_READ_PASSES * READ_RUN_TARGET_S) / best);
    return Math.min(MAX_READ_PASSES, Math.max(MIN_READ_PASSES, passes));
  } finally {
    g.close();
  }
}

/** 4. A guest loop of 8-byte reads over DATA_PAGES pages of RAM, `passes` times, then HLT. */
async function guestRead(host: Host, passes: number): Promise<Timing> {
  const g = readGuest(host);
  const vcpu = g.vcpu;
  const prog = readLoop(passes);
  const reads = passes * READS_PER_PASS;
  try {
    return await time(`guest 8-byte reads × ${reads}`, () => runToHlt(vcpu, 'read loop'), {
      batch: reads,
      timeMs: 1000,
      iterations: 5,
      setup: () => vcpu.setProgram(prog),
    });
  } finally {
    g.close();
  }
}

async function measure(host: Host, readPasses: number): Promise<Figures> {
  const memslot = await attempt(() => memslotPair(host));
  let fallocs: [Timing | Error, Timing | Error];
  try {
    fallocs = await gmemFallocate(host);
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    fallocs = [err, err];
  }
  const mmio = await attempt(() => mmioExit(host));
  const reads = await attempt(() => guestRead(host, readPasses));
  return {
    memslotPair: memslot,
    gmemFallocate: fallocs[0],
    gmemPunch: fallocs[1],
    mmioExit: mmio,
    guestRead: reads,
  };
}

// ---- rows ------------------------------------------------------------------------------------

interface Figure {
  readonly key: keyof Figures;
  readonly name: string;
  readonly unit: string;
  /** Nanoseconds per `unit`. */
  readonly ns: number;
  readonly note: string;
}

function figures(readPasses: number): readonly Figure[] {
  return [
    {
      key: 'memslotPair',
      name: 'memslot create + delete pair (2 MiB slot, memfd mapping)',
      unit: 'µs/pair',
      ns: 1e3,
      note: 'KVM_SET_USER_MEMORY_REGION × 2, median per pair',
    },
    {
      key: 'gmemFallocate',
      name: 'guest_memfd fallocate 1 GiB (KEEP_SIZE)',
      unit: 'ms',
      ns: 1e6,
      note: 'MMAP + INIT_SHARED guest_memfd of a DEFAULT VM, per operation',
    },
    {
      key: 'gmemPunch',
      name: 'guest_memfd punch 1 GiB (PUNCH_HOLE + KEEP_SIZE)',
      unit: 'ms',
      ns: 1e6,
      note: 'the same file, fully allocated before each punch',
    },
    {
      key: 'mmioExit',
      name: 'MMIO exit round trip (8-byte load from a gpa without a slot)',
      unit: 'µs/exit',
      ns: 1e3,
      note: `${MMIO_EXITS} exits per guest run; the bench writes kvm_run.mmio.data and re-enters`,
    },
    {
      key: 'guestRead',
      name: `guest 8-byte reads over ${DATA_PAGES} mapped pages`,
      unit: 'ns/read',
      ns: 1,
      note: `${readPasses * READS_PER_PASS} reads per guest run (${readPasses} passes of ${READS_PER_PASS}), no exits`,
    },
  ];
}

function message(e: Error): string {
  return e.message.split('\n')[0] ?? e.name;
}

function rowsFor(model: Figures, real: Figures | null, realNote: string, readPasses: number): BenchRow[] {
  const rows: BenchRow[] = [];
  for (const f of figures(readPasses)) {
    const m = model[f.key];
    if (m instanceof Error) {
      rows.push({
        area: AREA,
        name: `model: ${f.name}`,
        value: 0,
        unit: f.unit,
        note: `failed: ${message(m)}`,
      });
    } else {
      rows.push({
        area: AREA,
        name: `model: ${f.name}`,
        value: m.nsPerOp / f.ns,
        unit: f.unit,
        spread: m.spread,
        samples: m.samples,
        note: f.note,
      });
    }
    if (real === null) continue;
    const r = real[f.key];
    if (r instanceof Error) {
      rows.push({
        area: AREA,
        name: `real: ${f.name}`,
        value: 0,
        unit: f.unit,
        note: `${realNote}; not measured: ${message(r)}`,
      });
      continue;
    }
    const ratio =
      m instanceof Error
        ? undefined
        : r.nsPerOp >= m.nsPerOp
          ? { value: r.nsPerOp / m.nsPerOp, to: 'model (real ÷ model time)' }
          : { value: m.nsPerOp / r.nsPerOp, to: 'real (model ÷ real time)' };
    rows.push({
      area: AREA,
      name: `real: ${f.name}`,
      value: r.nsPerOp / f.ns,
      unit: f.unit,
      spread: r.spread,
      samples: r.samples,
      ...(ratio ? { ratio } : {}),
      note: `${realNote}; ${f.note}`,
    });
  }
  return rows;
}

export async function benchRealKvm(): Promise<BenchRow[]> {
  // The real backend first: its read loop sets the number of passes both backends run.
  let why = realUnavailable();
  let real: Figures | null = null;
  let readPasses = DEFAULT_READ_PASSES;
  if (why === null) {
    try {
      const realHost = createRealHost({ runTimeoutMs: RUN_TIMEOUT_MS });
      try {
        readPasses = calibrateReadPasses(realHost);
        real = await measure(realHost, readPasses);
      } finally {
        realHost.dispose();
      }
    } catch (e) {
      real = null;
      why = `the real host failed: ${e instanceof Error ? message(e) : String(e)}`;
    }
  }

  const modelHost = createHost();
  let model: Figures;
  try {
    model = await measure(modelHost, readPasses);
  } finally {
    modelHost.dispose();
  }

  const rows = rowsFor(model, real, realKernelNote(), readPasses);
  if (why !== null) {
    rows.push({
      area: AREA,
      name: 'real /dev/kvm rows omitted',
      value: 0,
      unit: '',
      note: `the real backend is unusable here: ${why}`,
    });
  }
  return rows;
}

if (isMain(import.meta.url)) printRows(await benchRealKvm());
