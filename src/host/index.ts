/**
 * `guestmem/host`: the real /dev/kvm behind the interface of src/core/api.ts.
 *
 * `createRealHost()` returns a `Host` whose calls go to this process's kernel through koffi
 * (docs/decisions/0001); `realKvmAvailable()` says whether that can work here, and why not, so
 * test suites skip with a visible reason. The rest of the exports are the real-backend-only
 * extras: the vCPU worker (kicking a spinning guest), the KVM_RUN watchdog (no run blocks its
 * thread longer than `runTimeoutMs`), the VMM's all-ones hole emulation, the VMA budget, and
 * selftest-style helpers (a VM with RAM and one vCPU, an EINTR-tolerant KVM_RUN).
 */

import { RealHost, type RealHostOptions } from './real_host.js';
import { getSys } from './sys.js';

export { vmaBudget } from './address_space.js';
export { type AllOnesSlot, type AllOnesSlotOptions, createAllOnesSlot } from './allones.js';
export type { RealKvm, RealVm, TrackedSlot } from './kvm_main.js';
export {
  createOneVcpuGuest,
  type OneVcpuGuest,
  type OneVcpuGuestOptions,
  type RamBacking,
  runSkippingIntr,
} from './kvm_util.js';
export { type KvmProbe, kvmDevicePath, realKvmAvailable } from './probe.js';
export type { RealHostOptions } from './real_host.js';
export { RealHost } from './real_host.js';
export type { RealVcpu } from './vcpu.js';
export { startVcpuWorker, type VcpuWorker } from './vcpu_worker.js';
export {
  DEFAULT_RUN_TIMEOUT_MS,
  MAX_RUN_TIMEOUT_MS,
  type RunWatchdogStats,
  runWatchdogStats,
} from './watchdog.js';

/**
 * A `Host` over the real kernel: its system calls, its own memory (reads and writes that would
 * fault throw `HostFault` instead), and `/dev/kvm`. Throws if koffi cannot be loaded; check
 * `realKvmAvailable()` first where /dev/kvm may be absent.
 */
export function createRealHost(options?: RealHostOptions): RealHost {
  return new RealHost(getSys(), options);
}
