import { afterEach, describe, expect, it } from 'vitest';
import { expectErrno, expectNoLeaks, MiB, PAGE, trackedHost } from '../../../test/helpers.js';
import { vcpuWith, vmWithRam } from '../../../test/kvm_helpers.js';
import { kvmTdpPageFault, newFault, RET_PF_RETRY } from '../mmu/mmu.js';
import * as U from '../uapi.js';
import { program } from '../vcpu/program.js';
import { pairingOf } from './memfd_private.js';

afterEach(expectNoLeaks);

const PUNCH = U.FALLOC_FL_PUNCH_HOLE | U.FALLOC_FL_KEEP_SIZE;
const GPA = 0x4000_0000;

function pairedVm() {
  const host = trackedHost({ kvm: { extensions: { privateMemfd: true } } });
  const t = vmWithRam(U.KVM_X86_SW_PROTECTED_VM, MiB, host);
  t.vm.enableCap({ cap: U.KVM_CAP_GUESTMEM_PRIVATE_MEMFD });
  const priv = host.memfdCreate('private');
  host.ftruncate(priv, 16 * PAGE);
  const shared = host.memfdCreate('shared');
  host.ftruncate(shared, 16 * PAGE);
  const sharedHva = host.mmap(0, 16 * PAGE, U.PROT_READ | U.PROT_WRITE, U.MAP_SHARED, shared, 0);
  t.vm.setUserMemoryRegion2({
    slot: 5,
    flags: U.KVM_MEM_PRIVATE_MEMFD,
    guestPhysAddr: GPA,
    memorySize: 16 * PAGE,
    userspaceAddr: sharedHva,
    privateFd: priv,
    privateOffset: 0,
  });
  return { ...t, priv, sharedHva };
}

describe('memfd-paired private slots (seeds 000/001/003), an extension', () => {
  it('off by default: the flag is rejected as upstream rejects unknown flags (MR-4); the cap reads 0', () => {
    const t = vmWithRam(U.KVM_X86_SW_PROTECTED_VM, MiB);
    expect(t.vm.checkExtension(U.KVM_CAP_GUESTMEM_PRIVATE_MEMFD)).toBe(0);
    expectErrno(() => t.vm.enableCap({ cap: U.KVM_CAP_GUESTMEM_PRIVATE_MEMFD }), 'EINVAL');
    expectErrno(
      () =>
        t.vm.setUserMemoryRegion2({
          slot: 5,
          flags: U.KVM_MEM_PRIVATE_MEMFD,
          guestPhysAddr: GPA,
          memorySize: PAGE,
          userspaceAddr: 0,
          privateFd: t.ramFd,
        }),
      'EINVAL',
      'MR-4',
    );
  });

  it('available but not enabled on the VM: still MR-4; exclusive with GUEST_MEMFD/READONLY/LOG_DIRTY', () => {
    const host = trackedHost({ kvm: { extensions: { privateMemfd: true } } });
    const t = vmWithRam(U.KVM_X86_SW_PROTECTED_VM, MiB, host);
    expect(t.vm.checkExtension(U.KVM_CAP_GUESTMEM_PRIVATE_MEMFD)).toBe(1);
    const r = {
      slot: 5,
      flags: U.KVM_MEM_PRIVATE_MEMFD,
      guestPhysAddr: GPA,
      memorySize: PAGE,
      userspaceAddr: 0,
      privateFd: t.ramFd,
    };
    expectErrno(() => t.vm.setUserMemoryRegion2(r), 'EINVAL', 'MR-4');
    t.vm.enableCap({ cap: U.KVM_CAP_GUESTMEM_PRIVATE_MEMFD });
    expectErrno(
      () => t.vm.setUserMemoryRegion2({ ...r, flags: r.flags | U.KVM_MEM_READONLY }),
      'EINVAL',
      'MR-4',
    );
    expectErrno(
      () => t.vm.setUserMemoryRegion2({ ...r, flags: r.flags | U.KVM_MEM_LOG_DIRTY_PAGES }),
      'EINVAL',
      'MR-4',
    );
    // Pairing errors (seed 000/001): a bad fd is EINVAL; a file that cannot back memory EOPNOTSUPP.
    expectErrno(() => t.vm.setUserMemoryRegion2({ ...r, privateFd: 999 }), 'EINVAL');
    expectErrno(() => t.vm.setUserMemoryRegion2({ ...r, privateFd: t.vm.fd }), 'EOPNOTSUPP');
    expectErrno(() => t.vm.setUserMemoryRegion2({ ...r, privateOffset: 100 }), 'EINVAL');
    expect(t.vm.kvm.listMemslots()).toHaveLength(1);
    // A DEFAULT VM cannot enable it.
    const kvm = host.openKvm();
    const def = kvm.createVm(0);
    expectErrno(() => def.enableCap({ cap: U.KVM_CAP_GUESTMEM_PRIVATE_MEMFD }), 'EINVAL');
    def.close();
    kvm.close();
  });

  it('pairing takes a file reference and registers a notifier; delete undoes both', () => {
    const t = pairedVm();
    const slot = t.vm.kvm.gfnToMemslot(GPA / PAGE);
    const p = slot && pairingOf(slot);
    expect(p?.file.refs).toBe(2);
    const inode = t.host.kernel.fds.get(t.priv, 't').inode as unknown as {
      memfileNotifiers: { count: number };
    };
    expect(inode.memfileNotifiers.count).toBe(1);
    expectErrno(
      () =>
        t.vm.setUserMemoryRegion2({
          slot: 5,
          flags: U.KVM_MEM_PRIVATE_MEMFD,
          guestPhysAddr: GPA + 16 * PAGE,
          memorySize: 16 * PAGE,
          userspaceAddr: t.sharedHva,
          privateFd: t.priv,
        }),
      'EINVAL',
      'MR-14',
    );
    t.vm.setUserMemoryRegion2({ slot: 5, flags: 0, guestPhysAddr: 0, memorySize: 0, userspaceAddr: 0 });
    expect(p?.file.refs).toBe(1);
    expect(inode.memfileNotifiers.count).toBe(0);
  });

  it('seed 003 presence rule: private+absent → exit PRIVATE; convert by fallocate; private+present → mapped', () => {
    const t = pairedVm();
    t.vm.setMemoryAttributes({ address: GPA, size: 16 * PAGE, attributes: U.KVM_MEMORY_ATTRIBUTE_PRIVATE });
    const v = vcpuWith(
      t,
      program((b) => b.storeImm(8, GPA, 0x1234).load(8, 'r8', GPA).sync(1)),
    );
    expect(v.run()).toMatchObject({
      ret: -1,
      errno: 'EFAULT',
      memoryFault: { flags: 8, gpa: GPA, size: PAGE },
    });
    t.host.fallocate(t.priv, 0, 0, PAGE); // the VMM converts: allocate in the memfd
    expect(v.run().exitReasonName).toBe('KVM_EXIT_IO');
    expect(v.getRegs().r8).toBe(0x1234n);
    const b = new Uint8Array(2);
    t.host.pread(t.priv, b, 2, 0);
    expect([...b]).toEqual([0x34, 0x12]); // private data lives in the memfd
    expect(t.host.readMemory(t.sharedHva, 1)[0]).toBe(0);
    v.close();
  });

  it('seed 003 presence rule: shared+present → exit 0 (convert to shared); after the punch, the hva path', () => {
    const t = pairedVm();
    t.host.fallocate(t.priv, 0, PAGE, PAGE);
    t.host.writeMemory(t.sharedHva + PAGE, new Uint8Array([0x5a]));
    const v = vcpuWith(
      t,
      program((b) => b.load(1, 'r8', GPA + PAGE).sync(1)),
    );
    expect(v.run()).toMatchObject({ ret: -1, errno: 'EFAULT', memoryFault: { flags: 0, gpa: GPA + PAGE } });
    const slot = t.vm.kvm.gfnToMemslot(GPA / PAGE);
    const before = slot ? pairingOf(slot)?.stats.invalidates : -1;
    t.host.fallocate(t.priv, PUNCH, PAGE, PAGE); // the VMM converts: punch the memfd
    expect(slot ? pairingOf(slot)?.stats.invalidates : -1).toBe((before ?? 0) + 1);
    expect(v.run().exitReasonName).toBe('KVM_EXIT_IO');
    expect(v.getRegs().r8).toBe(0x5an);
    v.close();
  });

  it('punch and fallocate reach KVM as invalidate/fallocate notifications that zap', () => {
    const t = pairedVm();
    t.vm.setMemoryAttributes({ address: GPA, size: 16 * PAGE, attributes: U.KVM_MEMORY_ATTRIBUTE_PRIVATE });
    t.host.fallocate(t.priv, 0, 0, 4 * PAGE);
    const v = vcpuWith(
      t,
      program((b) => b.load(8, 'r8', GPA + 2 * PAGE).sync(1)),
    );
    v.run();
    const mmu = t.vm.kvm.mmu[0];
    expect(mmu?.lookup(GPA / PAGE + 2)).toBeGreaterThanOrEqual(0);
    const seq = t.vm.kvm.mmuInvalidateSeq;
    t.host.fallocate(t.priv, PUNCH, 2 * PAGE, PAGE);
    expect(mmu?.lookup(GPA / PAGE + 2)).toBe(-1);
    expect(t.vm.kvm.mmuInvalidateSeq).toBe(seq + 1);
    t.host.fallocate(t.priv, 0, 8 * PAGE, PAGE);
    expect(t.vm.kvm.mmuInvalidateSeq).toBe(seq + 2);
    v.close();
  });

  it('the page stays locked from getLockPfn until after install; a punch in the window waits, and the fault retries', () => {
    const t = pairedVm();
    t.vm.setMemoryAttributes({ address: GPA, size: 16 * PAGE, attributes: U.KVM_MEMORY_ATTRIBUTE_PRIVATE });
    t.host.fallocate(t.priv, 0, 0, PAGE);
    const k = t.vm.kvm;
    const alloc = t.host.kernel.alloc;
    let lockedDuring = false;
    k.faultPhaseHook = (phase, f) => {
      if (phase !== 'resolve') return;
      lockedDuring = alloc.isLocked(f.pfn as never);
      t.host.fallocate(t.priv, PUNCH, 0, PAGE); // parks on the page lock
      expect(t.host.fstat(t.priv).blocks).toBe(8);
    };
    const f = newFault(GPA, false, false, 0);
    expect(kvmTdpPageFault(k, f)).toBe(RET_PF_RETRY);
    k.faultPhaseHook = null;
    expect(lockedDuring).toBe(true);
    expect(t.host.fstat(t.priv).blocks).toBe(0); // the parked truncation ran at putUnlockPfn
    expect(k.mmu[0]?.lookup(GPA / PAGE)).toBe(-1);
    expect(t.host.leaks().lockWaiters).toBe(0);
  });

  it('owner references: callbacks skip a VM that is being destroyed (kvm_get_kvm_safe)', () => {
    const t = pairedVm();
    const slot = t.vm.kvm.gfnToMemslot(GPA / PAGE);
    const p = slot ? pairingOf(slot) : null;
    // Drive the notifier while the VM has no users left (mid-destruction).
    const k = t.vm.kvm;
    k.users = 0;
    p?.notifier.invalidate?.(0 as never, 1 as never);
    expect(p?.stats.skippedDying).toBe(1);
    k.users = 1;
  });
});
