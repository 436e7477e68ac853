/**
 * Tests of the memslot lookup index: table-driven cases for every method and boundary (touching
 * slots, gfn 0, gfns near 2^52 and 2^53, the overlap precondition of MR-15, the last-used cache
 * and the lookup directory going stale), and fast-check properties that run thousands of random
 * inserts, removes and lookup bursts against a naive list of slots.
 */
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { InvariantError, recordedWarnings, setStrictInvariants } from '../errno.js';
import { MemslotIndex } from './memslot_index.js';

type Slot = [baseGfn: number, npages: number, handle: number];

function indexOf(slots: readonly Slot[], order?: number): MemslotIndex {
  const idx = new MemslotIndex(order);
  for (const [b, n, h] of slots) idx.insert(b, n, h);
  return idx;
}

function slotsOf(idx: MemslotIndex): Slot[] {
  const out: Slot[] = [];
  idx.forEach((b, n, h) => {
    out.push([b, n, h]);
  });
  return out;
}

/** Enough lookups after the last mutation that the index rebuilds its directory. */
function warmDirectory(idx: MemslotIndex): void {
  for (let i = 0; i < idx.size / 8 + 64; i++) idx.find(-1);
}

const G52 = 2 ** 52;
const TOP = 2 ** 53;

describe('MemslotIndex', () => {
  afterEach(() => setStrictInvariants(true));

  const slots: Slot[] = [
    [0, 16, 0], // gfn 0
    [16, 16, 1], // touches slot 0
    [100, 1, 2], // one page
    [G52 - 512, 512, 3], // ends at 2^52
    [G52, 1024, 4], // starts at 2^52, touches slot 3
    [TOP - 1, 1, 5], // the last page below 2^53
  ];

  it('find: base included, end excluded, for touching slots and at the edges of the gfn space', () => {
    const table: [number, number][] = [
      [0, 0],
      [15, 0],
      [16, 1],
      [31, 1],
      [32, -1],
      [99, -1],
      [100, 2],
      [101, -1],
      [G52 - 513, -1],
      [G52 - 512, 3],
      [G52 - 1, 3],
      [G52, 4],
      [G52 + 1023, 4],
      [G52 + 1024, -1],
      [TOP - 2, -1],
      [TOP - 1, 5],
      [TOP, -1],
    ];
    for (const order of [4, 32]) {
      const idx = indexOf(slots, order);
      // Twice: through the B+tree, then through the rebuilt directory.
      for (const pass of ['tree', 'directory']) {
        if (pass === 'directory') warmDirectory(idx);
        for (const [gfn, h] of table) expect(idx.find(gfn), `${pass}: find(${gfn})`).toBe(h);
        // And in reverse, so the last-used cache is entered from both sides.
        for (const [gfn, h] of [...table].reverse()) expect(idx.find(gfn), `${pass}: find(${gfn})`).toBe(h);
      }
      expect(idx.check()).toBeNull();
    }
    expect(new MemslotIndex().find(0)).toBe(-1);
  });

  it('size and forEach list the slots in gfn order, whatever the insertion order', () => {
    const idx = indexOf([...slots].reverse());
    expect(idx.size).toBe(slots.length);
    expect(slotsOf(idx)).toEqual(slots);
  });

  it('MR-15: insert of a range that intersects a slot is refused (kvmWarn) and changes nothing', () => {
    const base: Slot[] = [
      [100, 10, 1],
      [200, 10, 2],
    ];
    const table: [string, number, number][] = [
      ['identical', 100, 10],
      ['inside', 102, 3],
      ['straddling the start', 95, 6],
      ['straddling the end', 109, 5],
      ['covering', 90, 30],
      ['covering two slots', 105, 100],
      ['one page at the last gfn', 109, 1],
      ['one page at the base gfn', 200, 1],
    ];
    for (const [what, b, n] of table) {
      const idx = indexOf(base);
      expect(() => idx.insert(b, n, 9), what).toThrow(/overlap slot handle [12] \(MR-15\)/);
      expect(slotsOf(idx), what).toEqual(base);
    }
    const idx = indexOf(base);
    idx.insert(110, 90, 3); // touches both neighbours exactly
    expect(slotsOf(idx)).toEqual([
      [100, 10, 1],
      [110, 90, 3],
      [200, 10, 2],
    ]);
  });

  it('insert rejects malformed ranges and handles', () => {
    const table: [string, number, number, number][] = [
      ['npages 0', 10, 0, 1],
      ['negative npages', 10, -1, 1],
      ['fractional npages', 10, 1.5, 1],
      ['negative base', -1, 1, 1],
      ['fractional base', 0.5, 1, 1],
      ['end beyond 2^53', TOP - 1, 2, 1],
      ['handle -1', 10, 1, -1],
      ['handle 2^31', 10, 1, 2 ** 31],
      ['fractional handle', 10, 1, 0.5],
    ];
    for (const [what, b, n, h] of table) {
      const idx = new MemslotIndex();
      expect(() => idx.insert(b, n, h), what).toThrow(InvariantError);
      expect(idx.size, what).toBe(0);
    }
  });

  it('outside strict mode a refused insert is recorded and the index is unchanged', () => {
    setStrictInvariants(false);
    const idx = indexOf([[100, 10, 1]]);
    idx.insert(105, 10, 2);
    expect(slotsOf(idx)).toEqual([[100, 10, 1]]);
    expect(recordedWarnings().some((w) => w.includes('overlap slot handle 1'))).toBe(true);
  });

  it('remove: by base gfn only; returns the handle, then -1', () => {
    const idx = indexOf(slots);
    expect(idx.remove(17)).toBe(-1); // inside slot 1, not its base
    expect(idx.remove(32)).toBe(-1);
    expect(idx.remove(16)).toBe(1);
    expect(idx.remove(16)).toBe(-1);
    expect(idx.find(20)).toBe(-1);
    expect(idx.find(15)).toBe(0);
    expect(idx.remove(TOP - 1)).toBe(5);
    expect(idx.size).toBe(slots.length - 2);
    expect(new MemslotIndex().remove(0)).toBe(-1);
  });

  it('remove forgets the last slot found, and a new slot at the same gfns is found', () => {
    const idx = indexOf([[1000, 100, 7]]);
    expect(idx.find(1050)).toBe(7); // now the last-used slot
    expect(idx.remove(1000)).toBe(7);
    expect(idx.find(1050)).toBe(-1);
    idx.insert(1000, 100, 8);
    expect(idx.find(1050)).toBe(8);
    // A slot inserted next to the cached one does not disturb it.
    idx.insert(1100, 10, 9);
    expect(idx.find(1099)).toBe(8);
    expect(idx.find(1100)).toBe(9);
  });

  it('findValue answers with the resolved slot; the last-used slot follows every hit and is forgotten on remove', () => {
    const objs = new Map<number, { h: number }>();
    const idx = new MemslotIndex<{ h: number }>(4, (h) => objs.get(h) ?? null);
    for (let i = 0; i < 40; i++) {
      objs.set(i, { h: i });
      idx.insert(i * 10, 5, i);
    }
    expect(idx.findValue(0)).toBe(objs.get(0));
    expect(idx.findValue(5)).toBeNull(); // the gap after slot 0
    warmDirectory(idx);
    for (const g of [123, 124, 391, 0, 4, 394]) expect(idx.findValue(g)).toBe(objs.get(Math.floor(g / 10)));
    // 394's slot is the last-used one now (a directory hit); removing it forgets it.
    expect(idx.remove(390)).toBe(39);
    objs.delete(39);
    expect(idx.findValue(394)).toBeNull();
    expect(idx.find(394)).toBe(-1);
    // A new slot at the same gfns, under another handle, is found with its own value.
    objs.set(77, { h: 77 });
    idx.insert(390, 5, 77);
    expect(idx.findValue(392)).toBe(objs.get(77));
    expect(idx.find(392)).toBe(77);
    // Without a resolver findValue answers null, find still answers handles.
    const plain = indexOf([[0, 4, 9]]);
    expect(plain.find(1)).toBe(9);
    expect(plain.findValue(1)).toBeNull();
  });

  it('a mutation makes the directory stale: lookups see the change at once', () => {
    const many: Slot[] = [];
    for (let i = 0; i < 2000; i++) many.push([i * 4, 3, i]); // gaps of one page
    const idx = indexOf(many);
    warmDirectory(idx);
    expect(idx.find(4 * 1234 + 2)).toBe(1234);
    expect(idx.find(4 * 1234 + 3)).toBe(-1);
    expect(idx.remove(4 * 1234)).toBe(1234);
    expect(idx.find(4 * 1234 + 1)).toBe(-1);
    idx.insert(4 * 1234 + 3, 1, 5000); // fills a gap
    expect(idx.find(4 * 1234 + 3)).toBe(5000);
    warmDirectory(idx);
    expect(idx.find(4 * 1234 + 1)).toBe(-1);
    expect(idx.find(4 * 1234 + 3)).toBe(5000);
    expect(idx.find(4 * 1999 + 2)).toBe(1999);
    expect(idx.find(4 * 2000)).toBe(-1);
    idx.clear();
    expect(idx.find(4 * 1999 + 2)).toBe(-1);
  });

  it('the directory handles badly skewed slots (crowded buckets) and the empty index', () => {
    const skewed: Slot[] = [];
    for (let i = 0; i < 500; i++) skewed.push([i * 2, 1, i]); // all in the first bucket
    skewed.push([G52, 1, 500]);
    const idx = indexOf(skewed);
    warmDirectory(idx);
    for (let i = 0; i < 500; i++) {
      expect(idx.find(i * 2)).toBe(i);
      expect(idx.find(i * 2 + 1)).toBe(-1);
    }
    expect(idx.find(G52)).toBe(500);
    expect(idx.find(G52 - 1)).toBe(-1);
    expect(idx.find(Number.NaN)).toBe(-1);
    const empty = new MemslotIndex();
    warmDirectory(empty);
    expect(empty.find(0)).toBe(-1);
  });

  it('findIntersecting: any slot meeting [start, end), optionally ignoring one handle (MOVE)', () => {
    const idx = indexOf([
      [100, 10, 1],
      [110, 10, 2],
      [200, 10, 3],
    ]);
    const table: [number, number, number, number[]][] = [
      // [start, end, ignoreHandle, acceptable answers]
      [0, 100, -1, [-1]],
      [0, 101, -1, [1]],
      [109, 111, -1, [1, 2]],
      [120, 200, -1, [-1]],
      [120, 201, -1, [3]],
      [210, TOP, -1, [-1]],
      [0, TOP, -1, [1, 2, 3]],
      [105, 105, -1, [-1]], // empty range
      [100, 110, 1, [-1]], // the slot being moved does not conflict with itself
      [105, 115, 1, [2]],
      [105, 115, 2, [1]],
      [205, 300, 3, [-1]],
    ];
    for (const [s, e, ignore, ok] of table) {
      expect(ok, `findIntersecting(${s}, ${e}, ${ignore})`).toContain(idx.findIntersecting(s, e, ignore));
    }
  });

  it('forEachIntersecting reports whole slots meeting the range, in order', () => {
    const idx = indexOf([
      [100, 10, 1],
      [110, 10, 2],
      [200, 10, 3],
    ]);
    const seen = (s: number, e: number): Slot[] => {
      const out: Slot[] = [];
      idx.forEachIntersecting(s, e, (b, n, h) => out.push([b, n, h]));
      return out;
    };
    expect(seen(105, 201)).toEqual([
      [100, 10, 1],
      [110, 10, 2],
      [200, 10, 3],
    ]);
    expect(seen(120, 200)).toEqual([]);
    expect(seen(119, 120)).toEqual([[110, 10, 2]]);
    expect(seen(105, 105)).toEqual([]);
  });

  it('clear empties the index, which stays usable', () => {
    const idx = indexOf(slots);
    idx.find(5);
    idx.clear();
    expect(idx.size).toBe(0);
    expect(idx.find(5)).toBe(-1);
    expect(slotsOf(idx)).toEqual([]);
    idx.insert(0, 1, 3);
    expect(idx.find(0)).toBe(3);
  });

  it('MR-19: 32764 contiguous 2 MiB slots, then every other one deleted', () => {
    const idx = new MemslotIndex();
    for (let i = 0; i < 32764; i++) idx.insert(i * 512, 512, i);
    expect(idx.size).toBe(32764);
    expect(idx.check()).toBeNull();
    warmDirectory(idx);
    for (let i = 0; i < 32764; i += 97) expect(idx.find(i * 512 + 511)).toBe(i);
    for (let i = 0; i < 32764; i += 2) expect(idx.remove(i * 512)).toBe(i);
    expect(idx.size).toBe(16382);
    expect(idx.check()).toBeNull();
    expect(idx.find(0)).toBe(-1);
    expect(idx.find(512)).toBe(1);
    expect(idx.findIntersecting(0, 512)).toBe(-1);
  });
});

// ---- properties against a naive model ----

type Op =
  | { kind: 'insert'; base: number; npages: number }
  | { kind: 'remove'; pick: number; base: number }
  | { kind: 'finds'; gfns: number[] }
  | { kind: 'intersect'; start: number; len: number; ignore: boolean };

function opArb(span: number): fc.Arbitrary<Op> {
  const gfn = fc.nat({ max: span - 1 });
  return fc.oneof(
    {
      weight: 4,
      arbitrary: fc.record({
        kind: fc.constant('insert' as const),
        base: gfn,
        npages: fc.oneof(
          { weight: 4, arbitrary: fc.integer({ min: 1, max: 8 }) },
          fc.integer({ min: 1, max: 200 }),
        ),
      }),
    },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('remove' as const), pick: fc.nat(), base: gfn }) },
    // Bursts of lookups long enough to make small indexes rebuild their directory.
    fc.record({ kind: fc.constant('finds' as const), gfns: fc.array(gfn, { minLength: 1, maxLength: 120 }) }),
    fc.record({
      kind: fc.constant('intersect' as const),
      start: gfn,
      len: fc.integer({ min: 0, max: 50 }),
      ignore: fc.boolean(),
    }),
  );
}

function runAgainstModel(ops: readonly Op[], order: number, offset: number): void {
  // With a resolver, so findValue is checked against the same model as find.
  const idx = new MemslotIndex<string>(order, (h) => `slot ${h}`);
  const ref: Slot[] = []; // sorted by base
  let handle = 0;
  const containing = (g: number) => ref.find(([b, n]) => g >= b && g < b + n)?.[2] ?? -1;
  // An empty query [s, s) meets nothing.
  const meeting = (s: number, e: number) =>
    s < e ? ref.filter(([b, n]) => b < e && s < b + n).map(([, , h]) => h) : [];
  for (const op of ops) {
    if (op.kind === 'insert') {
      const b = offset + op.base;
      const hits = meeting(b, b + op.npages);
      if (hits.length > 0) {
        expect(() => idx.insert(b, op.npages, handle)).toThrow(InvariantError);
      } else {
        idx.insert(b, op.npages, handle);
        ref.push([b, op.npages, handle]);
        ref.sort((x, y) => x[0] - y[0]);
      }
      handle++;
    } else if (op.kind === 'remove') {
      // Half the time an existing base, otherwise any gfn (usually not a base).
      const existing = ref.length > 0 && op.pick % 2 === 0 ? ref[op.pick % ref.length] : undefined;
      const b = existing ? existing[0] : offset + op.base;
      const i = ref.findIndex(([rb]) => rb === b);
      expect(idx.remove(b)).toBe(i === -1 ? -1 : (ref[i] as Slot)[2]);
      if (i !== -1) ref.splice(i, 1);
    } else if (op.kind === 'finds') {
      for (const g of op.gfns) {
        const h = containing(offset + g);
        expect(idx.find(offset + g), `find(${offset + g})`).toBe(h);
        // Again, and through findValue: the first lookup made it the last-used slot.
        expect(idx.findValue(offset + g), `findValue(${offset + g})`).toBe(h === -1 ? null : `slot ${h}`);
      }
    } else {
      const s = offset + op.start;
      const e = s + op.len;
      const hits = meeting(s, e);
      const ignore = op.ignore && hits.length > 0 ? (hits[0] as number) : -1;
      const ok = hits.filter((h) => h !== ignore);
      const got = idx.findIntersecting(s, e, ignore);
      if (ok.length === 0) expect(got).toBe(-1);
      else expect(ok).toContain(got);
    }
    expect(idx.size).toBe(ref.length);
  }
  expect(idx.check()).toBeNull();
  expect(slotsOf(idx)).toEqual(ref);
}

describe('MemslotIndex matches a list of slots over random operations', () => {
  it('order 4 (deep trees)', () => {
    fc.assert(
      fc.property(fc.array(opArb(3000), { minLength: 100, maxLength: 500 }), (ops) =>
        runAgainstModel(ops, 4, 0),
      ),
      { numRuns: 40 },
    );
  });

  it('default order', () => {
    fc.assert(
      fc.property(fc.array(opArb(3000), { minLength: 100, maxLength: 500 }), (ops) =>
        runAgainstModel(ops, 32, 0),
      ),
      { numRuns: 30 },
    );
  });

  it('gfns near 2^52', () => {
    fc.assert(
      fc.property(fc.array(opArb(3000), { minLength: 100, maxLength: 400 }), (ops) =>
        runAgainstModel(ops, 8, G52 - 1500),
      ),
      { numRuns: 20 },
    );
  });

  it('dense address spaces: thousands of one-page slots, then lookups of every gfn', () => {
    fc.assert(
      fc.property(fc.array(fc.nat({ max: 5999 }), { minLength: 3000, maxLength: 6000 }), (bases) => {
        const idx = new MemslotIndex(4);
        const owner = new Int32Array(6000).fill(-1);
        bases.forEach((b, h) => {
          if (owner[b] === -1) {
            idx.insert(b, 1, h);
            owner[b] = h;
          }
        });
        for (let pass = 0; pass < 2; pass++) {
          for (let g = 0; g < 6000; g++)
            if (idx.find(g) !== owner[g]) expect(idx.find(g), `find(${g})`).toBe(owner[g]);
        }
        // Remove half, look again.
        for (let b = 0; b < 6000; b += 2) if (owner[b] !== -1) expect(idx.remove(b)).toBe(owner[b]);
        for (let b = 0; b < 6000; b += 2) owner[b] = -1;
        for (let g = 0; g < 6000; g++)
          if (idx.find(g) !== owner[g]) expect(idx.find(g), `find(${g})`).toBe(owner[g]);
        expect(idx.check()).toBeNull();
      }),
      { numRuns: 5 },
    );
  });
});
