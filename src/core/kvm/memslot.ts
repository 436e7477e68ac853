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
  /** disallow_lpage per frame for level 2 ([0]) and level 3 ([1]). */
  lpageInfo: [Int32Array, Int32Array] = [new Int32Array(0), new Int32Array(0)];
  /** HP-3: 1 where the frame's gfns have mixed attributes, per level 2 ([0]) and 3 ([1]). */
  lpageMixed: [Uint8Array, Uint8Array] = [new Uint8Array(0), new Uint8Array(0)];
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
   * kvm_alloc_memslot_metadata's lpage_info: frame counts per level, with the first and last
   * frames disallowed when the slot does not cover them, and every frame disallowed when the gfn
   * and hva are not equally aligned for that level (HP-2).
   */
  initLpageInfo(): void {
    const ugfn = Math.floor(this.userspaceAddr / 4096);
    for (const level of [2, 3] as const) {
      const n = LEVEL_PAGES[level];
      const first = Math.floor(this.baseGfn / n);
      const last = Math.floor((this.baseGfn + this.npages - 1) / n);
      const info = new Int32Array(last - first + 1);
      if (this.baseGfn % n !== 0) info[0] = (info[0] as number) + 1;
      if ((this.baseGfn + this.npages) % n !== 0)
        info[info.length - 1] = (info[info.length - 1] as number) + 1;
      // (base_gfn ^ ugfn) & (n - 1): the two are equally aligned iff their difference is.
      if ((((this.baseGfn - ugfn) % n) + n) % n !== 0) {
        for (let i = 0; i < info.length; i++) info[i] = (info[i] as number) + 1;
      }
      this.lpageInfo[level - 2] = info;
      this.lpageMixed[level - 2] = new Uint8Array(info.length);
    }
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
    const info = this.lpageInfo[level - 2] as Int32Array;
    const i = this.lpageIndex(gfn, level);
    const v = info[i];
    if (v === undefined) {
      kvmWarn(`lpage index out of range for gfn ${gfn} in slot ${this.id}`);
      return false;
    }
    return v === 0 && (this.lpageMixed[level - 2] as Uint8Array)[i] === 0;
  }
}

/** One address space's memslots (struct kvm_memslots). */
export class KvmMemslots {
  readonly byId = new Map<number, KvmMemorySlot>();
  readonly index = new MemslotIndex();
  /** Bumped on every update (MR-25); MMIO SPTEs and slot caches compare it. */
  generation = 0;

  constructor(readonly asId: number) {}

  /** The slot whose range contains gfn, INVALID or not (search_memslots). */
  find(gfn: number, table: readonly (KvmMemorySlot | null)[]): KvmMemorySlot | null {
    const h = this.index.find(gfn);
    return h < 0 ? null : (table[h] ?? null);
  }
}
