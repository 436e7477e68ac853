import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { InvariantError } from '../errno.js';
import { isPfn, type Pfn } from '../units.js';
import { OWNER_ANON, PageAllocator, SECTION_FRAMES } from './page_alloc.js';

describe('page allocator', () => {
  it('hands out distinct frames with refcount 1 and frees them on the last put', () => {
    const a = new PageAllocator();
    const p = a.alloc(7);
    const q = a.alloc(7);
    expect(isPfn(p) && isPfn(q)).toBe(true);
    expect(p).not.toBe(q);
    expect(a.refcount[p]).toBe(1);
    expect(a.ownerOf(p as Pfn)).toBe(7);
    a.get(p as Pfn);
    a.put(p as Pfn);
    expect(a.stats.allocated).toBe(2);
    a.put(p as Pfn);
    a.put(q as Pfn);
    expect(a.stats.allocated).toBe(0);
    expect(a.refcount[p]).toBe(0);
  });

  it('zeroes a frame before handing it out again', () => {
    const a = new PageAllocator();
    const p = a.alloc(1) as Pfn;
    a.fill(p, 0, 4096, 0xab);
    const keep = a.alloc(1) as Pfn; // keeps the section's buffer alive
    a.put(p);
    const again = a.alloc(1) as Pfn;
    expect(again).toBe(p);
    const buf = new Uint8Array(4096);
    a.read(again, 0, buf, 0, 4096);
    expect(buf.every((b) => b === 0)).toBe(true);
    expect(a.stats.zeroed).toBe(1);
    a.put(again);
    a.put(keep);
  });

  it('releases a section buffer when its last frame is freed, and reads zeros without one', () => {
    const a = new PageAllocator();
    const p = a.alloc(1) as Pfn;
    a.fill(p, 0, 16, 0xff);
    expect(a.stats.residentSections).toBe(1);
    a.put(p);
    expect(a.stats.residentSections).toBe(0);
    const q = a.alloc(1) as Pfn;
    const buf = new Uint8Array(16).fill(9);
    a.read(q, 0, buf, 0, 16);
    expect([...buf]).toEqual(new Array(16).fill(0));
    expect(a.stats.residentSections).toBe(0);
    a.put(q);
  });

  it('fails with -1 at the host RAM limit and counts the failure', () => {
    const a = new PageAllocator({ ramLimitBytes: 3 * 4096 });
    const got = [a.alloc(1), a.alloc(1), a.alloc(1)];
    expect(got.every(isPfn)).toBe(true);
    expect(a.alloc(1)).toBe(-1);
    expect(a.stats.allocFailures).toBe(1);
    a.put(got[0] as Pfn);
    expect(isPfn(a.alloc(1))).toBe(true);
  });

  it('allocates naturally aligned contiguous huge blocks and frees them whole', () => {
    const a = new PageAllocator();
    a.alloc(1); // make pfn space unaligned on purpose
    const b9 = a.allocHuge(9, 5) as Pfn;
    expect(b9 % 512).toBe(0);
    expect(a.orderOf(b9)).toBe(9);
    const b18 = a.allocHuge(18, 5) as Pfn;
    expect(b18 % 262144).toBe(0);
    expect(a.orderOf(b18)).toBe(18);
    expect(a.stats.allocated).toBe(1 + 512 + 262144);
    for (let i = 0; i < 511; i++) a.put((b9 + i) as Pfn);
    expect(a.stats.allocated).toBe(1 + 512 + 262144); // the folio is not free until every page is
    a.put((b9 + 511) as Pfn);
    expect(a.stats.allocated).toBe(1 + 262144);
    const again = a.allocHuge(9, 5);
    expect(again).toBe(b9);
  });

  it('refuses a huge block that would exceed the limit', () => {
    const a = new PageAllocator({ ramLimitBytes: 511 * 4096 });
    expect(a.allocHuge(9, 1)).toBe(-1);
  });

  it('page lock: trylock, waiters run in order on unlock', () => {
    const a = new PageAllocator();
    const p = a.alloc(1) as Pfn;
    expect(a.trylock(p)).toBe(true);
    expect(a.trylock(p)).toBe(false);
    const order: number[] = [];
    a.waitUnlocked(p, () => order.push(1));
    a.waitUnlocked(p, () => order.push(2));
    expect(order).toEqual([]);
    expect(a.lockWaiterCount).toBe(1);
    a.unlock(p);
    expect(order).toEqual([1, 2]);
    expect(a.lockWaiterCount).toBe(0);
    a.waitUnlocked(p, () => order.push(3)); // not locked: runs at once
    expect(order).toEqual([1, 2, 3]);
    a.put(p);
  });

  it('warns (throws under test) on a put of a free frame and on freeing a locked frame', () => {
    const a = new PageAllocator();
    const p = a.alloc(OWNER_ANON) as Pfn;
    a.put(p);
    expect(() => a.put(p)).toThrow(InvariantError);
    const q = a.alloc(OWNER_ANON) as Pfn;
    a.trylock(q);
    expect(() => a.put(q)).toThrow(/locked/);
  });

  it('reserved frames are never freed by put', () => {
    const a = new PageAllocator();
    const z = a.allocReserved(-2) as Pfn;
    a.get(z);
    a.put(z);
    expect(() => a.put(z)).toThrow(/reserved/);
    a.freeReserved(z);
    expect(a.stats.allocated).toBe(0);
  });

  it('framesByOwner counts allocated frames per owner', () => {
    const a = new PageAllocator();
    a.alloc(3);
    a.alloc(3);
    a.alloc(OWNER_ANON);
    expect(a.framesByOwner()).toEqual(
      new Map([
        [3, 2],
        [OWNER_ANON, 1],
      ]),
    );
  });

  it('keeps 5 bytes of metadata per frame', () => {
    const a = new PageAllocator();
    for (let i = 0; i < SECTION_FRAMES; i++) a.alloc(1);
    expect(a.frameMetadataBytes() / a.refcount.length).toBe(5);
  });

  it('grows its per-frame arrays by 1/8, not to the next power of two', () => {
    const a = new PageAllocator();
    const frames = 262144 + 3 * SECTION_FRAMES; // 1 GiB and a little: doubling would reserve 2^19
    for (let i = 0; i < frames; i++) a.alloc(1);
    expect(a.refcount.length).toBeGreaterThanOrEqual(a.frameCount);
    expect(a.refcount.length).toBeLessThanOrEqual(Math.ceil(a.frameCount * 1.125) + 16 * SECTION_FRAMES);
    // Everything the allocator holds, free stack and section arrays included, per frame in use.
    expect(a.metadataBytes() / frames).toBeLessThan(5 * 1.125 + 0.5);
  });

  it('tracks owners through alloc, free and reuse of frames and owner ids', () => {
    const a = new PageAllocator();
    const p = a.alloc(41) as Pfn;
    const q = a.alloc(42) as Pfn;
    const r = a.alloc(41) as Pfn;
    expect([a.ownerOf(p), a.ownerOf(q), a.ownerOf(r)]).toEqual([41, 42, 41]);
    a.put(p);
    expect(a.ownerOf(p)).toBe(0);
    expect(a.framesByOwner()).toEqual(
      new Map([
        [41, 1],
        [42, 1],
      ]),
    );
    a.put(r); // owner 41 holds nothing now: its id is recycled
    expect(a.framesByOwner()).toEqual(new Map([[42, 1]]));
    const s = a.alloc(43) as Pfn;
    const t = a.alloc(41) as Pfn;
    expect([a.ownerOf(q), a.ownerOf(s), a.ownerOf(t)]).toEqual([42, 43, 41]);
    expect(a.framesByOwner()).toEqual(
      new Map([
        [42, 1],
        [43, 1],
        [41, 1],
      ]),
    );
    const h = a.allocHuge(9, OWNER_ANON) as Pfn;
    expect(a.ownerOf((h + 511) as Pfn)).toBe(OWNER_ANON);
    expect(a.framesByOwner().get(OWNER_ANON)).toBe(512);
    for (let i = 0; i < 512; i++) a.put((h + i) as Pfn);
    expect(a.framesByOwner().has(OWNER_ANON)).toBe(false);
  });

  it('keeps owners apart past 65535 owners holding frames at once', () => {
    const a = new PageAllocator();
    const n = 70000;
    const pfns: Pfn[] = [];
    for (let o = 1; o <= n; o++) pfns.push(a.alloc(o) as Pfn);
    for (let o = 1; o <= n; o += 997) expect(a.ownerOf(pfns[o - 1] as Pfn)).toBe(o);
    expect(a.ownerOf(pfns[n - 1] as Pfn)).toBe(n);
    expect(a.framesByOwner().size).toBe(n);
    for (const p of pfns) a.put(p);
    expect(a.framesByOwner().size).toBe(0);
    expect(a.stats.allocated).toBe(0);
  });

  it('property: allocated count equals live frames under random alloc/put', () => {
    fc.assert(
      fc.property(fc.array(fc.boolean(), { maxLength: 300 }), (ops) => {
        const a = new PageAllocator({ ramLimitBytes: 64 * 4096 });
        const live: Pfn[] = [];
        for (const doAlloc of ops) {
          if (doAlloc || live.length === 0) {
            const p = a.alloc(1);
            if (live.length >= 64) expect(p).toBe(-1);
            else live.push(p as Pfn);
          } else {
            a.put(live.pop() as Pfn);
          }
          expect(a.stats.allocated).toBe(live.length);
          expect(new Set(live).size).toBe(live.length);
        }
      }),
    );
  });
});
