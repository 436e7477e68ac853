/**
 * The memslot lookup index of one address space: gfn → memslot, as `search_memslots()` and
 * `__gfn_to_memslot()` in include/linux/kvm_host.h answer it.
 *
 * KVM keeps each address space's memslots in a gfn-ordered rbtree (`kvm_memslots.gfn_tree`) and
 * caches the last slot found (`last_used_slot`, plus one per vCPU). Here the ordered part is a
 * B+tree of disjoint ranges `[baseGfn, baseGfn + npages)` whose nodes live in typed arrays
 * (`RangeBTree`, lib/interval_map.ts), each range carrying an int32 *handle* the caller chose
 * (the kvm_main.ts slot table index). The model does not keep KVM's two memslot sets
 * (active/inactive, swapped under SRCU): callers mutate the index between lookups, never during one.
 *
 * Lookups dominate (every fault that misses the SPTEs asks for its slot; slots change a few
 * times per VM), and a random lookup in a tree of 32764 slots is ~15 dependent loads however
 * the tree is laid out. So `find` has a read-side accelerator, `GfnDirectory`: a flat sorted
 * copy of the slots plus a radix directory over the gfn span, which turns a lookup into one
 * multiplication, two directory loads and a scan of about one slot. Like KVM's active memslot set it is
 * a read-only view that writers replace rather than edit: a mutation only marks it stale, and it
 * is rebuilt (O(n)) once enough lookups have gone through the B+tree since the last mutation to
 * pay for the rebuild — so mutations stay O(log n) and a lookup costs O(log n) amortized in the
 * worst interleaving, O(1) in the steady state for evenly spread slots.
 *
 * Complexity with n slots (n ≤ 32764 user slots per address space, MR-19): `insert`, `remove`
 * O(log n) amortized — never a copy of every slot; `find` O(1) when the gfn is in the last slot
 * found, else O(1) expected through a fresh directory (O(log n) if slots are badly skewed), else
 * O(log n) through the B+tree. No allocation on any of these paths, except that a rebuild grows
 * the directory's arrays when the index has grown past them. `findIntersecting` O(log n).
 */

import { kvmWarn } from '../errno.js';
import { RANGE_BTREE_DEFAULT_ORDER, RANGE_LIMIT, RangeBTree } from '../lib/interval_map.js';

const HANDLE_MAX = 2 ** 31 - 1;
/** Largest directory: 2^17 buckets (512 KiB); n slots get the next power of two ≥ n. */
const DIR_MAX_BUCKETS = 2 ** 17;
/** Within a bucket, scan this many slots linearly before switching to binary search. */
const DIR_LINEAR_SCAN = 8;
/** `MemslotIndex.lastHandle` when the handle is still in the directory row `lastJ`. */
const LAZY_HANDLE = -2;

/**
 * A read-only snapshot of the index for lookups: the slots in gfn order in flat arrays, and a
 * radix directory over [lo, lo + buckets * width).
 *
 * Layout: `starts[j]`, `ends[j]` (Float64Array, gfns), `handles[j]` (Int32Array) for slot j
 * in gfn order, j < n. `dir[b]` (Int32Array, buckets + 1 entries) is the first j whose
 * `ends[j] > lo + b * width`. `width` is a power of two, so `(gfn - lo) / width` and every
 * bucket boundary are exact in float arithmetic. A gfn in bucket b can only be in slot j with
 * dir[b] ≤ j ≤ dir[b + 1]: the first slot ending after it.
 */
class GfnDirectory<T> {
  starts = new Float64Array(0);
  ends = new Float64Array(0);
  handles = new Int32Array(0);
  /** `resolve(handles[j])` for each j when the index has a resolver (see MemslotIndex). */
  values: (T | null)[] = [];
  dir = new Int32Array(1);
  n = 0;
  lo = 0;
  /** 1 / width: a power of two, so multiplying by it is exact. */
  invWidth = 1;
  buckets = 0;

  /** Rebuilds from the tree, resolving each handle if `resolve` is given. O(n + buckets) = O(n). */
  build(t: RangeBTree, resolve: ((handle: number) => T | null) | null): void {
    const n = t.size;
    if (this.starts.length < n) {
      const cap = Math.max(n, this.starts.length * 2);
      this.starts = new Float64Array(cap);
      this.ends = new Float64Array(cap);
      this.handles = new Int32Array(cap);
    }
    let j = 0;
    for (let c = t.firstEntry(); c !== -1; c = t.nextEntry(c), j++) {
      this.starts[j] = t.keys[c] as number;
      this.ends[j] = t.ends[c] as number;
      this.handles[j] = t.vals[c] as number;
    }
    if (resolve !== null) {
      const values = this.values;
      if (values.length < n) {
        const cap = Math.max(n, values.length * 2);
        const grown: (T | null)[] = new Array<T | null>(cap).fill(null);
        this.values = grown;
      }
      const v = this.values;
      for (let k = 0; k < n; k++) v[k] = resolve(this.handles[k] as number);
      // Drop references to slots that left the index.
      for (let k = n; k < this.n; k++) v[k] = null;
    }
    this.n = n;
    if (n === 0) {
      this.buckets = 0;
      return;
    }
    let buckets = 1;
    while (buckets < n && buckets < DIR_MAX_BUCKETS) buckets *= 2;
    const lo = this.starts[0] as number;
    const span = (this.ends[n - 1] as number) - lo;
    let width = 1;
    while (width * buckets < span) width *= 2;
    if (this.dir.length < buckets + 1) this.dir = new Int32Array(buckets + 1);
    const dir = this.dir;
    let s = 0;
    for (let b = 0; b <= buckets; b++) {
      const at = lo + b * width;
      while (s < n && (this.ends[s] as number) <= at) s++;
      dir[b] = s;
    }
    this.lo = lo;
    this.invWidth = 1 / width;
    this.buckets = buckets;
  }

  /** Index j of the slot containing gfn, or -1. No allocation. */
  find(gfn: number): number {
    const b = Math.floor((gfn - this.lo) * this.invWidth);
    if (!(b >= 0 && b < this.buckets)) return -1; // also rejects NaN
    const ends = this.ends;
    let j = this.dir[b] as number;
    let stop = this.dir[b + 1] as number;
    if (stop - j > DIR_LINEAR_SCAN) {
      // A crowded bucket (slots far from evenly spread): binary search for the first end > gfn.
      while (j < stop) {
        const mid = (j + stop) >>> 1;
        if ((ends[mid] as number) <= gfn) j = mid + 1;
        else stop = mid;
      }
    } else {
      while (j < stop && (ends[j] as number) <= gfn) j++;
    }
    return j < this.n && (this.starts[j] as number) <= gfn ? j : -1;
  }
}

/**
 * gfn-ordered index of one address space's memslots: disjoint gfn ranges → slot handles (≥ 0).
 *
 * With a `resolve` function (handle → the caller's slot object, e.g. a slot table lookup),
 * `findValue` answers with the object itself: the directory keeps the resolved objects in gfn
 * order next to its ranges, so a random lookup makes one dependent load fewer than a handle
 * lookup followed by a table lookup. `resolve(h)` must not change while h is in the index (the
 * caller fills its table before `insert` and clears it after `remove`).
 */
export class MemslotIndex<T = unknown> {
  private readonly tree: RangeBTree;
  /**
   * The last range `find` hit (KVM's `last_used_slot`, which `__gfn_to_memslot` refreshes on
   * every hit): [lastBase, lastEnd) → lastHandle. Empty ([0, 0)) when invalid. Stored by value,
   * so inserts never stale it; only removing that range or `clear` does.
   */
  private lastBase = 0;
  private lastEnd = 0;
  /** The last-used handle, or LAZY_HANDLE: still in the directory row `lastJ` (see `lastHandleNow`). */
  private lastHandle = -1;
  /** The directory row of the last-used range when it came from the directory. */
  private lastJ = 0;
  /** resolve(lastHandle) (null without a resolver or when the last-used range is empty). */
  private lastValue: T | null = null;
  /** The lookup directory, valid only while `dirFresh`. */
  private readonly dir = new GfnDirectory<T>();
  private dirFresh = false;
  /** Lookups answered by the B+tree since the last mutation (they pay for a rebuild). */
  private treeLookups = 0;

  /**
   * @param order B+tree node order (a power of two in [4, 1024]); the default suits production, tests use small ones.
   * @param resolve handle → value for `findValue` (see the class comment); null if unused.
   */
  constructor(
    order = RANGE_BTREE_DEFAULT_ORDER,
    private readonly resolve: ((handle: number) => T | null) | null = null,
  ) {
    this.tree = new RangeBTree(order);
  }

  /** Number of slots in the index. */
  get size(): number {
    return this.tree.size;
  }

  /**
   * Adds [baseGfn, baseGfn + npages) → handle. Preconditions, asserted with `kvmWarn` (which
   * throws under test; otherwise the index is left unchanged): baseGfn a non-negative integer,
   * npages an integer ≥ 1, baseGfn + npages ≤ 2^53, handle an int32 ≥ 0, and no overlap with a
   * slot already in the index (kvm_main.c checks that first and returns EEXIST, MR-15).
   */
  insert(baseGfn: number, npages: number, handle: number): void {
    // npages ≤ 2^53 - baseGfn, not baseGfn + npages ≤ 2^53: the sum could round down to 2^53.
    if (
      !Number.isSafeInteger(baseGfn) ||
      baseGfn < 0 ||
      !Number.isSafeInteger(npages) ||
      npages < 1 ||
      npages > RANGE_LIMIT - baseGfn
    ) {
      kvmWarn(`MemslotIndex.insert: bad range base_gfn ${baseGfn} npages ${npages}`);
      return;
    }
    if (!Number.isInteger(handle) || handle < 0 || handle > HANDLE_MAX) {
      kvmWarn(`MemslotIndex.insert: handle ${handle} is not an int32 ≥ 0`);
      return;
    }
    const end = baseGfn + npages;
    const c = this.tree.insert(baseGfn, end, handle);
    if (c !== -1) {
      kvmWarn(
        `MemslotIndex.insert: gfns [0x${baseGfn.toString(16)}, 0x${end.toString(16)}) overlap slot handle ${this.tree.vals[c]} (MR-15)`,
      );
      return;
    }
    this.mutated();
  }

  /** Removes the slot whose range starts at baseGfn; returns its handle, or -1 if there is none. */
  remove(baseGfn: number): number {
    const handle = this.tree.removeKey(baseGfn, -1);
    if (handle !== -1) {
      if (baseGfn === this.lastBase) this.forgetLastUsed();
      this.mutated();
    }
    return handle;
  }

  /**
   * Handle of the slot containing gfn, or -1 (`__gfn_to_memslot`). The hot path: the last-used
   * slot, then the directory (or the B+tree while the directory is stale); no allocation.
   */
  find(gfn: number): number {
    if (gfn >= this.lastBase && gfn < this.lastEnd) return this.lastHandleNow();
    return this.search(gfn) ? this.lastHandleNow() : -1;
  }

  /**
   * The last-used slot's handle. A directory hit leaves it in the directory (one load fewer on
   * the `findValue` path, which does not need it); `mutated` copies it out before the directory
   * goes stale.
   */
  private lastHandleNow(): number {
    const h = this.lastHandle;
    return h !== LAZY_HANDLE ? h : (this.dir.handles[this.lastJ] as number);
  }

  /**
   * `resolve(handle)` of the slot containing gfn, or null: `find` for an index built with a
   * resolver, answering with the object. The last-used slot is one range compare; past it, the
   * directory's half of `search` runs inline (a random lookup makes no call), and the B+tree
   * while the directory is stale.
   */
  findValue(gfn: number): T | null {
    if (gfn >= this.lastBase && gfn < this.lastEnd) return this.lastValue;
    if (this.dirFresh) {
      const d = this.dir;
      const j = d.find(gfn);
      if (j === -1) return null;
      const v = (d.values[j] ?? null) as T | null;
      this.lastBase = d.starts[j] as number;
      this.lastEnd = d.ends[j] as number;
      this.lastHandle = LAZY_HANDLE;
      this.lastJ = j;
      this.lastValue = v;
      return v;
    }
    return this.search(gfn) ? this.lastValue : null;
  }

  /**
   * Looks gfn up past the last-used range: the directory, or the B+tree while the directory is
   * stale. On a hit, makes it the last-used range (as `__gfn_to_memslot` refreshes
   * `last_used_slot`) and returns true.
   */
  private search(gfn: number): boolean {
    if (!this.dirFresh) {
      const t = this.tree;
      // A rebuild costs about as much as size/8 tree lookups; once that many lookups have been
      // made since the last mutation, the index is being read more than written.
      if (++this.treeLookups <= (t.size >>> 3) + 32) {
        const c = t.floorEntry(gfn);
        if (c === -1) return false;
        const end = t.ends[c] as number;
        if (gfn >= end) return false;
        const h = t.vals[c] as number;
        this.lastBase = t.keys[c] as number;
        this.lastEnd = end;
        this.lastHandle = h;
        this.lastValue = this.resolve === null ? null : this.resolve(h);
        return true;
      }
      this.dir.build(t, this.resolve);
      this.dirFresh = true;
    }
    const d = this.dir;
    const j = d.find(gfn);
    if (j === -1) return false;
    this.lastBase = d.starts[j] as number;
    this.lastEnd = d.ends[j] as number;
    this.lastHandle = LAZY_HANDLE;
    this.lastJ = j;
    this.lastValue = this.resolve === null ? null : (d.values[j] as T | null);
    return true;
  }

  /**
   * Handle of some slot intersecting [start, end), or -1 (the EEXIST check of MR-15). Slots whose
   * handle is `ignoreHandle` do not count, so a MOVE can ignore the slot being moved. O(log n).
   */
  findIntersecting(start: number, end: number, ignoreHandle = -1): number {
    if (!(start < end)) return -1;
    const t = this.tree;
    // Ranges are disjoint and ordered, so the ones meeting [start, end) are consecutive.
    for (let c = this.firstEndingAfter(start); c !== -1 && (t.keys[c] as number) < end; c = t.nextEntry(c)) {
      const h = t.vals[c] as number;
      if (h !== ignoreHandle) return h;
    }
    return -1;
  }

  /**
   * Calls cb for every slot intersecting [start, end), in gfn order, with its full range
   * (`kvm_for_each_memslot_in_gfn_range`). O(log n + k). cb must not modify the index.
   */
  forEachIntersecting(
    start: number,
    end: number,
    cb: (baseGfn: number, npages: number, handle: number) => void,
  ): void {
    if (!(start < end)) return;
    const t = this.tree;
    for (let c = this.firstEndingAfter(start); c !== -1 && (t.keys[c] as number) < end; c = t.nextEntry(c)) {
      const base = t.keys[c] as number;
      cb(base, (t.ends[c] as number) - base, t.vals[c] as number);
    }
  }

  /** Calls cb for every slot in gfn order. cb must not modify the index. O(n). */
  forEach(cb: (baseGfn: number, npages: number, handle: number) => void): void {
    const t = this.tree;
    for (let c = t.firstEntry(); c !== -1; c = t.nextEntry(c)) {
      const base = t.keys[c] as number;
      cb(base, (t.ends[c] as number) - base, t.vals[c] as number);
    }
  }

  /** Removes every slot. */
  clear(): void {
    this.tree.clear();
    this.forgetLastUsed();
    this.mutated();
  }

  /** Structural self-check of the underlying B+tree; null if sound. O(n). For tests. */
  check(): string | null {
    return this.tree.check();
  }

  /** Cursor of the first slot whose range ends after `gfn`, or -1. */
  private firstEndingAfter(gfn: number): number {
    const t = this.tree;
    const c = t.floorEntry(gfn);
    if (c === -1) return t.firstEntry();
    return (t.ends[c] as number) > gfn ? c : t.nextEntry(c);
  }

  private mutated(): void {
    // The directory still describes the index before this mutation: take the handle out of it.
    if (this.lastHandle === LAZY_HANDLE) this.lastHandle = this.dir.handles[this.lastJ] as number;
    this.dirFresh = false;
    this.treeLookups = 0;
  }

  private forgetLastUsed(): void {
    this.lastBase = 0;
    this.lastEnd = 0;
    this.lastHandle = -1;
    this.lastValue = null;
  }
}
