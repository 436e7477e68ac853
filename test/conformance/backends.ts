/**
 * The conformance suite's backends (issue 6: "one conformance suite, two backends"): the model
 * (`createHost()`), always, and the real /dev/kvm (`createRealHost()`), when this machine can use
 * it. Case files iterate over `backends` and write every case once, against the `Host` interface
 * of src/core/api.ts only.
 *
 * Each backend carries its availability (a skip reason when it cannot run here) and the
 * capabilities the cases depend on, *probed* through the interface (KVM_CHECK_EXTENSION on
 * /dev/kvm and on a DEFAULT VM), never assumed from the backend's name. A case that needs what a
 * backend lacks skips there with `need(...)`'s reason, which names the deviation of
 * docs/host-deviations.md where the host differs from upstream.
 *
 * `GUESTMEM_NO_REAL_KVM=1` in the environment skips the real backend (for a quick model-only run).
 */
import { existsSync } from 'node:fs';
import { afterEach } from 'vitest';
import type { Host, RunResult, Vcpu } from '../../src/core/api.js';
import { HostFault, KvmError } from '../../src/core/errno.js';
import { createHost } from '../../src/core/host.js';
import {
  KVM_CAP_DISABLE_QUIRKS2,
  KVM_CAP_EXIT_HYPERCALL,
  KVM_CAP_GUEST_MEMFD_FLAGS,
  KVM_CAP_MEMORY_ATTRIBUTES,
  KVM_CAP_MULTI_ADDRESS_SPACE,
  KVM_CAP_PRE_FAULT_MEMORY,
  KVM_CAP_VM_TYPES,
  KVM_EXIT_INTR,
  KVM_EXIT_IO,
  KVM_HC_MAP_GPA_RANGE,
  KVM_MEMORY_ATTRIBUTE_PRIVATE,
  KVM_X86_SW_PROTECTED_VM,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  PROT_READ,
  PROT_WRITE,
} from '../../src/core/uapi.js';
import { REPORT_PORT, SYNC_PORT } from '../../src/core/vcpu/program.js';
import { createRealHost, realKvmAvailable } from '../../src/host/index.js';

/** Whether something can run here, and why not. */
export type Availability = { readonly ok: true } | { readonly ok: false; readonly reason: string };

/** What the cases depend on, probed on a fresh host of the backend. */
export interface BackendCaps {
  /** KVM_CAP_VM_TYPES on /dev/kvm. */
  readonly vmTypes: number;
  /** KVM_CAP_MEMORY_ATTRIBUTES on /dev/kvm. */
  readonly memoryAttributes: number;
  /** KVM_CAP_PRE_FAULT_MEMORY on a DEFAULT VM. */
  readonly preFault: number;
  /** KVM_CAP_MULTI_ADDRESS_SPACE on a DEFAULT VM (0 means one address space). */
  readonly addressSpaces: number;
  /** KVM_CAP_GUEST_MEMFD_FLAGS on a DEFAULT VM. */
  readonly gmemFlags: number;
  /** KVM_CAP_EXIT_HYPERCALL on /dev/kvm. */
  readonly exitHypercall: number;
  /** KVM_CAP_DISABLE_QUIRKS2 on a DEFAULT VM. */
  readonly quirks: number;
  /** True if the kernel is PVM (kvm_pvm loaded), whose VMCALL never exits (deviation #2). */
  readonly pvm: boolean;
}

/** One backend of the suite. */
export interface Backend {
  readonly name: 'model' | 'kvm';
  /** For test titles: "model" or "real /dev/kvm". */
  readonly label: string;
  readonly available: Availability;
  /** A fresh host; only call when `available.ok`. */
  make(): Host;
  /** Probed capabilities; null when the backend is not available. */
  readonly caps: BackendCaps | null;
  /** Checks a disposed host of this backend left nothing behind (the model counts its objects). */
  checkDisposed(host: Host): void;
}

/** Probes the capabilities the cases depend on, through the `Host` interface only. */
export function probeCaps(host: Host): BackendCaps {
  const kvm = host.openKvm();
  try {
    const vm = kvm.createVm(0);
    try {
      return {
        vmTypes: kvm.checkExtension(KVM_CAP_VM_TYPES),
        memoryAttributes: kvm.checkExtension(KVM_CAP_MEMORY_ATTRIBUTES),
        preFault: vm.checkExtension(KVM_CAP_PRE_FAULT_MEMORY),
        addressSpaces: vm.checkExtension(KVM_CAP_MULTI_ADDRESS_SPACE),
        gmemFlags: vm.checkExtension(KVM_CAP_GUEST_MEMFD_FLAGS),
        exitHypercall: kvm.checkExtension(KVM_CAP_EXIT_HYPERCALL),
        quirks: vm.checkExtension(KVM_CAP_DISABLE_QUIRKS2),
        pvm: host.backend === 'kvm' && existsSync('/sys/module/kvm_pvm'),
      };
    } finally {
      vm.close();
    }
  } finally {
    kvm.close();
  }
}

function modelBackend(): Backend {
  const probeHost = createHost();
  const caps = probeCaps(probeHost);
  probeHost.dispose();
  return {
    name: 'model',
    label: 'model',
    available: { ok: true },
    make: () => createHost(),
    caps,
    checkDisposed(host) {
      // The model can count what is left; the real kernel's teardown is checked by src/host.
      const leaks = (host as ReturnType<typeof createHost>).leaks(); // make() returns a ModelHost
      const left = Object.entries(leaks).filter(([, n]) => n !== 0);
      if (left.length > 0) throw new Error(`model host leaked after dispose: ${JSON.stringify(leaks)}`);
    },
  };
}

function realBackend(): Backend {
  const label = 'real /dev/kvm';
  let available: Availability =
    process.env['GUESTMEM_NO_REAL_KVM'] === '1'
      ? { ok: false, reason: 'disabled by GUESTMEM_NO_REAL_KVM=1' }
      : realKvmAvailable();
  let caps: BackendCaps | null = null;
  if (available.ok) {
    try {
      const h = createRealHost();
      try {
        caps = probeCaps(h);
      } finally {
        h.dispose();
      }
    } catch (e) {
      available = { ok: false, reason: `probing capabilities failed: ${(e as Error).message}` };
    }
  }
  return {
    name: 'kvm',
    label,
    available,
    make: () => createRealHost(),
    caps,
    checkDisposed() {},
  };
}

/** The backends, model first. */
export const backends: readonly Backend[] = [modelBackend(), realBackend()];

/** The title of a backend's describe block: the reason is in it when the backend is skipped. */
export function backendTitle(b: Backend, what: string): string {
  return b.available.ok ? `${what} [${b.label}]` : `${what} [${b.label}: ${b.available.reason}]`;
}

/** Features some hosts lack (docs/host-deviations.md); `need` says whether a backend has one. */
export type Feature =
  | 'swProtectedVm'
  | 'memoryAttributes'
  | 'preFault'
  | 'twoAddressSpaces'
  | 'hypercallExits';

/** Whether backend `b` has `feature`, probed; the reason names the deviation where there is one. */
export function need(b: Backend, feature: Feature): Availability {
  const c = b.caps;
  if (c === null) return b.available.ok ? { ok: false, reason: 'capabilities unknown' } : b.available;
  switch (feature) {
    case 'swProtectedVm':
      return (c.vmTypes & (1 << KVM_X86_SW_PROTECTED_VM)) !== 0
        ? { ok: true }
        : { ok: false, reason: `KVM_CAP_VM_TYPES is ${c.vmTypes}: no SW_PROTECTED VMs (deviation #4)` };
    case 'memoryAttributes':
      return (c.memoryAttributes & KVM_MEMORY_ATTRIBUTE_PRIVATE) !== 0
        ? { ok: true }
        : {
            ok: false,
            reason: `KVM_CAP_MEMORY_ATTRIBUTES is ${c.memoryAttributes}: no memory attributes (deviation #3)`,
          };
    case 'preFault':
      return c.preFault !== 0
        ? { ok: true }
        : { ok: false, reason: 'KVM_CAP_PRE_FAULT_MEMORY is 0: no pre-fault (deviation #6)' };
    case 'twoAddressSpaces':
      return c.addressSpaces >= 2
        ? { ok: true }
        : {
            ok: false,
            reason: `KVM_CAP_MULTI_ADDRESS_SPACE is ${c.addressSpaces} on a DEFAULT VM: one address space (deviation #5)`,
          };
    case 'hypercallExits':
      if ((c.exitHypercall & (1 << KVM_HC_MAP_GPA_RANGE)) === 0) {
        return { ok: false, reason: `KVM_CAP_EXIT_HYPERCALL is ${c.exitHypercall}` };
      }
      return c.pvm
        ? { ok: false, reason: 'PVM (kvm_pvm loaded): VMCALL never exits nor retires (deviation #2)' }
        : { ok: true };
  }
}

// ---- helpers the case files share (interface only) ---------------------------------------------

export const PAGE = 4096;
export const MiB = 1024 * 1024;
export const RW = PROT_READ | PROT_WRITE;
/** Bytes of RAM in slot 0 at gpa 0: code at 0x1000, the real backend's page tables at 0x10000. */
export const CODE_SLOT_BYTES = MiB;

/** A VM with slot 0 = [0, 1 MiB) of anonymous RAM (code and page tables) and vCPU 0. */
export interface GuestVm {
  readonly host: Host;
  readonly kvm: ReturnType<Host['openKvm']>;
  readonly vm: ReturnType<ReturnType<Host['openKvm']>['createVm']>;
  readonly vcpu: Vcpu;
  readonly ramHva: number;
}

/** Creates the VM of `GuestVm` on `host` (selftests' vm_create_with_one_vcpu). */
export function guestVm(host: Host): GuestVm {
  const kvm = host.openKvm();
  const vm = kvm.createVm(0);
  const ramHva = host.mmap(0, CODE_SLOT_BYTES, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  vm.setUserMemoryRegion({
    slot: 0,
    flags: 0,
    guestPhysAddr: 0,
    memorySize: CODE_SLOT_BYTES,
    userspaceAddr: ramHva,
  });
  const vcpu = vm.createVcpu(0);
  return { host, kvm, vm, vcpu, ramHva };
}

/** Fresh anonymous read-write memory. */
export function anon(host: Host, bytes: number): number {
  return host.mmap(0, bytes, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

/**
 * KVM_RUN, re-entered while a stray signal (not one this process asked for) interrupted it with
 * EINTR/KVM_EXIT_INTR: the real vCPU thread is Node's main thread, where profilers and timers may
 * signal. At most 100 re-entries.
 */
export function runVcpu(vcpu: Vcpu): RunResult {
  for (let i = 0; ; i++) {
    const r = vcpu.run();
    const stray =
      r.ret === -1 &&
      r.errno === 'EINTR' &&
      r.exitReason === KVM_EXIT_INTR &&
      vcpu.kvmRun.immediateExit === 0;
    if (!stray || i >= 100) return r;
  }
}

/** The errno name a call failed with, or 'OK'; a HostFault gives its signal. */
export function errnoOf(fn: () => unknown): string {
  try {
    fn();
    return 'OK';
  } catch (e) {
    if (e instanceof KvmError) return e.code;
    if (e instanceof HostFault) return e.signal;
    throw e;
  }
}

/** The port and 32-bit value of an OUT exit, or null for any other exit. */
export function outOf(r: RunResult): [number, number] | null {
  if (r.ret !== 0 || r.exitReason !== KVM_EXIT_IO || r.io === undefined) return null;
  const d = r.io.data;
  return [r.io.port, new DataView(d.buffer, d.byteOffset, 4).getUint32(0, true)];
}

/** A short description of a run, for assertion messages. */
export function describeRun(r: RunResult): string {
  const parts = [`ret ${r.ret}`, r.exitReasonName];
  if (r.errno !== undefined) parts.push(r.errno);
  if (r.mmio) {
    parts.push(
      `mmio ${r.mmio.isWrite ? 'W' : 'R'} 0x${r.mmio.physAddr.toString(16)}/${r.mmio.len}` +
        (r.mmio.isWrite ? ` [${[...r.mmio.data.subarray(0, r.mmio.len)].join(',')}]` : ''),
    );
  }
  const o = outOf(r);
  if (o) parts.push(`out ${o[0] === SYNC_PORT ? 'sync' : o[0] === REPORT_PORT ? 'report' : o[0]} ${o[1]}`);
  if (r.memoryFault) parts.push(`fault gpa 0x${r.memoryFault.gpa.toString(16)} flags ${r.memoryFault.flags}`);
  return parts.join(', ');
}

/**
 * Inside a backend's describe block: returns `make()`, which creates a host of that backend that
 * is disposed (and checked, on the model) after each case.
 */
export function useHosts(b: Backend): () => Host {
  const made: Host[] = [];
  afterEach(() => {
    for (const h of made.splice(0)) {
      h.dispose();
      b.checkDisposed(h);
    }
  });
  return () => {
    const h = b.make();
    made.push(h);
    return h;
  };
}

/** A title for a case that needs `feature`: the skip reason is appended where `b` lacks it. */
export function needTitle(b: Backend, feature: Feature, what: string): string {
  const n = need(b, feature);
  return n.ok ? what : `${what} [skipped on ${b.label}: ${n.reason}]`;
}
