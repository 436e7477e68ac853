/**
 * Small helpers for driving the real backend, in the spirit of the KVM selftests' library
 * (tools/testing/selftests/kvm/lib/kvm_util.c): a VM with guest RAM at gpa 0 and one vCPU, and a
 * KVM_RUN step that tolerates stray signals. Used by this directory's tests; usable by any VMM
 * or test suite written against `guestmem/host`.
 */

import type { RunResult } from '../core/api.js';
import {
  GUEST_MEMFD_FLAG_INIT_SHARED,
  GUEST_MEMFD_FLAG_MMAP,
  KVM_EXIT_INTR,
  KVM_MEM_GUEST_MEMFD,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  MAP_SHARED,
  PROT_READ,
  PROT_WRITE,
} from '../core/uapi.js';
import type { RealKvm, RealVm } from './kvm_main.js';
import type { RealHost } from './real_host.js';
import type { RealVcpu } from './vcpu.js';

/** How guest RAM is backed: anonymous memory, a memfd, or a guest_memfd with MMAP|INIT_SHARED. */
export type RamBacking = 'anon' | 'memfd' | 'gmem';

/** A VM with one memslot of RAM at gpa 0 and vCPU 0 (selftests' `vm_create_with_one_vcpu`). */
export interface OneVcpuGuest {
  readonly kvm: RealKvm;
  readonly vm: RealVm;
  readonly vcpu: RealVcpu;
  /** userspace_addr of slot 0. */
  readonly ramHva: number;
  /** Bytes of RAM at gpa 0. */
  readonly ramSize: number;
  /** The fd backing RAM (memfd or guest_memfd), or -1 for anonymous memory. */
  readonly ramFd: number;
}

/** Options of `createOneVcpuGuest`. */
export interface OneVcpuGuestOptions {
  /** Bytes of RAM at gpa 0 (default 1 MiB: room for code at 0x1000 and page tables at 0x10000). */
  readonly ramSize?: number;
  readonly backing?: RamBacking;
  readonly vmType?: number;
}

/** Creates a VM with RAM at gpa 0 in slot 0 and vCPU 0 (see `OneVcpuGuest`). */
export function createOneVcpuGuest(host: RealHost, options: OneVcpuGuestOptions = {}): OneVcpuGuest {
  const ramSize = options.ramSize ?? 1024 * 1024;
  const backing = options.backing ?? 'anon';
  const kvm = host.openKvm() as RealKvm; // openKvm of a RealHost returns a RealKvm
  const vm = kvm.createVm(options.vmType ?? 0);
  let ramFd = -1;
  let ramHva: number;
  if (backing === 'anon') {
    ramHva = host.mmap(0, ramSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    vm.setUserMemoryRegion({
      slot: 0,
      flags: 0,
      guestPhysAddr: 0,
      memorySize: ramSize,
      userspaceAddr: ramHva,
    });
  } else if (backing === 'memfd') {
    ramFd = host.memfdCreate('guestmem-ram');
    host.ftruncate(ramFd, ramSize);
    ramHva = host.mmap(0, ramSize, PROT_READ | PROT_WRITE, MAP_SHARED, ramFd, 0);
    vm.setUserMemoryRegion({
      slot: 0,
      flags: 0,
      guestPhysAddr: 0,
      memorySize: ramSize,
      userspaceAddr: ramHva,
    });
  } else {
    ramFd = vm.createGuestMemfd({
      size: ramSize,
      flags: GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED,
    });
    ramHva = host.mmap(0, ramSize, PROT_READ | PROT_WRITE, MAP_SHARED, ramFd, 0);
    // userspace_addr must be the gmem mapping: PVM faults guest memory in through it (realkvm-notes §4).
    vm.setUserMemoryRegion2({
      slot: 0,
      flags: KVM_MEM_GUEST_MEMFD,
      guestPhysAddr: 0,
      memorySize: ramSize,
      userspaceAddr: ramHva,
      guestMemfd: ramFd,
      guestMemfdOffset: 0,
    });
  }
  const vcpu = vm.createVcpu(0);
  return { kvm, vm, vcpu, ramHva, ramSize, ramFd };
}

/**
 * KVM_RUN, re-entered while it returns EINTR with KVM_EXIT_INTR and no kick was requested (a stray
 * signal such as a profiler's SIGPROF, realkvm-notes §7.5). At most `maxRetries` re-entries. A run
 * the watchdog interrupted (`watchdog: true`) is returned, not re-entered.
 */
export function runSkippingIntr(vcpu: RealVcpu, maxRetries = 100): RunResult {
  for (let i = 0; ; i++) {
    const r = vcpu.run();
    if (
      r.ret === 0 ||
      r.errno !== 'EINTR' ||
      r.exitReason !== KVM_EXIT_INTR ||
      r.watchdog === true ||
      vcpu.kvmRun.immediateExit !== 0
    ) {
      return r;
    }
    if (i >= maxRetries) return r;
  }
}
