/**
 * Tests of the range B+tree and the interval map: table-driven cases for every method and its
 * boundaries (touching ranges, point 0, bounds near 2^53), a check that the structural checker
 * itself catches corruption, and fast-check properties that run thousands of random operations
 * against a naive per-point reference model, at node order 4 (deep trees, every split / borrow /
 * merge path) and at the default order.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { InvariantError } from '../errno.js';
import { IntervalMap, type IntervalRange, RANGE_LIMIT, RangeBTree } from './interval_map.js';

type R = [start: number, end: number, value: number];

function mapOf(ranges: readonly R[], order?: number): IntervalMap {
  const m = new IntervalMap(order);
  for (const [s, e, v] of ranges) m.set(s, e, v);
  return m;
}

function rangesOf(m: IntervalMap): R[] {
  return m.toArray().map((r) => [r.start, r.end, r.value]);
}

function collect(run: (cb: (start: number, end: number, value: number) => void) => void): R[] {
  const out: R[] = [];
  run((s, e, v) => out.push([s, e, v]));
  return out;
}

const TOP = RANGE_LIMIT; // 2^53

describe('IntervalMap.set: merging, splitting and the changed flag (MA-3, MA-4)', () => {
  const cases: {
    name: string;
    initial: R[];
    set: R;
    changed: boolean;
    expect: R[];
  }[] = [
    { name: 'into an empty map', initial: [], set: [10, 20, 8], changed: true, expect: [[10, 20, 8]] },
    { name: 'at point 0', initial: [], set: [0, 1, 8], changed: true, expect: [[0, 1, 8]] },
    {
      name: 'touching on the left with the same value merges',
      initial: [[0, 10, 8]],
      set: [10, 20, 8],
      changed: true,
      expect: [[0, 20, 8]],
    },
    {
      name: 'touching on the right with the same value merges',
      initial: [[20, 30, 8]],
      set: [10, 20, 8],
      changed: true,
      expect: [[10, 30, 8]],
    },
    {
      name: 'filling the gap between two equal ranges leaves one range',
      initial: [
        [0, 10, 8],
        [20, 30, 8],
      ],
      set: [10, 20, 8],
      changed: true,
      expect: [[0, 30, 8]],
    },
    {
      name: 'touching ranges with different values stay apart',
      initial: [
        [0, 10, 1],
        [20, 30, 2],
      ],
      set: [10, 20, 3],
      changed: true,
      expect: [
        [0, 10, 1],
        [10, 20, 3],
        [20, 30, 2],
      ],
    },
    {
      name: 'another value in the middle of a range splits it in three',
      initial: [[0, 30, 8]],
      set: [10, 20, 1],
      changed: true,
      expect: [
        [0, 10, 8],
        [10, 20, 1],
        [20, 30, 8],
      ],
    },
    {
      name: 'clearing the middle of a range leaves two',
      initial: [[0, 30, 8]],
      set: [10, 20, 0],
      changed: true,
      expect: [
        [0, 10, 8],
        [20, 30, 8],
      ],
    },
    { name: 'clearing exactly one range', initial: [[5, 9, 8]], set: [5, 9, 0], changed: true, expect: [] },
    {
      name: 'clearing across ranges clips both ends',
      initial: [
        [0, 10, 1],
        [12, 14, 2],
        [16, 30, 3],
      ],
      set: [5, 20, 0],
      changed: true,
      expect: [
        [0, 5, 1],
        [20, 30, 3],
      ],
    },
    {
      name: 'overwriting across ranges keeps both tails',
      initial: [
        [0, 10, 1],
        [12, 14, 2],
        [16, 30, 3],
      ],
      set: [5, 20, 4],
      changed: true,
      expect: [
        [0, 5, 1],
        [5, 20, 4],
        [20, 30, 3],
      ],
    },
    {
      name: 'overwriting across ranges absorbs equal-valued ones on both sides',
      initial: [
        [0, 10, 4],
        [12, 14, 2],
        [16, 30, 4],
      ],
      set: [5, 20, 4],
      changed: true,
      expect: [[0, 30, 4]],
    },
    {
      name: 'a range covering others exactly replaces them',
      initial: [
        [10, 12, 1],
        [14, 16, 2],
      ],
      set: [10, 16, 3],
      changed: true,
      expect: [[10, 16, 3]],
    },
    {
      name: 'a range starting inside a range and ending in a gap',
      initial: [
        [0, 10, 1],
        [20, 30, 1],
      ],
      set: [5, 15, 1],
      changed: true,
      expect: [
        [0, 15, 1],
        [20, 30, 1],
      ],
    },
    {
      name: 'a range starting in a gap and ending inside a range with the same value',
      initial: [[20, 30, 1]],
      set: [15, 25, 1],
      changed: true,
      expect: [[15, 30, 1]],
    },
    {
      name: 'a range starting in a gap and ending inside a range with another value',
      initial: [[20, 30, 1]],
      set: [15, 25, 2],
      changed: true,
      expect: [
        [15, 25, 2],
        [25, 30, 1],
      ],
    },
    {
      name: 'the same value inside a range changes nothing',
      initial: [[0, 30, 8]],
      set: [10, 20, 8],
      changed: false,
      expect: [[0, 30, 8]],
    },
    {
      name: 'the same value over exactly a range changes nothing',
      initial: [[10, 20, 8]],
      set: [10, 20, 8],
      changed: false,
      expect: [[10, 20, 8]],
    },
    {
      name: 'clearing a gap changes nothing',
      initial: [
        [0, 10, 8],
        [20, 30, 8],
      ],
      set: [10, 20, 0],
      changed: false,
      expect: [
        [0, 10, 8],
        [20, 30, 8],
      ],
    },
    {
      name: 'an empty range changes nothing',
      initial: [[0, 10, 8]],
      set: [5, 5, 1],
      changed: false,
      expect: [[0, 10, 8]],
    },
    {
      name: 'a value partly present is a change',
      initial: [[0, 10, 8]],
      set: [5, 15, 8],
      changed: true,
      expect: [[0, 15, 8]],
    },
    {
      name: 'negative values are values',
      initial: [],
      set: [1, 2, -(2 ** 31)],
      changed: true,
      expect: [[1, 2, -(2 ** 31)]],
    },
    {
      name: 'ranges up to 2^53 are exact',
      initial: [[TOP - 10, TOP, 1]],
      set: [TOP - 5, TOP - 4, 2],
      changed: true,
      expect: [
        [TOP - 10, TOP - 5, 1],
        [TOP - 5, TOP - 4, 2],
        [TOP - 4, TOP, 1],
      ],
    },
    {
      name: 'neighbouring gfns near 2^52 stay distinct',
      initial: [[2 ** 52, 2 ** 52 + 1, 1]],
      set: [2 ** 52 + 1, 2 ** 52 + 2, 1],
      changed: true,
      expect: [[2 ** 52, 2 ** 52 + 2, 1]],
    },
    {
      name: '1 TiB (2^28 pages) over small ranges is one range',
      initial: [
        [5, 6, 1],
        [100, 200, 2],
        [2 ** 27, 2 ** 27 + 9, 3],
      ],
      set: [0, 2 ** 28, 8],
      changed: true,
      expect: [[0, 2 ** 28, 8]],
    },
    {
      name: 'the whole space',
      initial: [[7, 9, 1]],
      set: [0, TOP, 2],
      changed: true,
      expect: [[0, TOP, 2]],
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      for (const order of [4, 32]) {
        const m = mapOf(c.initial, order);
        expect(m.set(...c.set)).toBe(c.changed);
        expect(rangesOf(m)).toEqual(c.expect);
        expect(m.rangeCount).toBe(c.expect.length);
        expect(m.check()).toBeNull();
      }
    });
  }

  it('rejects bounds that are not integers in [0, 2^53] and values that are not int32', () => {
    const m = mapOf([[0, 10, 1]]);
    const bad: [number, number, number][] = [
      [-1, 5, 1],
      [0.5, 5, 1],
      [0, 5.5, 1],
      [0, TOP + 2, 1],
      [Number.NaN, 5, 1],
      [0, 5, 2 ** 31],
      [0, 5, -(2 ** 31) - 1],
      [0, 5, 1.5],
    ];
    for (const [s, e, v] of bad)
      expect(() => m.set(s, e, v), `set(${s}, ${e}, ${v})`).toThrow(InvariantError);
    expect(rangesOf(m)).toEqual([[0, 10, 1]]);
  });
});

describe('IntervalMap queries', () => {
  const m = mapOf([
    [0, 10, 1],
    [10, 20, 2],
    [30, 40, 1],
    [TOP - 2, TOP, 3],
  ]);

  it('get: start included, end excluded, gaps are 0', () => {
    const table: [number, number][] = [
      [0, 1],
      [9, 1],
      [10, 2],
      [19, 2],
      [20, 0],
      [29, 0],
      [30, 1],
      [39, 1],
      [40, 0],
      [TOP - 3, 0],
      [TOP - 2, 3],
      [TOP - 1, 3],
      [TOP, 0],
    ];
    for (const [p, v] of table) expect(m.get(p), `get(${p})`).toBe(v);
    expect(new IntervalMap().get(0)).toBe(0);
  });

  it('get answers from the last range or gap it found until the map changes', () => {
    const m = new IntervalMap();
    m.set(10, 20, 1);
    m.set(30, 40, 2);
    expect(m.get(15)).toBe(1);
    expect(m.get(19)).toBe(1);
    expect(m.get(20)).toBe(0); // the gap [20, 30)
    expect(m.get(29)).toBe(0);
    m.set(25, 26, 3); // inside the remembered gap
    expect(m.get(25)).toBe(3);
    expect(m.get(24)).toBe(0);
    m.set(10, 20, 0); // clears the range get remembered
    expect(m.get(12)).toBe(0);
    expect(m.get(2 ** 53 - 1)).toBe(0);
    m.set(2 ** 53 - 2, 2 ** 53, 5);
    expect(m.get(2 ** 53 - 1)).toBe(5);
    expect(m.get(0)).toBe(0);
    m.clear();
    expect(m.get(35)).toBe(0);
    expect(m.get(2 ** 53 - 1)).toBe(0);
  });

  it('isUniform', () => {
    const table: [number, number, number, boolean][] = [
      [0, 10, 1, true],
      [2, 5, 1, true],
      [0, 11, 1, false],
      [5, 15, 1, false],
      [10, 20, 2, true],
      [20, 30, 0, true],
      [19, 30, 0, false],
      [20, 31, 0, false],
      [40, TOP - 2, 0, true],
      [40, TOP - 1, 0, false],
      [TOP - 2, TOP, 3, true],
      [25, 25, 7, true], // empty range: vacuously uniform
      [0, 10, 0, false],
      [20, 30, 1, false],
    ];
    for (const [s, e, v, want] of table)
      expect(m.isUniform(s, e, v), `isUniform(${s}, ${e}, ${v})`).toBe(want);
    expect(new IntervalMap().isUniform(0, TOP, 0)).toBe(true);
    expect(new IntervalMap().isUniform(0, 1, 1)).toBe(false);
  });

  it('forEachRange clips to the query and skips gaps', () => {
    expect(collect((cb) => m.forEachRange(5, 35, cb))).toEqual([
      [5, 10, 1],
      [10, 20, 2],
      [30, 35, 1],
    ]);
    expect(collect((cb) => m.forEachRange(20, 30, cb))).toEqual([]);
    expect(collect((cb) => m.forEachRange(19, 21, cb))).toEqual([[19, 20, 2]]);
    expect(collect((cb) => m.forEachRange(39, TOP, cb))).toEqual([
      [39, 40, 1],
      [TOP - 2, TOP, 3],
    ]);
    expect(collect((cb) => m.forEachRange(7, 7, cb))).toEqual([]); // empty query inside a range
    expect(collect((cb) => m.forEachRange(9, 2, cb))).toEqual([]);
  });

  it('forEachSegment also reports the gaps, covering the query exactly', () => {
    expect(collect((cb) => m.forEachSegment(5, 45, cb))).toEqual([
      [5, 10, 1],
      [10, 20, 2],
      [20, 30, 0],
      [30, 40, 1],
      [40, 45, 0],
    ]);
    expect(collect((cb) => m.forEachSegment(22, 28, cb))).toEqual([[22, 28, 0]]);
    expect(collect((cb) => m.forEachSegment(0, 10, cb))).toEqual([[0, 10, 1]]);
    expect(collect((cb) => new IntervalMap().forEachSegment(0, 4, cb))).toEqual([[0, 4, 0]]);
    expect(collect((cb) => m.forEachSegment(3, 3, cb))).toEqual([]);
  });

  it('firstIntersecting returns the stored (unclipped) range', () => {
    const table: [number, number, IntervalRange | null][] = [
      [5, 6, { start: 0, end: 10, value: 1 }],
      [10, 11, { start: 10, end: 20, value: 2 }],
      [20, 30, null],
      [20, 31, { start: 30, end: 40, value: 1 }],
      [15, 35, { start: 10, end: 20, value: 2 }],
      [41, TOP - 2, null],
      [41, TOP, { start: TOP - 2, end: TOP, value: 3 }],
      [5, 5, null],
    ];
    for (const [s, e, want] of table)
      expect(m.firstIntersecting(s, e), `firstIntersecting(${s}, ${e})`).toEqual(want);
  });

  it('clear empties the map, which stays usable', () => {
    const c = mapOf([
      [0, 10, 1],
      [20, 30, 2],
    ]);
    c.clear();
    expect(c.rangeCount).toBe(0);
    expect(c.get(5)).toBe(0);
    expect(c.set(3, 4, 5)).toBe(true);
    expect(rangesOf(c)).toEqual([[3, 4, 5]]);
  });
});

describe('RangeBTree', () => {
  it('insert refuses intersecting ranges and reports one of them', () => {
    const t = new RangeBTree(4);
    expect(t.insert(10, 20, 1)).toBe(-1);
    expect(t.insert(30, 40, 2)).toBe(-1);
    const table: [number, number, number][] = [
      [10, 20, 1], // identical
      [12, 13, 1], // inside
      [5, 11, 1], // straddles the start
      [19, 25, 1], // straddles the end
      [0, 100, 1], // covers both (the first met is reported)
      [25, 31, 2],
    ];
    for (const [k, e, v] of table) {
      const c = t.insert(k, e, 99);
      expect(c, `insert(${k}, ${e})`).not.toBe(-1);
      expect(t.vals[c]).toBe(v);
    }
    expect(t.insert(20, 30, 3)).toBe(-1); // touching both neighbours is fine
    expect(t.size).toBe(3);
    expect(t.check()).toBeNull();
  });

  it('removeKey only matches an exact key', () => {
    const t = new RangeBTree(4);
    t.insert(10, 20, 1);
    expect(t.removeKey(11, -7)).toBe(-7);
    expect(t.removeKey(10, -7)).toBe(1);
    expect(t.removeKey(10, -7)).toBe(-7);
    expect(new RangeBTree().removeKey(0, -1)).toBe(-1);
  });

  it('grows from one leaf to several levels and shrinks back to one', () => {
    const t = new RangeBTree(4);
    for (let i = 0; i < 1000; i++) expect(t.insert(i * 2, i * 2 + 1, i)).toBe(-1);
    expect(t.depth).toBeGreaterThanOrEqual(5);
    expect(t.check()).toBeNull();
    expect(t.removeRange(0, 2000)).toBe(1000);
    expect(t.size).toBe(0);
    expect(t.depth).toBe(1);
    expect(t.floorEntry(5)).toBe(-1);
    expect(t.firstEntry()).toBe(-1);
    expect(t.check()).toBeNull();
  });

  it('removeRange drops whole leaves and subtrees at the start, middle and end', () => {
    const table: [number, number][] = [
      [0, 200], // everything
      [0, 150], // a prefix of many leaves
      [50, 200], // a suffix
      [37, 163], // the middle, starting and ending inside leaves
      [3, 4], // one entry
      [64, 128], // aligned with leaf boundaries
      [199, 1000], // the last entry and beyond
      [-5, 0], // nothing
    ];
    for (const order of [4, 8, 32]) {
      for (const [lo, hi] of table) {
        for (const ascending of [true, false]) {
          const t = new RangeBTree(order);
          for (let i = 0; i < 200; i++) {
            const k = ascending ? i : 199 - i;
            t.insert(k, k + 1, k);
          }
          const gone = Math.max(0, Math.min(hi, 200) - Math.max(lo, 0));
          expect(t.removeRange(lo, hi), `order ${order} [${lo}, ${hi})`).toBe(gone);
          expect(t.check(), `order ${order} [${lo}, ${hi})`).toBeNull();
          const left: number[] = [];
          for (let c = t.firstEntry(); c !== -1; c = t.nextEntry(c)) left.push(t.keys[c] as number);
          expect(left).toEqual([...Array(200).keys()].filter((k) => k < lo || k >= hi));
          // Still a working tree: refill the hole.
          for (let k = Math.max(lo, 0); k < Math.min(hi, 200); k++) expect(t.insert(k, k + 1, k)).toBe(-1);
          expect(t.size).toBe(200);
          expect(t.check()).toBeNull();
        }
      }
    }
  });

  it('check() reports corruption (so the properties below can fail)', () => {
    const build = () => {
      const t = new RangeBTree(4);
      for (let i = 0; i < 50; i++) t.insert(i * 10, i * 10 + 5, i);
      return t;
    };
    const t1 = build();
    t1.keys[t1.floorEntry(200)] = 999; // above its successor's key (210)
    expect(t1.check()).toMatch(/key|separator/);
    const t2 = build();
    t2.ends[t2.floorEntry(300)] = 300; // empty range
    expect(t2.check()).toMatch(/end/);
  });
});

// ---- properties against a naive model ----

/** Per-point reference over a small window [base, base + size). */
class ReferenceMap {
  readonly values: Int32Array;
  constructor(
    readonly base: number,
    readonly size: number,
  ) {
    this.values = new Int32Array(size);
  }
  set(s: number, e: number, v: number): boolean {
    let changed = false;
    for (let i = s - this.base; i < e - this.base; i++) {
      if (this.values[i] !== v) changed = true;
      this.values[i] = v;
    }
    return changed;
  }
  get(p: number): number {
    return this.values[p - this.base] ?? 0;
  }
  /** Maximal runs of equal non-zero values in [s, e), clipped; with gaps if `gaps`. */
  runs(s: number, e: number, gaps: boolean): R[] {
    const out: R[] = [];
    let i = s;
    while (i < e) {
      const v = this.get(i);
      let j = i + 1;
      while (j < e && this.get(j) === v) j++;
      if (v !== 0 || gaps) out.push([i, j, v]);
      i = j;
    }
    return out;
  }
}

type Op =
  | { kind: 'set'; s: number; len: number; v: number }
  | { kind: 'query'; s: number; len: number; v: number };

function opArb(size: number): fc.Arbitrary<Op> {
  const pos = fc.nat({ max: size - 1 });
  // Mostly short ranges (many boundaries), sometimes long ones that cover many ranges.
  const len = fc.oneof(
    { weight: 4, arbitrary: fc.integer({ min: 1, max: 12 }) },
    fc.integer({ min: 1, max: size }),
  );
  const value = fc.constantFrom(0, 0, 1, 2, 3, 8);
  return fc.oneof(
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('set' as const), s: pos, len, v: value }) },
    fc.record({ kind: fc.constant('query' as const), s: pos, len, v: value }),
  );
}

function runAgainstModel(ops: readonly Op[], order: number, base: number, size: number): void {
  const m = new IntervalMap(order);
  const ref = new ReferenceMap(base, size);
  for (const op of ops) {
    const s = base + op.s;
    const e = Math.min(base + size, s + op.len);
    if (op.kind === 'set') {
      const want = ref.set(s, e, op.v);
      expect(m.set(s, e, op.v), `set(${s}, ${e}, ${op.v})`).toBe(want);
      const err = m.check();
      expect(err).toBeNull();
      expect(rangesOf(m)).toEqual(ref.runs(base, base + size, false));
      // get remembers the range or gap of its last answer: it must forget it on every change.
      for (const x of [s - 1, s, e - 1, e]) {
        if (x >= base && x < base + size) expect(m.get(x), `get(${x})`).toBe(ref.get(x));
      }
    } else {
      const runs = ref.runs(s, e, false);
      expect(m.isUniform(s, e, op.v)).toBe(ref.runs(s, e, true).every(([, , v]) => v === op.v));
      expect(m.isConstant(s, e), `isConstant(${s}, ${e})`).toBe(ref.runs(s, e, true).length === 1);
      expect(collect((cb) => m.forEachRange(s, e, cb))).toEqual(runs);
      expect(collect((cb) => m.forEachSegment(s, e, cb))).toEqual(ref.runs(s, e, true));
      const first = m.firstIntersecting(s, e);
      if (runs.length === 0) expect(first).toBeNull();
      else {
        // The stored range: the maximal run through the first point, unclipped.
        const [r0s, , r0v] = runs[0] as R;
        const full = ref.runs(base, base + size, false).find(([rs, re]) => rs <= r0s && r0s < re);
        expect(first).toEqual({ start: full?.[0], end: full?.[1], value: r0v });
      }
      expect(m.get(s)).toBe(ref.get(s));
      expect(m.get(e - 1)).toBe(ref.get(e - 1));
    }
  }
}

describe('IntervalMap matches a per-point model over random operations', () => {
  it('order 4 (deep trees: every split, borrow and merge)', () => {
    fc.assert(
      fc.property(fc.array(opArb(600), { minLength: 50, maxLength: 400 }), (ops) =>
        runAgainstModel(ops, 4, 0, 600),
      ),
      { numRuns: 40 },
    );
  });

  it('default order, small window', () => {
    fc.assert(
      fc.property(fc.array(opArb(300), { minLength: 50, maxLength: 400 }), (ops) =>
        runAgainstModel(ops, 32, 0, 300),
      ),
      { numRuns: 30 },
    );
  });

  it('order 8, points just below 2^53', () => {
    fc.assert(
      fc.property(fc.array(opArb(400), { minLength: 50, maxLength: 300 }), (ops) =>
        runAgainstModel(ops, 8, TOP - 400, 400),
      ),
      { numRuns: 20 },
    );
  });

  it('many ranges: thousands of single-page sets and long clears', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            s: fc.nat({ max: 3999 }),
            len: fc.oneof({ weight: 20, arbitrary: fc.constant(1) }, fc.integer({ min: 1, max: 400 })),
            v: fc.constantFrom(0, 1, 2),
          }),
          { minLength: 2000, maxLength: 3000 },
        ),
        (sets) => {
          const m = new IntervalMap(4);
          const ref = new ReferenceMap(0, 4000);
          for (const { s, len, v } of sets) {
            const e = Math.min(4000, s + len);
            expect(m.set(s, e, v)).toBe(ref.set(s, e, v));
          }
          expect(m.check()).toBeNull();
          expect(rangesOf(m)).toEqual(ref.runs(0, 4000, false));
          for (let p = 0; p < 4000; p++)
            if (m.get(p) !== ref.get(p)) expect(m.get(p), `get(${p})`).toBe(ref.get(p));
        },
      ),
      { numRuns: 5 },
    );
  });
});

describe('RangeBTree matches a sorted-array model over random operations', () => {
  const key = fc.nat({ max: 2000 });
  const top: fc.Arbitrary<
    | { kind: 'insert'; k: number; len: number }
    | { kind: 'remove'; k: number }
    | { kind: 'removeRange'; k: number; len: number }
    | { kind: 'rekey'; k: number; d: number }
  > = fc.oneof(
    {
      weight: 5,
      arbitrary: fc.record({
        kind: fc.constant('insert' as const),
        k: key,
        len: fc.integer({ min: 1, max: 6 }),
      }),
    },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('remove' as const), k: key }) },
    fc.record({ kind: fc.constant('removeRange' as const), k: key, len: fc.integer({ min: 1, max: 300 }) }),
    fc.record({ kind: fc.constant('rekey' as const), k: key, d: fc.integer({ min: -3, max: 3 }) }),
  );

  it('insert, removeKey, removeRange, rekey, floorEntry and iteration (order 4)', () => {
    fc.assert(
      fc.property(fc.array(top, { minLength: 100, maxLength: 800 }), (ops) => {
        const t = new RangeBTree(4);
        let ref: [number, number, number][] = []; // sorted [key, end, val]
        let val = 0;
        for (const op of ops) {
          if (op.kind === 'insert') {
            const e = op.k + op.len;
            const hits = ref.filter(([k, en]) => k < e && op.k < en).map(([, , v]) => v);
            const c = t.insert(op.k, e, val);
            if (hits.length > 0)
              expect(hits).toContain(t.vals[c]); // some intersecting range
            else {
              expect(c).toBe(-1);
              ref.push([op.k, e, val]);
              ref.sort((a, b) => a[0] - b[0]);
            }
            val++;
          } else if (op.kind === 'remove') {
            const i = ref.findIndex(([k]) => k === op.k);
            expect(t.removeKey(op.k, -1)).toBe(i === -1 ? -1 : (ref[i] as [number, number, number])[2]);
            if (i !== -1) ref.splice(i, 1);
          } else if (op.kind === 'removeRange') {
            const before = ref.length;
            ref = ref.filter(([k]) => k < op.k || k >= op.k + op.len);
            expect(t.removeRange(op.k, op.k + op.len)).toBe(before - ref.length);
          } else {
            // Move the start of the entry at or before k, if it stays between its neighbours.
            const i = ref.findLastIndex(([k]) => k <= op.k);
            const cur = ref[i];
            if (cur !== undefined && op.d !== 0) {
              const nk = cur[0] + op.d;
              const prevEnd = ref[i - 1]?.[1] ?? 0;
              const nextKey = ref[i + 1]?.[0] ?? Number.POSITIVE_INFINITY;
              if (nk >= prevEnd && nk < cur[1] && nk < nextKey && nk >= 0) {
                t.rekey(cur[0], nk);
                cur[0] = nk;
              }
            }
          }
          expect(t.check()).toBeNull();
          expect(t.size).toBe(ref.length);
        }
        // Iteration order and floorEntry at every key boundary.
        const seen: number[] = [];
        for (let c = t.firstEntry(); c !== -1; c = t.nextEntry(c)) seen.push(t.keys[c] as number);
        expect(seen).toEqual(ref.map(([k]) => k));
        let i = -1;
        for (let x = -1; x <= 2010; x++) {
          while (i + 1 < ref.length && (ref[i + 1] as [number, number, number])[0] <= x) i++;
          const c = t.floorEntry(x);
          if (i === -1) expect(c).toBe(-1);
          else expect(t.keys[c], `floorEntry(${x})`).toBe((ref[i] as [number, number, number])[0]);
        }
      }),
      { numRuns: 40 },
    );
  });
});
