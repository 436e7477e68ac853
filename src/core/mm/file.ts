/**
 * Open files and the fd table (fs/file_table.c, fs/file.c, include/linux/fs.h).
 *
 * A `File` is the kernel's `struct file`: an open file description with a reference count. Each
 * fd that names it holds one reference, each mapping (VMA) holds one, and kernel code that uses
 * it for a while (fget) holds one. When the last reference goes, `fop.release` runs — the hook
 * guest_memfd relies on (GM-17): closing the fd is not enough while an mmap of the file lives.
 *
 * An `Inode` is what the file refers to: its size, its page cache if it has one, and the list of
 * mappings of it (`i_mmap`, for unmap_mapping_range). Files of different kinds (shmem, guest_memfd,
 * /dev/kvm, a VM, a vCPU) differ by their `FileOperations`, compared by identity like the
 * kernel's `file->f_op == &kvm_gmem_fops`.
 */

import type { Stat } from '../api.js';
import { fail, kvmWarn } from '../errno.js';
import type { PageCache } from './filemap.js';
import type { Vma } from './mmap.js';

export const FMODE_READ = 1 << 0;
export const FMODE_WRITE = 1 << 1;
export const FMODE_LSEEK = 1 << 2;
export const FMODE_PREAD = 1 << 3;
export const FMODE_PWRITE = 1 << 4;

/** The part of `struct inode` the model needs. */
export interface Inode {
  readonly ino: number;
  /** i_mode: S_IFREG | permissions for regular files; 0o600 for anonymous inodes (KVM fds). */
  readonly mode: number;
  /** i_size, in bytes. */
  size: number;
  /** s_maxbytes of the inode's filesystem. */
  readonly maxBytes: number;
  /** The page cache, for memory-backed files. */
  readonly mapping: PageCache | null;
  /** i_mmap: the VMAs that map this inode. */
  readonly mmaps: Set<Vma>;
}

/** The part of `struct file_operations` (plus setattr) the model needs. */
export interface FileOperations {
  /** A name for messages and introspection: 'shmem', 'guest_memfd', 'kvm', 'kvm-vm', 'kvm-vcpu'. */
  readonly name: string;
  /** f_op->fallocate, called after the VFS checks of vfs_fallocate. */
  fallocate?(file: File, mode: number, offset: number, len: number): void;
  /** f_op->read_iter for pread: returns bytes read. */
  read?(file: File, buf: Uint8Array, count: number, offset: number): number;
  /** f_op->write_iter for pwrite: returns bytes written. */
  write?(file: File, buf: Uint8Array, count: number, offset: number): number;
  /** inode->i_op->setattr(ATTR_SIZE): ftruncate. */
  setSize?(file: File, size: number): void;
  /** f_op->mmap: validates the mapping and installs its fault handler. */
  mmap?(file: File, vma: Vma): void;
  /** f_op->release: the last reference to the file is gone. */
  release?(file: File): void;
  /** Extra fstat fields (st_blocks, st_blksize); defaults are used otherwise. */
  stat?(file: File): Partial<Stat>;
}

let nextIno = 1;
/** A fresh inode number (get_next_ino). */
export function newIno(): number {
  return nextIno++;
}

export class File<T = unknown> {
  /** f_count: fds + mappings + kernel users. */
  refs = 1;
  released = false;
  constructor(
    readonly fop: FileOperations,
    readonly inode: Inode,
    /** FMODE_* bits. */
    readonly fmode: number,
    /** file->private_data. */
    public priv: T,
  ) {}

  /** get_file(). */
  get(): this {
    if (this.released) kvmWarn(`get_file on released ${this.fop.name} file`);
    this.refs++;
    return this;
  }

  /** fput(): drops a reference; the last one runs release. */
  put(): void {
    if (this.refs <= 0) {
      kvmWarn(`fput on ${this.fop.name} file with no references`);
      return;
    }
    this.refs--;
    if (this.refs === 0) {
      this.released = true;
      this.fop.release?.(this);
    }
  }
}

/** RLIMIT_NOFILE of the model's process. */
export const NR_OPEN_DEFAULT = 65536;

/** A process's fd table. fds 0–2 are taken by stdio, as in a real process. */
export class FdTable {
  private files: (File | null)[] = [null, null, null];
  private cloexec: boolean[] = [false, false, false];
  private open = 0;

  constructor(readonly limit = NR_OPEN_DEFAULT) {}

  /** Installs file at the lowest free fd (the caller's reference moves to the fd). */
  install(file: File, cloexec: boolean, call: string): number {
    if (this.open >= this.limit - 3) {
      fail('EMFILE', `the process has ${this.open} open fds (RLIMIT_NOFILE ${this.limit})`, call);
    }
    let fd = this.files.indexOf(null, 3);
    if (fd < 0) {
      fd = this.files.length;
      this.files.push(null);
      this.cloexec.push(false);
    }
    this.files[fd] = file;
    this.cloexec[fd] = cloexec;
    this.open++;
    return fd;
  }

  /** fdget(): the file an fd names, or EBADF. No reference is taken. */
  get(fd: number, call: string): File {
    const f = Number.isInteger(fd) && fd >= 3 ? this.files[fd] : undefined;
    if (!f) fail('EBADF', `fd ${fd} is not an open file descriptor`, call);
    return f;
  }

  /** The file an fd names, or null (for callers that want their own errno). */
  lookup(fd: number): File | null {
    return Number.isInteger(fd) && fd >= 3 ? (this.files[fd] ?? null) : null;
  }

  isCloexec(fd: number): boolean {
    return this.cloexec[fd] === true;
  }

  /** close(): removes the fd and drops its reference. */
  close(fd: number, call = 'close'): void {
    const f = this.get(fd, call);
    this.files[fd] = null;
    this.cloexec[fd] = false;
    this.open--;
    f.put();
  }

  /** dup(): a new fd for the same file (without O_CLOEXEC). */
  dup(fd: number): number {
    const f = this.get(fd, 'dup');
    f.get();
    try {
      return this.install(f, false, 'dup');
    } catch (e) {
      f.put();
      throw e;
    }
  }

  /** Open fds, in order. */
  fds(): number[] {
    const out: number[] = [];
    this.files.forEach((f, fd) => {
      if (f) out.push(fd);
    });
    return out;
  }

  get openCount(): number {
    return this.open;
  }
}
