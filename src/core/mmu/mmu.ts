/**
 * The x86 TDP page-fault handler (arch/x86/kvm/mmu/mmu.c: kvm_mmu_page_fault →
 * kvm_tdp_page_fault → kvm_mmu_faultin_pfn → kvm_tdp_mmu_map), implementing the decision table
 * of kvm-semantics.md §3 row by row.
 *
 * The handler is split at the kernel's own phases so a test can act in the windows between
 * them, where concurrent threads act in the kernel (architecture §6):
 *
 *   snapshot   mmu_invalidate_seq is read (row 1)
 *   classify   private or shared, memslot lookup, MMIO, INVALID slot, lockless retry check (2–6)
 *   resolve    the pfn from guest_memfd (7a–7e) or the host mm (8a–8f), post-lookup check (9)
 *   install    under mmu_lock: is_page_fault_stale (10), then the SPTE at its level (11)
 *
 * `vm.faultPhaseHook(phase, fault)` runs after each of the first three phases. Install is atomic
 * with respect to invalidations, as it is under mmu_lock in the kernel.
 *
 * Results are values (RET_PF_*), never exceptions: a memory-fault exit or an EFAULT is a
 * negative errno with `vcpu`-side details filled in by the caller from `fault`.
 */

import { ERRNO } from '../errno.js';
import type { KvmVm } from '../kvm/kvm_main.js';
import type { KvmMemorySlot, KvmMemslots } from '../kvm/memslot.js';
import { VM_FAULT_HWPOISON } from '../mm/mmap.js';
import type { Pfn } from '../units.js';
import { SPTE_ACCESSED, SPTE_DIRTY, SPTE_HOST_WRITABLE, SPTE_PRESENT, SPTE_WRITABLE } from './spte.js';
import type { TdpMmu } from './tdp_mmu.js';

export const RET_PF_CONTINUE = 0;
export const RET_PF_RETRY = 1;
export const RET_PF_EMULATE = 2;
export const RET_PF_WRITE_PROTECTED = 3;
export const RET_PF_INVALID = 4;
export const RET_PF_FIXED = 5;
export const RET_PF_SPURIOUS = 6;

export type FaultPhase = 'snapshot' | 'classify' | 'resolve';

/** struct kvm_page_fault. */
export interface KvmPageFault {
  readonly gpa: number;
  readonly gfn: number;
  readonly write: boolean;
  /** KVM_PRE_FAULT_MEMORY: maps as a read fault, reports errors differently (PF-3, PF-4). */
  readonly prefault: boolean;
  readonly asId: number;
  isPrivate: boolean;
  slot: KvmMemorySlot | null;
  mmuSeq: number;
  pfn: number;
  /** The page reference taken by the pfn lookup, released after install or on retry. */
  refcounted: boolean;
  /** How to release it when not the default put (memfile's putUnlockPfn, seed 001). */
  release: ((pfn: number) => void) | null;
  mapWritable: boolean;
  hostLevel: number;
  goalLevel: number;
  /** Set when the fault ends in a KVM_EXIT_MEMORY_FAULT (RUN-1): the errno. */
  memoryFaultErrno: number;
  /** Set when the fault raised a signal at the vCPU thread (row 8e). */
  signal: { readonly name: 'SIGBUS'; readonly code: 'BUS_MCEERR_AR'; readonly hva: number } | null;
  /** Which row of §3 decided the outcome (for traces and tests). */
  row: string;
}

/** What the private rows need from guest_memfd (provided by guest_memfd.ts). */
export interface GmemFaultOps {
  /**
   * kvm_gmem_get_pfn: the pfn backing gfn in the slot's file, with a reference taken, or a
   * negative errno (EFAULT for a released file, EHWPOISON, ENOMEM…). Rows 7b–7e.
   */
  getPfn(vm: KvmVm, slot: KvmMemorySlot, gfn: number, fault: KvmPageFault): number;
  /** Whether the slot is gmem-only (GUEST_MEMFD_FLAG_MMAP file, GB-8). */
  gmemOnly(slot: KvmMemorySlot): boolean;
  /** Releases the reference getPfn took. */
  putPfn(vm: KvmVm, pfn: number): void;
}

/** Extension hook for slots whose faults the model serves specially (ALLONES, memfd-paired). */
export interface SlotFaultExtension {
  /** Returns a RET_PF_* / negative errno if it handled the fault, or null to let the table decide. */
  faultin(vm: KvmVm, slot: KvmMemorySlot, fault: KvmPageFault): number | null;
}

/** 2^52: the gfns of the 64-bit guest physical address space (a u64 gpa >> 12). */
const GFN_SPACE = 2 ** 52;

/**
 * The gfn of a gpa as the CPU forms it: the gpa is a u64, so a negative number (the model's
 * form of an address ≥ 2^63: u64 − 2^64, see vcpu.ts `ea`) or one ≥ 2^64 wraps modulo 2^64.
 * Exact for any gpa within 2^53 of a multiple of 2^64; the result is in 0..2^52−1.
 */
export function gpaToGfn(gpa: number): number {
  const g = Math.floor(gpa / 4096);
  if (g >= 0 && g < GFN_SPACE) return g;
  const w = g % GFN_SPACE;
  return w < 0 ? w + GFN_SPACE : w;
}

export function newFault(gpa: number, write: boolean, prefault: boolean, asId: number): KvmPageFault {
  return {
    gpa,
    gfn: gpaToGfn(gpa),
    write,
    prefault,
    asId,
    isPrivate: false,
    slot: null,
    mmuSeq: 0,
    pfn: -1,
    refcounted: false,
    release: null,
    mapWritable: false,
    hostLevel: 1,
    goalLevel: 1,
    memoryFaultErrno: 0,
    signal: null,
    row: '',
  };
}

function releasePfn(vm: KvmVm, fault: KvmPageFault): void {
  if (!fault.refcounted) return;
  fault.refcounted = false;
  if (fault.release) {
    fault.release(fault.pfn);
    return;
  }
  if (fault.isPrivate || (fault.slot && vm.gmemFaultOps.gmemOnly(fault.slot))) {
    vm.gmemFaultOps.putPfn(vm, fault.pfn);
  } else {
    vm.kernel.alloc.put(fault.pfn as Pfn);
  }
}

/** kvm_prepare_memory_fault_exit: the fault ends in KVM_EXIT_MEMORY_FAULT with errno. */
function memoryFault(fault: KvmPageFault, errno: number, row: string): number {
  fault.memoryFaultErrno = errno;
  fault.row = row;
  return -errno;
}

/**
 * fast_page_fault: a write to a present leaf that is write-protected only for dirty logging
 * (HOST_WRITABLE still set) is fixed in place, without a pfn lookup, and the page is logged.
 */
function fastPageFault(vm: KvmVm, mmu: TdpMmu, fault: KvmPageFault): boolean {
  if (!fault.write) return false;
  if (mmu.lookup(fault.gfn) < 0) return false;
  const flags = mmu.lastFlags;
  if ((flags & SPTE_HOST_WRITABLE) === 0 || (flags & SPTE_WRITABLE) !== 0) return false;
  const slot = vm.gfnToMemslot(fault.gfn, fault.asId);
  if (!slot || slot.invalid) return false;
  mmu.setLeafFlags(fault.gfn, SPTE_WRITABLE | SPTE_DIRTY | SPTE_ACCESSED, 0);
  slot.markDirty(fault.gfn - slot.baseGfn);
  fault.slot = slot;
  fault.row = 'fast';
  return true;
}

/**
 * kvm_tdp_page_fault for one access. Returns RET_PF_FIXED / RET_PF_RETRY / RET_PF_EMULATE, or a
 * negative errno (EFAULT without a record: rows 8f/RUN-3; with `memoryFaultErrno` set: a
 * memory-fault exit, RUN-1).
 */
export function kvmTdpPageFault(
  vm: KvmVm,
  fault: KvmPageFault,
  lookup: ((gfn: number, asId: number) => KvmMemorySlot | null) | null = null,
): number {
  vm.stats.faults++;
  const mmu = vm.mmuFor(fault.asId); // the SMM root is created by its first fault
  const hook = vm.faultPhaseHook;

  if (!fault.prefault && fastPageFault(vm, mmu, fault)) return RET_PF_FIXED;

  // Step 0 (§3.1): is the access private? On SW_PROTECTED VMs the attribute decides, read when
  // the fault is taken (kvm_mmu_page_fault sets PFERR_PRIVATE_ACCESS from it).
  fault.isPrivate = vm.hasPrivateMem && vm.isPrivateGfn(fault.gfn);
  // Row 1: snapshot mmu_invalidate_seq before anything is resolved (INV-5).
  fault.mmuSeq = vm.mmuInvalidateSeq;
  // Row 2: the attribute changed under the fault (an attribute change raced with it). Only
  // something run from the phase hook can change it between the two reads (the model is
  // single-threaded), so without a hook the second read is skipped: it would equal the first.
  if (hook !== null) {
    hook('snapshot', fault);
    if (vm.hasPrivateMem && fault.isPrivate !== vm.isPrivateGfn(fault.gfn)) {
      return memoryFault(fault, ERRNO.EFAULT, '2');
    }
  }
  const slot = lookup === null ? vm.gfnToMemslot(fault.gfn, fault.asId) : lookup(fault.gfn, fault.asId);
  fault.slot = slot;
  if (!slot) {
    if (fault.isPrivate) return memoryFault(fault, ERRNO.EFAULT, '3'); // row 3
    fault.row = '4'; // row 4: emulated MMIO; cache an MMIO SPTE tagged with the memslot generation
    // kvm_handle_noslot_fault: "Do not create an MMIO SPTE for a gfn greater than
    // host.MAXPHYADDR" — such an access (in the model: any gpa ≥ 2^maxPhyAddr, including a
    // negative base + disp wrapped to u64) is emulated without touching the SPTEs.
    if (!fault.prefault && fault.gfn <= vm.maxGfn) {
      mmu.mapMmio(fault.gfn, vm.memslots[fault.asId]?.generation ?? 0);
    }
    return RET_PF_EMULATE;
  }
  if (slot.invalid) {
    fault.row = '5';
    vm.stats.faultRetries++;
    return RET_PF_RETRY; // row 5
  }
  // The memslot generation the slot was found under: every memslot change bumps it (MR-25),
  // including the publication of an INVALID slot, so row 10 can tell whether to look again.
  const slots = vm.memslots[fault.asId] as KvmMemslots;
  const slotsGen = slots.generation;
  if (vm.invalidateRetryGfn(fault.mmuSeq, fault.gfn)) {
    fault.row = '6';
    vm.stats.faultRetries++;
    return RET_PF_RETRY; // row 6 (the lockless pre-check)
  }
  hook?.('classify', fault);

  const ext = vm.slotFaultExtension(slot);
  const extResult = ext ? ext.faultin(vm, slot, fault) : null;
  if (extResult !== null && extResult !== RET_PF_CONTINUE) return extResult;
  const ops = vm.gmemFaultOps;
  const gmemOnly = ops.gmemOnly(slot);
  if (extResult === RET_PF_CONTINUE) {
    // The extension resolved the pfn (and holds its reference); go on to the checks and install.
  } else if (fault.isPrivate || gmemOnly) {
    // Rows 7a–7e: guest_memfd.
    if (!slot.isGmem) return memoryFault(fault, ERRNO.EFAULT, '7a');
    if (!slot.gmem) return memoryFault(fault, ERRNO.EFAULT, '7b');
    const r = ops.getPfn(vm, slot, fault.gfn, fault);
    if (r < 0)
      return memoryFault(fault, -r, -r === ERRNO.EFAULT ? '7b' : -r === ERRNO.EHWPOISON ? '7c' : '7d');
    fault.pfn = r;
    fault.refcounted = true;
    fault.mapWritable = true;
    fault.hostLevel = 1; // HP-4: guest_memfd folios are order 0
    fault.row = '7e';
  } else {
    // Rows 8a–8f: shared memory through userspace_addr.
    if (fault.write && slot.readonly) {
      fault.row = '8a';
      return RET_PF_EMULATE;
    }
    const mm = vm.kernel.mm;
    const hva = slot.gfnToHva(fault.gfn);
    // A pre-fault maps as a read fault (PF-3); a read fault maps writable if the host allows.
    const r = mm.gup(hva, fault.write);
    if (r < 0) {
      if (r === VM_FAULT_HWPOISON) {
        // Row 8e: SIGBUS (BUS_MCEERR_AR) to the vCPU thread, and the access is retried.
        fault.signal = { name: 'SIGBUS', code: 'BUS_MCEERR_AR', hva };
        fault.row = '8e';
        return RET_PF_RETRY;
      }
      fault.row = '8f';
      return -ERRNO.EFAULT; // row 8f: no memory_fault record (RUN-3)
    }
    fault.pfn = r;
    fault.refcounted = true;
    fault.mapWritable = mm.lastWritable && !slot.readonly;
    fault.hostLevel = mm.lastLevel;
    fault.row = '8b';
  }
  // Row 9: the post-lookup check (lockless).
  if (vm.invalidateRetryGfn(fault.mmuSeq, fault.gfn)) {
    releasePfn(vm, fault);
    fault.row = '9';
    vm.stats.faultRetries++;
    return RET_PF_RETRY;
  }
  hook?.('resolve', fault);

  // Under mmu_lock from here: nothing can interleave.
  // Row 10: is_page_fault_stale.
  if (vm.invalidateRetryGfn(fault.mmuSeq, fault.gfn)) {
    releasePfn(vm, fault);
    fault.row = '10';
    vm.stats.faultRetries++;
    return RET_PF_RETRY;
  }
  // The slot may have been deleted or moved in the window; the kernel's SRCU read side keeps the
  // old slot alive, but its INVALID publication bumped no seq, so check it here like
  // kvm_faultin_pfn's memslot generation check does. An unchanged generation means no memslot
  // changed since the slot was found: the lookup would return it again, still valid.
  if (slots.generation !== slotsGen && (vm.gfnToMemslot(fault.gfn, fault.asId) !== slot || slot.invalid)) {
    releasePfn(vm, fault);
    fault.row = '10';
    vm.stats.faultRetries++;
    return RET_PF_RETRY;
  }
  // Row 11: install at the level HP-1/HP-2/HP-4/HP-5 allow.
  install(vm, mmu, slot, fault);
  releasePfn(vm, fault);
  return RET_PF_FIXED;
}

/** kvm_mmu_hugepage_adjust + kvm_tdp_mmu_map. */
function install(vm: KvmVm, mmu: TdpMmu, slot: KvmMemorySlot, fault: KvmPageFault): void {
  let level = 1;
  // Private, gmem-only and extension-resolved mappings follow their backing's folio order.
  const private_ = fault.isPrivate || vm.gmemFaultOps.gmemOnly(slot);
  if (!slot.logDirty && !private_) {
    // HP-4: the host mapping level caps; HP-2/HP-3: disallow_lpage must be 0 at that level.
    for (let l = Math.min(3, fault.hostLevel); l >= 2; l--) {
      if (slot.lpageAllowed(fault.gfn, l as 2 | 3)) {
        level = l;
        break;
      }
    }
  }
  fault.goalLevel = level;
  const off = level === 1 ? 0 : fault.gfn % (level === 2 ? 512 : 262144);
  let flags = SPTE_PRESENT | SPTE_ACCESSED;
  if (fault.mapWritable) flags |= SPTE_HOST_WRITABLE;
  // make_spte: the mapping is writable whenever the host allows it, even for a read fault, and a
  // writable SPTE in a dirty-logged slot logs its page right away (so a page KVM maps writable
  // is never missed by the log; pages only read may be reported too, as in the kernel).
  const writable = fault.mapWritable;
  if (writable) flags |= SPTE_WRITABLE | (fault.write ? SPTE_DIRTY : 0);
  mmu.map(fault.gfn - off, level as 1 | 2 | 3, fault.pfn - off, flags);
  if (writable && slot.logDirty) slot.markDirty(fault.gfn - slot.baseGfn);
}
