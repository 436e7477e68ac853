import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { Pfn, PgOff } from '../units.js';
import { PageCache } from './filemap.js';

const I = (n: number) => n as PgOff;
const P = (n: number) => n as Pfn;

describe('page cache radix tree', () => {
  it('stores, looks up and erases', () => {
    const c = new PageCache();
    expect(c.lookup(I(0))).toBe(-1);
    expect(c.store(I(5), P(50))).toBe(-1);
    expect(c.store(I(5), P(51))).toBe(50);
    expect(c.lookup(I(5))).toBe(51);
    expect(c.nrpages).toBe(1);
    expect(c.erase(I(5))).toBe(51);
    expect(c.erase(I(5))).toBe(-1);
    expect(c.nrpages).toBe(0);
    c.checkInvariants();
  });

  it('grows in height for large indices (up to a 2^63-byte file) and keeps small ones', () => {
    const c = new PageCache();
    c.store(I(1), P(1));
    const big = 2 ** 51 - 1;
    c.store(I(big), P(2));
    c.store(I(2 ** 31 + 7), P(3));
    expect(c.lookup(I(1))).toBe(1);
    expect(c.lookup(I(big))).toBe(2);
    expect(c.lookup(I(2 ** 31 + 7))).toBe(3);
    expect(c.lookup(I(2 ** 31 + 8))).toBe(-1);
    c.checkInvariants();
    c.erase(I(big));
    c.erase(I(1));
    c.erase(I(2 ** 31 + 7));
    expect(c.metadataBytes()).toBe(0);
  });

  it('walks only present pages, in order, within the range', () => {
    const c = new PageCache();
    for (const i of [3, 64, 65, 4096, 262143, 1_000_000]) c.store(I(i), P(i + 1));
    const seen: number[] = [];
    c.forEach(4, 300_000, (i, p) => {
      expect(p).toBe(i + 1);
      seen.push(i);
    });
    expect(seen).toEqual([64, 65, 4096, 262143]);
    expect(c.countRange(0, Number.MAX_SAFE_INTEGER)).toBe(6);
    expect(c.collect(65, 66)).toEqual({ indices: [65], pfns: [66] });
  });

  it('frees emptied nodes', () => {
    const c = new PageCache();
    for (let i = 0; i < 10_000; i++) c.store(I(i * 7), P(i));
    const used = c.metadataBytes();
    for (let i = 0; i < 10_000; i++) c.erase(I(i * 7));
    expect(used).toBeGreaterThan(0);
    expect(c.metadataBytes()).toBe(0);
    c.checkInvariants();
  });

  it('costs about 4 bytes per page when dense', () => {
    const c = new PageCache();
    for (let i = 0; i < 262144; i++) c.store(I(i), P(i));
    expect(c.metadataBytes() / 262144).toBeLessThan(4.2);
  });

  it('property: behaves like a Map under random store/erase, walks agree', () => {
    const idx = fc.oneof(fc.nat({ max: 5000 }), fc.nat({ max: 2 ** 40 }));
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.boolean(), idx, fc.nat({ max: 1e6 })), { maxLength: 400 }), (ops) => {
        const c = new PageCache();
        const ref = new Map<number, number>();
        for (const [store, i, p] of ops) {
          if (store) {
            expect(c.store(I(i), P(p))).toBe(ref.get(i) ?? -1);
            ref.set(i, p);
          } else {
            expect(c.erase(I(i))).toBe(ref.get(i) ?? -1);
            ref.delete(i);
          }
        }
        expect(c.nrpages).toBe(ref.size);
        for (const [i, p] of ref) expect(c.lookup(I(i))).toBe(p);
        const walked: [number, number][] = [];
        c.forEach(0, Number.MAX_SAFE_INTEGER, (i, p) => walked.push([i, p]));
        expect(walked).toEqual([...ref.entries()].sort((a, b) => a[0] - b[0]));
        c.checkInvariants();
      }),
      { numRuns: 200 },
    );
  });
  it('removeRange drops what take accepts in one walk, keeps what it refuses, frees emptied nodes', () => {
    const c = new PageCache();
    for (let i = 0; i < 5000; i++) c.store(I(i), P(i + 10));
    c.store(I(2 ** 40), P(7));
    const seen: number[] = [];
    // Keep every 1000th page: those stay, with their nodes.
    const n = c.removeRange(100, 4900, (i, p) => {
      expect(p).toBe(i + 10);
      seen.push(i);
      return i % 1000 !== 0;
    });
    expect(seen.length).toBe(4800);
    expect(seen[0]).toBe(100);
    expect(seen[seen.length - 1]).toBe(4899);
    expect(n).toBe(4800 - 4);
    expect(c.nrpages).toBe(5001 - n);
    for (const i of [99, 1000, 2000, 3000, 4000, 4900, 4999]) expect(c.lookup(I(i))).toBe(i + 10);
    for (const i of [100, 999, 1001, 4899]) expect(c.lookup(I(i))).toBe(-1);
    expect(c.lookup(I(2 ** 40))).toBe(7);
    c.checkInvariants();
    expect(c.removeRange(0, Number.MAX_SAFE_INTEGER, () => true)).toBe(5001 - n);
    expect(c.nrpages).toBe(0);
    expect(c.metadataBytes()).toBe(0);
    // Still usable, and lookups next to a freed leaf miss.
    expect(c.lookup(I(101))).toBe(-1);
    expect(c.store(I(101), P(1))).toBe(-1);
    expect(c.lookup(I(101))).toBe(1);
    c.checkInvariants();
  });

  it('property: lookups right after stores, erases and range removals see the current state', () => {
    // Small indices share leaves, so the remembered leaf is hit, and freed, often.
    const idx = fc.oneof(fc.nat({ max: 300 }), fc.nat({ max: 70_000 }));
    const op = fc.oneof(
      fc.record({ k: fc.constant('store' as const), i: idx, p: fc.nat({ max: 1e6 }) }),
      fc.record({ k: fc.constant('erase' as const), i: idx, p: fc.constant(0) }),
      fc.record({ k: fc.constant('lookup' as const), i: idx, p: fc.constant(0) }),
      fc.record({ k: fc.constant('remove' as const), i: idx, p: fc.nat({ max: 400 }) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 300 }), (ops) => {
        const c = new PageCache();
        const ref = new Map<number, number>();
        for (const { k, i, p } of ops) {
          if (k === 'store') {
            expect(c.store(I(i), P(p))).toBe(ref.get(i) ?? -1);
            ref.set(i, p);
          } else if (k === 'erase') {
            expect(c.erase(I(i))).toBe(ref.get(i) ?? -1);
            ref.delete(i);
          } else if (k === 'remove') {
            // Remove [i, i + p) except odd pfns.
            let want = 0;
            for (const [j, q] of [...ref]) {
              if (j >= i && j < i + p && q % 2 === 0) {
                ref.delete(j);
                want++;
              }
            }
            expect(c.removeRange(i, i + p, (_j, q) => q % 2 === 0)).toBe(want);
          }
          expect(c.lookup(I(i))).toBe(ref.get(i) ?? -1);
          expect(c.lookup(I(i + 1))).toBe(ref.get(i + 1) ?? -1);
        }
        expect(c.nrpages).toBe(ref.size);
        for (const [i, p] of ref) expect(c.lookup(I(i))).toBe(p);
        c.checkInvariants();
        if (ref.size === 0) expect(c.metadataBytes()).toBe(0);
      }),
      { numRuns: 200 },
    );
  });
});
