/**
 * Where a scenario's `Host` comes from: the model (`createHost()`, always available) or the real
 * /dev/kvm (`createRealHost()`, loaded on demand so that the rest of src/vmm never pulls in the
 * Node-only binding). A backend turns a `HostRequest` — the model options a scenario needs — into
 * a fresh host, or says why it cannot.
 *
 * What a backend can do is probed through the uAPI where the uAPI can tell
 * (`requirementsUnmet`: VM types, memory attributes, hypercall exits, extension caps); what it
 * cannot tell (which guest_memfd lifetime design the kernel implements) the backend declares.
 */

import type { Host } from '../core/api.js';
import { createHost, type ModelHost } from '../core/host.js';
import type { GmemLifetime } from '../core/kvm/guest_memfd.js';
import {
  KVM_CAP_EXIT_HYPERCALL,
  KVM_CAP_GUESTMEM_PRIVATE_MEMFD,
  KVM_CAP_MEMORY_ATTRIBUTES,
  KVM_CAP_VM_TYPES,
  KVM_HC_MAP_GPA_RANGE,
  KVM_MEMORY_ATTRIBUTE_PRIVATE,
  KVM_X86_SW_PROTECTED_VM,
} from '../core/uapi.js';
import type { ReadonlyFfProvider, ReadonlyFfSlots } from './holes.js';
import type { VmKind } from './machine.js';

export type BackendName = 'model' | 'kvm';

/** The model options a scenario asks for (ignored where a backend has no such choice). */
export interface HostRequest {
  /** Seed 002's design (model option `kvm.gmemLifetime`). */
  readonly gmemLifetime?: GmemLifetime;
  /** Seed mechanisms upstream never merged (model option `kvm.extensions`). */
  readonly extensions?: { readonly privateMemfd?: boolean; readonly allones?: boolean };
  /** Host RAM limit of the model, in bytes. */
  readonly ramLimitBytes?: number;
}

/** A host made for one run. */
export interface BackendHost {
  readonly host: Host;
  /** The same host when it is the model: read-only introspection for reports. */
  readonly model: ModelHost | null;
  /** The backend's best read-only 0xff slots (src/host/allones.ts on the real kernel). */
  readonly readonlyFf?: ReadonlyFfProvider;
}

export interface Backend {
  readonly name: BackendName;
  /** Why this backend cannot run here at all, or null. */
  unavailable(): string | null;
  /** Why this backend cannot satisfy `req`, or null (what the uAPI cannot tell). */
  unsupported(req: HostRequest): string | null;
  create(req: HostRequest): BackendHost;
}

/** The model: every option, every extension. */
export const modelBackend: Backend = {
  name: 'model',
  unavailable: () => null,
  unsupported: () => null,
  create(req) {
    const kvm = {
      ...(req.gmemLifetime === undefined ? {} : { gmemLifetime: req.gmemLifetime }),
      ...(req.extensions === undefined ? {} : { extensions: { ...req.extensions } }),
    };
    const host = createHost({
      kvm,
      ...(req.ramLimitBytes === undefined ? {} : { ramLimitBytes: req.ramLimitBytes }),
    });
    return { host, model: host };
  },
};

let kvmBackendPromise: Promise<Backend> | null = null;

/** The real /dev/kvm (loads src/host on first use). */
export function kvmBackend(): Promise<Backend> {
  kvmBackendPromise ??= import('../host/index.js').then((h): Backend => {
    return {
      name: 'kvm',
      unavailable() {
        const p = h.realKvmAvailable();
        return p.ok ? null : p.reason;
      },
      unsupported(req) {
        if (req.gmemLifetime === 'slot-pins-file') {
          return "the real kernel implements upstream's 'file-pins-vm' guest_memfd lifetime only (seed 002's alternative is a model option)";
        }
        return null;
      },
      create() {
        const host = h.createRealHost();
        const readonlyFf: ReadonlyFfProvider = (_host, vm, slots): ReadonlyFfSlots => {
          const made: ReturnType<typeof h.createAllOnesSlot>[] = [];
          try {
            for (const s of slots) {
              made.push(
                h.createAllOnesSlot(host, vm, { slot: s.slot, guestPhysAddr: s.gpa, memorySize: s.size }),
              );
            }
          } catch (e) {
            for (const m of made.reverse()) m.dispose();
            throw e;
          }
          return {
            hostMemoryBytes: made.reduce((n, m) => n + m.chunkSize, 0),
            mappings: made.reduce((n, m) => n + m.mappings, 0),
            dispose: () => {
              for (const m of [...made].reverse()) m.dispose();
            },
          };
        };
        return { host, model: null, readonlyFf };
      },
    };
  });
  return kvmBackendPromise;
}

/** The backend called `name`. */
export function getBackend(name: BackendName): Promise<Backend> {
  return name === 'model' ? Promise.resolve(modelBackend) : kvmBackend();
}

const hex = (n: number): string => `0x${n.toString(16)}`;

/**
 * What a run needs that `host` lacks, asked through the uAPI (docs/host-deviations.md lists why
 * this machine's kernel says no): the first unmet requirement, or null.
 */
export function requirementsUnmet(host: Host, vmType: VmKind, req: HostRequest): string | null {
  const kvm = host.openKvm();
  try {
    if (vmType === 'sw-protected') {
      const types = kvm.checkExtension(KVM_CAP_VM_TYPES);
      if ((types & (1 << KVM_X86_SW_PROTECTED_VM)) === 0) {
        return `KVM_CAP_VM_TYPES is ${hex(types)}: no KVM_X86_SW_PROTECTED_VM (private memory)`;
      }
      const attrs = kvm.checkExtension(KVM_CAP_MEMORY_ATTRIBUTES);
      if ((attrs & KVM_MEMORY_ATTRIBUTE_PRIVATE) === 0) {
        return `KVM_CAP_MEMORY_ATTRIBUTES is ${hex(attrs)}: no KVM_MEMORY_ATTRIBUTE_PRIVATE`;
      }
      const hc = kvm.checkExtension(KVM_CAP_EXIT_HYPERCALL);
      if ((hc & (1 << KVM_HC_MAP_GPA_RANGE)) === 0) {
        return `KVM_CAP_EXIT_HYPERCALL is ${hex(hc)}: KVM_HC_MAP_GPA_RANGE does not exit to the VMM`;
      }
    }
    if (req.extensions?.privateMemfd === true) {
      const vm = kvm.createVm(vmType === 'sw-protected' ? KVM_X86_SW_PROTECTED_VM : 0);
      try {
        const cap = vm.checkExtension(KVM_CAP_GUESTMEM_PRIVATE_MEMFD);
        if (cap <= 0) {
          return `KVM_CAP_GUESTMEM_PRIVATE_MEMFD is ${cap}: memfd-paired private slots (seeds 000/001) are a model extension`;
        }
      } finally {
        vm.close();
      }
    }
    return null;
  } finally {
    kvm.close();
  }
}
