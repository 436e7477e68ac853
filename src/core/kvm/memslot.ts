/**
 * Memslots: `struct kvm_memory_slot` and the per-address-space set of them (`struct
 * kvm_memslots`), include/linux/kvm_host.h and virt/kvm/kvm_main.c.
 *
 * Each address space keeps its slots by id (a Map: ids are looked up per ioctl, not per fault) and
 * by gfn range (`MemslotIndex`, a B+tree with a read-side directory: the fault path's lookup).
 * The kernel keeps two copies of each set and swaps them under SRCU so readers never see a half
 * update; the model is single-threaded, so it mutates one set in place, and the only intermediate
 * state a reader can observe is the one the kernel publishes on purpose: the INVALID copy of a
 * slot being deleted or moved (MR-21).
 *
 * Per-slot metadata kept like the kernel's:
 * - the dirty bitmap (DL-1), one bit per page, little-endian bit order, `ALIGN(npages, 64) / 8`
 *   bytes;
 * - `lpageInfo`: x86's per-level `disallow_lpage` counts for 2 MiB and 1 GiB frames (HP-2);
 * - `lpageMixed`: the "mixed attributes" flag per frame (HP-3, private-memory VMs). The kernel
 *   keeps it as bit 31 of disallow_lpage; a separate byte array lets an attribute change over a
 *   huge range clear the interior frames with one native fill.
 *
 * Both arrays are materialized on first use, not at creation. The kernel fills lpage_info at
 * creation with values that follow from the slot's base gfn, size and hva alone (HP-2), and the
 * model never changes a count afterwards, so `lpageAllowed` computes a count from those three
 * until someone asks for the arrays; the mixed flags start all clear and only private-memory VMs
 * set any. A slot is then one small object: creating 32764 of them allocates no typed array, and
 * a lookup that goes on to read a random slot's fields touches a compact heap.
 */

import { kvmWarn } from '../errno.js';
import {
  KVM_MEM_GUEST_MEMFD,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_READONLY,
  KVM_MEMSLOT_INVALID,
} from '../uapi.js';
import { MemslotIndex } from './memslot_index.js';

/** Pages per frame at level 2 (2 MiB) and 3 (1 GiB). */
const LEVEL_PAGES = [0, 1, 512, 262144] as const;

/** A guest_memfd binding of a slot (filled in by guest_memfd.ts). */
export interface SlotGmem {
  /** The bound file, or null once the file was released (GM-17). */
  file: unknown;
  /** File page index of the slot's first page. */
  readonly pgoff: number;
}

export class KvmMemorySlot {
  /** The slot's index in the VM's slot table (the handle MemslotIndex stores). */
  handle = -1;
  dirtyBitmap: Uint8Array | null = null;
  /** The materialized lpageInfo, null while every count is still the creation value (HP-2). */
  private lpageCounts: [Int32Array, Int32Array] | null = null;
  /** The materialized lpageMixed, null while no frame is mixed (HP-3). */
  private lpageMixedFlags: [Uint8Array, Uint8Array] | null = null;
  /** guest_memfd binding (GB-*), null for ordinary slots. */
  gmem: SlotGmem | null = null;
  /** Extension slot data (ALLONES page, memfd-paired private file…), owned by the extension. */
  ext: unknown = null;

  constructor(
    readonly asId: number,
    readonly id: number,
    public baseGfn: number,
    readonly npages: number,
    public flags: number,
    readonly userspaceAddr: number,
  ) {}

  get endGfn(): number {
    return this.baseGfn + this.npages;
  }
  get invalid(): boolean {
    return (this.flags & KVM_MEMSLOT_INVALID) !== 0;
  }
  get readonly(): boolean {
    return (this.flags & KVM_MEM_READONLY) !== 0;
  }
  get logDirty(): boolean {
    return (this.flags & KVM_MEM_LOG_DIRTY_PAGES) !== 0;
  }
  get isGmem(): boolean {
    return (this.flags & KVM_MEM_GUEST_MEMFD) !== 0;
  }
  /** hva of gfn (__gfn_to_hva_memslot). */
  gfnToHva(gfn: number): number {
    return this.userspaceAddr + (gfn - this.baseGfn) * 4096;
  }

  /** kvm_dirty_bitmap_bytes(). */
  get dirtyBitmapBytes(): number {
    return Math.ceil(this.npages / 64) * 8;
  }

  /** Marks page `rel` of the slot dirty (mark_page_dirty_in_slot). */
  markDirty(rel: number): void {
    const b = this.dirtyBitmap;
    if (!b) return;
    const i = rel >>> 3;
    b[i] = (b[i] as number) | (1 << (rel & 7));
  }

  isDirty(rel: number): boolean {
    const b = this.dirtyBitmap;
    return b !== null && ((b[rel >>> 3] as number) & (1 << (rel & 7))) !== 0;
  }

  /** Index of the level-L frame containing gfn in lpageInfo (gfn_to_index). */
  lpageIndex(gfn: number, level: 2 | 3): number {
    const n = LEVEL_PAGES[level];
    return Math.floor(gfn / n) - Math.floor(this.baseGfn / n);
  }

  /**
   * kvm_alloc_memslot_metadata's lpage_info count of level-L frame i: one for the first and the
   * last frame when the slot does not cover them, plus one for every frame when the gfn and hva
   * are not equally aligned for that level (HP-2). Undefined outside the slot's frames.
   */
  private initialDisallow(i: number, level: 2 | 3): number | undefined {
    const n = LEVEL_PAGES[level];
    const base = this.baseGfn;
    const end = base + this.npages;
    const frames = Math.floor((end - 1) / n) - Math.floor(base / n) + 1;
    if (!(i >= 0 && i < frames)) return undefined;
    let v = 0;
    if (i === 0 && base % n !== 0) v++;
    if (i === frames - 1 && end % n !== 0) v++;
    // (base_gfn ^ ugfn) & (n - 1): the two are equally aligned iff their difference is.
    const ugfn = Math.floor(this.userspaceAddr / 4096);
    if ((((base - ugfn) % n) + n) % n !== 0) v++;
    return v;
  }

  /**
   * disallow_lpage per frame for level 2 ([0]) and level 3 ([1]), as kvm_alloc_memslot_metadata
   * fills it (HP-2). Materialized on first access (see the header); writes to it count.
   */
  get lpageInfo(): [Int32Array, Int32Array] {
    let a = this.lpageCounts;
    if (a === null) {
      a = [this.initialCounts(2), this.initialCounts(3)];
      this.lpageCounts = a;
    }
    return a;
  }

  /** HP-3: 1 where the frame's gfns have mixed attributes, per level 2 ([0]) and 3 ([1]). */
  get lpageMixed(): [Uint8Array, Uint8Array] {
    let a = this.lpageMixedFlags;
    if (a === null) {
      a = [new Uint8Array(this.frameCount(2)), new Uint8Array(this.frameCount(3))];
      this.lpageMixedFlags = a;
    }
    return a;
  }

  /** Frames of the level that the slot touches (the length of its lpage_info array). */
  private frameCount(level: 2 | 3): number {
    const n = LEVEL_PAGES[level];
    return Math.floor((this.baseGfn + this.npages - 1) / n) - Math.floor(this.baseGfn / n) + 1;
  }

  private initialCounts(level: 2 | 3): Int32Array {
    const info = new Int32Array(this.frameCount(level));
    for (let i = 0; i < info.length; i++) info[i] = this.initialDisallow(i, level) as number;
    return info;
  }

  /** First gfn of the level frame with index i (inverse of lpageIndex). */
  frameBase(i: number, level: 2 | 3): number {
    const n = LEVEL_PAGES[level];
    return (Math.floor(this.baseGfn / n) + i) * n;
  }

  /** Whether frame i of the level lies wholly inside the slot (only those are tracked, HP-3). */
  frameInside(i: number, level: 2 | 3): boolean {
    const b = this.frameBase(i, level);
    return b >= this.baseGfn && b + LEVEL_PAGES[level] <= this.endGfn;
  }

  /** True if level-L mappings are allowed at gfn's frame (disallow_lpage == 0, ignoring nothing). */
  lpageAllowed(gfn: number, level: 2 | 3): boolean {
    const i = this.lpageIndex(gfn, level);
    const counts = this.lpageCounts;
    const v = counts === null ? this.initialDisallow(i, level) : (counts[level - 2] as Int32Array)[i];
    if (v === undefined) {
      kvmWarn(`lpage index out of range for gfn ${gfn} in slot ${this.id}`);
      return false;
    }
    const mixed = this.lpageMixedFlags;
    return v === 0 && (mixed === null || (mixed[level - 2] as Uint8Array)[i] === 0);
  }
}

/**
 * An address space's slots by id (the kernel's `id_hash`): the part of a Map's interface the
 * model uses, over the VM's slot table. Slot `id` of address space `asId` sits at entry
 * `id * stride + asId` (stride: the VM's number of address spaces), which is also the handle
 * the address space's MemslotIndex stores for it — so the id lookup of an ioctl and the handle
 * lookup of a gfn touch the same entry, and a slot's handle follows from its id (ids are below
 * KVM_MEM_SLOTS_NUM, 2^15). The table grows by doubling to the largest entry used. A Map would
 * cost a hash probe per lookup, and a rehash of every entry now and then as deletes leave holes.
 * Iteration is in id order.
 */
export class SlotsById {
  private count = 0;

  /**
   * @param table the VM's slot table (shared by its address spaces; null entries are free)
   * @param stride the number of address spaces sharing it
   * @param asId this address space
   */
  constructor(
    private readonly table: (KvmMemorySlot | null)[],
    private readonly stride: number,
    private readonly asId: number,
  ) {}

  /** Number of slots. */
  get size(): number {
    return this.count;
  }

  /** The slot table entry (MemslotIndex handle) of slot `id`. */
  handleOf(id: number): number {
    return id * this.stride + this.asId;
  }

  get(id: number): KvmMemorySlot | undefined {
    return this.table[id * this.stride + this.asId] ?? undefined;
  }

  has(id: number): boolean {
    return (this.table[id * this.stride + this.asId] ?? null) !== null;
  }

  set(id: number, slot: KvmMemorySlot): this {
    if (!(Number.isInteger(id) && id >= 0 && id < 2 ** 16)) {
      kvmWarn(`SlotsById: slot id ${id} out of range`);
      return this;
    }
    const t = this.table;
    const h = id * this.stride + this.asId;
    if (h >= t.length) {
      // Grow by doubling with explicit nulls: a store far past the end would make the array sparse.
      let len = Math.max(8, t.length * 2);
      while (len <= h) len *= 2;
      for (let i = t.length; i < len; i++) t.push(null);
    }
    if (t[h] === null) this.count++;
    t[h] = slot;
    return this;
  }

  delete(id: number): boolean {
    const t = this.table;
    const h = id * this.stride + this.asId;
    if ((t[h] ?? null) === null) return false;
    t[h] = null;
    this.count--;
    return true;
  }

  /** The slots in id order. */
  *values(): IterableIterator<KvmMemorySlot> {
    const t = this.table;
    for (let h = this.asId; h < t.length; h += this.stride) {
      const s = t[h];
      if (s) yield s;
    }
  }
}

/** One address space's memslots (struct kvm_memslots). */
export class KvmMemslots {
  readonly byId: SlotsById;
  /**
   * gfn → slot. Its handles index the VM's slot table, which it resolves to the slots
   * themselves, so `find` answers with a slot and keeps `last_used_slot` (memslot_index.ts).
   */
  readonly index: MemslotIndex<KvmMemorySlot>;
  /** Bumped on every update (MR-25); MMIO SPTEs and slot caches compare it. */
  generation = 0;

  /**
   * @param table the VM's slot table, which `byId` fills and MemslotIndex handles index
   * @param nrAs the number of address spaces sharing the table
   */
  constructor(
    readonly asId: number,
    table: (KvmMemorySlot | null)[] = [],
    nrAs = 1,
  ) {
    this.byId = new SlotsById(table, nrAs, asId);
    this.index = new MemslotIndex<KvmMemorySlot>(undefined, (h) => table[h] ?? null);
  }

  /** The slot whose range contains gfn, INVALID or not (__gfn_to_memslot / search_memslots). */
  find(gfn: number): KvmMemorySlot | null {
    return this.index.findValue(gfn);
  }
}
