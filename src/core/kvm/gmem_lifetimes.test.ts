/**
 * The two guest_memfd lifetime designs of seed 002, side by side: every teardown order, and
 * after everything is closed every frame is free and the VM is destroyed. docs/gmem-lifetimes.md
 * is written from these tests.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { expectErrno, expectNoLeaks, MiB, PAGE, trackedHost } from '../../../test/helpers.js';
import type { ModelHost } from '../host.js';
import * as U from '../uapi.js';
import { program } from '../vcpu/program.js';
import type { GmemLifetime } from './guest_memfd.js';
import type { KvmVm, VmHandle } from './kvm_main.js';

afterEach(expectNoLeaks);

interface Setup {
  host: ModelHost;
  vm: VmHandle;
  k: KvmVm;
  gfd: number;
  ramHva: number;
  /** A vCPU whose fd is closed at once: it keeps no reference, the VM keeps the vCPU. */
  vcpu: ReturnType<VmHandle['createVcpu']>;
}

/** A DEFAULT VM with RAM in slot 0 and a guest_memfd (MMAP|INIT_SHARED) bound as slot 1. */
function setup(lifetime: GmemLifetime): Setup {
  const host = trackedHost({ kvm: { gmemLifetime: lifetime } });
  const kvm = host.openKvm();
  const vm = kvm.createVm(0);
  kvm.close();
  const ram = host.memfdCreate('ram');
  host.ftruncate(ram, MiB);
  const ramHva = host.mmap(0, MiB, U.PROT_READ | U.PROT_WRITE, U.MAP_SHARED, ram, 0);
  host.close(ram);
  vm.setUserMemoryRegion({ slot: 0, flags: 0, guestPhysAddr: 0, memorySize: MiB, userspaceAddr: ramHva });
  const gfd = vm.createGuestMemfd({
    size: 4 * PAGE,
    flags: U.GUEST_MEMFD_FLAG_MMAP | U.GUEST_MEMFD_FLAG_INIT_SHARED,
  });
  vm.setUserMemoryRegion2({
    slot: 1,
    flags: U.KVM_MEM_GUEST_MEMFD,
    guestPhysAddr: 0x10000000,
    memorySize: 4 * PAGE,
    userspaceAddr: 0,
    guestMemfd: gfd,
  });
  host.fallocate(gfd, U.FALLOC_FL_KEEP_SIZE, 0, 4 * PAGE);
  const vcpu = vm.createVcpu(0);
  vcpu.setProgram(program((b) => b.load(8, 'r8', 0x10000000).halt()));
  return { host, vm, k: vm.kvm, gfd, ramHva, vcpu };
}

/** Runs a guest read of the gmem slot: 'ok' or the errno of the memory-fault exit. */
function guestRead(s: Setup): string {
  s.vcpu.setRegs({ rip: 0x1000n });
  const r = s.vcpu.run();
  return r.ret === 0 ? 'ok' : `${r.errno}`;
}

/** Closes the vCPU fd (the vCPU's reference on the VM goes with it). */
function closeVcpu(s: Setup): void {
  s.vcpu.close();
}

const designs: GmemLifetime[] = ['file-pins-vm', 'slot-pins-file'];

describe.each(designs)('guest_memfd lifetime: %s', (design) => {
  it('VM fd closed first: the VM lives while the guest_memfd does', () => {
    const s = setup(design);
    closeVcpu(s);
    s.vm.close();
    if (design === 'file-pins-vm') {
      expect(s.k.destroyed).toBe(false); // the file pins the VM
      s.host.fallocate(s.gfd, U.FALLOC_FL_PUNCH_HOLE | U.FALLOC_FL_KEEP_SIZE, 0, PAGE); // still usable
      s.host.close(s.gfd);
    } else {
      expect(s.k.destroyed).toBe(true); // nothing pins the VM; its slots released the file
      s.host.fallocate(s.gfd, U.FALLOC_FL_PUNCH_HOLE | U.FALLOC_FL_KEEP_SIZE, 0, PAGE);
      s.host.close(s.gfd);
    }
    expect(s.k.destroyed).toBe(true);
    s.host.munmap(s.ramHva, MiB);
    expect(s.host.leaks().frames).toBe(0);
  });

  it('guest_memfd closed first: the binding breaks (upstream) or holds (alternative)', () => {
    const s = setup(design);
    expect(guestRead(s)).toBe('ok');
    s.host.close(s.gfd);
    if (design === 'file-pins-vm') {
      expect(guestRead(s)).toBe('EFAULT'); // GM-17, row 7b
      expect(s.host.leaks().frames).toBe(1); // the file's pages are gone; only the code page of RAM remains
    } else {
      expect(guestRead(s)).toBe('ok'); // the memslot keeps the file
    }
    closeVcpu(s);
    s.vm.close();
    expect(s.k.destroyed).toBe(true);
    s.host.munmap(s.ramHva, MiB);
    expect(s.host.leaks().frames).toBe(0);
  });

  it('slot deleted while the fd is open: the file range can be bound again; the fd stays usable', () => {
    const s = setup(design);
    s.vm.setUserMemoryRegion2({ slot: 1, flags: 0, guestPhysAddr: 0, memorySize: 0, userspaceAddr: 0 });
    s.host.fallocate(s.gfd, U.FALLOC_FL_KEEP_SIZE, 0, PAGE);
    s.vm.setUserMemoryRegion2({
      slot: 2,
      flags: U.KVM_MEM_GUEST_MEMFD,
      guestPhysAddr: 0x20000000,
      memorySize: 4 * PAGE,
      userspaceAddr: 0,
      guestMemfd: s.gfd,
    });
    s.host.close(s.gfd);
    closeVcpu(s);
    s.vm.close();
    expect(s.k.destroyed).toBe(true);
    s.host.munmap(s.ramHva, MiB);
    expect(s.host.leaks().frames).toBe(0);
  });

  it('fd never closed: host teardown (exit) closes it, and everything is freed', () => {
    const s = setup(design);
    guestRead(s);
    s.host.dispose(); // closes the vCPU, VM and guest_memfd fds in reverse order
    expect(s.k.destroyed).toBe(true);
    expect(s.host.leaks().frames).toBe(0);
  });

  it('an mmap outliving the fd keeps the file (and, upstream, the VM) alive', () => {
    const s = setup(design);
    const hva = s.host.mmap(0, 4 * PAGE, U.PROT_READ | U.PROT_WRITE, U.MAP_SHARED, s.gfd, 0);
    s.host.writeMemory(hva, new Uint8Array([5]));
    s.host.close(s.gfd);
    closeVcpu(s);
    s.vm.close();
    expect(s.k.destroyed).toBe(design === 'slot-pins-file');
    expect(s.host.readMemory(hva, 1)[0]).toBe(5);
    s.host.munmap(hva, 4 * PAGE); // the last reference to the file
    expect(s.k.destroyed).toBe(true);
    s.host.munmap(s.ramHva, MiB);
    expect(s.host.leaks().frames).toBe(0);
  });
});

describe('only the alternative design (seed 002)', () => {
  it('creation can be a system ioctl; the file belongs to no VM until its first binding', () => {
    const host = trackedHost({ kvm: { gmemLifetime: 'slot-pins-file' } });
    const kvm = host.openKvm();
    const fd = kvm.createGuestMemfd({ size: 4 * PAGE });
    const a = kvm.createVm(U.KVM_X86_SW_PROTECTED_VM);
    const b = kvm.createVm(U.KVM_X86_SW_PROTECTED_VM);
    const region = {
      slot: 1,
      flags: U.KVM_MEM_GUEST_MEMFD,
      guestPhysAddr: 0x1000_0000,
      memorySize: PAGE,
      userspaceAddr: 0,
      guestMemfd: fd,
    };
    a.setUserMemoryRegion2(region);
    expectErrno(() => b.setUserMemoryRegion2({ ...region, guestMemfdOffset: PAGE }), 'EINVAL', 'GB-3');
    a.setUserMemoryRegion2({ ...region, memorySize: 0 }); // last binding gone: the VM pointer clears
    b.setUserMemoryRegion2({ ...region, guestMemfdOffset: PAGE });
    for (const x of [a, b]) x.close();
    host.close(fd);
    kvm.close();
  });

  it('upstream has no system ioctl: ENOTTY', () => {
    const host = trackedHost();
    const kvm = host.openKvm();
    expectErrno(() => kvm.createGuestMemfd({ size: PAGE }), 'ENOTTY');
    kvm.close();
  });
});
