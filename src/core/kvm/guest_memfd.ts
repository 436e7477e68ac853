/**
 * guest_memfd (virt/kvm/guest_memfd.c; seed 002): a VM-owned memory file that backs private
 * memory, bound to memslots by file range.
 *
 * The file is a backing file of the host model like shmem: its pages come from the host page
 * allocator (so leak checks cover them), it has a page cache, it can be mapped (MMAP and
 * INIT_SHARED flags, GM-6..GM-8), punched (GM-16) and released (GM-17), and it delivers its
 * invalidations to every VM bound to it through the same begin/end protocol as MMU notifiers
 * (INV-4). It is also a memfile_notifier backing store (seed 001), so any in-model consumer can
 * register on it.
 *
 * Two lifetime designs, chosen per modelled host (seed 002, docs/gmem-lifetimes.md):
 *
 * - 'file-pins-vm' (upstream, default): creating the file takes a reference on the VM; bindings
 *   hold no reference on the file ("the file pins KVM, not the other way 'round"). Closing the
 *   last reference to the file clears every binding's file pointer and zaps the bound ranges —
 *   the memslots stay, and faults that need the file fail with EFAULT (GM-17, row 7b).
 * - 'slot-pins-file' (the alternative proposed in seed 002): the file belongs to no VM until its
 *   first binding; each binding takes a reference on the file; the VM pointer is cleared when the
 *   last binding goes. Closing the fd breaks nothing while a memslot uses the file; the file is
 *   released only after its last memslot is deleted. Creation can then also be a system ioctl
 *   (`KvmDevice.createGuestMemfd`).
 */

import type { CreateGuestMemfd, Stat } from '../api.js';
import { ERRNO, fail, kvmWarn } from '../errno.js';
import { IntervalMap } from '../lib/interval_map.js';
import { File, type FileOperations, FMODE_READ, FMODE_WRITE, type Inode, newIno } from '../mm/file.js';
import { PageCache, truncatePages } from '../mm/filemap.js';
import { MemfileNotifierList, type MemfilePfnOps, type MemfilePfnResult } from '../mm/memfile_notifier.js';
import type { Vma, VmOperations } from '../mm/mmap.js';
import { VM_FAULT_HWPOISON, VM_FAULT_OOM, VM_FAULT_SIGBUS, VM_MAYSHARE, VM_SHARED } from '../mm/mmap.js';
import type { PageAllocator } from '../mm/page_alloc.js';
import { unmapMappingRange } from '../mm/shmem.js';
import type { GmemFaultOps, KvmPageFault } from '../mmu/mmu.js';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  GUEST_MEMFD_FLAG_INIT_SHARED,
  GUEST_MEMFD_FLAG_MMAP,
  KVM_MEMSLOT_GMEM_ONLY,
  MAX_LFS_FILESIZE,
  S_IFREG,
} from '../uapi.js';
import { asLoff, isPfn, type Pfn, type PgOff } from '../units.js';
import type { KvmVm } from './kvm_main.js';
import type { KvmMemorySlot } from './memslot.js';

const PAGE = 4096;

/** Which side owns the reference between a guest_memfd file and its VM (seed 002). */
export type GmemLifetime = 'file-pins-vm' | 'slot-pins-file';

/** struct gmem_inode: the memory, shared by every file of the inode (one, in practice). */
export class GmemInode implements Inode {
  readonly ino = newIno();
  readonly mode = S_IFREG | 0o600;
  size: number;
  readonly maxBytes = MAX_LFS_FILESIZE;
  readonly mapping = new PageCache();
  readonly mmaps = new Set<Vma>();
  readonly memfileNotifiers = new MemfileNotifierList();
  readonly memfilePfnOps: MemfilePfnOps;
  readonly memfileSupported = true;
  /** The files of this inode (gmem_inode's list of gmem_files). */
  readonly files = new Set<GmemFile>();
  readonly stats = { allocated: 0, freed: 0, punches: 0, parkedOnLock: 0 };

  constructor(
    readonly alloc: PageAllocator,
    size: number,
    readonly flags: number,
  ) {
    this.size = size;
    this.memfilePfnOps = {
      getLockPfn: (pgoff) => this.getLockPfn(pgoff),
      putUnlockPfn: (pfn) => {
        this.alloc.unlock(pfn as Pfn);
        this.alloc.put(pfn as Pfn);
      },
    };
  }

  get supportsMmap(): boolean {
    return (this.flags & GUEST_MEMFD_FLAG_MMAP) !== 0;
  }
  get initShared(): boolean {
    return (this.flags & GUEST_MEMFD_FLAG_INIT_SHARED) !== 0;
  }

  /** kvm_gmem_get_folio: the page at index, allocated (zeroed) on first use. -1 when out of memory. */
  getPage(index: number, allocate: boolean): Pfn | -1 {
    const pfn = this.mapping.lookup(index as PgOff);
    if (isPfn(pfn) || !allocate) return pfn;
    const p = this.alloc.alloc(this.ino);
    if (!isPfn(p)) return -1;
    this.mapping.store(index as PgOff, p);
    this.stats.allocated++;
    return p;
  }

  private getLockPfn(pgoff: PgOff): MemfilePfnResult {
    const pfn = this.mapping.lookup(pgoff);
    if (!isPfn(pfn)) return { errno: 'ENOENT' };
    if (this.alloc.isPoisoned(pfn)) return { errno: 'EHWPOISON' };
    if (!this.alloc.trylock(pfn)) kvmWarn(`getLockPfn: gmem page ${pgoff} already locked`);
    this.alloc.get(pfn);
    return { pfn, order: 0 };
  }

  /** Frees pages [start, end) (truncate_inode_pages_range). Locked pages wait for their unlock. */
  removePages(start: number, end: number): void {
    truncatePages(this.mapping, this.alloc, start, end, this.stats);
  }

  /**
   * kvm_gmem_invalidate_begin/end around `work` for every VM bound to [start, end) pages of any
   * file of this inode (INV-4: only VMs with an intersecting binding see a bracket).
   */
  invalidate(start: number, end: number, work: () => void): void {
    const perVm = new Map<KvmVm, { asId: number; start: number; end: number }[]>();
    for (const f of this.files) {
      const vm = f.kvm;
      if (!vm) continue;
      f.bindings.forEachRange(start, end, (s, e, id) => {
        const slot = f.slots.get(id);
        if (!slot) return;
        const gfnStart = slot.baseGfn + (s - (slot.gmem?.pgoff ?? 0));
        const list = perVm.get(vm) ?? [];
        list.push({ asId: slot.asId, start: gfnStart, end: gfnStart + (e - s) });
        perVm.set(vm, list);
      });
    }
    const vms = [...perVm];
    const step = (i: number): void => {
      const entry = vms[i];
      if (!entry) {
        work();
        return;
      }
      entry[0].invalidateGfnRanges(entry[1], () => step(i + 1));
    };
    step(0);
  }

  /** kvm_gmem_punch_hole over pages [start, end). */
  punch(start: number, end: number): void {
    this.stats.punches++;
    this.memfileNotifiers.invalidate(start as PgOff, end as PgOff);
    this.invalidate(start, end, () => {
      unmapMappingRange(this, start, end, () => this.removePages(start, end));
    });
  }

  /** The inode dies with its last file: its memory goes (GM-17: "freed with the inode"). */
  evict(): void {
    this.removePages(0, Number.MAX_SAFE_INTEGER);
  }

  /** The vm_operations of a host mapping (GM-8). */
  readonly vmOps: VmOperations = {
    fault: (_vma, pgoff) => {
      // kvm_gmem_fault_user_mapping: past EOF or a "private" file → SIGBUS.
      if (pgoff * PAGE >= this.size || !this.initShared) return VM_FAULT_SIGBUS;
      const pfn = this.getPage(pgoff, true);
      if (!isPfn(pfn)) return VM_FAULT_OOM;
      if (this.alloc.isPoisoned(pfn)) return VM_FAULT_HWPOISON;
      return pfn;
    },
    order: () => 0,
  };
}

/** struct gmem_file: one open guest_memfd and its bindings. */
export class GmemFile {
  /** The VM the file belongs to (null: none yet, or no more — slot-pins-file design). */
  kvm: KvmVm | null;
  /** File page ranges → binding id (xarray of bindings). */
  readonly bindings = new IntervalMap();
  readonly slots = new Map<number, KvmMemorySlot>();
  private nextBinding = 1;
  /** Set by release (the file struct is gone; pointers to it read NULL). */
  released = false;
  /** The open file (set right after construction). */
  file: File<GmemFile> | null = null;

  constructor(
    readonly inode: GmemInode,
    kvm: KvmVm | null,
    readonly lifetime: GmemLifetime,
  ) {
    this.kvm = kvm;
  }

  addBinding(slot: KvmMemorySlot, start: number, end: number): void {
    const id = this.nextBinding++;
    this.slots.set(id, slot);
    this.bindings.set(start, end, id);
  }

  removeBinding(slot: KvmMemorySlot): void {
    for (const [id, s] of this.slots) {
      if (s !== slot) continue;
      this.slots.delete(id);
      const pg = slot.gmem?.pgoff ?? 0;
      this.bindings.set(pg, pg + slot.npages, 0);
    }
  }

  /** The slot bound at file page index, or null (xa_load(&bindings, index)). */
  slotAt(index: number): KvmMemorySlot | null {
    const id = this.bindings.get(index);
    return id === 0 ? null : (this.slots.get(id) ?? null);
  }
}

function gmemOf(file: File): GmemFile {
  return file.priv as GmemFile;
}

export const kvmGmemFops: FileOperations = {
  name: 'guest_memfd',

  fallocate(file, mode, offset, len) {
    const call = 'fallocate';
    const inode = gmemOf(file).inode;
    // kvm_gmem_fallocate (GM-12, GM-14, GM-15, GM-16), after vfs_fallocate's checks.
    if ((mode & FALLOC_FL_KEEP_SIZE) === 0)
      fail('EOPNOTSUPP', 'guest_memfd requires FALLOC_FL_KEEP_SIZE', call, 'GM-12');
    if ((mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE)) !== 0) {
      fail('EOPNOTSUPP', `mode 0x${mode.toString(16)}: only KEEP_SIZE and PUNCH_HOLE`, call, 'GM-12');
    }
    if (offset % PAGE !== 0 || len % PAGE !== 0) {
      fail('EINVAL', `offset ${offset} / len ${len} not page aligned`, call, 'GM-14');
    }
    const start = offset / PAGE;
    const end = start + len / PAGE;
    if ((mode & FALLOC_FL_PUNCH_HOLE) !== 0) {
      // GM-16: anywhere, including past EOF (a no-op there).
      inode.punch(start, end);
      return;
    }
    if (offset + len > inode.size)
      fail('EINVAL', `[${offset}, +${len}) is past the file size ${inode.size}`, call, 'GM-15');
    const added: number[] = [];
    for (let i = start; i < end; i++) {
      if (isPfn(inode.mapping.lookup(i as PgOff))) continue;
      if (!isPfn(inode.getPage(i, true))) {
        // Partial allocation stays on EINTR in the kernel; on ENOMEM the model undoes this call.
        for (const a of added) {
          const p = inode.mapping.erase(a as PgOff);
          if (isPfn(p)) inode.alloc.put(p);
        }
        fail('ENOMEM', `out of host memory allocating guest_memfd page ${i}`, call, 'GM-15');
      }
      added.push(i);
    }
    if (added.length > 0) inode.memfileNotifiers.fallocate(start as PgOff, end as PgOff);
  },

  setSize() {
    fail('EINVAL', 'the size of a guest_memfd is immutable', 'ftruncate', 'GM-4');
  },

  mmap(file, vma) {
    const inode = gmemOf(file).inode;
    if (!inode.supportsMmap)
      fail('ENODEV', 'guest_memfd was created without GUEST_MEMFD_FLAG_MMAP', 'mmap', 'GM-6');
    if ((vma.flags & (VM_SHARED | VM_MAYSHARE)) !== (VM_SHARED | VM_MAYSHARE)) {
      fail('EINVAL', 'guest_memfd can only be mapped MAP_SHARED', 'mmap', 'GM-7');
    }
    vma.ops = inode.vmOps;
  },

  release(file) {
    kvmGmemRelease(gmemOf(file));
  },

  stat(): Partial<Stat> {
    // guest_memfd never updates i_blocks (its pages go through filemap_grab_folio, not shmem's
    // accounting): st_blocks stays 0 however much is allocated. Count pages with `gmemPages`.
    return { blocks: 0, blksize: PAGE };
  },
};

/** Pages allocated in a guest_memfd (introspection: st_blocks says 0, as upstream). */
export function gmemPages(file: File): number {
  return file.fop === kvmGmemFops ? gmemOf(file).inode.mapping.nrpages : 0;
}

/** kvm_gmem_release (GM-17): the last reference to the file is gone. */
function kvmGmemRelease(gmem: GmemFile): void {
  const inode = gmem.inode;
  const vm = gmem.kvm;
  if (gmem.lifetime === 'file-pins-vm') {
    // Every binding's file pointer reads NULL from now on; zap what the file backed.
    const bound: { asId: number; start: number; end: number }[] = [];
    for (const slot of gmem.slots.values()) {
      if (slot.gmem) slot.gmem.file = null;
      bound.push({ asId: slot.asId, start: slot.baseGfn, end: slot.endGfn });
    }
    gmem.released = true;
    if (vm) vm.invalidateGfnRanges(bound, () => {});
    inode.files.delete(gmem);
    if (inode.files.size === 0) inode.evict();
    if (vm) vm.put();
    return;
  }
  // slot-pins-file: bindings hold references, so none is left by the time release runs.
  if (gmem.slots.size > 0) kvmWarn('guest_memfd released with live bindings (slot-pins-file)');
  gmem.released = true;
  inode.files.delete(gmem);
  if (inode.files.size === 0) inode.evict();
}

/** guest_memfd flags the VM supports (kvm_gmem_get_supported_flags, KVM_CAP_GUEST_MEMFD_FLAGS). */
export function gmemSupportedFlags(vm: KvmVm | null): number {
  return vm === null || !vm.hasPrivateMem
    ? GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
    : GUEST_MEMFD_FLAG_MMAP;
}

/**
 * KVM_CREATE_GUEST_MEMFD (GM-1..GM-3). `vm` is null for the system-ioctl form of the
 * slot-pins-file design.
 */
export function kvmGmemCreate(
  vm: KvmVm | null,
  args: CreateGuestMemfd,
  lifetime: GmemLifetime,
  kernel: KvmVm['kernel'],
): number {
  const call = 'KVM_CREATE_GUEST_MEMFD';
  const flags = args.flags ?? 0;
  if (!Number.isInteger(flags) || flags < 0) throw new TypeError(`flags ${String(flags)} is not a u64`);
  const supported = gmemSupportedFlags(vm);
  if (flags >= 2 ** 32 || ((flags >>> 0) & ~supported) !== 0) {
    fail(
      'EINVAL',
      `flags 0x${flags.toString(16)} not in KVM_CAP_GUEST_MEMFD_FLAGS (0x${supported.toString(16)})`,
      call,
      'GM-1',
    );
  }
  const size = asLoff(args.size, 'size');
  if (size <= 0 || size % PAGE !== 0)
    fail('EINVAL', `size ${args.size} must be > 0 and a multiple of 4096`, call, 'GM-2');
  const inode = new GmemInode(kernel.alloc, size, flags);
  const pinsVm = lifetime === 'file-pins-vm';
  const gmem = new GmemFile(inode, pinsVm ? vm : null, lifetime);
  const file = new File<GmemFile>(kvmGmemFops, inode, FMODE_READ | FMODE_WRITE, gmem);
  gmem.file = file;
  inode.files.add(gmem);
  let fd: number;
  try {
    fd = kernel.fds.install(file, false, call); // GEN-3: not O_CLOEXEC
  } catch (e) {
    inode.files.delete(gmem);
    throw e;
  }
  if (pinsVm && vm) vm.get(); // "the file pins KVM"
  return fd;
}

/** kvm_gmem_bind (GB-1..GB-5, GB-8; MR-17). */
export function kvmGmemBind(vm: KvmVm, slot: KvmMemorySlot, fd: number, offset: number): void {
  const call = 'KVM_SET_USER_MEMORY_REGION2';
  const file = vm.kernel.fds.lookup(fd);
  if (!file) fail('EBADF', `guest_memfd ${fd} is not an open fd`, call, 'GB-1');
  if (file.fop !== kvmGmemFops)
    fail('EINVAL', `fd ${fd} is a ${file.fop.name} file, not a guest_memfd`, call, 'GB-2');
  const gmem = gmemOf(file);
  if (gmem.kvm !== vm && !(gmem.lifetime === 'slot-pins-file' && gmem.kvm === null)) {
    fail('EINVAL', `guest_memfd ${fd} belongs to another VM`, call, 'GB-3');
  }
  const inode = gmem.inode;
  const size = slot.npages * PAGE;
  const off = asLoff(offset, 'guest_memfd_offset');
  if (off < 0 || off % PAGE !== 0 || off + size > inode.size) {
    fail(
      'EINVAL',
      `guest_memfd_offset ${offset} + ${size} is outside the file's ${inode.size} bytes`,
      call,
      'GB-4',
    );
  }
  const start = off / PAGE;
  const end = start + slot.npages;
  const clash = gmem.bindings.firstIntersecting(start, end);
  if (clash) {
    const other = gmem.slots.get(clash.value);
    fail('EEXIST', `file pages [${start}, ${end}) are already bound to slot ${other?.id}`, call, 'GB-5');
  }
  slot.gmem = { file: gmem, pgoff: start };
  if (inode.supportsMmap) slot.flags |= KVM_MEMSLOT_GMEM_ONLY; // GB-8
  gmem.addBinding(slot, start, end);
  if (gmem.lifetime === 'slot-pins-file') {
    // The memslot uses the file: it holds a reference; the file now belongs to this VM.
    file.get();
    gmem.kvm = vm;
  }
}

/** kvm_gmem_unbind (GB-9). */
export function kvmGmemUnbind(_vm: KvmVm, slot: KvmMemorySlot): void {
  const b = slot.gmem;
  if (!b) return;
  const gmem = b.file as GmemFile | null;
  slot.gmem = null;
  if (!gmem) return; // released (GM-17): nothing to unbind
  gmem.removeBinding(slot);
  if (gmem.lifetime === 'slot-pins-file') {
    if (gmem.slots.size === 0) gmem.kvm = null;
    gmem.file?.put();
  }
}

/** guest_memfd's side of the fault path (rows 7a–7e). */
export const gmemFaultOps: GmemFaultOps = {
  gmemOnly(slot) {
    return (slot.flags & KVM_MEMSLOT_GMEM_ONLY) !== 0;
  },
  getPfn(_vm, slot, gfn, _fault: KvmPageFault) {
    const gmem = slot.gmem?.file as GmemFile | null | undefined;
    if (!gmem || gmem.released) return -ERRNO.EFAULT; // 7b
    const index = gfn - slot.baseGfn + (slot.gmem?.pgoff ?? 0);
    if (gmem.slotAt(index) !== slot) {
      kvmWarn(`guest_memfd binding at page ${index} does not point at slot ${slot.id}`);
      return -ERRNO.EIO; // 7d: binding inconsistency
    }
    const inode = gmem.inode;
    const pfn = inode.getPage(index, true);
    if (!isPfn(pfn)) return -ERRNO.ENOMEM; // 7d
    if (inode.alloc.isPoisoned(pfn)) return -ERRNO.EHWPOISON; // 7c
    inode.alloc.get(pfn);
    return pfn;
  },
  putPfn(vm, pfn) {
    vm.kernel.alloc.put(pfn as Pfn);
  },
};

/**
 * Memory failure on a guest_memfd page (GM-18): guest mappings of it are zapped, the page is
 * kept, and the next guest fault on it gets EHWPOISON. A model call (the kernel's
 * kvm_gmem_error_folio runs from memory_failure()).
 */
export function kvmGmemMemoryFailure(file: File, offset: number): void {
  if (file.fop !== kvmGmemFops) fail('EINVAL', `${file.fop.name} is not a guest_memfd`, 'memory_failure');
  const inode = gmemOf(file).inode;
  const index = Math.floor(offset / PAGE);
  const pfn = inode.getPage(index, true);
  if (!isPfn(pfn)) fail('ENOMEM', 'no page to poison', 'memory_failure');
  inode.invalidate(index, index + 1, () => inode.alloc.poison(pfn));
}
