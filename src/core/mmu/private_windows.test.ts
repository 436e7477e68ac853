/**
 * Race windows on the private fault path (architecture §6, issue: private memory): a hole punch,
 * an attribute change, a guest_memfd release and a slot delete, each run between each pair of the
 * fault handler's phases. Every combination must end in the right exit or a retry — and never
 * leave an SPTE pointing at memory the guest may no longer reach (INV-5, GM-16, GM-17, MA-5).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { expectNoLeaks, MiB, PAGE, trackedHost } from '../../../test/helpers.js';
import { ERRNO } from '../errno.js';
import * as U from '../uapi.js';
import { type FaultPhase, kvmTdpPageFault, newFault, RET_PF_EMULATE, RET_PF_RETRY } from './mmu.js';

afterEach(expectNoLeaks);

const GPA = 0x4000_0000;
const GFN = GPA / PAGE;

function privateVm() {
  const host = trackedHost();
  const kvm = host.openKvm();
  const vm = kvm.createVm(U.KVM_X86_SW_PROTECTED_VM);
  kvm.close();
  const gmem = vm.createGuestMemfd({ size: MiB });
  const shared = host.memfdCreate('shared');
  host.ftruncate(shared, MiB);
  const hva = host.mmap(0, MiB, U.PROT_READ | U.PROT_WRITE, U.MAP_SHARED, shared, 0);
  host.close(shared);
  vm.setUserMemoryRegion2({
    slot: 1,
    flags: U.KVM_MEM_GUEST_MEMFD,
    guestPhysAddr: GPA,
    memorySize: MiB,
    userspaceAddr: hva,
    guestMemfd: gmem,
  });
  vm.setMemoryAttributes({ address: GPA, size: MiB, attributes: U.KVM_MEMORY_ATTRIBUTE_PRIVATE });
  host.fallocate(gmem, U.FALLOC_FL_KEEP_SIZE, 0, MiB);
  return { host, vm, gmem, hva };
}

type Env = ReturnType<typeof privateVm>;
const intruders: [string, (e: Env) => void, (r: number, mfErrno: number) => void][] = [
  [
    'a hole punch of the page',
    (e) => e.host.fallocate(e.gmem, U.FALLOC_FL_PUNCH_HOLE | U.FALLOC_FL_KEEP_SIZE, 0, PAGE),
    (r) => expect(r).toBe(RET_PF_RETRY),
  ],
  [
    'an attribute change to shared',
    (e) => e.vm.setMemoryAttributes({ address: GPA, size: PAGE, attributes: 0 }),
    // Right after the snapshot the fault sees the changed attribute first: row 2; later: a retry.
    (r, mf) => expect(r === RET_PF_RETRY || (r === -ERRNO.EFAULT && mf === ERRNO.EFAULT)).toBe(true),
  ],
  [
    'the guest_memfd release',
    (e) => e.host.close(e.gmem),
    (r, mf) => expect(r === RET_PF_RETRY || (r === -ERRNO.EFAULT && mf === ERRNO.EFAULT)).toBe(true),
  ],
  [
    'a slot delete',
    (e) =>
      e.vm.setUserMemoryRegion2({ slot: 1, flags: 0, guestPhysAddr: 0, memorySize: 0, userspaceAddr: 0 }),
    // No slot and a private access: row 3 (memory-fault exit); a slot found, then gone: retry.
    (r, mf) => expect(r === RET_PF_RETRY || (r === -ERRNO.EFAULT && mf === ERRNO.EFAULT)).toBe(true),
  ],
];
const phases: FaultPhase[] = ['snapshot', 'classify', 'resolve'];

describe('private fault windows', () => {
  for (const phase of phases) {
    for (const [what, intrude, check] of intruders) {
      it(`${what} after '${phase}': the right exit or a retry, never a stale SPTE`, () => {
        const e = privateVm();
        const k = e.vm.kvm;
        let ran = false;
        k.faultPhaseHook = (p, f) => {
          if (p !== phase || ran || f.gfn !== GFN) return;
          ran = true;
          intrude(e);
        };
        const f = newFault(GPA, true, false, 0);
        const r = kvmTdpPageFault(k, f);
        k.faultPhaseHook = null;
        expect(ran).toBe(true);
        expect(r).not.toBe(RET_PF_EMULATE); // KVM never emulates a private access (row 12)
        check(r, f.memoryFaultErrno);
        expect(k.mmu[0]?.lookup(GFN)).toBe(-1);
        expect(k.mmuInvalidateInProgress).toBe(0);
        if (!e.host.kernel.fds.lookup(e.gmem)) return;
        e.host.close(e.gmem);
      });
    }
  }

  it('without an intruder the same fault maps the guest_memfd page', () => {
    const e = privateVm();
    const r = kvmTdpPageFault(e.vm.kvm, newFault(GPA, true, false, 0));
    expect(r).toBe(5);
    expect(e.vm.kvm.mmu[0]?.lookup(GFN)).toBeGreaterThanOrEqual(0);
  });
});
