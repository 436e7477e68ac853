import { describe, expect, it } from 'vitest';
import { KvmError } from './errno.js';
import * as u from './units.js';

describe('units', () => {
  it('converts gpa ↔ gfn without bitwise operators above 2^32', () => {
    const gpa = u.asGpa(2 ** 51 + 3 * 4096 + 5);
    expect(u.gpaToGfn(gpa)).toBe(2 ** 39 + 3);
    expect(u.gfnToGpa(u.asGfn(2 ** 39 + 3))).toBe(2 ** 51 + 3 * 4096);
    expect(u.gpaPageOffset(gpa)).toBe(5);
  });

  it('checked casts reject negatives, fractions and unsafe integers', () => {
    expect(() => u.asGfn(-1)).toThrow(TypeError);
    expect(() => u.asHva(1.5)).toThrow(/hva 1.5/);
    expect(() => u.asPfn(2 ** 53)).toThrow(TypeError);
  });

  it('u64AddOverflows is exact at the boundary', () => {
    expect(u.u64AddOverflows(2 ** 63, 2 ** 63 - 1)).toBe(true); // rounds to 2^64 as floats
    expect(u.u64AddOverflows(2n ** 63n, 2n ** 63n - 1n)).toBe(false);
    expect(u.u64AddOverflows(2n ** 64n - 4096n, 4096)).toBe(true);
    expect(u.u64AddOverflows(4096, 4096)).toBe(false);
  });

  it('asLoff wraps values ≥ 2^63 to negative', () => {
    expect(u.asLoff(2 ** 63, 'x')).toBe(-(2 ** 63));
    expect(u.asLoff(5, 'x')).toBe(5);
    expect(() => u.asLoff(0.5, 'x')).toThrow(TypeError);
  });

  it('page alignment helpers and level sizes', () => {
    expect([u.pageAligned(8192), u.pageAligned(8193)]).toEqual([true, false]);
    expect(u.pageAlignUp(1)).toBe(4096);
    expect(u.pagesPerLevel(u.PG_LEVEL_2M)).toBe(512);
    expect(u.pagesPerLevel(u.PG_LEVEL_1G)).toBe(262144);
    expect(u.utf8Length('é€😀')).toBe(2 + 3 + 4);
  });
});

describe('KvmError', () => {
  it('carries the errno name, number, call, rule, and says them in the message', () => {
    const e = new KvmError('EINVAL', 'memory_size 4097 is not a multiple of 4096', {
      call: 'KVM_SET_USER_MEMORY_REGION2',
      rule: 'MR-5',
    });
    expect(e.errno).toBe(22);
    expect(e.message).toBe(
      'KVM_SET_USER_MEMORY_REGION2: EINVAL: memory_size 4097 is not a multiple of 4096 (MR-5)',
    );
    expect(new KvmError('E200', 'x', { call: 'ioctl' }).errno).toBe(200);
  });
});
