/**
 * shmem/tmpfs files and memfd_create (mm/shmem.c, mm/memfd.c, fs/hugetlbfs for MFD_HUGETLB):
 * the memory-backed files a VMM uses for guest RAM, and the first backing store of seed 001's
 * memfile_notifier.
 *
 * A shmem inode has a size, a page cache (filemap.ts) and the list of mappings of it. Pages are
 * allocated on first touch (a fault, a write, an allocating fallocate) and freed by hole punching,
 * truncation, or when the last reference to the file goes (the inode of a memfd has no name, so
 * it dies with its last file). A read of a hole reads zeros.
 *
 * Invalidation order for a hole punch or a truncation, as the kernel does it:
 *   1. memfile_notifier `invalidate` (seed 001) — consumers such as KVM zap their mappings;
 *   2. MMU notifier brackets for every mapping of the range (unmap_mapping_range) — open;
 *   3. pages leave the page cache and lose its reference (a locked page is parked until
 *      unlocked: the kernel would sleep on the page lock here);
 *   4. the brackets close.
 *
 * MFD_HUGETLB files are modelled here too (the model has no separate hugetlbfs): their pages
 * are allocated as naturally aligned 2 MiB or 1 GiB blocks, sizes and offsets must be multiples of
 * the huge page size, and a mapping of them can be mapped huge by KVM (HP-4).
 */

import type { Stat } from '../api.js';
import { fail, kvmWarn } from '../errno.js';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  MAX_LFS_FILESIZE,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
  MFD_EXEC,
  MFD_HUGE_1GB,
  MFD_HUGE_2MB,
  MFD_HUGE_MASK,
  MFD_HUGE_SHIFT,
  MFD_HUGETLB,
  MFD_NAME_MAX_LEN,
  MFD_NOEXEC_SEAL,
  S_IFREG,
} from '../uapi.js';
import { isPfn, type Pfn, type PgOff, utf8Length } from '../units.js';
import {
  File,
  type FileOperations,
  FMODE_LSEEK,
  FMODE_PREAD,
  FMODE_PWRITE,
  FMODE_READ,
  FMODE_WRITE,
  type Inode,
  newIno,
} from './file.js';
import { PageCache, truncatePages } from './filemap.js';
import { MemfileNotifierList, type MemfilePfnOps, type MemfilePfnResult } from './memfile_notifier.js';
import type { Vma, VmOperations } from './mmap.js';
import { VM_FAULT_HWPOISON, VM_FAULT_OOM, VM_FAULT_SIGBUS } from './mmap.js';
import type { PageAllocator } from './page_alloc.js';

const PAGE = 4096;
const MFD_ALL_FLAGS = MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB | MFD_NOEXEC_SEAL | MFD_EXEC;

/** Runs `work` inside MMU-notifier brackets for every mapping of [start, end) of the inode. */
export function unmapMappingRange(inode: Inode, start: number, end: number, work: () => void): void {
  const vmas = [...inode.mmaps].filter((v) => v.pgoff < end && v.pgoff + v.pages > start);
  const step = (i: number): void => {
    const v = vmas[i];
    if (!v) {
      work();
      return;
    }
    const lo = Math.max(start, v.pgoff);
    const hi = Math.min(end, v.pgoff + v.pages);
    const hvaStart = v.start + (lo - v.pgoff) * PAGE;
    const hvaEnd = v.start + (hi - v.pgoff) * PAGE;
    v.mm.notifiers.invalidate(hvaStart, hvaEnd, 'UNMAP', () => step(i + 1));
  };
  step(0);
}

export class ShmemInode implements Inode {
  readonly ino = newIno();
  mode: number;
  size = 0;
  readonly maxBytes = MAX_LFS_FILESIZE;
  readonly mapping = new PageCache();
  readonly mmaps = new Set<Vma>();
  readonly memfileNotifiers = new MemfileNotifierList();
  readonly memfilePfnOps: MemfilePfnOps;
  /** Counters for reports. */
  readonly stats = { allocated: 0, freed: 0, punches: 0, parkedOnLock: 0 };

  constructor(
    readonly alloc: PageAllocator,
    readonly name: string,
    /** 0 for ordinary shmem; 9 or 18 for MFD_HUGETLB with 2 MiB / 1 GiB pages. */
    readonly hugeOrder: 0 | 9 | 18,
    mode = S_IFREG | 0o777,
  ) {
    this.mode = mode;
    this.memfilePfnOps = {
      getLockPfn: (pgoff) => this.getLockPfn(pgoff),
      putUnlockPfn: (pfn) => this.putUnlockPfn(pfn as Pfn),
    };
  }

  /** Seed 001 supports shmem; hugetlbfs files answer EOPNOTSUPP. */
  get memfileSupported(): boolean {
    return this.hugeOrder === 0;
  }

  /** Pages per folio (1, 512 or 262144). */
  get folioPages(): number {
    return 2 ** this.hugeOrder;
  }

  /**
   * shmem_get_folio(): the page at index, allocating it (and its whole folio for hugetlb) when
   * `allocate`. Returns the pfn, -1 if absent and not allocating, or -2 when out of memory.
   */
  getPage(index: number, allocate: boolean): Pfn | -1 | -2 {
    const pfn = this.mapping.lookup(index as PgOff);
    if (isPfn(pfn) || !allocate) return pfn;
    if (this.hugeOrder === 0) {
      const p = this.alloc.alloc(this.ino);
      if (p === -1) return -2;
      this.mapping.store(index as PgOff, p);
      this.stats.allocated++;
      return p;
    }
    const n = this.folioPages;
    const head = index - (index % n);
    const base = this.alloc.allocHuge(this.hugeOrder, this.ino);
    if (base === -1) return -2;
    for (let i = 0; i < n; i++) this.mapping.store((head + i) as PgOff, (base + i) as Pfn);
    this.stats.allocated += n;
    return (base + (index - head)) as Pfn;
  }

  /** Removes [start, end) pages from the page cache and drops the cache's references. */
  private removePages(start: number, end: number): void {
    truncatePages(this.mapping, this.alloc, start, end, this.stats);
  }

  /** Zeroes [from, to) bytes inside one page, if the page is present. */
  private zeroPartial(index: number, from: number, to: number): void {
    const pfn = this.mapping.lookup(index as PgOff);
    if (isPfn(pfn) && to > from) this.alloc.fill(pfn, from, to - from, 0);
  }

  /**
   * shmem_truncate_range / hugetlbfs_punch_hole over bytes [lstart, lend): whole folios are
   * freed, partial ones zeroed in place. Notifies memfile consumers and mappings first.
   */
  punchRange(lstart: number, lend: number): void {
    if (lend <= lstart) return;
    const fp = this.folioPages * PAGE;
    const holeStart = Math.ceil(lstart / fp) * fp;
    const holeEnd = Math.floor(lend / fp) * fp;
    const first = Math.floor(lstart / PAGE);
    const last = Math.ceil(lend / PAGE);
    this.stats.punches++;
    this.memfileNotifiers.invalidate(first as PgOff, last as PgOff);
    unmapMappingRange(this, first, last, () => {
      // Partial folio at the head and tail: zero the bytes, keep the pages.
      const zeroBytes = (from: number, to: number): void => {
        for (let off = from; off < to; ) {
          const index = Math.floor(off / PAGE);
          const pageEnd = Math.min(to, (index + 1) * PAGE);
          this.zeroPartial(index, off - index * PAGE, pageEnd - index * PAGE);
          off = pageEnd;
        }
      };
      if (holeStart >= holeEnd) {
        zeroBytes(lstart, lend);
        return;
      }
      zeroBytes(lstart, holeStart);
      zeroBytes(holeEnd, lend);
      this.removePages(holeStart / PAGE, holeEnd / PAGE);
    });
  }

  /** Frees every page (inode eviction after the last file reference). */
  evict(): void {
    if (this.mmaps.size > 0) kvmWarn(`evicting shmem inode ${this.ino} with live mappings`);
    this.removePages(0, Number.MAX_SAFE_INTEGER);
  }

  private getLockPfn(pgoff: PgOff): MemfilePfnResult {
    const pfn = this.mapping.lookup(pgoff);
    if (!isPfn(pfn)) return { errno: 'ENOENT' };
    if (this.alloc.isPoisoned(pfn)) return { errno: 'EHWPOISON' };
    if (!this.alloc.trylock(pfn)) {
      // The model is single-threaded: a page locked now is locked by a consumer that has not
      // called putUnlockPfn yet; taking it twice would deadlock in the kernel.
      kvmWarn(`getLockPfn: page ${pgoff} of inode ${this.ino} is already locked`);
    }
    this.alloc.get(pfn);
    return { pfn, order: this.hugeOrder };
  }

  private putUnlockPfn(pfn: Pfn): void {
    this.alloc.unlock(pfn);
    this.alloc.put(pfn);
  }

  /** The vm_operations of a mapping of this inode. */
  readonly vmOps: VmOperations = {
    fault: (_vma, pgoff) => {
      if (pgoff * PAGE >= this.size) return VM_FAULT_SIGBUS;
      const pfn = this.getPage(pgoff, true);
      if (pfn === -2) return VM_FAULT_OOM;
      if (!isPfn(pfn)) return VM_FAULT_SIGBUS;
      if (this.alloc.isPoisoned(pfn)) return VM_FAULT_HWPOISON;
      return pfn;
    },
    order: () => this.hugeOrder,
  };
}

/** The data of a shmem `File`. */
export interface ShmemFile {
  readonly inode: ShmemInode;
}

function shmemInode(file: File): ShmemInode {
  return file.inode as ShmemInode;
}

/** shmem_file_operations plus shmem_setattr. */
export const shmemFops: FileOperations = {
  name: 'shmem',

  fallocate(file, mode, offset, len) {
    const inode = shmemInode(file);
    const call = 'fallocate';
    if ((mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE)) !== 0) {
      fail(
        'EOPNOTSUPP',
        `mode 0x${mode.toString(16)} is not supported by shmem (KEEP_SIZE, PUNCH_HOLE only)`,
        call,
      );
    }
    const fp = inode.folioPages * PAGE;
    if ((mode & FALLOC_FL_PUNCH_HOLE) !== 0) {
      if (inode.hugeOrder !== 0 && (offset % PAGE !== 0 || len % PAGE !== 0)) {
        fail('EINVAL', `hugetlb punch offset ${offset} / len ${len} not page aligned`, call);
      }
      // Pages can exist past EOF (KEEP_SIZE allocations), so the range is not clipped to i_size.
      inode.punchRange(offset, offset + len);
      return;
    }
    if (inode.hugeOrder !== 0 && (offset % fp !== 0 || len % fp !== 0)) {
      // hugetlbfs_fallocate rounds to huge pages; the model asks for aligned ranges instead.
      fail('EINVAL', `hugetlb fallocate offset ${offset} / len ${len} not multiples of ${fp}`, call);
    }
    const start = Math.floor(offset / PAGE);
    const end = Math.ceil((offset + len) / PAGE);
    const added: number[] = [];
    for (let i = start; i < end; i += inode.hugeOrder === 0 ? 1 : inode.folioPages) {
      if (inode.mapping.lookup(i as PgOff) >= 0) continue;
      const pfn = inode.getPage(i, true);
      if (pfn === -2) {
        // shmem_fallocate's "undone:" path: free what this call allocated, then fail.
        for (const a of added) {
          for (let k = 0; k < (inode.hugeOrder === 0 ? 1 : inode.folioPages); k++) {
            const p = inode.mapping.erase((a + k) as PgOff);
            if (isPfn(p)) inode.alloc.put(p);
          }
        }
        fail('ENOMEM', `out of host memory allocating page ${i} of ${inode.name}`, call);
      }
      added.push(i);
    }
    if ((mode & FALLOC_FL_KEEP_SIZE) === 0 && offset + len > inode.size) inode.size = offset + len;
    if (added.length > 0) inode.memfileNotifiers.fallocate(start as PgOff, end as PgOff);
  },

  read(file, buf, count, offset) {
    const inode = shmemInode(file);
    if (offset >= inode.size) return 0;
    const n = Math.min(count, inode.size - offset, buf.length);
    let done = 0;
    while (done < n) {
      const pos = offset + done;
      const index = Math.floor(pos / PAGE);
      const inPage = pos - index * PAGE;
      const chunk = Math.min(PAGE - inPage, n - done);
      const pfn = inode.mapping.lookup(index as PgOff);
      if (!isPfn(pfn)) buf.fill(0, done, done + chunk);
      else inode.alloc.read(pfn, inPage, buf, done, chunk);
      done += chunk;
    }
    return n;
  },

  write(file, buf, count, offset) {
    const inode = shmemInode(file);
    if (offset >= inode.maxBytes) fail('EFBIG', `offset ${offset} is beyond s_maxbytes`, 'pwrite');
    const n = Math.min(count, buf.length, inode.maxBytes - offset);
    let done = 0;
    while (done < n) {
      const pos = offset + done;
      const index = Math.floor(pos / PAGE);
      const inPage = pos - index * PAGE;
      const chunk = Math.min(PAGE - inPage, n - done);
      const pfn = inode.getPage(index, true);
      if (!isPfn(pfn)) {
        if (done > 0) break; // a short write
        fail('ENOMEM', `out of host memory writing page ${index} of ${inode.name}`, 'pwrite');
      }
      inode.alloc.write(pfn, inPage, buf, done, chunk);
      done += chunk;
    }
    if (offset + done > inode.size) inode.size = offset + done;
    return done;
  },

  setSize(file, size) {
    const inode = shmemInode(file);
    const fp = inode.folioPages * PAGE;
    if (inode.hugeOrder !== 0 && size % fp !== 0) {
      fail('EINVAL', `size ${size} is not a multiple of the huge page size ${fp}`, 'ftruncate');
    }
    const old = inode.size;
    if (size < old) {
      // Shrinking: pages past the new EOF go, the partial last page is zeroed past EOF.
      inode.size = size;
      inode.punchRange(size, Math.ceil(old / PAGE) * PAGE);
    } else {
      inode.size = size;
    }
  },

  mmap(file, vma) {
    const inode = shmemInode(file);
    if (inode.hugeOrder !== 0) {
      const fp = inode.folioPages * PAGE;
      if (vma.start % fp !== 0 || (vma.end - vma.start) % fp !== 0 || (vma.pgoff * PAGE) % fp !== 0) {
        fail('EINVAL', `hugetlb mapping at 0x${vma.start.toString(16)} is not aligned to ${fp}`, 'mmap');
      }
    }
    vma.ops = inode.vmOps;
  },

  release(file) {
    shmemInode(file).evict();
  },

  stat(file): Partial<Stat> {
    const inode = shmemInode(file);
    return { blocks: inode.mapping.nrpages * 8, blksize: inode.folioPages * PAGE };
  },
};

export const shmemFmode = FMODE_READ | FMODE_WRITE | FMODE_LSEEK | FMODE_PREAD | FMODE_PWRITE;

/** Validates memfd_create's arguments as mm/memfd.c does; returns the huge order. */
export function memfdCreateChecks(name: string, flags: number): 0 | 9 | 18 {
  const call = 'memfd_create';
  if (!Number.isInteger(flags) || flags < 0 || flags > 0xffffffff) {
    fail('EINVAL', `flags ${flags} is not an unsigned int`, call);
  }
  const hugeBits = MFD_HUGE_MASK * 2 ** MFD_HUGE_SHIFT;
  const f = flags >>> 0;
  if ((f & MFD_HUGETLB) === 0) {
    if ((f & ~MFD_ALL_FLAGS) !== 0)
      fail('EINVAL', `unknown flags 0x${(f & ~MFD_ALL_FLAGS).toString(16)}`, call);
  } else if ((f & ~(MFD_ALL_FLAGS | hugeBits)) >>> 0 !== 0) {
    fail('EINVAL', `unknown flags 0x${((f & ~(MFD_ALL_FLAGS | hugeBits)) >>> 0).toString(16)}`, call);
  }
  if ((f & MFD_EXEC) !== 0 && (f & MFD_NOEXEC_SEAL) !== 0) {
    fail('EINVAL', 'MFD_EXEC and MFD_NOEXEC_SEAL are mutually exclusive', call);
  }
  // strnlen_user counts the terminating NUL.
  if (utf8Length(name) + 1 > MFD_NAME_MAX_LEN + 1) {
    fail('EINVAL', `name is longer than ${MFD_NAME_MAX_LEN} bytes`, call);
  }
  if ((f & MFD_HUGETLB) === 0) return 0;
  const size = (f & hugeBits) >>> 0;
  if (size === 0 || size === MFD_HUGE_2MB) return 9;
  if (size === MFD_HUGE_1GB) return 18;
  // hugetlb_file_setup finds no hstate for the size.
  return fail('ENOENT', `no huge page size ${2 ** ((size >>> MFD_HUGE_SHIFT) - 0)} bytes on this host`, call);
}

/** Creates the `File` of a new memfd (or of a shared anonymous mapping's backing). */
export function newShmemFile(
  alloc: PageAllocator,
  name: string,
  hugeOrder: 0 | 9 | 18,
  mode?: number,
): File<ShmemFile> {
  const inode = new ShmemInode(alloc, name, hugeOrder, mode);
  return new File<ShmemFile>(shmemFops, inode, shmemFmode, { inode });
}
