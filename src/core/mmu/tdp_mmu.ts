/**
 * The TDP MMU's page tables: one root of SPTE tables mapping gfns to host pfns, after
 * arch/x86/kvm/mmu/tdp_mmu.c (install, zap, write-protect, walk) and tdp_iter.c (the walk).
 *
 * Shape: tables of 512 entries, 9 gfn bits per level, leaves at level 1 (4 KiB), 2 (2 MiB) and
 * 3 (1 GiB). The root is level 4 for a guest MAXPHYADDR ≤ 48 and level 5 above that, as
 * `kvm_mmu_get_tdp_level` chooses; the default MAXPHYADDR is 52, so gfns up to 2^40 map.
 *
 * What it simplifies: one root per VM (no per-role or invalid roots, no mirror root for private
 * memory, no root refcounts); no mmu_lock, RCU or atomic SPTE updates (single-threaded: the
 * callers order their phases, architecture §6); no TLB flush requests (callers compare
 * `generation` instead); no eager page splitting — a huge leaf under a smaller mapping is zapped,
 * as the fault path does. Replacing a present leaf with a different pfn, which the kernel BUGs
 * on, is modelled as zap + install so that the caller sees the old leaf through `onZap`.
 *
 * Memory layout. Tables live in a pool of parallel typed arrays, indexed by table number t
 * (entry e = t * 512 + index, written `(t << 9) | index`: t < 2^22 keeps it inside int32). The
 * pool is segmented: each array is cut into chunks of 1024 tables (t >>> 10 picks the chunk,
 * t & 1023 the table in it; for an entry, e >>> 19 and e & 0x7ffff):
 *
 *   slot   Int32Array   4 B/entry  child table number (non-leaf), base pfn (leaf),
 *                                  or memslot generation (MMIO SPTE)
 *   flags  Uint8Array   1 B/entry  SPTE bits (spte.ts); 0 = empty
 *   count  Uint16Array  2 B/table  non-empty entries: a table whose count drops to 0 is freed
 *   level  Uint8Array   1 B/table  the table's level, 0 while on the free list
 *
 * so a densely mapped 4 KiB page costs 5 bytes plus 1/512 of its parents. An empty entry's
 * slot is 0, and table 0 is an always-empty "zero table", so `lookup` follows pointers without
 * testing for presence at every level. Free tables form a list threaded through their first
 * slot. The first chunk starts at 16 tables (41 KB), so a small MMU stays small, and grows by
 * 1/8 of its size (at least 16 tables) up to 1024, copying itself each time (25 steps, 20 MB
 * copied in all, once per MMU): the slack stays within 12.5%, where doubling would let a dense
 * mapping cost ~10 B/page against a budget of 16 B for all metadata per resident page. Past it
 * the pool grows a whole chunk (1024 tables, 2.6 MB) at a time and copies nothing: a 1 TiB
 * guest's pool of ~1 GiB grows by appending chunks, where a single array was copied at every
 * 1/8 growth step (39 % of that run's CPU). While the pool is one chunk (up to ~2 GiB
 * of 4 KiB leaves), `lookup` reads the first chunk's arrays directly, as from one flat array;
 * with more chunks it picks each level's chunk. When the last table is freed the pool returns
 * to its initial size.
 *
 * Gfns reach 2^40, beyond int32: they are split as gfn = hi · 2^27 + lo, where lo holds the
 * indices of levels 3..1 and hi those of levels 5..4; bitwise operators touch only hi, lo and
 * table numbers. Other gfn arithmetic uses multiplication and Math.floor.
 */

import { assertInvariant } from '../errno.js';
import {
  SPTE_ACCESSED,
  SPTE_DIRTY,
  SPTE_ENT_PER_PAGE,
  SPTE_HOST_WRITABLE,
  SPTE_LARGE,
  SPTE_LEAF_FLAGS_MASK,
  SPTE_MMIO,
  SPTE_PRESENT,
  SPTE_WRITABLE,
} from './spte.js';

/** Called for each leaf just before it is zapped: the leaf's first gfn, level (1..3), base pfn, flags. */
export type ZapCallback = (gfn: number, level: number, pfn: number, flags: number) => void;

/** Called for each present leaf by `forEachLeaf`, with the same arguments as ZapCallback. */
export type LeafCallback = (gfn: number, level: number, pfn: number, flags: number) => void;

/** Construction options. */
export interface TdpMmuOptions {
  /**
   * Guest MAXPHYADDR in bits (36..52, default 52): gfns below 2^(maxPhyAddr - 12) can be mapped.
   * Above 48 bits the root is a level-5 table, as in KVM.
   */
  readonly maxPhyAddr?: number;
}

/** Counts of what is mapped, and what the tables cost. */
export interface TdpMmuStats {
  /** Present 4 KiB leaves. */
  readonly leaves4k: number;
  /** Present 2 MiB leaves. */
  readonly leaves2m: number;
  /** Present 1 GiB leaves. */
  readonly leaves1g: number;
  /** Cached MMIO SPTEs. */
  readonly mmio: number;
  /** Tables in use, root included. */
  readonly tables: number;
  /** Bytes held by the table pool (allocated capacity, not just tables in use). */
  readonly bytes: number;
  /** Present leaves zapped since creation, by any call (map's replacements included). */
  readonly zapped: number;
}

// Module-local copies of the imported bits: a transpiler that emits CommonJS turns imported
// bindings into getter calls (tsx does, outside an ESM package), which would dominate `lookup`.
const PRESENT = SPTE_PRESENT;
const WRITABLE = SPTE_WRITABLE;
const HOST_WRITABLE = SPTE_HOST_WRITABLE;
const ACCESSED = SPTE_ACCESSED;
const DIRTY = SPTE_DIRTY;
const LARGE = SPTE_LARGE;
const MMIO = SPTE_MMIO;
const LEAF_FLAGS_MASK = SPTE_LEAF_FLAGS_MASK;
const ENT = SPTE_ENT_PER_PAGE;
/** Pages covered by one level-4 entry: 2^27, the split point between lo and hi. */
const LO_SPAN = 2 ** 27;
/** Tables per chunk of the pool: 2^CHUNK_SHIFT (the first chunk reaches it by growing). */
const CHUNK_SHIFT = 10;
const CHUNK_TABLES = 1 << CHUNK_SHIFT;
const CHUNK_MASK = CHUNK_TABLES - 1;
/** An entry's chunk is e >>> ENTRY_SHIFT, its index in the chunk e & ENTRY_MASK. */
const ENTRY_SHIFT = CHUNK_SHIFT + 9;
const ENTRY_MASK = (1 << ENTRY_SHIFT) - 1;
/** Entries in a full chunk: the entries e < CHUNK_ENTRIES are the first chunk's. */
const CHUNK_ENTRIES = CHUNK_TABLES * ENT;
/** Tables in the first chunk of a new (or emptied) pool; also its smallest growth step. */
const INITIAL_TABLES = 16;
/**
 * Table 0 is never handed out and stays empty: an empty entry's slot is 0, so a walk that
 * follows it lands in an empty table and ends in a miss at level 1 without testing flags on the
 * way. It is also the root of an MMU with nothing mapped.
 */
const ZERO_TABLE = 0;
/** (t << 9) | index must stay a non-negative int32. */
const MAX_TABLES = 2 ** 22;
const INT32_MAX = 0x7fff_ffff;

/** Pages mapped by one entry of a level-`level` table: 512^(level-1). */
function entrySpan(level: number): number {
  switch (level) {
    case 1:
      return 1;
    case 2:
      return 512;
    case 3:
      return 262_144;
    case 4:
      return LO_SPAN;
    default:
      return 2 ** 36;
  }
}

/** Index of gfn's entry in a level-`level` table. */
const indexAt = (gfn: number, level: number): number => Math.floor(gfn / entrySpan(level)) % ENT;

/**
 * Index of a gfn's entry in a level-`level` table from its split gfn = hi · 2^27 + lo (see the
 * file comment): levels 1..3 read 9 bits of lo, levels 4 and 5 of hi. Same as `indexAt`.
 */
function splitIndex(hi: number, lo: number, level: number): number {
  switch (level) {
    case 1:
      return lo & 511;
    case 2:
      return (lo >>> 9) & 511;
    case 3:
      return lo >>> 18;
    case 4:
      return hi & 511;
    default:
      return hi >>> 9;
  }
}

/** Mutating calls while a callback of a walk runs would free tables under the walk. */
const REENTRY = 'TdpMmu: the tables may not be modified from an onZap/forEachLeaf callback';

/** A broken precondition: fails like `assertInvariant` (throws under test and outside it). */
function bad(message: string): never {
  assertInvariant(false, message);
}

/**
 * One TDP root and its tables: installs, zaps, write-protects and walks SPTEs, and answers the
 * guest access path's `lookup`. See the file comment for the layout.
 */
export class TdpMmu {
  /** Level of the root table: 4, or 5 when maxPhyAddr > 48. */
  readonly rootLevel: 4 | 5;
  /** One past the highest mappable gfn: 2^(maxPhyAddr - 12). */
  readonly gfnLimit: number;

  /** Level of the leaf found by the last `lookup` (1..3), or 0 if it found nothing. */
  lastLevel = 0;
  /** Flags (spte.ts) of the SPTE found by the last `lookup`, or 0 if none. */
  lastFlags = 0;
  /** When the last `lookup` found an MMIO SPTE (lastFlags has SPTE_MMIO): its generation. Stale otherwise. */
  lastMmioGeneration = -1;

  // The pool's chunks (file comment): chunk c holds tables [c·1024, c·1024 + 1024).
  private slotChunks: Int32Array[] = [];
  private flagChunks: Uint8Array[] = [];
  private countChunks: Uint16Array[] = [];
  private levelChunks: Uint8Array[] = [];
  /** The first chunk's slots and flags: `lookup` reads them directly while it is the only one. */
  private slot0: Int32Array;
  private flags0: Uint8Array;
  private count0: Uint16Array;
  private level0: Uint8Array;
  /** Tables the chunks hold. */
  private capacity = 0;
  /** Tables [1, highWater) have been handed out at least once since the last reset. */
  private highWater = 1;
  private freeHead = -1;
  /** The root table, or ZERO_TABLE while nothing is mapped. */
  private root = ZERO_TABLE;

  private nTables = 0;
  private n4k = 0;
  private n2m = 0;
  private n1g = 0;
  private nMmio = 0;
  private nZapped = 0;

  private gen = 0;
  /** Set by any removal or restriction during the current call; turned into one generation bump. */
  private touched = false;
  /** True while a caller's callback runs inside a walk. */
  private walking = false;

  constructor(options: TdpMmuOptions = {}) {
    const bits = options.maxPhyAddr ?? 52;
    assertInvariant(
      Number.isInteger(bits) && bits >= 36 && bits <= 52,
      `TdpMmu: maxPhyAddr ${bits} is not an integer in 36..52`,
    );
    this.rootLevel = bits > 48 ? 5 : 4;
    this.gfnLimit = 2 ** (bits - 12);
    this.slot0 = new Int32Array(INITIAL_TABLES * ENT);
    this.flags0 = new Uint8Array(INITIAL_TABLES * ENT);
    this.count0 = new Uint16Array(INITIAL_TABLES);
    this.level0 = new Uint8Array(INITIAL_TABLES);
    this.slotChunks.push(this.slot0);
    this.flagChunks.push(this.flags0);
    this.countChunks.push(this.count0);
    this.levelChunks.push(this.level0);
    this.capacity = INITIAL_TABLES;
  }

  /**
   * Incremented (once per call) by every call that removes or restricts a mapping: a zap, a
   * write-protect, a replacement by `map`/`mapMmio`, a `setLeafFlags` that clears a bit. A vCPU's
   * software TLB tags its entries with it and drops them when it moves.
   */
  get generation(): number {
    return this.gen;
  }

  /**
   * The pfn backing gfn — a leaf's base pfn plus gfn's offset within a huge leaf — or -1 when no
   * present leaf covers gfn (including an MMIO SPTE, which `lastFlags` then shows with
   * `lastMmioGeneration`). Sets `lastLevel` and `lastFlags`. The guest access path's slow path:
   * no allocation, one typed-array read per level. gfn must be an integer (a `Gfn`); one outside
   * 0..gfnLimit-1 misses.
   */
  lookup(gfn: number): number {
    if (!(gfn >= 0 && gfn < this.gfnLimit)) return this.miss();
    // The pool is one chunk: entry e = (t << 9) | index indexes `slot0`/`flags0`, loaded once.
    if (this.capacity > CHUNK_TABLES) return this.lookupChunked(gfn);
    const flags = this.flags0;
    const slot = this.slot0;
    const hi = Math.floor(gfn / LO_SPAN);
    const lo = gfn - hi * LO_SPAN;
    // Reads are in bounds (t is a live table or the zero table, the index has 9 bits), so the
    // `?? 0` never fires: it satisfies noUncheckedIndexedAccess and costs nothing once optimised.
    // Levels 5 and 4 hold only table pointers, and an empty entry's slot is the zero table, so
    // they are followed without a test; so are empty entries at levels 3 and 2.
    let t = this.root;
    if (this.rootLevel === 5) t = slot[(t << 9) | (hi >>> 9)] ?? 0;
    t = slot[(t << 9) | (hi & 511)] ?? 0;

    let e = (t << 9) | (lo >>> 18);
    let f = flags[e] ?? 0;
    if ((f & LARGE) !== 0) {
      this.lastLevel = 3;
      this.lastFlags = f;
      return (slot[e] ?? 0) + (lo & 0x3ffff);
    }
    t = slot[e] ?? 0;

    e = (t << 9) | ((lo >>> 9) & 511);
    f = flags[e] ?? 0;
    if ((f & LARGE) !== 0) {
      this.lastLevel = 2;
      this.lastFlags = f;
      return (slot[e] ?? 0) + (lo & 511);
    }
    t = slot[e] ?? 0;

    e = (t << 9) | (lo & 511);
    f = flags[e] ?? 0;
    this.lastFlags = f;
    if ((f & PRESENT) !== 0) {
      this.lastLevel = 1;
      return slot[e] ?? 0;
    }
    if (f !== 0) {
      this.lastLevel = 1;
      this.lastMmioGeneration = slot[e] ?? 0;
      return -1;
    }
    this.lastLevel = 0;
    return -1;
  }

  /** `lookup` once the pool has more than one chunk: each level's table picks its chunk. */
  private lookupChunked(gfn: number): number {
    const sc = this.slotChunks;
    const fc = this.flagChunks;
    const hi = Math.floor(gfn / LO_SPAN);
    const lo = gfn - hi * LO_SPAN;
    // As in `lookup`; t is a live table or the zero table, so its chunk exists and `!` holds.
    let t = this.root;
    if (this.rootLevel === 5) t = sc[t >>> CHUNK_SHIFT]![((t & CHUNK_MASK) << 9) | (hi >>> 9)] ?? 0;
    t = sc[t >>> CHUNK_SHIFT]![((t & CHUNK_MASK) << 9) | (hi & 511)] ?? 0;

    let slot = sc[t >>> CHUNK_SHIFT]!; // t is live: its chunk exists
    let e = ((t & CHUNK_MASK) << 9) | (lo >>> 18);
    let f = fc[t >>> CHUNK_SHIFT]![e] ?? 0;
    if ((f & LARGE) !== 0) {
      this.lastLevel = 3;
      this.lastFlags = f;
      return (slot[e] ?? 0) + (lo & 0x3ffff);
    }
    t = slot[e] ?? 0;

    slot = sc[t >>> CHUNK_SHIFT]!; // t is live: its chunk exists
    e = ((t & CHUNK_MASK) << 9) | ((lo >>> 9) & 511);
    f = fc[t >>> CHUNK_SHIFT]![e] ?? 0;
    if ((f & LARGE) !== 0) {
      this.lastLevel = 2;
      this.lastFlags = f;
      return (slot[e] ?? 0) + (lo & 511);
    }
    t = slot[e] ?? 0;

    slot = sc[t >>> CHUNK_SHIFT]!; // t is live: its chunk exists
    e = ((t & CHUNK_MASK) << 9) | (lo & 511);
    f = fc[t >>> CHUNK_SHIFT]![e] ?? 0;
    this.lastFlags = f;
    if ((f & PRESENT) !== 0) {
      this.lastLevel = 1;
      return slot[e] ?? 0;
    }
    if (f !== 0) {
      // An MMIO SPTE: the only non-present, non-empty entry.
      this.lastLevel = 1;
      this.lastMmioGeneration = slot[e] ?? 0;
      return -1;
    }
    this.lastLevel = 0;
    return -1;
  }

  private miss(): number {
    this.lastLevel = 0;
    this.lastFlags = 0;
    return -1;
  }

  /**
   * Install a leaf for the level-aligned gfn block containing gfn (`tdp_mmu_map` +
   * `make_spte`). `pfn` is the block's base pfn (for a 2 MiB leaf, the pfn of its first 4 KiB
   * page; the host guarantees the block is contiguous). `flags` may hold WRITABLE,
   * HOST_WRITABLE, ACCESSED, DIRTY (PRESENT is implied, LARGE is set here); WRITABLE without
   * HOST_WRITABLE breaks KVM's writable invariant (`check_spte_writable_invariants`) and fails.
   *
   * Replaces whatever is there, reporting each present leaf removed to `onZap`: a huge leaf over
   * smaller mappings zaps them and frees their tables; a smaller leaf inside a huge leaf zaps the
   * huge leaf first (the fault path zaps, it does not split); a leaf of another pfn is zapped.
   * A leaf of the same level and pfn is not zapped but updated in place to `flags`, keeping
   * ACCESSED and DIRTY (clear those with `setLeafFlags`); re-installing an identical SPTE is a
   * no-op (a spurious fault).
   */
  map(gfn: number, level: 1 | 2 | 3, pfn: number, flags: number, onZap?: ZapCallback): void {
    // Messages are built only on failure: map runs once per fault.
    if (this.walking) bad(REENTRY);
    this.checkGfn(gfn, 'map');
    if (level !== 1 && level !== 2 && level !== 3) bad(`TdpMmu.map: level ${level} is not 1, 2 or 3`);
    const span = entrySpan(level);
    if (!(Number.isInteger(pfn) && pfn >= 0 && pfn + span - 1 <= INT32_MAX)) {
      bad(`TdpMmu.map: pfn ${pfn} of a level-${level} leaf does not fit below 2^31`);
    }
    if ((flags & ~(LEAF_FLAGS_MASK | PRESENT)) !== 0) {
      bad(`TdpMmu.map: flags 0x${flags.toString(16)} hold bits a caller may not set`);
    }
    if ((flags & WRITABLE) !== 0 && (flags & HOST_WRITABLE) === 0) {
      bad(`TdpMmu.map: gfn 0x${gfn.toString(16)} would be WRITABLE without HOST_WRITABLE`);
    }
    // A 4 KiB leaf's block is gfn itself: no `%` (a floating-point remainder once gfn is not
    // known to be a small integer, which a fault's Math.floor(gpa / 4096) is not).
    const base = level === 1 ? gfn : gfn - (gfn % span);
    const leafFlags = (flags & LEAF_FLAGS_MASK) | PRESENT | (level > 1 ? LARGE : 0);
    this.walking = onZap !== undefined;
    try {
      const e = this.descend(base, level, onZap);
      const t = e >>> 9;
      const f = this.flagAt(e);
      if (f !== 0) {
        if ((f & PRESENT) !== 0 && (level === 1 || (f & LARGE) !== 0) && this.slotAt(e) === pfn) {
          // The same leaf with new permissions: changed in place, as KVM does (no zap, so the
          // pfn stays mapped throughout); ACCESSED and DIRTY are kept so none is lost.
          const nf = leafFlags | (f & (ACCESSED | DIRTY));
          if ((f & ~nf) !== 0) this.touched = true;
          this.setFlagAt(e, nf);
          return;
        }
        this.clearTarget(t, e, level, base, onZap);
      }
      this.setEntry(t, e, pfn, leafFlags);
      if (level === 1) this.n4k++;
      else if (level === 2) this.n2m++;
      else this.n1g++;
    } finally {
      this.endCall();
    }
  }

  /**
   * Cache an MMIO SPTE for the 4 KiB gfn (`make_mmio_spte`), tagged with the memslot
   * `generation` (0..2^31-1) it was created under. Replaces whatever maps gfn, like `map` at
   * level 1 (a huge leaf covering gfn is zapped).
   */
  mapMmio(gfn: number, generation: number, onZap?: ZapCallback): void {
    if (this.walking) bad(REENTRY);
    this.checkGfn(gfn, 'mapMmio');
    if (!(Number.isInteger(generation) && generation >= 0 && generation <= INT32_MAX)) {
      bad(`TdpMmu.mapMmio: generation ${generation} is not an integer in 0..2^31-1`);
    }
    this.walking = onZap !== undefined;
    try {
      const e = this.descend(gfn, 1, onZap);
      const t = e >>> 9;
      const f = this.flagAt(e);
      if (f !== 0) {
        if (f === MMIO && this.slotAt(e) === generation) return;
        this.clearTarget(t, e, 1, gfn, onZap);
      }
      this.setEntry(t, e, generation, MMIO);
      this.nMmio++;
    } finally {
      this.endCall();
    }
  }

  /**
   * Zap every SPTE intersecting the gfn range [start, end) (`kvm_tdp_mmu_zap_leafs`): a huge
   * leaf partly inside goes whole; emptied tables are freed. `onZap` sees each present leaf just
   * before it goes (KVM transfers its dirty bit to the page there). Cached MMIO SPTEs in the
   * range are dropped too, silently. Returns the number of present leaves zapped.
   */
  zapRange(start: number, end: number, onZap?: ZapCallback): number {
    return this.zap(start, end, 1, onZap);
  }

  /** Zap everything (`kvm_tdp_mmu_zap_all`); afterwards no tables remain. Returns the leaves zapped. */
  zapAll(onZap?: ZapCallback): number {
    return this.zap(0, this.gfnLimit, 1, onZap);
  }

  /**
   * Zap the huge (2 MiB and 1 GiB) leaves intersecting [start, end), so the range refaults at
   * 4 KiB — what enabling dirty logging on a slot needs (HP-5). 4 KiB leaves and MMIO SPTEs stay.
   * Returns the number zapped.
   */
  zapHugeRange(start: number, end: number, onZap?: ZapCallback): number {
    return this.zap(start, end, 2, onZap);
  }

  /**
   * Clear WRITABLE on every present leaf intersecting [start, end) (`kvm_tdp_mmu_wrprot_slot`,
   * for dirty logging); HOST_WRITABLE stays so a write fault can restore it. A huge leaf partly
   * inside is protected whole. Returns the number of leaves changed.
   */
  writeProtectRange(start: number, end: number): number {
    if (this.walking) bad(REENTRY);
    const lo = Math.max(0, start);
    const hi = Math.min(this.gfnLimit, end);
    if (this.root === ZERO_TABLE || !(lo < hi)) return 0;
    try {
      return this.wrprotTable(this.root, this.rootLevel, 0, lo, hi);
    } finally {
      this.endCall();
    }
  }

  /**
   * Set then clear flag bits (WRITABLE, HOST_WRITABLE, ACCESSED, DIRTY only) on the present leaf
   * containing gfn — the fast page fault's in-place fix-up. Returns false if no present leaf
   * covers gfn. Clearing a bit that was set restricts the mapping and moves `generation`.
   */
  setLeafFlags(gfn: number, set: number, clear: number): boolean {
    if (this.walking) bad(REENTRY);
    if (((set | clear) & ~LEAF_FLAGS_MASK) !== 0) {
      bad(
        `TdpMmu.setLeafFlags: set 0x${set.toString(16)} / clear 0x${clear.toString(16)} touch structural bits`,
      );
    }
    const e = this.findLeaf(gfn);
    if (e < 0) return false;
    const f = this.flagAt(e);
    const nf = (f | set) & ~clear;
    if (nf === f) return true;
    if ((nf & WRITABLE) !== 0 && (nf & HOST_WRITABLE) === 0) {
      bad(`TdpMmu.setLeafFlags: gfn 0x${gfn.toString(16)} would be WRITABLE without HOST_WRITABLE`);
    }
    this.setFlagAt(e, nf);
    if ((f & ~nf) !== 0) this.gen++;
    return true;
  }

  /**
   * Call cb for each present leaf intersecting [start, end), in gfn order, with the leaf's first
   * gfn (which may lie before `start` for a huge leaf), level, base pfn and flags. Empty subtrees
   * are skipped; MMIO SPTEs are not visited. cb may read (`lookup`) but not modify the tables.
   */
  forEachLeaf(start: number, end: number, cb: LeafCallback): void {
    const lo = Math.max(0, start);
    const hi = Math.min(this.gfnLimit, end);
    if (this.root === ZERO_TABLE || !(lo < hi)) return;
    const wasWalking = this.walking;
    this.walking = true;
    try {
      this.walkTable(this.root, this.rootLevel, 0, lo, hi, cb);
    } finally {
      this.walking = wasWalking;
    }
  }

  /** What is mapped and what it costs. */
  stats(): TdpMmuStats {
    return {
      leaves4k: this.n4k,
      leaves2m: this.n2m,
      leaves1g: this.n1g,
      mmio: this.nMmio,
      tables: this.nTables,
      // Every chunk holds 16 tables of 512 × (4 + 1) bytes, plus 2 + 1 bytes per table.
      bytes: this.capacity * (ENT * 5 + 3),
      zapped: this.nZapped,
    };
  }

  /**
   * Check the structure against its invariants (for tests and fuzzing; O(tables)): per-table
   * counts, table levels, no empty table left allocated, LARGE only on level-2/3 leaves, MMIO only
   * at level 1, WRITABLE ⇒ HOST_WRITABLE, the free list, and the counters behind `stats`.
   * Fails through `assertInvariant`.
   */
  audit(): void {
    const seen = { tables: 0, l1: 0, l2: 0, l3: 0, mmio: 0 };
    if (this.root !== ZERO_TABLE) this.auditTable(this.root, this.rootLevel, seen);
    let free = 0;
    for (let t = this.freeHead; t >= 0; t = this.slotAt(t << 9)) {
      assertInvariant(this.levelOf(t) === 0, `TdpMmu.audit: free table ${t} has a level`);
      assertInvariant(++free <= this.highWater, 'TdpMmu.audit: the free list is cyclic');
    }
    const want = `tables ${seen.tables} 4k ${seen.l1} 2m ${seen.l2} 1g ${seen.l3} mmio ${seen.mmio}`;
    const have = `tables ${this.nTables} 4k ${this.n4k} 2m ${this.n2m} 1g ${this.n1g} mmio ${this.nMmio}`;
    assertInvariant(want === have, `TdpMmu.audit: counters say ${have}, the tables hold ${want}`);
    assertInvariant(
      free + this.nTables + 1 === this.highWater,
      `TdpMmu.audit: ${free} free + ${this.nTables} live + the zero table != ${this.highWater} handed out`,
    );
  }

  // --- internals -------------------------------------------------------------------------

  private checkGfn(gfn: number, call: string): void {
    if (!(Number.isInteger(gfn) && gfn >= 0 && gfn < this.gfnLimit)) {
      bad(`TdpMmu.${call}: gfn ${gfn} is not an integer in 0..2^${Math.log2(this.gfnLimit)}-1`);
    }
  }

  /** Close a mutating call: one generation bump if anything was removed or restricted. */
  private endCall(): void {
    this.walking = false;
    if (this.touched) {
      this.touched = false;
      this.gen++;
    }
  }

  /**
   * Walk from the root to the level-`level` entry for gfn, creating tables on the way and
   * zapping a huge leaf found above `level`. Returns the entry's index in the pool.
   */
  private descend(gfn: number, level: number, onZap: ZapCallback | undefined): number {
    if (this.root === ZERO_TABLE) this.root = this.allocTable(this.rootLevel);
    // The indices come from the hi/lo split with shifts, as in `lookup` (map runs once per fault).
    const hi = Math.floor(gfn / LO_SPAN);
    const lo = gfn - hi * LO_SPAN;
    let t = this.root;
    for (let l = this.rootLevel; l > level; l--) {
      const e = (t << 9) | splitIndex(hi, lo, l);
      const f = this.flagAt(e);
      if (f !== 0 && (f & LARGE) === 0) {
        t = this.slotAt(e);
        continue;
      }
      if (f !== 0) {
        const span = entrySpan(l);
        this.removeLeaf(t, e, l, gfn - (gfn % span), onZap);
      }
      const child = this.allocTable(l - 1);
      this.setEntry(t, e, child, PRESENT);
      t = child;
    }
    return (t << 9) | splitIndex(hi, lo, level);
  }

  /** Empty the non-empty entry e (of table t, at `level`, first gfn `base`) before an install. */
  private clearTarget(
    t: number,
    e: number,
    level: number,
    base: number,
    onZap: ZapCallback | undefined,
  ): void {
    const f = this.flagAt(e);
    if ((f & PRESENT) === 0) {
      this.clearEntry(t, e);
      this.nMmio--;
      this.touched = true;
    } else if (level === 1 || (f & LARGE) !== 0) {
      this.removeLeaf(t, e, level, base, onZap);
    } else {
      // A table under the new huge leaf: zap its whole subtree (`handle_removed_pt`).
      const child = this.slotAt(e);
      this.zapTable(child, level - 1, base, base, base + entrySpan(level), 1, onZap);
      this.freeTable(child);
      this.clearEntry(t, e);
    }
  }

  /**
   * Zap in table t (at `level`, covering gfns from `base`) the SPTEs intersecting [start, end):
   * leaves at level ≥ minLevel, and MMIO SPTEs when minLevel is 1. Frees child tables it empties
   * (the caller frees t itself). Returns the present leaves zapped.
   */
  private zapTable(
    t: number,
    level: number,
    base: number,
    start: number,
    end: number,
    minLevel: number,
    onZap: ZapCallback | undefined,
  ): number {
    const span = entrySpan(level);
    const i0 = start > base ? Math.floor((start - base) / span) : 0;
    const i1 = Math.min(ENT, Math.ceil((end - base) / span));
    const flags = this.flagChunks[t >>> CHUNK_SHIFT]!; // t is live: its chunk exists
    let n = 0;
    for (let i = i0; i < i1; i++) {
      const e = (t << 9) | i;
      const f = flags[i | ((t & CHUNK_MASK) << 9)] ?? 0;
      if (f === 0) continue;
      if ((f & PRESENT) === 0) {
        // MMIO SPTE (level 1 only).
        if (minLevel === 1) {
          this.clearEntry(t, e);
          this.nMmio--;
          this.touched = true;
        }
      } else if (level === 1 || (f & LARGE) !== 0) {
        // A leaf: level ≥ minLevel, since tables below minLevel are not entered.
        this.removeLeaf(t, e, level, base + i * span, onZap);
        n++;
      } else if (level - 1 >= minLevel) {
        const child = this.slotAt(e);
        n += this.zapTable(child, level - 1, base + i * span, start, end, minLevel, onZap);
        if (this.countOf(child) === 0) {
          this.freeTable(child);
          this.clearEntry(t, e);
        }
      }
    }
    return n;
  }

  private zap(start: number, end: number, minLevel: number, onZap: ZapCallback | undefined): number {
    if (this.walking) bad(REENTRY);
    const lo = Math.max(0, start);
    const hi = Math.min(this.gfnLimit, end);
    if (this.root === ZERO_TABLE || !(lo < hi)) return 0;
    this.walking = onZap !== undefined;
    try {
      const n = this.zapTable(this.root, this.rootLevel, 0, lo, hi, minLevel, onZap);
      if (this.countOf(this.root) === 0) {
        const root = this.root;
        this.root = ZERO_TABLE;
        this.freeTable(root);
      }
      return n;
    } finally {
      this.endCall();
    }
  }

  /** Remove the present leaf at entry e, telling onZap first. */
  private removeLeaf(t: number, e: number, level: number, gfn: number, onZap: ZapCallback | undefined): void {
    if (onZap !== undefined) onZap(gfn, level, this.slotAt(e), this.flagAt(e));
    this.clearEntry(t, e);
    if (level === 1) this.n4k--;
    else if (level === 2) this.n2m--;
    else this.n1g--;
    this.nZapped++;
    this.touched = true;
  }

  private wrprotTable(t: number, level: number, base: number, start: number, end: number): number {
    const span = entrySpan(level);
    const i0 = start > base ? Math.floor((start - base) / span) : 0;
    const i1 = Math.min(ENT, Math.ceil((end - base) / span));
    const flags = this.flagChunks[t >>> CHUNK_SHIFT]!; // t is live: its chunk exists
    const slot = this.slotChunks[t >>> CHUNK_SHIFT]!;
    const t0 = (t & CHUNK_MASK) << 9;
    let n = 0;
    for (let i = i0; i < i1; i++) {
      const e = t0 | i;
      const f = flags[e] ?? 0;
      if ((f & PRESENT) === 0) continue;
      if (level === 1 || (f & LARGE) !== 0) {
        if ((f & WRITABLE) !== 0) {
          flags[e] = f & ~WRITABLE;
          n++;
          this.touched = true;
        }
      } else {
        n += this.wrprotTable(slot[e] ?? 0, level - 1, base + i * span, start, end);
      }
    }
    return n;
  }

  private walkTable(
    t: number,
    level: number,
    base: number,
    start: number,
    end: number,
    cb: LeafCallback,
  ): void {
    const span = entrySpan(level);
    const i0 = start > base ? Math.floor((start - base) / span) : 0;
    const i1 = Math.min(ENT, Math.ceil((end - base) / span));
    const flags = this.flagChunks[t >>> CHUNK_SHIFT]!; // t is live: its chunk exists
    const slot = this.slotChunks[t >>> CHUNK_SHIFT]!;
    const t0 = (t & CHUNK_MASK) << 9;
    for (let i = i0; i < i1; i++) {
      const f = flags[t0 | i] ?? 0;
      if ((f & PRESENT) === 0) continue;
      if (level === 1 || (f & LARGE) !== 0) {
        cb(base + i * span, level, slot[t0 | i] ?? 0, f);
      } else {
        this.walkTable(slot[t0 | i] ?? 0, level - 1, base + i * span, start, end, cb);
      }
    }
  }

  /** Pool index of the present leaf covering gfn, or -1. */
  private findLeaf(gfn: number): number {
    if (this.root === ZERO_TABLE || !(Number.isInteger(gfn) && gfn >= 0 && gfn < this.gfnLimit)) return -1;
    let t = this.root;
    for (let l: number = this.rootLevel; l >= 1; l--) {
      const e = (t << 9) | indexAt(gfn, l);
      const f = this.flagAt(e);
      if ((f & PRESENT) === 0) return -1;
      if (l === 1 || (f & LARGE) !== 0) return e;
      t = this.slotAt(e);
    }
    return -1;
  }

  private auditTable(
    t: number,
    level: number,
    seen: { tables: number; l1: number; l2: number; l3: number; mmio: number },
  ): void {
    seen.tables++;
    assertInvariant(
      this.levelOf(t) === level,
      `TdpMmu.audit: table ${t} is level ${this.levelOf(t)}, reached at ${level}`,
    );
    let used = 0;
    for (let i = 0; i < ENT; i++) {
      const e = (t << 9) | i;
      const f = this.flagAt(e);
      if (f === 0) continue;
      used++;
      const where = `table ${t} (level ${level}) entry ${i}`;
      if ((f & PRESENT) === 0) {
        assertInvariant(
          f === MMIO && level === 1,
          `TdpMmu.audit: ${where}: non-present flags 0x${f.toString(16)}`,
        );
        seen.mmio++;
      } else if (level === 1 || (f & LARGE) !== 0) {
        assertInvariant(
          level <= 3 && (f & MMIO) === 0,
          `TdpMmu.audit: ${where}: leaf flags 0x${f.toString(16)}`,
        );
        assertInvariant(level > 1 || (f & LARGE) === 0, `TdpMmu.audit: ${where}: LARGE on a 4K leaf`);
        assertInvariant(
          (f & WRITABLE) === 0 || (f & HOST_WRITABLE) !== 0,
          `TdpMmu.audit: ${where}: WRITABLE without HOST_WRITABLE`,
        );
        if (level === 1) seen.l1++;
        else if (level === 2) seen.l2++;
        else seen.l3++;
      } else {
        assertInvariant(f === PRESENT, `TdpMmu.audit: ${where}: table pointer flags 0x${f.toString(16)}`);
        this.auditTable(this.slotAt(e), level - 1, seen);
      }
    }
    assertInvariant(used > 0, `TdpMmu.audit: table ${t} (level ${level}) is empty but allocated`);
    assertInvariant(
      this.countOf(t) === used,
      `TdpMmu.audit: table ${t} counts ${this.countOf(t)} entries, holds ${used}`,
    );
  }

  // Entry and table accessors, written out without calls between them (they run once per map
  // and per zapped leaf). The first chunk is read through its own fields, with no chunk-array
  // load, as the whole pool was before it was segmented; an entry e in it is its own index there.

  /** Flags of pool entry e = (t << 9) | index. */
  private flagAt(e: number): number {
    if (e < CHUNK_ENTRIES) return this.flags0[e] ?? 0;
    return this.flagChunks[e >>> ENTRY_SHIFT]![e & ENTRY_MASK] ?? 0; // e is in the pool: its chunk exists
  }

  /** Slot of pool entry e = (t << 9) | index. */
  private slotAt(e: number): number {
    if (e < CHUNK_ENTRIES) return this.slot0[e] ?? 0;
    return this.slotChunks[e >>> ENTRY_SHIFT]![e & ENTRY_MASK] ?? 0; // e is in the pool: its chunk exists
  }

  private setFlagAt(e: number, f: number): void {
    if (e < CHUNK_ENTRIES) this.flags0[e] = f;
    else this.flagChunks[e >>> ENTRY_SHIFT]![e & ENTRY_MASK] = f; // e is in the pool: its chunk exists
  }

  private setSlotAt(e: number, value: number): void {
    if (e < CHUNK_ENTRIES) this.slot0[e] = value;
    else this.slotChunks[e >>> ENTRY_SHIFT]![e & ENTRY_MASK] = value; // e is in the pool: its chunk exists
  }

  /** The count array of table t's chunk. */
  private countsOf(t: number): Uint16Array {
    return t < CHUNK_TABLES ? this.count0 : this.countChunks[t >>> CHUNK_SHIFT]!; // t is in the pool: its chunk exists
  }

  /** Non-empty entries of table t. */
  private countOf(t: number): number {
    return this.countsOf(t)[t & CHUNK_MASK] ?? 0;
  }

  /** Level of table t, 0 while it is free. */
  private levelOf(t: number): number {
    if (t < CHUNK_TABLES) return this.level0[t] ?? 0;
    return this.levelChunks[t >>> CHUNK_SHIFT]![t & CHUNK_MASK] ?? 0; // t is in the pool: its chunk exists
  }

  private setLevel(t: number, level: number): void {
    if (t < CHUNK_TABLES) this.level0[t] = level;
    else this.levelChunks[t >>> CHUNK_SHIFT]![t & CHUNK_MASK] = level; // t is in the pool: its chunk exists
  }

  private setEntry(t: number, e: number, value: number, f: number): void {
    const first = e < CHUNK_ENTRIES;
    const flags = first ? this.flags0 : this.flagChunks[e >>> ENTRY_SHIFT]!; // e is in the pool: its chunk exists
    const slots = first ? this.slot0 : this.slotChunks[e >>> ENTRY_SHIFT]!; // same chunk
    const i = e & ENTRY_MASK;
    if (flags[i] === 0) {
      const counts = t < CHUNK_TABLES ? this.count0 : this.countChunks[t >>> CHUNK_SHIFT]!; // t's chunk exists
      const j = t & CHUNK_MASK;
      counts[j] = (counts[j] ?? 0) + 1;
    }
    flags[i] = f;
    slots[i] = value;
  }

  private clearEntry(t: number, e: number): void {
    const first = e < CHUNK_ENTRIES;
    const i = e & ENTRY_MASK;
    (first ? this.flags0 : this.flagChunks[e >>> ENTRY_SHIFT]!)[i] = 0; // e is in the pool: its chunk exists
    (first ? this.slot0 : this.slotChunks[e >>> ENTRY_SHIFT]!)[i] = 0; // same chunk
    const counts = t < CHUNK_TABLES ? this.count0 : this.countChunks[t >>> CHUNK_SHIFT]!; // t's chunk exists
    const j = t & CHUNK_MASK;
    counts[j] = (counts[j] ?? 0) - 1;
  }

  private allocTable(level: number): number {
    let t = this.freeHead;
    if (t >= 0) {
      this.freeHead = this.slotAt(t << 9);
      this.setSlotAt(t << 9, 0);
    } else {
      if (this.highWater === this.capacity) this.grow();
      t = this.highWater++;
    }
    this.setLevel(t, level);
    this.countsOf(t)[t & CHUNK_MASK] = 0;
    this.nTables++;
    return t;
  }

  /** Return an empty table to the free list; the last one resets the pool. */
  private freeTable(t: number): void {
    if (this.countOf(t) !== 0) bad(`TdpMmu: freeing table ${t} with ${this.countOf(t)} entries`);
    this.setLevel(t, 0);
    this.setSlotAt(t << 9, this.freeHead);
    this.freeHead = t;
    if (--this.nTables === 0) this.resetPool();
  }

  /**
   * Grow the pool: the first chunk by 1/8 (at least 16 tables) up to 1024 tables, copying it;
   * past that by a new chunk of 1024 tables, copying nothing.
   */
  private grow(): void {
    assertInvariant(this.capacity < MAX_TABLES, `TdpMmu: more than ${MAX_TABLES} tables`);
    if (this.capacity < CHUNK_TABLES) {
      const cap = Math.min(CHUNK_TABLES, this.capacity + Math.max(INITIAL_TABLES, this.capacity >>> 3));
      const slot = new Int32Array(cap * ENT);
      slot.set(this.slot0);
      const flags = new Uint8Array(cap * ENT);
      flags.set(this.flags0);
      const count = new Uint16Array(cap);
      count.set(this.count0);
      const level = new Uint8Array(cap);
      level.set(this.level0);
      this.setFirstChunk(slot, flags, count, level);
      this.capacity = cap;
      return;
    }
    this.slotChunks.push(new Int32Array(CHUNK_TABLES * ENT));
    this.flagChunks.push(new Uint8Array(CHUNK_TABLES * ENT));
    this.countChunks.push(new Uint16Array(CHUNK_TABLES));
    this.levelChunks.push(new Uint8Array(CHUNK_TABLES));
    this.capacity += CHUNK_TABLES;
  }

  private setFirstChunk(slot: Int32Array, flags: Uint8Array, count: Uint16Array, level: Uint8Array): void {
    this.slot0 = slot;
    this.flags0 = flags;
    this.count0 = count;
    this.level0 = level;
    this.slotChunks[0] = slot;
    this.flagChunks[0] = flags;
    this.countChunks[0] = count;
    this.levelChunks[0] = level;
  }

  /** No table is in use: forget the free list and give memory back beyond the initial size. */
  private resetPool(): void {
    this.freeHead = -1;
    this.highWater = 1;
    if (this.capacity > INITIAL_TABLES) {
      this.slotChunks.length = 1;
      this.flagChunks.length = 1;
      this.countChunks.length = 1;
      this.levelChunks.length = 1;
      this.setFirstChunk(
        new Int32Array(INITIAL_TABLES * ENT),
        new Uint8Array(INITIAL_TABLES * ENT),
        new Uint16Array(INITIAL_TABLES),
        new Uint8Array(INITIAL_TABLES),
      );
      this.capacity = INITIAL_TABLES;
    } else {
      // Free tables keep the free list in their first slot; everything else is already 0.
      this.slot0.fill(0);
    }
  }
}
