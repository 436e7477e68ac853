/**
 * Interval map figures (src/core/lib/interval_map.ts), in the shape of memory attributes: a map
 * of 10 000 private ranges (16 pages every 32), then a 1 TiB conversion (2^28 pages) beside
 * them and over all of them, single-page conversions, and point lookups.
 *
 * Run alone: `npx tsx bench/interval_map.bench.ts`.
 */
import { IntervalMap } from '../src/core/lib/interval_map.js';
import { type BenchRow, isMain, printRows, time } from './harness.js';

const AREA = 'interval map (src/core/lib/interval_map.ts)';
const PRIVATE = 8; // KVM_MEMORY_ATTRIBUTE_PRIVATE
const RANGES = 10_000;
const STRIDE = 32;
const TIB_PAGES = 2 ** 28;

/** 10 000 ranges [32i, 32i + 16) → PRIVATE, covering pages [0, 320000). */
function tenThousandRanges(m: IntervalMap): IntervalMap {
  m.clear();
  for (let i = 0; i < RANGES; i++) m.set(i * STRIDE, i * STRIDE + 16, PRIVATE);
  return m;
}

/** Deterministic points in [0, limit) (xorshift32, fixed seed). */
function randomPoints(count: number, limit: number): Float64Array {
  const out = new Float64Array(count);
  let x = 0x2545f491;
  for (let i = 0; i < count; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = Math.floor(((x >>> 0) / 2 ** 32) * limit);
  }
  return out;
}

export async function benchIntervalMap(): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  let sink = 0;
  const m = tenThousandRanges(new IntervalMap());

  // Convert a 1 TiB range above the 10k ranges to private and back (each call really changes it).
  const far = 2 ** 30;
  const tib = await time(
    'set 1 TiB beside 10k ranges',
    () => {
      sink += Number(m.set(far, far + TIB_PAGES, PRIVATE));
      sink += Number(m.set(far, far + TIB_PAGES, 0));
    },
    { batch: 2 },
  );
  rows.push({
    area: AREA,
    name: 'set a 1 TiB range (2^28 pages), map holding 10k ranges',
    value: tib.nsPerOp / 1e3,
    unit: 'µs',
    spread: tib.spread,
    samples: tib.samples,
    target: { op: '<=', value: 100 },
  });

  // The same 1 TiB set, now over all 10k ranges: O(log n + k) with k = 10 000 ranges removed.
  const swallowMap = new IntervalMap();
  const swallow = await time(
    'set 1 TiB over 10k ranges',
    () => {
      sink += Number(swallowMap.set(0, TIB_PAGES, PRIVATE));
    },
    { setup: () => void tenThousandRanges(swallowMap), timeMs: 1000, iterations: 20 },
  );
  rows.push({
    area: AREA,
    name: 'set a 1 TiB range over all 10k ranges (10k merged away)',
    value: swallow.nsPerOp / 1e3,
    unit: 'µs',
    spread: swallow.spread,
    samples: swallow.samples,
    target: { op: '<=', value: 100 },
    note: 'cost grows with the ranges replaced, not the pages',
  });

  // Single-page conversions at random pages of the 10k-range area, alternating private/shared:
  // a mix of splits, merges, extensions and no-ops.
  tenThousandRanges(m);
  const pts = randomPoints(1 << 16, RANGES * STRIDE);
  const SETS = 4096;
  let at = 0;
  const single = await time(
    'single-page set',
    () => {
      const base = at;
      at = (at + SETS) & 0xffff;
      let changed = 0; // a local count: a captured one would box a number per iteration
      for (let i = 0; i < SETS; i++) {
        const p = pts[base + i] as number;
        if (m.set(p, p + 1, (i & 1) === 0 ? PRIVATE : 0)) changed++;
      }
      sink += changed;
    },
    { batch: SETS },
  );
  rows.push({
    area: AREA,
    name: 'single-page (4 KiB) sets, ~10k ranges',
    value: single.opsPerSec,
    unit: 'sets/s',
    spread: single.spread,
    samples: single.samples,
    target: { op: '>=', value: 500e3 },
  });

  const GETS = 4096;
  const get = await time(
    'get',
    () => {
      const base = at;
      at = (at + GETS) & 0xffff;
      let s = 0;
      for (let i = 0; i < GETS; i++) s += m.get(pts[base + i] as number);
      sink += s;
    },
    { batch: GETS },
  );
  rows.push({
    area: AREA,
    // The range count depends on how many single-page sets ran: it goes in the note, so the
    // row keeps one name across runs (bench/run.ts merges rows by name).
    name: 'random get, map after the single-page sets',
    value: get.opsPerSec,
    unit: 'gets/s',
    spread: get.spread,
    samples: get.samples,
    note: `${m.rangeCount} ranges`,
  });

  if (sink === Math.PI) console.log(sink); // keep the loops observable
  return rows;
}

if (isMain(import.meta.url)) printRows(await benchIntervalMap());
