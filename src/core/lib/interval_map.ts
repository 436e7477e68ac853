/**
 * Ordered maps of disjoint half-open integer ranges, kept as ranges rather than pages
 * (architecture §4): a B+tree whose nodes live in typed arrays (`RangeBTree`), and on top of it
 * the interval map used for memory attributes and guest_memfd bindings (`IntervalMap`).
 * `kvm/memslot_index.ts` builds the memslot lookup index on the same `RangeBTree`.
 *
 * The kernel keeps memory attributes in an xarray (one entry per gfn, ranges stored as
 * multi-index entries) and guest_memfd bindings in an xarray indexed by file page; what both
 * offer the rest of KVM is "value of page i" and "walk the ranges of [start, end)", which is
 * what this file provides, in O(log n) per boundary instead of per page.
 *
 * Complexity, with n stored ranges, B the node order (default 32) and k the ranges a call
 * touches: lookups O(log n) (height ≤ 1 + log_{B/2} n, a binary search of ≤ B keys per level,
 * no allocation); a single insert or remove O(log n) amortized (B+tree split / borrow / merge);
 * removing a run of k ranges O(log n + k/B) — leaves wholly inside the run are freed with their
 * parent's entries cut in one shift, without visiting their entries; `IntervalMap.set` costs
 * O(log n) plus that removal, whatever the range's length, so setting 2^28 pages costs the same
 * as setting one. Decision record: docs/decisions/0002-ordered-gfn-structures.md.
 */

import { assertInvariant } from '../errno.js';

/** Default node order: entries per node (keys per leaf, children per internal node). */
export const RANGE_BTREE_DEFAULT_ORDER = 32;
/** Deepest tree the path stacks hold: order 4 (min fan-out 2) reaches 2^40 entries at 41. */
const MAX_HEIGHT = 48;
/** Ranges live inside [0, 2^53]: every bound and every point is an exact float integer. */
export const RANGE_LIMIT = 2 ** 53;

/**
 * A B+tree of disjoint half-open ranges `[key, end)` with an int32 value each, ordered by key.
 * `insert` refuses a range that intersects a stored one; everything else is up to the callers.
 *
 * Storage. Node `n` owns entries `n*order .. n*order + order - 1` of three parallel typed arrays:
 *
 * | array  | type         | in a leaf                  | in an internal node                       |
 * |--------|--------------|----------------------------|-------------------------------------------|
 * | `keys` | Float64Array | range start (sorted)       | separator: `keys[i]` ≤ every key below child i, > every key below child i-1 (`keys[0]` unused by lookups) |
 * | `ends` | Float64Array | range end (exclusive)      | unused                                    |
 * | `vals` | Int32Array   | the value                  | child node number                         |
 *
 * and per-node arrays `counts` (entries used), `next` / `prev` (siblings on the same level;
 * `next` also links the free list). Keys and ends are floats because they go up to 2^53; no
 * bitwise operator ever touches them. Node numbers and positions are small ints.
 *
 * An entry is addressed by a *cursor*, `node * order + position`, valid until the next
 * mutation: `keys[c]`, `ends[c]`, `vals[c]` read it. Read the arrays through the tree after a
 * mutation, never through a saved reference: growing the node pool replaces them.
 *
 * Invariants (checked by `check()`): all leaves at the same depth; every node except the root
 * holds between order/2 and order entries; keys strictly increase along the leaf chain;
 * separators bound their subtrees as in the table above; a root that is internal has ≥ 2 children.
 */
export class RangeBTree {
  /** Entries per node: a power of two in [4, 1024]. */
  readonly order: number;
  /** log2(order): a cursor's node is `cursor >>> shift`. */
  private readonly shift: number;
  /** Fewest entries a non-root node may hold (order / 2). */
  private readonly minFill: number;

  /** See the class comment for the layout. */
  keys: Float64Array;
  ends: Float64Array;
  vals: Int32Array;
  private counts: Int32Array;
  private next: Int32Array;
  private prev: Int32Array;

  /** Nodes the arrays have room for. */
  private capacity: number;
  /** Nodes ever handed out (high-water mark); freed ones are on the free list. */
  private used = 0;
  private freeHead = -1;
  private root = 0;
  /** Levels: 1 when the root is a leaf. */
  private height = 1;
  private count = 0;

  /**
   * The path of the last `descend`: `pathNode[h]` is the node at level h (0 = leaf,
   * height-1 = root) and `pathIdx[h]` the position of `pathNode[h-1]` among its children.
   */
  private readonly pathNode = new Int32Array(MAX_HEIGHT);
  private readonly pathIdx = new Int32Array(MAX_HEIGHT);

  constructor(order = RANGE_BTREE_DEFAULT_ORDER) {
    const shift = Math.log2(order);
    if (!(Number.isInteger(shift) && shift >= 2 && shift <= 10)) {
      assertInvariant(false, `RangeBTree order ${order} must be a power of two in [4, 1024]`);
    }
    this.order = order;
    this.shift = shift;
    this.minFill = order / 2;
    this.capacity = 16;
    this.keys = new Float64Array(this.capacity * order);
    this.ends = new Float64Array(this.capacity * order);
    this.vals = new Int32Array(this.capacity * order);
    this.counts = new Int32Array(this.capacity);
    this.next = new Int32Array(this.capacity);
    this.prev = new Int32Array(this.capacity);
    this.clear();
  }

  /** Number of entries. */
  get size(): number {
    return this.count;
  }

  /** Drops every entry; keeps the node pool's capacity. */
  clear(): void {
    this.used = 1;
    this.freeHead = -1;
    this.root = 0;
    this.height = 1;
    this.count = 0;
    this.counts[0] = 0;
    this.next[0] = -1;
    this.prev[0] = -1;
  }

  /**
   * Cursor of the entry with the greatest key ≤ x, or -1 if every key is > x (or the tree is
   * empty). The lookup hot path: a binary search per level, no allocation.
   */
  floorEntry(x: number): number {
    const keys = this.keys;
    const vals = this.vals;
    const counts = this.counts;
    const order = this.order;
    let node = this.root;
    for (let h = this.height; h > 1; h--) {
      const base = node * order;
      // Greatest i in [1, count) with keys[i] ≤ x, else child 0.
      let lo = 1;
      let hi = counts[node] as number;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if ((keys[base + mid] as number) <= x) lo = mid + 1;
        else hi = mid;
      }
      node = vals[base + lo - 1] as number;
    }
    const base = node * order;
    let lo = 0;
    let hi = counts[node] as number;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((keys[base + mid] as number) <= x) lo = mid + 1;
      else hi = mid;
    }
    if (lo > 0) return base + lo - 1;
    // Every key of this leaf is > x. The separator that routed us here is ≤ x and > every key
    // of the previous leaf, so the answer is the previous leaf's last entry, if there is one.
    const p = this.prev[node] as number;
    return p === -1 ? -1 : p * order + (counts[p] as number) - 1;
  }

  /** Cursor of the entry with the smallest key, or -1 if empty. */
  firstEntry(): number {
    if (this.count === 0) return -1;
    let node = this.root;
    for (let h = this.height; h > 1; h--) node = this.vals[node * this.order] as number;
    return node * this.order;
  }

  /** Cursor of the entry after `cursor` in key order, or -1 after the last. */
  nextEntry(cursor: number): number {
    const node = cursor >>> this.shift; // cursors are small non-negative ints
    if (cursor + 1 < node * this.order + (this.counts[node] as number)) return cursor + 1;
    const n = this.next[node] as number;
    return n === -1 ? -1 : n * this.order;
  }

  /**
   * Adds `[key, end)` → val unless it intersects a stored range. Returns -1 when inserted, or
   * else the cursor of a stored range it intersects (the tree is unchanged). One descent serves
   * both the check and the insertion. O(log n) amortized.
   */
  insert(key: number, end: number, val: number): number {
    // One insert allocates at most a node per level plus a new root; grow first so that no
    // array is replaced while the split below holds positions in it.
    if (this.used + this.height + 1 > this.capacity) this.grow(this.used + this.height + 1);
    const order = this.order;
    const leaf = this.descend(key);
    const pos = this.lowerBound(leaf, key);
    const base = leaf * order;
    const cnt = this.counts[leaf] as number;
    // Neighbours: the separator that routed us here is ≤ key and above every earlier leaf, the
    // next one is > key, so they are in this leaf or at the ends of the adjacent leaves.
    const nl = this.next[leaf] as number;
    const succ = pos < cnt ? base + pos : nl === -1 ? -1 : nl * order;
    if (succ !== -1 && (this.keys[succ] as number) < end) return succ;
    const pl = this.prev[leaf] as number;
    const pred = pos > 0 ? base + pos - 1 : pl === -1 ? -1 : pl * order + (this.counts[pl] as number) - 1;
    if (pred !== -1 && (this.ends[pred] as number) > key) return pred;
    this.insertAt(0, pos, key, end, val);
    this.count++;
    return -1;
  }

  /** Removes the entry whose key is exactly `key`; returns its value, or `missing` if absent. */
  removeKey(key: number, missing: number): number {
    if (this.count === 0) return missing;
    const leaf = this.descend(key);
    const pos = this.lowerBound(leaf, key);
    const c = leaf * this.order + pos;
    if (pos === this.counts[leaf] || this.keys[c] !== key) return missing;
    const val = this.vals[c] as number;
    this.removeFromLeaf(leaf, pos, pos + 1);
    return val;
  }

  /**
   * Changes the key of the entry keyed `oldKey` to `newKey` without moving it: the caller
   * guarantees that `newKey` lies strictly between the keys of the entry's neighbours, so the
   * order is unchanged. At most one separator is adjusted. Cursors stay valid. O(log n).
   */
  rekey(oldKey: number, newKey: number): void {
    const order = this.order;
    const leaf = this.descend(oldKey);
    const pos = this.lowerBound(leaf, oldKey);
    const cnt = this.counts[leaf] as number;
    if (!(pos < cnt && this.keys[leaf * order + pos] === oldKey)) {
      assertInvariant(false, `RangeBTree.rekey: no key ${oldKey}`);
    }
    this.keys[leaf * order + pos] = newKey;
    if (newKey < oldKey && pos === 0) {
      // The leaf's lower bound is the separator at the lowest ancestor where the path does not
      // go through child 0; it must not exceed the new first key. (newKey > the previous
      // leaf's keys, so the bound stays above them.)
      for (let h = 1; h < this.height; h++) {
        const i = this.pathIdx[h] as number;
        if (i > 0) {
          const s = (this.pathNode[h] as number) * order + i;
          if ((this.keys[s] as number) > newKey) this.keys[s] = newKey;
          return;
        }
      }
    } else if (newKey > oldKey && pos === cnt - 1) {
      // Symmetric: the separator above the next leaf must stay above the new last key. The
      // next leaf's first key is a valid bound for it (it is > newKey by the precondition).
      for (let h = 1; h < this.height; h++) {
        const node = this.pathNode[h] as number;
        const i = this.pathIdx[h] as number;
        if (i + 1 < (this.counts[node] as number)) {
          const s = node * order + i + 1;
          if ((this.keys[s] as number) <= newKey)
            this.keys[s] = this.keys[(this.next[leaf] as number) * order] as number;
          return;
        }
      }
    }
  }

  /**
   * Removes every entry whose key is in [lo, hi); returns how many. O(log n + k/B): each round
   * deletes the run's part of one leaf, frees the following sibling leaves that lie wholly in
   * the run, and rebalances once.
   */
  removeRange(lo: number, hi: number): number {
    let removed = 0;
    const order = this.order;
    // `from`: a key ≤ the first key still to remove, and in the leaf the run continues in.
    let from = lo;
    while (this.count > 0 && from < hi) {
      let leaf = this.descend(from);
      let base = leaf * order;
      let cnt = this.counts[leaf] as number;
      let pos = this.lowerBound(leaf, from);
      if (pos === cnt) {
        // The run starts in the next leaf (or nowhere): re-descend by its first key so the
        // path stack describes that leaf.
        const nl = this.next[leaf] as number;
        if (nl === -1) break;
        const first = this.keys[nl * order] as number;
        if (first >= hi) break;
        leaf = this.descend(first);
        base = leaf * order;
        cnt = this.counts[leaf] as number;
        pos = 0;
      }
      let stop = pos;
      while (stop < cnt && (this.keys[base + stop] as number) < hi) stop++;
      if (stop === pos) break;
      // A run that ends inside this leaf is complete; otherwise it continues with the next
      // leaf's first key (rebalancing moves entries but never changes keys).
      let nl = this.next[leaf] as number;
      let more = stop === cnt && nl !== -1;
      if (more && this.height > 1) {
        // Later siblings of this leaf that lie wholly before `hi` go in one step: freed, and cut
        // out of the parent with one shift, instead of one descent and rebalance each.
        const parent = this.pathNode[1] as number;
        const ci = this.pathIdx[1] as number;
        const pb = parent * order;
        const pc = this.counts[parent] as number;
        let j = ci + 1;
        while (j < pc) {
          const c = this.vals[pb + j] as number;
          if ((this.keys[c * order + (this.counts[c] as number) - 1] as number) >= hi) break;
          j++;
        }
        // Leave this leaf a sibling to rebalance with: as child 0, keep the one after it.
        if (ci === 0 && j === pc) j--;
        if (j > ci + 1) {
          nl = this.next[this.vals[pb + j - 1] as number] as number;
          for (let x = ci + 1; x < j; x++) {
            const c = this.vals[pb + x] as number;
            const n = this.counts[c] as number;
            removed += n;
            this.count -= n;
            this.free(c);
          }
          this.next[leaf] = nl;
          if (nl !== -1) this.prev[nl] = leaf;
          this.move(pb + j, pb + ci + 1, pc - j);
          this.counts[parent] = pc - (j - ci - 1);
          more = nl !== -1;
        }
      }
      if (more) from = this.keys[nl * order] as number;
      this.removeFromLeaf(leaf, pos, stop);
      removed += stop - pos;
      if (!more) break;
    }
    return removed;
  }

  /**
   * Checks every structural invariant; returns a description of the first violation, or null.
   * O(n). For tests and debugging.
   */
  check(): string | null {
    const order = this.order;
    let seen = 0;
    let lastLeaf = -1;
    let lastKey = Number.NEGATIVE_INFINITY;
    const walk = (node: number, depth: number, lower: number, upper: number): string | null => {
      const cnt = this.counts[node] as number;
      const base = node * order;
      if (cnt > order) return `node ${node} holds ${cnt} > ${order} entries`;
      if (node !== this.root && cnt < this.minFill) return `node ${node} holds ${cnt} < ${this.minFill}`;
      if (depth === this.height - 1) {
        if (this.prev[node] !== lastLeaf) return `leaf ${node}: prev ${this.prev[node]} ≠ ${lastLeaf}`;
        if (lastLeaf !== -1 && this.next[lastLeaf] !== node) return `leaf ${lastLeaf}: next ≠ ${node}`;
        lastLeaf = node;
        for (let i = 0; i < cnt; i++) {
          const k = this.keys[base + i] as number;
          const e = this.ends[base + i] as number;
          if (!(k > lastKey)) return `leaf ${node}[${i}]: key ${k} not above ${lastKey}`;
          if (k < lower || k >= upper) return `leaf ${node}[${i}]: key ${k} outside [${lower}, ${upper})`;
          if (!(e > k)) return `leaf ${node}[${i}]: end ${e} ≤ key ${k}`;
          lastKey = k;
          seen++;
        }
        return null;
      }
      if (cnt < 2 && node === this.root) return `internal root ${node} has ${cnt} child`;
      for (let i = 0; i < cnt; i++) {
        const lo = i === 0 ? lower : (this.keys[base + i] as number);
        const hi = i + 1 < cnt ? (this.keys[base + i + 1] as number) : upper;
        if (i > 0 && !(lo >= lower && lo < upper)) return `node ${node}[${i}]: separator ${lo} out of bounds`;
        const err = walk(this.vals[base + i] as number, depth + 1, lo, hi);
        if (err !== null) return err;
      }
      return null;
    };
    const err = walk(this.root, 0, Number.NEGATIVE_INFINITY, Number.POSITIVE_INFINITY);
    if (err !== null) return err;
    if (lastLeaf !== -1 && this.next[lastLeaf] !== -1) return `last leaf ${lastLeaf} has a next`;
    if (seen !== this.count) return `size ${this.count} but ${seen} entries`;
    return null;
  }

  /** Levels of the tree (1 = a single leaf). For tests and benchmarks. */
  get depth(): number {
    return this.height;
  }

  // ---- internals ----

  /** Walks from the root to the leaf whose key range holds x, filling the path stack. */
  private descend(x: number): number {
    const keys = this.keys;
    const order = this.order;
    let node = this.root;
    for (let h = this.height - 1; h > 0; h--) {
      this.pathNode[h] = node;
      const base = node * order;
      const cnt = this.counts[node] as number;
      let lo = cnt;
      // Ascending inserts (the common way to build a map) go to the last child: one compare.
      if ((keys[base + cnt - 1] as number) > x) {
        lo = 1;
        let hi = cnt - 1;
        while (lo < hi) {
          const mid = (lo + hi) >>> 1;
          if ((keys[base + mid] as number) <= x) lo = mid + 1;
          else hi = mid;
        }
      }
      this.pathIdx[h] = lo - 1;
      node = this.vals[base + lo - 1] as number;
    }
    this.pathNode[0] = node;
    return node;
  }

  /** Position of the first key ≥ x in a leaf (its count if none). */
  private lowerBound(leaf: number, x: number): number {
    const keys = this.keys;
    const base = leaf * this.order;
    const cnt = this.counts[leaf] as number;
    if (cnt === 0 || (keys[base + cnt - 1] as number) < x) return cnt; // appending: one compare
    let lo = 0;
    let hi = cnt - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((keys[base + mid] as number) < x) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private alloc(): number {
    let n = this.freeHead;
    if (n !== -1) this.freeHead = this.next[n] as number;
    else n = this.used++;
    this.counts[n] = 0;
    this.next[n] = -1;
    this.prev[n] = -1;
    return n;
  }

  private free(n: number): void {
    this.counts[n] = 0;
    this.prev[n] = -1;
    this.next[n] = this.freeHead;
    this.freeHead = n;
  }

  private grow(atLeast: number): void {
    let cap = this.capacity * 2;
    while (cap < atLeast) cap *= 2;
    const order = this.order;
    const keys = new Float64Array(cap * order);
    keys.set(this.keys);
    const ends = new Float64Array(cap * order);
    ends.set(this.ends);
    const vals = new Int32Array(cap * order);
    vals.set(this.vals);
    const counts = new Int32Array(cap);
    counts.set(this.counts);
    const next = new Int32Array(cap);
    next.set(this.next);
    const prev = new Int32Array(cap);
    prev.set(this.prev);
    this.keys = keys;
    this.ends = ends;
    this.vals = vals;
    this.counts = counts;
    this.next = next;
    this.prev = prev;
    this.capacity = cap;
  }

  /** Moves `n` entries from position `from` to `to` (may overlap), all three arrays. */
  private move(from: number, to: number, n: number): void {
    const keys = this.keys;
    const ends = this.ends;
    const vals = this.vals;
    if (n > 8) {
      // memmove; below this size the calls cost more than the loop.
      keys.copyWithin(to, from, from + n);
      ends.copyWithin(to, from, from + n);
      vals.copyWithin(to, from, from + n);
    } else if (to < from) {
      for (let i = 0; i < n; i++) {
        keys[to + i] = keys[from + i] as number;
        ends[to + i] = ends[from + i] as number;
        vals[to + i] = vals[from + i] as number;
      }
    } else {
      for (let i = n - 1; i >= 0; i--) {
        keys[to + i] = keys[from + i] as number;
        ends[to + i] = ends[from + i] as number;
        vals[to + i] = vals[from + i] as number;
      }
    }
  }

  /** Puts an entry at position `pos` of a node that has room. */
  private place(node: number, pos: number, key: number, end: number, val: number): void {
    const base = node * this.order;
    const cnt = this.counts[node] as number;
    this.move(base + pos, base + pos + 1, cnt - pos);
    this.keys[base + pos] = key;
    this.ends[base + pos] = end;
    this.vals[base + pos] = val;
    this.counts[node] = cnt + 1;
  }

  /**
   * Inserts an entry at `pos` of the level-`h` node on the path, splitting full nodes upward.
   * The capacity was reserved by `insert`, so `alloc` never grows the arrays here.
   */
  private insertAt(h: number, pos: number, key: number, end: number, val: number): void {
    const order = this.order;
    const half = this.minFill;
    for (;;) {
      const node = this.pathNode[h] as number;
      if ((this.counts[node] as number) < order) {
        this.place(node, pos, key, end, val);
        return;
      }
      // Full. If the left sibling has room, fill it from this node's front instead of splitting
      // (B*-tree style): ascending inserts — a VMM adding slots or pages in gfn order — then
      // leave full nodes behind instead of half-full ones, halving memory and often a level of
      // height. Only when the new entry stays in this node past position 0 (pos > m), so that
      // the separator taken from this node's new first key still bounds it.
      if (h < this.height - 1) {
        const parent = this.pathNode[h + 1] as number;
        const ci = this.pathIdx[h + 1] as number;
        if (ci > 0) {
          const left = this.vals[parent * order + ci - 1] as number;
          const lc = this.counts[left] as number;
          const m = order - lc;
          if (m > 0 && pos > m) {
            this.shiftFromRight(left, node, parent, ci, h === 0, m);
            this.place(node, pos - m, key, end, val);
            return;
          }
        }
      }
      // Split: the upper half moves to a new right sibling, then the entry goes to its side.
      const right = this.alloc();
      this.move(node * order + half, right * order, order - half);
      this.counts[node] = half;
      this.counts[right] = order - half;
      const after = this.next[node] as number;
      this.next[right] = after;
      this.prev[right] = node;
      this.next[node] = right;
      if (after !== -1) this.prev[after] = right;
      // pos ≤ half goes left, so in an internal node the right half's keys[0] stays a real
      // separator (it never receives an entry at position 0).
      if (pos <= half) this.place(node, pos, key, end, val);
      else this.place(right, pos - half, key, end, val);
      const sep = this.keys[right * order] as number;
      if (h === this.height - 1) {
        const root = this.alloc();
        const rb = root * order;
        this.keys[rb] = this.keys[node * order] as number;
        this.vals[rb] = node;
        this.keys[rb + 1] = sep;
        this.vals[rb + 1] = right;
        this.counts[root] = 2;
        this.root = root;
        this.height++;
        if (this.height >= MAX_HEIGHT)
          assertInvariant(false, `RangeBTree height ${this.height} exceeds ${MAX_HEIGHT}`);
        return;
      }
      h++;
      pos = (this.pathIdx[h] as number) + 1;
      key = sep;
      end = 0;
      val = right;
    }
  }

  /** Deletes positions [from, to) of the path's leaf, then restores the fill invariant upward. */
  private removeFromLeaf(leaf: number, from: number, to: number): void {
    const base = leaf * this.order;
    const cnt = this.counts[leaf] as number;
    this.move(base + to, base + from, cnt - to);
    this.counts[leaf] = cnt - (to - from);
    this.count -= to - from;
    this.rebalance();
  }

  /** Fixes underfull nodes along the path stack, bottom-up; collapses a one-child root. */
  private rebalance(): void {
    const order = this.order;
    for (let h = 0; h < this.height - 1; h++) {
      const node = this.pathNode[h] as number;
      if ((this.counts[node] as number) >= this.minFill) return;
      const parent = this.pathNode[h + 1] as number;
      const ci = this.pathIdx[h + 1] as number;
      const pb = parent * order;
      const leaf = h === 0;
      if (this.counts[node] === 0) {
        // Emptied (removeRange took a whole leaf): unlink it rather than merge a sibling into it.
        this.dropEmpty(node, parent, ci);
        continue;
      }
      if ((this.counts[parent] as number) < 2) {
        assertInvariant(false, `RangeBTree: node ${node} has no sibling to rebalance with`);
      }
      // Prefer the left sibling: when removeRange deletes a leaf's tail, the entries to its
      // right are the next ones to delete, so pulling them in would only move them twice.
      if (ci > 0) {
        const left = this.vals[pb + ci - 1] as number;
        if ((this.counts[left] as number) + (this.counts[node] as number) <= order) {
          this.merge(left, node, parent, ci, leaf);
        } else {
          this.shiftFromLeft(
            left,
            node,
            parent,
            ci,
            leaf,
            ((this.counts[left] as number) - (this.counts[node] as number) + 1) >>> 1,
          );
        }
      } else {
        const right = this.vals[pb + 1] as number;
        if ((this.counts[node] as number) + (this.counts[right] as number) <= order) {
          this.merge(node, right, parent, 1, leaf);
        } else {
          this.shiftFromRight(
            node,
            right,
            parent,
            1,
            leaf,
            ((this.counts[right] as number) - (this.counts[node] as number) + 1) >>> 1,
          );
        }
      }
    }
    // The root: an internal root left with no child (removeRange took everything) means an
    // empty tree; one left with one child hands the tree to that child.
    if (this.height > 1 && this.counts[this.root] === 0) {
      if (this.count !== 0) assertInvariant(false, `RangeBTree: empty root but ${this.count} entries`);
      this.clear();
      return;
    }
    while (this.height > 1 && this.counts[this.root] === 1) {
      const old = this.root;
      this.root = this.vals[old * order] as number;
      this.height--;
      this.free(old);
    }
  }

  /** Unlinks and frees an empty node, child `ci` of `parent`. */
  private dropEmpty(node: number, parent: number, ci: number): void {
    const before = this.prev[node] as number;
    const after = this.next[node] as number;
    if (before !== -1) this.next[before] = after;
    if (after !== -1) this.prev[after] = before;
    this.free(node);
    const pb = parent * this.order;
    const pc = this.counts[parent] as number;
    // Removing child 0 makes child 1 the first; its separator becomes the unused keys[0].
    this.move(pb + ci + 1, pb + ci, pc - ci - 1);
    this.counts[parent] = pc - 1;
  }

  /** Appends `right` (child `ri` of `parent`) to `left` and frees it. */
  private merge(left: number, right: number, parent: number, ri: number, leaf: boolean): void {
    const order = this.order;
    const lc = this.counts[left] as number;
    const rc = this.counts[right] as number;
    this.move(right * order, left * order + lc, rc);
    // In an internal node, the moved first child needs a real lower bound: the parent's.
    if (!leaf) this.keys[left * order + lc] = this.keys[parent * order + ri] as number;
    this.counts[left] = lc + rc;
    const after = this.next[right] as number;
    this.next[left] = after;
    if (after !== -1) this.prev[after] = left;
    this.free(right);
    const pb = parent * order;
    const pc = this.counts[parent] as number;
    this.move(pb + ri + 1, pb + ri, pc - ri - 1);
    this.counts[parent] = pc - 1;
  }

  /** Moves the last `m` entries of `left` to the front of its right sibling `node` (child `ci`). */
  private shiftFromLeft(
    left: number,
    node: number,
    parent: number,
    ci: number,
    leaf: boolean,
    m: number,
  ): void {
    const order = this.order;
    const lc = this.counts[left] as number;
    const nc = this.counts[node] as number;
    const nb = node * order;
    this.move(nb, nb + m, nc);
    // The old first child now sits at m; its lower bound is the parent's separator for `node`.
    if (!leaf) this.keys[nb + m] = this.keys[parent * order + ci] as number;
    this.move(left * order + lc - m, nb, m);
    this.counts[left] = lc - m;
    this.counts[node] = nc + m;
    this.keys[parent * order + ci] = this.keys[nb] as number;
  }

  /** Moves the first `m` entries of `right` (child `ri`) to the tail of its left sibling `node`. */
  private shiftFromRight(
    node: number,
    right: number,
    parent: number,
    ri: number,
    leaf: boolean,
    m: number,
  ): void {
    const order = this.order;
    const nc = this.counts[node] as number;
    const rc = this.counts[right] as number;
    const nb = node * order;
    const rb = right * order;
    this.move(rb, nb + nc, m);
    // The first moved child's lower bound is the parent's separator for `right`.
    if (!leaf) this.keys[nb + nc] = this.keys[parent * order + ri] as number;
    this.move(rb + m, rb, rc - m);
    this.counts[node] = nc + m;
    this.counts[right] = rc - m;
    this.keys[parent * order + ri] = this.keys[rb] as number;
  }
}

/** One stored range of an `IntervalMap`. */
export interface IntervalRange {
  readonly start: number;
  readonly end: number;
  readonly value: number;
}

const INT32_MIN = -(2 ** 31);
const INT32_MAX = 2 ** 31 - 1;

/** Precondition of every mutation; the message is only built when it fails. */
function checkRange(start: number, end: number, what: string): void {
  if (!(Number.isInteger(start) && Number.isInteger(end) && start >= 0 && end <= RANGE_LIMIT)) {
    assertInvariant(false, `${what}: [${start}, ${end}) is not a range of integers within [0, 2^53]`);
  }
}

/**
 * A map from disjoint half-open ranges of integers in [0, 2^53] (gfns, file page offsets) to
 * non-zero int32 values; a point that no range covers has value 0. Adjacent ranges with equal
 * values are always merged, so the stored ranges are the canonical form of the map and two maps
 * are equal iff their range lists are.
 *
 * Used for memory attributes (`KVM_SET_MEMORY_ATTRIBUTES`, MA-3/MA-4: replace the value of every
 * gfn of a range; a call that changes nothing is a no-op) and for guest_memfd bindings (file page
 * offset → slot). Every operation costs O(log n + ranges touched), never O(pages).
 *
 * `set` finds the ranges around [start, end) with lookups, decides the result (clip, merge with
 * equal neighbours, keep a tail past `end`), then applies it with in-place edits of ends and
 * values and `rekey` where it can, one `removeRange` and at most two inserts: a typical
 * one-page conversion is one to three B+tree descents.
 *
 * Callbacks must not modify the map they are iterating.
 */
export class IntervalMap {
  private readonly tree: RangeBTree;
  /** The stored range or gap [hitStart, hitEnd) the last `get` fell in, and its value. */
  private hitStart = 0;
  private hitEnd = 0;
  private hitVal = 0;

  /** @param order B+tree node order (a power of two in [4, 1024]); the default suits production, tests use small ones. */
  constructor(order = RANGE_BTREE_DEFAULT_ORDER) {
    this.tree = new RangeBTree(order);
  }

  /** Number of stored (maximal) ranges. */
  get rangeCount(): number {
    return this.tree.size;
  }

  /**
   * Value at `point` (0 if no range covers it). O(log n), no allocation; O(1) when `point` falls
   * in the same stored range (or gap between ranges) as the previous `get` — what a fault path
   * walking a range page by page does.
   */
  get(point: number): number {
    if (point >= this.hitStart && point < this.hitEnd) return this.hitVal;
    const t = this.tree;
    const c = t.floorEntry(point);
    if (c !== -1 && point < (t.ends[c] as number)) {
      this.hitStart = t.keys[c] as number;
      this.hitEnd = t.ends[c] as number;
      this.hitVal = t.vals[c] as number;
      return this.hitVal;
    }
    // In the gap between the range c (if any) and the next one.
    const n = c === -1 ? t.firstEntry() : t.nextEntry(c);
    this.hitStart = c === -1 ? 0 : (t.ends[c] as number);
    this.hitEnd = n === -1 ? RANGE_LIMIT : (t.keys[n] as number);
    this.hitVal = 0;
    return 0;
  }

  /** Forgets the range `get` remembered (every change to the tree calls this first). */
  private forgetHit(): void {
    this.hitStart = 0;
    this.hitEnd = 0;
    this.hitVal = 0;
  }

  /**
   * Sets every point of [start, end) to `value` (0 clears). Returns true iff some point's value
   * changed; merges with equal neighbours. An empty range (start ≥ end) changes nothing.
   * O(log n + k/B) where k is the number of stored ranges [start, end) overlaps.
   */
  set(start: number, end: number, value: number): boolean {
    checkRange(start, end, 'IntervalMap.set');
    if (!(Number.isInteger(value) && value >= INT32_MIN && value <= INT32_MAX)) {
      assertInvariant(false, `IntervalMap.set: value ${value} is not an int32`);
    }
    if (start >= end) return false;
    const t = this.tree;
    // p: the last range starting before `start`; e: the first starting at or after it.
    const p = t.floorEntry(start - 1);
    const e = p === -1 ? t.firstEntry() : t.nextEntry(p);
    const pEnd = p === -1 ? 0 : (t.ends[p] as number);
    const pVal = p === -1 ? 0 : (t.vals[p] as number);

    // Already uniform: nothing changes (MA-4). Ranges are maximal, so for a non-zero value
    // one range must cover all of [start, end).
    if (value !== 0) {
      if (pEnd > start) {
        if (pVal === value && pEnd >= end) return false;
      } else if (e !== -1 && t.keys[e] === start && t.vals[e] === value && (t.ends[e] as number) >= end) {
        return false;
      }
    } else if (pEnd <= start && (e === -1 || (t.keys[e] as number) >= end)) {
      return false;
    }

    this.forgetHit();
    // The inner ranges start in [start, end): e is the first, q the last; r follows them.
    // Found by a lookup, not a walk, so that a set over k ranges reads O(log n) of them here.
    let q = -1;
    let r = e;
    if (e !== -1 && (t.keys[e] as number) < end) {
      const e2 = t.nextEntry(e);
      q = e2 === -1 || (t.keys[e2] as number) >= end ? e : t.floorEntry(end - 1);
      r = q === e ? e2 : t.nextEntry(q);
    }

    // Decide the result first: [lo, hi) → value, merged with equal neighbours; p clipped to
    // `start`; at most one range keeps a tail past `end` (p's, or q's).
    let hi = end;
    const mergeLeft = value !== 0 && p !== -1 && pVal === value && pEnd >= start;
    if (mergeLeft && pEnd > hi) hi = pEnd;
    const clipLeft = p !== -1 && !mergeLeft && pEnd > start;
    const restFromP = clipLeft && pEnd > end;
    let keepQ = false;
    const qKey = q === -1 ? 0 : (t.keys[q] as number);
    if (q !== -1 && (t.ends[q] as number) > end) {
      if (t.vals[q] === value) hi = t.ends[q] as number;
      else keepQ = true;
    }
    const rKey = r === -1 ? -1 : (t.keys[r] as number);
    const mergeRight = value !== 0 && r !== -1 && rKey === hi && t.vals[r] === value;
    if (mergeRight) hi = t.ends[r] as number;

    // Then write it with as few tree operations as possible: in-place edits of ends and values
    // and `rekey` (no node changes, so cursors stay valid), then one removeRange, then inserts.
    let removeFrom = start;
    let removeTo = mergeRight ? rKey + 1 : end;
    let insertNew = false;
    if (clipLeft) t.ends[p] = start;
    if (keepQ) t.rekey(qKey, end); // q keeps [end, its end) with its own value
    if (value !== 0) {
      if (mergeLeft) {
        t.ends[p] = hi;
      } else if (q !== -1 && !(keepQ && e === q)) {
        // Reuse the first inner range for [start, hi).
        const eKey = t.keys[e] as number;
        t.ends[e] = hi;
        t.vals[e] = value;
        if (eKey !== start) t.rekey(eKey, start);
        removeFrom = start + 1;
      } else if (mergeRight) {
        // No inner range to reuse: the right neighbour grows leftward instead.
        t.rekey(rKey, start);
        removeTo = removeFrom;
      } else {
        insertNew = true;
      }
    }
    if (removeFrom < removeTo) t.removeRange(removeFrom, removeTo);
    // Both inserts land in space just cleared; a refusal would mean the ranges overlapped.
    if (insertNew && t.insert(start, hi, value) !== -1) assertInvariant(false, 'IntervalMap.set: overlap');
    if (restFromP && t.insert(end, pEnd, pVal) !== -1) assertInvariant(false, 'IntervalMap.set: overlap');
    return true;
  }

  /**
   * True iff every point of [start, end) has exactly `value` (for 0: no range intersects it).
   * Vacuously true for an empty range. O(log n): ranges are maximal, so a uniform non-zero
   * stretch is one stored range.
   */
  isUniform(start: number, end: number, value: number): boolean {
    if (start >= end) return true;
    const t = this.tree;
    if (value === 0) {
      const c = t.floorEntry(end - 1);
      return c === -1 || (t.ends[c] as number) <= start;
    }
    const c = t.floorEntry(start);
    return c !== -1 && t.vals[c] === value && (t.ends[c] as number) >= end;
  }

  /**
   * True iff every point of [start, end) has the same value, whichever it is (0 included):
   * `isUniform(start, end, get(start))` with one descent instead of two. Vacuously true for an
   * empty range. O(log n), no allocation.
   */
  isConstant(start: number, end: number): boolean {
    if (start >= end) return true;
    const t = this.tree;
    const c = t.floorEntry(start);
    // Inside a stored range: ranges are maximal, so the value holds to `end` only in that range.
    if (c !== -1 && start < (t.ends[c] as number)) return (t.ends[c] as number) >= end;
    // In a gap (value 0): constant iff no range starts before `end`.
    const n = c === -1 ? t.firstEntry() : t.nextEntry(c);
    return n === -1 || (t.keys[n] as number) >= end;
  }

  /** Calls `cb` for each stored range intersecting [start, end), clipped to it, in order. */
  forEachRange(start: number, end: number, cb: (start: number, end: number, value: number) => void): void {
    if (!(start < end)) return;
    const t = this.tree;
    for (let c = this.firstCursor(start); c !== -1 && (t.keys[c] as number) < end; c = t.nextEntry(c)) {
      cb(Math.max(t.keys[c] as number, start), Math.min(t.ends[c] as number, end), t.vals[c] as number);
    }
  }

  /** Like `forEachRange`, and also reports the uncovered gaps of [start, end) with value 0. */
  forEachSegment(start: number, end: number, cb: (start: number, end: number, value: number) => void): void {
    if (!(start < end)) return;
    const t = this.tree;
    let at = start;
    for (let c = this.firstCursor(start); c !== -1 && (t.keys[c] as number) < end; c = t.nextEntry(c)) {
      const s = Math.max(t.keys[c] as number, start);
      const e = Math.min(t.ends[c] as number, end);
      if (s > at) cb(at, s, 0);
      cb(s, e, t.vals[c] as number);
      at = e;
    }
    if (at < end) cb(at, end, 0);
  }

  /** The first stored range (unclipped) intersecting [start, end), or null. */
  firstIntersecting(start: number, end: number): IntervalRange | null {
    if (start >= end) return null;
    const t = this.tree;
    const c = this.firstCursor(start);
    if (c === -1 || (t.keys[c] as number) >= end) return null;
    return { start: t.keys[c] as number, end: t.ends[c] as number, value: t.vals[c] as number };
  }

  /** Every stored range in order (for introspection and tests). O(n). */
  toArray(): IntervalRange[] {
    const out: IntervalRange[] = [];
    const t = this.tree;
    for (let c = t.firstEntry(); c !== -1; c = t.nextEntry(c)) {
      out.push({ start: t.keys[c] as number, end: t.ends[c] as number, value: t.vals[c] as number });
    }
    return out;
  }

  /** Removes every range. */
  clear(): void {
    this.forgetHit();
    this.tree.clear();
  }

  /** Structural self-check (B+tree invariants, disjoint and maximal ranges); null if sound. O(n). */
  check(): string | null {
    const err = this.tree.check();
    if (err !== null) return err;
    const t = this.tree;
    let prevEnd = -1;
    let prevVal = 0;
    for (let c = t.firstEntry(); c !== -1; c = t.nextEntry(c)) {
      const k = t.keys[c] as number;
      if (k < prevEnd) return `range at ${k} overlaps the previous one ending at ${prevEnd}`;
      if (k === prevEnd && t.vals[c] === prevVal)
        return `range at ${k} should have merged with its left neighbour`;
      if (t.vals[c] === 0) return `range at ${k} stores value 0`;
      prevEnd = t.ends[c] as number;
      prevVal = t.vals[c] as number;
    }
    return null;
  }

  /** Cursor of the first stored range with end > start (the first that can meet [start, …)). */
  private firstCursor(start: number): number {
    const t = this.tree;
    const c = t.floorEntry(start);
    if (c === -1) return t.firstEntry();
    return (t.ends[c] as number) > start ? c : t.nextEntry(c);
  }
}
