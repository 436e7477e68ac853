/**
 * TdpMmu against a naive reference: a Map from each mapping's first gfn to {level, pfn, flags},
 * where installing removes every mapping that intersects the new block. Table-driven cases pin
 * single behaviours (levels, huge over small, small inside huge, partial zaps, write protection,
 * walk order, table freeing, generation, gfns near 2^40); a fast-check property runs random
 * operation sequences through both and compares every observable after every step.
 */

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { InvariantError } from '../errno.js';
import {
  describeSpteFlags,
  isLastSpte,
  SPTE_ACCESSED,
  SPTE_DIRTY,
  SPTE_HOST_WRITABLE,
  SPTE_LARGE,
  SPTE_MMIO,
  SPTE_PRESENT,
  SPTE_WRITABLE,
} from './spte.js';
import { TdpMmu } from './tdp_mmu.js';

const P = SPTE_PRESENT;
const W = SPTE_WRITABLE;
const HW = SPTE_HOST_WRITABLE;
const A = SPTE_ACCESSED;
const D = SPTE_DIRTY;
const L = SPTE_LARGE;
const RW = W | HW;
const SPAN = { 1: 1, 2: 512, 3: 262_144 } as const;
const G40 = 2 ** 40;

type Level = 1 | 2 | 3;
/** One mapping as the reference holds it; level 0 is an MMIO SPTE (4 KiB). */
interface RefEntry {
  readonly base: number;
  readonly level: 0 | Level;
  readonly pfn: number;
  flags: number;
}
type Leaf = [gfn: number, level: number, pfn: number, flags: number];

const spanOf = (level: 0 | Level): number => (level === 0 ? 1 : SPAN[level]);

/** The obvious model: non-overlapping blocks in a Map. */
class RefMmu {
  readonly entries = new Map<number, RefEntry>();
  generation = 0;
  constructor(readonly rootLevel: 4 | 5) {}

  find(gfn: number): RefEntry | undefined {
    for (const level of [1, 2, 3] as const) {
      const e = this.entries.get(gfn - (gfn % SPAN[level]));
      if (e !== undefined && gfn < e.base + spanOf(e.level)) return e;
    }
    return undefined;
  }
  /** Remove the entries intersecting [start, end) that `pick` accepts; the present ones are returned. */
  remove(
    start: number,
    end: number,
    pick: (e: RefEntry) => boolean = () => true,
  ): { leaves: Leaf[]; any: boolean } {
    const leaves: Leaf[] = [];
    let any = false;
    if (!(start < end)) return { leaves, any };
    for (const e of [...this.entries.values()]) {
      if (e.base < end && start < e.base + spanOf(e.level) && pick(e)) {
        this.entries.delete(e.base);
        any = true;
        if (e.level !== 0) leaves.push([e.base, e.level, e.pfn, e.flags]);
      }
    }
    return { leaves, any };
  }
  install(e: RefEntry): Leaf[] {
    const old = this.entries.get(e.base);
    if (old !== undefined && old.level === e.level && old.pfn === e.pfn) {
      // Same leaf (or same MMIO generation): new flags in place, ACCESSED and DIRTY kept.
      const nf = e.flags | (old.flags & (A | D));
      if (old.flags & ~nf) this.generation++;
      old.flags = nf;
      return [];
    }
    const { leaves, any } = this.remove(e.base, e.base + spanOf(e.level));
    if (any) this.generation++;
    this.entries.set(e.base, e);
    return leaves;
  }
  map(gfn: number, level: Level, pfn: number, flags: number): Leaf[] {
    const base = gfn - (gfn % SPAN[level]);
    return this.install({ base, level, pfn, flags: flags | P | (level > 1 ? L : 0) });
  }
  mapMmio(gfn: number, gen: number): Leaf[] {
    return this.install({ base: gfn, level: 0, pfn: gen, flags: SPTE_MMIO });
  }
  zap(start: number, end: number, hugeOnly: boolean): Leaf[] {
    const { leaves, any } = this.remove(start, end, (e) => !hugeOnly || e.level >= 2);
    if (any) this.generation++;
    return leaves;
  }
  writeProtect(start: number, end: number): number {
    let n = 0;
    if (!(start < end)) return 0;
    for (const e of this.entries.values()) {
      if (e.level !== 0 && e.base < end && start < e.base + spanOf(e.level) && e.flags & W) {
        e.flags &= ~W;
        n++;
      }
    }
    if (n > 0) this.generation++;
    return n;
  }
  setLeafFlags(gfn: number, set: number, clear: number): boolean {
    const e = this.find(gfn);
    if (e === undefined || e.level === 0) return false;
    const nf = (e.flags | set) & ~clear;
    if (e.flags & ~nf) this.generation++;
    e.flags = nf;
    return true;
  }
  lookup(gfn: number): { pfn: number; level: number; flags: number } {
    const e = this.find(gfn);
    if (e === undefined) return { pfn: -1, level: 0, flags: 0 };
    if (e.level === 0) return { pfn: -1, level: 1, flags: SPTE_MMIO };
    return { pfn: e.pfn + (gfn - e.base), level: e.level, flags: e.flags };
  }
  leaves(): Leaf[] {
    return [...this.entries.values()]
      .filter((e) => e.level !== 0)
      .sort((a, b) => a.base - b.base)
      .map((e): Leaf => [e.base, e.level, e.pfn, e.flags]);
  }
  /** Tables a radix tree that frees empty tables must hold: every ancestor of every entry. */
  tables(): number {
    const ids = new Set<string>();
    for (const e of this.entries.values()) {
      for (let k = Math.max(1, e.level); k <= this.rootLevel; k++)
        ids.add(`${k}:${Math.floor(e.base / 512 ** k)}`);
    }
    return ids.size;
  }
  stats(): { leaves4k: number; leaves2m: number; leaves1g: number; mmio: number; tables: number } {
    const n = [0, 0, 0, 0];
    for (const e of this.entries.values()) n[e.level] = (n[e.level] ?? 0) + 1;
    return {
      leaves4k: n[1] ?? 0,
      leaves2m: n[2] ?? 0,
      leaves1g: n[3] ?? 0,
      mmio: n[0] ?? 0,
      tables: this.tables(),
    };
  }
}

function collect(mmu: TdpMmu, start = 0, end = mmu.gfnLimit): Leaf[] {
  const out: Leaf[] = [];
  mmu.forEachLeaf(start, end, (gfn, level, pfn, flags) => out.push([gfn, level, pfn, flags]));
  return out;
}

function counts(mmu: TdpMmu): {
  leaves4k: number;
  leaves2m: number;
  leaves1g: number;
  mmio: number;
  tables: number;
} {
  const { leaves4k, leaves2m, leaves1g, mmio, tables } = mmu.stats();
  return { leaves4k, leaves2m, leaves1g, mmio, tables };
}

const byGfn = (a: Leaf, b: Leaf): number => a[0] - b[0];

describe('spte.ts', () => {
  it.each([
    [0, 1, false],
    [P, 1, true],
    [P, 2, false],
    [P | L, 2, true],
    [P | L, 3, true],
    [SPTE_MMIO, 1, false],
  ])('isLastSpte(%i, level %i) is %s', (flags, level, want) => {
    expect(isLastSpte(flags, level)).toBe(want);
  });

  it('describes flag bytes for traces', () => {
    expect(describeSpteFlags(0)).toBe('-');
    expect(describeSpteFlags(P | W | HW | A | D)).toBe('P W HW A D');
    expect(describeSpteFlags(P | L)).toBe('P L');
    expect(describeSpteFlags(SPTE_MMIO)).toBe('MMIO');
  });

  it('the SPTE bits are distinct single bits in one byte', () => {
    const bits = [P, W, HW, A, D, SPTE_MMIO, L];
    expect(bits.reduce((a, b) => a | b, 0)).toBe(0x7f);
    for (const b of bits) expect(b & (b - 1)).toBe(0);
  });
});

describe('TdpMmu: map and lookup', () => {
  it.each([
    { level: 1, gfn: 0x12345, base: 0x12345, pfn: 7 },
    { level: 2, gfn: 0x12345, base: 0x12200, pfn: 0x4000 },
    { level: 3, gfn: 0x12345, base: 0, pfn: 0x100000 },
    { level: 3, gfn: 0x3_c123_4567, base: 0x3_c120_0000, pfn: 0x40000 },
  ] as const)(
    'a level-$level leaf at gfn $gfn maps its aligned block and nothing else',
    ({ level, gfn, base, pfn }) => {
      const mmu = new TdpMmu();
      mmu.map(gfn, level, pfn, RW | A);
      const span = SPAN[level];
      const flags = RW | A | P | (level > 1 ? L : 0);
      for (const off of [0, 1, span >> 1, span - 1]) {
        if (off >= span) continue;
        expect(mmu.lookup(base + off), `gfn base+${off}`).toBe(pfn + off);
        expect(mmu.lastLevel).toBe(level);
        expect(mmu.lastFlags).toBe(flags);
      }
      for (const outside of [base - 1, base + span]) {
        if (outside < 0) continue;
        expect(mmu.lookup(outside), `gfn ${outside} outside the block`).toBe(-1);
        expect(mmu.lastLevel).toBe(0);
        expect(mmu.lastFlags).toBe(0);
      }
      expect(collect(mmu)).toEqual([[base, level, pfn, flags]]);
      mmu.audit();
    },
  );

  it('an empty MMU misses everywhere, including out of range and at -1', () => {
    const mmu = new TdpMmu();
    for (const gfn of [0, 1, G40 - 1, G40, -1]) expect(mmu.lookup(gfn)).toBe(-1);
    mmu.map(0, 1, 1, 0);
    expect(mmu.lookup(-1)).toBe(-1);
    expect(mmu.lookup(G40)).toBe(-1);
  });

  it('re-mapping the same pfn changes flags in place: no zap, A/D kept, generation only if restricted', () => {
    const mmu = new TdpMmu();
    mmu.map(512, 2, 0x1000, RW | A | D);
    mmu.writeProtectRange(512, 513);
    const g = mmu.generation;
    const zapped: Leaf[] = [];
    mmu.map(700, 2, 0x1000, RW, (...l) => zapped.push(l)); // the fault after write protection
    expect(zapped).toEqual([]);
    expect(mmu.generation).toBe(g);
    expect(mmu.lookup(512)).toBe(0x1000);
    expect(mmu.lastFlags).toBe(P | L | RW | A | D);
    mmu.map(512, 2, 0x1000, HW, (...l) => zapped.push(l)); // fewer permissions: restricts
    expect(zapped).toEqual([]);
    expect(mmu.generation).toBe(g + 1);
    expect(mmu.lookup(1000)).toBe(0x1000 + 488);
    expect(mmu.lastFlags).toBe(P | L | HW | A | D);
    expect(mmu.stats().zapped).toBe(0);
  });

  it('re-installing an identical leaf is a no-op; a different pfn replaces it and reports the old one', () => {
    const mmu = new TdpMmu();
    mmu.map(100, 1, 5, RW);
    const g = mmu.generation;
    const zapped: Leaf[] = [];
    mmu.map(100, 1, 5, RW, (...l) => zapped.push(l));
    expect(zapped).toEqual([]);
    expect(mmu.generation).toBe(g);
    mmu.map(100, 1, 6, RW, (...l) => zapped.push(l));
    expect(zapped).toEqual([[100, 1, 5, RW | P]]);
    expect(mmu.generation).toBe(g + 1);
    expect(mmu.lookup(100)).toBe(6);
    expect(mmu.stats().zapped).toBe(1);
  });

  it('HP-1: a huge leaf over smaller mappings zaps them and frees their tables', () => {
    const mmu = new TdpMmu();
    mmu.map(1024 + 3, 1, 10, RW | D);
    mmu.map(1024 + 500, 1, 11, RW);
    mmu.mapMmio(1024 + 7, 1);
    const before = mmu.stats();
    expect(before.tables).toBe(5); // L5, L4, L3, L2, L1
    const zapped: Leaf[] = [];
    const g = mmu.generation;
    mmu.map(1024, 2, 0x2000, RW, (...l) => zapped.push(l));
    expect(zapped).toEqual([
      [1027, 1, 10, RW | D | P],
      [1524, 1, 11, RW | P],
    ]);
    expect(mmu.generation).toBe(g + 1);
    expect(counts(mmu)).toEqual({ leaves4k: 0, leaves2m: 1, leaves1g: 0, mmio: 0, tables: 4 });
    expect(mmu.lookup(1024 + 7)).toBe(0x2007);
    expect(mmu.lastFlags & SPTE_MMIO).toBe(0);
    mmu.audit();
  });

  it('a 1G leaf over 2M and 4K mappings zaps the whole subtree', () => {
    const mmu = new TdpMmu();
    mmu.map(262_144 + 512, 2, 0x10000, RW);
    mmu.map(262_144 + 2048 + 1, 1, 9, RW);
    mmu.map(262_144 * 2, 1, 9, RW); // the next 1G block: stays
    const zapped: Leaf[] = [];
    mmu.map(262_144 + 99, 3, 0x80000, RW, (...l) => zapped.push(l));
    expect(zapped.sort(byGfn)).toEqual([
      [262_144 + 512, 2, 0x10000, RW | P | L],
      [262_144 + 2049, 1, 9, RW | P],
    ]);
    expect(counts(mmu)).toEqual({ leaves4k: 1, leaves2m: 0, leaves1g: 1, mmio: 0, tables: 5 });
    expect(mmu.lookup(262_144 * 2)).toBe(9);
    mmu.audit();
  });

  it('HP-4: a small leaf inside a huge leaf zaps the huge leaf first (no split): the rest of the block misses', () => {
    const mmu = new TdpMmu();
    mmu.map(2048, 2, 0x3000, RW | D);
    const zapped: Leaf[] = [];
    mmu.map(2048 + 17, 1, 77, RW, (...l) => zapped.push(l));
    expect(zapped).toEqual([[2048, 2, 0x3000, RW | D | P | L]]);
    expect(mmu.lookup(2048 + 17)).toBe(77);
    expect(mmu.lookup(2048 + 16)).toBe(-1);
    expect(mmu.lookup(2048)).toBe(-1);
    expect(counts(mmu)).toEqual({ leaves4k: 1, leaves2m: 0, leaves1g: 0, mmio: 0, tables: 5 });
    mmu.audit();
  });

  it('a 2M leaf inside a 1G leaf zaps the 1G leaf', () => {
    const mmu = new TdpMmu();
    mmu.map(0, 3, 0x40000, RW);
    const zapped: Leaf[] = [];
    mmu.map(512 * 3, 2, 0x1000, RW, (...l) => zapped.push(l));
    expect(zapped).toEqual([[0, 3, 0x40000, RW | P | L]]);
    expect(mmu.lookup(512 * 3 + 5)).toBe(0x1005);
    expect(mmu.lastLevel).toBe(2);
    expect(mmu.lookup(0)).toBe(-1);
  });

  it.each([
    ['WRITABLE without HOST_WRITABLE', () => new TdpMmu().map(0, 1, 1, W)],
    ['LARGE from the caller', () => new TdpMmu().map(0, 2, 0, L)],
    ['MMIO from the caller', () => new TdpMmu().map(0, 1, 1, SPTE_MMIO)],
    ['a pfn at 2^31', () => new TdpMmu().map(0, 1, 2 ** 31, 0)],
    ['a 2M leaf whose last pfn passes 2^31', () => new TdpMmu().map(0, 2, 2 ** 31 - 511, 0)],
    ['a negative pfn', () => new TdpMmu().map(0, 1, -1, 0)],
    ['gfn 2^40', () => new TdpMmu().map(G40, 1, 0, 0)],
    ['gfn 2^36 with MAXPHYADDR 48', () => new TdpMmu({ maxPhyAddr: 48 }).map(2 ** 36, 1, 0, 0)],
    ['a fractional gfn', () => new TdpMmu().map(1.5, 1, 0, 0)],
    ['level 4', () => new TdpMmu().map(0, 4 as 1, 0, 0)],
    ['an MMIO generation of -1', () => new TdpMmu().mapMmio(0, -1)],
    ['MAXPHYADDR 53', () => new TdpMmu({ maxPhyAddr: 53 })],
  ])('rejects %s', (_what, call) => {
    expect(call).toThrow(InvariantError);
  });
});

describe('TdpMmu: MMIO SPTEs', () => {
  it('RO-2: an MMIO SPTE misses with lastFlags MMIO and its generation (MR-20); map replaces it', () => {
    const mmu = new TdpMmu();
    mmu.mapMmio(0xfee00, 42);
    expect(mmu.lookup(0xfee00)).toBe(-1);
    expect(mmu.lastFlags).toBe(SPTE_MMIO);
    expect(mmu.lastLevel).toBe(1);
    expect(mmu.lastMmioGeneration).toBe(42);
    expect(mmu.lookup(0xfee01)).toBe(-1);
    expect(mmu.lastFlags).toBe(0);
    expect(collect(mmu)).toEqual([]);
    const g = mmu.generation;
    mmu.mapMmio(0xfee00, 42);
    expect(mmu.generation).toBe(g);
    mmu.mapMmio(0xfee00, 43);
    expect(mmu.generation).toBe(g + 1);
    mmu.lookup(0xfee00);
    expect(mmu.lastMmioGeneration).toBe(43);
    const zapped: Leaf[] = [];
    mmu.map(0xfee00, 1, 5, 0, (...l) => zapped.push(l));
    expect(zapped).toEqual([]);
    expect(mmu.lookup(0xfee00)).toBe(5);
    expect(counts(mmu)).toMatchObject({ leaves4k: 1, mmio: 0 });
  });

  it('mapMmio inside a huge leaf zaps the huge leaf', () => {
    const mmu = new TdpMmu();
    mmu.map(0, 2, 100, 0);
    const zapped: Leaf[] = [];
    mmu.mapMmio(3, 1, (...l) => zapped.push(l));
    expect(zapped).toEqual([[0, 2, 100, P | L]]);
    expect(counts(mmu)).toEqual({ leaves4k: 0, leaves2m: 0, leaves1g: 0, mmio: 1, tables: 5 });
  });

  it('zapRange drops MMIO SPTEs without counting them; zapHugeRange keeps them', () => {
    const mmu = new TdpMmu();
    mmu.mapMmio(10, 1);
    mmu.map(11, 1, 1, 0);
    expect(mmu.zapHugeRange(0, 512)).toBe(0);
    expect(mmu.stats().mmio).toBe(1);
    const g = mmu.generation;
    expect(mmu.zapRange(10, 11)).toBe(0);
    expect(mmu.generation).toBe(g + 1);
    expect(counts(mmu)).toMatchObject({ leaves4k: 1, mmio: 0 });
  });
});

describe('TdpMmu: zapping', () => {
  it.each([
    { name: 'a range inside a 2M leaf', leaf: [512, 2] as const, range: [1000, 1001], n: 1 },
    { name: 'a range overlapping a 2M leaf from below', leaf: [512, 2] as const, range: [0, 513], n: 1 },
    { name: 'a range overlapping a 2M leaf from above', leaf: [512, 2] as const, range: [1023, 5000], n: 1 },
    { name: 'a range ending at a 2M leaf', leaf: [512, 2] as const, range: [0, 512], n: 0 },
    { name: 'a range starting after a 2M leaf', leaf: [512, 2] as const, range: [1024, 2048], n: 0 },
    { name: 'one page of a 1G leaf', leaf: [262_144, 3] as const, range: [400_000, 400_001], n: 1 },
    { name: 'an empty range', leaf: [512, 2] as const, range: [600, 600], n: 0 },
    { name: 'a reversed range', leaf: [512, 2] as const, range: [700, 600], n: 0 },
  ])('zapRange over $name zaps $n huge leaf whole', ({ leaf, range, n }) => {
    const mmu = new TdpMmu();
    const [gfn, level] = leaf;
    mmu.map(gfn, level, 0x10000, RW);
    const g = mmu.generation;
    const seen: Leaf[] = [];
    expect(mmu.zapRange(range[0] ?? 0, range[1] ?? 0, (...l) => seen.push(l))).toBe(n);
    expect(seen.length).toBe(n);
    expect(mmu.generation).toBe(g + n);
    expect(mmu.lookup(gfn) === -1).toBe(n === 1);
    expect(mmu.lookup(gfn + SPAN[level] - 1) === -1).toBe(n === 1);
    mmu.audit();
  });

  it('onZap sees each leaf before it goes: lookup still finds it from the callback', () => {
    const mmu = new TdpMmu();
    for (let i = 0; i < 8; i++) mmu.map(i * 3, 1, 100 + i, RW | D);
    const seen: number[] = [];
    mmu.zapRange(0, 24, (gfn, _level, pfn) => {
      expect(mmu.lookup(gfn)).toBe(pfn);
      seen.push(gfn);
    });
    expect(seen).toEqual([0, 3, 6, 9, 12, 15, 18, 21]);
  });

  it('callbacks may not modify the tables', () => {
    const mmu = new TdpMmu();
    mmu.map(0, 1, 1, RW);
    mmu.map(1, 1, 2, RW);
    expect(() => mmu.zapRange(0, 2, () => mmu.map(5, 1, 5, 0))).toThrow(InvariantError);
    expect(() => mmu.forEachLeaf(0, 2, () => mmu.writeProtectRange(0, 2))).toThrow(InvariantError);
    expect(() => mmu.forEachLeaf(0, 2, () => mmu.setLeafFlags(0, A, 0))).toThrow(InvariantError);
    // After the failed calls the MMU is usable and consistent.
    mmu.map(5, 1, 5, 0);
    mmu.audit();
  });

  it('HP-5: zapHugeRange zaps 2M and 1G leaves touching the range and leaves 4K leaves', () => {
    const mmu = new TdpMmu();
    mmu.map(0, 1, 1, RW);
    mmu.map(512, 2, 0x1000, RW);
    mmu.map(262_144, 3, 0x40000, RW);
    mmu.map(262_144 * 2 + 5, 1, 2, RW);
    const seen: Leaf[] = [];
    expect(mmu.zapHugeRange(0, 262_144 + 1, (...l) => seen.push(l))).toBe(2);
    expect(seen.map((l) => l[1])).toEqual([2, 3]);
    expect(counts(mmu)).toMatchObject({ leaves4k: 2, leaves2m: 0, leaves1g: 0 });
    expect(mmu.zapHugeRange(0, G40)).toBe(0);
    mmu.audit();
  });

  it('zapAll frees every table and gives the pool back', () => {
    const mmu = new TdpMmu();
    const empty = mmu.stats().bytes;
    for (let i = 0; i < 4096; i++) mmu.map(i * 512 + (i % 7), 1, i, RW);
    mmu.map(G40 - 1, 1, 3, 0);
    mmu.mapMmio(2 ** 30, 1);
    expect(mmu.stats().bytes).toBeGreaterThan(empty);
    const seen: Leaf[] = [];
    expect(mmu.zapAll((...l) => seen.push(l))).toBe(4097);
    expect(seen.length).toBe(4097);
    expect(mmu.stats()).toMatchObject({
      leaves4k: 0,
      leaves2m: 0,
      leaves1g: 0,
      mmio: 0,
      tables: 0,
      bytes: empty,
    });
    expect(mmu.lookup(0)).toBe(-1);
    mmu.audit();
    // And it is reusable.
    mmu.map(7, 1, 7, 0);
    expect(mmu.lookup(7)).toBe(7);
    mmu.audit();
  });

  it('tables emptied by a partial zap are freed, siblings kept', () => {
    const mmu = new TdpMmu();
    mmu.map(0, 1, 1, 0);
    mmu.map(512, 1, 2, 0);
    expect(mmu.stats().tables).toBe(6);
    mmu.zapRange(512, 1024);
    expect(mmu.stats().tables).toBe(5);
    expect(mmu.lookup(0)).toBe(1);
    mmu.audit();
  });
});

describe('TdpMmu: write protection and leaf flags', () => {
  it('DL-3: writeProtectRange clears WRITABLE, keeps HOST_WRITABLE, counts only changes', () => {
    const mmu = new TdpMmu();
    mmu.map(0, 1, 1, RW | D);
    mmu.map(1, 1, 2, HW); // already read-only
    mmu.map(512, 2, 0x1000, RW); // partly inside: protected whole
    mmu.map(2048, 1, 3, RW); // outside
    const g = mmu.generation;
    expect(mmu.writeProtectRange(0, 600)).toBe(2);
    expect(mmu.generation).toBe(g + 1);
    expect(mmu.lookup(0)).toBe(1);
    expect(mmu.lastFlags).toBe(HW | D | P);
    expect(mmu.lookup(1023)).toBe(0x1000 + 511);
    expect(mmu.lastFlags).toBe(HW | P | L);
    expect(mmu.lookup(2048)).toBe(3);
    expect(mmu.lastFlags & W).toBe(W);
    expect(mmu.writeProtectRange(0, 600)).toBe(0);
    expect(mmu.generation).toBe(g + 1);
  });

  it('setLeafFlags restores WRITABLE and sets DIRTY inside a huge leaf (the fast page fault)', () => {
    const mmu = new TdpMmu();
    mmu.map(512, 2, 0x1000, HW);
    const g = mmu.generation;
    expect(mmu.setLeafFlags(600, W | D | A, 0)).toBe(true);
    expect(mmu.generation).toBe(g);
    expect(mmu.lookup(512)).toBe(0x1000);
    expect(mmu.lastFlags).toBe(P | L | HW | W | D | A);
    expect(mmu.setLeafFlags(600, 0, D | A)).toBe(true);
    expect(mmu.generation).toBe(g + 1);
    expect(mmu.setLeafFlags(600, 0, D)).toBe(true);
    expect(mmu.generation).toBe(g + 1);
    expect(mmu.setLeafFlags(1024, W, 0)).toBe(false);
    mmu.mapMmio(5000, 1);
    expect(mmu.setLeafFlags(5000, A, 0)).toBe(false);
  });

  it.each([
    ['WRITABLE on a leaf without HOST_WRITABLE', 0, W, 0],
    ['setting PRESENT', HW, P, 0],
    ['clearing LARGE', HW, 0, L],
  ])('setLeafFlags rejects %s', (_what, flags, set, clear) => {
    const mmu = new TdpMmu();
    mmu.map(0, 2, 0, flags);
    expect(() => mmu.setLeafFlags(0, set, clear)).toThrow(InvariantError);
  });
});

describe('TdpMmu: forEachLeaf', () => {
  it('visits present leaves in gfn order across levels and the whole 2^40 space, skipping MMIO', () => {
    const mmu = new TdpMmu();
    const leaves: Leaf[] = [
      [G40 - 1, 1, 1, P],
      [G40 - 262_144 * 2, 3, 0x40000, P | L],
      [2 ** 36 + 512, 2, 0x2000, P | L],
      [5, 1, 2, P | A],
      [2 ** 27, 1, 3, P | RW],
      [1024, 2, 0x1000, P | L | RW | D],
    ];
    for (const [gfn, level, pfn, flags] of leaves) mmu.map(gfn, level as Level, pfn, flags & ~(P | L));
    mmu.mapMmio(6, 1);
    mmu.mapMmio(G40 - 2, 1);
    expect(collect(mmu)).toEqual([...leaves].sort(byGfn));
  });

  it('a subrange yields leaves intersecting it, a huge leaf by its first gfn', () => {
    const mmu = new TdpMmu();
    mmu.map(0, 1, 1, 0);
    mmu.map(512, 2, 0x1000, 0);
    mmu.map(1024, 1, 2, 0);
    mmu.map(1025, 1, 3, 0);
    expect(collect(mmu, 700, 1025)).toEqual([
      [512, 2, 0x1000, P | L],
      [1024, 1, 2, P],
    ]);
    expect(collect(mmu, 1, 512)).toEqual([]);
    expect(collect(mmu, 5, 5)).toEqual([]);
  });
});

describe('TdpMmu: gfns near 2^40 and the root level', () => {
  it('maps, finds and zaps the last 1G, 2M and 4K blocks below 2^40', () => {
    const mmu = new TdpMmu();
    expect(mmu.rootLevel).toBe(5);
    expect(mmu.gfnLimit).toBe(G40);
    mmu.map(G40 - 262_144 * 2 + 12345, 3, 0x40000, RW);
    mmu.map(G40 - 1024, 2, 0x10000, RW);
    mmu.map(G40 - 1, 1, 0x7fff_fffe, RW);
    expect(mmu.lookup(G40 - 262_144 * 2 + 99)).toBe(0x40000 + 99);
    expect(mmu.lastLevel).toBe(3);
    expect(mmu.lookup(G40 - 1024 + 511)).toBe(0x10000 + 511);
    expect(mmu.lookup(G40 - 1)).toBe(0x7fff_fffe);
    expect(mmu.lookup(G40 - 2)).toBe(-1);
    // A lookup that dropped the bits above 2^36 would find the last page at these gfns.
    expect(mmu.lookup(2 ** 36 - 1)).toBe(-1);
    expect(mmu.lookup(G40 - 1 - 2 ** 36)).toBe(-1);
    expect(mmu.zapRange(G40 - 600, G40)).toBe(2);
    expect(mmu.lookup(G40 - 262_144 - 1)).toBe(0x40000 + 262_143);
    expect(mmu.zapRange(0, G40 - 600)).toBe(1);
    expect(mmu.stats().tables).toBe(0);
  });

  it('MAXPHYADDR 48 gives a level-4 root and gfns below 2^36', () => {
    const mmu = new TdpMmu({ maxPhyAddr: 48 });
    expect(mmu.rootLevel).toBe(4);
    expect(mmu.gfnLimit).toBe(2 ** 36);
    mmu.map(2 ** 36 - 1, 1, 9, 0);
    mmu.map(0, 3, 0x40000, 0);
    expect(mmu.stats().tables).toBe(5); // the root; L3, L2, L1 for the top page; an L3 for the 1G leaf
    expect(mmu.lookup(2 ** 36 - 1)).toBe(9);
    expect(mmu.lookup(2 ** 36)).toBe(-1);
    expect(mmu.lookup(5)).toBe(0x40005);
    mmu.audit();
  });

  it('distinct gfns that agree in their low 36 bits stay distinct', () => {
    const mmu = new TdpMmu();
    for (let k = 0; k < 16; k++) mmu.map(k * 2 ** 36 + 77, 1, k, 0);
    for (let k = 0; k < 16; k++) expect(mmu.lookup(k * 2 ** 36 + 77)).toBe(k);
    expect(mmu.stats().tables).toBe(1 + 16 * 4);
  });
});

describe('TdpMmu: memory', () => {
  it('a densely mapped 1 GiB of 4K leaves costs at most 6 bytes per page', () => {
    const mmu = new TdpMmu();
    for (let gfn = 0; gfn < 262_144; gfn++) mmu.map(gfn, 1, gfn, RW);
    const s = mmu.stats();
    expect(s.leaves4k).toBe(262_144);
    expect(s.tables).toBe(512 + 4);
    expect(s.bytes / 262_144).toBeLessThanOrEqual(6);
    mmu.audit();
  });

  it('past its first chunk (1024 tables) the pool grows by whole chunks; walks, reuse and reset span chunks', () => {
    const TABLE_BYTES = 512 * 5 + 3;
    const mmu = new TdpMmu();
    expect(mmu.stats().bytes).toBe(16 * TABLE_BYTES);
    // Each 4K leaf at a multiple of 512 needs its own level-1 table: 1100 of them, plus 3 level-2
    // tables, a level-3, a level-4 and the level-5 root.
    const N = 1100;
    for (let i = 0; i < N; i++) mmu.map(i * 512, 1, i, RW);
    mmu.mapMmio((N - 1) * 512 + 1, 7);
    expect(mmu.stats().tables).toBe(N + 3 + 3);
    expect(mmu.stats().bytes).toBe(2 * 1024 * TABLE_BYTES);
    for (let i = 0; i < N; i++) {
      expect(mmu.lookup(i * 512)).toBe(i);
      expect([mmu.lastLevel, mmu.lastFlags]).toEqual([1, P | RW]);
      expect(mmu.lookup(i * 512 + 2)).toBe(-1);
    }
    expect(mmu.lookup((N - 1) * 512 + 1)).toBe(-1);
    expect([mmu.lastFlags, mmu.lastMmioGeneration]).toEqual([SPTE_MMIO, 7]);
    expect(mmu.writeProtectRange(0, N * 512)).toBe(N);
    const seen: number[] = [];
    mmu.forEachLeaf(0, G40, (gfn, level, pfn, flags) => {
      expect([level, flags]).toEqual([1, P | HW]);
      seen.push(gfn / 512 - pfn);
    });
    expect(seen).toEqual(new Array<number>(N).fill(0));
    mmu.audit();
    // Freed tables in both chunks are reused before the pool grows again.
    expect(mmu.zapRange(0, 600 * 512)).toBe(600);
    for (let i = 0; i < 600; i++) mmu.map(2 ** 30 + i * 512, 1, i, RW);
    expect(mmu.stats().bytes).toBe(2 * 1024 * TABLE_BYTES);
    expect(mmu.lookup(2 ** 30 + 599 * 512)).toBe(599);
    expect(mmu.lookup(1099 * 512)).toBe(1099);
    mmu.audit();
    mmu.zapAll();
    expect(mmu.stats()).toMatchObject({ tables: 0, bytes: 16 * TABLE_BYTES });
    mmu.map(5, 1, 9, RW);
    expect(mmu.lookup(5)).toBe(9);
    mmu.audit();
  });
});

// --- the property: random operation sequences against the reference ------------------------

const REGIONS = [0, 262_144 * 3, 2 ** 27 + 262_144, 2 ** 36 - 262_144, G40 - 262_144 * 2];
const arbGfn = fc
  .tuple(
    fc.constantFrom(...REGIONS),
    fc.oneof(
      fc.integer({ min: 0, max: 1100 }),
      fc.integer({ min: 0, max: 262_144 * 2 - 1 }),
      fc.constantFrom(0, 511, 512, 513, 262_143, 262_144),
    ),
  )
  .map(([r, off]) => Math.min(G40 - 1, r + off));
const arbLevel = fc.constantFrom<Level>(1, 1, 2, 3);
const arbFlags = fc.integer({ min: 0, max: 15 }).map((b) => {
  const f = (b & 1 ? W : 0) | (b & 2 ? HW : 0) | (b & 4 ? A : 0) | (b & 8 ? D : 0);
  return f & W ? f | HW : f;
});
const arbLen = fc.oneof(fc.integer({ min: 0, max: 1025 }), fc.integer({ min: 0, max: 262_144 * 3 }));

type Op =
  | { op: 'map'; gfn: number; level: Level; pfn: number; flags: number }
  | { op: 'mmio'; gfn: number; gen: number }
  | { op: 'zap' | 'zapHuge' | 'wrprot'; gfn: number; len: number }
  | { op: 'flags'; gfn: number; set: number; clear: number }
  | { op: 'zapAll' };

const arbOp: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      op: fc.constant('map' as const),
      gfn: arbGfn,
      level: arbLevel,
      pfn: fc.integer({ min: 0, max: 2 ** 30 }),
      flags: arbFlags,
    }),
  },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('mmio' as const), gfn: arbGfn, gen: fc.nat(1000) }) },
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constantFrom('zap' as const, 'zapHuge' as const, 'wrprot' as const),
      gfn: arbGfn,
      len: arbLen,
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({ op: fc.constant('flags' as const), gfn: arbGfn, set: arbFlags, clear: arbFlags }),
  },
  { weight: 1, arbitrary: fc.constant({ op: 'zapAll' as const }) },
);

function apply(mmu: TdpMmu, ref: RefMmu, op: Op): void {
  const got: Leaf[] = [];
  const onZap = (gfn: number, level: number, pfn: number, flags: number): void => {
    got.push([gfn, level, pfn, flags]);
  };
  let want: Leaf[] = [];
  switch (op.op) {
    case 'map':
      mmu.map(op.gfn, op.level, op.pfn, op.flags, onZap);
      want = ref.map(op.gfn, op.level, op.pfn, op.flags);
      break;
    case 'mmio':
      mmu.mapMmio(op.gfn, op.gen, onZap);
      want = ref.mapMmio(op.gfn, op.gen);
      break;
    case 'zap': {
      const n = mmu.zapRange(op.gfn, op.gfn + op.len, onZap);
      want = ref.zap(op.gfn, op.gfn + op.len, false);
      expect(n).toBe(want.length);
      break;
    }
    case 'zapHuge': {
      const n = mmu.zapHugeRange(op.gfn, op.gfn + op.len, onZap);
      want = ref.zap(op.gfn, op.gfn + op.len, true);
      expect(n).toBe(want.length);
      break;
    }
    case 'zapAll': {
      const n = mmu.zapAll(onZap);
      want = ref.zap(0, G40, false);
      expect(n).toBe(want.length);
      break;
    }
    case 'wrprot':
      expect(mmu.writeProtectRange(op.gfn, op.gfn + op.len)).toBe(ref.writeProtect(op.gfn, op.gfn + op.len));
      break;
    case 'flags': {
      // Keep KVM's invariant (WRITABLE implies HOST_WRITABLE), as the fast page fault does.
      let { set, clear } = op;
      const e = ref.find(op.gfn);
      if (e !== undefined && ((e.flags | set) & ~clear & HW) === 0) {
        set &= ~W;
        clear |= W;
      }
      expect(mmu.setLeafFlags(op.gfn, set, clear)).toBe(ref.setLeafFlags(op.gfn, set, clear));
      break;
    }
  }
  expect(got.sort(byGfn), 'leaves reported to onZap').toEqual(want.sort(byGfn));
}

function compare(mmu: TdpMmu, ref: RefMmu, extraProbes: readonly number[]): void {
  expect(mmu.generation, 'generation').toBe(ref.generation);
  expect(counts(mmu)).toEqual(ref.stats());
  expect(collect(mmu)).toEqual(ref.leaves());
  const probes = new Set(extraProbes);
  for (const e of ref.entries.values()) {
    const span = spanOf(e.level);
    for (const g of [e.base - 1, e.base, e.base + (span >> 1), e.base + span - 1, e.base + span])
      probes.add(g);
  }
  for (const g of probes) {
    if (g < 0 || g >= G40) continue;
    const r = ref.lookup(g);
    expect(mmu.lookup(g), `lookup(${g})`).toBe(r.pfn);
    expect([mmu.lastLevel, mmu.lastFlags], `lookup(${g}) level/flags`).toEqual([r.level, r.flags]);
    if (r.flags === SPTE_MMIO) expect(mmu.lastMmioGeneration).toBe(ref.find(g)?.pfn);
  }
  mmu.audit();
}

describe('TdpMmu: property against the Map reference', () => {
  it('random map/mmio/zap/zapHuge/wrprot/setLeafFlags/zapAll sequences agree on every observable', () => {
    fc.assert(
      fc.property(
        fc.array(arbOp, { minLength: 1, maxLength: 40 }),
        fc.array(arbGfn, { maxLength: 8 }),
        (ops, probes) => {
          const mmu = new TdpMmu();
          const ref = new RefMmu(5);
          for (const op of ops) {
            apply(mmu, ref, op);
            compare(mmu, ref, probes);
          }
          mmu.zapAll();
          expect(mmu.stats().tables).toBe(0);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('the same holds with a level-4 root (MAXPHYADDR 48)', () => {
    const low = arbGfn.map((g) => g % 2 ** 36);
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            gfn: low,
            level: arbLevel,
            pfn: fc.integer({ min: 0, max: 2 ** 30 }),
            flags: arbFlags,
          }),
          { maxLength: 30 },
        ),
        fc.tuple(low, arbLen),
        (maps, [zs, zl]) => {
          const mmu = new TdpMmu({ maxPhyAddr: 48 });
          const ref = new RefMmu(4);
          for (const m of maps) apply(mmu, ref, { op: 'map', ...m });
          compare(mmu, ref, []);
          apply(mmu, ref, { op: 'zap', gfn: zs, len: zl });
          compare(mmu, ref, [zs, zs + zl]);
        },
      ),
      { numRuns: 200 },
    );
  });
});
