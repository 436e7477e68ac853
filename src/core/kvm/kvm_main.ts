/**
 * KVM's generic VM code (virt/kvm/kvm_main.c, with the x86 parts of arch/x86/kvm/x86.c that it
 * calls): /dev/kvm and its capabilities, VM creation and lifetime, memslot updates, the MMU
 * invalidation protocol fed by the host's MMU notifiers, dirty logging, and KVM's own accessors
 * of guest memory.
 *
 * Every ioctl checks in the kernel's order (the rule IDs of kvm-semantics.md name each check) and
 * changes nothing when it fails. One deliberate reordering: `kvm_arch_prepare_memory_region`'s
 * checks (MR-16) run before a DELETE/MOVE publishes its INVALID slot, where the kernel publishes,
 * zaps, then reverts on failure — the same errno and the same memslots, without dropping cached
 * SPTEs for a call that fails.
 *
 * Concurrency: the kernel runs vCPUs, MMU notifiers and ioctls in parallel under slots_lock,
 * mmu_lock and SRCU. The model runs one thing at a time; the windows the kernel's protocol exists
 * for (an invalidation between a fault's pfn lookup and its install, a memslot delete while a
 * fault is in flight) are opened on purpose through the fault handler's phase hook (mmu.ts).
 */

import type {
  ClearDirtyLog,
  CreateGuestMemfd,
  DirtyLog,
  EnableCap,
  Kvm as KvmApi,
  MemoryAttributes,
  UserspaceMemoryRegion,
  UserspaceMemoryRegion2,
  Vcpu as VcpuApi,
  Vm as VmApi,
} from '../api.js';
import { assertInvariant, fail, kvmWarn } from '../errno.js';
import type { ModelKernel } from '../host.js';
import { File, type FileOperations, FMODE_READ, FMODE_WRITE, type Inode, newIno } from '../mm/file.js';
import type { MmuNotifierRange, MmuNotifierSubscription } from '../mm/mmu_notifier.js';
import type { FaultPhase, GmemFaultOps, KvmPageFault, SlotFaultExtension } from '../mmu/mmu.js';
import { TdpMmu } from '../mmu/tdp_mmu.js';
import {
  memoryRegionArgs,
  tpKvmMmuInvalidateBegin,
  tpKvmMmuInvalidateEnd,
  tpKvmSetUserMemoryRegion,
  tpKvmUnmapGfnRange,
} from '../tracepoints.js';
import {
  KVM_API_VERSION,
  KVM_CAP_CHECK_EXTENSION_VM,
  KVM_CAP_DESTROY_MEMORY_REGION_WORKS,
  KVM_CAP_DIRTY_LOG_RING,
  KVM_CAP_DISABLE_QUIRKS2,
  KVM_CAP_EXIT_HYPERCALL,
  KVM_CAP_GUEST_MEMFD,
  KVM_CAP_GUEST_MEMFD_FLAGS,
  KVM_CAP_IMMEDIATE_EXIT,
  KVM_CAP_JOIN_MEMORY_REGIONS_WORKS,
  KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
  KVM_CAP_MAX_VCPUS,
  KVM_CAP_MEMORY_ATTRIBUTES,
  KVM_CAP_MEMORY_FAULT_INFO,
  KVM_CAP_MULTI_ADDRESS_SPACE,
  KVM_CAP_NR_MEMSLOTS,
  KVM_CAP_NR_VCPUS,
  KVM_CAP_PRE_FAULT_MEMORY,
  KVM_CAP_READONLY_MEM,
  KVM_CAP_SYNC_MMU,
  KVM_CAP_USER_MEMORY,
  KVM_CAP_USER_MEMORY2,
  KVM_CAP_VM_TYPES,
  KVM_DIRTY_LOG_INITIALLY_SET,
  KVM_DIRTY_LOG_MANUAL_CAPS,
  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
  KVM_HC_MAP_GPA_RANGE,
  KVM_MEM_GUEST_MEMFD,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_MAX_NR_PAGES,
  KVM_MEM_READONLY,
  KVM_MEM_SLOTS_NUM,
  KVM_MEMORY_ATTRIBUTE_PRIVATE,
  KVM_MEMSLOT_INVALID,
  KVM_USER_MEM_SLOTS,
  KVM_VCPU_MMAP_SIZE,
  KVM_X86_DEFAULT_VM,
  KVM_X86_QUIRK_SLOT_ZAP_ALL,
  KVM_X86_SW_PROTECTED_VM,
  KVM_X86_VALID_QUIRKS,
} from '../uapi.js';
import { u64AddOverflows } from '../units.js';
import { createVcpu } from '../vcpu/vcpu.js';
import { installAllonesExtension } from './allones.js';
import { initMixed, KvmMemoryAttributes, kvmSetMemoryAttributes } from './attributes.js';
import { type GmemLifetime, gmemFaultOps, kvmGmemBind, kvmGmemCreate, kvmGmemUnbind } from './guest_memfd.js';
import { installMemfdPrivateExtension } from './memfd_private.js';
import { KvmMemorySlot, KvmMemslots, type KvmMemorySlot as Slot } from './memslot.js';

const PAGE = 4096;
/** x86-64 with LAM/LA57 off: user addresses end below 2^47 (access_ok). */
const TASK_SIZE_MAX = 2 ** 47 - PAGE;
/** KVM_MAX_VCPUS on x86. */
const KVM_MAX_VCPUS = 4096;
/** VM types the modelled host supports: DEFAULT, and SW_PROTECTED (CONFIG_KVM_SW_PROTECTED_VM + TDP MMU). */
const SUPPORTED_VM_TYPES = (1 << KVM_X86_DEFAULT_VM) | (1 << KVM_X86_SW_PROTECTED_VM);

const hex = (n: number): string => `0x${n.toString(16)}`;

/** Options of the modelled KVM, per host. */
export interface KvmModelOptions {
  /** Host MAXPHYADDR: kvm_mmu_max_gfn() = 2^(maxPhyAddr − 12) − 1 (MR-16). Default 48 (4-level TDP). */
  readonly maxPhyAddr?: number;
  /** guest_memfd lifetime design (seed 002): upstream's 'file-pins-vm' (default) or 'slot-pins-file'. */
  readonly gmemLifetime?: GmemLifetime;
  /** Seed mechanisms upstream never merged, made available to VMs (architecture §3). */
  readonly extensions?: {
    /** seeds 000/001/003: memfd-paired private slots (KVM_MEM_PRIVATE_MEMFD). */
    readonly privateMemfd?: boolean;
    /** seed 004: KVM_MEM_ALLONES. */
    readonly allones?: boolean;
  };
}

/** The VM-side hooks that private memory (guest_memfd, attributes) plugs into. */
export interface PrivateMemOps {
  /** kvm_gmem_bind: validates and binds; throws KvmError (GB-1..GB-5). */
  bind(vm: KvmVm, slot: Slot, fd: number, offset: number): void;
  /** kvm_gmem_unbind. */
  unbind(vm: KvmVm, slot: Slot): void;
}

/** kvm_userspace_memory_region2 after copy_from_user: every field present, u64s as numbers. */
export interface Region {
  slot: number;
  flags: number;
  guestPhysAddr: number;
  memorySize: number;
  userspaceAddr: number;
  guestMemfdOffset: number;
  guestMemfd: number;
  privateFd: number;
  privateOffset: number;
}

/** What a memslot update did (for traces and tests). */
export type MrChange = 'CREATE' | 'DELETE' | 'MOVE' | 'FLAGS_ONLY' | 'NONE';

/** Test seam: runs while a DELETE/MOVE's INVALID slot is published (MR-21), before the final state. */
export type MemslotWindowHook = (slot: Slot, change: 'DELETE' | 'MOVE') => void;

function u32(n: number, what: string): number {
  if (!Number.isInteger(n)) throw new TypeError(`${what} ${String(n)} is not an integer`);
  return n >>> 0;
}
function u64(n: number | undefined, what: string): number {
  const v = n ?? 0;
  if (!Number.isInteger(v) || v < 0) throw new TypeError(`${what} ${String(v)} is not a u64`);
  return v;
}

/** The /dev/kvm file: system ioctls. */
export const kvmDevFops: FileOperations = { name: 'kvm' };
/** A VM fd. */
export const kvmVmFops: FileOperations = {
  name: 'kvm-vm',
  release: (file) => (file.priv as KvmVm).put(),
};

function anonInode(): Inode {
  return { ino: newIno(), mode: 0o600, size: 0, maxBytes: 0, mapping: null, mmaps: new Set() };
}

/** KVM_CHECK_EXTENSION (§1.4). `vm` is null on /dev/kvm. */
export function checkExtension(cap: number, vm: KvmVm | null): number {
  const privateMem = vm?.hasPrivateMem ?? false;
  switch (cap) {
    case KVM_CAP_USER_MEMORY:
    case KVM_CAP_SYNC_MMU:
    case KVM_CAP_DESTROY_MEMORY_REGION_WORKS:
    case KVM_CAP_JOIN_MEMORY_REGIONS_WORKS:
    case KVM_CAP_CHECK_EXTENSION_VM:
    case KVM_CAP_IMMEDIATE_EXIT:
    case KVM_CAP_USER_MEMORY2:
    case KVM_CAP_MEMORY_FAULT_INFO:
    case KVM_CAP_GUEST_MEMFD:
    case KVM_CAP_PRE_FAULT_MEMORY:
      return 1;
    case KVM_CAP_NR_VCPUS:
    case KVM_CAP_MAX_VCPUS:
      return KVM_MAX_VCPUS;
    case KVM_CAP_NR_MEMSLOTS:
      return KVM_USER_MEM_SLOTS;
    case KVM_CAP_READONLY_MEM:
      // !has_protected_state: 1 for DEFAULT and SW_PROTECTED.
      return 1;
    case KVM_CAP_MULTI_ADDRESS_SPACE:
      return vm ? vm.nrAs : 2;
    case KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2:
      return KVM_DIRTY_LOG_MANUAL_CAPS;
    case KVM_CAP_DIRTY_LOG_RING:
      // The model has no dirty rings (kvm-semantics §6 leaves them out); a VMM falls back to
      // bitmaps, as it does on kernels without the ring.
      return 0;
    case KVM_CAP_EXIT_HYPERCALL:
      return 1 << KVM_HC_MAP_GPA_RANGE;
    case KVM_CAP_DISABLE_QUIRKS2:
      return KVM_X86_VALID_QUIRKS;
    case KVM_CAP_MEMORY_ATTRIBUTES:
      return vm === null || privateMem ? KVM_MEMORY_ATTRIBUTE_PRIVATE : 0;
    case KVM_CAP_VM_TYPES:
      return SUPPORTED_VM_TYPES;
    case KVM_CAP_GUEST_MEMFD_FLAGS:
      // MMAP | (INIT_SHARED if kvm == NULL or !has_private_mem)
      return vm === null || !privateMem ? 3 : 1;
    default:
      return vm?.extensionCap(cap) ?? 0;
  }
}

/** struct kvm. */
export class KvmVm {
  readonly hasPrivateMem: boolean;
  readonly preFaultAllowed: boolean;
  /** Memslot address spaces: 2 (with SMM) or 1 for private-memory VMs (GEN-4). */
  readonly nrAs: number;
  readonly memslots: KvmMemslots[];
  /**
   * Slot table: MemslotIndex handles index it. Slot `id` of address space `as` is entry
   * `id * nrAs + as` (memslot.ts SlotsById, which fills it).
   */
  readonly slotTable: (Slot | null)[] = [];
  /**
   * The TDP root of each address space, by id — of those that have one. Address space 0's exists
   * from creation; the SMM address space's (1) is created by `mmuFor` when something first needs
   * it, as the kernel allocates a root when a vCPU first loads one (kvm_mmu_load; the SMM role
   * only once a vCPU enters SMM). Until then `mmu.length` is 1 and the calls that would only
   * zap or write-protect in it have nothing to do.
   */
  readonly mmu: TdpMmu[];
  /** Host MAXPHYADDR of the VM's TDP roots. */
  private readonly mmuMaxPhyAddr: number;
  /** kvm_mmu_max_gfn(). */
  readonly maxGfn: number;
  nrMemslotPages = 0;

  // The invalidation protocol (INV-1..INV-5).
  mmuInvalidateSeq = 0;
  mmuInvalidateInProgress = 0;
  mmuInvalidateRangeStart = -1;
  mmuInvalidateRangeEnd = -1;
  /** Host notifier brackets that began an invalidation here (so their end ends it). */
  private readonly openBrackets = new Set<MmuNotifierRange>();

  /** KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 flags. */
  manualDirtyLogProtect = 0;
  /** Quirks disabled with KVM_CAP_DISABLE_QUIRKS2. */
  disabledQuirks = 0;
  /** KVM_CAP_EXIT_HYPERCALL mask. */
  exitHypercallMask = 0;
  /** Extension capabilities enabled on this VM (architecture §3). */
  readonly extensions = new Set<number>();
  /** vm_dead: every ioctl answers EIO (GEN-1). */
  dead = false;
  /** users_count: the VM fd, each vCPU, each guest_memfd (in the file-pins-VM design). */
  users = 1;
  destroyed = false;
  /** guest_memfd binding (guest_memfd.ts). */
  readonly privateOps: PrivateMemOps = { bind: kvmGmemBind, unbind: kvmGmemUnbind };
  /** Test seam for MR-21's window. */
  memslotWindowHook: MemslotWindowHook | null = null;
  /** Test seam: runs between the fault handler's phases (architecture §6, mmu.ts). */
  faultPhaseHook: ((phase: FaultPhase, fault: KvmPageFault) => void) | null = null;
  /** guest_memfd's side of the private fault path (guest_memfd.ts). */
  readonly gmemFaultOps: GmemFaultOps = gmemFaultOps;
  /** The VM's memory attributes (attributes.ts, MA-*). */
  readonly attributes = new KvmMemoryAttributes();
  readonly gmemLifetime: GmemLifetime;
  /** Extensions that serve faults of their own slots (seed 004, seeds 000/001). */
  readonly slotFaultExtensions = new Map<number, SlotFaultExtension>();
  /** Called when the VM is finally destroyed (last user gone). */
  readonly onDestroy: (() => void)[] = [];
  readonly vcpus: { readonly id: number; destroy(): void }[] = [];
  private readonly notifierSub: MmuNotifierSubscription;
  readonly stats = {
    memslotUpdates: 0,
    invalidations: 0,
    zaps: 0,
    zappedSptes: 0,
    mmioExits: 0,
    faults: 0,
    faultRetries: 0,
  };

  constructor(
    readonly kernel: ModelKernel,
    readonly type: number,
    readonly options: KvmModelOptions,
  ) {
    this.hasPrivateMem = type === KVM_X86_SW_PROTECTED_VM;
    this.gmemLifetime = options.gmemLifetime ?? 'file-pins-vm';
    this.preFaultAllowed = type === KVM_X86_DEFAULT_VM || type === KVM_X86_SW_PROTECTED_VM;
    this.nrAs = this.hasPrivateMem ? 1 : 2;
    const maxPhyAddr = options.maxPhyAddr ?? 48;
    this.maxGfn = 2 ** (maxPhyAddr - 12) - 1;
    this.memslots = Array.from(
      { length: this.nrAs },
      (_, as) => new KvmMemslots(as, this.slotTable, this.nrAs),
    );
    this.mmuMaxPhyAddr = maxPhyAddr;
    this.mmu = [new TdpMmu({ maxPhyAddr })];
    // kvm_init_mmu_notifier: shared memory follows the host mm (KVM_CAP_SYNC_MMU, MR-26).
    if (options.extensions?.privateMemfd) installMemfdPrivateExtension(this);
    if (options.extensions?.allones) installAllonesExtension(this);
    this.notifierSub = kernel.mm.notifiers.register({
      invalidateRangeStart: (r) => this.mmuNotifierInvalidateRangeStart(r),
      invalidateRangeEnd: (r) => this.mmuNotifierInvalidateRangeEnd(r),
    });
  }

  // ---- lifetime ---------------------------------------------------------------------------

  /** kvm_get_kvm(). */
  get(): void {
    if (this.destroyed) kvmWarn('kvm_get_kvm on a destroyed VM');
    this.users++;
  }

  /** kvm_get_kvm_safe(): a reference unless the VM is already on its way out. */
  getSafe(): boolean {
    if (this.users === 0 || this.destroyed) return false;
    this.users++;
    return true;
  }

  /** kvm_put_kvm(): the last reference destroys the VM (kvm_destroy_vm). */
  put(): void {
    if (this.users <= 0) {
      kvmWarn('kvm_put_kvm with no users');
      return;
    }
    this.users--;
    if (this.users === 0) this.destroy();
  }

  private destroy(): void {
    this.destroyed = true;
    this.notifierSub.unregister();
    for (const v of this.vcpus) v.destroy();
    // kvm_free_memslots: unbinds guest_memfd, frees metadata.
    for (const slots of this.memslots) {
      for (const slot of [...slots.byId.values()]) this.removeSlot(slot, true);
    }
    for (const m of this.mmu) m.zapAll();
    for (const f of this.onDestroy) f();
  }

  /** Whether gfn's attribute is PRIVATE (the truth for SW_PROTECTED VMs, §3.1). */
  isPrivateGfn(gfn: number): boolean {
    return (this.attributes.get(gfn) & KVM_MEMORY_ATTRIBUTE_PRIVATE) !== 0;
  }

  /** The extension that handles faults in this slot, if its flags name one. */
  slotFaultExtension(slot: Slot): SlotFaultExtension | null {
    if (this.slotFaultExtensions.size === 0) return null;
    for (const [flag, ext] of this.slotFaultExtensions) if ((slot.flags & flag) !== 0) return ext;
    return null;
  }

  // ---- capabilities -----------------------------------------------------------------------

  /** The answer of KVM_CHECK_EXTENSION for extension caps (0 unless the extension says more). */
  extensionCap(cap: number): number {
    return this.extensionCaps.get(cap)?.(this) ?? 0;
  }
  /** Extension capability handlers: cap → check. */
  readonly extensionCaps = new Map<number, (vm: KvmVm) => number>();
  /** Extension enable handlers: cap → enable (throws KvmError). */
  readonly extensionEnable = new Map<number, (vm: KvmVm, cap: EnableCap) => void>();

  /** KVM_ENABLE_CAP on the VM. */
  enableCap(cap: EnableCap): 0 {
    const call = 'KVM_ENABLE_CAP';
    const flags = cap.flags ?? 0;
    const arg0 = cap.args?.[0] ?? 0;
    switch (cap.cap) {
      case KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: {
        // DL-4: flags must be 0; allowed bits are ENABLE, plus INITIALLY_SET with ENABLE.
        let allowed = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE;
        if ((arg0 & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) !== 0) allowed = KVM_DIRTY_LOG_MANUAL_CAPS;
        if (flags !== 0 || (arg0 & ~allowed) !== 0) {
          fail(
            'EINVAL',
            `flags ${flags} / args[0] ${hex(arg0)}: only ENABLE and ENABLE|INITIALLY_SET`,
            call,
            'DL-4',
          );
        }
        this.manualDirtyLogProtect = arg0;
        return 0;
      }
      case KVM_CAP_DISABLE_QUIRKS2:
        if (flags !== 0 || (arg0 & ~KVM_X86_VALID_QUIRKS) !== 0) {
          fail('EINVAL', `quirk mask ${hex(arg0)} has unknown bits`, call);
        }
        this.disabledQuirks |= arg0;
        return 0;
      case KVM_CAP_EXIT_HYPERCALL:
        // HC-1
        if (flags !== 0 || (arg0 & ~(1 << KVM_HC_MAP_GPA_RANGE)) !== 0) {
          fail('EINVAL', `hypercall exit mask ${hex(arg0)}: only 1 << KVM_HC_MAP_GPA_RANGE`, call, 'HC-1');
        }
        this.exitHypercallMask = arg0;
        return 0;
      default: {
        const ext = this.extensionEnable.get(cap.cap);
        if (ext) {
          ext(this, cap);
          return 0;
        }
        return fail('EINVAL', `capability ${cap.cap} cannot be enabled on this VM`, call);
      }
    }
  }

  /** quirk enabled (not disabled). SLOT_ZAP_ALL applies to DEFAULT VMs only (MR-21). */
  zapAllOnSlotChange(): boolean {
    return this.type === KVM_X86_DEFAULT_VM && (this.disabledQuirks & KVM_X86_QUIRK_SLOT_ZAP_ALL) === 0;
  }

  // ---- memslots ---------------------------------------------------------------------------

  /** Memslot flags an extension makes valid (architecture §3). */
  readonly extensionSlotFlags = new Map<number, { valid: (vm: KvmVm, req: Region) => boolean }>();
  /** Extension flags whose slots, like guest_memfd slots, can only be deleted (MR-14). */
  readonly immutableSlotFlags = new Set<number>();
  /** Extension flags that, like READONLY, cannot be toggled on an existing slot (MR-14). */
  fixedSlotFlags = 0;
  /** Extension checks of every request (deletes too), run where seed 004 put its own: after MR-6. */
  readonly extensionRegionChecks: ((vm: KvmVm, mem: Region, call: string) => void)[] = [];
  /** Extension hooks around slot creation and removal. */
  readonly slotExtensions: {
    prepare?(vm: KvmVm, slot: Slot, req: Region): void;
    remove?(vm: KvmVm, slot: Slot): void;
  }[] = [];

  /** check_memory_region_flags (MR-4). */
  private checkMemoryRegionFlags(mem: Region, call: string): void {
    let valid = KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_GUEST_MEMFD;
    if ((mem.flags & KVM_MEM_GUEST_MEMFD) !== 0) valid &= ~KVM_MEM_LOG_DIRTY_PAGES;
    // kvm_arch_has_readonly_mem: no protected state on DEFAULT and SW_PROTECTED.
    if ((mem.flags & KVM_MEM_GUEST_MEMFD) === 0) valid |= KVM_MEM_READONLY;
    if (this.extensionSlotFlags.size !== 0) {
      for (const [flag, ext] of this.extensionSlotFlags) if (ext.valid(this, mem)) valid |= flag;
    }
    if ((mem.flags & ~valid) >>> 0 !== 0) {
      fail(
        'EINVAL',
        `flags ${hex(mem.flags)}: ${hex((mem.flags & ~valid) >>> 0)} not valid here (valid ${hex(valid)})`,
        call,
        'MR-4',
      );
    }
  }

  /** KVM_SET_USER_MEMORY_REGION(2): kvm_vm_ioctl → kvm_set_memory_region → kvm_set_memslot. */
  setMemoryRegion(region: UserspaceMemoryRegion2, v2: boolean): MrChange {
    const call = v2 ? 'KVM_SET_USER_MEMORY_REGION2' : 'KVM_SET_USER_MEMORY_REGION';
    this.checkAlive(call);
    // MR-1: v1 copies 32 bytes; the v2-only fields read as zero.
    const mem: Region = {
      slot: u32(region.slot, 'slot'),
      flags: u32(region.flags, 'flags'),
      guestPhysAddr: u64(region.guestPhysAddr, 'guest_phys_addr'),
      memorySize: u64(region.memorySize, 'memory_size'),
      userspaceAddr: u64(region.userspaceAddr, 'userspace_addr'),
      guestMemfdOffset: v2 ? u64(region.guestMemfdOffset, 'guest_memfd_offset') : 0,
      guestMemfd: v2 ? u32(region.guestMemfd ?? 0, 'guest_memfd') : 0,
      privateFd: v2 ? u32(region.privateFd ?? 0, 'private_fd') : 0,
      privateOffset: v2 ? u64(region.privateOffset, 'private_offset') : 0,
    };
    // MR-2
    if (!v2 && (mem.flags & ~(KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY)) !== 0) {
      fail(
        'EINVAL',
        `flags ${hex(mem.flags)}: the v1 ioctl takes only LOG_DIRTY_PAGES and READONLY`,
        call,
        'MR-2',
      );
    }
    const id = mem.slot & 0xffff;
    const asId = mem.slot >>> 16;
    // MR-3
    if (id >= KVM_USER_MEM_SLOTS)
      fail('EINVAL', `slot id ${id} ≥ KVM_USER_MEM_SLOTS (${KVM_USER_MEM_SLOTS})`, call, 'MR-3');
    this.checkMemoryRegionFlags(mem, call);
    // MR-5..MR-11, in kvm_set_memory_region's order.
    if (mem.memorySize % PAGE !== 0)
      fail('EINVAL', `memory_size ${mem.memorySize} is not a multiple of 4096`, call, 'MR-5');
    if (mem.guestPhysAddr % PAGE !== 0)
      fail('EINVAL', `guest_phys_addr ${hex(mem.guestPhysAddr)} is not page aligned`, call, 'MR-6');
    for (const check of this.extensionRegionChecks) check(this, mem, call);
    if (
      mem.userspaceAddr % PAGE !== 0 ||
      mem.memorySize > TASK_SIZE_MAX ||
      mem.userspaceAddr > TASK_SIZE_MAX - mem.memorySize
    ) {
      fail(
        'EINVAL',
        `userspace_addr ${hex(mem.userspaceAddr)} + ${mem.memorySize} is not a page-aligned user range`,
        call,
        'MR-7',
      );
    }
    if (
      (mem.flags & KVM_MEM_GUEST_MEMFD) !== 0 &&
      (mem.guestMemfdOffset % PAGE !== 0 || u64AddOverflows(mem.guestMemfdOffset, mem.memorySize))
    ) {
      fail('EINVAL', `guest_memfd_offset ${mem.guestMemfdOffset} is unaligned or overflows`, call, 'MR-8');
    }
    if (asId >= this.nrAs || id >= KVM_MEM_SLOTS_NUM) {
      fail('EINVAL', `address space ${asId} ≥ ${this.nrAs} for this VM type`, call, 'MR-9');
    }
    if (u64AddOverflows(mem.guestPhysAddr, mem.memorySize)) {
      fail('EINVAL', `guest_phys_addr ${hex(mem.guestPhysAddr)} + memory_size overflows`, call, 'MR-10');
    }
    const npages = mem.memorySize / PAGE;
    if (npages > KVM_MEM_MAX_NR_PAGES)
      fail('EINVAL', `${npages} pages > KVM_MEM_MAX_NR_PAGES`, call, 'MR-11');

    const slots = this.memslots[asId] as KvmMemslots;
    const old = slots.byId.get(id) ?? null;
    if (mem.memorySize === 0) {
      // MR-12: delete; the request's other fields are not compared.
      if (!old) fail('EINVAL', `slot ${id} (address space ${asId}) does not exist`, call, 'MR-12');
      this.setMemslot(old, null, 'DELETE', mem, call);
      return 'DELETE';
    }
    const baseGfn = mem.guestPhysAddr / PAGE;
    let change: MrChange;
    if (!old) {
      change = 'CREATE';
      // MR-13: the page total fits in an unsigned long (always, below 2^53 pages).
      if (this.nrMemslotPages + npages > 2 ** 64 - 1)
        fail('EINVAL', 'total memslot pages overflow', call, 'MR-13');
    } else {
      // MR-14
      if ((mem.flags & KVM_MEM_GUEST_MEMFD) !== 0) {
        fail(
          'EINVAL',
          `slot ${id} exists: guest_memfd slots are immutable, they can only be deleted`,
          call,
          'MR-14',
        );
      }
      for (const f of this.immutableSlotFlags) {
        if (((mem.flags | old.flags) & f) !== 0) {
          fail(
            'EINVAL',
            `slot ${id} exists: extension slots (flag 0x${f.toString(16)}) can only be deleted`,
            call,
            'MR-14',
          );
        }
      }
      if (mem.userspaceAddr !== old.userspaceAddr || npages !== old.npages) {
        fail('EINVAL', `slot ${id} exists: userspace_addr and size cannot change`, call, 'MR-14');
      }
      if (((mem.flags ^ old.flags) & (KVM_MEM_READONLY | KVM_MEM_GUEST_MEMFD | this.fixedSlotFlags)) !== 0) {
        fail(
          'EINVAL',
          `slot ${id} exists: READONLY, GUEST_MEMFD and ALLONES cannot be toggled`,
          call,
          'MR-14',
        );
      }
      if (baseGfn !== old.baseGfn) change = 'MOVE';
      else if (mem.flags !== (old.flags & 0xffff)) change = 'FLAGS_ONLY';
      else return 'NONE';
    }
    // MR-15
    if (change === 'CREATE' || change === 'MOVE') {
      const h = slots.index.findIntersecting(baseGfn, baseGfn + npages, old ? old.handle : -1);
      if (h >= 0) {
        const other = this.slotTable[h] as Slot;
        fail(
          'EEXIST',
          `gfns [${hex(baseGfn)}, ${hex(baseGfn + npages)}) overlap slot ${other.id} [${hex(other.baseGfn)}, ${hex(other.endGfn)})`,
          call,
          'MR-15',
        );
      }
    }
    const slot = new KvmMemorySlot(asId, id, baseGfn, npages, mem.flags, mem.userspaceAddr);
    // MR-17: bind after the overlap check, before the arch checks; undone on any later failure.
    if ((mem.flags & KVM_MEM_GUEST_MEMFD) !== 0) {
      this.privateOps.bind(this, slot, mem.guestMemfd, mem.guestMemfdOffset);
    }
    try {
      for (const ext of this.slotExtensions) ext.prepare?.(this, slot, mem);
      this.setMemslot(old, slot, change, mem, call);
    } catch (e) {
      if ((mem.flags & KVM_MEM_GUEST_MEMFD) !== 0) this.privateOps.unbind(this, slot);
      for (const ext of this.slotExtensions) ext.remove?.(this, slot);
      throw e;
    }
    return change;
  }

  /** kvm_arch_prepare_memory_region (x86) checks, MR-16. */
  private prepareChecks(old: Slot | null, slot: Slot | null, change: MrChange, call: string): void {
    if (!slot || (change !== 'CREATE' && change !== 'MOVE')) return;
    if (slot.endGfn - 1 > this.maxGfn) {
      fail(
        'EINVAL',
        `last gfn ${hex(slot.endGfn - 1)} > kvm_mmu_max_gfn() ${hex(this.maxGfn)}`,
        call,
        'MR-16',
      );
    }
    void old;
  }

  /** kvm_set_memslot: publishes the change, two-phase for DELETE and MOVE (MR-21). */
  private setMemslot(old: Slot | null, slot: Slot | null, change: MrChange, mem: Region, call: string): void {
    this.prepareChecks(old, slot, change, call);
    const asId = (slot ?? (old as Slot)).asId;
    const slots = this.memslots[asId] as KvmMemslots;
    if (slot) {
      // kvm_prepare_memory_region: metadata (lpage_info is computed from the slot until first
      // use, memslot.ts), then the dirty bitmap (DL-1, MR-24).
      initMixed(this, slot);
      if (slot.logDirty) slot.dirtyBitmap = old?.dirtyBitmap ?? this.allocDirtyBitmap(slot.npages);
      if (old?.gmem && !slot.gmem) slot.gmem = old.gmem;
    }
    if (change === 'DELETE' || change === 'MOVE') {
      const o = old as Slot;
      // Phase 1: publish the INVALID copy; faults on it retry (RET_PF_RETRY) from now on.
      o.flags |= KVM_MEMSLOT_INVALID;
      slots.generation += this.nrAs;
      // Phase 2: zap (kvm_arch_flush_shadow_memslot): everything with the SLOT_ZAP_ALL quirk.
      this.flushShadowMemslot(o);
      this.memslotWindowHook?.(o, change);
      o.flags &= ~KVM_MEMSLOT_INVALID;
      // Phase 3: the final state.
      this.removeSlot(o, change === 'DELETE');
      if (change === 'DELETE') {
        this.nrMemslotPages -= o.npages;
      }
    } else if (change === 'FLAGS_ONLY') {
      const o = old as Slot;
      slots.index.remove(o.baseGfn);
      this.releaseHandle(o);
    }
    if (slot) {
      // The slot table entry first: the index resolves handles through it.
      slots.byId.set(slot.id, slot);
      slot.handle = slots.byId.handleOf(slot.id);
      slots.index.insert(slot.baseGfn, slot.npages, slot.handle);
      if (change === 'CREATE') this.nrMemslotPages += slot.npages;
    }
    slots.generation += this.nrAs;
    this.stats.memslotUpdates++;
    // kvm_arch_commit_memory_region: dirty-logging transitions (MR-24, HP-5).
    const mmu = this.mmu[asId]; // not created yet: nothing mapped to protect
    if (change === 'FLAGS_ONLY' && slot && old && mmu !== undefined) {
      if (slot.logDirty && !old.logDirty) {
        // Write-protect what is mapped and drop huge mappings so writes get logged at 4K.
        mmu.zapHugeRange(slot.baseGfn, slot.endGfn);
        if ((this.manualDirtyLogProtect & KVM_DIRTY_LOG_INITIALLY_SET) === 0) {
          mmu.writeProtectRange(slot.baseGfn, slot.endGfn);
        }
      }
    }
    // MR-20 needs nothing more on CREATE: MMIO SPTEs carry the memslot generation bumped above.
    void mem;
  }

  /** kvm_arch_flush_shadow_memslot: zap all (SLOT_ZAP_ALL) or only the slot's range. */
  private flushShadowMemslot(slot: Slot): void {
    const mmu = this.mmu[slot.asId]; // not created yet: nothing mapped, nothing to zap
    this.stats.zaps++;
    if (mmu === undefined) return;
    if (this.zapAllOnSlotChange()) this.stats.zappedSptes += mmu.zapAll();
    else this.stats.zappedSptes += mmu.zapRange(slot.baseGfn, slot.endGfn);
  }

  /**
   * The TDP root of address space asId (< nrAs), created on first use: by a fault or a pre-fault,
   * which map into it. Calls that only zap or write-protect read `mmu[asId]` and skip a missing
   * one, which has nothing mapped.
   */
  mmuFor(asId: number): TdpMmu {
    const mmu = this.mmu[asId];
    if (mmu !== undefined) return mmu;
    assertInvariant(asId > 0 && asId < this.nrAs, `mmuFor: address space ${asId} of ${this.nrAs}`);
    while (this.mmu.length <= asId) this.mmu.push(new TdpMmu({ maxPhyAddr: this.mmuMaxPhyAddr }));
    return this.mmu[asId] as TdpMmu; // just pushed
  }

  /** Takes a slot out of its address space (delete, move's old half, VM teardown). */
  private removeSlot(slot: Slot, final: boolean): void {
    const slots = this.memslots[slot.asId] as KvmMemslots;
    slots.index.remove(slot.baseGfn);
    if (slots.byId.get(slot.id) === slot) slots.byId.delete(slot.id);
    slot.handle = -1;
    if (final) {
      // MR-22: the bitmap goes, the binding goes; attributes stay (they are per-gfn VM state).
      slot.dirtyBitmap = null;
      if (slot.gmem) this.privateOps.unbind(this, slot);
      for (const ext of this.slotExtensions) ext.remove?.(this, slot);
    }
  }

  /** Takes the slot out of its slot table entry (byId), if it still holds it. */
  private releaseHandle(slot: Slot): void {
    const byId = (this.memslots[slot.asId] as KvmMemslots).byId;
    if (slot.handle >= 0 && byId.get(slot.id) === slot) byId.delete(slot.id);
    slot.handle = -1;
  }

  private allocDirtyBitmap(npages: number): Uint8Array {
    const b = new Uint8Array(Math.ceil(npages / 64) * 8);
    if ((this.manualDirtyLogProtect & KVM_DIRTY_LOG_INITIALLY_SET) !== 0) {
      // bitmap_set(0, npages): bits beyond the slot stay clear.
      b.fill(0xff, 0, Math.floor(npages / 8));
      if (npages % 8 !== 0) b[Math.floor(npages / 8)] = (1 << (npages % 8)) - 1;
    }
    return b;
  }

  /** The slot containing gfn in an address space (INVALID slots included), or null. */
  gfnToMemslot(gfn: number, asId = 0): Slot | null {
    const slots = this.memslots[asId];
    if (slots === undefined) return null;
    return slots.index.findValue(gfn);
  }

  // ---- the invalidation protocol (INV-1..INV-5) ---------------------------------------------

  /** kvm_mmu_invalidate_begin (INV-1). */
  invalidateBegin(): void {
    this.mmuInvalidateInProgress++;
    if (tpKvmMmuInvalidateBegin.enabled)
      tpKvmMmuInvalidateBegin.emit({ inProgress: this.mmuInvalidateInProgress });
    if (this.mmuInvalidateInProgress === 1) {
      this.mmuInvalidateRangeStart = -1;
      this.mmuInvalidateRangeEnd = -1;
    }
  }

  /** kvm_mmu_invalidate_range_add (INV-2). */
  invalidateRangeAdd(start: number, end: number): void {
    if (this.mmuInvalidateInProgress <= 0) kvmWarn('invalidate_range_add outside a begin/end bracket');
    if (this.mmuInvalidateRangeStart < 0) {
      this.mmuInvalidateRangeStart = start;
      this.mmuInvalidateRangeEnd = end;
    } else {
      this.mmuInvalidateRangeStart = Math.min(this.mmuInvalidateRangeStart, start);
      this.mmuInvalidateRangeEnd = Math.max(this.mmuInvalidateRangeEnd, end);
    }
  }

  /** kvm_mmu_invalidate_end (INV-3). */
  invalidateEnd(): void {
    this.mmuInvalidateSeq++;
    this.mmuInvalidateInProgress--;
    if (this.mmuInvalidateInProgress < 0) {
      kvmWarn('mmu_invalidate_in_progress went negative');
      this.mmuInvalidateInProgress = 0;
    }
    if (tpKvmMmuInvalidateEnd.enabled) tpKvmMmuInvalidateEnd.emit({ seq: this.mmuInvalidateSeq });
  }

  /**
   * mmu_invalidate_retry_gfn (INV-5): true if a fault that snapshotted `seq` must not install a
   * mapping of gfn.
   */
  invalidateRetryGfn(seq: number, gfn: number): boolean {
    if (
      this.mmuInvalidateInProgress > 0 &&
      gfn >= this.mmuInvalidateRangeStart &&
      gfn < this.mmuInvalidateRangeEnd
    ) {
      return true;
    }
    return this.mmuInvalidateSeq !== seq;
  }

  /** Zaps [start, end) gfns of an address space (kvm_unmap_gfn_range), all SPTE kinds. */
  unmapGfnRange(asId: number, start: number, end: number): number {
    const n = this.mmu[asId]?.zapRange(start, end) ?? 0; // not created yet: nothing to zap
    this.stats.zaps++;
    this.stats.zappedSptes += n;
    if (tpKvmUnmapGfnRange.enabled) tpKvmUnmapGfnRange.emit({ asId, start, end, zapped: n });
    return n;
  }

  /** The memslot gfn ranges that an hva range touches, per address space. */
  private hvaToGfnRanges(start: number, end: number): { asId: number; start: number; end: number }[] {
    const out: { asId: number; start: number; end: number }[] = [];
    for (const slots of this.memslots) {
      for (const slot of slots.byId.values()) {
        const s = slot.userspaceAddr;
        const e = s + slot.npages * PAGE;
        if (e <= start || s >= end) continue;
        const lo = Math.max(start, s);
        const hi = Math.min(end, e);
        out.push({
          asId: slots.asId,
          start: slot.baseGfn + Math.floor((lo - s) / PAGE),
          end: slot.baseGfn + Math.ceil((hi - s) / PAGE),
        });
      }
    }
    return out;
  }

  /** kvm_mmu_notifier_invalidate_range_start: begin only if a memslot maps the range (INV-4). */
  private mmuNotifierInvalidateRangeStart(r: MmuNotifierRange): void {
    const ranges = this.hvaToGfnRanges(r.start, r.end);
    if (ranges.length === 0) return;
    this.openBrackets.add(r);
    this.stats.invalidations++;
    this.invalidateBegin();
    for (const g of ranges) {
      this.invalidateRangeAdd(g.start, g.end);
      this.unmapGfnRange(g.asId, g.start, g.end);
    }
  }

  private mmuNotifierInvalidateRangeEnd(r: MmuNotifierRange): void {
    if (!this.openBrackets.delete(r)) return;
    this.invalidateEnd();
  }

  /**
   * Runs `work` inside an invalidation of gfn ranges (attribute changes, guest_memfd punches,
   * releases: INV-4's other sources). Does nothing around `work` if `ranges` is empty.
   */
  invalidateGfnRanges(
    ranges: readonly { asId: number; start: number; end: number; addStart?: number; addEnd?: number }[],
    work: () => void,
  ): void {
    if (ranges.length === 0) {
      work();
      return;
    }
    this.stats.invalidations++;
    this.invalidateBegin();
    try {
      for (const g of ranges) {
        // The retry range may be wider than what is zapped (MA-5: whole huge frames whose mapping
        // level may change must not be faulted in meanwhile; only leaves meeting [start, end) go).
        this.invalidateRangeAdd(g.addStart ?? g.start, g.addEnd ?? g.end);
        this.unmapGfnRange(g.asId, g.start, g.end);
      }
      work();
    } finally {
      this.invalidateEnd();
    }
  }

  // ---- dirty logging (DL-1..DL-6) -----------------------------------------------------------

  private dirtyLogSlot(slotArg: number, call: string, rule: string): Slot {
    const asId = slotArg >>> 16;
    const id = slotArg & 0xffff;
    if (asId >= this.nrAs || id >= KVM_USER_MEM_SLOTS) {
      fail('EINVAL', `slot ${id} / address space ${asId} out of range`, call, rule);
    }
    const slot = (this.memslots[asId] as KvmMemslots).byId.get(id);
    if (!slot?.dirtyBitmap)
      fail('ENOENT', `slot ${id} has no dirty bitmap (LOG_DIRTY_PAGES off?)`, call, rule);
    return slot;
  }

  /** KVM_GET_DIRTY_LOG (DL-3). */
  getDirtyLog(log: DirtyLog): 0 {
    const call = 'KVM_GET_DIRTY_LOG';
    this.checkAlive(call);
    const slot = this.dirtyLogSlot(u32(log.slot, 'slot'), call, 'DL-3');
    const bitmap = slot.dirtyBitmap as Uint8Array;
    const n = slot.dirtyBitmapBytes;
    if (log.dirtyBitmap.length < n) {
      fail('EFAULT', `dirty_bitmap has ${log.dirtyBitmap.length} bytes, the slot needs ${n}`, call, 'DL-3');
    }
    if ((this.manualDirtyLogProtect & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) !== 0) {
      // Manual protection: report without clearing or re-protecting.
      log.dirtyBitmap.set(bitmap.subarray(0, n));
      return 0;
    }
    // Snapshot and clear, write-protect what was reported, then copy out.
    const snapshot = bitmap.slice(0, n);
    bitmap.fill(0);
    this.reprotect(slot, snapshot);
    log.dirtyBitmap.set(snapshot);
    return 0;
  }

  /** Write-protects the pages whose bits are set in `bits` (so the next write is logged). */
  private reprotect(slot: Slot, bits: Uint8Array): void {
    const mmu = this.mmu[slot.asId];
    if (mmu === undefined) return; // not created yet: nothing mapped to protect
    for (let byte = 0; byte < bits.length; byte++) {
      const b = bits[byte] as number;
      if (b === 0) continue;
      for (let bit = 0; bit < 8; bit++) {
        if ((b & (1 << bit)) === 0) continue;
        const rel = byte * 8 + bit;
        if (rel >= slot.npages) break;
        mmu.writeProtectRange(slot.baseGfn + rel, slot.baseGfn + rel + 1);
      }
    }
  }

  /** KVM_CLEAR_DIRTY_LOG (DL-5). */
  clearDirtyLog(log: ClearDirtyLog): 0 {
    const call = 'KVM_CLEAR_DIRTY_LOG';
    this.checkAlive(call);
    const slotArg = u32(log.slot, 'slot');
    const asId = slotArg >>> 16;
    const id = slotArg & 0xffff;
    if (asId >= this.nrAs || id >= KVM_USER_MEM_SLOTS)
      fail('EINVAL', `slot ${id} out of range`, call, 'DL-5');
    const firstPage = u64(log.firstPage, 'first_page');
    const numPages = u32(log.numPages, 'num_pages');
    if (firstPage % 64 !== 0) fail('EINVAL', `first_page ${firstPage} is not a multiple of 64`, call, 'DL-5');
    const slot = this.dirtyLogSlot(slotArg, call, 'DL-5');
    const npages = slot.npages;
    if (
      firstPage > npages ||
      numPages > npages - firstPage ||
      (numPages < npages - firstPage && numPages % 64 !== 0)
    ) {
      fail(
        'EINVAL',
        `pages [${firstPage}, +${numPages}) do not fit slot ${id} of ${npages} pages`,
        call,
        'DL-5',
      );
    }
    const bytes = Math.ceil(numPages / 64) * 8;
    if (log.dirtyBitmap.length < bytes) {
      fail('EFAULT', `dirty_bitmap has ${log.dirtyBitmap.length} bytes, ${bytes} needed`, call, 'DL-5');
    }
    const bitmap = slot.dirtyBitmap as Uint8Array;
    const cleared = new Uint8Array(bitmap.length);
    for (let i = 0; i < numPages; i++) {
      const rel = firstPage + i;
      if (rel >= npages) break;
      if (((log.dirtyBitmap[i >>> 3] as number) & (1 << (i & 7))) === 0) continue;
      if (!slot.isDirty(rel)) continue;
      bitmap[rel >>> 3] = (bitmap[rel >>> 3] as number) & ~(1 << (rel & 7));
      cleared[rel >>> 3] = (cleared[rel >>> 3] as number) | (1 << (rel & 7));
    }
    this.reprotect(slot, cleared);
    return 0;
  }

  // ---- KVM's own accessors (kvm_read_guest / kvm_write_guest, MR-26, DL-2) ------------------

  /** kvm_read_guest: through userspace_addr, whatever the slot kind. Throws EFAULT where the kernel would. */
  readGuest(gpa: number, length: number, asId = 0): Uint8Array {
    const out = new Uint8Array(length);
    this.forGuestPages(gpa, length, asId, 'kvm_read_guest', (slot, gfn, off, done, chunk) => {
      out.set(this.kernel.mm.read(slot.gfnToHva(gfn) + off, chunk), done);
    });
    return out;
  }

  /** kvm_write_guest: through userspace_addr, marking pages dirty (DL-2). */
  writeGuest(gpa: number, bytes: Uint8Array, asId = 0): void {
    this.forGuestPages(gpa, bytes.length, asId, 'kvm_write_guest', (slot, gfn, off, done, chunk) => {
      if (slot.readonly) fail('EFAULT', `gpa ${hex(gfn * PAGE)} is in a read-only slot`, 'kvm_write_guest');
      this.kernel.mm.write(slot.gfnToHva(gfn) + off, bytes.subarray(done, done + chunk));
      slot.markDirty(gfn - slot.baseGfn);
    });
  }

  private forGuestPages(
    gpa: number,
    length: number,
    asId: number,
    call: string,
    fn: (slot: Slot, gfn: number, off: number, done: number, chunk: number) => void,
  ): void {
    let done = 0;
    while (done < length) {
      const a = gpa + done;
      const gfn = Math.floor(a / PAGE);
      const off = a - gfn * PAGE;
      const chunk = Math.min(PAGE - off, length - done);
      const slot = this.gfnToMemslot(gfn, asId);
      if (!slot || slot.invalid) fail('EFAULT', `gpa ${hex(a)} has no memslot`, call);
      try {
        fn(slot, gfn, off, done, chunk);
      } catch (e) {
        if (e instanceof Error && e.name === 'HostFault') fail('EFAULT', `gpa ${hex(a)}: ${e.message}`, call);
        throw e;
      }
      done += chunk;
    }
  }

  checkAlive(call: string): void {
    if (this.dead) fail('EIO', 'the VM is dead (vm_dead)', call, 'GEN-1');
  }

  /** kvm_vm_dead(): from now on every VM and vCPU ioctl fails with EIO (GEN-1). */
  markDead(): void {
    this.dead = true;
  }

  // ---- introspection ----------------------------------------------------------------------

  /** Memslots in gfn order, per address space (read-only view). */
  listMemslots(): Slot[] {
    const out: Slot[] = [];
    for (const slots of this.memslots) {
      slots.index.forEach((_b, _n, h) => {
        const s = this.slotTable[h];
        if (s) out.push(s);
      });
    }
    return out;
  }
}

/** The VM fd as userspace sees it: the ioctls of the `Vm` interface. */
export class VmHandle implements VmApi {
  constructor(
    readonly kvm: KvmVm,
    readonly fd: number,
    private readonly file: File<KvmVm>,
  ) {}

  get type(): number {
    return this.kvm.type;
  }

  /** fdget + f_op check: the fd must still name this VM. */
  check(call: string): KvmVm {
    const f = this.kvm.kernel.fds.lookup(this.fd);
    if (f !== this.file) fail('EBADF', `fd ${this.fd} is not this VM any more`, call);
    return this.kvm;
  }

  checkExtension(cap: number): number {
    return checkExtension(cap, this.check('KVM_CHECK_EXTENSION'));
  }
  enableCap(cap: EnableCap): 0 {
    const vm = this.check('KVM_ENABLE_CAP');
    vm.checkAlive('KVM_ENABLE_CAP');
    return vm.enableCap(cap);
  }
  setUserMemoryRegion(region: UserspaceMemoryRegion): 0 {
    this.check('KVM_SET_USER_MEMORY_REGION').setMemoryRegion(region, false);
    if (tpKvmSetUserMemoryRegion.enabled) tpKvmSetUserMemoryRegion.emit(memoryRegionArgs(region));
    return 0;
  }
  setUserMemoryRegion2(region: UserspaceMemoryRegion2): 0 {
    this.check('KVM_SET_USER_MEMORY_REGION2').setMemoryRegion(region, true);
    if (tpKvmSetUserMemoryRegion.enabled) tpKvmSetUserMemoryRegion.emit(memoryRegionArgs(region));
    return 0;
  }
  createGuestMemfd(args: CreateGuestMemfd): number {
    const vm = this.check('KVM_CREATE_GUEST_MEMFD');
    vm.checkAlive('KVM_CREATE_GUEST_MEMFD');
    return kvmGmemCreate(vm, args, vm.gmemLifetime, vm.kernel);
  }
  setMemoryAttributes(attrs: MemoryAttributes): 0 {
    const vm = this.check('KVM_SET_MEMORY_ATTRIBUTES');
    vm.checkAlive('KVM_SET_MEMORY_ATTRIBUTES');
    return kvmSetMemoryAttributes(vm, attrs);
  }
  getDirtyLog(log: DirtyLog): 0 {
    return this.check('KVM_GET_DIRTY_LOG').getDirtyLog(log);
  }
  clearDirtyLog(log: ClearDirtyLog): 0 {
    return this.check('KVM_CLEAR_DIRTY_LOG').clearDirtyLog(log);
  }
  createVcpu(id: number): VcpuApi {
    const vm = this.check('KVM_CREATE_VCPU');
    vm.checkAlive('KVM_CREATE_VCPU');
    return createVcpu(vm, id);
  }
  close(): 0 {
    this.check('close');
    this.kvm.kernel.fds.close(this.fd);
    return 0;
  }
}

/** Hooks run on every new VM (private memory, extensions register themselves here). */
export const vmInitHooks: ((vm: KvmVm) => void)[] = [];

/** The /dev/kvm fd. */
export class KvmDevice implements KvmApi {
  constructor(
    private readonly kernel: ModelKernel,
    readonly fd: number,
    private readonly file: File,
    private readonly options: KvmModelOptions,
  ) {}

  private check(call: string): void {
    if (this.kernel.fds.lookup(this.fd) !== this.file)
      fail('EBADF', `fd ${this.fd} is not /dev/kvm any more`, call);
  }

  getApiVersion(): number {
    this.check('KVM_GET_API_VERSION');
    return KVM_API_VERSION;
  }
  checkExtension(cap: number): number {
    this.check('KVM_CHECK_EXTENSION');
    return checkExtension(cap, null);
  }
  getVcpuMmapSize(): number {
    this.check('KVM_GET_VCPU_MMAP_SIZE');
    return KVM_VCPU_MMAP_SIZE;
  }

  /** KVM_CREATE_VM (GEN-3, GEN-4). */
  createVm(type = KVM_X86_DEFAULT_VM): VmHandle {
    const call = 'KVM_CREATE_VM';
    this.check(call);
    if (!Number.isInteger(type) || type < 0 || type >= 32 || (SUPPORTED_VM_TYPES & (1 << type)) === 0) {
      fail(
        'EINVAL',
        `VM type ${type} is not in KVM_CAP_VM_TYPES (${hex(SUPPORTED_VM_TYPES)})`,
        call,
        'GEN-3',
      );
    }
    const vm = new KvmVm(this.kernel, type, this.options);
    for (const h of vmInitHooks) h(vm);
    const file = new File<KvmVm>(kvmVmFops, anonInode(), FMODE_READ | FMODE_WRITE, vm);
    let fd: number;
    try {
      fd = this.kernel.fds.install(file, true, call);
    } catch (e) {
      file.put();
      throw e;
    }
    return new VmHandle(vm, fd, file);
  }

  /**
   * The system-ioctl form of KVM_CREATE_GUEST_MEMFD that seed 002's alternative makes possible:
   * the file belongs to no VM until its first binding. Only on hosts modelled with the
   * 'slot-pins-file' design; upstream has no such ioctl (ENOTTY, like any unknown ioctl).
   */
  createGuestMemfd(args: CreateGuestMemfd): number {
    const call = 'KVM_CREATE_GUEST_MEMFD';
    this.check(call);
    if ((this.options.gmemLifetime ?? 'file-pins-vm') !== 'slot-pins-file') {
      fail(
        'ENOTTY',
        'KVM_CREATE_GUEST_MEMFD is a VM ioctl (system form only with the slot-pins-file design)',
        call,
      );
    }
    return kvmGmemCreate(null, args, 'slot-pins-file', this.kernel);
  }

  close(): 0 {
    this.check('close');
    this.kernel.fds.close(this.fd);
    return 0;
  }
}

/** open("/dev/kvm", O_RDWR | O_CLOEXEC) on the model host. */
export function openKvmDevice(kernel: ModelKernel, options: KvmModelOptions = {}): KvmDevice {
  const file = new File(kvmDevFops, anonInode(), FMODE_READ | FMODE_WRITE, null);
  const fd = kernel.fds.install(file, true, 'open("/dev/kvm")');
  return new KvmDevice(kernel, fd, file, options);
}
