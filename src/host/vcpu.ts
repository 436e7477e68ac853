/**
 * A vCPU of the real kernel (virt/kvm/kvm_main.c `kvm_vcpu_ioctl`, arch/x86/kvm/x86.c
 * `kvm_arch_vcpu_ioctl_run`): KVM_RUN over the mmap'd `kvm_run` page, the register ioctls,
 * KVM_PRE_FAULT_MEMORY, and guest programs compiled to x86-64 (`x86/compile.ts`).
 *
 * `run()` never throws for a -1 return: the errno is part of the result (RUN-1). Because the
 * kernel leaves `exit_reason` untouched when KVM_RUN fails without an exit record (RUN-3), the
 * binding writes a sentinel there before each run: if it is still there afterwards, this run
 * wrote nothing, the previous value is put back (so `kvm_run` reads exactly as the kernel left
 * it) and `memoryFaultValid` is false.
 *
 * The `kvm_run` mapping is shared with the VMM through live views (`kvmRun.mmio.data`, …). Views
 * cannot be detached, so on close the mapping is replaced in place by anonymous memory (a
 * tombstone: stale views keep working on harmless memory) and the tombstone is unmapped only
 * when the views are garbage (a FinalizationRegistry on their ArrayBuffer).
 *
 * No KVM_RUN blocks its thread for longer than `runTimeoutMs` (default 10 s, from
 * `createRealHost({ runTimeoutMs })`): the run watchdog (watchdog.ts) then kicks the thread with
 * SIGUSR2, exactly as a kick does, and the result is `{ ret: -1, errno: 'EINTR', exitReason:
 * KVM_EXIT_INTR, watchdog: true }`. A guest that spins, or a VMCALL that never retires on PVM
 * (docs/host-deviations.md #2), can therefore not hang the event loop. The same budget applies to
 * runs issued by this vCPU's worker (vcpu_worker.ts). `Infinity` turns the watchdog off.
 */

import type {
  HypercallExit,
  InternalErrorExit,
  IoExit,
  KvmRunShared,
  MemoryFaultExit,
  MmioExit,
  PreFaultMemory,
  ProgramLayout,
  Regs,
  RunResult,
  Vcpu,
} from '../core/api.js';
import { DEFAULT_PROGRAM_LAYOUT } from '../core/api.js';
import { errnoName, KvmError } from '../core/errno.js';
import {
  decodeStruct,
  EXIT_REASON_NAMES,
  encodeStruct,
  KVM_CAP_PRE_FAULT_MEMORY,
  KVM_EXIT_HYPERCALL,
  KVM_EXIT_INTERNAL_ERROR,
  KVM_EXIT_IO,
  KVM_EXIT_MEMORY_FAULT,
  KVM_EXIT_MMIO,
  KVM_GET_REGS,
  KVM_GET_SREGS,
  KVM_PRE_FAULT_MEMORY,
  KVM_RUN,
  KVM_RUN_OFFSETS,
  KVM_SET_REGS,
  KVM_SET_SREGS,
  kvm_pre_fault_memory,
} from '../core/uapi.js';
import type { Program } from '../core/vcpu/program.js';
import type { VmContext } from './kvm_main.js';
import { checkRunTimeout, runGuard } from './watchdog.js';
import { compileProgram } from './x86/compile.js';

/** sizeof(struct kvm_regs): rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8..r15, rip, rflags. */
export const KVM_REGS_SIZE = 144;
/** sizeof(struct kvm_sregs) on x86-64. */
export const KVM_SREGS_SIZE = 312;
const REG_NAMES = [
  'rax',
  'rbx',
  'rcx',
  'rdx',
  'rsi',
  'rdi',
  'rsp',
  'rbp',
  'r8',
  'r9',
  'r10',
  'r11',
  'r12',
  'r13',
  'r14',
  'r15',
  'rip',
  'rflags',
] as const satisfies readonly (keyof Regs)[];

/** Written to kvm_run.exit_reason before KVM_RUN; no exit reason has this value. */
const EXIT_SENTINEL = 0xffff_ffff;
const EXIT_REASON = 8;
const IMMEDIATE_EXIT = 1;
const O = KVM_RUN_OFFSETS;

const hex = (n: number): string => `0x${n.toString(16)}`;

/** Something that can run KVM_RUN for this vCPU elsewhere (a worker thread), see vcpu_worker.ts. */
export interface RunnerHandle {
  /** True while the other thread is inside (or about to enter) KVM_RUN. */
  busy(): boolean;
  /** Interrupts the run and waits (synchronously) until the other thread has left KVM_RUN. */
  stopSync(): void;
}

/** Unmaps a vCPU's tombstone once the views over it are garbage. */
const tombstones = new FinalizationRegistry<() => void>((unmap) => unmap());

/** A real vCPU; see the file comment. */
export class RealVcpu implements Vcpu {
  readonly kvmRun: KvmRunShared;
  private open = true;
  private readonly run8: Uint8Array;
  private readonly runDv: DataView;
  private readonly regsBuf = new Uint8Array(KVM_REGS_SIZE);
  private readonly regsDv = new DataView(this.regsBuf.buffer);
  private staleExit = 0;
  private runner: RunnerHandle | null = null;
  private timeoutMs: number;

  constructor(
    private readonly vm: VmContext,
    readonly fd: number,
    readonly id: number,
    /** Address of the vCPU's mmap (kvm_run, PIO page, coalesced-MMIO ring). */
    readonly runAddr: number,
    readonly runSize: number,
  ) {
    this.timeoutMs = vm.host.runTimeoutMs;
    const ab = vm.host.space.internalView(runAddr);
    this.run8 = new Uint8Array(ab);
    this.runDv = new DataView(ab);
    this.staleExit = this.runDv.getUint32(EXIT_REASON, true);
    const run8 = this.run8;
    const dv = this.runDv;
    const ioData = (): Uint8Array => {
      const off = Number(dv.getBigUint64(O.io.dataOffset, true));
      return run8.subarray(off > 0 && off < run8.byteLength ? off : 4096);
    };
    this.kvmRun = {
      get immediateExit(): number {
        return run8[IMMEDIATE_EXIT] ?? 0;
      },
      set immediateExit(v: number) {
        run8[IMMEDIATE_EXIT] = v;
      },
      mmio: { data: run8.subarray(O.mmio.data, O.mmio.data + 8) },
      io: {
        get data(): Uint8Array {
          return ioData();
        },
      },
      hypercall: {
        get ret(): number {
          return Number(dv.getBigUint64(O.hypercall.ret, true));
        },
        set ret(v: number) {
          dv.setBigUint64(O.hypercall.ret, BigInt.asUintN(64, BigInt(v)), true);
        },
      },
    };
    const space = vm.host.space;
    tombstones.register(ab, () => space.unmapInternal(runAddr), this);
  }

  private live(call: string): void {
    if (!this.open) throw new KvmError('EBADF', `vcpu ${this.id} (fd ${this.fd}) is closed`, { call });
    if (this.runner?.busy() === true) {
      throw new KvmError(
        'EBUSY',
        `vcpu ${this.id} is inside KVM_RUN in a worker thread; kick it and wait for the run to end first ` +
          '(a vCPU ioctl here would block this thread until the guest exits)',
        { call },
      );
    }
  }

  /** True until `close()`. */
  get isOpen(): boolean {
    return this.open;
  }

  /**
   * The most a KVM_RUN of this vCPU may block its thread, in ms, before the run watchdog kicks it
   * (see the file comment). A positive number up to 2^29, or `Infinity` for no watchdog; the
   * default is the host's `runTimeoutMs`. Read at the start of each run.
   */
  get runTimeoutMs(): number {
    return this.timeoutMs;
  }
  set runTimeoutMs(ms: number) {
    this.timeoutMs = checkRunTimeout(ms, 'runTimeoutMs');
  }

  /** Attaches (or detaches, with null) the worker that runs this vCPU; one at a time. Internal. */
  setRunner(r: RunnerHandle | null): void {
    if (r !== null && this.runner !== null) {
      throw new KvmError('EBUSY', `vcpu ${this.id} already has a worker; stop it first`, {
        call: 'startVcpuWorker',
      });
    }
    this.runner = r;
  }

  /** Prepares kvm_run for a KVM_RUN issued here or by a worker (RUN-3 sentinel). Internal. */
  beginRun(call = 'KVM_RUN'): void {
    this.live(call);
    this.staleExit = this.runDv.getUint32(EXIT_REASON, true);
    this.runDv.setUint32(EXIT_REASON, EXIT_SENTINEL, true);
  }

  /**
   * Decodes what KVM_RUN left: `r` is its return value, or -errno; `watchdogFired` says the run
   * watchdog signalled the thread during the run (an EINTR result then carries `watchdog: true`).
   * Internal.
   */
  finishRun(r: number, watchdogFired = false): RunResult {
    const dv = this.runDv;
    const written = dv.getUint32(EXIT_REASON, true) !== EXIT_SENTINEL;
    if (!written) dv.setUint32(EXIT_REASON, this.staleExit, true);
    const exitReason = dv.getUint32(EXIT_REASON, true);
    const exitReasonName = EXIT_REASON_NAMES[exitReason] ?? `KVM_EXIT_${exitReason}`;
    if (r < 0) {
      const errno = errnoName(-r);
      if (written && exitReason === KVM_EXIT_MEMORY_FAULT) {
        return {
          ret: -1,
          errno,
          exitReason,
          exitReasonName,
          memoryFaultValid: true,
          memoryFault: this.memoryFault(),
        };
      }
      if (watchdogFired && errno === 'EINTR') {
        return { ret: -1, errno, exitReason, exitReasonName, memoryFaultValid: false, watchdog: true };
      }
      return { ret: -1, errno, exitReason, exitReasonName, memoryFaultValid: false };
    }
    switch (exitReason) {
      case KVM_EXIT_IO:
        return { ret: 0, exitReason, exitReasonName, io: this.io() };
      case KVM_EXIT_MMIO:
        return { ret: 0, exitReason, exitReasonName, mmio: this.mmio() };
      case KVM_EXIT_HYPERCALL:
        return { ret: 0, exitReason, exitReasonName, hypercall: this.hypercall() };
      case KVM_EXIT_INTERNAL_ERROR:
        return { ret: 0, exitReason, exitReasonName, internal: this.internal() };
      case KVM_EXIT_MEMORY_FAULT:
        return {
          ret: 0,
          exitReason,
          exitReasonName,
          memoryFaultValid: true,
          memoryFault: this.memoryFault(),
        };
      default:
        return { ret: 0, exitReason, exitReasonName };
    }
  }

  private u64(off: number): number {
    return Number(this.runDv.getBigUint64(off, true));
  }

  private io(): IoExit {
    const dv = this.runDv;
    const size = dv.getUint8(O.io.size);
    const count = dv.getUint32(O.io.count, true);
    const off = this.u64(O.io.dataOffset);
    const len = Math.min(size * count, Math.max(0, this.run8.byteLength - off));
    return {
      direction: dv.getUint8(O.io.direction) === 0 ? 0 : 1,
      size: size === 1 || size === 2 ? size : 4,
      port: dv.getUint16(O.io.port, true),
      count,
      data: this.run8.slice(off, off + len),
    };
  }

  private mmio(): MmioExit {
    return {
      physAddr: this.u64(O.mmio.physAddr),
      data: this.run8.slice(O.mmio.data, O.mmio.data + 8),
      len: this.runDv.getUint32(O.mmio.len, true),
      isWrite: this.runDv.getUint8(O.mmio.isWrite) !== 0,
    };
  }

  private hypercall(): HypercallExit {
    const args: number[] = [];
    for (let i = 0; i < 6; i++) args.push(this.u64(O.hypercall.args + 8 * i));
    return { nr: this.u64(O.hypercall.nr), args, flags: this.u64(O.hypercall.flags) };
  }

  private memoryFault(): MemoryFaultExit {
    const f = O.memoryFault;
    return { flags: this.u64(f.flags), gpa: this.u64(f.gpa), size: this.u64(f.size) };
  }

  private internal(): InternalErrorExit {
    const ndata = Math.min(16, this.runDv.getUint32(O.internal.ndata, true));
    const data: number[] = [];
    for (let i = 0; i < ndata; i++) data.push(this.u64(O.internal.data + 8 * i));
    return { suberror: this.runDv.getUint32(O.internal.suberror, true), data };
  }

  run(): RunResult {
    this.beginRun();
    const sys = this.vm.host.sys;
    const budget = this.timeoutMs;
    const guard = budget === Number.POSITIVE_INFINITY ? null : runGuard();
    if (guard === null) return this.finishRun(sys.ioctlErrno(this.fd, KVM_RUN, 0));
    guard.arm(budget);
    const r = sys.ioctlErrno(this.fd, KVM_RUN, 0); // errno is read inside, before disarm
    return this.finishRun(r, guard.disarm());
  }

  getRegs(): Regs {
    this.live('KVM_GET_REGS');
    this.vm.host.sys.ioctl(this.fd, KVM_GET_REGS, this.regsBuf, 'KVM_GET_REGS');
    const r: Partial<Record<keyof Regs, bigint>> = {};
    REG_NAMES.forEach((name, i) => {
      r[name] = this.regsDv.getBigUint64(8 * i, true);
    });
    return r as Regs; // every field was set by the loop above
  }

  setRegs(regs: Partial<Regs>): 0 {
    const merged = { ...this.getRegs(), ...regs };
    REG_NAMES.forEach((name, i) => {
      this.regsDv.setBigUint64(8 * i, BigInt.asUintN(64, merged[name]), true);
    });
    this.vm.host.sys.ioctl(this.fd, KVM_SET_REGS, this.regsBuf, 'KVM_SET_REGS');
    return 0;
  }

  /** KVM_GET_SREGS: the raw 312-byte struct kvm_sregs. */
  getSregs(): Uint8Array {
    this.live('KVM_GET_SREGS');
    const buf = new Uint8Array(KVM_SREGS_SIZE);
    this.vm.host.sys.ioctl(this.fd, KVM_GET_SREGS, buf, 'KVM_GET_SREGS');
    return buf;
  }

  /** KVM_SET_SREGS from a raw 312-byte struct kvm_sregs. */
  setSregs(sregs: Uint8Array): 0 {
    this.live('KVM_SET_SREGS');
    if (sregs.byteLength !== KVM_SREGS_SIZE) {
      throw new KvmError('EFAULT', `kvm_sregs is ${KVM_SREGS_SIZE} bytes, got ${sregs.byteLength}`, {
        call: 'KVM_SET_SREGS',
      });
    }
    this.vm.host.sys.ioctl(this.fd, KVM_SET_SREGS, sregs, 'KVM_SET_SREGS');
    return 0;
  }

  preFaultMemory(range: PreFaultMemory): 0 {
    const call = 'KVM_PRE_FAULT_MEMORY';
    this.live(call);
    const buf = encodeStruct(kvm_pre_fault_memory, {
      gpa: range.gpa,
      size: range.size,
      flags: range.flags ?? 0,
    });
    const detail = () => `gpa ${hex(range.gpa)}, size ${range.size}, flags ${range.flags ?? 0}`;
    try {
      this.vm.host.sys.ioctl(this.fd, KVM_PRE_FAULT_MEMORY, buf, call, detail);
    } catch (e) {
      if (e instanceof KvmError && this.preFaultCap() === 0) {
        throw new KvmError(e.code, `${e.detail}; KVM_CAP_PRE_FAULT_MEMORY is 0 on this VM (no TDP)`, {
          call,
        });
      }
      throw e;
    } finally {
      // The kernel copies the struct back in all cases (PF-5).
      const out = decodeStruct(kvm_pre_fault_memory, buf);
      range.gpa = Number(out['gpa']);
      range.size = Number(out['size']);
    }
    return 0;
  }

  /** KVM_CAP_PRE_FAULT_MEMORY of the VM, or -1 if it cannot be asked (VM fd closed). */
  private preFaultCap(): number {
    try {
      return this.vm.checkExtension(KVM_CAP_PRE_FAULT_MEMORY);
    } catch {
      return -1;
    }
  }

  /**
   * Compiles `program` (x86/compile.ts), writes its code and identity-mapping page tables into
   * guest memory through the memslots' userspace_addr, switches the vCPU to 64-bit long mode
   * (KVM_GET_SREGS → patch → KVM_SET_SREGS) and points rip/rflags/rsp at it (KVM_SET_REGS).
   * Throws KvmError EFAULT naming the gpa if no memslot covers a byte of the image.
   */
  setProgram(program: Program, layout: ProgramLayout = DEFAULT_PROGRAM_LAYOUT): void {
    this.live('setProgram');
    const image = compileProgram(program, layout);
    this.vm.writeGuest(layout.pageTableGpa, image.pageTables, 'setProgram');
    this.vm.writeGuest(layout.codeGpa, image.code, 'setProgram');
    const sregs = this.getSregs();
    image.patchSregs(sregs);
    this.setSregs(sregs);
    this.setRegs({ rip: image.regs.rip, rflags: image.regs.rflags, rsp: image.regs.rsp });
  }

  /**
   * Closes the vCPU in the kernel's order: stop a worker run, replace the kvm_run mapping by a
   * tombstone (dropping the mapping's reference on the vCPU file), then close the fd.
   */
  close(): 0 {
    if (!this.open)
      throw new KvmError('EBADF', `vcpu ${this.id} (fd ${this.fd}) is already closed`, { call: 'close' });
    if (this.runner?.busy() === true) this.runner.stopSync();
    this.open = false;
    const host = this.vm.host;
    host.space.tombstone(this.runAddr);
    host.sys.close(this.fd);
    host.forgetFd(this.fd);
    this.vm.vcpuClosed(this);
    return 0;
  }
}
