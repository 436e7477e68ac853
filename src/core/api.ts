/**
 * The one interface both backends implement (architecture §2): the model (`createHost()`) and
 * the real kernel (`createRealHost()` in `guestmem/host`). Scenarios, the VMM, the conformance
 * suite and outside test suites are written against these types only.
 *
 * Shape rules, so a VMM developer already knows the API:
 * - a system call is a method named after the libc call, with the same arguments in the same
 *   order, returning what libc returns (an fd, an hva, 0) and throwing `KvmError` where libc
 *   returns -1;
 * - an ioctl is a method named after it in camelCase on the object whose fd it takes;
 * - a struct is a plain object with the kernel's field names in camelCase;
 * - `KVM_RUN` returns a value shaped like `kvm_run`, and never throws for a -1 return: the
 *   errno is part of the result (a memory-fault exit is a failed KVM_RUN with a record, RUN-1).
 */

import type { ErrnoName } from './errno.js';
import type { Program } from './vcpu/program.js';

/** What `fstat` reports (the fields the project uses of `struct stat`). */
export interface Stat {
  /** st_mode: file type and permission bits (S_IFREG | 0600 for memfd and guest_memfd). */
  readonly mode: number;
  readonly ino: number;
  /** st_size, in bytes. */
  readonly size: number;
  /** st_blocks: 512-byte blocks allocated. */
  readonly blocks: number;
  /** st_blksize, in bytes. */
  readonly blksize: number;
}

/** The host process: its system calls and its own memory. */
export interface HostProcess {
  memfdCreate(name: string, flags?: number): number;
  ftruncate(fd: number, length: number): 0;
  fallocate(fd: number, mode: number, offset: number, len: number): 0;
  /** Reads up to `count` bytes at `offset` into `buf`; returns the number of bytes read. */
  pread(fd: number, buf: Uint8Array, count: number, offset: number): number;
  /** Writes `count` bytes of `buf` at `offset`; returns the number of bytes written. */
  pwrite(fd: number, buf: Uint8Array, count: number, offset: number): number;
  fstat(fd: number): Stat;
  close(fd: number): 0;
  dup(fd: number): number;
  /** Returns the mapping's address. `addr` 0 lets the kernel choose. */
  mmap(addr: number, length: number, prot: number, flags: number, fd: number, offset: number): number;
  munmap(addr: number, length: number): 0;
  mprotect(addr: number, length: number, prot: number): 0;
  madvise(addr: number, length: number, advice: number): 0;
  /** The process reads its own memory; throws `HostFault` (SIGSEGV/SIGBUS) as the CPU would. */
  readMemory(hva: number, length: number): Uint8Array;
  /** The process writes its own memory; throws `HostFault` as the CPU would. */
  writeMemory(hva: number, bytes: Uint8Array): void;
}

/** One machine: its kernel and one process. */
export interface Host extends HostProcess {
  readonly backend: 'model' | 'kvm';
  /** open("/dev/kvm"): throws KvmError ENOENT/EACCES where the device is absent. */
  openKvm(): Kvm;
  /** Closes every fd and mapping this host opened, in the order the kernel objects need. */
  dispose(): void;
}

/** The /dev/kvm fd. */
export interface Kvm {
  readonly fd: number;
  getApiVersion(): number;
  checkExtension(cap: number): number;
  createVm(type?: number): Vm;
  getVcpuMmapSize(): number;
  close(): 0;
}

/** struct kvm_userspace_memory_region. */
export interface UserspaceMemoryRegion {
  readonly slot: number;
  readonly flags: number;
  readonly guestPhysAddr: number;
  readonly memorySize: number;
  readonly userspaceAddr: number;
}

/** struct kvm_userspace_memory_region2 (pad fields are not checked by KVM and omitted). */
export interface UserspaceMemoryRegion2 extends UserspaceMemoryRegion {
  readonly guestMemfdOffset?: number;
  readonly guestMemfd?: number;
  /** Extension (seeds 000/001, KVM_MEM_PRIVATE_MEMFD): the memfd backing private memory. */
  readonly privateFd?: number;
  /** Extension: byte offset of the slot's first page in `privateFd`. */
  readonly privateOffset?: number;
}

/** struct kvm_create_guest_memfd. */
export interface CreateGuestMemfd {
  readonly size: number;
  readonly flags?: number;
}

/** struct kvm_memory_attributes. */
export interface MemoryAttributes {
  readonly address: number;
  readonly size: number;
  readonly attributes: number;
  readonly flags?: number;
}

/** struct kvm_enable_cap. */
export interface EnableCap {
  readonly cap: number;
  readonly flags?: number;
  readonly args?: readonly number[];
}

/** struct kvm_dirty_log: the kernel copies the bitmap into `dirtyBitmap` (EFAULT if too small). */
export interface DirtyLog {
  readonly slot: number;
  readonly dirtyBitmap: Uint8Array;
}

/** struct kvm_clear_dirty_log. */
export interface ClearDirtyLog {
  readonly slot: number;
  readonly firstPage: number;
  readonly numPages: number;
  readonly dirtyBitmap: Uint8Array;
}

/** struct kvm_pre_fault_memory: `gpa` and `size` are updated in place, as the kernel does. */
export interface PreFaultMemory {
  gpa: number;
  size: number;
  flags?: number;
}

/** A VM fd. */
export interface Vm {
  readonly fd: number;
  readonly type: number;
  checkExtension(cap: number): number;
  enableCap(cap: EnableCap): 0;
  setUserMemoryRegion(region: UserspaceMemoryRegion): 0;
  setUserMemoryRegion2(region: UserspaceMemoryRegion2): 0;
  /** KVM_CREATE_GUEST_MEMFD: returns the new fd (not O_CLOEXEC, GEN-3). */
  createGuestMemfd(args: CreateGuestMemfd): number;
  setMemoryAttributes(attrs: MemoryAttributes): 0;
  getDirtyLog(log: DirtyLog): 0;
  clearDirtyLog(log: ClearDirtyLog): 0;
  createVcpu(id: number): Vcpu;
  close(): 0;
}

/** x86 general-purpose registers (struct kvm_regs), as numbers (u64 values above 2^53 as bigint). */
export interface Regs {
  rax: bigint;
  rbx: bigint;
  rcx: bigint;
  rdx: bigint;
  rsi: bigint;
  rdi: bigint;
  rsp: bigint;
  rbp: bigint;
  r8: bigint;
  r9: bigint;
  r10: bigint;
  r11: bigint;
  r12: bigint;
  r13: bigint;
  r14: bigint;
  r15: bigint;
  rip: bigint;
  rflags: bigint;
}

/**
 * The mutable part of `kvm_run` that userspace writes before re-entering KVM_RUN: data for an
 * MMIO or port-I/O read, the return value of a hypercall, and immediate_exit.
 */
export interface KvmRunShared {
  immediateExit: number;
  readonly mmio: { readonly data: Uint8Array };
  readonly io: { readonly data: Uint8Array };
  readonly hypercall: { ret: number };
}

export interface MmioExit {
  readonly physAddr: number;
  /** 8 bytes; the first `len` are valid (guest byte order). */
  readonly data: Uint8Array;
  readonly len: number;
  readonly isWrite: boolean;
}
export interface IoExit {
  readonly direction: 0 | 1;
  readonly size: 1 | 2 | 4;
  readonly port: number;
  readonly count: number;
  /** size × count bytes (for OUT: what the guest wrote). */
  readonly data: Uint8Array;
}
export interface HypercallExit {
  readonly nr: number;
  readonly args: readonly number[];
  readonly flags: number;
}
export interface MemoryFaultExit {
  readonly flags: number;
  readonly gpa: number;
  readonly size: number;
}
export interface InternalErrorExit {
  readonly suberror: number;
  readonly data: readonly number[];
}

/**
 * What one KVM_RUN returned. `ret` 0 is a normal exit; `ret` -1 carries the errno and, for
 * KVM_EXIT_MEMORY_FAULT, the fault record. `exitReason` is whatever kvm_run held afterwards:
 * after an EFAULT that wrote no record it is stale (RUN-3), exactly as in the kernel.
 */
export interface RunResult {
  readonly ret: 0 | -1;
  readonly errno?: ErrnoName | `E${number}`;
  readonly exitReason: number;
  /** Kernel name of `exitReason` (`KVM_EXIT_MMIO`). */
  readonly exitReasonName: string;
  /** True iff this KVM_RUN wrote `memoryFault` (so it is valid; see RUN-3). */
  readonly memoryFaultValid?: boolean;
  readonly mmio?: MmioExit;
  readonly io?: IoExit;
  readonly hypercall?: HypercallExit;
  readonly memoryFault?: MemoryFaultExit;
  readonly internal?: InternalErrorExit;
  /**
   * True when the run was ended by the real backend's run watchdog: the KVM_RUN blocked its thread
   * for longer than the vCPU's `runTimeoutMs`, and the thread was kicked (SIGUSR2), so the result
   * is otherwise exactly a kick's: `ret -1`, `errno 'EINTR'`, `exitReason` KVM_EXIT_INTR. Absent
   * on every other result, including an EINTR from a kick or a stray signal. The model never sets
   * it (its per-run instruction `budget` delivers a plain kick).
   */
  readonly watchdog?: boolean;
}

/** A vCPU fd. */
export interface Vcpu {
  readonly fd: number;
  readonly id: number;
  /** The shared kvm_run page: write MMIO/IO read data and hypercall.ret here before re-entering. */
  readonly kvmRun: KvmRunShared;
  run(): RunResult;
  getRegs(): Regs;
  setRegs(regs: Partial<Regs>): 0;
  preFaultMemory(range: PreFaultMemory): 0;
  /**
   * Installs a guest program (architecture §5): the model interprets it, the real backend
   * compiles it to x86-64 code placed at `layout.codeGpa` with page tables at
   * `layout.pageTableGpa`. The vCPU starts executing it at the next `run()`.
   */
  setProgram(program: Program, layout?: ProgramLayout): void;
  close(): 0;
}

/** Where a guest program's code and page tables live in guest memory. */
export interface ProgramLayout {
  /** Guest physical address of the code (must be backed by a memslot to run). */
  readonly codeGpa: number;
  /** Guest physical address of the identity-mapping page tables (real backend). */
  readonly pageTableGpa: number;
}
export const DEFAULT_PROGRAM_LAYOUT: ProgramLayout = { codeGpa: 0x1000, pageTableGpa: 0x10000 };
