/**
 * A process address space (mm_struct): VMAs and the system calls that change them (mm/mmap.c,
 * mm/vma.c, mm/mprotect.c, mm/madvise.c), page faults (mm/memory.c) and get_user_pages
 * (mm/gup.c) — the model's `hva → frame` resolution that KVM uses for shared memory.
 *
 * VMAs are kept sorted by start address in an array (binary search; a VMA count is bounded by
 * vm.max_map_count, 65530). The process's page tables are not modelled as such: a shared file
 * mapping resolves through the file's page cache, and private pages (anonymous memory and
 * copy-on-write copies of file pages) live in `anon`, a radix map from virtual page number to
 * frame — the part of the page tables that holds state the file does not.
 *
 * Read faults on private anonymous memory map the shared zero page read-only; a later write
 * breaks copy-on-write, which changes the frame behind the address and so notifies MMU
 * notifiers (event CLEAR) for that page. The host mapping level reported to KVM (HP-4) is the
 * folio order of the backing when the huge page lies wholly inside the VMA (MFD_HUGETLB memfds),
 * else 4 KiB: the model has no transparent huge pages.
 *
 * Simplifications: one process per host; mprotect and madvise check that the whole range is
 * mapped before changing anything (Linux applies the change up to the first hole, then fails with
 * ENOMEM); no mremap, mlock, or userfaultfd.
 */

import { fail, HostFault, kvmWarn } from '../errno.js';
import {
  MADV_COLLAPSE,
  MADV_DONTNEED,
  MADV_FREE,
  MADV_HUGEPAGE,
  MADV_HWPOISON,
  MADV_NOHUGEPAGE,
  MADV_NORMAL,
  MADV_POPULATE_READ,
  MADV_POPULATE_WRITE,
  MADV_RANDOM,
  MADV_REMOVE,
  MADV_SEQUENTIAL,
  MADV_WILLNEED,
  MAP_FIXED,
  MAP_FIXED_NOREPLACE,
  MAP_NORESERVE,
  MAP_POPULATE,
  MAP_PRIVATE,
  MAP_SHARED,
  MAP_SHARED_VALIDATE,
  MAP_TYPE,
  PROT_EXEC,
  PROT_READ,
  PROT_WRITE,
} from '../uapi.js';
import type { Pfn, PgOff } from '../units.js';
import { type File, FMODE_READ, FMODE_WRITE } from './file.js';
import { PageCache } from './filemap.js';
import { MmuNotifierList } from './mmu_notifier.js';
import { OWNER_ANON, type PageAllocator } from './page_alloc.js';

const PAGE = 4096;
/** x86-64 with 4-level paging: the highest user address + 1 (TASK_SIZE_MAX). */
export const TASK_SIZE = 2 ** 47 - PAGE;
/** Where top-down allocation of unhinted mappings starts (mmap_base). */
export const MMAP_BASE = 0x7f00_0000_0000;
/** The lowest address a mapping may use (vm.mmap_min_addr). */
export const MMAP_MIN_ADDR = 0x10000;
/** vm.max_map_count default. */
export const DEFAULT_MAX_MAP_COUNT = 65530;

// VMA flags (vm_flags)
export const VM_SHARED = 0x08;
export const VM_MAYWRITE = 0x20;
export const VM_MAYSHARE = 0x80;
export const VM_NORESERVE = 0x200000;
export const VM_HUGEPAGE = 0x20000000;

// Page fault results (vm_fault_t, as negative numbers so a pfn ≥ 0 is success)
export const VM_FAULT_SIGBUS = -1;
export const VM_FAULT_HWPOISON = -2;
export const VM_FAULT_OOM = -3;
export const VM_FAULT_SIGSEGV = -4;
/** Not a kernel code: no VMA covers the address (SEGV_MAPERR). */
export const VM_FAULT_NOVMA = -5;
/** Not a kernel code: the VMA forbids the access (SEGV_ACCERR). */
export const VM_FAULT_ACCESS = -6;

/** vm_operations_struct: how a file-backed mapping finds its pages. */
export interface VmOperations {
  /** The frame at file page pgoff (no reference taken), or a VM_FAULT_* code. */
  fault(vma: Vma, pgoff: number, write: boolean): number;
  /** Folio order backing pgoff (0, 9, 18), for the host mapping level. */
  order?(pgoff: number): 0 | 9 | 18;
}

/** struct vm_area_struct. */
export class Vma {
  ops: VmOperations | null = null;
  constructor(
    readonly mm: MmStruct,
    public start: number,
    public end: number,
    public prot: number,
    public flags: number,
    readonly file: File | null,
    /** File page index mapped at `start`. For anonymous private VMAs: start / 4096. */
    public pgoff: number,
  ) {}
  get pages(): number {
    return (this.end - this.start) / PAGE;
  }
  get shared(): boolean {
    return (this.flags & VM_SHARED) !== 0;
  }
  /** File page index of hva. */
  pgoffOf(hva: number): number {
    return this.pgoff + Math.floor((hva - this.start) / PAGE);
  }
}

/** What the address space needs from the rest of the kernel. */
export interface MmContext {
  readonly alloc: PageAllocator;
  /** The shared zero page. */
  readonly zeroPfn: Pfn;
  /** A shmem file for a shared anonymous mapping (shmem_zero_setup). */
  newAnonShmem(size: number): File;
}

function checkAddrLen(addr: number, len: number, what: string): void {
  if (!Number.isSafeInteger(addr) || addr < 0)
    throw new TypeError(`${what}: address ${addr} is not a valid hva`);
  if (!Number.isSafeInteger(len) || len < 0)
    throw new TypeError(`${what}: length ${len} is not a valid size`);
}

const hex = (n: number): string => `0x${n.toString(16)}`;

export class MmStruct {
  /** VMAs sorted by start. */
  readonly vmas: Vma[] = [];
  /** Private pages (anonymous and CoW copies), keyed by virtual page number. */
  readonly anon = new PageCache();
  readonly notifiers = new MmuNotifierList();
  maxMapCount = DEFAULT_MAX_MAP_COUNT;
  /** After a successful `fault`/`gup`: whether the page may be written through this mapping. */
  lastWritable = false;
  /** After a successful `fault`/`gup`: the host mapping level (1 = 4K, 2 = 2M, 3 = 1G). */
  lastLevel = 1;
  readonly stats = { faults: 0, cowBreaks: 0, zeroPageMaps: 0 };

  constructor(private readonly ctx: MmContext) {}

  // ---- VMA bookkeeping ---------------------------------------------------------------------

  /** Index of the first VMA with end > hva (the VMA containing hva, or the next one). */
  private indexAfter(hva: number): number {
    let lo = 0;
    let hi = this.vmas.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.vmas[mid] as Vma).end <= hva) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** find_vma_intersection for one address: the VMA containing hva, or null. */
  findVma(hva: number): Vma | null {
    const v = this.vmas[this.indexAfter(hva)];
    return v && v.start <= hva ? v : null;
  }

  /** VMAs intersecting [start, end), in order. */
  vmasIn(start: number, end: number): Vma[] {
    const out: Vma[] = [];
    for (let i = this.indexAfter(start); i < this.vmas.length; i++) {
      const v = this.vmas[i] as Vma;
      if (v.start >= end) break;
      out.push(v);
    }
    return out;
  }

  /** True iff [start, end) is covered by VMAs with no hole. */
  private fullyMapped(start: number, end: number): boolean {
    let at = start;
    for (const v of this.vmasIn(start, end)) {
      if (v.start > at) return false;
      at = v.end;
    }
    return at >= end;
  }

  private insertVma(v: Vma): void {
    const i = this.indexAfter(v.start);
    this.vmas.splice(i, 0, v);
    if (v.file) v.file.inode.mmaps.add(v);
  }

  /** Number of VMAs after unmapping [start, end): one more if a single VMA straddles both ends. */
  private countAfterUnmap(start: number, end: number): number {
    const v = this.findVma(start);
    return this.vmas.length + (v && v.start < start && v.end > end ? 1 : 0);
  }

  /** Splits VMAs so that start and end fall on VMA boundaries. */
  private splitAt(addr: number): void {
    const v = this.findVma(addr);
    if (!v || v.start === addr) return;
    const tail = new Vma(this, addr, v.end, v.prot, v.flags, v.file, v.pgoffOf(addr));
    tail.ops = v.ops;
    v.end = addr;
    if (v.file) v.file.get();
    this.insertVma(tail);
  }

  /** Removes VMAs inside [start, end) (already split), dropping their pages and file refs. */
  private removeRange(start: number, end: number): void {
    const victims = this.vmasIn(start, end);
    for (const v of victims) {
      this.vmas.splice(this.vmas.indexOf(v), 1);
      this.dropAnon(v.start, v.end);
      if (v.file) {
        v.file.inode.mmaps.delete(v);
        v.file.put();
      }
    }
  }

  /** Frees private pages of [start, end). */
  private dropAnon(start: number, end: number): void {
    const { indices, pfns } = this.anon.collect(start / PAGE, end / PAGE);
    for (let k = 0; k < indices.length; k++) {
      this.anon.erase(indices[k] as PgOff);
      this.ctx.alloc.put(pfns[k] as Pfn);
    }
  }

  /** get_unmapped_area, top-down from MMAP_BASE (align: huge page size for hugetlb files). */
  private unmappedArea(len: number, align: number, hint: number): number {
    if (hint !== 0) {
      const h = Math.ceil(hint / align) * align;
      if (h >= MMAP_MIN_ADDR && h + len <= TASK_SIZE && this.vmasIn(h, h + len).length === 0) return h;
    }
    let top = MMAP_BASE;
    let i = this.indexAfter(top); // first VMA ending above MMAP_BASE
    const straddler = this.vmas[i];
    if (straddler && straddler.start < top) top = straddler.start;
    i--;
    for (;;) {
      const gapLow = i >= 0 ? (this.vmas[i] as Vma).end : MMAP_MIN_ADDR;
      const cand = Math.floor((top - len) / align) * align;
      if (cand >= gapLow && cand >= MMAP_MIN_ADDR) return cand;
      if (i < 0) return -1;
      top = (this.vmas[i] as Vma).start;
      i--;
    }
  }

  // ---- system calls -----------------------------------------------------------------------

  /**
   * mmap(2) for an already looked-up file (or null for MAP_ANONYMOUS). Checks in the order of
   * sys_mmap → ksys_mmap_pgoff → do_mmap → mmap_region; the file's own mmap hook (e.g.
   * guest_memfd's ENODEV/EINVAL, GM-6/GM-7) runs before anything existing is unmapped, so a
   * failed call changes nothing.
   */
  mmap(addr: number, length: number, prot: number, flags: number, file: File | null, offset: number): number {
    const call = 'mmap';
    checkAddrLen(addr, length, call);
    if (!Number.isSafeInteger(offset) || offset < 0 || offset % PAGE !== 0) {
      fail('EINVAL', `offset ${offset} is not a multiple of the page size`, call);
    }
    if (length === 0) fail('EINVAL', 'length is 0', call);
    const len = Math.ceil(length / PAGE) * PAGE;
    if (len > TASK_SIZE) fail('ENOMEM', `length ${length} exceeds the address space`, call);
    const type = flags & MAP_TYPE;
    if (type !== MAP_SHARED && type !== MAP_PRIVATE && type !== MAP_SHARED_VALIDATE) {
      fail('EINVAL', `flags ${hex(flags)} are neither MAP_SHARED nor MAP_PRIVATE`, call);
    }
    const shared = type === MAP_SHARED || type === MAP_SHARED_VALIDATE;
    const fixed = (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) !== 0;
    if (this.vmas.length >= this.maxMapCount) {
      fail(
        'ENOMEM',
        `the process has ${this.vmas.length} mappings (vm.max_map_count ${this.maxMapCount})`,
        call,
      );
    }
    const hugeOrder = file ? ((file.inode as { hugeOrder?: number }).hugeOrder ?? 0) : 0;
    const align = PAGE * 2 ** hugeOrder;
    if (hugeOrder !== 0 && offset % align !== 0)
      fail('EINVAL', `offset ${offset} not huge-page aligned`, call);
    let start: number;
    if (fixed) {
      if (addr % align !== 0)
        fail('EINVAL', `MAP_FIXED address ${hex(addr)} is not aligned to ${align}`, call);
      if (addr + len > TASK_SIZE || addr < MMAP_MIN_ADDR) {
        fail('ENOMEM', `MAP_FIXED range ${hex(addr)}+${len} is outside the address space`, call);
      }
      if ((flags & MAP_FIXED_NOREPLACE) !== 0 && this.vmasIn(addr, addr + len).length > 0) {
        fail('EEXIST', `MAP_FIXED_NOREPLACE range ${hex(addr)}+${len} overlaps a mapping`, call);
      }
      start = addr;
    } else {
      start = this.unmappedArea(len, align, addr);
      if (start < 0) fail('ENOMEM', `no free range of ${len} bytes`, call);
    }
    const pgoff = offset / PAGE;
    let vmFlags = (flags & MAP_NORESERVE) !== 0 ? VM_NORESERVE : 0;
    if (file) {
      if (shared) {
        if ((prot & PROT_WRITE) !== 0 && (file.fmode & FMODE_WRITE) === 0) {
          fail('EACCES', 'MAP_SHARED with PROT_WRITE on a file not open for writing', call);
        }
        vmFlags |= VM_SHARED | VM_MAYSHARE;
        if ((file.fmode & FMODE_WRITE) !== 0) vmFlags |= VM_MAYWRITE;
      } else {
        if ((file.fmode & FMODE_READ) === 0)
          fail('EACCES', 'MAP_PRIVATE of a file not open for reading', call);
        vmFlags |= VM_MAYWRITE;
      }
      if (!file.fop.mmap) fail('ENODEV', `${file.fop.name} files cannot be mapped`, call);
    } else if (shared) {
      vmFlags |= VM_SHARED | VM_MAYSHARE | VM_MAYWRITE;
    } else {
      vmFlags |= VM_MAYWRITE;
    }

    // Build the VMA and let the file validate it before touching the address space.
    let vfile = file;
    let anonShmem: File | null = null;
    if (!file && shared) {
      anonShmem = this.ctx.newAnonShmem(len);
      vfile = anonShmem;
    }
    const vma = new Vma(this, start, start + len, prot, vmFlags, vfile, vfile ? pgoff : start / PAGE);
    try {
      vfile?.fop.mmap?.(vfile, vma);
    } catch (e) {
      anonShmem?.put();
      throw e;
    }
    if (fixed && this.vmasIn(start, start + len).length > 0) this.unmapRange(start, start + len);
    if (vfile && !anonShmem) vfile.get();
    this.insertVma(vma);
    if ((flags & MAP_POPULATE) !== 0) this.populate(start, start + len, (prot & PROT_WRITE) !== 0 && shared);
    return start;
  }

  private populate(start: number, end: number, write: boolean): void {
    for (let a = start; a < end; a += PAGE) {
      if (this.fault(a, write) < 0) break; // MAP_POPULATE errors are ignored
    }
  }

  /** Unmaps [start, end) inside notifier brackets (munmap, MAP_FIXED over a mapping). */
  private unmapRange(start: number, end: number): void {
    this.notifiers.invalidate(start, end, 'UNMAP', () => {
      this.splitAt(start);
      this.splitAt(end);
      this.removeRange(start, end);
    });
  }

  /** munmap(2). */
  munmap(addr: number, length: number): 0 {
    const call = 'munmap';
    checkAddrLen(addr, length, call);
    if (addr % PAGE !== 0) fail('EINVAL', `address ${hex(addr)} is not page aligned`, call);
    const len = Math.ceil(length / PAGE) * PAGE;
    if (len === 0 || addr + len > TASK_SIZE) fail('EINVAL', `range ${hex(addr)}+${length} is invalid`, call);
    if (this.vmasIn(addr, addr + len).length === 0) return 0;
    if (this.countAfterUnmap(addr, addr + len) > this.maxMapCount) {
      fail('ENOMEM', 'splitting the mapping would exceed vm.max_map_count', call);
    }
    this.unmapRange(addr, addr + len);
    return 0;
  }

  /** mprotect(2). */
  mprotect(addr: number, length: number, prot: number): 0 {
    const call = 'mprotect';
    checkAddrLen(addr, length, call);
    if (addr % PAGE !== 0) fail('EINVAL', `address ${hex(addr)} is not page aligned`, call);
    if ((prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC)) !== 0)
      fail('EINVAL', `prot ${hex(prot)} has unknown bits`, call);
    const len = Math.ceil(length / PAGE) * PAGE;
    if (len === 0) return 0;
    const end = addr + len;
    if (end > TASK_SIZE) fail('ENOMEM', `range ${hex(addr)}+${length} is outside the address space`, call);
    if (!this.fullyMapped(addr, end))
      fail('ENOMEM', `range ${hex(addr)}+${length} is not fully mapped`, call);
    for (const v of this.vmasIn(addr, end)) {
      if ((prot & PROT_WRITE) !== 0 && (v.flags & VM_MAYWRITE) === 0) {
        fail(
          'EACCES',
          `mapping at ${hex(v.start)} cannot be made writable (file not open for writing)`,
          call,
        );
      }
    }
    this.notifiers.invalidate(addr, end, 'PROTECTION_VMA', () => {
      this.splitAt(addr);
      this.splitAt(end);
      for (const v of this.vmasIn(addr, end)) v.prot = prot;
    });
    return 0;
  }

  /** madvise(2): the advice values a VMM uses around KVM. */
  madvise(addr: number, length: number, advice: number): 0 {
    const call = 'madvise';
    checkAddrLen(addr, length, call);
    if (addr % PAGE !== 0) fail('EINVAL', `address ${hex(addr)} is not page aligned`, call);
    const known = [
      MADV_NORMAL,
      MADV_RANDOM,
      MADV_SEQUENTIAL,
      MADV_WILLNEED,
      MADV_DONTNEED,
      MADV_FREE,
      MADV_REMOVE,
      MADV_HUGEPAGE,
      MADV_NOHUGEPAGE,
      MADV_POPULATE_READ,
      MADV_POPULATE_WRITE,
      MADV_COLLAPSE,
      MADV_HWPOISON,
    ];
    if (!known.includes(advice)) fail('EINVAL', `advice ${advice} is not supported`, call);
    const len = Math.ceil(length / PAGE) * PAGE;
    if (len === 0) return 0;
    const end = addr + len;
    if (!this.fullyMapped(addr, end))
      fail('ENOMEM', `range ${hex(addr)}+${length} is not fully mapped`, call);
    const vmas = this.vmasIn(addr, end);
    switch (advice) {
      case MADV_DONTNEED:
      case MADV_FREE:
        if (advice === MADV_FREE && vmas.some((v) => v.file !== null)) {
          fail('EINVAL', 'MADV_FREE applies to private anonymous memory only', call);
        }
        // Zap: shared pages stay in the page cache; private pages are dropped (anonymous memory
        // reads as zeros again, private file mappings see the file again).
        this.notifiers.invalidate(addr, end, 'UNMAP', () => this.dropAnon(addr, end));
        return 0;
      case MADV_REMOVE:
        for (const v of vmas) {
          if (!v.file) fail('EINVAL', `MADV_REMOVE on anonymous private memory at ${hex(v.start)}`, call);
          if ((v.flags & (VM_SHARED | VM_MAYWRITE)) !== (VM_SHARED | VM_MAYWRITE)) {
            fail('EACCES', `MADV_REMOVE needs a shared writable mapping at ${hex(v.start)}`, call);
          }
        }
        for (const v of vmas) {
          const lo = Math.max(addr, v.start);
          const hi = Math.min(end, v.end);
          const file = v.file as File; // checked above
          const fop = file.fop.fallocate;
          if (!fop) fail('EOPNOTSUPP', `${file.fop.name} files cannot punch holes`, call);
          fop(file, 0x03 /* PUNCH_HOLE | KEEP_SIZE */, v.pgoffOf(lo) * PAGE, hi - lo);
        }
        return 0;
      case MADV_POPULATE_READ:
      case MADV_POPULATE_WRITE: {
        const write = advice === MADV_POPULATE_WRITE;
        for (let a = addr; a < end; a += PAGE) {
          const r = this.fault(a, write);
          if (r === VM_FAULT_OOM) fail('ENOMEM', `out of memory populating ${hex(a)}`, call);
          if (r === VM_FAULT_HWPOISON) fail('EHWPOISON', `page at ${hex(a)} is poisoned`, call);
          if (r < 0) fail('EFAULT', `cannot populate ${hex(a)}`, call);
        }
        return 0;
      }
      case MADV_COLLAPSE:
        // No transparent huge pages in the model; guest_memfd rejects it too (GM-9).
        fail('EINVAL', 'MADV_COLLAPSE: the model has no transparent huge pages', call);
        break;
      case MADV_HUGEPAGE:
      case MADV_NOHUGEPAGE:
        for (const v of vmas)
          v.flags = advice === MADV_HUGEPAGE ? v.flags | VM_HUGEPAGE : v.flags & ~VM_HUGEPAGE;
        return 0;
      case MADV_HWPOISON:
        for (let a = addr; a < end; a += PAGE) {
          const r = this.fault(a, false);
          if (r >= 0) this.ctx.alloc.poison(r as Pfn);
        }
        return 0;
      default:
        return 0; // NORMAL, RANDOM, SEQUENTIAL, WILLNEED: hints only
    }
    return 0;
  }

  // ---- faults -----------------------------------------------------------------------------

  /**
   * handle_mm_fault for one address: returns the frame now mapped at hva (no reference taken)
   * or a VM_FAULT_* code. Sets `lastWritable` and `lastLevel`.
   */
  fault(hva: number, write: boolean): number {
    this.stats.faults++;
    const vma = this.findVma(hva);
    if (!vma) return VM_FAULT_NOVMA;
    const prot = vma.prot;
    // On x86 any of R/W/X makes a page readable.
    if (write ? (prot & PROT_WRITE) === 0 : (prot & (PROT_READ | PROT_WRITE | PROT_EXEC)) === 0) {
      return VM_FAULT_ACCESS;
    }
    const canWrite = (prot & PROT_WRITE) !== 0;
    this.lastLevel = 1;
    if (vma.shared) {
      const pgoff = vma.pgoffOf(hva);
      const r = (vma.ops as VmOperations).fault(vma, pgoff, write);
      if (r < 0) return r;
      this.lastWritable = canWrite;
      this.lastLevel = this.hostLevel(vma, hva, pgoff);
      return r;
    }
    const vpage = Math.floor(hva / PAGE);
    const own = this.anon.lookup(vpage as PgOff);
    if (own >= 0) {
      this.lastWritable = canWrite;
      return own;
    }
    let src: number;
    if (vma.file) {
      src = (vma.ops as VmOperations).fault(vma, vma.pgoffOf(hva), false);
      if (src < 0) return src;
    } else {
      src = this.ctx.zeroPfn;
    }
    if (!write) {
      if (!vma.file) this.stats.zeroPageMaps++;
      this.lastWritable = false;
      return src;
    }
    // Copy-on-write: a new private page replaces the shared one behind this address.
    const fresh = this.ctx.alloc.alloc(OWNER_ANON);
    if (fresh === -1) return VM_FAULT_OOM;
    if (vma.file) this.ctx.alloc.copyFrame(fresh, src as Pfn);
    const pageStart = vpage * PAGE;
    this.stats.cowBreaks++;
    this.notifiers.invalidate(pageStart, pageStart + PAGE, 'CLEAR', () => {
      this.anon.store(vpage as PgOff, fresh);
    });
    this.lastWritable = true;
    return fresh;
  }

  /** The level at which the host maps hva (HP-4's host_pfn_mapping_level). */
  private hostLevel(vma: Vma, hva: number, pgoff: number): number {
    const order = vma.ops?.order?.(pgoff) ?? 0;
    if (order === 0) return 1;
    const span = 2 ** order * PAGE;
    const base = hva - (hva % span);
    if (base < vma.start || base + span > vma.end) return 1;
    return order === 9 ? 2 : 3;
  }

  /**
   * get_user_pages for one page, as KVM's hva_to_pfn uses it: the frame behind hva with a
   * reference taken (the caller puts it), or a negative VM_FAULT_* code. `lastWritable` and
   * `lastLevel` describe the mapping.
   */
  gup(hva: number, write: boolean): number {
    const r = this.fault(hva, write);
    if (r >= 0) this.ctx.alloc.get(r as Pfn);
    return r;
  }

  /** Converts a failed fault into the HostFault the CPU would raise. */
  private raise(code: number, hva: number): never {
    switch (code) {
      case VM_FAULT_NOVMA:
        throw new HostFault('SIGSEGV', 'SEGV_MAPERR', hva, 'no mapping at this address');
      case VM_FAULT_ACCESS:
        throw new HostFault('SIGSEGV', 'SEGV_ACCERR', hva, 'the mapping does not allow this access');
      case VM_FAULT_HWPOISON:
        throw new HostFault('SIGBUS', 'BUS_MCEERR_AR', hva, 'the page is poisoned (memory failure)');
      case VM_FAULT_OOM:
        return fail('ENOMEM', `out of host memory faulting in ${hex(hva)}`, 'page fault');
      default:
        throw new HostFault(
          'SIGBUS',
          'BUS_ADRERR',
          hva,
          'no page backs this address (beyond EOF or not faultable)',
        );
    }
  }

  /** The process reads its own memory. */
  read(hva: number, length: number): Uint8Array {
    checkAddrLen(hva, length, 'read');
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const a = hva + done;
      const inPage = a % PAGE;
      const chunk = Math.min(PAGE - inPage, length - done);
      const pfn = this.fault(a, false);
      if (pfn < 0) this.raise(pfn, a);
      this.ctx.alloc.read(pfn as Pfn, inPage, out, done, chunk);
      done += chunk;
    }
    return out;
  }

  /** The process writes its own memory (bytes before a faulting page stay written, as with memcpy). */
  write(hva: number, bytes: Uint8Array): void {
    checkAddrLen(hva, bytes.length, 'write');
    let done = 0;
    while (done < bytes.length) {
      const a = hva + done;
      const inPage = a % PAGE;
      const chunk = Math.min(PAGE - inPage, bytes.length - done);
      const pfn = this.fault(a, true);
      if (pfn < 0) this.raise(pfn, a);
      this.ctx.alloc.write(pfn as Pfn, inPage, bytes, done, chunk);
      done += chunk;
    }
  }

  /** exit_mmap: tells subscribers, then unmaps everything. */
  exitMmap(): void {
    this.notifiers.release();
    if (this.vmas.length > 0) {
      const first = (this.vmas[0] as Vma).start;
      const last = (this.vmas[this.vmas.length - 1] as Vma).end;
      this.splitAt(first);
      this.removeRange(first, last);
    }
    if (this.anon.nrpages !== 0) kvmWarn(`${this.anon.nrpages} anonymous pages left after exit_mmap`);
  }
}
