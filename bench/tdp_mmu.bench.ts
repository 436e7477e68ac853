/**
 * TDP MMU table figures (src/core/mmu/tdp_mmu.ts): installing 1 GiB of 4 KiB leaves, lookups in a
 * populated 1 GiB (the guest access path after a software-TLB miss) — random, sequential, high
 * in the 52-bit space, and over 2 MiB leaves — zapping and write-protecting 1 GiB, and the table
 * bytes per mapped 4 KiB page. Random lookups are also given as a ratio to `Map.get` on a
 * Map of the same 262144 gfns, measured in the same run.
 *
 * Run alone: `npx tsx bench/tdp_mmu.bench.ts`.
 */
import { SPTE_HOST_WRITABLE, SPTE_WRITABLE } from '../src/core/mmu/spte.js';
import { TdpMmu } from '../src/core/mmu/tdp_mmu.js';
import { type BenchRow, isMain, printRows, time } from './harness.js';

const AREA = 'TDP MMU tables (src/core/mmu)';
const PAGES_1G = 262_144;
/** Lookups per timed call. */
const BATCH = 1 << 20;
const RW = SPTE_WRITABLE | SPTE_HOST_WRITABLE;

/** A TdpMmu with [base, base + 1 GiB) mapped by level-`level` leaves, pfn = gfn - base. */
function populated(level: 1 | 2 | 3, base = 0): TdpMmu {
  const mmu = new TdpMmu();
  const step = level === 1 ? 1 : level === 2 ? 512 : PAGES_1G;
  for (let off = 0; off < PAGES_1G; off += step) mmu.map(base + off, level, off, RW);
  return mmu;
}

/** BATCH gfns in [base, base + 1 GiB): random (xorshift32, fixed seed, so runs compare) or sequential. */
function gfns(random: boolean, base = 0): Float64Array {
  const out = new Float64Array(BATCH);
  let x = 0x9e3779b9;
  for (let i = 0; i < BATCH; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = base + (random ? (x >>> 0) % PAGES_1G : i % PAGES_1G);
  }
  return out;
}

let sink = 0;

function lookupAll(mmu: TdpMmu, batch: Float64Array): void {
  let s = 0;
  for (let i = 0; i < batch.length; i++) s += mmu.lookup(batch[i] ?? 0);
  sink += s;
}

/** Run the TDP MMU benchmarks; one row per figure. */
export async function benchTdpMmu(): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const LOOKUP_TARGET = { op: '>=', value: 1e7 } as const;

  const install = await time('map 1 GiB', () => {
    const mmu = new TdpMmu();
    for (let gfn = 0; gfn < PAGES_1G; gfn++) mmu.map(gfn, 1, gfn, RW);
    sink += mmu.stats().leaves4k;
  });
  rows.push({
    area: AREA,
    name: 'map 262144 4K leaves (1 GiB), fresh tables',
    value: install.nsPerOp / 1e6,
    unit: 'ms',
    spread: install.spread,
    samples: install.samples,
    note: `${((PAGES_1G / install.nsPerOp) * 1e3).toFixed(1)} M maps/s`,
  });

  const dense = populated(1);
  const random = gfns(true);

  // Reference: the naive structure, a Map from gfn to pfn, on the same random gfns.
  const naive = new Map<number, number>();
  for (let gfn = 0; gfn < PAGES_1G; gfn++) naive.set(gfn, gfn);
  const ref = await time(
    'Map.get',
    () => {
      let s = 0;
      for (let i = 0; i < BATCH; i++) s += naive.get(random[i] ?? 0) ?? -1;
      sink += s;
    },
    { batch: BATCH },
  );

  const lookups: [string, TdpMmu, Float64Array][] = [
    ['lookup, random gfn, 1 GiB of 4K leaves', dense, random],
    ['lookup, sequential gfn, 1 GiB of 4K leaves', dense, gfns(false)],
    ['lookup, random gfn, 1 GiB of 4K leaves at gfn 2^39', populated(1, 2 ** 39), gfns(true, 2 ** 39)],
    ['lookup, random gfn, 1 GiB of 2M leaves', populated(2), random],
  ];
  for (const [name, mmu, batch] of lookups) {
    const t = await time(name, () => lookupAll(mmu, batch), { batch: BATCH });
    rows.push({
      area: AREA,
      name,
      value: t.opsPerSec,
      unit: 'lookups/s',
      spread: t.spread,
      samples: t.samples,
      target: LOOKUP_TARGET,
      ...(batch === random ? { ratio: { value: t.opsPerSec / ref.opsPerSec, to: 'Map.get' } } : {}),
    });
  }

  let victim = new TdpMmu();
  const fresh = (): void => {
    victim = populated(1);
  };
  const zap = await time(
    'zapRange',
    () => {
      sink += victim.zapRange(0, PAGES_1G);
    },
    { setup: fresh },
  );
  rows.push({
    area: AREA,
    name: 'zapRange 1 GiB of 4K leaves (frees 516 tables)',
    value: zap.nsPerOp / 1e6,
    unit: 'ms',
    spread: zap.spread,
    samples: zap.samples,
  });
  const wrprot = await time(
    'writeProtectRange',
    () => {
      sink += victim.writeProtectRange(0, PAGES_1G);
    },
    { setup: fresh },
  );
  rows.push({
    area: AREA,
    name: 'writeProtectRange 1 GiB of 4K leaves',
    value: wrprot.nsPerOp / 1e6,
    unit: 'ms',
    spread: wrprot.spread,
    samples: wrprot.samples,
  });

  const s = dense.stats();
  rows.push({
    area: AREA,
    name: 'table bytes per mapped 4K page, dense 1 GiB',
    value: s.bytes / s.leaves4k,
    unit: 'B/page',
    target: { op: '<=', value: 6 },
    note: `${s.tables} tables, ${s.bytes} bytes of pool`,
  });

  if (sink === 0.5) console.log('unreachable: keeps the results alive');
  return rows;
}

if (isMain(import.meta.url)) printRows(await benchTdpMmu());
