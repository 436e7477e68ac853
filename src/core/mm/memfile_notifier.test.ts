import { afterEach, describe, expect, it } from 'vitest';
import { expectErrno, expectNoLeaks, PAGE, trackedHost } from '../../../test/helpers.js';
import type { ModelHost } from '../host.js';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  MAP_SHARED,
  MFD_HUGETLB,
  PROT_READ,
  PROT_WRITE,
} from '../uapi.js';
import type { Pfn, PgOff } from '../units.js';
import type { Inode } from './file.js';
import {
  type MemfileNotifier,
  memfileRegisterNotifier,
  memfileUnregisterNotifier,
} from './memfile_notifier.js';

afterEach(expectNoLeaks);

const PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;

function inodeOf(h: ModelHost, fd: number): Inode {
  return h.kernel.fds.get(fd, 'test').inode;
}

/** A consumer that logs what it is told, like KVM would. */
function consumer(log: string[], name = 'kvm'): MemfileNotifier {
  return {
    invalidate: (s, e) => log.push(`${name} invalidate ${s}-${e}`),
    fallocate: (s, e) => log.push(`${name} fallocate ${s}-${e}`),
  };
}

describe('memfile_notifier (seed 001)', () => {
  it('register: EINVAL for a missing inode or notifier, EOPNOTSUPP for a file that cannot back memory', () => {
    const h = trackedHost();
    const fd = h.memfdCreate('m');
    expectErrno(() => memfileRegisterNotifier(null, consumer([])), 'EINVAL');
    expectErrno(() => memfileRegisterNotifier(inodeOf(h, fd), null), 'EINVAL');
    const huge = h.memfdCreate('h', MFD_HUGETLB);
    expectErrno(() => memfileRegisterNotifier(inodeOf(h, huge), consumer([])), 'EOPNOTSUPP');
    const n = consumer([]);
    memfileRegisterNotifier(inodeOf(h, fd), n);
    expectErrno(() => memfileRegisterNotifier(inodeOf(h, fd), n), 'EINVAL');
    memfileUnregisterNotifier(inodeOf(h, fd), n);
    memfileUnregisterNotifier(null, n); // ignored, as in the seed
  });

  it('allocating fallocate tells every consumer the page range; punching tells them first', () => {
    const h = trackedHost();
    const fd = h.memfdCreate('m');
    h.ftruncate(fd, 8 * PAGE);
    const log: string[] = [];
    const a = consumer(log, 'a');
    const b = consumer(log, 'b');
    const inode = inodeOf(h, fd);
    memfileRegisterNotifier(inode, a);
    memfileRegisterNotifier(inode, b);
    h.fallocate(fd, 0, PAGE, 3 * PAGE);
    expect(log).toEqual(['a fallocate 1-4', 'b fallocate 1-4']);
    log.length = 0;
    h.fallocate(fd, 0, PAGE, PAGE); // nothing new to allocate: nobody is told
    expect(log).toEqual([]);
    // The consumer is told before the page goes: at that point it is still in the file.
    const alloc = h.kernel.alloc;
    const during: number[] = [];
    memfileUnregisterNotifier(inode, b);
    const c: MemfileNotifier = { invalidate: () => during.push(alloc.stats.allocated) };
    memfileRegisterNotifier(inode, c);
    const before = alloc.stats.allocated;
    h.fallocate(fd, PUNCH, 2 * PAGE, PAGE);
    expect(log).toEqual(['a invalidate 2-3']);
    expect(during).toEqual([before]);
    expect(alloc.stats.allocated).toBe(before - 1);
    memfileUnregisterNotifier(inode, a);
    memfileUnregisterNotifier(inode, c);
  });

  it('truncating the file invalidates the pages past the new size', () => {
    const h = trackedHost();
    const fd = h.memfdCreate('m');
    h.fallocate(fd, 0, 0, 4 * PAGE);
    const log: string[] = [];
    const n = consumer(log);
    memfileRegisterNotifier(inodeOf(h, fd), n);
    h.ftruncate(fd, PAGE);
    expect(log).toEqual(['kvm invalidate 1-4']);
    memfileUnregisterNotifier(inodeOf(h, fd), n);
  });

  it('getLockPfn returns the page locked with a reference; ENOENT for a hole; putUnlockPfn undoes it', () => {
    const h = trackedHost();
    const fd = h.memfdCreate('m');
    h.fallocate(fd, 0, 0, 2 * PAGE);
    h.fallocate(fd, PUNCH, PAGE, PAGE);
    const n = consumer([]);
    const ops = memfileRegisterNotifier(inodeOf(h, fd), n);
    expect(ops.getLockPfn(1 as PgOff)).toEqual({ errno: 'ENOENT' });
    const r = ops.getLockPfn(0 as PgOff);
    if (!('pfn' in r)) throw new Error('expected a page');
    expect(r.order).toBe(0);
    const alloc = h.kernel.alloc;
    expect(alloc.isLocked(r.pfn as Pfn)).toBe(true);
    expect(alloc.refcount[r.pfn]).toBe(2);
    ops.putUnlockPfn(r.pfn);
    expect(alloc.isLocked(r.pfn as Pfn)).toBe(false);
    expect(alloc.refcount[r.pfn]).toBe(1);
    expect(alloc.stats.allocated - 1).toBe(1); // getLockPfn never allocates (SGP_NOALLOC)
    memfileUnregisterNotifier(inodeOf(h, fd), n);
  });

  it('a hole punch that meets a locked page waits for the unlock before freeing it', () => {
    const h = trackedHost();
    const fd = h.memfdCreate('m');
    h.pwrite(fd, new Uint8Array(2 * PAGE).fill(0x5a), 2 * PAGE, 0);
    const log: string[] = [];
    const n = consumer(log);
    const ops = memfileRegisterNotifier(inodeOf(h, fd), n);
    const r = ops.getLockPfn(0 as PgOff);
    if (!('pfn' in r)) throw new Error('expected a page');
    h.fallocate(fd, PUNCH, 0, 2 * PAGE);
    // Told at once; the unlocked page 1 is gone; page 0 is still in the file, data intact.
    expect(log).toEqual(['kvm invalidate 0-2']);
    const buf = new Uint8Array(2);
    h.pread(fd, buf, 1, 0);
    expect(buf[0]).toBe(0x5a);
    h.pread(fd, buf, 1, PAGE);
    expect(buf[0]).toBe(0);
    expect(h.fstat(fd).blocks).toBe(8);
    expect(h.leaks().lockWaiters).toBe(1);
    ops.putUnlockPfn(r.pfn);
    // The parked truncation ran on unlock: the page left the file and was freed.
    expect(h.fstat(fd).blocks).toBe(0);
    h.pread(fd, buf, 1, 0);
    expect(buf[0]).toBe(0);
    expect(h.leaks()).toMatchObject({ frames: 0, lockWaiters: 0 });
    memfileUnregisterNotifier(inodeOf(h, fd), n);
  });

  it('a punch through a mapping also reaches memfile consumers (MADV_REMOVE)', () => {
    const h = trackedHost();
    const fd = h.memfdCreate('m');
    h.ftruncate(fd, PAGE);
    const hva = h.mmap(0, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    h.writeMemory(hva, new Uint8Array([1]));
    const log: string[] = [];
    const n = consumer(log);
    memfileRegisterNotifier(inodeOf(h, fd), n);
    h.madvise(hva, PAGE, 9 /* MADV_REMOVE */);
    expect(log).toEqual(['kvm invalidate 0-1']);
    memfileUnregisterNotifier(inodeOf(h, fd), n);
    h.munmap(hva, PAGE);
  });

  it('unregistering while a notification is being delivered: no callback after unregister returns', () => {
    const h = trackedHost();
    const fd = h.memfdCreate('m');
    h.ftruncate(fd, 4 * PAGE);
    const inode = inodeOf(h, fd);
    const log: string[] = [];
    const a = consumer(log, 'a');
    const b = consumer(log, 'b');
    const c = consumer(log, 'c');
    memfileRegisterNotifier(inode, a);
    memfileRegisterNotifier(inode, b);
    memfileRegisterNotifier(inode, c);
    // Another "thread" unregisters b in the window after a was told and before b is.
    const list = (inode as unknown as { memfileNotifiers: { betweenDeliveries: (() => void) | null } })
      .memfileNotifiers;
    list.betweenDeliveries = () => {
      memfileUnregisterNotifier(inode, b);
      list.betweenDeliveries = null;
    };
    h.fallocate(fd, 0, 0, PAGE);
    expect(log).toEqual(['a fallocate 0-1', 'c fallocate 0-1']);
    // And a consumer that unregisters itself from inside its own callback.
    log.length = 0;
    const self: MemfileNotifier = {
      fallocate: () => {
        log.push('self');
        memfileUnregisterNotifier(inode, self);
      },
    };
    memfileRegisterNotifier(inode, self);
    h.fallocate(fd, 0, PAGE, PAGE);
    h.fallocate(fd, 0, 2 * PAGE, PAGE);
    expect(log.filter((x) => x === 'self')).toEqual(['self']);
    memfileUnregisterNotifier(inode, a);
    memfileUnregisterNotifier(inode, c);
  });
});
