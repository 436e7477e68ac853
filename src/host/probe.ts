/**
 * Can the real-kernel backend work in this process? `realKvmAvailable()` opens /dev/kvm, checks
 * the API version and the capabilities the binding and its tests rely on, and says why not
 * otherwise (device missing, EACCES, koffi not loadable, a missing capability), so a test suite
 * can skip with the reason in its title instead of failing or silently passing.
 */

import { existsSync } from 'node:fs';
import { KvmError } from '../core/errno.js';
import {
  GUEST_MEMFD_FLAG_INIT_SHARED,
  GUEST_MEMFD_FLAG_MMAP,
  KVM_API_VERSION,
  KVM_CAP_GUEST_MEMFD,
  KVM_CAP_GUEST_MEMFD_FLAGS,
  KVM_CAP_READONLY_MEM,
  KVM_CAP_USER_MEMORY2,
  KVM_CHECK_EXTENSION,
  KVM_GET_API_VERSION,
  O_CLOEXEC,
  O_RDWR,
} from '../core/uapi.js';
import { trySys } from './sys.js';

/** The answer of `realKvmAvailable()`. */
export type KvmProbe = { readonly ok: true } | { readonly ok: false; readonly reason: string };

const REQUIRED: readonly (readonly [number, string, (v: number) => boolean, string])[] = [
  [KVM_CAP_USER_MEMORY2, 'KVM_CAP_USER_MEMORY2', (v) => v > 0, '> 0'],
  [KVM_CAP_GUEST_MEMFD, 'KVM_CAP_GUEST_MEMFD', (v) => v > 0, '> 0'],
  [
    KVM_CAP_GUEST_MEMFD_FLAGS,
    'KVM_CAP_GUEST_MEMFD_FLAGS',
    (v) => (v & (GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED)) === 3,
    'to include MMAP|INIT_SHARED (3)',
  ],
  [KVM_CAP_READONLY_MEM, 'KVM_CAP_READONLY_MEM', (v) => v > 0, '> 0'],
];

let cached: { readonly path: string; readonly probe: KvmProbe } | undefined;

/**
 * The KVM device the real backend opens: /dev/kvm, or `GUESTMEM_KVM_DEVICE` when set (so a test
 * can show what happens without KVM: the probe and `createRealHost` open this same path).
 */
export function kvmDevicePath(): string {
  const p = process.env['GUESTMEM_KVM_DEVICE'];
  return p === undefined || p === '' ? '/dev/kvm' : p;
}

/** Probes the KVM device at `path` (uncached); `realKvmAvailable()` probes /dev/kvm once. */
export function probeKvm(path: string): KvmProbe {
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    return {
      ok: false,
      reason: `the real backend needs Linux on x86-64 (this is ${process.platform}/${process.arch})`,
    };
  }
  if (!existsSync(path)) return { ok: false, reason: `${path} does not exist (no KVM on this machine)` };
  const s = trySys();
  if ('error' in s) return { ok: false, reason: s.error };
  const sys = s.sys;
  let fd: number;
  try {
    fd = sys.open(path, O_RDWR | O_CLOEXEC);
  } catch (e) {
    const code = e instanceof KvmError ? e.code : String(e);
    return {
      ok: false,
      reason: `cannot open ${path}: ${code}${code === 'EACCES' ? ' (not in the kvm group, or not root)' : ''}`,
    };
  }
  try {
    const api = sys.ioctlValue(fd, KVM_GET_API_VERSION, 0, 'KVM_GET_API_VERSION');
    if (api !== KVM_API_VERSION)
      return { ok: false, reason: `KVM_GET_API_VERSION is ${api}, not ${KVM_API_VERSION}` };
    for (const [cap, name, good, want] of REQUIRED) {
      const v = sys.ioctlValue(fd, KVM_CHECK_EXTENSION, cap, 'KVM_CHECK_EXTENSION');
      if (!good(v)) return { ok: false, reason: `${name} is ${v} on ${path}; the binding needs it ${want}` };
    }
    return { ok: true };
  } catch (e) {
    return { ok: false, reason: `probing ${path} failed: ${e instanceof Error ? e.message : String(e)}` };
  } finally {
    sys.close(fd);
  }
}

/**
 * Whether the real backend works here: /dev/kvm opens, the API version is 12, and the kernel has
 * USER_MEMORY2, GUEST_MEMFD, GUEST_MEMFD_FLAGS ⊇ MMAP|INIT_SHARED and READONLY_MEM. Cached.
 */
export function realKvmAvailable(): KvmProbe {
  const path = kvmDevicePath();
  if (cached?.path !== path) cached = { path, probe: probeKvm(path) };
  return cached.probe;
}
