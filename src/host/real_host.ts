/**
 * `RealHost`: the `Host` of src/core/api.ts over the real kernel — this process's system calls,
 * its own memory (through `AddressSpace`, which refuses what would be a signal), and /dev/kvm.
 *
 * The host owns every fd it returns, and only those: calls on any other fd (Node's own stdout,
 * libuv's epoll fd, …) fail with EBADF as if the fd were not open, exactly as the model's
 * per-process fd table answers, so a stray number can never close or write one of Node's files.
 * `close(fd)` on a VM, vCPU or /dev/kvm fd goes through that object's `close()`, so the object
 * knows it is closed.
 *
 * `dispose()` tears everything down in the order the kernel objects need (realkvm-notes §8):
 * vCPU kvm_run unmap → vCPU fds → memslot deletes → unmap guest memory → guest_memfd and other
 * files → VM fds → /dev/kvm fds.
 */

import { readFileSync } from 'node:fs';
import type { Host, Kvm, Stat } from '../core/api.js';
import { KvmError } from '../core/errno.js';
import {
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  O_CLOEXEC,
  O_RDWR,
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
  S_IFREG,
} from '../core/uapi.js';
import { PAGE_SIZE, pageAlignUp } from '../core/units.js';
import { AddressSpace, DEFAULT_VMA_HEADROOM } from './address_space.js';
import { classifyFile, fileKey } from './files.js';
import { type FdKind, type HostContext, RealKvm, type RealVm } from './kvm_main.js';
import { kvmDevicePath } from './probe.js';
import type { Sys } from './sys.js';
import { checkRunTimeout, DEFAULT_RUN_TIMEOUT_MS } from './watchdog.js';

const S_IFMT = 0o170000;

/** Options of `createRealHost`. */
export interface RealHostOptions {
  /** VMAs always left free for Node under vm.max_map_count (default 4096). */
  readonly vmaHeadroom?: number;
  /** The path of the KVM device (default: `kvmDevicePath()`, /dev/kvm unless GUESTMEM_KVM_DEVICE is set). */
  readonly kvmPath?: string;
  /**
   * The `runTimeoutMs` of every vCPU created through this host (default 10 000): the most one
   * KVM_RUN may block its thread before the run watchdog kicks it (EINTR, KVM_EXIT_INTR,
   * `watchdog: true`). `Infinity` turns the watchdog off. Each vCPU can change its own.
   */
  readonly runTimeoutMs?: number;
}

interface FdEntry {
  readonly kind: FdKind;
  readonly owner: { close(): 0 } | undefined;
}

function readMmapMinAddr(): number {
  try {
    return Number(readFileSync('/proc/sys/vm/mmap_min_addr', 'utf8').trim());
  } catch {
    return PAGE_SIZE;
  }
}

/** The real-kernel `Host`; see the file comment. */
export class RealHost implements Host, HostContext {
  readonly backend = 'kvm' as const;
  readonly space: AddressSpace;
  readonly mmapMinAddr = readMmapMinAddr();
  private readonly fds = new Map<number, FdEntry>();
  private readonly kvms = new Set<RealKvm>();
  private readonly vms = new Set<RealVm>();
  private scratchMap: { addr: number; rw: number } | null = null;
  private disposed = false;
  private readonly kvmPath: string;
  readonly runTimeoutMs: number;

  constructor(
    readonly sys: Sys,
    options: RealHostOptions = {},
  ) {
    this.space = new AddressSpace(sys, options.vmaHeadroom ?? DEFAULT_VMA_HEADROOM);
    this.kvmPath = options.kvmPath ?? kvmDevicePath();
    this.runTimeoutMs = checkRunTimeout(options.runTimeoutMs ?? DEFAULT_RUN_TIMEOUT_MS, 'runTimeoutMs');
  }

  // -------------------------------------------------------------------------------------------
  // HostContext

  adoptFd(fd: number, kind: FdKind, owner?: { close(): 0 }): void {
    this.fds.set(fd, { kind, owner });
    if (kind === 'vm' && owner !== undefined) this.vms.add(owner as RealVm); // kind 'vm' is only adopted with its RealVm
  }

  forgetFd(fd: number): void {
    this.fds.delete(fd);
  }

  liveSlotRanges(): [number, number][] {
    const out: [number, number][] = [];
    for (const vm of this.vms) if (vm.reachable) out.push(...vm.slotRanges());
    return out;
  }

  scratch(length: number, fill?: (bytes: Uint8Array) => void): { addr: bigint; view: () => Uint8Array } {
    let s = this.scratchMap;
    if (s === null || s.rw < length) {
      if (s !== null) this.space.unmapInternal(s.addr);
      const rw = Math.max(PAGE_SIZE, pageAlignUp(length));
      const addr = this.space.mapInternal(
        rw + PAGE_SIZE,
        PROT_READ | PROT_WRITE,
        MAP_PRIVATE | MAP_ANONYMOUS,
        -1,
        'scratch',
      );
      // The guard page: the kernel gets EFAULT for any byte past the caller's buffer.
      this.sys.mprotect(BigInt(addr + rw), PAGE_SIZE, PROT_NONE);
      s = { addr, rw };
      this.scratchMap = s;
    }
    const at = s.rw - length;
    const ab = this.space.internalView(s.addr);
    const bytes = new Uint8Array(ab, at, length);
    bytes.fill(0);
    fill?.(bytes);
    const base = s.addr;
    return {
      addr: BigInt(base + at),
      view: () => new Uint8Array(this.space.internalView(base), at, length).slice(),
    };
  }

  // -------------------------------------------------------------------------------------------
  // Host

  private entry(fd: number, call: string): FdEntry {
    const e = this.fds.get(fd);
    if (e === undefined) {
      throw new KvmError(
        'EBADF',
        `fd ${fd} is not open in this host (the binding only uses fds it returned)`,
        {
          call,
        },
      );
    }
    return e;
  }

  private alive(call: string): void {
    if (this.disposed) throw new KvmError('EBADF', 'the host was disposed', { call });
  }

  openKvm(): Kvm {
    this.alive('open');
    const fd = this.sys.open(this.kvmPath, O_RDWR | O_CLOEXEC);
    const kvm = new RealKvm(this, fd);
    this.kvms.add(kvm);
    this.adoptFd(fd, 'kvm', kvm);
    return kvm;
  }

  memfdCreate(name: string, flags = 0): number {
    this.alive('memfd_create');
    const fd = this.sys.memfdCreate(name, flags);
    this.adoptFd(fd, 'file');
    return fd;
  }

  ftruncate(fd: number, length: number): 0 {
    this.entry(fd, 'ftruncate');
    this.sys.ftruncate(fd, length);
    return 0;
  }

  fallocate(fd: number, mode: number, offset: number, len: number): 0 {
    this.entry(fd, 'fallocate');
    this.sys.fallocate(fd, mode, offset, len);
    return 0;
  }

  pread(fd: number, buf: Uint8Array, count: number, offset: number): number {
    this.entry(fd, 'pread');
    this.checkBuffer(buf, count, 'pread');
    return this.sys.pread(fd, buf, count, offset);
  }

  pwrite(fd: number, buf: Uint8Array, count: number, offset: number): number {
    this.entry(fd, 'pwrite');
    this.checkBuffer(buf, count, 'pwrite');
    return this.sys.pwrite(fd, buf, count, offset);
  }

  /** The kernel would read or write `count` bytes of process memory: never past the JS buffer. */
  private checkBuffer(buf: Uint8Array, count: number, call: string): void {
    if (!Number.isSafeInteger(count) || count < 0 || count > buf.byteLength) {
      throw new KvmError('EFAULT', `count ${count} exceeds the ${buf.byteLength}-byte buffer`, { call });
    }
  }

  fstat(fd: number): Stat {
    this.entry(fd, 'fstat');
    const st = this.sys.fstat(fd);
    return { mode: st.mode, ino: st.ino, size: st.size, blocks: st.blocks, blksize: st.blksize };
  }

  close(fd: number): 0 {
    const e = this.entry(fd, 'close');
    if (e.owner !== undefined) return e.owner.close();
    this.fds.delete(fd);
    this.sys.close(fd);
    return 0;
  }

  dup(fd: number): number {
    const e = this.entry(fd, 'dup');
    const nfd = this.sys.dup(fd);
    this.adoptFd(nfd, e.kind === 'gmem' ? 'gmem' : 'file');
    return nfd;
  }

  mmap(addr: number, length: number, prot: number, flags: number, fd: number, offset: number): number {
    this.alive('mmap');
    if ((flags & MAP_ANONYMOUS) !== 0) {
      return this.space.mmap({
        addr,
        length,
        prot,
        flags,
        fd,
        offset,
        file: null,
        keep: this.liveSlotRanges(),
      });
    }
    this.entry(fd, 'mmap');
    const st = this.sys.fstat(fd);
    if ((st.mode & S_IFMT) !== S_IFREG) {
      throw new KvmError(
        'ENODEV',
        `fd ${fd} is not a regular file (mode 0o${st.mode.toString(8)}): the binding maps only anonymous memory, ` +
          'memfds and guest_memfds (kvm_run is reached through vcpu.kvmRun)',
        { call: 'mmap' },
      );
    }
    const key = fileKey(st);
    const file = this.space.pin(fd, key, classifyFile(fd, key).gmem);
    return this.space.mmap({ addr, length, prot, flags, fd, offset, file, keep: this.liveSlotRanges() });
  }

  /**
   * Maps the first `chunk` bytes of `fd` `count` times back to back (read-only by default), as
   * one user mapping of `chunk × count` bytes: the VMM's all-ones emulation (allones.ts). Each
   * copy is one VMA, counted against the VMA budget.
   */
  mmapRepeated(fd: number, chunk: number, count: number, prot: number = PROT_READ): number {
    this.alive('mmap');
    this.entry(fd, 'mmap');
    if (
      !Number.isSafeInteger(chunk) ||
      chunk <= 0 ||
      chunk % PAGE_SIZE !== 0 ||
      !Number.isSafeInteger(count) ||
      count <= 0
    ) {
      throw new KvmError(
        'EINVAL',
        `chunk ${chunk} is not a positive multiple of ${PAGE_SIZE}, or count ${count} < 1`,
        {
          call: 'mmap',
        },
      );
    }
    const st = this.sys.fstat(fd);
    const key = fileKey(st);
    const file = this.space.pin(fd, key, classifyFile(fd, key).gmem);
    return this.space.mapRepeated(fd, file, chunk, count, prot);
  }

  munmap(addr: number, length: number): 0 {
    this.alive('munmap');
    this.space.munmap(addr, length, this.liveSlotRanges());
    return 0;
  }

  mprotect(addr: number, length: number, prot: number): 0 {
    this.alive('mprotect');
    this.space.mprotect(addr, length, prot);
    return 0;
  }

  madvise(addr: number, length: number, advice: number): 0 {
    this.alive('madvise');
    this.space.madvise(addr, length, advice);
    return 0;
  }

  readMemory(hva: number, length: number): Uint8Array {
    return this.space.read(hva, length);
  }

  writeMemory(hva: number, bytes: Uint8Array): void {
    this.space.write(hva, bytes);
  }

  /** The VMs created through this host (open or not). */
  allVms(): readonly RealVm[] {
    return [...this.vms];
  }

  /**
   * Closes every fd and mapping this host opened, in the kernel objects' order. Views handed out
   * over kvm_run stay valid (they now reach tombstones); no other view exists.
   */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    const quietly = (f: () => unknown): void => {
      try {
        f();
      } catch {
        // Teardown continues: one failed close must not leak everything after it.
      }
    };
    // vCPU kvm_run unmap → vCPU fd (RealVcpu.close does both, after stopping a worker run).
    for (const vm of this.vms) for (const vcpu of [...vm.vcpus]) quietly(() => vcpu.close());
    // Memslot deletes, while the VM fds are still open.
    for (const vm of this.vms) quietly(() => vm.deleteAllSlots());
    // Unmap guest memory, reservations, scratch (the file pins close with their mappings).
    quietly(() => this.space.unmapAll());
    this.scratchMap = null;
    // guest_memfds and other files, then VM fds, then /dev/kvm.
    for (const kinds of [['gmem', 'file'], ['vm'], ['kvm']] as const) {
      for (const [fd, e] of [...this.fds]) {
        if (!(kinds as readonly FdKind[]).includes(e.kind)) continue;
        quietly(() => (e.owner !== undefined ? e.owner.close() : this.sys.close(fd)));
        this.fds.delete(fd);
      }
    }
  }
}
