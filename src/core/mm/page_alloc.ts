/**
 * The host's page allocator (mm/page_alloc.c, much simplified): 4 KiB frames, with per-frame
 * metadata in typed arrays and the frames' bytes in lazily created 2 MiB ArrayBuffers.
 *
 * Layout. Frames are numbered by pfn and grouped in sections of 512 frames (2 MiB), the unit of
 * both data storage and huge allocation:
 *
 *   refcount[pfn]  Uint16  references (page cache, anon map, gup pins, page lock holders…);
 *                          0 = free. Overflow past 65535 is a bug (kvmWarn).
 *   flags[pfn]     Uint8   PG_* bits below, documented next to the masks.
 *   ownerIds[pfn]  Uint16  who holds the frame, as a small id (0 when free) into the owner table:
 *                          an inode number (> 0), OWNER_ANON or OWNER_KERNEL, with the frames
 *                          each owner holds. An id is recycled when its owner's last frame goes;
 *                          past 65535 owners holding frames at once the array widens to Uint32.
 *                          For introspection (`ownerOf`, "frames by owner") and leak reports.
 *   sections[s]    Uint8Array(2 MiB) | null — created on the first data access to any frame of
 *                          section s and dropped again when every frame of the section is free.
 *                          A frame whose section has no buffer reads as zeros.
 *
 * That is 5 bytes of metadata per frame. The arrays grow by 1/8 of their length (at least 16
 * sections), not by doubling: the slack stays under 12.5 % — doubling left a 1 GiB guest's
 * arrays sized for 2^19 frames, 14 B per used frame against a budget of 16 B for all metadata
 * per resident page — and the copying stays amortised O(1). Pfn space is virtual: it grows by
 * whole sections when the free lists are empty, so a huge (order 9 or 18) allocation is always
 * naturally aligned and contiguous. Host RAM is an accounting limit (`ramLimitBytes`): an
 * allocation that would exceed it fails, and the caller reports ENOMEM — a sparse 1 TiB guest
 * with a few touched pages costs a few pages.
 *
 * Simplifications, on purpose: no zones, no NUMA, no buddy merging (a freed huge block goes back
 * whole to its order's pool; order-0 frames never coalesce into a huge block again — the model
 * simply grows pfn space instead), no reclaim or swap.
 */

import { kvmWarn } from '../errno.js';
import type { Pfn } from '../units.js';

/** Frames per section (2 MiB). */
export const SECTION_FRAMES = 512;
const SECTION_BYTES = SECTION_FRAMES * 4096;

// flags[] bits
/** PG_locked: the page lock is held (memfile get_lock_pfn … put_unlock_pfn, seed 001). */
export const PG_LOCKED = 1 << 0;
/** The frame's bytes may be non-zero: it must be zeroed before it is handed out again. */
export const PG_DIRTY_DATA = 1 << 1;
/** PG_hwpoison: memory failure; any access gets SIGBUS/EHWPOISON (GM-18, RO-5). */
export const PG_HWPOISON = 1 << 2;
/** First frame of a huge (order ≥ 9) block. */
export const PG_HEAD = 1 << 3;
/** Never freed: the shared zero page, the all-ones page. */
export const PG_RESERVED = 1 << 4;
/** Order of a huge head: bits 5–6 hold 0 (order 0), 1 (order 9) or 2 (order 18). */
const PG_ORDER_SHIFT = 5;
const PG_ORDER_MASK = 3 << PG_ORDER_SHIFT;

export const OWNER_NONE = 0;
export const OWNER_ANON = -1;
export const OWNER_KERNEL = -2;

export type PageOrder = 0 | 9 | 18;
const ORDER_CODE: Record<PageOrder, number> = { 0: 0, 9: 1, 18: 2 };
const CODE_ORDER: readonly PageOrder[] = [0, 9, 18];

export interface PageAllocatorOptions {
  /** Host RAM, in bytes: allocations beyond it fail (ENOMEM). Default 16 GiB. */
  readonly ramLimitBytes?: number;
}

/** Counters, for reports and benchmarks. */
export interface PageAllocStats {
  /** Frames currently allocated. */
  allocated: number;
  /** Frames the limit allows. */
  limit: number;
  /** Allocation calls that succeeded / failed for lack of memory. */
  allocs: number;
  allocFailures: number;
  frees: number;
  /** Frames zeroed on hand-out (the others were already known to be zero). */
  zeroed: number;
  /** Sections whose data buffer exists (resident bytes = sections × 2 MiB). */
  residentSections: number;
}

/** Smallest growth step of the per-frame arrays, in elements (16 sections). */
const MIN_GROW = 16 * SECTION_FRAMES;

/**
 * A copy of `a` with room for at least `min` elements: 1/2^shift more than now (at least
 * `minStep`), rounded up to a multiple of `minStep`. The per-frame arrays grow by 1/8 (see the
 * file comment for why not doubling); the free stack, which holds only free frames, by 1/2.
 */
function grow<T extends Uint8Array | Uint16Array | Uint32Array | Int32Array>(
  a: T,
  min: number,
  minStep = MIN_GROW,
  shift = 3,
): T {
  const want = Math.max(min, a.length + Math.max(a.length >>> shift, minStep));
  const n = Math.ceil(want / minStep) * minStep;
  const b = new (a.constructor as new (n: number) => T)(n);
  b.set(a);
  return b;
}

/**
 * Bytes a resident section costs besides its 2 MiB of data: the Uint8Array, its ArrayBuffer and
 * the DataView on the V8 heap (286 B measured with `--expose-gc`, Node 20 x64) plus V8's native
 * backing-store record (~100 B).
 */
export const SECTION_OBJECT_BYTES = 384;

export class PageAllocator {
  refcount = new Uint16Array(0);
  flags = new Uint8Array(0);
  /** Owner id of each frame (0 = free); see the file comment and `ownerOf`. */
  private ownerIds: Uint16Array | Uint32Array = new Uint16Array(0);
  /** Owner table, by id: the owner (inode number, OWNER_ANON…) and the frames it holds. */
  private ownerValue: number[] = [OWNER_NONE];
  private ownerFrames: number[] = [0];
  private ownerIdByValue = new Map<number, number>();
  private freeOwnerIds: number[] = [];
  /** The last owner looked up and its id: allocations come in runs of one owner. */
  private lastOwner = OWNER_NONE;
  private lastOwnerId = 0;
  /** Data of each section, or null if never touched / released. */
  private sections: (Uint8Array | null)[] = [];
  private views: (DataView | null)[] = [];
  /** Frames in use per section, to release a section's buffer when it empties. */
  private sectionUsed = new Int32Array(0);
  /** Stack of free order-0 frames. */
  private free0 = new Int32Array(0);
  private free0Len = 0;
  /** Pools of free huge blocks (base pfns). */
  private free9: number[] = [];
  private free18: number[] = [];
  private nextSection = 0;
  readonly stats: PageAllocStats;
  /** Waiters for a page lock (rare: a hole punch that met a locked page). */
  private lockWaiters = new Map<number, (() => void)[]>();

  constructor(options: PageAllocatorOptions = {}) {
    const limit = Math.floor((options.ramLimitBytes ?? 16 * 2 ** 30) / 4096);
    this.stats = {
      allocated: 0,
      limit,
      allocs: 0,
      allocFailures: 0,
      frees: 0,
      zeroed: 0,
      residentSections: 0,
    };
  }

  /** Total pfn space (frames ever created). */
  get frameCount(): number {
    return this.nextSection * SECTION_FRAMES;
  }

  private newSections(count: number, alignSections: number): number {
    let s = this.nextSection;
    if (s % alignSections !== 0) {
      // Skipped sections become order-9 blocks, so nothing is wasted.
      const aligned = Math.ceil(s / alignSections) * alignSections;
      for (let k = s; k < aligned; k++) this.free9.push(k * SECTION_FRAMES);
      s = aligned;
    }
    const end = s + count;
    const frames = end * SECTION_FRAMES;
    if (this.refcount.length < frames) {
      this.refcount = grow(this.refcount, frames);
      this.flags = grow(this.flags, frames);
      this.ownerIds = grow(this.ownerIds, frames);
    }
    if (this.sectionUsed.length < end) this.sectionUsed = grow(this.sectionUsed, end, 64);
    while (this.sections.length < end) {
      this.sections.push(null);
      this.views.push(null);
    }
    this.nextSection = end;
    return s;
  }

  private refillOrder0(): void {
    const base = this.free9.pop() ?? this.newSections(1, 1) * SECTION_FRAMES;
    if (this.free0.length < this.free0Len + SECTION_FRAMES) {
      this.free0 = grow(this.free0, this.free0Len + SECTION_FRAMES, SECTION_FRAMES, 1);
    }
    // Push in reverse so frames come out in ascending order (nicer to read in dumps).
    for (let i = SECTION_FRAMES - 1; i >= 0; i--) this.free0[this.free0Len++] = base + i;
  }

  /**
   * Allocates one frame with refcount 1, zero-filled. Returns -1 when host RAM is exhausted (the
   * caller turns that into ENOMEM with its own call name).
   */
  alloc(owner: number): Pfn | -1 {
    if (this.stats.allocated >= this.stats.limit) {
      this.stats.allocFailures++;
      return -1;
    }
    if (this.free0Len === 0) this.refillOrder0();
    const pfn = this.free0[--this.free0Len] as number;
    this.takeFrame(pfn, owner);
    this.stats.allocated++;
    this.stats.allocs++;
    return pfn as Pfn;
  }

  /**
   * Allocates 2^order contiguous, naturally aligned frames (order 9 = 2 MiB, 18 = 1 GiB). Every
   * frame gets refcount 1 (the model tracks references per 4 KiB page even inside a huge block);
   * the head carries PG_HEAD and the order. Returns the base pfn or -1.
   */
  allocHuge(order: 9 | 18, owner: number): Pfn | -1 {
    const n = 2 ** order;
    if (this.stats.allocated + n > this.stats.limit) {
      this.stats.allocFailures++;
      return -1;
    }
    let base: number;
    if (order === 9) base = this.free9.pop() ?? this.newSections(1, 1) * SECTION_FRAMES;
    else base = this.free18.pop() ?? this.newSections(512, 512) * SECTION_FRAMES;
    for (let i = 0; i < n; i++) this.takeFrame(base + i, owner);
    this.flags[base] =
      ((this.flags[base] as number) | PG_HEAD | (ORDER_CODE[order] << PG_ORDER_SHIFT)) & 0xff;
    this.stats.allocated += n;
    this.stats.allocs++;
    return base as Pfn;
  }

  private takeFrame(pfn: number, owner: number): void {
    const s = Math.floor(pfn / SECTION_FRAMES);
    const data = this.sections[s];
    if (data && ((this.flags[pfn] as number) & PG_DIRTY_DATA) !== 0) {
      const off = (pfn - s * SECTION_FRAMES) * 4096;
      data.fill(0, off, off + 4096);
      this.stats.zeroed++;
    }
    this.refcount[pfn] = 1;
    this.flags[pfn] = 0;
    const id = owner === this.lastOwner && this.lastOwnerId !== 0 ? this.lastOwnerId : this.ownerIdFor(owner);
    this.ownerIds[pfn] = id;
    this.ownerFrames[id] = (this.ownerFrames[id] as number) + 1;
    this.sectionUsed[s] = (this.sectionUsed[s] as number) + 1;
  }

  /** The owner table's id for `owner`, made if it holds no frame yet. */
  private ownerIdFor(owner: number): number {
    let id = this.ownerIdByValue.get(owner);
    if (id === undefined) {
      id = this.freeOwnerIds.pop() ?? this.ownerValue.length;
      if (id === this.ownerValue.length) {
        this.ownerValue.push(owner);
        this.ownerFrames.push(0);
      } else {
        this.ownerValue[id] = owner;
      }
      if (id > 0xffff && this.ownerIds instanceof Uint16Array) {
        const wide = new Uint32Array(this.ownerIds.length);
        wide.set(this.ownerIds);
        this.ownerIds = wide;
      }
      this.ownerIdByValue.set(owner, id);
    }
    this.lastOwner = owner;
    this.lastOwnerId = id;
    return id;
  }

  /** Drops one frame from owner `id`; the id is recycled when its owner holds none. */
  private dropOwnerFrame(id: number): void {
    const left = (this.ownerFrames[id] as number) - 1;
    this.ownerFrames[id] = left;
    if (left !== 0) return;
    this.ownerIdByValue.delete(this.ownerValue[id] as number);
    this.ownerValue[id] = OWNER_NONE;
    this.freeOwnerIds.push(id);
    if (this.lastOwnerId === id) this.lastOwnerId = 0;
  }

  /** Who holds frame pfn: an inode number, OWNER_ANON, OWNER_KERNEL; OWNER_NONE when free. */
  ownerOf(pfn: Pfn): number {
    return this.ownerValue[this.ownerIds[pfn] ?? 0] ?? OWNER_NONE;
  }

  /** Order of the block headed by pfn (0 for ordinary frames). */
  orderOf(pfn: Pfn): PageOrder {
    return CODE_ORDER[((this.flags[pfn] as number) & PG_ORDER_MASK) >> PG_ORDER_SHIFT] ?? 0;
  }

  /** get_page: one more reference. */
  get(pfn: Pfn): void {
    const r = this.refcount[pfn] as number;
    if (r === 0) kvmWarn(`get_page on free pfn ${pfn}`);
    if (r === 0xffff) kvmWarn(`refcount overflow on pfn ${pfn}`);
    this.refcount[pfn] = r + 1;
  }

  /** put_page: drop a reference; the frame is freed when the last one goes. */
  put(pfn: Pfn): void {
    const r = this.refcount[pfn] as number;
    if (r === 0) {
      kvmWarn(`put_page on free pfn ${pfn}`);
      return;
    }
    if (r > 1) {
      this.refcount[pfn] = r - 1;
      return;
    }
    if (((this.flags[pfn] as number) & PG_RESERVED) !== 0) {
      kvmWarn(`last reference dropped on reserved pfn ${pfn}`);
      return;
    }
    this.freeFrame(pfn);
  }

  private freeFrame(pfn: number): void {
    const flags = this.flags[pfn] as number;
    if ((flags & PG_LOCKED) !== 0) kvmWarn(`freeing locked pfn ${pfn}`);
    // A frame of a huge block goes back to its pool when the whole block is free; until then
    // it stays accounted as allocated (the kernel frees folios, not pages).
    const head = this.headOf(pfn);
    this.refcount[pfn] = 0;
    const id = this.ownerIds[pfn] as number;
    this.ownerIds[pfn] = 0;
    if (id !== 0) this.dropOwnerFrame(id);
    this.flags[pfn] = (pfn === head ? flags & (PG_HEAD | PG_ORDER_MASK) : 0) | PG_DIRTY_DATA;
    const s = Math.floor(pfn / SECTION_FRAMES);
    this.sectionUsed[s] = (this.sectionUsed[s] as number) - 1;
    if (head >= 0) {
      this.maybeFreeHuge(head);
    } else {
      if (this.free0Len === this.free0.length) {
        this.free0 = grow(this.free0, this.free0Len + 1, SECTION_FRAMES, 1);
      }
      this.free0[this.free0Len++] = pfn;
      this.stats.allocated--;
      this.stats.frees++;
    }
    if (this.sectionUsed[s] === 0) this.releaseSection(s);
  }

  /** Head pfn of the huge block containing pfn, or -1 for an order-0 frame. */
  private headOf(pfn: number): number {
    const b9 = pfn - (pfn % 512);
    const f9 = this.flags[b9] as number;
    if ((f9 & PG_HEAD) !== 0 && (f9 & PG_ORDER_MASK) !== 0) return b9;
    const b18 = pfn - (pfn % 262144);
    const f18 = this.flags[b18] as number;
    if ((f18 & PG_HEAD) !== 0 && (f18 & PG_ORDER_MASK) >> PG_ORDER_SHIFT === 2) return b18;
    return -1;
  }

  private maybeFreeHuge(head: number): void {
    const order = this.orderOf(head as Pfn);
    const n = 2 ** order;
    for (let i = 0; i < n; i++) if ((this.refcount[head + i] as number) !== 0) return;
    this.flags[head] = PG_DIRTY_DATA;
    if (order === 9) this.free9.push(head);
    else this.free18.push(head);
    this.stats.allocated -= n;
    this.stats.frees++;
  }

  private releaseSection(s: number): void {
    if (this.sections[s]) {
      this.sections[s] = null;
      this.views[s] = null;
      this.stats.residentSections--;
      // With the buffer gone its frames read as zeros: nothing to zero on reuse.
      const base = s * SECTION_FRAMES;
      for (let i = 0; i < SECTION_FRAMES; i++) {
        this.flags[base + i] = (this.flags[base + i] as number) & ~PG_DIRTY_DATA;
      }
    }
  }

  /** The 2 MiB buffer holding pfn's bytes (created on first use); pfn's bytes start at `dataOffset(pfn)`. */
  sectionData(pfn: Pfn): Uint8Array {
    const s = Math.floor(pfn / SECTION_FRAMES);
    let d = this.sections[s];
    if (!d) {
      d = new Uint8Array(SECTION_BYTES);
      this.sections[s] = d;
      this.stats.residentSections++;
    }
    return d;
  }

  /** A DataView over the same section buffer as `sectionData`. */
  sectionView(pfn: Pfn): DataView {
    const s = Math.floor(pfn / SECTION_FRAMES);
    let v = this.views[s];
    if (!v) {
      v = new DataView(this.sectionData(pfn).buffer);
      this.views[s] = v;
    }
    return v;
  }

  /** Byte offset of pfn's data inside its section buffer. */
  dataOffset(pfn: Pfn): number {
    return (pfn % SECTION_FRAMES) * 4096;
  }

  /** Marks pfn's bytes as possibly non-zero (call after writing them). */
  markDirtyData(pfn: Pfn): void {
    this.flags[pfn] = (this.flags[pfn] as number) | PG_DIRTY_DATA;
  }

  /** Copies `len` bytes of frame pfn from `off` into dst at dstOff (zeros if never touched). */
  read(pfn: Pfn, off: number, dst: Uint8Array, dstOff: number, len: number): void {
    const s = Math.floor(pfn / SECTION_FRAMES);
    const d = this.sections[s];
    if (!d) {
      dst.fill(0, dstOff, dstOff + len);
      return;
    }
    const base = this.dataOffset(pfn) + off;
    dst.set(d.subarray(base, base + len), dstOff);
  }

  /** Copies len bytes of src (from srcOff) into frame pfn at off. */
  write(pfn: Pfn, off: number, src: Uint8Array, srcOff: number, len: number): void {
    const d = this.sectionData(pfn);
    d.set(src.subarray(srcOff, srcOff + len), this.dataOffset(pfn) + off);
    this.flags[pfn] = (this.flags[pfn] as number) | PG_DIRTY_DATA;
  }

  /** Fills len bytes of frame pfn at off with byte. */
  fill(pfn: Pfn, off: number, len: number, byte: number): void {
    if (byte === 0 && !this.sections[Math.floor(pfn / SECTION_FRAMES)]) return;
    const d = this.sectionData(pfn);
    const base = this.dataOffset(pfn) + off;
    d.fill(byte, base, base + len);
    this.flags[pfn] = (this.flags[pfn] as number) | PG_DIRTY_DATA;
  }

  /** Copies a whole frame (copy-on-write). */
  copyFrame(dst: Pfn, src: Pfn): void {
    const sd = this.sections[Math.floor(src / SECTION_FRAMES)];
    if (!sd) return; // src reads as zeros and dst was handed out zeroed
    const so = this.dataOffset(src);
    this.sectionData(dst).set(sd.subarray(so, so + 4096), this.dataOffset(dst));
    this.flags[dst] = (this.flags[dst] as number) | PG_DIRTY_DATA;
  }

  // ---- page lock (PG_locked) ---------------------------------------------------------------

  isLocked(pfn: Pfn): boolean {
    return ((this.flags[pfn] as number) & PG_LOCKED) !== 0;
  }

  /** trylock_page: true if the lock was free and is now held. */
  trylock(pfn: Pfn): boolean {
    const f = this.flags[pfn] as number;
    if ((f & PG_LOCKED) !== 0) return false;
    this.flags[pfn] = f | PG_LOCKED;
    return true;
  }

  /** unlock_page: releases the lock and runs whoever waited for it (in arrival order). */
  unlock(pfn: Pfn): void {
    const f = this.flags[pfn] as number;
    if ((f & PG_LOCKED) === 0) kvmWarn(`unlock_page on unlocked pfn ${pfn}`);
    this.flags[pfn] = f & ~PG_LOCKED;
    const waiters = this.lockWaiters.get(pfn);
    if (waiters) {
      this.lockWaiters.delete(pfn);
      for (const w of waiters) w();
    }
  }

  /**
   * Parks `then` until pfn's lock is released — the model's `folio_wait_locked()`. The model
   * cannot block a caller, so work that the kernel would do after sleeping on the lock is queued
   * here and runs inside `unlock()`.
   */
  waitUnlocked(pfn: Pfn, then: () => void): void {
    if (!this.isLocked(pfn)) {
      then();
      return;
    }
    const list = this.lockWaiters.get(pfn);
    if (list) list.push(then);
    else this.lockWaiters.set(pfn, [then]);
  }

  /** Number of pfns with parked lock waiters (tests assert it drains to 0). */
  get lockWaiterCount(): number {
    return this.lockWaiters.size;
  }

  // ---- special frames and introspection ----------------------------------------------------

  /** A frame that is never freed (the zero page, the all-ones page). */
  allocReserved(owner: number): Pfn | -1 {
    const pfn = this.alloc(owner);
    if (pfn !== -1) this.flags[pfn] = (this.flags[pfn] as number) | PG_RESERVED;
    return pfn;
  }

  /** Releases a reserved frame (host teardown). */
  freeReserved(pfn: Pfn): void {
    this.flags[pfn] = (this.flags[pfn] as number) & ~PG_RESERVED;
    this.refcount[pfn] = 1;
    this.put(pfn);
  }

  isPoisoned(pfn: Pfn): boolean {
    return ((this.flags[pfn] as number) & PG_HWPOISON) !== 0;
  }

  /** memory_failure(): marks the frame poisoned. */
  poison(pfn: Pfn): void {
    this.flags[pfn] = (this.flags[pfn] as number) | PG_HWPOISON;
  }

  /** Frames allocated per owner (inode number, OWNER_ANON, OWNER_KERNEL), from the owner table. */
  framesByOwner(): Map<number, number> {
    const m = new Map<number, number>();
    for (let id = 1; id < this.ownerValue.length; id++) {
      const n = this.ownerFrames[id] as number;
      if (n > 0) m.set(this.ownerValue[id] as number, n);
    }
    return m;
  }

  /** Bytes of the per-frame arrays (refcount, flags, owner ids) as allocated, slack included. */
  frameMetadataBytes(): number {
    return this.refcount.byteLength + this.flags.byteLength + this.ownerIds.byteLength;
  }

  /**
   * Every byte of metadata the allocator holds, for the budget figures: the per-frame arrays, the
   * free stack, the per-section arrays (frames used, buffer and view slots: 8 B each), the JS
   * objects of each resident section (`SECTION_OBJECT_BYTES`) and the owner table. Capacity, not
   * use: slack counts. The sections' data is not metadata (`residentBytes`).
   */
  metadataBytes(): number {
    return (
      this.frameMetadataBytes() +
      this.free0.byteLength +
      this.sectionUsed.byteLength +
      8 * (this.sections.length + this.views.length) +
      this.stats.residentSections * SECTION_OBJECT_BYTES +
      16 * this.ownerValue.length +
      8 * this.freeOwnerIds.length
    );
  }

  /** Resident data bytes (section buffers that exist). */
  residentBytes(): number {
    return this.stats.residentSections * SECTION_BYTES;
  }
}
