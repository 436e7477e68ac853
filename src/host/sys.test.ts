// The koffi system-call layer: errno is read right after a failing call and becomes a KvmError
// naming the call and its arguments; the raw struct stat layout matches what Node's fs reports.
import { fstatSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { KvmError } from '../core/errno.js';
import { KVM_CHECK_EXTENSION, MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PROT_READ } from '../core/uapi.js';
import { ERRNO_EINTR, STRUCT_STAT_SIZE, trySys } from './sys.js';

const s = trySys();
const noSys = 'error' in s ? s.error : '';

function errOf(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return undefined;
}

describe.skipIf(noSys !== '')(`Sys over libc (koffi)${noSys ? ` — skipped: ${noSys}` : ''}`, () => {
  const sys = 'sys' in s ? s.sys : undefined;
  const get = () => {
    if (sys === undefined) throw new Error('unreachable: the suite is skipped without Sys');
    return sys;
  };

  it('a failing call throws KvmError with the errno name, the call, and the arguments in the message', () => {
    const e = errOf(() => get().close(-1));
    expect(e).toBeInstanceOf(KvmError);
    expect(e).toMatchObject({ code: 'EBADF', errno: 9, call: 'close' });
    const m = errOf(() => get().mmap(0n, 4096, PROT_READ, MAP_SHARED, -1, 0));
    expect(m).toMatchObject({ code: 'EBADF', call: 'mmap' });
    expect((m as Error).message).toContain('fd -1');
    const i = errOf(() => get().ioctlValue(0, KVM_CHECK_EXTENSION, 1, 'KVM_CHECK_EXTENSION'));
    expect(i).toMatchObject({ code: 'ENOTTY', call: 'KVM_CHECK_EXTENSION' });
  });

  it('ioctlErrno returns -errno instead of throwing', () => {
    expect(get().ioctlErrno(-1, KVM_CHECK_EXTENSION, 0)).toBe(-9);
    expect(ERRNO_EINTR).toBe(4);
  });

  it(`fstat's struct stat (${STRUCT_STAT_SIZE} bytes) agrees with Node's fs.fstatSync`, () => {
    const sys = get();
    const fd = sys.memfdCreate('stat', 0);
    try {
      sys.ftruncate(fd, 3 * 4096 + 5);
      sys.fallocate(fd, 0, 0, 4096);
      const mine = sys.fstat(fd);
      const node = fstatSync(fd);
      expect(mine).toEqual({
        dev: node.dev,
        ino: node.ino,
        mode: node.mode,
        size: 3 * 4096 + 5,
        blksize: node.blksize,
        blocks: node.blocks,
      });
      expect(mine.blocks).toBe(8);
    } finally {
      sys.close(fd);
    }
  });

  it('mmap returns an address koffi can view; gettid/getpid identify this thread', () => {
    const sys = get();
    const a = sys.mmap(0n, 4096, PROT_READ | 2, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    expect(a % 4096n).toBe(0n);
    const v = new Uint8Array(sys.view(a, 4096));
    v[5] = 7;
    expect(new Uint8Array(sys.view(a + 4n, 2))[1]).toBe(7);
    sys.munmap(a, 4096);
    expect(sys.getpid()).toBe(process.pid);
    expect(sys.gettid()).toBe(process.pid); // the main thread's tid is the pid
  });
});
