/**
 * Memory attributes (virt/kvm/kvm_main.c kvm_vm_ioctl_set_mem_attributes,
 * kvm_vm_set_mem_attributes; arch/x86/kvm/mmu/mmu.c kvm_arch_post_set_memory_attributes):
 * the VM-wide per-gfn PRIVATE attribute, stored as ranges.
 *
 * The kernel stores an xarray entry per gfn; the model stores an interval map (lib/interval_map.ts),
 * so setting a 1 TiB range costs O(log n + ranges changed), not 2^28 entries (architecture §4).
 * The semantics are the kernel's: the call replaces (MA-3), an unchanged range does nothing at all
 * (MA-4), and invalidation happens only where a memslot intersects (MA-5, INV-4).
 *
 * Mixed-attribute huge-page tracking (HP-3) is kept per slot and recomputed for the head and tail
 * frames an update touches; interior frames, wholly inside the updated range, become uniform and
 * are cleared with one fill.
 */

import type { MemoryAttributes } from '../api.js';
import { fail } from '../errno.js';
import { IntervalMap } from '../lib/interval_map.js';
import { KVM_MEMORY_ATTRIBUTE_PRIVATE } from '../uapi.js';
import { u64AddOverflows } from '../units.js';
import type { KvmVm } from './kvm_main.js';
import type { KvmMemorySlot } from './memslot.js';

const PAGE = 4096;
const LEVEL_PAGES = { 2: 512, 3: 262144 } as const;
const LEVEL_2M = 512;
const LEVEL_1G = 262144;

/** The VM's attributes: an interval map gfn → attributes (absent = 0). */
export class KvmMemoryAttributes {
  readonly map = new IntervalMap();
  readonly stats = { calls: 0, changes: 0, noops: 0 };

  get(gfn: number): number {
    return this.map.get(gfn);
  }
}

/** Attributes the VM supports (kvm_supported_mem_attributes). */
export function supportedAttributes(vm: KvmVm): number {
  return vm.hasPrivateMem ? KVM_MEMORY_ATTRIBUTE_PRIVATE : 0;
}

/**
 * HP-3: the mixed flag of frame i of the level (hugepage_has_attrs): the frame's attributes are
 * not uniform, or (1 GiB) one of its 2 MiB frames is mixed. Frames not wholly inside the slot are
 * never tracked (already disallowed, HP-2) and keep their flag.
 */
function recomputeMixed(
  attrs: KvmMemoryAttributes,
  slot: KvmMemorySlot,
  i: number,
  level: 2 | 3,
  /** A gfn of the frame whose 2 MiB frame is known (1 GiB level): if mixed, so is this one. */
  probe: number,
): void {
  if (!slot.frameInside(i, level)) return;
  const b = slot.frameBase(i, level);
  const n = level === 2 ? LEVEL_2M : LEVEL_1G;
  // The conditions are OR-ed: the 2 MiB flag of the probe (just recomputed) is the cheapest to
  // read and decides most 4 KiB conversions, then the attribute walk, then the other 511 flags.
  let m = level === 3 && (slot.lpageMixed[0] as Uint8Array)[slot.lpageIndex(probe, 2)] === 1;
  if (!m) m = !attrs.map.isConstant(b, b + n);
  if (!m && level === 3) {
    // A 1 GiB frame is mixed if any 2 MiB frame in it is.
    const m2 = slot.lpageMixed[0] as Uint8Array;
    const i2 = slot.lpageIndex(b, 2);
    for (let k = 0; k < 512 && !m; k++) m = m2[i2 + k] === 1;
  }
  (slot.lpageMixed[level - 2] as Uint8Array)[i] = m ? 1 : 0;
}

/** HP-3: recomputes the mixed flag of the level's slot frames that [start, end) touches. */
function updateMixedLevel(
  attrs: KvmMemoryAttributes,
  slot: KvmMemorySlot,
  start: number,
  end: number,
  level: 2 | 3,
): void {
  const lo = Math.max(start, slot.baseGfn);
  const hi = Math.min(end, slot.endGfn);
  if (lo >= hi) return;
  const first = slot.lpageIndex(lo, level);
  const last = slot.lpageIndex(hi - 1, level);
  recomputeMixed(attrs, slot, first, level, lo);
  if (last !== first) recomputeMixed(attrs, slot, last, level, hi - 1);
  // Interior frames lie wholly inside [start, end): one value now, so not mixed.
  if (last - first > 1) (slot.lpageMixed[level - 2] as Uint8Array).fill(0, first + 1, last);
}

/** HP-3: recomputes the mixed flag of slot frames that [start, end) touches (2 MiB first). */
function updateMixed(vm: KvmVm, slot: KvmMemorySlot, start: number, end: number): void {
  const attrs = vm.attributes;
  if (!attrs) return;
  // No arrays or closures per call: this runs for every conversion (and tsx wraps each named
  // closure it creates in a defineProperty call, bench/README.md).
  updateMixedLevel(attrs, slot, start, end, 2);
  updateMixedLevel(attrs, slot, start, end, 3);
}

/** Computes every frame's mixed flag for a new slot of a private-memory VM (HP-3). */
export function initMixed(vm: KvmVm, slot: KvmMemorySlot): void {
  if (!vm.hasPrivateMem || !vm.attributes) return;
  const attrs = vm.attributes;
  for (const level of [2, 3] as const) {
    const n = LEVEL_PAGES[level];
    const mixed = slot.lpageMixed[level - 2] as Uint8Array;
    // Only frames that straddle an attribute boundary can be mixed: visit the boundaries.
    attrs.map.forEachRange(slot.baseGfn, slot.endGfn, (s, e) => {
      for (const g of [s, e]) {
        if (g <= slot.baseGfn || g >= slot.endGfn) continue;
        const i = slot.lpageIndex(g, level);
        if (!slot.frameInside(i, level)) continue;
        const b = slot.frameBase(i, level);
        if (g !== b) mixed[i] = 1;
      }
    });
    if (level === 3) {
      const m2 = slot.lpageMixed[0] as Uint8Array;
      for (let i = 0; i < mixed.length; i++) {
        if (mixed[i] === 1 || !slot.frameInside(i, 3)) continue;
        const i2 = slot.lpageIndex(slot.frameBase(i, 3), 2);
        for (let k = 0; k < 512; k++) {
          if (m2[i2 + k] === 1) {
            mixed[i] = 1;
            break;
          }
        }
      }
    }
    void n;
  }
}

function checkU64(name: string, v: number): void {
  if (!Number.isInteger(v) || v < 0) throw new TypeError(`${name} ${String(v)} is not a u64`);
}

/** KVM_SET_MEMORY_ATTRIBUTES (MA-0..MA-7). */
export function kvmSetMemoryAttributes(vm: KvmVm, a: MemoryAttributes): 0 {
  const call = 'KVM_SET_MEMORY_ATTRIBUTES';
  const attrs = vm.attributes;
  if (!attrs) return fail('ENOTTY', 'no memory attributes in this model', call, 'MA-0');
  const flags = a.flags ?? 0;
  checkU64('address', a.address);
  checkU64('size', a.size);
  checkU64('attributes', a.attributes);
  checkU64('flags', flags);
  attrs.stats.calls++;
  // MA-1, in order.
  if (flags !== 0) fail('EINVAL', `flags ${flags} must be 0`, call, 'MA-1');
  const supported = supportedAttributes(vm);
  if (a.attributes >= 2 ** 32 || ((a.attributes >>> 0) & ~supported) !== 0) {
    fail(
      'EINVAL',
      `attributes 0x${a.attributes.toString(16)} not supported (0x${supported.toString(16)})`,
      call,
      'MA-1',
    );
  }
  if (a.size === 0 || u64AddOverflows(a.address, a.size)) {
    fail('EINVAL', `size ${a.size} is 0 or address + size overflows`, call, 'MA-1');
  }
  if (a.address % PAGE !== 0 || a.size % PAGE !== 0) {
    fail('EINVAL', `address 0x${a.address.toString(16)} / size ${a.size} not page aligned`, call, 'MA-1');
  }
  const start = a.address / PAGE;
  const end = start + a.size / PAGE;
  // MA-4: nothing to change → nothing happens (no invalidation, no seq bump).
  if (attrs.map.isUniform(start, end, a.attributes)) {
    attrs.stats.noops++;
    return 0;
  }
  attrs.stats.changes++;
  // MA-5: invalidate where memslots intersect, widened to the huge frames that straddle the
  // range's ends inside a slot (their mapping level may change).
  const ranges: { asId: number; start: number; end: number; addStart: number; addEnd: number }[] = [];
  const slots: KvmMemorySlot[] = [];
  for (const set of vm.memslots) {
    set.index.forEachIntersecting(start, end, (_b, _n, h) => {
      const slot = vm.slotTable[h];
      if (!slot) return;
      slots.push(slot);
      const lo = Math.max(start, slot.baseGfn);
      const hi = Math.min(end, slot.endGfn);
      // The head and tail huge frames wholly inside the slot join the retry range (their level
      // may change); the zap covers only the range itself.
      let addLo = lo;
      let addHi = hi;
      for (let n = LEVEL_2M; n <= LEVEL_1G; n *= 512) {
        const flo = Math.floor(lo / n) * n;
        const fhi = Math.ceil(hi / n) * n;
        if (flo >= slot.baseGfn && flo + n <= slot.endGfn) addLo = Math.min(addLo, flo);
        if (fhi <= slot.endGfn && fhi - n >= slot.baseGfn) addHi = Math.max(addHi, fhi);
      }
      ranges.push({ asId: set.asId, start: lo, end: hi, addStart: addLo, addEnd: addHi });
    });
  }
  vm.invalidateGfnRanges(ranges, () => {
    attrs.map.set(start, end, a.attributes);
    for (const slot of slots) updateMixed(vm, slot, start, end);
  });
  return 0;
}
