/**
 * guestmem: KVM's fd-based guest memory, as an executable model (this entry point) and as a
 * binding to the real /dev/kvm with the same interface (`guestmem/host`).
 */

export type * from './core/api.js';
export { DEFAULT_PROGRAM_LAYOUT } from './core/api.js';
export { ERRNO, errnoName, HostFault, KvmError } from './core/errno.js';
export { createHost, type HostOptions, type LeakReport, ModelHost, type VmaInfo } from './core/host.js';
export * from './core/uapi.js';
export * as units from './core/units.js';
export { ProgramBuilder, program, REPORT_PORT, SYNC_PORT } from './core/vcpu/program.js';
