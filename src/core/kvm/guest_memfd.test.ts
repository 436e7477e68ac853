import { afterEach, describe, expect, it } from 'vitest';
import { expectErrno, expectNoLeaks, hostFaultOf, MiB, PAGE, trackedHost } from '../../../test/helpers.js';
import { memfdMapping, vcpuWith, vmWithRam } from '../../../test/kvm_helpers.js';
import { memfileRegisterNotifier, memfileUnregisterNotifier } from '../mm/memfile_notifier.js';
import * as U from '../uapi.js';
import type { PgOff } from '../units.js';
import { program } from '../vcpu/program.js';
import { gmemPages, kvmGmemMemoryFailure } from './guest_memfd.js';

afterEach(expectNoLeaks);

const G = U.KVM_MEM_GUEST_MEMFD;
const PUNCH = U.FALLOC_FL_PUNCH_HOLE | U.FALLOC_FL_KEEP_SIZE;

function swVm() {
  const t = vmWithRam(U.KVM_X86_SW_PROTECTED_VM, 2 * MiB);
  return t;
}

const faultOf = hostFaultOf;

describe('KVM_CREATE_GUEST_MEMFD (GM-1..GM-3)', () => {
  it('GM-1: every single flag bit is accepted iff KVM_CAP_GUEST_MEMFD_FLAGS has it (guest_memfd_test_flags)', () => {
    for (const type of [U.KVM_X86_DEFAULT_VM, U.KVM_X86_SW_PROTECTED_VM]) {
      const t = vmWithRam(type, MiB);
      const caps = t.vm.checkExtension(U.KVM_CAP_GUEST_MEMFD_FLAGS);
      for (let bit = 0; bit < 64; bit++) {
        const flags = 2 ** bit;
        if (bit < 32 && (caps & flags) !== 0) t.host.close(t.vm.createGuestMemfd({ size: PAGE, flags }));
        else expectErrno(() => t.vm.createGuestMemfd({ size: PAGE, flags }), 'EINVAL', 'GM-1');
      }
    }
  });

  it('GM-1 before GM-2: bad flags with a bad size says GM-1', () => {
    const t = swVm();
    expectErrno(
      () => t.vm.createGuestMemfd({ size: 1, flags: U.GUEST_MEMFD_FLAG_INIT_SHARED }),
      'EINVAL',
      'GM-1',
    );
  });

  it.each([1, PAGE - 1, PAGE + 1, 0, 2 ** 63, -PAGE])('GM-2: size %s → EINVAL', (size) => {
    const t = swVm();
    expectErrno(() => t.vm.createGuestMemfd({ size }), 'EINVAL', 'GM-2');
  });

  it('GM-3: a regular file, not CLOEXEC, its own inode; the size is immutable (GM-4); no read/write (GM-5)', () => {
    const t = swVm();
    const a = t.vm.createGuestMemfd({ size: PAGE });
    const b = t.vm.createGuestMemfd({ size: 2 * PAGE });
    expect(t.host.fstat(a)).toMatchObject({ mode: U.S_IFREG | 0o600, size: PAGE, blksize: PAGE, blocks: 0 });
    t.host.fallocate(a, U.FALLOC_FL_KEEP_SIZE, 0, PAGE);
    expect(t.host.fstat(a).blocks).toBe(0); // upstream never updates i_blocks
    expect(t.host.fstat(b).size).toBe(2 * PAGE);
    expect(t.host.fstat(a).ino).not.toBe(t.host.fstat(b).ino);
    expect(t.host.kernel.fds.isCloexec(a)).toBe(false);
    expectErrno(() => t.host.ftruncate(a, 2 * PAGE), 'EINVAL', 'GM-4');
    expectErrno(() => t.host.pread(a, new Uint8Array(4), 4, 0), 'ESPIPE');
    expectErrno(() => t.host.pwrite(a, new Uint8Array(4), 4, 0), 'ESPIPE');
  });

  it('GM-3: the file pins the VM: its fd stays usable after the VM fd is closed', () => {
    const h = trackedHost();
    const kvm = h.openKvm();
    const vm = kvm.createVm(U.KVM_X86_SW_PROTECTED_VM);
    kvm.close();
    const gfd = vm.createGuestMemfd({ size: 4 * PAGE });
    const k = vm.kvm;
    vm.close();
    expect(k.destroyed).toBe(false);
    h.fallocate(gfd, U.FALLOC_FL_KEEP_SIZE, 0, 4 * PAGE);
    h.fallocate(gfd, PUNCH, 0, 4 * PAGE);
    h.close(gfd);
    expect(k.destroyed).toBe(true);
  });
});

describe('guest_memfd fallocate (GM-11..GM-16), the guest_memfd_test sequence', () => {
  it('the fallocate table of §4.1', () => {
    const t = swVm();
    const fd = t.vm.createGuestMemfd({ size: 4 * PAGE });
    const P = PAGE;
    const K = U.FALLOC_FL_KEEP_SIZE;
    t.host.fallocate(fd, K, 0, 4 * P);
    expect(gmemPages(t.host.kernel.fds.get(fd, 't'))).toBe(4);
    expectErrno(() => t.host.fallocate(fd, PUNCH, P - 1, P), 'EINVAL', 'GM-14');
    expectErrno(() => t.host.fallocate(fd, K, 4 * P, P), 'EINVAL', 'GM-15');
    expectErrno(() => t.host.fallocate(fd, K, 5 * P, P), 'EINVAL', 'GM-15');
    t.host.fallocate(fd, PUNCH, 4 * P, P);
    t.host.fallocate(fd, PUNCH, 5 * P, P);
    expectErrno(() => t.host.fallocate(fd, PUNCH, P, P - 1), 'EINVAL', 'GM-14');
    t.host.fallocate(fd, PUNCH, P, P);
    expect(gmemPages(t.host.kernel.fds.get(fd, 't'))).toBe(3);
    t.host.fallocate(fd, K, P, P);
    expect(gmemPages(t.host.kernel.fds.get(fd, 't'))).toBe(4);
  });

  it.each([
    [0, 1],
    [0, PAGE - 1],
    [0, PAGE + 1],
    [1, 1],
    [1, PAGE - 1],
    [1, PAGE],
    [1, PAGE + 1],
    [PAGE, 1],
    [PAGE, PAGE - 1],
    [PAGE, PAGE + 1],
  ])('invalid_punch_hole (%s, %s) → EINVAL', (offset, len) => {
    const t = swVm();
    const fd = t.vm.createGuestMemfd({ size: 4 * PAGE });
    expectErrno(() => t.host.fallocate(fd, PUNCH, offset, len), 'EINVAL', 'GM-14');
  });

  it('GM-11..GM-13: VFS checks first; GM-12: KEEP_SIZE required, only PUNCH_HOLE beside it', () => {
    const t = swVm();
    const fd = t.vm.createGuestMemfd({ size: 4 * PAGE });
    expectErrno(() => t.host.fallocate(fd, 0x100, 0, 0), 'EINVAL', 'GM-11');
    expectErrno(() => t.host.fallocate(fd, 0, 0, PAGE), 'EOPNOTSUPP', 'GM-12');
    expectErrno(
      () => t.host.fallocate(fd, U.FALLOC_FL_ZERO_RANGE | U.FALLOC_FL_KEEP_SIZE, 0, PAGE),
      'EOPNOTSUPP',
      'GM-12',
    );
    expectErrno(() => t.host.fallocate(fd, U.FALLOC_FL_KEEP_SIZE, 2 ** 62, 2 ** 62), 'EFBIG', 'GM-13');
  });
});

describe('guest_memfd mmap (GM-6..GM-9)', () => {
  it('GM-6: ENODEV without MMAP; GM-7: EINVAL for MAP_PRIVATE', () => {
    const t = vmWithRam(0, MiB);
    const plain = t.vm.createGuestMemfd({ size: 4 * PAGE });
    expectErrno(
      () => t.host.mmap(0, 4 * PAGE, U.PROT_READ | U.PROT_WRITE, U.MAP_SHARED, plain, 0),
      'ENODEV',
      'GM-6',
    );
    const m = t.vm.createGuestMemfd({ size: 4 * PAGE, flags: U.GUEST_MEMFD_FLAG_MMAP });
    expectErrno(() => t.host.mmap(0, 4 * PAGE, U.PROT_READ, U.MAP_PRIVATE, m, 0), 'EINVAL', 'GM-7');
  });

  it('GM-8: mmap_supported — shared pages, punch reads zeros, SIGBUS past EOF (fault_overflow)', () => {
    const t = vmWithRam(0, MiB);
    const fd = t.vm.createGuestMemfd({
      size: 4 * PAGE,
      flags: U.GUEST_MEMFD_FLAG_MMAP | U.GUEST_MEMFD_FLAG_INIT_SHARED,
    });
    const hva = t.host.mmap(0, 16 * PAGE, U.PROT_READ | U.PROT_WRITE, U.MAP_SHARED, fd, 0);
    t.host.writeMemory(hva, new Uint8Array(4 * PAGE).fill(0xaa));
    t.host.fallocate(fd, PUNCH, 0, PAGE);
    expect(t.host.readMemory(hva, 1)[0]).toBe(0);
    expect(t.host.readMemory(hva + PAGE, 1)[0]).toBe(0xaa);
    expect(faultOf(() => t.host.readMemory(hva + 4 * PAGE, 1))).toMatchObject({ signal: 'SIGBUS' });
    expect(faultOf(() => t.host.writeMemory(hva + 4 * PAGE - 1, new Uint8Array(2)))).toMatchObject({
      signal: 'SIGBUS',
    });
    expect(t.host.madvise(hva, 4 * PAGE, U.MADV_HUGEPAGE)).toBe(0);
    expectErrno(() => t.host.madvise(hva, 4 * PAGE, U.MADV_COLLAPSE), 'EINVAL');
    t.host.munmap(hva, 16 * PAGE);
  });

  it('GM-8: fault_private — a file without INIT_SHARED maps, but the first touch is SIGBUS', () => {
    const t = vmWithRam(0, MiB);
    const fd = t.vm.createGuestMemfd({ size: 4 * PAGE, flags: U.GUEST_MEMFD_FLAG_MMAP });
    const hva = t.host.mmap(0, 4 * PAGE, U.PROT_READ | U.PROT_WRITE, U.MAP_SHARED, fd, 0);
    expect(faultOf(() => t.host.readMemory(hva, 1))).toMatchObject({
      signal: 'SIGBUS',
      sigCode: 'BUS_ADRERR',
    });
    t.host.munmap(hva, 4 * PAGE);
  });
});

describe('binding a memslot (GB-1..GB-9, MR-14, MR-17)', () => {
  it('test_add_private_memory_region: EBADF, the wrong kinds of fd, another VM’s file, offsets', () => {
    const t = swVm();
    const gfd = t.vm.createGuestMemfd({ size: 2 * MiB });
    const region = (fd: number, off = 0) => ({
      slot: 10,
      flags: G,
      guestPhysAddr: 0xc0000000,
      memorySize: 2 * MiB,
      userspaceAddr: 0,
      guestMemfd: fd,
      guestMemfdOffset: off,
    });
    expectErrno(() => t.vm.setUserMemoryRegion2(region(999)), 'EBADF', 'GB-1');
    const kvm = t.host.openKvm();
    expectErrno(() => t.vm.setUserMemoryRegion2(region(kvm.fd)), 'EINVAL', 'GB-2');
    expectErrno(() => t.vm.setUserMemoryRegion2(region(t.vm.fd)), 'EINVAL', 'GB-2');
    expectErrno(() => t.vm.setUserMemoryRegion2(region(t.ramFd)), 'EINVAL', 'GB-2');
    const other = kvm.createVm(U.KVM_X86_SW_PROTECTED_VM);
    const otherFd = other.createGuestMemfd({ size: 2 * MiB });
    expectErrno(() => t.vm.setUserMemoryRegion2(region(otherFd)), 'EINVAL', 'GB-3');
    other.setUserMemoryRegion2(region(otherFd)); // binds fine in its own VM
    for (let off = 1; off < PAGE; off += 511)
      expectErrno(() => t.vm.setUserMemoryRegion2(region(gfd, off)), 'EINVAL');
    expectErrno(() => t.vm.setUserMemoryRegion2(region(gfd, PAGE)), 'EINVAL', 'GB-4'); // past the end
    t.vm.setUserMemoryRegion2(region(gfd, 0));
    expect(t.vm.kvm.listMemslots().map((s) => s.id)).toEqual([0, 10]);
    other.close();
    kvm.close();
  });

  it('invalid_binding: offset ALIGN_DOWN(INT64_MAX, P) → EINVAL', () => {
    const t = swVm();
    const fd = t.vm.createGuestMemfd({ size: 4 * PAGE });
    expectErrno(
      () =>
        t.vm.setUserMemoryRegion2({
          slot: 0 + 1,
          flags: G,
          guestPhysAddr: 0x10000000,
          memorySize: 4 * PAGE,
          userspaceAddr: 0,
          guestMemfd: fd,
          guestMemfdOffset: 2 ** 63 - PAGE,
        }),
      'EINVAL',
    );
  });

  it('test_add_overlapping_private_memory_regions: EEXIST for file or GPA overlap (GB-5, MR-15)', () => {
    const h = trackedHost();
    const kvm = h.openKvm();
    const vm = kvm.createVm(U.KVM_X86_SW_PROTECTED_VM);
    const GPA = 0xc0000000;
    const fd = vm.createGuestMemfd({ size: 10 * MiB });
    const r = (slot: number, gpa: number, size: number, off: number) => ({
      slot,
      flags: G,
      guestPhysAddr: gpa,
      memorySize: size,
      userspaceAddr: 0,
      guestMemfd: fd,
      guestMemfdOffset: off,
    });
    vm.setUserMemoryRegion2(r(10, GPA, 4 * MiB, 0));
    vm.setUserMemoryRegion2(r(11, 2 * GPA, 4 * MiB, 4 * MiB));
    vm.setUserMemoryRegion2({ ...r(10, 0, 0, 0), guestMemfd: -1 }); // delete
    expectErrno(() => vm.setUserMemoryRegion2(r(10, GPA, 4 * MiB, 2 * MiB)), 'EEXIST', 'GB-5');
    expectErrno(() => vm.setUserMemoryRegion2(r(10, GPA, 4 * MiB, 6 * MiB)), 'EEXIST', 'GB-5');
    expectErrno(() => vm.setUserMemoryRegion2(r(10, 2 * GPA - 2 * MiB, 4 * MiB, 0)), 'EEXIST', 'MR-15');
    expectErrno(() => vm.setUserMemoryRegion2(r(10, 2 * GPA + 2 * MiB, 4 * MiB, 0)), 'EEXIST', 'MR-15');
    vm.setUserMemoryRegion2(r(10, GPA, 4 * MiB, 0)); // GB-9: the deleted slot's range is free again
    vm.close();
    kvm.close();
  });

  it('MR-14: a guest_memfd slot can only be deleted, even re-issued identically', () => {
    const t = swVm();
    const fd = t.vm.createGuestMemfd({ size: MiB });
    const r = {
      slot: 3,
      flags: G,
      guestPhysAddr: 0x40000000,
      memorySize: MiB,
      userspaceAddr: 0,
      guestMemfd: fd,
    };
    t.vm.setUserMemoryRegion2(r);
    expectErrno(() => t.vm.setUserMemoryRegion2(r), 'EINVAL', 'MR-14');
    expectErrno(() => t.vm.setUserMemoryRegion2({ ...r, flags: 0 }), 'EINVAL', 'MR-14');
    t.vm.setUserMemoryRegion2({ ...r, flags: 0, memorySize: 0 }); // MR-12
  });

  it('MR-17: a bind undone when a later check fails (MR-16)', () => {
    const t = swVm();
    const fd = t.vm.createGuestMemfd({ size: MiB });
    const r = {
      slot: 3,
      flags: G,
      guestPhysAddr: 2 ** 48 - PAGE,
      memorySize: MiB,
      userspaceAddr: 0,
      guestMemfd: fd,
    };
    expectErrno(() => t.vm.setUserMemoryRegion2(r), 'EINVAL', 'MR-16');
    t.vm.setUserMemoryRegion2({ ...r, guestPhysAddr: 0x40000000 }); // the file range is free
  });
});

describe('the private fault path (§3 rows 2, 3, 7a–7e, 12; RUN-1)', () => {
  function privateSlot(t: ReturnType<typeof swVm>, flags = 0) {
    const gfd = t.vm.createGuestMemfd({ size: MiB, flags });
    const [, shared] = memfdMapping(t.host, MiB);
    t.vm.setUserMemoryRegion2({
      slot: 10,
      flags: G,
      guestPhysAddr: 0xc0000000,
      memorySize: MiB,
      userspaceAddr: shared,
      guestMemfd: gfd,
    });
    return { gfd, shared };
  }

  it('shared by default: served from userspace_addr; private after conversion: from guest_memfd', () => {
    const t = swVm();
    const { gfd, shared } = privateSlot(t);
    t.host.writeMemory(shared + 0x10, new Uint8Array([0xcc]));
    const v = vcpuWith(
      t,
      program((b) =>
        b.load(1, 'r8', 0xc0000010).sync(1).storeImm(1, 0xc0000010, 0x77).load(1, 'r9', 0xc0000010).sync(2),
      ),
    );
    v.run();
    expect(v.getRegs().r8).toBe(0xccn);
    t.vm.setMemoryAttributes({ address: 0xc0000000, size: PAGE, attributes: U.KVM_MEMORY_ATTRIBUTE_PRIVATE });
    v.run();
    expect(v.getRegs().r9).toBe(0x77n);
    expect(t.host.readMemory(shared + 0x10, 1)[0]).toBe(0xcc); // host never sees private data
    expect(gmemPages(t.host.kernel.fds.get(gfd, 't'))).toBe(1); // the private page came from guest_memfd
    v.close();
  });

  it('private_mem_kvm_exits_test memslot_not_private: a plain slot with PRIVATE → MF(8) EFAULT (7a)', () => {
    const t = swVm();
    t.vm.setMemoryAttributes({ address: 0x3000, size: PAGE, attributes: U.KVM_MEMORY_ATTRIBUTE_PRIVATE });
    const v = vcpuWith(
      t,
      program((b) => b.load(4, 'r8', 0x3004)),
    );
    expect(v.run()).toEqual({
      ret: -1,
      errno: 'EFAULT',
      exitReason: U.KVM_EXIT_MEMORY_FAULT,
      exitReasonName: 'KVM_EXIT_MEMORY_FAULT',
      memoryFaultValid: true,
      memoryFault: { flags: 8, gpa: 0x3000, size: PAGE },
    });
    v.close();
  });

  it('row 3: a private access with no memslot → MF(8) EFAULT (memslot_deleted)', () => {
    const t = swVm();
    privateSlot(t);
    t.vm.setMemoryAttributes({ address: 0xc0000000, size: MiB, attributes: 8 });
    const v = vcpuWith(
      t,
      program((b) => b.load(8, 'r8', 0xc0000000).sync(1).load(8, 'r8', 0xc0000000)),
    );
    expect(v.run().exitReasonName).toBe('KVM_EXIT_IO');
    t.vm.setUserMemoryRegion2({ slot: 10, flags: 0, guestPhysAddr: 0, memorySize: 0, userspaceAddr: 0 });
    expect(v.run()).toMatchObject({
      ret: -1,
      errno: 'EFAULT',
      memoryFault: { flags: 8, gpa: 0xc0000000, size: PAGE },
    });
    v.close();
  });

  it('row 2: an attribute change racing with the fault → MF(is_private) EFAULT', () => {
    const t = swVm();
    privateSlot(t);
    const k = t.vm.kvm;
    let done = false;
    k.faultPhaseHook = (phase, f) => {
      if (phase !== 'snapshot' || done || f.gfn !== 0xc0000) return;
      done = true;
      t.vm.setMemoryAttributes({ address: 0xc0000000, size: PAGE, attributes: 8 });
    };
    const v = vcpuWith(
      t,
      program((b) => b.load(8, 'r8', 0xc0000000)),
    );
    expect(v.run()).toMatchObject({ ret: -1, errno: 'EFAULT', memoryFault: { flags: 0, gpa: 0xc0000000 } });
    k.faultPhaseHook = null;
    v.close();
  });

  it('GB-7, GM-17 / 7b: the slot holds no file reference: closing the guest_memfd breaks private faults (EFAULT) but keeps the slot', () => {
    const t = swVm();
    const { gfd } = privateSlot(t);
    t.vm.setMemoryAttributes({ address: 0xc0000000, size: MiB, attributes: 8 });
    const v = vcpuWith(
      t,
      program((b) => b.storeImm(8, 0xc0000000, 1).sync(1).load(8, 'r8', 0xc0000000)),
    );
    v.run();
    expect(t.vm.kvm.mmu[0]?.lookup(0xc0000)).toBeGreaterThanOrEqual(0);
    t.host.close(gfd);
    expect(t.vm.kvm.mmu[0]?.lookup(0xc0000)).toBe(-1); // zapped on release
    expect(t.vm.kvm.gfnToMemslot(0xc0000)?.id).toBe(10);
    expect(v.run()).toMatchObject({ ret: -1, errno: 'EFAULT', memoryFault: { flags: 8 } });
    v.close();
  });

  it('GM-18 / 7c: a poisoned guest_memfd page → MF EHWPOISON', () => {
    const t = swVm();
    const { gfd } = privateSlot(t);
    t.vm.setMemoryAttributes({ address: 0xc0000000, size: MiB, attributes: 8 });
    const v = vcpuWith(
      t,
      program((b) => b.storeImm(8, 0xc0002000, 1).sync(1).load(8, 'r8', 0xc0002000)),
    );
    v.run();
    kvmGmemMemoryFailure(t.host.kernel.fds.get(gfd, 'test'), 2 * PAGE);
    expect(v.run()).toMatchObject({
      ret: -1,
      errno: 'EHWPOISON',
      memoryFault: { flags: 8, gpa: 0xc0002000 },
    });
    v.close();
  });

  it('GB-8: gmem-only slots serve shared faults from the file and ignore userspace_addr (test_guest_memfd_guest)', () => {
    const t = vmWithRam(0, MiB);
    const fd = t.vm.createGuestMemfd({
      size: PAGE,
      flags: U.GUEST_MEMFD_FLAG_MMAP | U.GUEST_MEMFD_FLAG_INIT_SHARED,
    });
    t.vm.setUserMemoryRegion2({
      slot: 1,
      flags: G,
      guestPhysAddr: 2 ** 32,
      memorySize: PAGE,
      userspaceAddr: 0,
      guestMemfd: fd,
    });
    const hva = t.host.mmap(0, PAGE, U.PROT_READ | U.PROT_WRITE, U.MAP_SHARED, fd, 0);
    t.host.writeMemory(hva, new Uint8Array(PAGE).fill(0xaa));
    const v = vcpuWith(
      t,
      program((b) =>
        b
          .cmp(8, 2 ** 32 + 8, 0xaaaaaaaaaaaaaaaan, 1)
          .fill(2 ** 32, PAGE, 0xff)
          .sync(2),
      ),
    );
    expect(v.run().io?.data[0]).toBe(2); // no report: the guest saw 0xaa
    t.host.munmap(hva, PAGE);
    const again = t.host.mmap(0, PAGE, U.PROT_READ, U.MAP_SHARED, fd, 0);
    expect(t.host.readMemory(again, PAGE).every((x) => x === 0xff)).toBe(true);
    t.host.munmap(again, PAGE);
    v.close();
  });

  it('GM-16: punching bound private memory zaps the guest mapping; the guest then reads zeros', () => {
    const t = swVm();
    const { gfd } = privateSlot(t);
    t.vm.setMemoryAttributes({ address: 0xc0000000, size: MiB, attributes: 8 });
    const v = vcpuWith(
      t,
      program((b) => b.storeImm(8, 0xc0000000, 0xcc).sync(1).load(8, 'r8', 0xc0000000).sync(2)),
    );
    v.run();
    const seq = t.vm.kvm.mmuInvalidateSeq;
    t.host.fallocate(gfd, PUNCH, 0, PAGE);
    expect(t.vm.kvm.mmuInvalidateSeq).toBe(seq + 1);
    v.run();
    expect(v.getRegs().r8).toBe(0n);
    v.close();
  });

  it('private pre-fault (PF-3, PF-4): maps from guest_memfd; EFAULT with a record for a non-gmem private gfn', () => {
    const t = swVm();
    const { gfd } = privateSlot(t);
    t.vm.setMemoryAttributes({ address: 0xc0000000, size: MiB, attributes: 8 });
    const v = vcpuWith(
      t,
      program((b) => b.halt()),
    );
    const r = { gpa: 0xc0000000, size: 4 * PAGE };
    v.preFaultMemory(r);
    expect(r.size).toBe(0);
    expect(gmemPages(t.host.kernel.fds.get(gfd, 't'))).toBe(4);
    t.vm.setMemoryAttributes({ address: 0x3000, size: PAGE, attributes: 8 });
    expectErrno(() => v.preFaultMemory({ gpa: 0x3000, size: PAGE }), 'EFAULT', 'PF-4');
    v.close();
  });

  it('guest_memfd is a memfile_notifier backing store (seed 001) too', () => {
    const t = swVm();
    const { gfd } = privateSlot(t);
    const inode = t.host.kernel.fds.get(gfd, 't').inode;
    const log: string[] = [];
    const n = {
      fallocate: (s: PgOff, e: PgOff) => log.push(`f ${s}-${e}`),
      invalidate: (s: PgOff, e: PgOff) => log.push(`i ${s}-${e}`),
    };
    memfileRegisterNotifier(inode, n);
    t.host.fallocate(gfd, U.FALLOC_FL_KEEP_SIZE, 0, 2 * PAGE);
    t.host.fallocate(gfd, PUNCH, PAGE, PAGE);
    expect(log).toEqual(['f 0-2', 'i 1-2']);
    memfileUnregisterNotifier(inode, n);
  });
});
