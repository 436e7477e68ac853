import { afterEach, describe, expect, it } from 'vitest';
import { expectErrno, expectNoLeaks, GiB, MiB, PAGE, trackedHost } from '../../../test/helpers.js';
import {
  FALLOC_FL_COLLAPSE_RANGE,
  FALLOC_FL_INSERT_RANGE,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_UNSHARE_RANGE,
  FALLOC_FL_WRITE_ZEROES,
  FALLOC_FL_ZERO_RANGE,
  MAP_SHARED,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
  MFD_EXEC,
  MFD_HUGE_1GB,
  MFD_HUGE_2MB,
  MFD_HUGETLB,
  MFD_NOEXEC_SEAL,
  PROT_READ,
  PROT_WRITE,
  S_IFREG,
} from '../uapi.js';

afterEach(expectNoLeaks);

const bytes = (n: number, v: number) => new Uint8Array(n).fill(v);

describe('memfd_create', () => {
  it('returns the lowest free fd above stdio, CLOEXEC as asked', () => {
    const h = trackedHost();
    const a = h.memfdCreate('a', MFD_CLOEXEC);
    const b = h.memfdCreate('b');
    expect([a, b]).toEqual([3, 4]);
    expect(h.kernel.fds.isCloexec(a)).toBe(true);
    expect(h.kernel.fds.isCloexec(b)).toBe(false);
    h.close(a);
    expect(h.memfdCreate('c')).toBe(3);
  });

  it.each([
    ['an unknown flag', 0x20],
    ['a huge size without MFD_HUGETLB', MFD_HUGE_2MB],
    ['MFD_EXEC with MFD_NOEXEC_SEAL', MFD_EXEC | MFD_NOEXEC_SEAL],
    ['a negative flags value', -1],
  ])('rejects %s with EINVAL', (_what, flags) => {
    const h = trackedHost();
    expectErrno(() => h.memfdCreate('x', flags), 'EINVAL');
  });

  it('rejects a name longer than 249 bytes and accepts 249', () => {
    const h = trackedHost();
    expectErrno(() => h.memfdCreate('n'.repeat(250)), 'EINVAL');
    expect(h.memfdCreate('n'.repeat(249))).toBeGreaterThanOrEqual(3);
  });

  it('accepts every valid flag combination, and hugetlb sizes 2 MiB and 1 GiB', () => {
    const h = trackedHost();
    for (const f of [MFD_ALLOW_SEALING, MFD_NOEXEC_SEAL, MFD_EXEC, MFD_HUGETLB, MFD_HUGETLB | MFD_HUGE_1GB]) {
      h.memfdCreate('ok', f);
    }
    expectErrno(() => h.memfdCreate('x', MFD_HUGETLB | (16 << 26)), 'ENOENT');
  });

  it('fstat: a regular file, size 0, no blocks; NOEXEC_SEAL clears the exec bits', () => {
    const h = trackedHost();
    const fd = h.memfdCreate('s');
    expect(h.fstat(fd)).toMatchObject({ mode: S_IFREG | 0o777, size: 0, blocks: 0, blksize: PAGE });
    expect(h.fstat(h.memfdCreate('n', MFD_NOEXEC_SEAL)).mode).toBe(S_IFREG | 0o666);
    const other = h.memfdCreate('t');
    expect(h.fstat(other).ino).not.toBe(h.fstat(fd).ino);
  });
});

describe('ftruncate, pread, pwrite', () => {
  it('grows and shrinks; holes read as zeros; shrinking frees pages and zeroes the tail', () => {
    const h = trackedHost();
    const fd = h.memfdCreate('f');
    h.ftruncate(fd, 3 * PAGE);
    expect(h.fstat(fd).size).toBe(3 * PAGE);
    expect(h.pwrite(fd, bytes(2 * PAGE, 0xaa), 2 * PAGE, 0)).toBe(2 * PAGE);
    expect(h.fstat(fd).blocks).toBe(16);
    const buf = new Uint8Array(3 * PAGE);
    expect(h.pread(fd, buf, buf.length, 0)).toBe(3 * PAGE);
    expect(buf[PAGE * 2 - 1]).toBe(0xaa);
    expect(buf[PAGE * 2]).toBe(0); // a hole
    h.ftruncate(fd, PAGE + 10);
    expect(h.fstat(fd).blocks).toBe(16); // the partial second page stays
    h.ftruncate(fd, 2 * PAGE);
    const tail = new Uint8Array(PAGE);
    h.pread(fd, tail, PAGE, PAGE);
    expect(tail[9]).toBe(0xaa);
    expect(tail[10]).toBe(0); // zeroed when the file was cut at PAGE + 10
    h.ftruncate(fd, 0);
    expect(h.fstat(fd).blocks).toBe(0);
  });

  it('pread stops at EOF; pwrite extends the size', () => {
    const h = trackedHost();
    const fd = h.memfdCreate('f');
    expect(h.pwrite(fd, bytes(10, 1), 10, 100)).toBe(10);
    expect(h.fstat(fd).size).toBe(110);
    const buf = new Uint8Array(64);
    expect(h.pread(fd, buf, 64, 90)).toBe(20);
    expect(h.pread(fd, buf, 64, 200)).toBe(0);
  });

  it.each([
    [
      'ftruncate to a negative length',
      'EINVAL',
      (h: ReturnType<typeof trackedHost>, fd: number) => h.ftruncate(fd, -1),
    ],
    [
      'ftruncate to 2^63 (negative as a loff_t)',
      'EINVAL',
      (h: ReturnType<typeof trackedHost>, fd: number) => h.ftruncate(fd, 2 ** 63),
    ],
    ['ftruncate of a closed fd', 'EBADF', (h: ReturnType<typeof trackedHost>) => h.ftruncate(99, 0)],
    [
      'pread at a negative offset',
      'EINVAL',
      (h: ReturnType<typeof trackedHost>, fd: number) => h.pread(fd, new Uint8Array(1), 1, -1),
    ],
    [
      'pread of a closed fd',
      'EBADF',
      (h: ReturnType<typeof trackedHost>) => h.pread(42, new Uint8Array(1), 1, 0),
    ],
    [
      'pread past the buffer',
      'EFAULT',
      (h: ReturnType<typeof trackedHost>, fd: number) => h.pread(fd, new Uint8Array(1), 2, 0),
    ],
    [
      'pwrite at 2^63 (negative as a loff_t)',
      'EINVAL',
      (h: ReturnType<typeof trackedHost>, fd: number) => h.pwrite(fd, new Uint8Array(1), 1, 2 ** 63),
    ],
  ])('%s fails with %s', (_what, code, call) => {
    const h = trackedHost();
    const fd = h.memfdCreate('f');
    expectErrno(() => call(h, fd), code);
  });
});

describe('fallocate on a memfd', () => {
  it('allocates (growing the size), KEEP_SIZE keeps it, punching frees and reads zeros', () => {
    const h = trackedHost();
    const fd = h.memfdCreate('f');
    h.fallocate(fd, 0, 0, 4 * PAGE);
    expect(h.fstat(fd)).toMatchObject({ size: 4 * PAGE, blocks: 32 });
    h.fallocate(fd, FALLOC_FL_KEEP_SIZE, 4 * PAGE, 4 * PAGE);
    expect(h.fstat(fd)).toMatchObject({ size: 4 * PAGE, blocks: 64 });
    h.pwrite(fd, bytes(4 * PAGE, 7), 4 * PAGE, 0);
    const before = h.kernel.alloc.stats.allocated;
    h.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, PAGE, 2 * PAGE);
    expect(h.kernel.alloc.stats.allocated).toBe(before - 2);
    const buf = new Uint8Array(4 * PAGE);
    h.pread(fd, buf, buf.length, 0);
    expect(buf[PAGE - 1]).toBe(7);
    expect(buf.subarray(PAGE, 3 * PAGE).every((b) => b === 0)).toBe(true);
    expect(buf[3 * PAGE]).toBe(7);
    // Punching past EOF frees the KEEP_SIZE pages there too.
    h.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4 * PAGE, 100 * PAGE);
    expect(h.fstat(fd).blocks).toBe(16);
  });

  it('an unaligned punch zeroes the partial pages in place and frees the whole ones', () => {
    const h = trackedHost();
    const fd = h.memfdCreate('f');
    h.pwrite(fd, bytes(3 * PAGE, 5), 3 * PAGE, 0);
    h.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 100, 2 * PAGE);
    expect(h.fstat(fd).blocks).toBe(16); // page 1 freed; pages 0 and 2 kept
    const buf = new Uint8Array(3 * PAGE);
    h.pread(fd, buf, buf.length, 0);
    expect(buf[99]).toBe(5);
    expect(buf.subarray(100, 2 * PAGE + 100).every((b) => b === 0)).toBe(true);
    expect(buf[2 * PAGE + 100]).toBe(5);
  });

  it.each([
    ['offset < 0', 0, -1, PAGE, 'EINVAL', 'GM-11'],
    ['len = 0', 0, 0, 0, 'EINVAL', 'GM-11'],
    ['len < 0', 0, 0, -PAGE, 'EINVAL', 'GM-11'],
    ['an unknown mode bit', 0x100, 0, PAGE, 'EOPNOTSUPP', 'GM-12'],
    ['PUNCH_HOLE without KEEP_SIZE', FALLOC_FL_PUNCH_HOLE, 0, PAGE, 'EOPNOTSUPP', 'GM-12'],
    [
      'PUNCH_HOLE | ZERO_RANGE',
      FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE | 1,
      0,
      PAGE,
      'EOPNOTSUPP',
      'GM-12',
    ],
    ['COLLAPSE_RANGE | KEEP_SIZE', FALLOC_FL_COLLAPSE_RANGE | 1, 0, PAGE, 'EOPNOTSUPP', 'GM-12'],
    ['offset + len past s_maxbytes', 0, 2 ** 62, 2 ** 62, 'EFBIG', 'GM-13'],
    ['ZERO_RANGE (shmem has no such mode)', FALLOC_FL_ZERO_RANGE, 0, PAGE, 'EOPNOTSUPP', undefined],
    ['UNSHARE_RANGE', FALLOC_FL_UNSHARE_RANGE, 0, PAGE, 'EOPNOTSUPP', undefined],
    ['INSERT_RANGE', FALLOC_FL_INSERT_RANGE, 0, PAGE, 'EOPNOTSUPP', undefined],
    ['WRITE_ZEROES', FALLOC_FL_WRITE_ZEROES, 0, PAGE, 'EOPNOTSUPP', undefined],
  ])('rejects %s', (_what, mode, offset, len, code, rule) => {
    const h = trackedHost();
    const fd = h.memfdCreate('f');
    expectErrno(() => h.fallocate(fd, mode, offset, len), code, rule);
    expect(h.fstat(fd)).toMatchObject({ size: 0, blocks: 0 });
  });

  it('EBADF for a closed fd, before any argument check', () => {
    const h = trackedHost();
    expectErrno(() => h.fallocate(77, 0xff, -1, 0), 'EBADF');
  });

  it('ENOMEM at the host RAM limit, undoing what the call allocated', () => {
    const h = trackedHost({ ramLimitBytes: 16 * PAGE });
    const fd = h.memfdCreate('f');
    h.fallocate(fd, 0, 0, 4 * PAGE);
    expectErrno(() => h.fallocate(fd, 0, 0, 64 * PAGE), 'ENOMEM');
    expect(h.fstat(fd)).toMatchObject({ size: 4 * PAGE, blocks: 32 });
  });

  it('allocates a 1 GiB range without touching any data', () => {
    const h = trackedHost();
    const fd = h.memfdCreate('big');
    h.fallocate(fd, 0, 0, GiB);
    expect(h.fstat(fd).blocks).toBe((GiB / PAGE) * 8);
    expect(h.kernel.alloc.stats.residentSections).toBe(0);
  });
});

describe('MFD_HUGETLB files', () => {
  it('allocate whole aligned 2 MiB folios and require aligned sizes', () => {
    const h = trackedHost();
    const fd = h.memfdCreate('huge', MFD_HUGETLB | MFD_HUGE_2MB);
    expectErrno(() => h.ftruncate(fd, 3 * MiB), 'EINVAL');
    h.ftruncate(fd, 4 * MiB);
    const hva = h.mmap(0, 4 * MiB, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    expect(hva % (2 * MiB)).toBe(0);
    h.writeMemory(hva + 5, bytes(1, 1));
    expect(h.fstat(fd).blocks).toBe(512 * 8);
    expect(h.fstat(fd).blksize).toBe(2 * MiB);
    h.munmap(hva, 4 * MiB);
  });
});

describe('file lifetime', () => {
  it('a memfd is freed when its last fd and its last mapping are gone', () => {
    const h = trackedHost();
    const fd = h.memfdCreate('f');
    h.ftruncate(fd, 2 * PAGE);
    const hva = h.mmap(0, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    h.writeMemory(hva, bytes(2 * PAGE, 3));
    const dup = h.dup(fd);
    h.close(fd);
    h.close(dup);
    expect(h.kernel.alloc.stats.allocated - 1).toBe(2); // the mapping keeps the file
    expect(h.readMemory(hva + PAGE, 1)[0]).toBe(3);
    h.munmap(hva, 2 * PAGE);
    expect(h.leaks().frames).toBe(0);
  });

  it('dup shares the open file; close of an unknown fd is EBADF', () => {
    const h = trackedHost();
    const fd = h.memfdCreate('f');
    const d = h.dup(fd);
    h.pwrite(d, bytes(4, 9), 4, 0);
    const b = new Uint8Array(4);
    h.pread(fd, b, 4, 0);
    expect([...b]).toEqual([9, 9, 9, 9]);
    expect(h.kernel.fds.isCloexec(d)).toBe(false);
    expectErrno(() => h.close(1234), 'EBADF');
    expectErrno(() => h.close(1), 'EBADF'); // stdio is not the model's
    expectErrno(() => h.dup(1234), 'EBADF');
    h.close(fd);
    expectErrno(() => h.close(fd), 'EBADF');
  });
});
