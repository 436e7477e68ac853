/**
 * Differential fuzzing of the model against the real /dev/kvm (issue 6): fast-check generates
 * sequences of abstract actions over what both backends support — memslot create/move/delete/
 * flags-only on a DEFAULT VM (v1 and v2), guest_memfd create/fallocate/punch/mmap, host reads and
 * writes, READONLY writes and unbacked accesses from small guest programs, dirty logs, digests —
 * and `diffOnce` runs one sequence on each backend through a recording host (src/vmm/trace.ts),
 * then compares the two traces call by call: errno names, exit reasons, MMIO data, registers,
 * memory digests. The only differences it forgives are the ones docs/host-deviations.md documents
 * (`documentedDeviation`).
 *
 * Actions name earlier objects by index (modulo how many exist), so any sequence is runnable and
 * fast-check can shrink a failing one to a minimal reproduction. The interpreter keeps the choices
 * that would hit a documented deviation out of the generated space instead of forgiving them:
 * gmem-only slots always use the guest_memfd's own mapping as userspace_addr (#11), and a
 * guest_memfd created with MMAP but without INIT_SHARED is never bound (#11 again: PVM would fault
 * it in through a mapping that SIGBUSes). No munmap/mprotect under live slots (#1), no MAP_FIXED
 * (#10), no hypercalls (#2), no address space 1 (#5).
 */
import fc from 'fast-check';
import type { Host, RunResult } from '../../src/core/api.js';
import { HostFault, KvmError } from '../../src/core/errno.js';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  GUEST_MEMFD_FLAG_INIT_SHARED,
  GUEST_MEMFD_FLAG_MMAP,
  KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
  KVM_EXIT_HLT,
  KVM_EXIT_MMIO,
  KVM_MEM_GUEST_MEMFD,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_READONLY,
  MADV_DONTNEED,
  MADV_REMOVE,
  MADV_WILLNEED,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  MAP_SHARED,
  PROT_READ,
  PROT_WRITE,
} from '../../src/core/uapi.js';
import { type AccessSize, type Program, ProgramBuilder } from '../../src/core/vcpu/program.js';
import {
  documentedDeviation,
  type RecordingHost,
  type RecordingVm,
  recordingHost,
  sameOutcome,
  type Trace,
  type TraceCall,
} from '../../src/vmm/trace.js';

const PAGE = 4096;
const MiB = 1024 * 1024;
const RW = PROT_READ | PROT_WRITE;
const SHARED = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;

// ---- actions --------------------------------------------------------------------------------------

/** A guest access; `at` indexes GPAS, `delta` is added (page-crossing and unaligned accesses). */
export type GuestOp =
  | { readonly op: 'load'; readonly size: AccessSize; readonly at: number; readonly delta: number }
  | {
      readonly op: 'storeImm';
      readonly size: AccessSize;
      readonly at: number;
      readonly delta: number;
      readonly imm: number;
    }
  | {
      readonly op: 'fill';
      readonly at: number;
      readonly delta: number;
      readonly len: number;
      readonly byte: number;
    }
  | { readonly op: 'copy'; readonly at: number; readonly from: number; readonly len: number }
  | {
      readonly op: 'cmp';
      readonly size: AccessSize;
      readonly at: number;
      readonly delta: number;
      readonly expect: number;
    };

export type Action =
  | { readonly a: 'anon'; readonly pages: number }
  | { readonly a: 'memfd'; readonly pages: number }
  | { readonly a: 'gmem'; readonly size: number; readonly flags: number }
  | { readonly a: 'gmemMmap'; readonly g: number; readonly shared: boolean }
  | {
      readonly a: 'fallocate';
      readonly g: number;
      readonly mode: number;
      readonly offset: number;
      readonly len: number;
    }
  | {
      readonly a: 'slot';
      readonly slot: number;
      readonly v2: boolean;
      readonly flags: number;
      readonly gpa: number;
      readonly pages: number;
      readonly map: number;
      readonly off: number;
    }
  | {
      readonly a: 'gmemSlot';
      readonly slot: number;
      readonly g: number;
      readonly gpa: number;
      readonly pages: number;
      readonly off: number;
      readonly extraFlags: number;
    }
  | { readonly a: 'move'; readonly slot: number; readonly gpa: number }
  | { readonly a: 'toggleLog'; readonly slot: number }
  | { readonly a: 'delete'; readonly slot: number; readonly flags: number }
  | {
      readonly a: 'hostWrite';
      readonly map: number;
      readonly off: number;
      readonly len: number;
      readonly byte: number;
    }
  | { readonly a: 'hostRead'; readonly map: number; readonly off: number; readonly len: number }
  | { readonly a: 'guest'; readonly ops: readonly GuestOp[] }
  | { readonly a: 'dirtyLog'; readonly slot: number }
  | { readonly a: 'clearLog'; readonly slot: number; readonly numPages: number }
  | { readonly a: 'manualProtect'; readonly on: boolean }
  | { readonly a: 'fstat'; readonly g: number; readonly memfd: boolean }
  | {
      readonly a: 'madvise';
      readonly map: number;
      readonly off: number;
      readonly pages: number;
      readonly advice: number;
    }
  | { readonly a: 'digest'; readonly at: number; readonly pages: number };

/** Guest physical addresses the actions aim at: slot-sized windows above the code slot, and a hole. */
export const GPAS: readonly number[] = [
  2 * MiB,
  2 * MiB + 4 * PAGE,
  2 * MiB + 8 * PAGE,
  3 * MiB,
  3 * MiB + 2 * PAGE,
  4 * MiB,
  4 * MiB + 16 * PAGE,
  6 * MiB, // usually a hole
];

const sizeArb = fc.constantFrom<AccessSize>(1, 2, 4, 8);
const at = fc.nat({ max: GPAS.length - 1 });
const delta = fc.oneof(
  { weight: 3, arbitrary: fc.integer({ min: 0, max: 64 }) },
  { weight: 1, arbitrary: fc.integer({ min: PAGE - 6, max: PAGE + 2 }) },
);

const guestOpArb: fc.Arbitrary<GuestOp> = fc.oneof(
  fc.record({ op: fc.constant('load' as const), size: sizeArb, at, delta }),
  fc.record({
    op: fc.constant('storeImm' as const),
    size: sizeArb,
    at,
    delta,
    imm: fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
  }),
  fc.record({
    op: fc.constant('fill' as const),
    at,
    delta,
    len: fc.integer({ min: 1, max: 12 }),
    byte: fc.nat({ max: 255 }),
  }),
  fc.record({ op: fc.constant('copy' as const), at, from: at, len: fc.integer({ min: 1, max: 12 }) }),
  fc.record({ op: fc.constant('cmp' as const), size: sizeArb, at, delta, expect: fc.nat({ max: 255 }) }),
);

const idx = fc.nat({ max: 7 });
const slotId = fc.integer({ min: 1, max: 4 });
const pagesArb = fc.constantFrom(1, 2, 4, 8, 16);

/** One action, weighted towards the state-changing ones. */
export const actionArb: fc.Arbitrary<Action> = fc.oneof(
  { weight: 2, arbitrary: fc.record({ a: fc.constant('anon' as const), pages: pagesArb }) },
  { weight: 1, arbitrary: fc.record({ a: fc.constant('memfd' as const), pages: pagesArb }) },
  {
    weight: 2,
    arbitrary: fc.record({
      a: fc.constant('gmem' as const),
      size: fc.oneof(
        { weight: 6, arbitrary: pagesArb.map((p) => p * PAGE) },
        { weight: 1, arbitrary: fc.constantFrom(0, PAGE + 1, 100) },
      ),
      flags: fc.constantFrom(
        0,
        SHARED,
        SHARED,
        GUEST_MEMFD_FLAG_INIT_SHARED,
        GUEST_MEMFD_FLAG_MMAP,
        4,
        2 ** 40,
      ),
    }),
  },
  { weight: 1, arbitrary: fc.record({ a: fc.constant('gmemMmap' as const), g: idx, shared: fc.boolean() }) },
  {
    weight: 2,
    arbitrary: fc.record({
      a: fc.constant('fallocate' as const),
      g: idx,
      mode: fc.constantFrom(
        FALLOC_FL_KEEP_SIZE,
        FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
        FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
        0,
        FALLOC_FL_PUNCH_HOLE,
        FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
      ),
      offset: fc.oneof(
        { weight: 5, arbitrary: fc.nat({ max: 36 }).map((p) => p * PAGE) },
        { weight: 1, arbitrary: fc.constantFrom(1, PAGE - 1, -PAGE) },
      ),
      len: fc.oneof(
        { weight: 5, arbitrary: fc.integer({ min: 1, max: 8 }).map((p) => p * PAGE) },
        { weight: 1, arbitrary: fc.constantFrom(0, 1, PAGE + 1) },
      ),
    }),
  },
  {
    weight: 4,
    arbitrary: fc.record({
      a: fc.constant('slot' as const),
      slot: slotId,
      v2: fc.boolean(),
      flags: fc.constantFrom(
        0,
        0,
        KVM_MEM_LOG_DIRTY_PAGES,
        KVM_MEM_READONLY,
        KVM_MEM_READONLY | KVM_MEM_LOG_DIRTY_PAGES,
        8,
      ),
      gpa: at,
      pages: pagesArb,
      map: idx,
      off: fc.nat({ max: 4 }),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      a: fc.constant('gmemSlot' as const),
      slot: slotId,
      g: idx,
      gpa: at,
      pages: pagesArb,
      off: fc.nat({ max: 24 }),
      extraFlags: fc.constantFrom(0, 0, 0, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY),
    }),
  },
  { weight: 2, arbitrary: fc.record({ a: fc.constant('move' as const), slot: slotId, gpa: at }) },
  { weight: 1, arbitrary: fc.record({ a: fc.constant('toggleLog' as const), slot: slotId }) },
  {
    weight: 2,
    arbitrary: fc.record({
      a: fc.constant('delete' as const),
      slot: fc.integer({ min: 1, max: 5 }),
      flags: fc.constantFrom(0, KVM_MEM_GUEST_MEMFD),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      a: fc.constant('hostWrite' as const),
      map: idx,
      off: fc.nat({ max: 20 * PAGE }),
      len: fc.integer({ min: 1, max: 16 }),
      byte: fc.nat({ max: 255 }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      a: fc.constant('hostRead' as const),
      map: idx,
      off: fc.nat({ max: 20 * PAGE }),
      len: fc.integer({ min: 1, max: 16 }),
    }),
  },
  {
    weight: 5,
    arbitrary: fc.record({
      a: fc.constant('guest' as const),
      ops: fc.array(guestOpArb, { minLength: 1, maxLength: 6 }),
    }),
  },
  { weight: 1, arbitrary: fc.record({ a: fc.constant('dirtyLog' as const), slot: slotId }) },
  {
    weight: 1,
    arbitrary: fc.record({
      a: fc.constant('clearLog' as const),
      slot: slotId,
      numPages: fc.constantFrom(1, 16, 64),
    }),
  },
  { weight: 1, arbitrary: fc.record({ a: fc.constant('manualProtect' as const), on: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ a: fc.constant('fstat' as const), g: idx, memfd: fc.boolean() }) },
  {
    weight: 1,
    arbitrary: fc.record({
      a: fc.constant('madvise' as const),
      map: idx,
      off: fc.nat({ max: 16 }),
      pages: fc.integer({ min: 1, max: 4 }),
      advice: fc.constantFrom(MADV_DONTNEED, MADV_REMOVE, MADV_WILLNEED),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ a: fc.constant('digest' as const), at, pages: fc.constantFrom(1, 4) }),
  },
);

/** A sequence of actions. */
export const sequenceArb = (maxLength = 24): fc.Arbitrary<Action[]> =>
  fc.array(actionArb, { minLength: 1, maxLength });

// ---- the interpreter --------------------------------------------------------------------------------

interface Mapping {
  readonly hva: number;
  readonly pages: number;
}
interface Gmem {
  readonly fd: number;
  readonly size: number;
  readonly flags: number;
  map: Mapping | null;
}
interface Slot {
  gpa: number;
  readonly pages: number;
  readonly hva: number;
  flags: number;
  readonly gmem: Gmem | null;
}

/** Bytes an MMIO read of `gpa` is completed with: a function of the gpa only, so both backends agree. */
function mmioData(gpa: number): number[] {
  return [0, 1, 2, 3, 4, 5, 6, 7].map((k) => (gpa * 7 + k * 13 + 0x5a) & 0xff);
}

function quietly(fn: () => unknown): void {
  try {
    fn();
  } catch (e) {
    // Expected outcomes: the recording host has written them into the trace.
    if (
      !(e instanceof KvmError || e instanceof HostFault || (e instanceof Error && e.name === 'ReplayError'))
    )
      throw e;
  }
}

function guestProgram(ops: readonly GuestOp[]): Program {
  const b = new ProgramBuilder();
  const gpa = (i: number, d: number): number => (GPAS[i % GPAS.length] as number) + d;
  ops.forEach((o, n) => {
    switch (o.op) {
      case 'load':
        b.load(o.size, 'r8', gpa(o.at, o.delta));
        break;
      case 'storeImm':
        b.storeImm(o.size, gpa(o.at, o.delta), o.imm);
        break;
      case 'fill':
        b.fill(gpa(o.at, o.delta), o.len, o.byte);
        break;
      case 'copy':
        b.copy(gpa(o.at, 0x40), gpa(o.from, 0x80), o.len);
        break;
      case 'cmp':
        b.cmp(o.size, gpa(o.at, o.delta), o.expect, 100 + n);
        break;
    }
  });
  return b.sync(1).halt().build();
}

/**
 * What every sequence starts from, so that random actions meet live objects: an anonymous mapping
 * (32 pages) and a memfd mapping (16 pages); guest_memfds of 32 pages with MMAP|INIT_SHARED
 * (mapped) and with no flags; slot 1 = anonymous RAM at 2 MiB (16 pages, dirty-logged), slot 2 = a gmem-only
 * slot at 4 MiB (16 pages, userspace_addr = the gmem mapping, #11), slot 3 = a guest_memfd slot
 * without MMAP at 3 MiB (8 pages, shared faults through the anonymous mapping's second half).
 */
function setupEnvironment(
  host: RecordingHost,
  vm: RecordingVm,
  addMap: (m: Mapping, slotUsable: boolean) => Mapping,
  gmems: Gmem[],
  slots: Map<number, Slot>,
): void {
  const anon = addMap(
    { hva: host.mmap(0, 32 * PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), pages: 32 },
    true,
  );
  const memfd = host.memfdCreate('fuzz-env');
  host.ftruncate(memfd, 16 * PAGE);
  addMap({ hva: host.mmap(0, 16 * PAGE, RW, MAP_SHARED, memfd, 0), pages: 16 }, true);
  const shared: Gmem = {
    fd: vm.createGuestMemfd({ size: 32 * PAGE, flags: SHARED }),
    size: 32 * PAGE,
    flags: SHARED,
    map: null,
  };
  const sharedMap = addMap({ hva: host.mmap(0, 32 * PAGE, RW, MAP_SHARED, shared.fd, 0), pages: 32 }, true);
  shared.map = sharedMap;
  const plain: Gmem = { fd: vm.createGuestMemfd({ size: 32 * PAGE }), size: 32 * PAGE, flags: 0, map: null };
  gmems.push(shared, plain);
  const add = (id: number, s: Slot, gmem: { guestMemfd: number; guestMemfdOffset: number } | null): void => {
    const region = {
      slot: id,
      flags: s.flags,
      guestPhysAddr: s.gpa,
      memorySize: s.pages * PAGE,
      userspaceAddr: s.hva,
    };
    vm.setUserMemoryRegion2(gmem === null ? region : { ...region, ...gmem });
    slots.set(id, s);
  };
  add(1, { gpa: 2 * MiB, pages: 16, hva: anon.hva, flags: KVM_MEM_LOG_DIRTY_PAGES, gmem: null }, null);
  add(
    2,
    { gpa: 4 * MiB, pages: 16, hva: sharedMap.hva, flags: KVM_MEM_GUEST_MEMFD, gmem: shared },
    { guestMemfd: shared.fd, guestMemfdOffset: 0 },
  );
  add(
    3,
    { gpa: 3 * MiB, pages: 8, hva: anon.hva + 16 * PAGE, flags: KVM_MEM_GUEST_MEMFD, gmem: plain },
    { guestMemfd: plain.fd, guestMemfdOffset: 0 },
  );
}

/** Runs `actions` on `inner` and returns the trace. The host is disposed afterwards. */
export function runSequence(inner: Host, actions: readonly Action[]): Trace {
  const host: RecordingHost = recordingHost(inner);
  try {
    const kvm = host.openKvm();
    const vm: RecordingVm = kvm.createVm(0);
    const code = host.mmap(0, MiB, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    vm.setUserMemoryRegion({ slot: 0, flags: 0, guestPhysAddr: 0, memorySize: MiB, userspaceAddr: code });
    const vcpu = vm.createVcpu(0);
    /** Mappings a plain slot may use (anonymous, memfd, INIT_SHARED guest_memfd). */
    const maps: Mapping[] = [];
    /** Every mapping, for host reads and writes (also guest_memfds that SIGBUS, GM-8). */
    const allMaps: Mapping[] = [];
    const gmems: Gmem[] = [];
    const memfds: number[] = [];
    const addMap = (m: Mapping, slotUsable: boolean): Mapping => {
      if (slotUsable) maps.push(m);
      allMaps.push(m);
      return m;
    };
    const slots = new Map<number, Slot>();
    const pick = <T>(list: readonly T[], i: number): T | undefined =>
      list.length === 0 ? undefined : list[i % list.length];
    const bindable = (): Gmem[] => gmems.filter((g) => g.flags !== GUEST_MEMFD_FLAG_MMAP);
    setupEnvironment(host, vm, addMap, gmems, slots);

    for (const act of actions) {
      switch (act.a) {
        case 'anon':
          quietly(() =>
            addMap(
              {
                hva: host.mmap(0, act.pages * PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                pages: act.pages,
              },
              true,
            ),
          );
          break;
        case 'memfd':
          quietly(() => {
            const fd = host.memfdCreate('fuzz');
            memfds.push(fd);
            host.ftruncate(fd, act.pages * PAGE);
            addMap({ hva: host.mmap(0, act.pages * PAGE, RW, MAP_SHARED, fd, 0), pages: act.pages }, true);
          });
          break;
        case 'gmem':
          quietly(() =>
            gmems.push({
              fd: vm.createGuestMemfd({ size: act.size, flags: act.flags }),
              size: act.size,
              flags: act.flags,
              map: null,
            }),
          );
          break;
        case 'gmemMmap': {
          const g = pick(gmems, act.g);
          if (g === undefined) break;
          quietly(() => {
            const hva = host.mmap(0, g.size, RW, act.shared ? MAP_SHARED : MAP_PRIVATE, g.fd, 0);
            // A plain slot over a mapping that SIGBUSes is deviation #1 territory: host access only.
            const m = addMap({ hva, pages: g.size / PAGE }, (g.flags & GUEST_MEMFD_FLAG_INIT_SHARED) !== 0);
            g.map ??= m;
          });
          break;
        }
        case 'fallocate': {
          const g = pick(gmems, act.g);
          if (g !== undefined) quietly(() => host.fallocate(g.fd, act.mode, act.offset, act.len));
          break;
        }
        case 'slot': {
          const m = pick(maps, act.map);
          if (m === undefined) break;
          const pages = Math.min(act.pages, m.pages);
          const off = Math.min(act.off, m.pages - pages);
          const region = {
            slot: act.slot,
            flags: act.flags,
            guestPhysAddr: GPAS[act.gpa] as number,
            memorySize: pages * PAGE,
            userspaceAddr: m.hva + off * PAGE,
          };
          quietly(() => {
            if (act.v2) vm.setUserMemoryRegion2(region);
            else vm.setUserMemoryRegion(region);
            const old = slots.get(act.slot);
            if (old) {
              old.gpa = region.guestPhysAddr;
              old.flags = region.flags;
            } else
              slots.set(act.slot, {
                gpa: region.guestPhysAddr,
                pages,
                hva: region.userspaceAddr,
                flags: act.flags,
                gmem: null,
              });
          });
          break;
        }
        case 'gmemSlot': {
          const g = pick(bindable(), act.g);
          if (g === undefined) break;
          let hva: number;
          if ((g.flags & GUEST_MEMFD_FLAG_MMAP) !== 0) {
            // Deviation #11: a gmem-only slot's userspace_addr is the guest_memfd's own mapping.
            if (g.map === null) {
              const m = { hva: host.mmap(0, g.size, RW, MAP_SHARED, g.fd, 0), pages: g.size / PAGE };
              g.map = addMap(m, true);
            }
            hva = g.map.hva + act.off * PAGE;
          } else {
            const m = pick(maps, act.g);
            if (m === undefined) break;
            hva = m.hva;
            if (act.pages > m.pages) break;
          }
          const region = {
            slot: act.slot,
            flags: KVM_MEM_GUEST_MEMFD | act.extraFlags,
            guestPhysAddr: GPAS[act.gpa] as number,
            memorySize: act.pages * PAGE,
            userspaceAddr: hva,
            guestMemfd: g.fd,
            guestMemfdOffset: act.off * PAGE,
          };
          // Keep a gmem-only slot's userspace range inside the mapping (the binding refuses others).
          if ((g.flags & GUEST_MEMFD_FLAG_MMAP) !== 0 && (act.off + act.pages) * PAGE > g.size) {
            region.userspaceAddr = g.map?.hva ?? hva;
          }
          quietly(() => {
            vm.setUserMemoryRegion2(region);
            slots.set(act.slot, {
              gpa: region.guestPhysAddr,
              pages: act.pages,
              hva: region.userspaceAddr,
              flags: region.flags,
              gmem: g,
            });
          });
          break;
        }
        case 'move': {
          const s = slots.get(act.slot);
          if (s === undefined) break;
          const region = {
            slot: act.slot,
            flags: s.flags,
            guestPhysAddr: GPAS[act.gpa] as number,
            memorySize: s.pages * PAGE,
            userspaceAddr: s.hva,
          };
          quietly(() => {
            if (s.gmem) vm.setUserMemoryRegion2({ ...region, guestMemfd: s.gmem.fd, guestMemfdOffset: 0 });
            else vm.setUserMemoryRegion(region);
            s.gpa = region.guestPhysAddr;
          });
          break;
        }
        case 'toggleLog': {
          const s = slots.get(act.slot);
          if (s === undefined) break;
          const flags = s.flags ^ KVM_MEM_LOG_DIRTY_PAGES;
          quietly(() => {
            vm.setUserMemoryRegion({
              slot: act.slot,
              flags,
              guestPhysAddr: s.gpa,
              memorySize: s.pages * PAGE,
              userspaceAddr: s.hva,
            });
            s.flags = flags;
          });
          break;
        }
        case 'delete':
          quietly(() => {
            vm.setUserMemoryRegion2({
              slot: act.slot,
              flags: act.flags,
              guestPhysAddr: 0,
              memorySize: 0,
              userspaceAddr: 0,
              guestMemfd: -1,
            });
            slots.delete(act.slot);
          });
          break;
        case 'hostWrite': {
          const m = pick(allMaps, act.map);
          if (m === undefined) break;
          const off = act.off % (m.pages * PAGE - act.len + 1);
          quietly(() => host.writeMemory(m.hva + off, new Uint8Array(act.len).fill(act.byte)));
          break;
        }
        case 'hostRead': {
          const m = pick(allMaps, act.map);
          if (m === undefined) break;
          const off = act.off % (m.pages * PAGE - act.len + 1);
          quietly(() => host.readMemory(m.hva + off, act.len));
          break;
        }
        case 'guest': {
          quietly(() => vcpu.setProgram(guestProgram(act.ops)));
          for (let i = 0; i < 64; i++) {
            let r: RunResult | undefined;
            quietly(() => {
              r = vcpu.run();
            });
            if (r === undefined || r.ret !== 0 || r.exitReason === KVM_EXIT_HLT) break;
            if (r.exitReason === KVM_EXIT_MMIO && r.mmio && !r.mmio.isWrite)
              vcpu.kvmRun.mmio.data.set(mmioData(r.mmio.physAddr));
          }
          quietly(() => vcpu.getRegs());
          break;
        }
        case 'dirtyLog':
          quietly(() => vm.getDirtyLog({ slot: act.slot, dirtyBitmap: new Uint8Array(8) }));
          break;
        case 'clearLog':
          quietly(() =>
            vm.clearDirtyLog({
              slot: act.slot,
              firstPage: 0,
              numPages: act.numPages,
              dirtyBitmap: new Uint8Array(8).fill(0xff),
            }),
          );
          break;
        case 'manualProtect':
          quietly(() => vm.enableCap({ cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, args: [act.on ? 1 : 0] }));
          break;
        case 'fstat': {
          const fd = act.memfd ? pick(memfds, act.g) : pick(gmems, act.g)?.fd;
          if (fd !== undefined) quietly(() => host.fstat(fd));
          break;
        }
        case 'madvise': {
          // MR-26: the guest sees what the host mapping holds after the advice (zeros for anonymous
          // memory after MADV_DONTNEED, the page cache for shared memfd mappings).
          const m = pick(allMaps, act.map);
          if (m === undefined) break;
          const pages = Math.min(act.pages, m.pages);
          const off = act.off % (m.pages - pages + 1);
          quietly(() => host.madvise(m.hva + off * PAGE, pages * PAGE, act.advice));
          break;
        }
        case 'digest':
          quietly(() => vm.digest(GPAS[act.at] as number, act.pages * PAGE));
          break;
      }
    }
    // The end state: every slot's guest-visible memory, and every host mapping that can be read.
    for (const [, s] of [...slots].sort((x, y) => x[0] - y[0]))
      quietly(() => vm.digest(s.gpa, s.pages * PAGE));
    for (const m of allMaps) quietly(() => host.digest(m.hva, m.pages * PAGE));
    return host.trace({ actions: actions.length });
  } finally {
    host.dispose();
  }
}

// ---- comparing ----------------------------------------------------------------------------------------

/** The first difference between two runs of one sequence, with the documented deviations forgiven. */
export interface Difference {
  readonly index: number;
  readonly model: TraceCall | undefined;
  readonly kvm: TraceCall | undefined;
  /** Deviations forgiven before this point. */
  readonly tolerated: readonly string[];
}

/** Compares two traces of the same actions call by call; null when they agree. */
export function compareTraces(model: Trace, kvm: Trace, tolerated: string[] = []): Difference | null {
  const n = Math.max(model.calls.length, kvm.calls.length);
  for (let i = 0; i < n; i++) {
    const m = model.calls[i];
    const k = kvm.calls[i];
    if (m === undefined || k === undefined) return { index: i, model: m, kvm: k, tolerated };
    const sameCall =
      m.on === k.on && m.method === k.method && JSON.stringify(m.args) === JSON.stringify(k.args);
    if (sameCall && sameOutcome(m, k)) continue;
    const why = sameCall ? documentedDeviation(m, k) : null;
    if (why === null) return { index: i, model: m, kvm: k, tolerated };
    tolerated.push(`call ${i}: ${why}`);
  }
  return null;
}

/** Runs `actions` on a fresh host of each backend and compares. */
export function diffOnce(
  makeModel: () => Host,
  makeKvm: () => Host,
  actions: readonly Action[],
): { difference: Difference | null; tolerated: string[]; calls: number } {
  const a = runSequence(makeModel(), actions);
  const b = runSequence(makeKvm(), actions);
  const tolerated: string[] = [];
  return { difference: compareTraces(a, b, tolerated), tolerated, calls: a.calls.length };
}

/** A readable report of a difference: the actions, the diverging call, both outcomes and the rule. */
export function describeDifference(actions: readonly Action[], d: Difference): string {
  const m = d.model;
  const k = d.kvm;
  const rule = m && 'rule' in m.out ? ` (model's rule: ${m.out.rule})` : '';
  return [
    `first difference at call ${d.index}: ${m?.on ?? k?.on}.${m?.method ?? k?.method}(${JSON.stringify(m?.args ?? k?.args)})${rule}`,
    `  model: ${JSON.stringify(m?.out)}${m?.after === undefined ? '' : ` after ${JSON.stringify(m.after)}`}`,
    `  kvm:   ${JSON.stringify(k?.out)}${k?.after === undefined ? '' : ` after ${JSON.stringify(k.after)}`}`,
    ...(d.tolerated.length > 0 ? [`  tolerated before it: ${d.tolerated.join('; ')}`] : []),
    `  actions (${actions.length}):`,
    ...actions.map((x, i) => `    ${i}: ${JSON.stringify(x)}`),
  ].join('\n');
}
