/**
 * Helpers for KVM tests on the model: a VM with guest RAM from a memfd, and a vCPU running a
 * program. All objects come from a tracked host, so `expectNoLeaks()` checks them.
 */
import type { ModelHost } from '../src/core/host.js';
import type { VmHandle } from '../src/core/kvm/kvm_main.js';
import { MAP_SHARED, PROT_READ, PROT_WRITE } from '../src/core/uapi.js';
import type { Program } from '../src/core/vcpu/program.js';
import type { KvmVcpu } from '../src/core/vcpu/vcpu.js';
import { trackedHost } from './helpers.js';

export interface TestVm {
  readonly host: ModelHost;
  readonly vm: VmHandle;
  /** memfd backing slot 0, and its mapping. */
  readonly ramFd: number;
  readonly ramHva: number;
}

/** A VM of `type` with slot 0 = [0, ramBytes) backed by a shared memfd mapping. */
export function vmWithRam(type = 0, ramBytes = 4 * 1024 * 1024, host = trackedHost()): TestVm {
  const kvm = host.openKvm();
  const vm = kvm.createVm(type);
  kvm.close();
  const ramFd = host.memfdCreate('ram');
  host.ftruncate(ramFd, ramBytes);
  const ramHva = host.mmap(0, ramBytes, PROT_READ | PROT_WRITE, MAP_SHARED, ramFd, 0);
  vm.setUserMemoryRegion({
    slot: 0,
    flags: 0,
    guestPhysAddr: 0,
    memorySize: ramBytes,
    userspaceAddr: ramHva,
  });
  return { host, vm, ramFd, ramHva };
}

/** A vCPU with `program` loaded (code at the default 0x1000, inside slot 0). */
export function vcpuWith(t: TestVm, program: Program, id = 0): KvmVcpu {
  const v = t.vm.createVcpu(id) as KvmVcpu;
  v.setProgram(program);
  return v;
}

/** Maps `bytes` of a new memfd and returns [fd, hva]. */
export function memfdMapping(host: ModelHost, bytes: number): [number, number] {
  const fd = host.memfdCreate('m');
  host.ftruncate(fd, bytes);
  return [fd, host.mmap(0, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)];
}

/** A struct kvm_userspace_memory_region. */
export const region = (slot: number, gpa: number, size: number, hva: number, flags = 0) => ({
  slot,
  flags,
  guestPhysAddr: gpa,
  memorySize: size,
  userspaceAddr: hva,
});
