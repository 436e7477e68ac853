/**
 * `createHost()`: one modelled machine — its kernel (page allocator, files, one process with an
 * address space and an fd table) — behind the `Host` interface that the real-kernel binding
 * implements too (architecture §2).
 *
 * Each system call checks its arguments in the order of the kernel's entry point (the comments
 * name it) and throws `KvmError` where libc would return -1; a failed call changes nothing.
 * The process touching its own memory (`readMemory`/`writeMemory`) raises `HostFault` where a
 * real process would get SIGSEGV/SIGBUS.
 *
 * Beyond the interface, the model offers read-only introspection (`kernel`, `mm`, `fds`,
 * `leaks()`, `memoryMap()`) for tests, traces and the visualiser; none of it changes state.
 */

import type { Host, Stat } from './api.js';
import { fail, kvmWarn } from './errno.js';
import { type KvmDevice, type KvmModelOptions, openKvmDevice } from './kvm/kvm_main.js';
import { FdTable, type File, FMODE_PREAD, FMODE_PWRITE, FMODE_READ, FMODE_WRITE } from './mm/file.js';
import { MmStruct } from './mm/mmap.js';
import { OWNER_KERNEL, PageAllocator } from './mm/page_alloc.js';
import { memfdCreateChecks, newShmemFile } from './mm/shmem.js';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_SUPPORTED_MASK,
  MAP_ANONYMOUS,
  MAX_LFS_FILESIZE,
  MFD_CLOEXEC,
  MFD_NOEXEC_SEAL,
  S_IFREG,
} from './uapi.js';
import { asLoff, isPfn, type Pfn, u64AddOverflows } from './units.js';

const PAGE = 4096;
const S_IFMT = 0o170000;

/** fs/open.c FALLOC_FL_MODE_MASK: the mutually exclusive modes (ALLOCATE_RANGE is 0). */
const FALLOC_FL_MODE_MASK = FALLOC_FL_SUPPORTED_MASK & ~FALLOC_FL_KEEP_SIZE;
const FALLOC_FL_COLLAPSE_RANGE = 0x08;
const FALLOC_FL_INSERT_RANGE = 0x20;
const FALLOC_FL_WRITE_ZEROES = 0x80;

/** offset + len > s_maxbytes, exactly (s_maxbytes = 2^63 − 1 is not a float). */
function exceedsMaxBytes(sum: number, maxBytes: number, offset: number, len: number): boolean {
  if (sum < 2 ** 53) return sum > maxBytes;
  const max = maxBytes === MAX_LFS_FILESIZE ? 2n ** 63n - 1n : BigInt(maxBytes);
  return BigInt(offset) + BigInt(len) > max;
}

export interface HostOptions {
  /** Host RAM in bytes (an accounting limit: beyond it allocations fail with ENOMEM). Default 16 GiB. */
  readonly ramLimitBytes?: number;
  /** vm.max_map_count. Default 65530. */
  readonly maxMapCount?: number;
  /** The modelled KVM's options (host MAXPHYADDR, …). */
  readonly kvm?: KvmModelOptions;
}

/** The parts of the host kernel that other kernel code (KVM) uses. */
export interface ModelKernel {
  readonly alloc: PageAllocator;
  /** The shared zero page (read faults on untouched private anonymous memory). */
  readonly zeroPfn: Pfn;
  readonly mm: MmStruct;
  readonly fds: FdTable;
  /**
   * Kernel-side cleanups that host teardown runs last, after every fd is closed and the address
   * space is gone (module exit: kvm_exit frees seed 004's all-ones page, kvm/allones.ts).
   */
  readonly teardown: (() => void)[];
}

/** What is still allocated: after everything was closed, every count must be 0. */
export interface LeakReport {
  /** Frames allocated, excluding the kernel's reserved pages (zero page, …). */
  readonly frames: number;
  readonly fds: number;
  readonly vmas: number;
  /** Open MMU-notifier brackets. */
  readonly openInvalidations: number;
  /** Page-lock waiters that never ran. */
  readonly lockWaiters: number;
}

/** One mapping, for the memory map. */
export interface VmaInfo {
  readonly start: number;
  readonly end: number;
  readonly prot: number;
  readonly shared: boolean;
  readonly file: string | null;
  readonly ino: number | null;
  readonly offset: number;
}

export class ModelHost implements Host {
  readonly backend = 'model' as const;
  readonly kernel: ModelKernel;
  private readonly reserved: Pfn[] = [];
  private disposed = false;
  private readonly kvmOptions: KvmModelOptions;

  constructor(options: HostOptions = {}) {
    this.kvmOptions = options.kvm ?? {};
    const alloc = new PageAllocator(
      options.ramLimitBytes === undefined ? {} : { ramLimitBytes: options.ramLimitBytes },
    );
    const zero = alloc.allocReserved(OWNER_KERNEL);
    if (!isPfn(zero)) throw new RangeError('ramLimitBytes leaves no room for the zero page');
    this.reserved.push(zero);
    const mm = new MmStruct({
      alloc,
      zeroPfn: zero,
      newAnonShmem: (size) => {
        const f = newShmemFile(alloc, 'dev/zero', 0);
        f.inode.size = size;
        return f;
      },
    });
    if (options.maxMapCount !== undefined) mm.maxMapCount = options.maxMapCount;
    this.kernel = { alloc, zeroPfn: zero, mm, fds: new FdTable(), teardown: [] };
  }

  private get fds(): FdTable {
    return this.kernel.fds;
  }

  /** Installs a new file in the fd table; drops the file if that fails (EMFILE). */
  installFd(file: File, cloexec: boolean, call: string): number {
    try {
      return this.fds.install(file, cloexec, call);
    } catch (e) {
      file.put();
      throw e;
    }
  }

  // ---- files ------------------------------------------------------------------------------

  /** memfd_create(2) (mm/memfd.c). */
  memfdCreate(name: string, flags = 0): number {
    const order = memfdCreateChecks(name, flags);
    const mode = (flags & MFD_NOEXEC_SEAL) !== 0 ? S_IFREG | 0o666 : S_IFREG | 0o777;
    const file = newShmemFile(this.kernel.alloc, `memfd:${name}`, order, mode);
    return this.installFd(file, (flags & MFD_CLOEXEC) !== 0, 'memfd_create');
  }

  /** ftruncate(2): do_sys_ftruncate → do_ftruncate → notify_change. */
  ftruncate(fd: number, length: number): 0 {
    const call = 'ftruncate';
    if (asLoff(length, 'length') < 0) fail('EINVAL', `length ${length} is negative as a loff_t`, call);
    const file = this.fds.get(fd, call);
    if ((file.inode.mode & S_IFMT) !== S_IFREG || (file.fmode & FMODE_WRITE) === 0) {
      fail('EINVAL', `fd ${fd} (${file.fop.name}) is not a regular file open for writing`, call);
    }
    if (length > file.inode.maxBytes)
      fail('EFBIG', `length ${length} exceeds the file system's maximum`, call);
    if (!file.fop.setSize) fail('EINVAL', `${file.fop.name} files cannot change size`, call);
    file.fop.setSize(file, length);
    return 0;
  }

  /** fallocate(2): ksys_fallocate → vfs_fallocate (fs/open.c) → f_op->fallocate. */
  fallocate(fd: number, mode: number, offset: number, len: number): 0 {
    const call = 'fallocate';
    const file = this.fds.get(fd, call);
    if (asLoff(offset, 'offset') < 0 || asLoff(len, 'len') <= 0) {
      fail('EINVAL', `offset ${offset} / len ${len}: offset must be ≥ 0 and len > 0`, call, 'GM-11');
    }
    if ((mode & ~(FALLOC_FL_MODE_MASK | FALLOC_FL_KEEP_SIZE)) !== 0) {
      fail('EOPNOTSUPP', `mode 0x${mode.toString(16)} has unknown bits`, call, 'GM-12');
    }
    switch (mode & FALLOC_FL_MODE_MASK) {
      case 0: // ALLOCATE_RANGE
      case 0x10: // ZERO_RANGE
      case 0x40: // UNSHARE_RANGE
        break;
      case FALLOC_FL_PUNCH_HOLE:
        if ((mode & FALLOC_FL_KEEP_SIZE) === 0) {
          fail('EOPNOTSUPP', 'FALLOC_FL_PUNCH_HOLE needs FALLOC_FL_KEEP_SIZE', call, 'GM-12');
        }
        break;
      case FALLOC_FL_COLLAPSE_RANGE:
      case FALLOC_FL_INSERT_RANGE:
      case FALLOC_FL_WRITE_ZEROES:
        if ((mode & FALLOC_FL_KEEP_SIZE) !== 0) {
          fail('EOPNOTSUPP', `mode 0x${mode.toString(16)} cannot be combined with KEEP_SIZE`, call, 'GM-12');
        }
        break;
      default:
        fail('EOPNOTSUPP', `mode 0x${mode.toString(16)} combines exclusive modes`, call, 'GM-12');
    }
    if ((file.fmode & FMODE_WRITE) === 0) fail('EBADF', `fd ${fd} is not open for writing`, call);
    if ((file.inode.mode & S_IFMT) !== S_IFREG)
      fail('ENODEV', `fd ${fd} (${file.fop.name}) is not a regular file`, call);
    if (u64AddOverflows(offset, len) || exceedsMaxBytes(offset + len, file.inode.maxBytes, offset, len)) {
      fail('EFBIG', `offset ${offset} + len ${len} exceeds the file system's maximum`, call, 'GM-13');
    }
    if (!file.fop.fallocate) fail('EOPNOTSUPP', `${file.fop.name} files do not support fallocate`, call);
    file.fop.fallocate(file, mode, offset, len);
    return 0;
  }

  /** pread(2): ksys_pread64 → vfs_read. */
  pread(fd: number, buf: Uint8Array, count: number, offset: number): number {
    return this.rw('pread', fd, buf, count, offset);
  }

  /** pwrite(2): ksys_pwrite64 → vfs_write. */
  pwrite(fd: number, buf: Uint8Array, count: number, offset: number): number {
    return this.rw('pwrite', fd, buf, count, offset);
  }

  private rw(call: 'pread' | 'pwrite', fd: number, buf: Uint8Array, count: number, offset: number): number {
    if (asLoff(offset, 'offset') < 0) fail('EINVAL', `offset ${offset} is negative as a loff_t`, call);
    const file = this.fds.get(fd, call);
    const write = call === 'pwrite';
    if ((file.fmode & (write ? FMODE_PWRITE : FMODE_PREAD)) === 0) {
      fail(
        'ESPIPE',
        `fd ${fd} (${file.fop.name}) does not support positional ${write ? 'writes' : 'reads'}`,
        call,
      );
    }
    if ((file.fmode & (write ? FMODE_WRITE : FMODE_READ)) === 0) {
      fail('EBADF', `fd ${fd} is not open for ${write ? 'writing' : 'reading'}`, call);
    }
    const op = write ? file.fop.write : file.fop.read;
    if (!op) fail('EINVAL', `${file.fop.name} files cannot be ${write ? 'written' : 'read'}`, call);
    if (!Number.isSafeInteger(count) || count < 0) fail('EINVAL', `count ${count} is invalid`, call);
    if (count > buf.length) fail('EFAULT', `count ${count} exceeds the buffer's ${buf.length} bytes`, call);
    if (count === 0) return 0;
    return op(file, buf, count, offset);
  }

  /** fstat(2). */
  fstat(fd: number): Stat {
    const file = this.fds.get(fd, 'fstat');
    const extra = file.fop.stat?.(file) ?? {};
    return {
      mode: file.inode.mode,
      ino: file.inode.ino,
      size: file.inode.size,
      blocks: extra.blocks ?? 0,
      blksize: extra.blksize ?? PAGE,
    };
  }

  close(fd: number): 0 {
    this.fds.close(fd);
    return 0;
  }

  dup(fd: number): number {
    return this.fds.dup(fd);
  }

  // ---- memory -----------------------------------------------------------------------------

  /** mmap(2): arch/x86 sys_mmap → ksys_mmap_pgoff → do_mmap. */
  mmap(addr: number, length: number, prot: number, flags: number, fd: number, offset: number): number {
    if (!Number.isSafeInteger(offset) || offset % PAGE !== 0) {
      fail('EINVAL', `offset ${offset} is not a multiple of the page size`, 'mmap');
    }
    const file = (flags & MAP_ANONYMOUS) !== 0 ? null : this.fds.get(fd, 'mmap');
    return this.kernel.mm.mmap(addr, length, prot, flags, file, offset);
  }

  munmap(addr: number, length: number): 0 {
    return this.kernel.mm.munmap(addr, length);
  }

  mprotect(addr: number, length: number, prot: number): 0 {
    return this.kernel.mm.mprotect(addr, length, prot);
  }

  madvise(addr: number, length: number, advice: number): 0 {
    return this.kernel.mm.madvise(addr, length, advice);
  }

  readMemory(hva: number, length: number): Uint8Array {
    return this.kernel.mm.read(hva, length);
  }

  writeMemory(hva: number, bytes: Uint8Array): void {
    this.kernel.mm.write(hva, bytes);
  }

  // ---- KVM --------------------------------------------------------------------------------

  /** open("/dev/kvm"): the model's KVM (kvm_main.ts). */
  openKvm(): KvmDevice {
    return openKvmDevice(this.kernel, this.kvmOptions);
  }

  // ---- lifetime and introspection ---------------------------------------------------------

  /** Closes every fd, then tears the address space down (exit_files, exit_mmap). */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const fd of this.fds.fds().reverse()) this.fds.close(fd);
    this.kernel.mm.exitMmap();
    for (const fn of this.kernel.teardown.splice(0)) fn();
    if (this.kernel.alloc.lockWaiterCount > 0) kvmWarn('page-lock waiters left at host teardown');
  }

  /** What is still allocated (tests assert all zero after closing everything). */
  leaks(): LeakReport {
    const a = this.kernel.alloc;
    return {
      frames: a.stats.allocated - this.reserved.length,
      fds: this.fds.openCount,
      vmas: this.kernel.mm.vmas.length,
      openInvalidations: this.kernel.mm.notifiers.inProgress,
      lockWaiters: a.lockWaiterCount,
    };
  }

  /** The process's mappings, in address order (/proc/self/maps). */
  memoryMap(): VmaInfo[] {
    return this.kernel.mm.vmas.map((v) => ({
      start: v.start,
      end: v.end,
      prot: v.prot,
      shared: v.shared,
      file: v.file ? v.file.fop.name : null,
      ino: v.file ? v.file.inode.ino : null,
      offset: v.pgoff * PAGE,
    }));
  }
}

/** One modelled machine: its kernel and one process. */
export function createHost(options: HostOptions = {}): ModelHost {
  return new ModelHost(options);
}
