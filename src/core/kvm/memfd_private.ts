/**
 * Memfd-paired private memslots — an extension (seeds 000, 001, 003; architecture §3).
 *
 * Before guest_memfd, private memory was planned as an ordinary memfd paired with a memslot
 * (`KVM_MEM_PRIVATE` with `private_fd`/`private_offset`, RFC v3–v10). This module models that
 * design on top of the model's memfile_notifier (seed 001):
 *
 * - pairing (seed 000's kvm_memfd_register): at slot creation KVM takes a reference on the
 *   memfd and registers a memfile_notifier on it; at slot deletion it unregisters and drops the
 *   reference;
 * - faults (seed 003's presence rule): a *private* access to a page present in the memfd maps it
 *   — taken with `getLockPfn`, released with `putUnlockPfn` only after the SPTE is installed —
 *   and to an absent page exits to userspace to convert (the RFC's KVM_EXIT_MEMORY_ERROR
 *   MAP_PRIVATE, reported as KVM_EXIT_MEMORY_FAULT with flags PRIVATE); a *shared* access to a
 *   present page exits to convert the other way (MAP_SHARED → flags 0), and to an absent page
 *   takes the ordinary shared path through userspace_addr;
 * - notifications: a hole punched in the memfd reaches KVM as `invalidate` (zap, INV-4); an
 *   allocating fallocate reaches it as `fallocate`, which also invalidates, because under the
 *   presence rule a page that appears turns its gfn private and any shared mapping of it stale;
 * - owner references: each callback takes a reference on the VM with kvm_get_kvm_safe and skips
 *   a VM that is already being destroyed (seed 000's get_owner/put_owner).
 *
 * The access kind (private or shared) comes from the VM's memory attributes, as for guest_memfd,
 * so the extension needs a private-memory VM (KVM_X86_SW_PROTECTED_VM). Without the extension
 * enabled, the flag and the fields are rejected exactly as upstream rejects unknown flags (MR-4).
 */

import { ERRNO, fail } from '../errno.js';
import type { File } from '../mm/file.js';
import {
  type MemfileNotifier,
  type MemfilePfnOps,
  memfileRegisterNotifier,
  memfileUnregisterNotifier,
} from '../mm/memfile_notifier.js';
import { type KvmPageFault, RET_PF_CONTINUE, type SlotFaultExtension } from '../mmu/mmu.js';
import {
  KVM_CAP_GUESTMEM_PRIVATE_MEMFD,
  KVM_MEM_GUEST_MEMFD,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_PRIVATE_MEMFD,
  KVM_MEM_READONLY,
} from '../uapi.js';
import type { PgOff } from '../units.js';
import type { KvmVm } from './kvm_main.js';
import type { KvmMemorySlot } from './memslot.js';

const PAGE = 4096;

/** What a paired slot holds (slot.ext). */
export interface MemfdPairing {
  readonly file: File;
  readonly pfnOps: MemfilePfnOps;
  readonly notifier: MemfileNotifier;
  /** File page index of the slot's first page. */
  readonly pgoff: number;
  readonly stats: { invalidates: number; fallocates: number; skippedDying: number; lockedFaults: number };
}

export function pairingOf(slot: KvmMemorySlot): MemfdPairing | null {
  return (slot.flags & KVM_MEM_PRIVATE_MEMFD) !== 0 ? (slot.ext as MemfdPairing | null) : null;
}

/** Gfn range of the slot that file pages [start, end) back, or null. */
function gfnRange(slot: KvmMemorySlot, p: MemfdPairing, start: number, end: number) {
  const lo = Math.max(start, p.pgoff);
  const hi = Math.min(end, p.pgoff + slot.npages);
  if (lo >= hi) return null;
  return { asId: slot.asId, start: slot.baseGfn + (lo - p.pgoff), end: slot.baseGfn + (hi - p.pgoff) };
}

/** kvm_memfd_register: pairs `slot` with the memfd `fd` (seed 000). */
function pair(vm: KvmVm, slot: KvmMemorySlot, fd: number, offset: number): void {
  const call = 'KVM_SET_USER_MEMORY_REGION2';
  if (offset % PAGE !== 0) fail('EINVAL', `private_offset ${offset} is not page aligned`, call);
  const file = vm.kernel.fds.lookup(fd);
  // Seed 000: "if (!fd.file) return -EINVAL;"
  if (!file) fail('EINVAL', `private_fd ${fd} is not an open fd`, call);
  const stats = { invalidates: 0, fallocates: 0, skippedDying: 0, lockedFaults: 0 };
  const pgoff = offset / PAGE;
  const withOwner = (what: 'invalidates' | 'fallocates', start: PgOff, end: PgOff): void => {
    // get_owner/put_owner: skip a VM that is on its way out.
    if (!vm.getSafe()) {
      stats.skippedDying++;
      return;
    }
    try {
      stats[what]++;
      const r = gfnRange(slot, pairing, start, end);
      if (r) vm.invalidateGfnRanges([r], () => {});
    } finally {
      vm.put();
    }
  };
  const notifier: MemfileNotifier = {
    invalidate: (s, e) => withOwner('invalidates', s, e),
    fallocate: (s, e) => withOwner('fallocates', s, e),
  };
  // memfile_register_notifier: EOPNOTSUPP for a file that cannot back memory (seed 001).
  const pfnOps = memfileRegisterNotifier(file.inode, notifier);
  file.get(); // the slot keeps the file (seed 000 keeps slot->file until unregister)
  const pairing: MemfdPairing = { file, pfnOps, notifier, pgoff, stats };
  slot.ext = pairing;
}

/** kvm_memfd_unregister. */
function unpair(_vm: KvmVm, slot: KvmMemorySlot): void {
  const p = pairingOf(slot);
  if (!p) return;
  slot.ext = null;
  memfileUnregisterNotifier(p.file.inode, p.notifier);
  p.file.put();
}

/** Seed 003's fault rule for paired slots. */
const faultExtension: SlotFaultExtension = {
  faultin(_vm: KvmVm, slot: KvmMemorySlot, fault: KvmPageFault): number | null {
    const p = pairingOf(slot);
    if (!p) return null;
    const index = (fault.gfn - slot.baseGfn + p.pgoff) as PgOff;
    const r = p.pfnOps.getLockPfn(index);
    const present = 'pfn' in r;
    if (fault.isPrivate) {
      if (!present) {
        if (r.errno === 'EHWPOISON') return memoryFaultExit(fault, ERRNO.EHWPOISON, '003-private-poisoned');
        return memoryFaultExit(fault, ERRNO.EFAULT, '003-private-absent'); // convert to private
      }
      // Mapped with the page locked; putUnlockPfn runs after install (or on retry).
      p.stats.lockedFaults++;
      fault.pfn = r.pfn;
      fault.refcounted = true;
      fault.release = (pfn) => p.pfnOps.putUnlockPfn(pfn);
      fault.mapWritable = true;
      fault.hostLevel = r.order === 0 ? 1 : r.order === 9 ? 2 : 3;
      fault.row = '003-private';
      return RET_PF_CONTINUE;
    }
    if (present) {
      p.pfnOps.putUnlockPfn(r.pfn);
      return memoryFaultExit(fault, ERRNO.EFAULT, '003-shared-present'); // convert to shared
    }
    return null; // an ordinary shared fault through userspace_addr
  },
};

function memoryFaultExit(fault: KvmPageFault, errno: number, row: string): number {
  fault.memoryFaultErrno = errno;
  fault.row = row;
  return -errno;
}

/** Registers the extension on a VM (available when the host was created with it). */
export function installMemfdPrivateExtension(vm: KvmVm): void {
  vm.extensionCaps.set(KVM_CAP_GUESTMEM_PRIVATE_MEMFD, (v) => (v.hasPrivateMem ? 1 : 0));
  vm.extensionEnable.set(KVM_CAP_GUESTMEM_PRIVATE_MEMFD, (v, cap) => {
    if ((cap.flags ?? 0) !== 0 || !v.hasPrivateMem) {
      fail('EINVAL', 'memfd-paired private slots need a private-memory VM and flags 0', 'KVM_ENABLE_CAP');
    }
    v.extensions.add(KVM_CAP_GUESTMEM_PRIVATE_MEMFD);
  });
  vm.extensionSlotFlags.set(KVM_MEM_PRIVATE_MEMFD, {
    // Valid once enabled, and exclusive with GUEST_MEMFD, READONLY and dirty logging (seed era).
    valid: (v, req) =>
      v.extensions.has(KVM_CAP_GUESTMEM_PRIVATE_MEMFD) &&
      (req.flags & (KVM_MEM_GUEST_MEMFD | KVM_MEM_READONLY | KVM_MEM_LOG_DIRTY_PAGES)) === 0,
  });
  vm.slotExtensions.push({
    prepare: (v, slot, req) => {
      if ((slot.flags & KVM_MEM_PRIVATE_MEMFD) !== 0) pair(v, slot, req.privateFd, req.privateOffset);
    },
    remove: (v, slot) => unpair(v, slot),
  });
  vm.slotFaultExtensions.set(KVM_MEM_PRIVATE_MEMFD, faultExtension);
  vm.immutableSlotFlags.add(KVM_MEM_PRIVATE_MEMFD);
}
