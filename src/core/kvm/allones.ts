/**
 * KVM_MEM_ALLONES — an extension (seed 004: Vitaly Kuznetsov's RFC of May 2020, never merged;
 * kvm-semantics.md §5.2, architecture §3). Off unless the host is created with
 * `kvm: { extensions: { allones: true } }` and the VM enables KVM_CAP_GUESTMEM_ALLONES.
 *
 * A memslot flag for PCI holes (sparse PCIe config space): every byte of the slot reads 0xff and
 * writes are discarded by exiting to userspace. The RFC's design, as modelled here:
 *
 * - one read-only page of 0xff per host, shared by every ALLONES slot of every VM. The RFC
 *   allocates it in kvm_init and frees it in kvm_exit; the model allocates it on the host's
 *   first ALLONES slot and frees it at host teardown (`ModelKernel.teardown`). It is a reserved
 *   kernel frame in no file and no VMA, so no process can map or write it. Each ALLONES slot
 *   holds a reference on it (the RFC only pinned it for the module's lifetime; slot references
 *   make "never freed while a slot maps it" checkable at teardown);
 * - validation in the RFC's order (`__kvm_set_memory_region`): the flag is valid only once the VM
 *   enabled the capability (MR-4 — otherwise it is rejected like any unknown flag), and never
 *   with GUEST_MEMFD (which took the RFC's bit 2 in v6.8) or KVM_MEM_PRIVATE_MEMFD (both need the
 *   slot's extension data); then, right after the gpa alignment check (MR-6), `userspace_addr`
 *   must be 0 (AO-1) and READONLY / LOG_DIRTY_PAGES are refused (AO-2), deletes included, as in
 *   the RFC. The ordinary MR-7 check then passes trivially (0 is aligned, and the size is bounded
 *   by MR-11 anyway, so skipping it as the RFC does would not change any errno). Alignment,
 *   overlap, moves and deletes follow the ordinary rules. Like READONLY, the flag cannot be
 *   toggled on an existing slot (MR-14, AO-3) — the RFC forgot this: its FLAGS_ONLY change would
 *   have left the 0xff mappings in place under a slot that is no longer ALLONES;
 * - faults (the RFC's `__gfn_to_pfn_memslot`): a read maps the shared page read-only at 4 KiB —
 *   never huge, as the RFC's `disallow_lpage` for the slot ensures (AO-4); a write resolves to no
 *   pfn and is emulated, i.e. exits as KVM_EXIT_MMIO with the data like a write to a READONLY
 *   slot (RO-1), without caching an MMIO SPTE (AO-5); a private access (SW_PROTECTED VMs) is left
 *   to the decision table, which ends it in a memory-fault exit (row 7a: no guest_memfd);
 * - patch 4/5's "map the whole slot upon first fault", as an option of the enable call
 *   (`args[0] = KVM_ALLONES_MAP_WHOLE_SLOT`): a read fault in a slot also maps every other gfn of
 *   the slot that is not mapped yet (AO-6), in windows of at most 2^20 pages (4 GiB) around the
 *   fault so that a huge hole cannot stall a fault without bound. This is what the reviewers
 *   objected to: the SPTEs cost page-table memory for gfns the guest may never touch
 *   (bench/allones.bench.ts measures it).
 *
 * Other differences from the RFC: bit 8 and capability 0x10000 + 183 instead of bit 2 and 183
 * (uapi.ts); only KVM_SET_USER_MEMORY_REGION2 takes the flag (v1 accepts bits 0–1 only, MR-2);
 * /dev/kvm's KVM_CHECK_EXTENSION reports 0 for extension capabilities, the VM fd reports 1; KVM's
 * own accessors (`readGuest`/`writeGuest`) go through userspace_addr as for every slot, so on an
 * ALLONES slot they fail with EFAULT.
 */

import { fail, kvmWarn } from '../errno.js';
import type { ModelKernel } from '../host.js';
import { OWNER_KERNEL, type PageAllocator } from '../mm/page_alloc.js';
import { type KvmPageFault, RET_PF_CONTINUE, RET_PF_EMULATE, type SlotFaultExtension } from '../mmu/mmu.js';
import { SPTE_PRESENT } from '../mmu/spte.js';
import {
  KVM_CAP_GUESTMEM_ALLONES,
  KVM_MEM_ALLONES,
  KVM_MEM_GUEST_MEMFD,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_PRIVATE_MEMFD,
  KVM_MEM_READONLY,
} from '../uapi.js';
import type { Pfn } from '../units.js';
import type { KvmVm } from './kvm_main.js';
import type { KvmMemorySlot } from './memslot.js';

const PAGE = 4096;

/** KVM_ENABLE_CAP(KVM_CAP_GUESTMEM_ALLONES) args[0] bit: map the whole slot on a fault (RFC 4/5). */
export const KVM_ALLONES_MAP_WHOLE_SLOT = 1;

/** Pages the whole-slot option maps per fault at most: the 2^20-page window around the fault. */
export const ALLONES_MAP_WINDOW_PAGES = 2 ** 20;

/**
 * Slot references the page can take: its refcount is a u16 in the model (page_alloc.ts) and
 * also carries the kernel's own reference and one fault's transient reference. Beyond this a new
 * slot fails with ENOMEM, as GUP does when a page's refcount would overflow.
 */
const MAX_SLOT_REFS = 0xffff - 2;

/** The host's all-ones page. */
interface AllonesPage {
  readonly pfn: Pfn;
  /** ALLONES slots referencing it, over all VMs of the host. */
  slots: number;
  /** Drops a fault's transient reference (one closure per host, not per fault). */
  readonly release: (pfn: number) => void;
}

/** What an ALLONES slot holds in `slot.ext`: its reference on the page (moves with the slot). */
class AllonesRef {
  held = true;
  constructor(readonly page: AllonesPage) {}
}

/** One all-ones page per modelled host, keyed by its page allocator. */
const pages = new WeakMap<PageAllocator, AllonesPage>();

/** Per-VM state: whether the whole-slot option is on, and counters. */
interface AllonesVmState {
  mapWholeSlot: boolean;
  readonly stats: AllonesStats;
}

/** Counters of one VM's ALLONES faults. */
export interface AllonesStats {
  /** Read faults served from the all-ones page. */
  readFaults: number;
  /** Write faults sent to emulation (each becomes a KVM_EXIT_MMIO write). */
  writeEmulations: number;
  /** SPTEs installed by the whole-slot option beyond the faulting gfn. */
  eagerSptes: number;
}

const vmState = new WeakMap<KvmVm, AllonesVmState>();

function refOf(slot: KvmMemorySlot): AllonesRef | null {
  return slot.ext instanceof AllonesRef ? slot.ext : null;
}

/** The host's all-ones page, created on first use and freed at host teardown. */
function hostPage(kernel: ModelKernel, call: string): AllonesPage {
  const alloc = kernel.alloc;
  const existing = pages.get(alloc);
  if (existing) return existing;
  const pfn = alloc.allocReserved(OWNER_KERNEL);
  if (pfn === -1) fail('ENOMEM', 'no host memory left for the all-ones page', call, 'MR-18');
  alloc.fill(pfn, 0, PAGE, 0xff);
  const page: AllonesPage = { pfn, slots: 0, release: (p) => alloc.put(p as Pfn) };
  pages.set(alloc, page);
  kernel.teardown.push(() => {
    // kvm_exit: every VM is gone by now, so only the kernel's own reference may remain.
    const refs = alloc.refcount[pfn] as number;
    if (page.slots !== 0 || refs !== 1) {
      kvmWarn(
        `all-ones page ${pfn} still referenced at host teardown (${page.slots} slots, refcount ${refs})`,
      );
      return;
    }
    pages.delete(alloc);
    alloc.freeReserved(pfn);
  });
  return page;
}

/** The host's all-ones page (pfn and references), or null before its first ALLONES slot. */
export function allonesPage(kernel: ModelKernel): { readonly pfn: Pfn; readonly slots: number } | null {
  const p = pages.get(kernel.alloc);
  return p ? { pfn: p.pfn, slots: p.slots } : null;
}

/** A VM's ALLONES counters, or null if the extension is not installed on it. */
export function allonesStats(vm: KvmVm): Readonly<AllonesStats> | null {
  return vmState.get(vm)?.stats ?? null;
}

/** Slot creation (and MOVE's new slot): take a reference, or inherit the moved slot's. */
function prepare(vm: KvmVm, slot: KvmMemorySlot): void {
  if ((slot.flags & KVM_MEM_ALLONES) === 0) return;
  const old = vm.memslots[slot.asId]?.byId.get(slot.id);
  const moved = old ? refOf(old) : null;
  if (moved) {
    // MOVE: the old slot's reference goes with it (the old slot leaves without a remove hook).
    slot.ext = moved;
    return;
  }
  const call = 'KVM_SET_USER_MEMORY_REGION2';
  const page = hostPage(vm.kernel, call);
  if (page.slots >= MAX_SLOT_REFS) {
    fail('ENOMEM', `the all-ones page already has ${page.slots} slot references`, call, 'MR-18');
  }
  vm.kernel.alloc.get(page.pfn);
  page.slots++;
  slot.ext = new AllonesRef(page);
}

/** Slot deletion, VM teardown, or a failed creation/move: drop the slot's reference. */
function remove(vm: KvmVm, slot: KvmMemorySlot): void {
  const ref = refOf(slot);
  if (!ref) return;
  // A MOVE that failed after prepare: the published old slot still owns the reference.
  const live = vm.memslots[slot.asId]?.byId.get(slot.id);
  if (live && live !== slot && live.ext === ref) return;
  slot.ext = null;
  if (!ref.held) {
    kvmWarn(`slot ${slot.id}: all-ones page reference dropped twice`);
    return;
  }
  ref.held = false;
  ref.page.slots--;
  vm.kernel.alloc.put(ref.page.pfn);
}

/**
 * RFC patch 4/5: map every unmapped gfn of the slot (within the fault's window) to the page.
 * Runs inside the fault, where nothing interleaves; a gfn that an invalidation covers now, or
 * that the fault's snapshot no longer vouches for, is left to its own fault — the same check
 * `is_page_fault_stale` makes for the faulting gfn. Returns the SPTEs installed.
 */
function mapWholeSlot(vm: KvmVm, slot: KvmMemorySlot, fault: KvmPageFault, pfn: number): number {
  const mmu = vm.mmuFor(fault.asId);
  const window = Math.floor(fault.gfn / ALLONES_MAP_WINDOW_PAGES) * ALLONES_MAP_WINDOW_PAGES;
  const start = Math.max(slot.baseGfn, window);
  const end = Math.min(slot.endGfn, window + ALLONES_MAP_WINDOW_PAGES);
  let n = 0;
  for (let gfn = start; gfn < end; gfn++) {
    if (gfn === fault.gfn || mmu.lookup(gfn) >= 0) continue;
    if (vm.invalidateRetryGfn(fault.mmuSeq, gfn)) continue;
    if (vm.hasPrivateMem && vm.isPrivateGfn(gfn)) continue;
    // Prefetched: present, read-only, not accessed (make_spte with prefetch).
    mmu.map(gfn, 1, pfn, SPTE_PRESENT);
    n++;
  }
  return n;
}

function faultExtension(state: AllonesVmState): SlotFaultExtension {
  return {
    faultin(vm: KvmVm, slot: KvmMemorySlot, fault: KvmPageFault): number | null {
      const ref = refOf(slot);
      if (!ref) {
        kvmWarn(`ALLONES slot ${slot.id} has no all-ones page reference`);
        return null;
      }
      // Private accesses: row 7a decides (the slot has no guest_memfd).
      if (fault.isPrivate) return null;
      if (fault.write) {
        // The RFC's KVM_PFN_NOSLOT for a write: emulate, i.e. a KVM_EXIT_MMIO write (RO-1).
        state.stats.writeEmulations++;
        fault.row = 'allones-write';
        return RET_PF_EMULATE;
      }
      const page = ref.page;
      if (state.mapWholeSlot) state.stats.eagerSptes += mapWholeSlot(vm, slot, fault, page.pfn);
      // kvm_get_pfn: a transient reference, released after the SPTE is installed (or on retry).
      vm.kernel.alloc.get(page.pfn);
      fault.pfn = page.pfn;
      fault.refcounted = true;
      fault.release = page.release;
      fault.mapWritable = false;
      fault.hostLevel = 1;
      fault.row = 'allones-read';
      state.stats.readFaults++;
      return RET_PF_CONTINUE;
    },
  };
}

/** Registers the extension on a VM (available when the host was created with it). */
export function installAllonesExtension(vm: KvmVm): void {
  const state: AllonesVmState = {
    mapWholeSlot: false,
    stats: { readFaults: 0, writeEmulations: 0, eagerSptes: 0 },
  };
  vmState.set(vm, state);
  // KVM_CAP_ALLONES_MEM: the RFC answers 1 on every x86 host.
  vm.extensionCaps.set(KVM_CAP_GUESTMEM_ALLONES, () => 1);
  vm.extensionEnable.set(KVM_CAP_GUESTMEM_ALLONES, (v, cap) => {
    const flags = cap.flags ?? 0;
    const arg0 = cap.args?.[0] ?? 0;
    if (flags !== 0 || (arg0 & ~KVM_ALLONES_MAP_WHOLE_SLOT) !== 0) {
      fail(
        'EINVAL',
        `flags ${flags} / args[0] 0x${arg0.toString(16)}: only KVM_ALLONES_MAP_WHOLE_SLOT (1) is defined`,
        'KVM_ENABLE_CAP',
      );
    }
    v.extensions.add(KVM_CAP_GUESTMEM_ALLONES);
    state.mapWholeSlot = (arg0 & KVM_ALLONES_MAP_WHOLE_SLOT) !== 0;
  });
  vm.extensionSlotFlags.set(KVM_MEM_ALLONES, {
    // MR-4: valid once enabled; never with GUEST_MEMFD or PRIVATE_MEMFD (slot.ext has one owner).
    valid: (v, req) =>
      v.extensions.has(KVM_CAP_GUESTMEM_ALLONES) &&
      (req.flags & (KVM_MEM_GUEST_MEMFD | KVM_MEM_PRIVATE_MEMFD)) === 0,
  });
  vm.extensionRegionChecks.push((_v, mem, call) => {
    if ((mem.flags & KVM_MEM_ALLONES) === 0) return;
    // The RFC: "KVM_MEM_ALLONES doesn't need userspace_addr".
    if (mem.userspaceAddr !== 0) {
      fail(
        'EINVAL',
        `userspace_addr 0x${mem.userspaceAddr.toString(16)} must be 0 for a KVM_MEM_ALLONES slot`,
        call,
        'AO-1',
      );
    }
    // The RFC: "KVM_MEM_ALLONES is mutually exclusive with KVM_MEM_READONLY/KVM_MEM_LOG_DIRTY_PAGES".
    if ((mem.flags & (KVM_MEM_READONLY | KVM_MEM_LOG_DIRTY_PAGES)) !== 0) {
      fail(
        'EINVAL',
        `flags 0x${mem.flags.toString(16)}: KVM_MEM_ALLONES excludes READONLY and LOG_DIRTY_PAGES`,
        call,
        'AO-2',
      );
    }
  });
  vm.fixedSlotFlags |= KVM_MEM_ALLONES;
  vm.slotExtensions.push({ prepare: (v, slot) => prepare(v, slot), remove });
  vm.slotFaultExtensions.set(KVM_MEM_ALLONES, faultExtension(state));
}
