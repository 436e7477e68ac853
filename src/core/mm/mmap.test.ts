import { afterEach, describe, expect, it } from 'vitest';
import { expectErrno, expectNoLeaks, hostFaultOf, PAGE, trackedHost } from '../../../test/helpers.js';
import type { ModelHost } from '../host.js';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  MADV_COLLAPSE,
  MADV_DONTNEED,
  MADV_FREE,
  MADV_HUGEPAGE,
  MADV_HWPOISON,
  MADV_POPULATE_WRITE,
  MADV_REMOVE,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_FIXED_NOREPLACE,
  MAP_NORESERVE,
  MAP_POPULATE,
  MAP_PRIVATE,
  MAP_SHARED,
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
} from '../uapi.js';
import type { MmuNotifierRange } from './mmu_notifier.js';

afterEach(expectNoLeaks);

const RW = PROT_READ | PROT_WRITE;
const ANON = MAP_PRIVATE | MAP_ANONYMOUS;

/** Records every notifier bracket of the host's mm. */
function recordNotifiers(h: ModelHost): { events: string[]; unregister: () => void } {
  const events: string[] = [];
  const sub = h.kernel.mm.notifiers.register({
    invalidateRangeStart: (r: MmuNotifierRange) =>
      events.push(`start ${r.event} ${r.start.toString(16)}-${r.end.toString(16)}`),
    invalidateRangeEnd: (r: MmuNotifierRange) => events.push(`end ${r.event}`),
  });
  return { events, unregister: () => sub.unregister() };
}

function memfd(h: ModelHost, size: number, fill?: number): number {
  const fd = h.memfdCreate('m');
  h.ftruncate(fd, size);
  if (fill !== undefined) h.pwrite(fd, new Uint8Array(size).fill(fill), size, 0);
  return fd;
}

const faultOf = hostFaultOf;

describe('mmap', () => {
  it('anonymous private memory reads zeros and keeps writes', () => {
    const h = trackedHost();
    const a = h.mmap(0, 3 * PAGE, RW, ANON, -1, 0);
    expect(a % PAGE).toBe(0);
    expect([...h.readMemory(a, 4)]).toEqual([0, 0, 0, 0]);
    expect(h.leaks().frames).toBe(0); // read faults map the shared zero page
    h.writeMemory(a + PAGE - 2, new Uint8Array([1, 2, 3, 4]));
    expect([...h.readMemory(a + PAGE - 2, 4)]).toEqual([1, 2, 3, 4]);
    expect(h.leaks().frames).toBe(2);
    h.munmap(a, 3 * PAGE);
    expect(h.leaks().frames).toBe(0);
  });

  it('a shared file mapping and pread/pwrite see the same page', () => {
    const h = trackedHost();
    const fd = memfd(h, 2 * PAGE);
    const a = h.mmap(0, 2 * PAGE, RW, MAP_SHARED, fd, 0);
    h.writeMemory(a + 10, new Uint8Array([42]));
    const b = new Uint8Array(1);
    h.pread(fd, b, 1, 10);
    expect(b[0]).toBe(42);
    h.pwrite(fd, new Uint8Array([43]), 1, PAGE);
    expect(h.readMemory(a + PAGE, 1)[0]).toBe(43);
    h.munmap(a, 2 * PAGE);
  });

  it('a private file mapping copies on write and leaves the file alone', () => {
    const h = trackedHost();
    const fd = memfd(h, PAGE, 5);
    const a = h.mmap(0, PAGE, RW, MAP_PRIVATE, fd, 0);
    const rec = recordNotifiers(h);
    expect(h.readMemory(a, 1)[0]).toBe(5);
    h.writeMemory(a, new Uint8Array([6]));
    expect(h.readMemory(a, 2)[0]).toBe(6);
    expect(h.readMemory(a, 2)[1]).toBe(5); // the copy has the file's other bytes
    const b = new Uint8Array(1);
    h.pread(fd, b, 1, 0);
    expect(b[0]).toBe(5);
    expect(rec.events).toEqual([`start CLEAR ${a.toString(16)}-${(a + PAGE).toString(16)}`, 'end CLEAR']);
    expect(h.kernel.mm.stats.cowBreaks).toBe(1);
    rec.unregister();
    h.munmap(a, PAGE);
  });

  it('MAP_FIXED replaces an existing mapping (notifying) and MAP_FIXED_NOREPLACE refuses', () => {
    const h = trackedHost();
    const a = h.mmap(0, 4 * PAGE, RW, ANON, -1, 0);
    h.writeMemory(a + PAGE, new Uint8Array([9]));
    const rec = recordNotifiers(h);
    expectErrno(() => h.mmap(a + PAGE, PAGE, RW, ANON | MAP_FIXED_NOREPLACE, -1, 0), 'EEXIST');
    expect(h.mmap(a + PAGE, PAGE, RW, ANON | MAP_FIXED, -1, 0)).toBe(a + PAGE);
    expect(h.readMemory(a + PAGE, 1)[0]).toBe(0);
    expect(rec.events[0]).toBe(`start UNMAP ${(a + PAGE).toString(16)}-${(a + 2 * PAGE).toString(16)}`);
    expect(h.memoryMap()).toHaveLength(3);
    rec.unregister();
    h.munmap(a, 4 * PAGE);
  });

  it('honours an address hint when the range is free', () => {
    const h = trackedHost();
    const hint = 0x5000_0000_0000;
    expect(h.mmap(hint, PAGE, RW, ANON, -1, 0)).toBe(hint);
    expect(h.mmap(hint, PAGE, RW, ANON, -1, 0)).not.toBe(hint);
  });

  it('MAP_POPULATE faults the range in; MAP_NORESERVE is accepted', () => {
    const h = trackedHost();
    const fd = memfd(h, 4 * PAGE);
    h.mmap(0, 4 * PAGE, RW, MAP_SHARED | MAP_POPULATE | MAP_NORESERVE, fd, 0);
    expect(h.fstat(fd).blocks).toBe(32);
  });

  it.each([
    ['length 0', () => [0, 0, RW, ANON, -1, 0], 'EINVAL'],
    ['an unaligned offset', () => [0, PAGE, RW, MAP_SHARED, 3, 1], 'EINVAL'],
    ['neither SHARED nor PRIVATE', () => [0, PAGE, RW, MAP_ANONYMOUS, -1, 0], 'EINVAL'],
    ['a closed fd', () => [0, PAGE, RW, MAP_SHARED, 99, 0], 'EBADF'],
    ['an unaligned MAP_FIXED address', () => [0x10001, PAGE, RW, ANON | MAP_FIXED, -1, 0], 'EINVAL'],
    ['MAP_FIXED beyond the address space', () => [2 ** 47, PAGE, RW, ANON | MAP_FIXED, -1, 0], 'ENOMEM'],
    ['a length larger than the address space', () => [0, 2 ** 48, RW, ANON, -1, 0], 'ENOMEM'],
  ] as [string, () => [number, number, number, number, number, number], string][])(
    'rejects %s',
    (_what, args, code) => {
      const h = trackedHost();
      memfd(h, PAGE);
      const [addr, len, prot, flags, fd, off] = args();
      expectErrno(() => h.mmap(addr, len, prot, flags, fd, off), code);
      expect(h.memoryMap()).toEqual([]);
    },
  );

  it('refuses a mapping beyond vm.max_map_count', () => {
    const h = trackedHost({ maxMapCount: 3 });
    for (let i = 0; i < 3; i++) h.mmap(0, PAGE, i % 2 ? RW : PROT_READ, ANON, -1, 0);
    expectErrno(() => h.mmap(0, PAGE, RW, ANON, -1, 0), 'ENOMEM');
  });
});

describe('munmap, mprotect', () => {
  it('munmap of the middle splits the mapping and frees its pages', () => {
    const h = trackedHost();
    const a = h.mmap(0, 3 * PAGE, RW, ANON, -1, 0);
    h.writeMemory(a, new Uint8Array(3 * PAGE).fill(1));
    h.munmap(a + PAGE, PAGE);
    expect(h.memoryMap().map((v) => [v.start - a, v.end - a])).toEqual([
      [0, PAGE],
      [2 * PAGE, 3 * PAGE],
    ]);
    expect(h.leaks().frames).toBe(2);
    expect(faultOf(() => h.readMemory(a + PAGE, 1))).toMatchObject({
      signal: 'SIGSEGV',
      sigCode: 'SEGV_MAPERR',
    });
    expect(h.readMemory(a + 2 * PAGE, 1)[0]).toBe(1);
    h.munmap(a, 3 * PAGE);
  });

  it('munmap: EINVAL for an unaligned address or length 0; unmapping nothing is fine', () => {
    const h = trackedHost();
    expectErrno(() => h.munmap(0x10001, PAGE), 'EINVAL');
    expectErrno(() => h.munmap(0x10000, 0), 'EINVAL');
    expect(h.munmap(0x10000, PAGE)).toBe(0);
  });

  it('mprotect changes access, notifies, and faults report SEGV_ACCERR', () => {
    const h = trackedHost();
    const a = h.mmap(0, 2 * PAGE, RW, ANON, -1, 0);
    h.writeMemory(a, new Uint8Array([1]));
    const rec = recordNotifiers(h);
    h.mprotect(a, PAGE, PROT_READ);
    expect(rec.events[0]).toBe(`start PROTECTION_VMA ${a.toString(16)}-${(a + PAGE).toString(16)}`);
    expect(h.readMemory(a, 1)[0]).toBe(1);
    expect(faultOf(() => h.writeMemory(a, new Uint8Array([2])))).toMatchObject({
      signal: 'SIGSEGV',
      sigCode: 'SEGV_ACCERR',
    });
    h.writeMemory(a + PAGE, new Uint8Array([3])); // the other half is still writable
    h.mprotect(a, PAGE, PROT_NONE);
    expect(faultOf(() => h.readMemory(a, 1)).sigCode).toBe('SEGV_ACCERR');
    rec.unregister();
    h.munmap(a, 2 * PAGE);
  });

  it('mprotect: ENOMEM over a hole (changing nothing), EINVAL for bad prot, EACCES for a read-only file', () => {
    const h = trackedHost();
    const a = h.mmap(0, PAGE, RW, ANON, -1, 0);
    expectErrno(() => h.mprotect(a, 2 * PAGE, PROT_READ), 'ENOMEM');
    h.writeMemory(a, new Uint8Array([1])); // still writable
    expectErrno(() => h.mprotect(a, PAGE, 0x80), 'EINVAL');
    expectErrno(() => h.mprotect(a + 1, PAGE, PROT_READ), 'EINVAL');
    h.munmap(a, PAGE);
  });
});

describe('madvise', () => {
  it('DONTNEED drops private pages (zeros again) but not shared ones, inside a bracket', () => {
    const h = trackedHost();
    const a = h.mmap(0, PAGE, RW, ANON, -1, 0);
    const fd = memfd(h, PAGE);
    const s = h.mmap(0, PAGE, RW, MAP_SHARED, fd, 0);
    h.writeMemory(a, new Uint8Array([7]));
    h.writeMemory(s, new Uint8Array([8]));
    const rec = recordNotifiers(h);
    h.madvise(a, PAGE, MADV_DONTNEED);
    h.madvise(s, PAGE, MADV_DONTNEED);
    expect(h.readMemory(a, 1)[0]).toBe(0);
    expect(h.readMemory(s, 1)[0]).toBe(8);
    expect(rec.events.filter((e) => e.startsWith('start UNMAP'))).toHaveLength(2);
    rec.unregister();
    h.munmap(a, PAGE);
    h.munmap(s, PAGE);
  });

  it('REMOVE punches the file behind a shared mapping; EACCES on a private one', () => {
    const h = trackedHost();
    const fd = memfd(h, 2 * PAGE, 4);
    const s = h.mmap(0, 2 * PAGE, RW, MAP_SHARED, fd, 0);
    h.madvise(s + PAGE, PAGE, MADV_REMOVE);
    expect(h.fstat(fd).blocks).toBe(8);
    expect(h.readMemory(s + PAGE, 1)[0]).toBe(0);
    const p = h.mmap(0, PAGE, RW, MAP_PRIVATE, fd, 0);
    expectErrno(() => h.madvise(p, PAGE, MADV_REMOVE), 'EACCES');
    const anon = h.mmap(0, PAGE, RW, ANON, -1, 0);
    expectErrno(() => h.madvise(anon, PAGE, MADV_REMOVE), 'EINVAL');
    h.munmap(s, 2 * PAGE);
    h.munmap(p, PAGE);
    h.munmap(anon, PAGE);
  });

  it('POPULATE_WRITE allocates, HUGEPAGE is a hint, COLLAPSE and unknown advice are EINVAL', () => {
    const h = trackedHost();
    const fd = memfd(h, 2 * PAGE);
    const s = h.mmap(0, 2 * PAGE, RW, MAP_SHARED, fd, 0);
    h.madvise(s, 2 * PAGE, MADV_POPULATE_WRITE);
    expect(h.fstat(fd).blocks).toBe(16);
    expect(h.madvise(s, 2 * PAGE, MADV_HUGEPAGE)).toBe(0);
    expectErrno(() => h.madvise(s, 2 * PAGE, MADV_COLLAPSE), 'EINVAL');
    expectErrno(() => h.madvise(s, 2 * PAGE, 12345), 'EINVAL');
    expectErrno(() => h.madvise(s, 3 * PAGE, MADV_DONTNEED), 'ENOMEM');
    expectErrno(() => h.madvise(s, PAGE, MADV_FREE), 'EINVAL');
    h.munmap(s, 2 * PAGE);
  });

  it('HWPOISON makes the next access a SIGBUS BUS_MCEERR_AR', () => {
    const h = trackedHost();
    const fd = memfd(h, PAGE, 1);
    const s = h.mmap(0, PAGE, RW, MAP_SHARED, fd, 0);
    h.madvise(s, PAGE, MADV_HWPOISON);
    expect(faultOf(() => h.readMemory(s, 1))).toMatchObject({ signal: 'SIGBUS', sigCode: 'BUS_MCEERR_AR' });
    h.munmap(s, PAGE);
  });
});

describe('faults and notifiers around files', () => {
  it('a shared mapping past EOF gets SIGBUS BUS_ADRERR', () => {
    const h = trackedHost();
    const fd = memfd(h, PAGE);
    const s = h.mmap(0, 2 * PAGE, RW, MAP_SHARED, fd, 0);
    expect(h.readMemory(s, 1)[0]).toBe(0);
    expect(faultOf(() => h.readMemory(s + PAGE, 1))).toMatchObject({
      signal: 'SIGBUS',
      sigCode: 'BUS_ADRERR',
    });
    h.munmap(s, 2 * PAGE);
  });

  it('punching a mapped memfd brackets the freeing with notifications over the mapped range', () => {
    const h = trackedHost();
    const fd = memfd(h, 4 * PAGE, 1);
    const s = h.mmap(0, 2 * PAGE, RW, MAP_SHARED, fd, 2 * PAGE); // maps file pages 2..3
    const alloc = h.kernel.alloc;
    const seen: number[] = [];
    const sub = h.kernel.mm.notifiers.register({
      invalidateRangeStart: (r) => seen.push(r.start - s, r.end - s, alloc.stats.allocated),
      invalidateRangeEnd: () => seen.push(alloc.stats.allocated),
    });
    const before = alloc.stats.allocated;
    h.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, PAGE, 2 * PAGE); // file pages 1..2
    expect(seen).toEqual([0, PAGE, before, before - 2]); // hva of file page 2 only; pages freed inside
    expect(h.readMemory(s, 1)[0]).toBe(0);
    expect(h.readMemory(s + PAGE, 1)[0]).toBe(1);
    sub.unregister();
    h.munmap(s, 2 * PAGE);
  });

  it('gup takes a reference: a punched page stays allocated until KVM-like users put it', () => {
    const h = trackedHost();
    const fd = memfd(h, PAGE, 1);
    const s = h.mmap(0, PAGE, RW, MAP_SHARED, fd, 0);
    const pfn = h.kernel.mm.gup(s, true);
    expect(pfn).toBeGreaterThanOrEqual(0);
    expect(h.kernel.mm.lastWritable).toBe(true);
    h.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, PAGE);
    expect(h.leaks().frames).toBe(1);
    h.kernel.alloc.put(pfn as never);
    expect(h.leaks().frames).toBe(0);
    h.munmap(s, PAGE);
  });

  it('unregistering from inside a callback stops later deliveries to that subscriber', () => {
    const h = trackedHost();
    const a = h.mmap(0, 2 * PAGE, RW, ANON, -1, 0);
    let calls = 0;
    const sub = h.kernel.mm.notifiers.register({
      invalidateRangeStart: () => {
        calls++;
        sub.unregister();
      },
      invalidateRangeEnd: () => {
        calls += 100;
      },
    });
    h.munmap(a, PAGE);
    h.munmap(a + PAGE, PAGE);
    expect(calls).toBe(1);
    expect(h.kernel.mm.notifiers.inProgress).toBe(0);
  });
});
