/**
 * Scale runs (issue 8): the model at the sizes the issue names, each reporting its time and the
 * memory it keeps resident —
 *
 * 1. 32764 memslots created, looked up (random gfns) and deleted;
 * 2. a 1 TiB sparse guest with 1 M touched 4 KiB pages, written by a guest program: clustered
 *    (64 KiB runs at random 64 KiB-aligned places) and, as a second row, uniform-random single
 *    pages (target for the clustered pattern: resident ≤ 1.12× the touched data);
 * 3. attribute conversions over a 1 TiB guest_memfd slot: the whole range, then 100 k scattered
 *    4 KiB conversions, then the whole range again;
 * 4. 100 VMs sharing one ALLONES page: created with their hole slots, each running the q35 boot
 *    probe over its ECAM window;
 * 5. a 64 GiB guest_memfd with 1 % of its pages allocated (random 4 KiB fallocates), punched back.
 *
 * Memory is measured two ways around each run, after a full garbage collection: the process's
 * resident set (RSS, what the OS charges) and V8's accounting (heap used + external memory:
 * typed arrays and ArrayBuffers). Next to them, the model's own accounting: frames, data
 * sections, page-cache radix nodes, SPTE tables, attribute-map nodes. bench/README.md says how
 * to read the RSS figures. Everything is seeded: two runs do the same work.
 *
 * The sparse guest runs in a child process per pattern (a fresh RSS; see `sparseInChild`).
 *
 * Run alone: `npx tsx bench/scale.bench.ts [sparse] [memslots] [attributes] [allones] [gmem]`
 * (names pick runs). Needs ~7 GiB of free RAM: the uniform-random pattern holds 5.4 GiB, and its
 * SPTE pool is copied when it grows.
 */
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { createHost, type ModelHost } from '../src/core/host.js';
import type { VmHandle } from '../src/core/kvm/kvm_main.js';
import { PageCache } from '../src/core/mm/filemap.js';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  KVM_CAP_GUESTMEM_ALLONES,
  KVM_MEM_ALLONES,
  KVM_MEM_GUEST_MEMFD,
  KVM_MEMORY_ATTRIBUTE_PRIVATE,
  KVM_X86_SW_PROTECTED_VM,
  MAP_ANONYMOUS,
  MAP_NORESERVE,
  MAP_PRIVATE,
  MAP_SHARED,
  PROT_READ,
  PROT_WRITE,
} from '../src/core/uapi.js';
import { type Program, program } from '../src/core/vcpu/program.js';
import type { KvmVcpu } from '../src/core/vcpu/vcpu.js';
import { type BenchRow, isMain, printRows, time } from './harness.js';
import { GiB, NR_SLOTS, PAGE, randomInts, SLOT_BYTES, slotRegion, slotsVm } from './kvm_fixtures.js';

const MiB = 2 ** 20;
const TiB = 2 ** 40;
const KiB = 1024;

// ---- measuring ---------------------------------------------------------------------------------

/** A full collection: `global.gc` when node runs with --expose-gc, else the same function got from V8. */
const gc: () => void = (() => {
  const g = (globalThis as { gc?: () => void }).gc;
  if (typeof g === 'function') return g;
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
})();

interface Snap {
  /** Resident set size of the process. */
  readonly rss: number;
  /** V8's heap in use + external memory (typed arrays, ArrayBuffers). */
  readonly js: number;
}

function snap(): Snap {
  gc();
  gc();
  const m = process.memoryUsage();
  return { rss: m.rss, js: m.heapUsed + m.external };
}

interface Phase<T> {
  readonly value: T;
  /** Wall-clock time. */
  readonly ms: number;
  /** Process CPU time (user + system) over the same interval. */
  readonly cpuMs: number;
}

function phase<T>(fn: () => T): Phase<T> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const value = fn();
  const ms = performance.now() - t0;
  const c = process.cpuUsage(c0);
  return { value, ms, cpuMs: (c.user + c.system) / 1e3 };
}

const fmtB = (b: number): string =>
  Math.abs(b) >= GiB
    ? `${(b / GiB).toFixed(2)} GiB`
    : Math.abs(b) >= MiB
      ? `${(b / MiB).toFixed(1)} MiB`
      : `${(b / KiB).toFixed(1)} KiB`;
/** A memory delta with its sign: `+1.5 MiB`, `−120.0 KiB`. */
const dB = (b: number): string => `${b < 0 ? '−' : '+'}${fmtB(Math.abs(b))}`;
const cpu = (p: Phase<unknown>): string => `CPU ${p.cpuMs.toFixed(0)} ms`;

/** Distinct values in [0, limit), deterministic (xorshift32 from `seed`, duplicates skipped). */
function distinctInts(count: number, limit: number, seed: number): Float64Array {
  const out = new Float64Array(count);
  const seen = new Set<number>();
  let n = 0;
  let s = seed;
  while (n < count) {
    const batch = randomInts(count - n + 64, limit, s);
    s = (s * 1664525 + 1013904223) | 0;
    for (let i = 0; i < batch.length && n < count; i++) {
      const v = batch[i] as number;
      if (seen.has(v)) continue;
      seen.add(v);
      out[n++] = v;
    }
  }
  return out;
}

/** Bytes the model's structures for host memory and one VM hold (capacities). */
interface ModelBytes {
  /** Page allocator metadata (per-frame arrays, free stack, section arrays and objects). */
  readonly alloc: number;
  /** Section data buffers (2 MiB each) that exist. */
  readonly data: number;
  /** Page-cache radix pools of the given files. */
  readonly cache: number;
  /** Page-cache radix nodes in use (for the kernel comparison: an xa_node each). */
  readonly cacheNodes: number;
  /** SPTE table pools of the VMs' roots. */
  readonly spte: number;
  /** SPTE tables in use (a 4 KiB page each in the kernel). */
  readonly spteTables: number;
}

function cacheOf(host: ModelHost, fd: number): PageCache {
  const m = host.kernel.fds.get(fd, 'bench').inode.mapping;
  if (!(m instanceof PageCache)) throw new Error(`fd ${fd} has no page cache`);
  return m;
}

function modelBytes(host: ModelHost, fds: readonly number[], vms: readonly VmHandle[]): ModelBytes {
  let cache = 0;
  let cacheNodes = 0;
  for (const fd of fds) {
    const c = cacheOf(host, fd);
    // Private fields, read for the accounting only: metadataBytes() counts nodes in use, not capacity.
    const pc = c as unknown as { pool: Int32Array; freeNodes: number[] };
    cache += pc.pool.byteLength + 8 * pc.freeNodes.length;
    cacheNodes += c.metadataBytes() / (65 * 4); // a node is 65 int32 words (filemap.ts)
  }
  let spte = 0;
  let spteTables = 0;
  for (const vm of vms) {
    for (const m of vm.kvm.mmu) {
      const s = m.stats();
      spte += s.bytes;
      spteTables += s.tables;
    }
  }
  const a = host.kernel.alloc;
  return { alloc: a.metadataBytes(), data: a.residentBytes(), cache, cacheNodes, spte, spteTables };
}

// ---- 1. 32764 memslots ---------------------------------------------------------------------------

function memslotRun(rows: BenchRow[]): void {
  const AREA = 'scale: 32764 memslots';
  const f = slotsVm();
  const { host, vm } = f;
  const region = (i: number, size: number) => slotRegion(f, i, size);
  // Warm-up on another VM (4096 slots created, looked up, deleted): the figures below are for
  // compiled code, as kvm.bench.ts's are, not for the first calls of the process.
  const warm = host.openKvm();
  const wvm = warm.createVm(0);
  warm.close();
  for (let i = 0; i < 4096; i++) wvm.setUserMemoryRegion(region(i, SLOT_BYTES));
  for (let i = 0; i < 1 << 16; i++) wvm.kvm.gfnToMemslot((i * 7919) % (4096 * 512), 0);
  for (let i = 0; i < 4096; i++) wvm.setUserMemoryRegion(region(i, 0));
  wvm.close();
  const m0 = snap();
  const create = phase(() => {
    for (let i = 0; i < NR_SLOTS; i++) vm.setUserMemoryRegion(region(i, SLOT_BYTES));
  });
  const m1 = snap();
  const LOOKUPS = 1 << 20;
  const gfns = randomInts(LOOKUPS, (NR_SLOTS * SLOT_BYTES) / PAGE, 0x1b873593);
  const k = vm.kvm;
  let found = 0;
  const lookup = phase(() => {
    for (let i = 0; i < LOOKUPS; i++) if (k.gfnToMemslot(gfns[i] as number, 0) !== null) found++;
  });
  if (found !== LOOKUPS) throw new Error(`${LOOKUPS - found} lookups found no slot`);
  const mLookup = snap();
  const del = phase(() => {
    for (let i = 0; i < NR_SLOTS; i++) vm.setUserMemoryRegion(region(i, 0));
  });
  const m2 = snap();
  if (k.listMemslots().length !== 0) throw new Error('slots left after deleting them all');
  rows.push({
    area: AREA,
    name: `create ${NR_SLOTS} slots of 2 MiB (KVM_SET_USER_MEMORY_REGION each)`,
    value: create.ms,
    unit: 'ms',
    target: { op: '<=', value: 30 },
    ratio: { value: 590 / create.ms, to: "KVM's 0.59 s" },
    note: `${cpu(create)}; ${((create.ms * 1e6) / NR_SLOTS).toFixed(0)} ns per ioctl`,
  });
  rows.push({
    area: AREA,
    name: `gfn → memslot, ${LOOKUPS} random gfns over the ${NR_SLOTS} slots (kvm.gfnToMemslot)`,
    value: LOOKUPS / (lookup.ms / 1e3),
    unit: 'lookups/s',
    target: { op: '>=', value: 20e6 },
    note: `one pass, ${lookup.ms.toFixed(1)} ms, ${cpu(lookup)}`,
  });
  rows.push({
    area: AREA,
    name: `delete the ${NR_SLOTS} slots one by one`,
    value: del.ms,
    unit: 'ms',
    note: `${cpu(del)}; ${((del.ms * 1e6) / NR_SLOTS).toFixed(0)} ns per ioctl`,
  });
  rows.push({
    area: AREA,
    name: 'memory per slot (V8 heap + external, after the creates)',
    value: (m1.js - m0.js) / NR_SLOTS,
    unit: 'B/slot',
    note: `RSS ${dB(m1.rss - m0.rss)} for all slots (${((m1.rss - m0.rss) / NR_SLOTS).toFixed(0)} B/slot); after the lookups (lookup structures built) ${((mLookup.js - m0.js) / NR_SLOTS).toFixed(0)} B/slot; after deleting them all: heap + external ${dB(m2.js - m0.js)} against the start`,
  });
  host.dispose();
}

// ---- 2. 1 TiB sparse guest, 1 M touched pages ----------------------------------------------------

const TOUCHED = 1 << 20;
/** The guest's RAM starts its runs above 2 MiB: the program's code page is at 0x1000. */
const LOW = 2 * MiB;

/**
 * A guest program that writes 8 bytes to the first bytes of `runPages` consecutive pages from r9,
 * then asks the VMM for the next r9 (OUT to the sync port), `runs` times.
 */
function touchRuns(runs: number, runPages: number): Program {
  return program((b) =>
    b
      .loop('r10', runs, (l) =>
        l.sync(1).loop('r11', runPages, (r) => r.storeImm(8, { base: 'r9', disp: 0 }, 1).add('r9', PAGE)),
      )
      .halt(),
  );
}

interface SparseResult {
  readonly ms: number;
  readonly cpuMs: number;
  readonly rss: number;
  readonly js: number;
  readonly model: ModelBytes;
  readonly frames: number;
}

/** A 1 TiB memfd-backed guest; the guest writes `runs` runs of `runPages` pages at `starts` (page numbers). */
function sparseGuest(starts: Float64Array, runPages: number): SparseResult {
  const m0 = snap();
  const host = createHost();
  const kvm = host.openKvm();
  const vm = kvm.createVm(0);
  kvm.close();
  const memfd = host.memfdCreate('ram');
  host.ftruncate(memfd, TiB);
  const hva = host.mmap(0, TiB, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  vm.setUserMemoryRegion({ slot: 0, flags: 0, guestPhysAddr: 0, memorySize: TiB, userspaceAddr: hva });
  const vcpu = vm.createVcpu(0) as KvmVcpu;
  const runs = starts.length;
  vcpu.setProgram(touchRuns(runs, runPages));
  const frames0 = host.kernel.alloc.stats.allocated;
  let next = 0;
  const p = phase(() => {
    for (;;) {
      const r = vcpu.run();
      if (r.exitReasonName === 'KVM_EXIT_HLT') break;
      if (!r.io) throw new Error(`unexpected exit ${r.exitReasonName}`);
      vcpu.setRegs({ r9: BigInt((starts[next++] as number) * PAGE) });
    }
  });
  if (next !== runs) throw new Error(`${next} of ${runs} runs written`);
  // The touched pages and the program's code page (fetched on the first run).
  const frames = host.kernel.alloc.stats.allocated - frames0;
  if (frames !== runs * runPages + 1)
    throw new Error(`${frames} frames for ${runs * runPages} touched pages`);
  const model = modelBytes(host, [memfd], [vm]);
  const m1 = snap();
  vcpu.close();
  vm.close();
  host.munmap(hva, TiB);
  host.close(memfd);
  host.dispose();
  return { ms: p.ms, cpuMs: p.cpuMs, rss: m1.rss - m0.rss, js: m1.js - m0.js, model, frames };
}

type Pattern = 'runs64k' | 'uniform';

/** The touched pages of a pattern: starts of runs (page numbers) and pages per run. */
function pattern(p: Pattern): { starts: Float64Array; runPages: number } {
  if (p === 'runs64k') {
    // 64 KiB runs (16 pages) at distinct random 64 KiB-aligned places above LOW.
    const RUN = 16;
    const places = (TiB - LOW) / (RUN * PAGE);
    const starts = distinctInts(TOUCHED / RUN, places, 0x85ebca6b).map((s) => LOW / PAGE + s * RUN);
    return { starts, runPages: RUN };
  }
  // Uniform random single pages: an SPTE table and a radix leaf per page, as in the kernel.
  return {
    starts: distinctInts(TOUCHED, (TiB - LOW) / PAGE, 0xc2b2ae35).map((s) => LOW / PAGE + s),
    runPages: 1,
  };
}

/**
 * Runs one pattern in a fresh Node process (this module, `--sparse-child <pattern>`): its RSS
 * then starts from a small process, not from one holding what glibc kept of earlier runs' frees.
 */
function sparseInChild(p: Pattern): Promise<SparseResult> {
  return new Promise((resolve, reject) => {
    const child = fork(fileURLToPath(import.meta.url), ['--sparse-child', p], {
      execArgv: process.execArgv,
      stdio: 'inherit',
    });
    let result: SparseResult | null = null;
    child.on('message', (m) => {
      result = m as SparseResult;
    });
    child.on('error', reject);
    child.on('exit', (code) => {
      if (result) resolve(result);
      else reject(new Error(`sparse guest (${p}) child exited with code ${code}`));
    });
  });
}

async function sparseRows(rows: BenchRow[]): Promise<void> {
  const AREA = 'scale: 1 TiB sparse guest, 1 M touched 4 KiB pages (memfd RAM)';
  const data = TOUCHED * PAGE;
  const kernelEq = (m: ModelBytes, frames: number): number =>
    // data + a 4 KiB page-table page per SPTE table + a 576 B xa_node per radix node + a 64 B
    // struct page per frame: what Linux would hold for the same touched pages.
    data + m.spteTables * 4096 + m.cacheNodes * 576 + frames * 64;
  const row = (name: string, r: SparseResult, what: string, target: boolean): void => {
    const m = r.model;
    const modelTotal = m.alloc + m.data + m.cache + m.spte;
    const kern = kernelEq(m, r.frames);
    rows.push({
      area: AREA,
      name: `${name}: resident memory (RSS) / touched data`,
      value: r.rss / data,
      unit: '×',
      ...(target ? { target: { op: '<=', value: 1.12 } as const } : {}),
      ratio: { value: r.rss / kern, to: 'Linux-equivalent' },
      note: `${what}, fresh process; RSS ${dB(r.rss)}, heap + external ${dB(r.js)} for ${fmtB(data)} written; model: data sections ${fmtB(m.data)}, SPTE pools ${fmtB(m.spte)} (${m.spteTables} tables), page cache ${fmtB(m.cache)} (${m.cacheNodes} nodes), allocator ${fmtB(m.alloc)} = ${(modelTotal / data).toFixed(3)}×; Linux-equivalent ${(kern / data).toFixed(3)}× (4 KiB per SPTE table, 576 B per xa_node, 64 B struct page)`,
    });
    rows.push({
      area: AREA,
      name: `${name}: guest writes, first touch of each page`,
      value: TOUCHED / (r.ms / 1e3),
      unit: 'pages/s',
      note: `${r.ms.toFixed(0)} ms, CPU ${r.cpuMs.toFixed(0)} ms: guest program, TLB miss, EPT fault, 8-byte write, and the host OS's page fault on the data buffer's fresh 4 KiB; a VMM exit per run`,
    });
  };
  row(
    '64 KiB runs',
    await sparseInChild('runs64k'),
    `${TOUCHED / 16} runs of 64 KiB at random aligned places`,
    true,
  );
  row('uniform random pages', await sparseInChild('uniform'), `${TOUCHED} single pages at random`, false);
}

// ---- 3. attribute conversions over 1 TiB ---------------------------------------------------------

async function attributeRows(rows: BenchRow[]): Promise<void> {
  const AREA = 'scale: attribute conversions over a 1 TiB guest_memfd slot';
  const PRIVATE = KVM_MEMORY_ATTRIBUTE_PRIVATE;
  const host = createHost();
  const kvm = host.openKvm();
  const vm = kvm.createVm(KVM_X86_SW_PROTECTED_VM);
  kvm.close();
  const m0 = snap();
  const hva = host.mmap(0, TiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  const gmem = vm.createGuestMemfd({ size: TiB, flags: 0 });
  vm.setUserMemoryRegion2({
    slot: 0,
    flags: KVM_MEM_GUEST_MEMFD,
    guestPhysAddr: 0,
    memorySize: TiB,
    userspaceAddr: hva,
    guestMemfd: gmem,
    guestMemfdOffset: 0,
  });
  const mSlot = snap();
  // The map's B+tree pools are private (interval_map.ts): read here for the accounting only.
  const tree = (
    vm.kvm.attributes.map as unknown as { tree: Record<string, ArrayLike<number> & { byteLength: number }> }
  ).tree;
  const mapBytes = (): number =>
    ['keys', 'ends', 'vals', 'counts', 'next', 'prev'].reduce((n, f) => n + (tree[f]?.byteLength ?? 0), 0);
  // The whole range, to private and back (each call changes every page: no MA-4 no-op).
  const toggle = await time(
    '1 TiB conversion, 1 TiB gmem slot',
    () => {
      vm.setMemoryAttributes({ address: 0, size: TiB, attributes: PRIVATE, flags: 0 });
      vm.setMemoryAttributes({ address: 0, size: TiB, attributes: 0, flags: 0 });
    },
    { batch: 2, timeMs: 200, warmupMs: 50 },
  );
  const whole = phase(() => vm.setMemoryAttributes({ address: 0, size: TiB, attributes: PRIVATE, flags: 0 }));
  const SCATTER = 100_000;
  const pages = distinctInts(SCATTER, TiB / PAGE, 0x27d4eb2f);
  const m1 = snap();
  const scatter = phase(() => {
    for (let i = 0; i < SCATTER; i++) {
      vm.setMemoryAttributes({ address: (pages[i] as number) * PAGE, size: PAGE, attributes: 0, flags: 0 });
    }
  });
  const ranges = vm.kvm.attributes.map.rangeCount;
  const treeBytes = mapBytes();
  const m2 = snap();
  const back = phase(() => vm.setMemoryAttributes({ address: 0, size: TiB, attributes: 0, flags: 0 }));
  const m3 = snap();
  rows.push({
    area: AREA,
    name: 'convert the whole 1 TiB (2^28 pages) to private or back to shared',
    value: toggle.nsPerOp / 1e3,
    unit: 'µs',
    spread: toggle.spread,
    samples: toggle.samples,
    target: { op: '<=', value: 100 },
    note: `the last one, before the scatter: ${(whole.ms * 1e3).toFixed(0)} µs; the slot itself (huge-page tracking of 2^19 2 MiB frames) took heap + external ${dB(mSlot.js - m0.js)}, RSS ${dB(mSlot.rss - m0.rss)}`,
  });
  rows.push({
    area: AREA,
    name: `${SCATTER / 1000} k scattered 4 KiB conversions to shared, inside it`,
    value: SCATTER / (scatter.ms / 1e3),
    unit: 'conversions/s',
    target: { op: '>=', value: 500e3 },
    note: `${scatter.ms.toFixed(0)} ms, ${cpu(scatter)}; nothing mapped, each runs the invalidation and an empty zap`,
  });
  rows.push({
    area: AREA,
    name: `attribute map after the scatter: bytes per stored range (${ranges} ranges)`,
    value: treeBytes / ranges,
    unit: 'B/range',
    note: `B+tree pools ${fmtB(treeBytes)}; heap + external ${dB(m2.js - m1.js)}, RSS ${dB(m2.rss - m1.rss)} over the scatter`,
  });
  rows.push({
    area: AREA,
    name: 'convert the whole 1 TiB back to shared (merging the scattered ranges)',
    value: back.ms,
    unit: 'ms',
    note: `${cpu(back)}; ${vm.kvm.attributes.map.rangeCount} ranges left; heap + external ${dB(m3.js - m2.js)} (the pools keep their capacity)`,
  });
  host.dispose();
}

// ---- 4. 100 VMs sharing one ALLONES page ---------------------------------------------------------

const ECAM = 0xb000_0000;
const NR_VMS = 100;
/** The q35 boot probe: function 0 of each of 256 buses × 32 devices (stride 32 KiB). */
const PROBE = program((p) =>
  p
    .mov('r9', ECAM)
    .loop('r10', 256 * 32, (l) => l.load(4, 'r8', { base: 'r9', disp: 0 }).add('r9', 32 * KiB))
    .halt(),
);

function allonesRows(rows: BenchRow[]): void {
  const AREA = 'scale: 100 VMs sharing one ALLONES page';
  const m0 = snap();
  const host = createHost({ kvm: { extensions: { allones: true } } });
  const alloc = host.kernel.alloc;
  const frames0 = alloc.stats.allocated;
  const vms: { vm: VmHandle; vcpu: KvmVcpu; memfd: number }[] = [];
  const create = phase(() => {
    for (let i = 0; i < NR_VMS; i++) {
      const kvm = host.openKvm();
      const vm = kvm.createVm();
      kvm.close();
      const memfd = host.memfdCreate('ram');
      host.ftruncate(memfd, MiB);
      const ram = host.mmap(0, MiB, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
      vm.setUserMemoryRegion({ slot: 0, flags: 0, guestPhysAddr: 0, memorySize: MiB, userspaceAddr: ram });
      vm.enableCap({ cap: KVM_CAP_GUESTMEM_ALLONES, args: [] });
      // The ECAM window as hole slots: 256 slots of 1 MiB (one per bus), as a VMM that keeps
      // present functions out of them would lay it out.
      for (let b = 0; b < 256; b++) {
        vm.setUserMemoryRegion2({
          slot: 1 + b,
          flags: KVM_MEM_ALLONES,
          guestPhysAddr: ECAM + b * MiB,
          memorySize: MiB,
          userspaceAddr: 0,
        });
      }
      const vcpu = vm.createVcpu(0) as KvmVcpu;
      vcpu.setProgram(PROBE);
      vms.push({ vm, vcpu, memfd });
    }
  });
  const m1 = snap();
  const holeFrames = alloc.stats.allocated - frames0;
  let reads = 0;
  const scan = phase(() => {
    for (const v of vms) {
      const r = v.vcpu.run();
      if (r.exitReasonName !== 'KVM_EXIT_HLT') throw new Error(`probe exited ${r.exitReasonName}`);
      reads += 256 * 32;
    }
  });
  const m2 = snap();
  // Frames after the scans: the code page of each VM (in its RAM memfd) + the ALLONES page.
  const ramFrames = vms.reduce((n, v) => n + cacheOf(host, v.memfd).nrpages, 0);
  const allonesFrames = alloc.stats.allocated - frames0 - ramFrames;
  const model = modelBytes(
    host,
    vms.map((v) => v.memfd),
    vms.map((v) => v.vm),
  );
  rows.push({
    area: AREA,
    name: `frames allocated for the holes of ${NR_VMS} VMs (256 MiB ECAM window each), after the probes`,
    value: allonesFrames,
    unit: 'frames',
    target: { op: '<=', value: 1 },
    note: `${holeFrames} when the slots were created; ${ramFrames} frames of RAM (one code page per VM) besides`,
  });
  rows.push({
    area: AREA,
    name: `create ${NR_VMS} VMs, each with 1 MiB of RAM and 256 ALLONES slots of 1 MiB`,
    value: create.ms,
    unit: 'ms',
    note: `${cpu(create)}; ${((create.ms * 1e3) / NR_VMS).toFixed(0)} µs per VM`,
  });
  rows.push({
    area: AREA,
    name: `q35 boot probe in each VM (8192 hole reads, each a first-touch fault): ${reads} reads`,
    value: reads / (scan.ms / 1e3),
    unit: 'reads/s',
    note: `${scan.ms.toFixed(0)} ms, ${cpu(scan)}`,
  });
  rows.push({
    area: AREA,
    name: 'memory per VM, after the probes (V8 heap + external)',
    value: (m2.js - m0.js) / NR_VMS / KiB,
    unit: 'KiB/VM',
    note: `RSS ${((m2.rss - m0.rss) / NR_VMS / KiB).toFixed(0)} KiB/VM; before the probes ${((m1.js - m0.js) / NR_VMS / KiB).toFixed(0)} KiB/VM; model: SPTE pools ${fmtB(model.spte / NR_VMS)}/VM (${model.spteTables / NR_VMS} tables: the root and the probes' leaves; no SMM root until SMM is used), allocator ${fmtB(model.alloc)} in all`,
  });
  host.dispose();
}

// ---- 5. guest_memfd of 64 GiB, 1 % allocated -----------------------------------------------------

function gmemRows(rows: BenchRow[]): void {
  const AREA = 'scale: guest_memfd of 64 GiB with 1 % of its pages allocated';
  const SIZE = 64 * GiB;
  const PAGES = SIZE / PAGE;
  const N = Math.round(PAGES / 100);
  const host = createHost();
  const kvm = host.openKvm();
  const vm = kvm.createVm(KVM_X86_SW_PROTECTED_VM);
  kvm.close();
  const gmem = vm.createGuestMemfd({ size: SIZE, flags: 0 });
  const idx = distinctInts(N, PAGES, 0x165667b1);
  const alloc = host.kernel.alloc;
  const frames0 = alloc.stats.allocated;
  const m0 = snap();
  const fill = phase(() => {
    for (let i = 0; i < N; i++) host.fallocate(gmem, FALLOC_FL_KEEP_SIZE, (idx[i] as number) * PAGE, PAGE);
  });
  const m1 = snap();
  const frames = alloc.stats.allocated - frames0;
  if (frames !== N) throw new Error(`${frames} frames for ${N} fallocated pages`);
  const model = modelBytes(host, [gmem], []);
  const punch = phase(() => host.fallocate(gmem, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, SIZE));
  const left = alloc.stats.allocated - frames0;
  const m2 = snap();
  rows.push({
    area: AREA,
    name: `fallocate ${N} random 4 KiB pages (1 %) of a 64 GiB guest_memfd`,
    value: N / (fill.ms / 1e3),
    unit: 'pages/s',
    note: `${fill.ms.toFixed(0)} ms, ${cpu(fill)}; one call per page`,
  });
  rows.push({
    area: AREA,
    name: 'page-cache metadata per allocated page (radix pool)',
    value: model.cache / N,
    unit: 'B/page',
    ratio: { value: model.cache / (model.cacheNodes * 576), to: 'Linux xa_nodes (576 B each)' },
    note: `${model.cacheNodes} nodes of 260 B: at 1 % density nearly every page has its own leaf node`,
  });
  rows.push({
    area: AREA,
    name: 'resident memory per allocated page (V8 heap + external)',
    value: (m1.js - m0.js) / N,
    unit: 'B/page',
    note: `RSS ${dB(m1.rss - m0.rss)} for ${fmtB(N * PAGE)} allocated; the frames' data is never written, so no section buffer exists (the kernel would have zeroed ${fmtB(N * PAGE)}); allocator metadata ${fmtB(model.alloc)}`,
  });
  rows.push({
    area: AREA,
    name: 'punch the whole 64 GiB back (one FALLOC_FL_PUNCH_HOLE)',
    value: punch.ms,
    unit: 'ms',
    note: `${cpu(punch)}; ${left} frames left; heap + external ${dB(m2.js - m1.js)} after it`,
  });
  host.dispose();
}

const RUNS: readonly (readonly [string, (rows: BenchRow[]) => void | Promise<void>])[] = [
  // The sparse guest first, while the process is small: its RSS figures matter most.
  ['sparse', sparseRows],
  ['memslots', memslotRun],
  ['attributes', attributeRows],
  ['allones', allonesRows],
  ['gmem', gmemRows],
];

/**
 * The five scale runs; one row per figure. `only` (when run alone: the command line's words,
 * e.g. `npx tsx bench/scale.bench.ts sparse gmem`) picks some by name.
 */
export async function benchScale(only: readonly string[] = []): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const [name, run] of RUNS) {
    if (only.length > 0 && !only.includes(name)) continue;
    const t0 = performance.now();
    await run(rows);
    if (only.length > 0) process.stderr.write(`${name}: ${((performance.now() - t0) / 1e3).toFixed(1)} s\n`);
  }
  return rows;
}

if (isMain(import.meta.url)) {
  const childAt = process.argv.indexOf('--sparse-child');
  if (childAt >= 0) {
    const { starts, runPages } = pattern(process.argv[childAt + 1] as Pattern);
    const r = sparseGuest(starts, runPages);
    await new Promise<void>((resolve) => process.send?.(r, () => resolve()));
  } else {
    printRows(await benchScale(process.argv.slice(2)));
  }
}
