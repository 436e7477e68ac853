// /dev/kvm and VM fds of the real kernel: API version, capabilities, VM types (GEN-3), and the
// binding's refusal to use a closed object's fd number.
import { afterEach, describe, expect, it } from 'vitest';
import { KvmError } from '../core/errno.js';
import {
  GUEST_MEMFD_FLAG_INIT_SHARED,
  GUEST_MEMFD_FLAG_MMAP,
  KVM_API_VERSION,
  KVM_CAP_GUEST_MEMFD,
  KVM_CAP_GUEST_MEMFD_FLAGS,
  KVM_CAP_NR_MEMSLOTS,
  KVM_CAP_READONLY_MEM,
  KVM_CAP_USER_MEMORY,
  KVM_CAP_USER_MEMORY2,
  KVM_CAP_VM_TYPES,
  KVM_VCPU_MMAP_SIZE,
} from '../core/uapi.js';
import { createRealHost, type RealHost, realKvmAvailable } from './index.js';

const kvm = realKvmAvailable();
const hosts: RealHost[] = [];
function host(): RealHost {
  const h = createRealHost();
  hosts.push(h);
  return h;
}
afterEach(() => {
  for (const h of hosts.splice(0)) h.dispose();
});

function errOf(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return undefined;
}

describe.skipIf(!kvm.ok)(`/dev/kvm and VM fds${kvm.ok ? '' : ` — skipped: ${kvm.reason}`}`, () => {
  it('KVM_GET_API_VERSION is 12 and the capabilities the binding needs are present (§1.4)', () => {
    const k = host().openKvm();
    expect(k.getApiVersion()).toBe(KVM_API_VERSION);
    expect(k.checkExtension(KVM_CAP_USER_MEMORY)).toBe(1);
    expect(k.checkExtension(KVM_CAP_USER_MEMORY2)).toBe(1);
    expect(k.checkExtension(KVM_CAP_GUEST_MEMFD)).toBe(1);
    expect(k.checkExtension(KVM_CAP_READONLY_MEM)).toBe(1);
    expect(k.checkExtension(KVM_CAP_GUEST_MEMFD_FLAGS) & 3).toBe(
      GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED,
    );
    expect(k.checkExtension(KVM_CAP_NR_MEMSLOTS)).toBe(32764);
    expect(k.getVcpuMmapSize()).toBeGreaterThanOrEqual(KVM_VCPU_MMAP_SIZE);
    // An unknown capability is 0, not an error.
    expect(k.checkExtension(0x7fff_fff0)).toBe(0);
  });

  it('VM-scoped KVM_CHECK_EXTENSION on a default VM: GUEST_MEMFD_FLAGS = MMAP|INIT_SHARED', () => {
    const vm = host().openKvm().createVm(0);
    expect(vm.type).toBe(0);
    expect(vm.checkExtension(KVM_CAP_GUEST_MEMFD_FLAGS)).toBe(3);
    expect(vm.checkExtension(KVM_CAP_READONLY_MEM)).toBe(1);
  });

  it('GEN-3: KVM_CREATE_VM(type) succeeds iff bit `type` of KVM_CAP_VM_TYPES is set, else EINVAL', () => {
    const k = host().openKvm();
    const types = k.checkExtension(KVM_CAP_VM_TYPES);
    expect(types & 1).toBe(1);
    for (let type = 0; type < 8; type++) {
      if ((types >> type) & 1) {
        k.createVm(type).close();
      } else {
        expect(
          errOf(() => k.createVm(type)),
          `type ${type}`,
        ).toMatchObject({ code: 'EINVAL', call: 'KVM_CREATE_VM' });
      }
    }
  });

  it('a closed VM, vCPU or /dev/kvm fd is EBADF in the binding, even if the kernel reused the number', () => {
    const h = host();
    const k = h.openKvm();
    const vm = k.createVm(0);
    const vcpu = vm.createVcpu(0);
    h.close(vm.fd); // host.close routes to vm.close()
    expect(errOf(() => vm.checkExtension(KVM_CAP_USER_MEMORY))).toMatchObject({ code: 'EBADF' });
    const reused = h.memfdCreate('reuses-the-number');
    expect(reused).toBe(vm.fd); // the kernel hands out the lowest free fd
    expect(errOf(() => vm.createGuestMemfd({ size: 4096 }))).toMatchObject({ code: 'EBADF' });
    // The vCPU keeps the VM alive in the kernel and still works.
    expect(vcpu.getRegs().rip).toBeTypeOf('bigint');
    vcpu.close();
    expect(errOf(() => vcpu.getRegs())).toMatchObject({ code: 'EBADF' });
    expect(errOf(() => vcpu.close())).toBeInstanceOf(KvmError);
    k.close();
    expect(errOf(() => k.getApiVersion())).toMatchObject({ code: 'EBADF' });
  });
});
