/**
 * Host memory model figures (issue: foundation): frames allocated and zeroed per second (as a
 * ratio to `new Uint8Array(4096).fill(0)` in the same run), page-cache lookups per second on a
 * 1 GiB file, and fallocate of 1 GiB of a memfd.
 *
 * Run alone: `npx tsx bench/mm.bench.ts`.
 */
import { createHost } from '../src/core/host.js';
import type { PageCache } from '../src/core/mm/filemap.js';
import { PageAllocator } from '../src/core/mm/page_alloc.js';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE } from '../src/core/uapi.js';
import type { Pfn, PgOff } from '../src/core/units.js';
import { type BenchRow, isMain, printRows, time } from './harness.js';

const AREA = 'host memory (src/core/mm)';
const GiB = 2 ** 30;
const PAGES_1G = GiB / 4096;

export async function benchMm(): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];

  // Reference: a fresh 4 KiB typed array, zero-filled.
  let sink = 0;
  const BATCH = 4096;
  const ref = await time(
    'new Uint8Array(4096).fill(0)',
    () => {
      for (let i = 0; i < BATCH; i++) {
        const b = new Uint8Array(4096).fill(0);
        sink += b[i & 4095] as number;
      }
    },
    { batch: BATCH },
  );

  // Frames: allocate a frame whose previous contents were dirty (so it is zeroed on hand-out),
  // write one byte, free it. One frame stays allocated so the section buffer is kept.
  const a = new PageAllocator();
  const keep = a.alloc(1) as Pfn;
  a.fill(keep, 0, 1, 1);
  const frames = await time(
    'alloc + zero + free a frame',
    () => {
      for (let i = 0; i < BATCH; i++) {
        const p = a.alloc(1) as Pfn;
        a.fill(p, 0, 1, 1);
        a.put(p);
      }
    },
    { batch: BATCH },
  );
  rows.push({
    area: AREA,
    name: 'frames allocated and zeroed',
    value: frames.opsPerSec,
    unit: 'frames/s',
    spread: frames.spread,
    target: { op: '>=', value: 1e6 },
    ratio: { value: frames.opsPerSec / ref.opsPerSec, to: 'new Uint8Array(4096).fill(0)' },
  });
  rows.push({
    area: AREA,
    name: 'reference: new Uint8Array(4096).fill(0)',
    value: ref.opsPerSec,
    unit: 'arrays/s',
    spread: ref.spread,
  });

  // Fresh frames (never dirty: lazily created sections need no zeroing).
  const fresh = await time(
    'allocate 262144 fresh frames (1 GiB)',
    () => {
      const b = new PageAllocator();
      for (let i = 0; i < PAGES_1G; i++) b.alloc(1);
    },
    { batch: PAGES_1G, timeMs: 600, iterations: 5 },
  );
  rows.push({
    area: AREA,
    name: 'fresh frames allocated (1 GiB, untouched)',
    value: fresh.opsPerSec,
    unit: 'frames/s',
    spread: fresh.spread,
    target: { op: '>=', value: 1e6 },
  });

  // Page-cache lookups on a 1 GiB memfd.
  const h = createHost();
  const fd = h.memfdCreate('bench');
  h.fallocate(fd, 0, 0, GiB);
  const cache = h.kernel.fds.get(fd, 'bench').inode.mapping as PageCache;
  const N = 1 << 20;
  const idx = new Float64Array(N);
  let seed = 12345;
  for (let i = 0; i < N; i++) {
    seed = (seed * 1103515245 + 12345) >>> 0;
    idx[i] = seed % PAGES_1G;
  }
  const rnd = await time(
    'page cache lookup, random, 1 GiB file',
    () => {
      let s = 0;
      for (let i = 0; i < N; i++) s += cache.lookup(idx[i] as PgOff);
      sink += s;
    },
    { batch: N },
  );
  rows.push({
    area: AREA,
    name: 'page-cache lookups, random, 1 GiB file',
    value: rnd.opsPerSec,
    unit: 'lookups/s',
    spread: rnd.spread,
    target: { op: '>=', value: 20e6 },
  });
  const seq = await time(
    'page cache lookup, sequential, 1 GiB file',
    () => {
      let s = 0;
      for (let i = 0; i < PAGES_1G; i++) s += cache.lookup(i as PgOff);
      sink += s;
    },
    { batch: PAGES_1G },
  );
  rows.push({
    area: AREA,
    name: 'page-cache lookups, sequential, 1 GiB file',
    value: seq.opsPerSec,
    unit: 'lookups/s',
    spread: seq.spread,
    target: { op: '>=', value: 20e6 },
  });
  rows.push({
    area: AREA,
    name: 'page-cache metadata per cached page (dense 1 GiB)',
    value: cache.metadataBytes() / PAGES_1G,
    unit: 'B/page',
  });
  h.close(fd);

  // fallocate of 1 GiB (and the punch that frees it).
  const h2 = createHost();
  const fd2 = h2.memfdCreate('falloc');
  const fa = await time(
    'fallocate 1 GiB + punch 1 GiB',
    () => {
      h2.fallocate(fd2, 0, 0, GiB);
      h2.fallocate(fd2, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, GiB);
    },
    { timeMs: 1500, iterations: 5 },
  );
  rows.push({
    area: AREA,
    name: 'fallocate 1 GiB of a memfd, then punch it',
    value: fa.nsPerOp / 1e6,
    unit: 'ms',
    spread: fa.spread,
  });
  h2.dispose();
  h.dispose();
  if (sink === Math.PI) console.log(sink); // keep the loops observable
  return rows;
}

if (isMain(import.meta.url)) printRows(await benchMm());
