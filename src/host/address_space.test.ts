// Host memory through the real backend: memfd/mmap/munmap/mprotect/madvise round trips, and the
// guards that turn would-be signals into HostFault (unmapped, PROT_NONE, past EOF, guest_memfd
// without INIT_SHARED) and keep the API away from Node's own memory, fds and VMA headroom.
import { readdirSync, readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { HostFault, KvmError } from '../core/errno.js';
import {
  GUEST_MEMFD_FLAG_INIT_SHARED,
  GUEST_MEMFD_FLAG_MMAP,
  MADV_DONTNEED,
  MADV_HWPOISON,
  MADV_REMOVE,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_NORESERVE,
  MAP_PRIVATE,
  MAP_SHARED,
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
  S_IFREG,
} from '../core/uapi.js';
import { vmaBudget } from './address_space.js';
import { createRealHost, type RealHost, realKvmAvailable } from './index.js';
import { trySys } from './sys.js';

const PAGE = 4096;
const RW = PROT_READ | PROT_WRITE;
const sys = trySys();
const noSys = 'error' in sys ? sys.error : process.platform !== 'linux' ? 'not Linux' : '';
const kvm = realKvmAvailable();

function errOf(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return undefined;
}

const hosts: RealHost[] = [];
function host(options?: Parameters<typeof createRealHost>[0]): RealHost {
  const h = createRealHost(options);
  hosts.push(h);
  return h;
}
afterEach(() => {
  for (const h of hosts.splice(0)) h.dispose();
});

/** A mapping that belongs to Node itself (the first line of /proc/self/maps). */
function nodeMapping(): number {
  const first = readFileSync('/proc/self/maps', 'utf8').split('\n')[0] ?? '';
  return Number.parseInt(first.split('-')[0] ?? '0', 16);
}

describe.skipIf(noSys !== '')(
  `host memory through the real kernel${noSys ? ` — skipped: ${noSys}` : ''}`,
  () => {
    it('memfd: pwrite is seen through a shared mapping and writeMemory through pread', () => {
      const h = host();
      const fd = h.memfdCreate('t');
      h.ftruncate(fd, 2 * PAGE);
      expect(h.pwrite(fd, new Uint8Array([1, 2, 3]), 3, PAGE)).toBe(3);
      const a = h.mmap(0, 2 * PAGE, RW, MAP_SHARED, fd, 0);
      expect([...h.readMemory(a + PAGE, 3)]).toEqual([1, 2, 3]);
      h.writeMemory(a + 10, new Uint8Array([9, 8]));
      const buf = new Uint8Array(4);
      expect(h.pread(fd, buf, 4, 9)).toBe(4);
      expect([...buf]).toEqual([0, 9, 8, 0]);
      const st = h.fstat(fd);
      expect(st.size).toBe(2 * PAGE);
      expect(st.mode & 0o170000).toBe(S_IFREG);
    });

    it('munmap: the owner forgets the range before unmapping, so a read is SIGSEGV (SEGV_MAPERR), not a crash', () => {
      const h = host();
      const a = h.mmap(0, 3 * PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      h.writeMemory(a, new Uint8Array(3 * PAGE).fill(7));
      h.munmap(a + PAGE, PAGE);
      expect(h.readMemory(a, 1)[0]).toBe(7);
      expect(h.readMemory(a + 2 * PAGE, 1)[0]).toBe(7);
      const e = errOf(() => h.readMemory(a + PAGE - 2, 4));
      expect(e).toBeInstanceOf(HostFault);
      expect(e).toMatchObject({ signal: 'SIGSEGV', sigCode: 'SEGV_MAPERR', address: a + PAGE });
      h.munmap(a, 3 * PAGE);
      expect(errOf(() => h.readMemory(a, 1))).toMatchObject({ signal: 'SIGSEGV', sigCode: 'SEGV_MAPERR' });
    });

    it('mprotect: PROT_READ refuses writes, PROT_NONE refuses reads (SEGV_ACCERR); data survives', () => {
      const h = host();
      const a = h.mmap(0, 2 * PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      h.writeMemory(a + PAGE, new Uint8Array([5]));
      h.mprotect(a + PAGE, PAGE, PROT_READ);
      expect(errOf(() => h.writeMemory(a + PAGE, new Uint8Array([6])))).toMatchObject({
        sigCode: 'SEGV_ACCERR',
      });
      // A refused access has no partial effect: the first page was not written either.
      expect(errOf(() => h.writeMemory(a + PAGE - 1, new Uint8Array([1, 1])))).toMatchObject({
        sigCode: 'SEGV_ACCERR',
      });
      expect(h.readMemory(a + PAGE - 1, 2)).toEqual(new Uint8Array([0, 5]));
      h.mprotect(a + PAGE, PAGE, PROT_NONE);
      expect(errOf(() => h.readMemory(a + PAGE, 1))).toMatchObject({
        signal: 'SIGSEGV',
        sigCode: 'SEGV_ACCERR',
      });
      h.mprotect(a, 2 * PAGE, RW);
      expect(h.readMemory(a + PAGE, 1)[0]).toBe(5);
    });

    it('madvise: DONTNEED zeroes private anonymous memory, REMOVE punches a memfd; HWPOISON is refused', () => {
      const h = host();
      const a = h.mmap(0, PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      h.writeMemory(a, new Uint8Array([1]));
      h.madvise(a, PAGE, MADV_DONTNEED);
      expect(h.readMemory(a, 1)[0]).toBe(0);
      const fd = h.memfdCreate('t');
      h.ftruncate(fd, PAGE);
      const m = h.mmap(0, PAGE, RW, MAP_SHARED, fd, 0);
      h.writeMemory(m, new Uint8Array([3]));
      h.madvise(m, PAGE, MADV_DONTNEED); // shared: only the PTEs go, the page cache keeps the data
      expect(h.readMemory(m, 1)[0]).toBe(3);
      expect(h.fstat(fd).blocks).toBe(PAGE / 512);
      h.madvise(m, PAGE, MADV_REMOVE);
      expect(h.fstat(fd).blocks).toBe(0); // before the read below faults a fresh page in
      expect(h.readMemory(m, 1)[0]).toBe(0);
      expect(errOf(() => h.madvise(m, PAGE, MADV_HWPOISON))).toMatchObject({ code: 'EPERM' });
      expect(errOf(() => h.madvise(a + 1, PAGE, MADV_DONTNEED))).toMatchObject({ code: 'EINVAL' });
    });

    it('pages at or past EOF of a mapped file are SIGBUS (BUS_ADRERR), the partial last page is not', () => {
      const h = host();
      const fd = h.memfdCreate('t');
      h.ftruncate(fd, 3 * PAGE);
      const a = h.mmap(0, 4 * PAGE, RW, MAP_SHARED, fd, 0);
      expect(errOf(() => h.readMemory(a + 3 * PAGE, 1))).toMatchObject({
        signal: 'SIGBUS',
        sigCode: 'BUS_ADRERR',
        address: a + 3 * PAGE,
      });
      h.ftruncate(fd, PAGE + 100); // shrink under the mapping
      expect(h.readMemory(a + PAGE + 200, 1)[0]).toBe(0);
      const e = errOf(() => h.readMemory(a + PAGE, 2 * PAGE));
      expect(e).toMatchObject({ signal: 'SIGBUS', address: a + 2 * PAGE });
      h.ftruncate(fd, 4 * PAGE);
      expect(h.readMemory(a + 3 * PAGE, 1)[0]).toBe(0);
    });

    it('MAP_FIXED inside this host’s own reservation works; over Node’s memory it is refused (EEXIST)', () => {
      const h = host();
      const r = h.mmap(0, 4 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      const fd = h.memfdCreate('t');
      h.ftruncate(fd, PAGE);
      h.pwrite(fd, new Uint8Array([42]), 1, 0);
      expect(h.mmap(r + PAGE, PAGE, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0)).toBe(r + PAGE);
      expect(h.readMemory(r + PAGE, 1)[0]).toBe(42);
      expect(errOf(() => h.readMemory(r, 1))).toMatchObject({ sigCode: 'SEGV_ACCERR' });
      const node = nodeMapping();
      const e = errOf(() => h.mmap(node, PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0));
      expect(e).toBeInstanceOf(KvmError);
      expect(e).toMatchObject({ code: 'EEXIST' });
    });

    it('munmap/mprotect/madvise never reach memory this host did not map', () => {
      const h = host();
      const node = nodeMapping();
      // munmap of a range the host does not own is a no-op, as for an unmapped range: Node survives.
      h.munmap(node, PAGE);
      expect(readFileSync('/proc/self/maps', 'utf8')).toContain(node.toString(16));
      expect(errOf(() => h.mprotect(node, PAGE, PROT_NONE))).toMatchObject({ code: 'ENOMEM' });
      expect(errOf(() => h.madvise(node, PAGE, MADV_DONTNEED))).toMatchObject({ code: 'ENOMEM' });
      expect(errOf(() => h.readMemory(node, 1))).toMatchObject({ signal: 'SIGSEGV', sigCode: 'SEGV_MAPERR' });
    });

    it('fds the host did not open are EBADF: Node’s stdout cannot be closed or written', () => {
      const h = host();
      expect(errOf(() => h.close(1))).toMatchObject({ code: 'EBADF' });
      expect(errOf(() => h.pwrite(1, new Uint8Array(1), 1, 0))).toMatchObject({ code: 'EBADF' });
      const fd = h.memfdCreate('t');
      h.close(fd);
      expect(errOf(() => h.fstat(fd))).toMatchObject({ code: 'EBADF' });
    });

    it('pread/pwrite never run past the JavaScript buffer (EFAULT)', () => {
      const h = host();
      const fd = h.memfdCreate('t');
      h.ftruncate(fd, PAGE);
      expect(errOf(() => h.pread(fd, new Uint8Array(4), 5, 0))).toMatchObject({ code: 'EFAULT' });
      expect(errOf(() => h.pwrite(fd, new Uint8Array(4), 5, 0))).toMatchObject({ code: 'EFAULT' });
    });

    it('mmap is refused (ENOMEM, naming max_map_count) when it would eat into the VMA headroom', () => {
      const b = vmaBudget();
      const h = host({ vmaHeadroom: b.max - b.inUse + 1 });
      const e = errOf(() => h.mmap(0, PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
      expect(e).toMatchObject({ code: 'ENOMEM', call: 'mmap' });
      expect((e as KvmError).message).toContain('max_map_count');
      expect(host().mmap(0, PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)).toBeGreaterThan(0);
    });

    it('dispose closes every fd and mapping the host made', () => {
      const fdsBefore = readdirSync('/proc/self/fd').length;
      const budgetBefore = vmaBudget().byBinding;
      const h = createRealHost();
      const fd = h.memfdCreate('t');
      h.ftruncate(fd, PAGE);
      const a = h.mmap(0, PAGE, RW, MAP_SHARED, fd, 0);
      h.dup(fd);
      h.mmap(0, PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      expect(readdirSync('/proc/self/fd').length).toBeGreaterThan(fdsBefore);
      h.dispose();
      expect(readdirSync('/proc/self/fd').length).toBe(fdsBefore);
      expect(vmaBudget().byBinding).toBe(budgetBefore);
      expect(readFileSync('/proc/self/maps', 'utf8')).not.toContain(`${a.toString(16)}-`);
      expect(errOf(() => h.readMemory(a, 1))).toMatchObject({ signal: 'SIGSEGV' });
    });
  },
);

describe.skipIf(!kvm.ok)(`guest_memfd mappings${kvm.ok ? '' : ` — skipped: ${kvm.reason}`}`, () => {
  it('GM-8: a guest_memfd without INIT_SHARED maps, but every read is refused as SIGBUS (never touched)', () => {
    const h = host();
    const vm = h.openKvm().createVm(0);
    const gfd = vm.createGuestMemfd({ size: 2 * PAGE, flags: GUEST_MEMFD_FLAG_MMAP });
    const a = h.mmap(0, 2 * PAGE, RW, MAP_SHARED, gfd, 0);
    expect(errOf(() => h.readMemory(a, 1))).toMatchObject({
      signal: 'SIGBUS',
      sigCode: 'BUS_ADRERR',
      address: a,
    });
    expect(errOf(() => h.writeMemory(a + PAGE, new Uint8Array(1)))).toMatchObject({ signal: 'SIGBUS' });
  });

  it('a failed MAP_FIXED leaves the owner agreeing with the kernel about what is still mapped', () => {
    const h = host();
    const vm = h.openKvm().createVm(0);
    const a = h.mmap(0, 2 * PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    h.writeMemory(a, new Uint8Array([7]));
    h.writeMemory(a + PAGE, new Uint8Array([8]));
    const noMmap = vm.createGuestMemfd({ size: PAGE, flags: 0 });
    // GM-6: the kernel refuses the mapping in guest_memfd's mmap hook, after it began replacing.
    expect(errOf(() => h.mmap(a, PAGE, RW, MAP_SHARED | MAP_FIXED, noMmap, 0))).toMatchObject({
      code: 'ENODEV',
    });
    const stillMapped = readFileSync('/proc/self/maps', 'utf8')
      .split('\n')
      .some((l) => {
        const [s = '0', e = '0'] = (l.split(' ')[0] ?? '').split('-');
        return Number.parseInt(s, 16) <= a && a < Number.parseInt(e, 16) && l.includes(' rw-p ');
      });
    if (stillMapped) expect(h.readMemory(a, 1)[0]).toBe(7);
    else expect(errOf(() => h.readMemory(a, 1))).toMatchObject({ signal: 'SIGSEGV' });
    expect(h.readMemory(a + PAGE, 1)[0]).toBe(8);
  });

  it('GM-8: with MMAP|INIT_SHARED pages below size read as zero and keep writes; pages past size are SIGBUS', () => {
    const h = host();
    const vm = h.openKvm().createVm(0);
    const gfd = vm.createGuestMemfd({
      size: PAGE,
      flags: GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED,
    });
    const a = h.mmap(0, 2 * PAGE, RW, MAP_SHARED, gfd, 0);
    expect(h.readMemory(a, 4)).toEqual(new Uint8Array(4));
    h.writeMemory(a, new Uint8Array([0xaa]));
    expect(h.readMemory(a, 1)[0]).toBe(0xaa);
    expect(errOf(() => h.readMemory(a + PAGE, 1))).toMatchObject({ signal: 'SIGBUS', address: a + PAGE });
    // A dup of the fd maps the same file, with the same guard.
    const d = h.dup(gfd);
    const b = h.mmap(0, PAGE, PROT_READ, MAP_SHARED, d, 0);
    expect(h.readMemory(b, 1)[0]).toBe(0xaa);
  });
});
