/**
 * Tests of the memslot structures themselves: lpage_info computed on demand equals the arrays
 * kvm_alloc_memslot_metadata fills at creation (HP-2), before and after they are materialized,
 * and the by-id table over the VM's slot table.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { KvmMemorySlot, KvmMemslots } from './memslot.js';

/** kvm_alloc_memslot_metadata's lpage_info, written out eagerly (the reference). */
function referenceLpageInfo(baseGfn: number, npages: number, hva: number): [number[], number[]] {
  const ugfn = Math.floor(hva / 4096);
  const out: number[][] = [];
  for (const n of [512, 262144]) {
    const first = Math.floor(baseGfn / n);
    const last = Math.floor((baseGfn + npages - 1) / n);
    const info = new Array<number>(last - first + 1).fill(0);
    if (baseGfn % n !== 0) info[0] = (info[0] as number) + 1;
    if ((baseGfn + npages) % n !== 0) info[info.length - 1] = (info[info.length - 1] as number) + 1;
    if ((((baseGfn - ugfn) % n) + n) % n !== 0)
      for (let i = 0; i < info.length; i++) info[i] = (info[i] as number) + 1;
    out.push(info);
  }
  return out as [number[], number[]];
}

describe('KvmMemorySlot lpage_info (HP-2)', () => {
  const slotArb = fc.record({
    base: fc.oneof(fc.nat({ max: 2 ** 20 }), fc.constantFrom(0, 511, 512, 262143, 262144, 2 ** 36 - 7)),
    npages: fc.oneof(fc.integer({ min: 1, max: 600_000 }), fc.constantFrom(1, 511, 512, 513, 262144)),
    hvaPage: fc.oneof(fc.nat({ max: 2 ** 30 }), fc.constantFrom(0, 1, 512, 262144)),
  });

  it('computed on demand: lpageAllowed and lpageInfo match the arrays filled at creation', () => {
    fc.assert(
      fc.property(
        slotArb,
        fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 20 }),
        (c, at) => {
          const hva = c.hvaPage * 4096;
          const ref = referenceLpageInfo(c.base, c.npages, hva);
          const lazy = new KvmMemorySlot(0, 1, c.base, c.npages, 0, hva);
          const eager = new KvmMemorySlot(0, 1, c.base, c.npages, 0, hva);
          const gfns = [
            c.base,
            c.base + c.npages - 1,
            ...at.map((x) => c.base + Math.floor(x * (c.npages - 1))),
          ];
          // Before anything is materialized …
          const before = gfns.flatMap((g) => [lazy.lpageAllowed(g, 2), lazy.lpageAllowed(g, 3)]);
          // … and from the arrays.
          expect([...(eager.lpageInfo[0] as Int32Array)]).toEqual(ref[0]);
          expect([...(eager.lpageInfo[1] as Int32Array)]).toEqual(ref[1]);
          const after = gfns.flatMap((g) => [eager.lpageAllowed(g, 2), eager.lpageAllowed(g, 3)]);
          const expected = gfns.flatMap((g) => [
            ref[0][eager.lpageIndex(g, 2)] === 0,
            ref[1][eager.lpageIndex(g, 3)] === 0,
          ]);
          expect(before).toEqual(expected);
          expect(after).toEqual(expected);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('a write to the materialized arrays counts (disallow_lpage and the mixed flag)', () => {
    const s = new KvmMemorySlot(0, 1, 0, 4 * 512, 0, 0);
    expect(s.lpageAllowed(512, 2)).toBe(true);
    (s.lpageInfo[0] as Int32Array)[1] = 1;
    expect(s.lpageAllowed(512, 2)).toBe(false);
    expect(s.lpageAllowed(1024, 2)).toBe(true);
    (s.lpageMixed[0] as Uint8Array)[2] = 1;
    expect(s.lpageAllowed(1024, 2)).toBe(false);
    expect([...(s.lpageMixed[0] as Uint8Array)]).toEqual([0, 0, 1, 0]);
  });
});

describe('SlotsById over a shared slot table', () => {
  it('two address spaces share the table; handles follow from ids; values() is in id order', () => {
    const table: (KvmMemorySlot | null)[] = [];
    const as0 = new KvmMemslots(0, table, 2);
    const as1 = new KvmMemslots(1, table, 2);
    const a = new KvmMemorySlot(0, 5, 0, 1, 0, 0);
    const b = new KvmMemorySlot(1, 5, 0, 1, 0, 0);
    const c = new KvmMemorySlot(0, 300, 10, 1, 0, 0);
    const d = new KvmMemorySlot(0, 2, 20, 1, 0, 0);
    as0.byId.set(5, a).set(300, c).set(2, d);
    as1.byId.set(5, b);
    expect(as0.byId.size).toBe(3);
    expect(as1.byId.size).toBe(1);
    expect(as0.byId.get(5)).toBe(a);
    expect(as1.byId.get(5)).toBe(b);
    expect(as1.byId.get(300)).toBeUndefined();
    expect(as0.byId.get(40000)).toBeUndefined();
    expect(table[as0.byId.handleOf(300)]).toBe(c);
    expect(table[as1.byId.handleOf(5)]).toBe(b);
    expect([...as0.byId.values()]).toEqual([d, a, c]);
    // The table grew densely (no holes that would make the array sparse).
    expect(table.every((e) => e === null || e instanceof KvmMemorySlot)).toBe(true);
    expect(Object.keys(table).length).toBe(table.length);
    expect(as0.byId.delete(5)).toBe(true);
    expect(as0.byId.delete(5)).toBe(false);
    expect(as0.byId.size).toBe(2);
    expect(as1.byId.get(5)).toBe(b);
    // Replacing an entry keeps the count.
    as0.byId.set(2, a);
    expect(as0.byId.size).toBe(2);
    expect(as0.byId.get(2)).toBe(a);
  });
});
