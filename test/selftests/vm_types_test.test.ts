/**
 * vm_types_test.c (kvm-semantics.md §4.10), on the model: for every type 0..63, KVM_CREATE_VM
 * succeeds iff the type's bit is set in KVM_CAP_VM_TYPES, and fails with EINVAL otherwise
 * (GEN-3). The model's host supports DEFAULT and SW_PROTECTED (CONFIG_KVM_SW_PROTECTED_VM with
 * the TDP MMU), so the mask is 0b11; the per-type checks follow the mask as the C test does.
 */
import { afterEach, describe, expect, it } from 'vitest';
import {
  KVM_CAP_MULTI_ADDRESS_SPACE,
  KVM_CAP_VM_TYPES,
  KVM_X86_DEFAULT_VM,
  KVM_X86_SW_PROTECTED_VM,
} from '../../src/core/uapi.js';
import { expectErrno, expectNoLeaks, trackedHost } from '../helpers.js';

afterEach(expectNoLeaks);

describe('vm_types_test', () => {
  it('GEN-3: KVM_CREATE_VM(type) for type 0..63 succeeds iff KVM_CAP_VM_TYPES has the bit, else EINVAL', () => {
    const host = trackedHost();
    const kvm = host.openKvm();
    const supported = kvm.checkExtension(KVM_CAP_VM_TYPES);
    // bit 0 is always set; this host also has SW_PROTECTED (§1.4).
    expect(supported).toBe((1 << KVM_X86_DEFAULT_VM) | (1 << KVM_X86_SW_PROTECTED_VM));
    const created: number[] = [];
    for (let type = 0; type < 64; type++) {
      const ok = type < 32 && (supported & (1 << type)) !== 0;
      if (ok) {
        const vm = kvm.createVm(type);
        expect(vm.type).toBe(type);
        // GEN-4: the type took effect (private-memory VMs have one address space).
        expect(vm.checkExtension(KVM_CAP_MULTI_ADDRESS_SPACE)).toBe(type === KVM_X86_SW_PROTECTED_VM ? 1 : 2);
        vm.close();
        created.push(type);
      } else {
        expectErrno(() => kvm.createVm(type), 'EINVAL', 'GEN-3');
      }
    }
    expect(created).toEqual([KVM_X86_DEFAULT_VM, KVM_X86_SW_PROTECTED_VM]);
    kvm.close();
  });
});
