/**
 * The narrow system-call layer under the real-kernel backend: a typed `Sys` interface over the
 * libc calls the binding needs, implemented with koffi (docs/decisions/0001). Nothing above this
 * file touches koffi, so a N-API addon could replace it without changing the KVM code.
 *
 * Every call that can fail reads errno immediately after the failing call (before any other FFI
 * call can clobber it) and throws `KvmError` with the kernel's errno name, the libc or ioctl name
 * as `call`, and a message that names the arguments. The one exception is `ioctlErrno`, for
 * KVM_RUN, whose -1 return is a result rather than an error (RUN-1).
 *
 * koffi is loaded lazily, so `realKvmAvailable()` can report a missing native module as a reason
 * instead of failing at import time. Pointers cross this boundary as `bigint` (koffi 3 returns
 * every pointer as an unsigned BigInt); lengths and offsets as numbers.
 */

import { createRequire } from 'node:module';
import { errnoName, KvmError } from '../core/errno.js';

/** x86-64 `struct stat`, as `fstat` fills it (size 144; offsets checked against glibc 2.36). */
export const STRUCT_STAT_SIZE = 144;
const ST_DEV = 0;
const ST_INO = 8;
const ST_MODE = 24;
const ST_SIZE = 48;
const ST_BLKSIZE = 56;
const ST_BLOCKS = 64;

/** What `fstat` returns: the `Stat` fields of the API plus the device, to identify a file. */
export interface RawStat {
  readonly dev: number;
  readonly ino: number;
  readonly mode: number;
  readonly size: number;
  readonly blksize: number;
  readonly blocks: number;
}

/** `MAP_FAILED`: koffi returns pointers as unsigned BigInts, so (void *)-1 is 2^64 − 1. */
export const MAP_FAILED = 0xffff_ffff_ffff_ffffn;
/** x86-64 signal and syscall numbers used by the vCPU kick protocol (realkvm-notes §6.5). */
export const SIGUSR2 = 12;
const SYS_gettid = 186;
const F_DUPFD_CLOEXEC = 1030;
const EINTR = 4;

/**
 * The libc calls the backend uses. All of them throw `KvmError` on a -1 return, except
 * `ioctlErrno`. `view` is unchecked raw access and is only ever called by `AddressSpace`.
 */
export interface Sys {
  open(path: string, flags: number): number;
  close(fd: number): void;
  /** ioctl whose argument points at `arg` (a struct the kernel reads and/or writes). */
  ioctl(fd: number, request: number, arg: Uint8Array, call: string, detail?: () => string): number;
  /** ioctl with a by-value argument (KVM_CREATE_VM's type, KVM_CHECK_EXTENSION's cap). */
  ioctlValue(fd: number, request: number, arg: number, call: string, detail?: () => string): number;
  /** ioctl by value that never throws: returns the result, or -errno on failure (KVM_RUN). */
  ioctlErrno(fd: number, request: number, arg: number): number;
  /** Returns the mapping address. `addr` 0n lets the kernel choose. */
  mmap(addr: bigint, length: number, prot: number, flags: number, fd: number, offset: number): bigint;
  munmap(addr: bigint, length: number): void;
  mprotect(addr: bigint, length: number, prot: number): void;
  madvise(addr: bigint, length: number, advice: number): void;
  memfdCreate(name: string, flags: number): number;
  ftruncate(fd: number, length: number): void;
  fallocate(fd: number, mode: number, offset: number, length: number): void;
  /** Reads up to `count` bytes into `buf` (count ≤ buf.byteLength, checked by the caller). */
  pread(fd: number, buf: Uint8Array, count: number, offset: number): number;
  pwrite(fd: number, buf: Uint8Array, count: number, offset: number): number;
  fstat(fd: number): RawStat;
  dup(fd: number): number;
  /** fcntl(fd, F_DUPFD_CLOEXEC, 0): a private duplicate that exec does not inherit. */
  dupCloexec(fd: number): number;
  gettid(): number;
  getpid(): number;
  tgkill(tgid: number, tid: number, sig: number): void;
  /** A zero-copy ArrayBuffer over [addr, addr + length). Unchecked: see AddressSpace. */
  view(addr: bigint, length: number): ArrayBuffer;
}

/** 64-bit integers come back from koffi as a number when ≤ 2^53 and a bigint above. */
type Int = number | bigint;

// The koffi surface this file uses, typed. koffi's own declarations type every function as
// `(...args: any[]) => any`; the typed signatures below are what the C prototypes promise.
interface KoffiFunctions {
  open(path: string, flags: number, vaType: 'int', mode: number): number;
  close(fd: number): number;
  ioctlP(fd: number, request: number, arg: Uint8Array): number;
  ioctlV(fd: number, request: number, arg: number): number;
  mmap(
    addr: bigint | null,
    length: number,
    prot: number,
    flags: number,
    fd: number,
    offset: number,
  ): bigint | null;
  munmap(addr: bigint, length: number): number;
  mprotect(addr: bigint, length: number, prot: number): number;
  madvise(addr: bigint, length: number, advice: number): number;
  memfdCreate(name: string, flags: number): number;
  ftruncate(fd: number, length: number): number;
  fallocate(fd: number, mode: number, offset: number, length: number): number;
  pread(fd: number, buf: Uint8Array, count: number, offset: number): Int;
  pwrite(fd: number, buf: Uint8Array, count: number, offset: number): Int;
  fstat(fd: number, buf: Uint8Array): number;
  dup(fd: number): number;
  fcntl(fd: number, cmd: number, arg: number): number;
  syscall0(nr: number): Int;
  getpid(): number;
  tgkill(tgid: number, tid: number, sig: number): number;
  errno(): number;
  view(addr: bigint, length: number): ArrayBuffer;
}

interface KoffiLibrary {
  func(definition: string): unknown;
}
interface KoffiModule {
  load(path: string): KoffiLibrary;
  errno(): number;
  view(ref: bigint, len: number): ArrayBuffer;
}

function isKoffiModule(m: unknown): m is KoffiModule {
  if (typeof m !== 'object' || m === null) return false;
  const r = m as Record<string, unknown>;
  return (
    typeof r['load'] === 'function' && typeof r['errno'] === 'function' && typeof r['view'] === 'function'
  );
}

function loadKoffi(): KoffiFunctions {
  const require = createRequire(import.meta.url);
  const mod: unknown = require('koffi');
  if (!isKoffiModule(mod)) throw new Error('the koffi module does not export load/errno/view');
  const libc = mod.load('libc.so.6');
  // Each declaration is a C prototype; koffi checks argument types at every call. ioctl is
  // variadic in C; two fixed-arity prototypes for the same symbol are ABI-compatible on x86-64
  // and ~20% cheaper than koffi's variadic form (realkvm-notes §6.1).
  const f = (decl: string) => libc.func(decl) as (...args: unknown[]) => unknown;
  const open = f('int open(const char *path, int flags, ...)');
  const close = f('int close(int fd)');
  const ioctlP = f('int ioctl(int fd, unsigned long req, void *arg)');
  const ioctlV = f('int ioctl(int fd, unsigned long req, unsigned long arg)');
  const mmap = f('void *mmap(void *addr, size_t len, int prot, int flags, int fd, int64_t off)');
  const munmap = f('int munmap(void *addr, size_t len)');
  const mprotect = f('int mprotect(void *addr, size_t len, int prot)');
  const madvise = f('int madvise(void *addr, size_t len, int advice)');
  const memfdCreate = f('int memfd_create(const char *name, unsigned int flags)');
  const ftruncate = f('int ftruncate(int fd, int64_t len)');
  const fallocate = f('int fallocate(int fd, int mode, int64_t off, int64_t len)');
  const pread = f('int64_t pread(int fd, void *buf, size_t count, int64_t off)');
  const pwrite = f('int64_t pwrite(int fd, const void *buf, size_t count, int64_t off)');
  const fstat = f('int fstat(int fd, void *buf)');
  const dup = f('int dup(int fd)');
  const fcntl = f('int fcntl(int fd, int cmd, int arg)');
  const syscall0 = f('long syscall(long nr)');
  const getpid = f('int getpid(void)');
  const tgkill = f('int tgkill(int tgid, int tid, int sig)');
  // The casts below restate the C prototypes above as TypeScript signatures.
  return {
    open: open as KoffiFunctions['open'],
    close: close as KoffiFunctions['close'],
    ioctlP: ioctlP as KoffiFunctions['ioctlP'],
    ioctlV: ioctlV as KoffiFunctions['ioctlV'],
    mmap: mmap as KoffiFunctions['mmap'],
    munmap: munmap as KoffiFunctions['munmap'],
    mprotect: mprotect as KoffiFunctions['mprotect'],
    madvise: madvise as KoffiFunctions['madvise'],
    memfdCreate: memfdCreate as KoffiFunctions['memfdCreate'],
    ftruncate: ftruncate as KoffiFunctions['ftruncate'],
    fallocate: fallocate as KoffiFunctions['fallocate'],
    pread: pread as KoffiFunctions['pread'],
    pwrite: pwrite as KoffiFunctions['pwrite'],
    fstat: fstat as KoffiFunctions['fstat'],
    dup: dup as KoffiFunctions['dup'],
    fcntl: fcntl as KoffiFunctions['fcntl'],
    syscall0: syscall0 as KoffiFunctions['syscall0'],
    getpid: getpid as KoffiFunctions['getpid'],
    tgkill: tgkill as KoffiFunctions['tgkill'],
    errno: () => mod.errno(),
    view: (addr, length) => mod.view(addr, length),
  };
}

const hex = (n: number | bigint): string => `0x${n.toString(16)}`;

function failed(call: string, errno: number, detail: string): KvmError {
  return new KvmError(errnoName(errno), `${detail} failed`, { call });
}

function createKoffiSys(k: KoffiFunctions): Sys {
  // Reads errno right after a failing call; nothing may run between the call and this.
  const check = (r: number, call: string, detail: () => string): number => {
    if (r < 0) {
      const e = k.errno();
      throw failed(call, e, detail());
    }
    return r;
  };
  const stat = new Uint8Array(STRUCT_STAT_SIZE);
  const statView = new DataView(stat.buffer);
  const u64 = (off: number): number => Number(statView.getBigUint64(off, true));
  return {
    open(path, flags) {
      return check(k.open(path, flags, 'int', 0), 'open', () => `open("${path}", ${hex(flags)})`);
    },
    close(fd) {
      check(k.close(fd), 'close', () => `close(${fd})`);
    },
    ioctl(fd, request, arg, call, detail) {
      const r = k.ioctlP(fd, request, arg);
      if (r < 0) {
        const e = k.errno();
        throw failed(call, e, `ioctl(fd ${fd}, ${call}${detail === undefined ? '' : `, ${detail()}`})`);
      }
      return r;
    },
    ioctlValue(fd, request, arg, call, detail) {
      const r = k.ioctlV(fd, request, arg);
      if (r < 0) {
        const e = k.errno();
        throw failed(call, e, `ioctl(fd ${fd}, ${call}, ${detail === undefined ? String(arg) : detail()})`);
      }
      return r;
    },
    ioctlErrno(fd, request, arg) {
      const r = k.ioctlV(fd, request, arg);
      return r < 0 ? -k.errno() : r;
    },
    mmap(addr, length, prot, flags, fd, offset) {
      const r = k.mmap(addr === 0n ? null : addr, length, prot, flags, fd, offset);
      if (r === null || r === MAP_FAILED) {
        const e = k.errno();
        throw failed(
          'mmap',
          e,
          `mmap(addr ${hex(addr)}, length ${length}, prot ${hex(prot)}, flags ${hex(flags)}, fd ${fd}, offset ${offset})`,
        );
      }
      return r;
    },
    munmap(addr, length) {
      check(k.munmap(addr, length), 'munmap', () => `munmap(${hex(addr)}, ${length})`);
    },
    mprotect(addr, length, prot) {
      check(
        k.mprotect(addr, length, prot),
        'mprotect',
        () => `mprotect(${hex(addr)}, ${length}, ${hex(prot)})`,
      );
    },
    madvise(addr, length, advice) {
      check(k.madvise(addr, length, advice), 'madvise', () => `madvise(${hex(addr)}, ${length}, ${advice})`);
    },
    memfdCreate(name, flags) {
      return check(
        k.memfdCreate(name, flags),
        'memfd_create',
        () => `memfd_create("${name}", ${hex(flags)})`,
      );
    },
    ftruncate(fd, length) {
      check(k.ftruncate(fd, length), 'ftruncate', () => `ftruncate(${fd}, ${length})`);
    },
    fallocate(fd, mode, offset, length) {
      check(
        k.fallocate(fd, mode, offset, length),
        'fallocate',
        () => `fallocate(fd ${fd}, mode ${hex(mode)}, offset ${offset}, len ${length})`,
      );
    },
    pread(fd, buf, count, offset) {
      return check(
        Number(k.pread(fd, buf, count, offset)),
        'pread',
        () => `pread(${fd}, ${count}, ${offset})`,
      );
    },
    pwrite(fd, buf, count, offset) {
      return check(
        Number(k.pwrite(fd, buf, count, offset)),
        'pwrite',
        () => `pwrite(${fd}, ${count}, ${offset})`,
      );
    },
    fstat(fd) {
      check(k.fstat(fd, stat), 'fstat', () => `fstat(${fd})`);
      return {
        dev: u64(ST_DEV),
        ino: u64(ST_INO),
        mode: statView.getUint32(ST_MODE, true),
        size: u64(ST_SIZE),
        blksize: u64(ST_BLKSIZE),
        blocks: u64(ST_BLOCKS),
      };
    },
    dup(fd) {
      return check(k.dup(fd), 'dup', () => `dup(${fd})`);
    },
    dupCloexec(fd) {
      return check(k.fcntl(fd, F_DUPFD_CLOEXEC, 0), 'fcntl', () => `fcntl(${fd}, F_DUPFD_CLOEXEC, 0)`);
    },
    gettid() {
      return Number(k.syscall0(SYS_gettid));
    },
    getpid() {
      return k.getpid();
    },
    tgkill(tgid, tid, sig) {
      check(k.tgkill(tgid, tid, sig), 'tgkill', () => `tgkill(${tgid}, ${tid}, ${sig})`);
    },
    view(addr, length) {
      return k.view(addr, length);
    },
  };
}

let loaded: { sys: Sys } | { error: string } | undefined;

/** The process's `Sys` (koffi over libc), or the reason it cannot be loaded. */
export function trySys(): { sys: Sys } | { error: string } {
  if (loaded === undefined) {
    try {
      loaded = { sys: createKoffiSys(loadKoffi()) };
    } catch (e) {
      loaded = { error: `koffi could not be loaded: ${e instanceof Error ? e.message : String(e)}` };
    }
  }
  return loaded;
}

/** The process's `Sys`; throws if koffi cannot be loaded. */
export function getSys(): Sys {
  const s = trySys();
  if ('error' in s) throw new Error(s.error);
  return s.sys;
}

/** errno value for "interrupted system call", as `ioctlErrno` reports it (negated). */
export const ERRNO_EINTR = EINTR;
