/**
 * A file's page cache (the `i_pages` xarray of `struct address_space`, mm/filemap.c): a map from
 * page index (pgoff) to frame (pfn), as a radix tree whose nodes live in one Int32Array pool —
 * no JS object or Map per page.
 *
 * Layout. Fanout 64 (6 bits per level, like XA_CHUNK_SHIFT). Node n occupies
 * `pool[n*65 .. n*65+64]`:
 *
 *   pool[n*65]          number of non-empty slots in the node (so empty nodes are freed and
 *                       walks can tell an empty subtree at a glance)
 *   pool[n*65 + 1 + i]  slot i: 0 = empty; in a leaf node pfn + 1; in an inner node child + 1
 *
 * The tree grows in height as larger indices are stored (height h covers indices < 64^h) and
 * never shrinks except to empty. Indices go up to 2^51 (a 2^63-byte file), so the digit of each
 * level is computed with division, not shifts, above 2^30.
 *
 * Dense files cost 4.06 bytes per cached page (65 words per 64 pages); a lookup is `height`
 * array reads.
 */

import { kvmWarn } from '../errno.js';
import type { Pfn, PgOff } from '../units.js';
import type { PageAllocator } from './page_alloc.js';

const SHIFT = 6;
const FANOUT = 64;
const NODE = FANOUT + 1;
const MASK = FANOUT - 1;

/** 64^k for k = 0..9. */
const POW = Array.from({ length: 10 }, (_, k) => FANOUT ** k);

/** leafBase while no leaf is remembered: index - NO_LEAF is never below FANOUT. */
const NO_LEAF = -(2 ** 60);

function digit(index: number, level: number): number {
  // level 0 is the leaf level; bit operations are exact below 2^30, where digits of level ≥ 5
  // are 0 (and JS shift counts wrap at 32, so they must not be computed with >>>).
  if (index < 0x40000000) return level < 5 ? (index >>> (SHIFT * level)) & MASK : 0;
  return Math.floor(index / (POW[level] as number)) % FANOUT;
}

export class PageCache {
  private pool = new Int32Array(NODE * 4);
  private nodeCount = 0; // high-water mark of allocated nodes
  private freeNodes: number[] = [];
  private root = -1;
  private height = 0;
  /**
   * The leaf node the last lookup or store reached and the index of its slot 0: pages next to
   * the last one (a sequential fault or fallocate) skip the walk from the root. Forgotten when
   * that node is freed.
   */
  private leafNode = -1;
  private leafBase = NO_LEAF;
  /** erase's path buffer: one pool slot per level above the leaves (heights stay ≤ 10). */
  private readonly path = new Int32Array(12);
  /** Number of cached pages (nrpages). */
  nrpages = 0;

  private allocNode(): number {
    const n = this.freeNodes.pop();
    if (n !== undefined) return n;
    if ((this.nodeCount + 1) * NODE > this.pool.length) {
      // Grow by 1/8 (at least 64 nodes), not 2×: the slack stays under 12.5 % of the tree (the
      // metadata budget per resident page counts capacity); the copying stays amortised O(1).
      const nodes = this.pool.length / NODE;
      const bigger = new Int32Array((nodes + Math.max(nodes >>> 3, 64)) * NODE);
      bigger.set(this.pool);
      this.pool = bigger;
    }
    return this.nodeCount++;
  }

  private freeNode(n: number): void {
    this.pool.fill(0, n * NODE, n * NODE + NODE);
    this.freeNodes.push(n);
    if (n === this.leafNode) {
      this.leafNode = -1;
      this.leafBase = NO_LEAF;
    }
  }

  /** The pfn cached at index, or -1. */
  lookup(index: PgOff): Pfn | -1 {
    const d = index - this.leafBase;
    if (d >= 0 && d < FANOUT) return ((this.pool[this.leafNode * NODE + 1 + d] as number) - 1) as Pfn | -1;
    let h = this.height;
    if (h === 0 || index >= (POW[h] as number)) return -1;
    const pool = this.pool;
    let node = this.root;
    while (h > 1) {
      h--;
      const e = pool[node * NODE + 1 + digit(index, h)] as number;
      if (e === 0) return -1;
      node = e - 1;
    }
    const i = digit(index, 0);
    this.leafNode = node;
    this.leafBase = index - i;
    return ((pool[node * NODE + 1 + i] as number) - 1) as Pfn | -1;
  }

  /** Stores pfn at index. Returns the pfn that was there, or -1. */
  store(index: PgOff, pfn: Pfn): Pfn | -1 {
    if (!Number.isSafeInteger(index) || index < 0) throw new RangeError(`page index ${index}`);
    const d = index - this.leafBase;
    if (d >= 0 && d < FANOUT) return this.storeInLeaf(this.leafNode, this.leafNode * NODE + 1 + d, pfn);
    if (this.root < 0) {
      this.root = this.allocNode();
      this.height = 1;
    }
    while (index >= (POW[this.height] as number)) {
      // Grow: the old root becomes slot 0 of a new root (if it holds anything).
      const r = this.allocNode();
      const old = this.root;
      const pool = this.pool;
      if ((pool[old * NODE] as number) > 0) {
        pool[r * NODE + 1] = old + 1;
        pool[r * NODE] = 1;
      } else {
        this.freeNode(old);
      }
      this.root = r;
      this.height++;
    }
    let node = this.root;
    for (let h = this.height - 1; h > 0; h--) {
      const slot = node * NODE + 1 + digit(index, h);
      let e = this.pool[slot] as number;
      if (e === 0) {
        const child = this.allocNode(); // may reallocate pool
        this.pool[slot] = child + 1;
        this.pool[node * NODE] = (this.pool[node * NODE] as number) + 1;
        e = child + 1;
      }
      node = e - 1;
    }
    const i = digit(index, 0);
    this.leafNode = node;
    this.leafBase = index - i;
    return this.storeInLeaf(node, node * NODE + 1 + i, pfn);
  }

  /** store's last step: pfn into pool slot `slot` of leaf `node`. */
  private storeInLeaf(node: number, slot: number, pfn: Pfn): Pfn | -1 {
    const old = (this.pool[slot] as number) - 1;
    this.pool[slot] = pfn + 1;
    if (old < 0) {
      this.pool[node * NODE] = (this.pool[node * NODE] as number) + 1;
      this.nrpages++;
    }
    return old as Pfn | -1;
  }

  /** Removes index. Returns the pfn that was there, or -1. Frees nodes that become empty. */
  erase(index: PgOff): Pfn | -1 {
    if (this.height === 0 || index >= (POW[this.height] as number)) return -1;
    // The pool slots on the way down, in a reused buffer (no array per call).
    const path = this.path;
    let depth = 0;
    let node = this.root;
    for (let h = this.height - 1; h > 0; h--) {
      const slot = node * NODE + 1 + digit(index, h);
      const e = this.pool[slot] as number;
      if (e === 0) return -1;
      path[depth++] = slot;
      node = e - 1;
    }
    const slot = node * NODE + 1 + digit(index, 0);
    const old = (this.pool[slot] as number) - 1;
    if (old < 0) return -1;
    this.pool[slot] = 0;
    this.nrpages--;
    // Decrement counts bottom-up, freeing empty nodes.
    let child = node;
    let count = (this.pool[child * NODE] as number) - 1;
    this.pool[child * NODE] = count;
    while (count === 0) {
      this.freeNode(child);
      if (depth === 0) {
        this.root = -1;
        this.height = 0;
        break;
      }
      const parentSlot = path[--depth] as number;
      this.pool[parentSlot] = 0;
      child = Math.floor((parentSlot - 1) / NODE);
      count = (this.pool[child * NODE] as number) - 1;
      this.pool[child * NODE] = count;
    }
    return old as Pfn;
  }

  /**
   * Removes the cached pages of [start, end) that `take(index, pfn)` accepts, in index order, in
   * one walk: nodes that empty are freed, pages `take` refuses stay. `take` must not modify the
   * cache (it may do anything else, e.g. drop the page's reference). Truncation's bulk path: no
   * per-page walk from the root, no per-page allocation. Returns the number of pages removed.
   */
  removeRange(start: number, end: number, take: (index: PgOff, pfn: Pfn) => boolean): number {
    if (this.root < 0 || !(start < end)) return 0;
    const before = this.nrpages;
    const left = this.removeWalk(this.root, this.height - 1, 0, start, end, take);
    if (left === 0) {
      this.freeNode(this.root);
      this.root = -1;
      this.height = 0;
    }
    return before - this.nrpages;
  }

  /** removeRange below `node` (at `level`, first index `base`); returns the node's new count. */
  private removeWalk(
    node: number,
    level: number,
    base: number,
    start: number,
    end: number,
    take: (index: PgOff, pfn: Pfn) => boolean,
  ): number {
    const span = POW[level] as number;
    const first = start > base ? Math.floor((start - base) / span) : 0;
    const head = node * NODE;
    let count = this.pool[head] as number;
    for (let i = first; i < FANOUT && count > 0; i++) {
      const lo = base + i * span;
      if (lo >= end) break;
      const at = head + 1 + i;
      // Re-read the pool each time: `take` cannot grow it, but a nested walk may free nodes.
      const e = this.pool[at] as number;
      if (e === 0) continue;
      if (level === 0) {
        if (!take(lo as PgOff, (e - 1) as Pfn)) continue;
        this.pool[at] = 0;
        this.nrpages--;
        count--;
      } else if (this.removeWalk(e - 1, level - 1, lo, start, end, take) === 0) {
        this.freeNode(e - 1);
        this.pool[at] = 0;
        count--;
      }
    }
    this.pool[head] = count;
    return count;
  }

  /**
   * Calls cb(index, pfn) for every cached page with start ≤ index < end, in index order,
   * visiting only present pages (empty subtrees are skipped whole). cb must not modify the
   * cache; collect first, then erase (see `collect`).
   */
  forEach(start: number, end: number, cb: (index: PgOff, pfn: Pfn) => void): void {
    if (this.root < 0 || start >= end) return;
    this.walk(this.root, this.height - 1, 0, start, end, cb);
  }

  private walk(
    node: number,
    level: number,
    base: number,
    start: number,
    end: number,
    cb: (index: PgOff, pfn: Pfn) => void,
  ): void {
    const span = POW[level] as number;
    const pool = this.pool;
    const first = start > base ? Math.floor((start - base) / span) : 0;
    for (let i = first; i < FANOUT; i++) {
      const lo = base + i * span;
      if (lo >= end) return;
      const e = pool[node * NODE + 1 + i] as number;
      if (e === 0) continue;
      if (level === 0) cb(lo as PgOff, (e - 1) as Pfn);
      else this.walk(e - 1, level - 1, lo, start, end, cb);
    }
  }

  /** The cached pages in [start, end) as parallel arrays (safe to erase afterwards). */
  collect(start: number, end: number): { indices: number[]; pfns: number[] } {
    const indices: number[] = [];
    const pfns: number[] = [];
    this.forEach(start, end, (i, p) => {
      indices.push(i);
      pfns.push(p);
    });
    return { indices, pfns };
  }

  /** Number of cached pages in [start, end). */
  countRange(start: number, end: number): number {
    if (start <= 0 && end >= Number.MAX_SAFE_INTEGER) return this.nrpages;
    let n = 0;
    this.forEach(start, end, () => {
      n++;
    });
    return n;
  }

  /** Bytes of radix nodes currently in use (for the metadata-per-page figure). */
  metadataBytes(): number {
    return (this.nodeCount - this.freeNodes.length) * NODE * 4;
  }

  /** Checks internal counts (tests). */
  checkInvariants(): void {
    if (this.root < 0) {
      if (this.nrpages !== 0) kvmWarn(`empty page cache with nrpages ${this.nrpages}`);
      return;
    }
    let pages = 0;
    const visit = (node: number, level: number): void => {
      let count = 0;
      for (let i = 0; i < FANOUT; i++) {
        const e = this.pool[node * NODE + 1 + i] as number;
        if (e === 0) continue;
        count++;
        if (level === 0) pages++;
        else visit(e - 1, level - 1);
      }
      if (count !== this.pool[node * NODE])
        kvmWarn(`radix node ${node} count ${this.pool[node * NODE]} ≠ ${count}`);
      if (count === 0 && node !== this.root) kvmWarn(`empty radix node ${node} not freed`);
    };
    visit(this.root, this.height - 1);
    if (pages !== this.nrpages) kvmWarn(`nrpages ${this.nrpages} ≠ ${pages} present`);
  }
}

/** The counters `truncatePages` keeps: pages freed (now or at unlock) and removals parked on a lock. */
export interface TruncateStats {
  freed: number;
  parkedOnLock: number;
}

/**
 * truncate_inode_pages_range over pages [start, end) of `mapping`: drops the cache's reference on
 * every page in one walk (no closure or array per page: a 1 GiB punch visits 262144 pages). A
 * page someone holds locked stays cached: the kernel sleeps in folio_lock() there; the model
 * parks the rest of that page's removal on the lock and finishes it when the holder unlocks —
 * unless the page was replaced or removed meanwhile.
 */
export function truncatePages(
  mapping: PageCache,
  alloc: PageAllocator,
  start: number,
  end: number,
  stats: TruncateStats,
): void {
  let parked: number[] | null = null;
  stats.freed += mapping.removeRange(start, end, (index, pfn) => {
    if (alloc.isLocked(pfn)) {
      parked ??= [];
      parked.push(index, pfn);
      return false;
    }
    alloc.put(pfn);
    return true;
  });
  if (parked === null) return;
  const list: number[] = parked;
  for (let k = 0; k < list.length; k += 2) {
    const index = list[k] as PgOff;
    const pfn = list[k + 1] as Pfn;
    stats.parkedOnLock++;
    alloc.waitUnlocked(pfn, () => {
      if (mapping.lookup(index) !== pfn) return; // already gone meanwhile
      mapping.erase(index);
      stats.freed++;
      alloc.put(pfn);
    });
  }
}
