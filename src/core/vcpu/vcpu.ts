/**
 * A vCPU and KVM_RUN (virt/kvm/kvm_main.c kvm_vcpu_ioctl, arch/x86/kvm/x86.c vcpu_run): the
 * kvm_run record, exits and their completion on re-entry, and the guest itself — a guest program
 * (architecture §5) run by an interpreter whose memory accesses go through the MMU.
 *
 * The guest access path: a direct-mapped software TLB (1024 entries, tagged by gfn; emptied
 * whenever the TDP MMU's generation, which every zap or write-protect bumps, has moved since it
 * was filled) answers most accesses with one compare and one typed-array access; a miss walks the
 * SPTEs and refills the entry (the JIT does this without leaving compiled code, jit.ts); a missing
 * or insufficient SPTE is a page fault (mmu.ts), after which the access is retried. Bulk
 * accesses (rep stosb / rep movsb) go a run of contiguous frames at a time. An access that the fault handler sends to
 * emulation — no memslot (RO-2) or a write to a READONLY slot (RO-1) — exits to userspace as
 * KVM_EXIT_MMIO, split at page boundaries into fragments of their own (RO-2).
 *
 * Exits complete on re-entry (RO-3): the instruction that exited is executed again, and the
 * fragments already completed (MMIO data userspace supplied, MMIO writes userspace saw) are
 * consumed from a per-instruction cache instead of exiting again — the role of the kernel
 * emulator's read cache and mmio_fragments.
 */

import type {
  KvmRunShared,
  PreFaultMemory,
  ProgramLayout,
  Regs,
  RunResult,
  Vcpu as VcpuApi,
} from '../api.js';
import { DEFAULT_PROGRAM_LAYOUT } from '../api.js';
import { ERRNO, type ErrnoName, errnoName, fail, kvmWarn } from '../errno.js';
import type { KvmVm } from '../kvm/kvm_main.js';
import { File, FMODE_READ, FMODE_WRITE, newIno } from '../mm/file.js';
import {
  type KvmPageFault,
  kvmTdpPageFault,
  newFault,
  RET_PF_EMULATE,
  RET_PF_FIXED,
  RET_PF_RETRY,
} from '../mmu/mmu.js';
import { SPTE_MMIO, SPTE_PRESENT, SPTE_WRITABLE } from '../mmu/spte.js';
import type { TdpMmu } from '../mmu/tdp_mmu.js';
import { hypercallArgs, pageFaultArgs, tpKvmHypercall, tpKvmPageFault } from '../tracepoints.js';
import {
  EXIT_REASON_NAMES,
  KVM_EINVAL,
  KVM_ENOSYS,
  KVM_EXIT_HLT,
  KVM_EXIT_HYPERCALL,
  KVM_EXIT_HYPERCALL_LONG_MODE,
  KVM_EXIT_INTERNAL_ERROR,
  KVM_EXIT_INTR,
  KVM_EXIT_IO,
  KVM_EXIT_IO_OUT,
  KVM_EXIT_MEMORY_FAULT,
  KVM_EXIT_MMIO,
  KVM_EXIT_UNKNOWN,
  KVM_HC_MAP_GPA_RANGE,
  KVM_INTERNAL_ERROR_EMULATION,
  KVM_MEMORY_EXIT_FLAG_PRIVATE,
} from '../uapi.js';
import type { Pfn } from '../units.js';
import {
  type Insn,
  K_ADD,
  K_ADDREG,
  K_CMP,
  K_COPY,
  K_END,
  K_FILL,
  K_HALT,
  K_HYPERCALL,
  K_LOAD,
  K_LOOP_END,
  K_LOOP_INIT,
  K_MOV,
  K_OUT,
  K_STORE,
  K_STOREIMM,
  lower,
  REG_NAMES,
  REG_RAX,
  REG_RBX,
  REPORT_PORT,
} from './insn.js';
import { compileJit, JIT_KICK, type JitFunction } from './jit.js';
import type { Program } from './program.js';

const PAGE = 4096;
const TLB_SIZE = 1024;
const TLB_MASK = TLB_SIZE - 1;
const TWO32 = 4294967296;
const TWO53 = 2 ** 53;

/** gpa's offset in its page; a negative gpa (≥ 2^63 as a u64, see `ea`) counts from its page's start too. */
const pageOffset = (gpa: number): number => gpa - Math.floor(gpa / PAGE) * PAGE;
/** What an empty TLB entry points at (no frame). */
const NO_DATA = new Uint8Array(0);
const NO_VIEW = new DataView(NO_DATA.buffer);
/** Consecutive RET_PF_RETRYs of one access before the model calls it a livelock. */
const MAX_RETRIES = 10_000;

// Access outcomes.
const OK = 0;
const EXIT = 1;
const RETRY = 2;
const ERROR = 3;

/** A completed MMIO fragment of the current instruction (read data or a write userspace saw). */
interface Fragment {
  gpa: number;
  len: number;
  isWrite: boolean;
  /** For reads: the data userspace supplied. */
  data: Uint8Array;
}

/** The exit being reported (what kvm_run holds). */
interface ExitState {
  reason: number;
  mmio: { physAddr: number; data: Uint8Array; len: number; isWrite: boolean } | null;
  io: { direction: 0 | 1; size: 1 | 2 | 4; port: number; count: number; data: Uint8Array } | null;
  hypercall: { nr: number; args: number[]; flags: number } | null;
  memoryFault: { flags: number; gpa: number; size: number } | null;
  internal: { suberror: number; data: number[] } | null;
}

function emptyExit(): ExitState {
  return {
    reason: KVM_EXIT_UNKNOWN,
    mmio: null,
    io: null,
    hypercall: null,
    memoryFault: null,
    internal: null,
  };
}

export class KvmVcpu implements VcpuApi {
  readonly kvmRun: KvmRunShared = {
    immediateExit: 0,
    mmio: { data: new Uint8Array(8) },
    io: { data: new Uint8Array(8) },
    hypercall: { ret: 0 },
  };
  /** General-purpose registers as u32 halves (insn.ts). */
  readonly regs = new Uint32Array(32);
  rip = 0;
  rflags = 2;
  private code: Insn[] = lower({ ops: [] });
  pc = 0;
  private layout: ProgramLayout = DEFAULT_PROGRAM_LAYOUT;
  /** Memslot generation at which the code page was last found fetchable. */
  /** Memslot generation at which the code page was last found fetchable (read by the JIT). */
  fetchGen = -1;
  /** Whether run() uses the JIT (jit.ts); the interpreter is the reference and the fallback. */
  useJit = true;
  private jitFn: JitFunction | null = null;
  private jitTried = false;
  /** Instructions left in the current KVM_RUN (shared by the JIT and the interpreter). */
  budgetLeft = 0;

  // Exit bookkeeping
  private exit: ExitState = emptyExit();
  /** The exit that the next KVM_RUN completes. */
  private pendingExit: 'mmio-read' | 'mmio-write' | 'io' | 'hypercall' | null = null;
  /** The gpa of the pending MMIO exit in the model's form (`ea`), which phys_addr may round. */
  private pendingGpa = 0;
  private fragments: Fragment[] = [];
  /** Progress of a rep string operation (bytes done). */
  private repDone = 0;
  private runErrno = 0;
  private signal: KvmPageFault['signal'] = null;
  private lastFault: KvmPageFault | null = null;
  private retries = 0;
  /** Instructions a KVM_RUN may execute before the model delivers a kick (KVM_EXIT_INTR). */
  budget = 1e9;
  /** The pending kick: the next KVM_RUN returns EINTR right away (like a signal). */
  private kicked = false;

  // Software TLB (read by the JIT, jit.ts). Entry t = gfn & TLB_MASK holds gfn in `tlbRead[t]`,
  // and in `tlbWrite[t]` too when the SPTE is writable; NaN is empty (it equals no gfn). Every
  // entry was filled under the TDP MMU generation `tlbEpoch`: whoever consults the TLB first
  // calls `syncTlb`, which empties it when the generation moved (a zap, a write-protect for
  // dirty logging, an attribute change), so a tag compare alone decides a hit.
  readonly tlbRead = new Float64Array(TLB_SIZE).fill(Number.NaN);
  readonly tlbWrite = new Float64Array(TLB_SIZE).fill(Number.NaN);
  /** Byte offset of the frame's data in its section buffer (`tlbData[t]`, `tlbView[t]`). */
  readonly tlbOff = new Int32Array(TLB_SIZE);
  private readonly tlbData: Uint8Array[] = new Array<Uint8Array>(TLB_SIZE).fill(NO_DATA);
  /** Always a DataView (never null), so the JIT's element loads stay monomorphic. */
  readonly tlbView: DataView[] = new Array<DataView>(TLB_SIZE).fill(NO_VIEW);
  private tlbEpoch = -1;
  /**
   * Per-vCPU last-used slot (kvm_vcpu_gfn_to_memslot's cache), tagged with the memslot
   * generation, and its range [lastSlotBase, lastSlotEnd) by value so a hit reads no slot.
   */
  private lastSlot: import('../kvm/memslot.js').KvmMemorySlot | null = null;
  private lastSlotBase = 0;
  private lastSlotEnd = 0;
  private lastSlotGen = -1;
  private closed = false;

  readonly stats = { instructions: 0, tlbHits: 0, tlbMisses: 0, faults: 0, exits: new Map<string, number>() };

  constructor(
    readonly vm: KvmVm,
    readonly id: number,
    readonly fd: number,
    private readonly file: File<KvmVcpu>,
  ) {}

  private check(call: string): void {
    if (this.vm.kernel.fds.lookup(this.fd) !== this.file)
      fail('EBADF', `fd ${this.fd} is not this vCPU any more`, call);
    this.vm.checkAlive(call);
  }

  // ---- registers ----------------------------------------------------------------------------

  private regVal(r: number): number {
    return (this.regs[2 * r + 1] as number) * TWO32 + (this.regs[2 * r] as number);
  }
  /**
   * The effective address base + disp of an access as the CPU forms it: a u64, the sum modulo
   * 2^64. The model holds a gpa as a number: the u64 itself below 2^63, u64 − 2^64 (negative)
   * from 2^63 up. Addresses within 2^53 of 0 or of 2^64 are thus exact — `disp` −16 off a zero
   * base is the gpa 2^64 − 16, as (u64)−16 is — and only those in between, above any
   * MAXPHYADDR, are rounded to a double. The fast paths add `regVal` and disp directly, which is
   * the same for every address a TLB entry can hold; the slow paths take this.
   */
  private ea(base: number, disp: number): number {
    const v = base < 0 ? disp : this.regVal(base) + disp;
    if (v > -TWO53 && v < TWO53 && (base < 0 || (this.regs[2 * base + 1] as number) < TWO53 / TWO32))
      return v;
    return Number(BigInt.asIntN(64, (base < 0 ? 0n : this.regBig(base)) + BigInt(disp)));
  }
  private setReg(r: number, lo: number, hi: number): void {
    this.regs[2 * r] = lo;
    this.regs[2 * r + 1] = hi;
  }
  private regBig(r: number): bigint {
    return (BigInt(this.regs[2 * r + 1] as number) << 32n) | BigInt(this.regs[2 * r] as number);
  }
  private setRegBig(r: number, v: bigint): void {
    const u = BigInt.asUintN(64, v);
    this.setReg(r, Number(u & 0xffffffffn), Number(u >> 32n));
  }

  getRegs(): Regs {
    this.check('KVM_GET_REGS');
    const out: Record<string, bigint> = {};
    REG_NAMES.forEach((n, i) => {
      out[n] = this.regBig(i);
    });
    out['rip'] = BigInt(this.layout.codeGpa + 16 * this.pc);
    out['rflags'] = BigInt(this.rflags);
    return out as unknown as Regs;
  }

  setRegs(regs: Partial<Regs>): 0 {
    this.check('KVM_SET_REGS');
    REG_NAMES.forEach((n, i) => {
      const v = regs[n];
      if (v !== undefined) this.setRegBig(i, v);
    });
    if (regs.rflags !== undefined) this.rflags = Number(regs.rflags & 0xffffffffn);
    if (regs.rip !== undefined) {
      const idx = (Number(regs.rip) - this.layout.codeGpa) / 16;
      if (!Number.isInteger(idx) || idx < 0 || idx >= this.code.length) {
        fail('EINVAL', `rip ${regs.rip} is not an instruction of the loaded program`, 'KVM_SET_REGS');
      }
      this.pc = idx;
    }
    return 0;
  }

  setProgram(program: Program, layout: ProgramLayout = DEFAULT_PROGRAM_LAYOUT): void {
    this.check('setProgram');
    this.code = lower(program);
    this.layout = layout;
    this.pc = 0;
    this.pendingExit = null;
    this.fragments = [];
    this.repDone = 0;
    this.fetchGen = -1;
    this.jitFn = null;
    this.jitTried = false;
  }

  /** The model's stand-in for a signal at the vCPU thread: the next KVM_RUN returns EINTR. */
  kick(): void {
    this.kicked = true;
  }

  // ---- KVM_RUN ------------------------------------------------------------------------------

  run(): RunResult {
    this.check('KVM_RUN');
    this.runErrno = 0;
    this.signal = null;
    this.exit.memoryFault = null;
    let memoryFaultValid = false;
    // RO-3, HC-4: complete the exit userspace just handled (complete_userspace_io). Completing an
    // MMIO access re-executes its instruction, which may exit again for its next fragment —
    // before immediate_exit is looked at, as in the kernel.
    let r = OK;
    if (this.pendingExit !== null) r = this.completePending();
    if (r === OK && (this.kvmRun.immediateExit !== 0 || this.kicked)) {
      this.kicked = false;
      return this.result(-1, 'EINTR', KVM_EXIT_INTR);
    }
    if (r === OK) r = this.useJit ? this.executeJit() : this.execute(false);
    if (r === ERROR) {
      const f = this.lastFault;
      if (f && f.memoryFaultErrno !== 0) {
        // RUN-1: a failing KVM_RUN with the memory-fault record.
        this.exit = emptyExit();
        this.exit.reason = KVM_EXIT_MEMORY_FAULT;
        this.exit.memoryFault = {
          flags: f.isPrivate ? KVM_MEMORY_EXIT_FLAG_PRIVATE : 0,
          gpa: f.gfn * PAGE,
          size: PAGE,
        };
        memoryFaultValid = true;
        return this.result(
          -1,
          errnoName(f.memoryFaultErrno) as ErrnoName,
          KVM_EXIT_MEMORY_FAULT,
          memoryFaultValid,
        );
      }
      if (this.signal || this.runErrno === ERRNO.EINTR) {
        return this.result(-1, 'EINTR', KVM_EXIT_INTR);
      }
      // RUN-3: EFAULT without a record; exit_reason keeps whatever it held before.
      return this.result(-1, errnoName(this.runErrno) as ErrnoName, this.exit.reason);
    }
    return this.result(0, undefined, this.exit.reason);
  }

  private result(ret: 0 | -1, errno: ErrnoName | undefined, reason: number, mfValid = false): RunResult {
    this.exit.reason = reason;
    const name = EXIT_REASON_NAMES[reason] ?? `KVM_EXIT_${reason}`;
    this.stats.exits.set(name, (this.stats.exits.get(name) ?? 0) + 1);
    const e = this.exit;
    const out: {
      -readonly [K in keyof RunResult]: RunResult[K];
    } = { ret, exitReason: reason, exitReasonName: name };
    if (errno !== undefined) out.errno = errno;
    if (mfValid) out.memoryFaultValid = true;
    if (reason === KVM_EXIT_MMIO && e.mmio) out.mmio = { ...e.mmio, data: e.mmio.data.slice() };
    if (reason === KVM_EXIT_IO && e.io) out.io = { ...e.io, data: e.io.data.slice() };
    if (reason === KVM_EXIT_HYPERCALL && e.hypercall)
      out.hypercall = { ...e.hypercall, args: [...e.hypercall.args] };
    if (reason === KVM_EXIT_MEMORY_FAULT && e.memoryFault) out.memoryFault = { ...e.memoryFault };
    if (reason === KVM_EXIT_INTERNAL_ERROR && e.internal)
      out.internal = { ...e.internal, data: [...e.internal.data] };
    if (this.signal) (out as { signal?: unknown }).signal = { ...this.signal };
    return out;
  }

  private completePending(): number {
    const p = this.pendingExit;
    this.pendingExit = null;
    if (p === 'mmio-read' || p === 'mmio-write') {
      const m = this.exit.mmio as NonNullable<ExitState['mmio']>; // set with the pending exit
      this.fragments.push({
        gpa: this.pendingGpa,
        len: m.len,
        isWrite: m.isWrite,
        data: this.kvmRun.mmio.data.slice(0, m.len),
      });
      return this.execute(true);
    }
    if (p === 'hypercall') {
      const insn = this.code[this.pc] as Insn;
      // HC-4: hypercall.ret becomes RAX (64-bit guest), RIP moves past the VMCALL.
      this.setRegBig(REG_RAX, BigInt(this.kvmRun.hypercall.ret));
      this.setReg(insn.dst, this.regs[0] as number, this.regs[1] as number);
      this.retire();
    } else if (p === 'io') {
      // complete_fast_pio_out: the OUT retires on re-entry.
      this.retire();
    }
    return OK;
  }

  private retire(): void {
    this.pc++;
    this.fragments = [];
    this.repDone = 0;
    this.retries = 0;
  }

  // ---- the interpreter --------------------------------------------------------------------

  /** Runs compiled code, stepping the interpreter wherever the JIT hands over (jit.ts). */
  private executeJit(): number {
    if (!this.jitTried) {
      this.jitTried = true;
      this.jitFn = compileJit(this.code, this);
    }
    const jit = this.jitFn;
    if (!jit) return this.execute(false);
    this.budgetLeft = this.budget;
    for (;;) {
      if (this.fetchGen !== (this.vm.memslots[0]?.generation ?? 0)) {
        // The code page must be fetchable before compiled code runs (checkFetch, interpreter).
        const s = this.execute(true);
        if (s !== OK) return s;
        continue;
      }
      // Compiled code neither re-checks the generation nor can move it (jit.ts).
      this.syncTlb(this.vm.mmu[0] as TdpMmu);
      const r = jit();
      if (r === JIT_KICK) return this.kickExit();
      // JIT_STEP: one instruction through the interpreter, then back to compiled code.
      const s = this.execute(true);
      if (s !== OK) return s;
      if (--this.budgetLeft <= 0) return this.kickExit();
    }
  }

  /**
   * Runs until an exit (EXIT) or an error (ERROR); with `one`, returns OK after the current
   * instruction retires (completing an exit).
   */
  private execute(one: boolean): number {
    const code = this.code;
    const regs = this.regs;
    const mmu = this.vm.mmu[0] as TdpMmu;
    let budget = this.budget;
    for (;;) {
      if (this.fetchGen !== (this.vm.memslots[0]?.generation ?? 0)) {
        const f = this.checkFetch();
        if (f !== OK) {
          if (f === RETRY) {
            if (--budget <= 0) return this.kickExit();
            continue;
          }
          return f;
        }
      }
      const insn = code[this.pc] as Insn;
      this.stats.instructions++;
      if (--budget <= 0) return this.kickExit();
      let r = OK;
      switch (insn.k) {
        case K_MOV:
          regs[2 * insn.dst] = insn.immLo;
          regs[2 * insn.dst + 1] = insn.immHi;
          break;
        case K_ADD:
        case K_ADDREG: {
          const lo =
            (regs[2 * insn.dst] as number) + (insn.k === K_ADD ? insn.immLo : (regs[2 * insn.src] as number));
          const hi =
            (regs[2 * insn.dst + 1] as number) +
            (insn.k === K_ADD ? insn.immHi : (regs[2 * insn.src + 1] as number)) +
            (lo >= TWO32 ? 1 : 0);
          regs[2 * insn.dst] = lo >>> 0;
          regs[2 * insn.dst + 1] = hi >>> 0;
          break;
        }
        case K_LOAD: {
          const gpa = insn.base < 0 ? insn.disp : this.regVal(insn.base) + insn.disp;
          // The fast path: an aligned-enough access that hits the TLB.
          const gfn = Math.floor(gpa / PAGE);
          const t = gfn & TLB_MASK;
          const inPage = gpa - gfn * PAGE;
          if (inPage + insn.size <= PAGE) {
            this.syncTlb(mmu);
            if (this.tlbRead[t] === gfn || this.tlbRefill(gfn, false)) {
              readValue(
                regs,
                2 * insn.dst,
                this.tlbView[t] as DataView,
                (this.tlbOff[t] as number) + inPage,
                insn.size,
              );
              this.stats.tlbHits++;
              break;
            }
            const a = this.ea(insn.base, insn.disp);
            r = this.slowRead(a, insn.size, insn.dst, a === gpa);
            break;
          }
          r = this.slowRead(this.ea(insn.base, insn.disp), insn.size, insn.dst);
          break;
        }
        case K_STORE:
        case K_STOREIMM: {
          const gpa = insn.base < 0 ? insn.disp : this.regVal(insn.base) + insn.disp;
          const lo = insn.k === K_STORE ? (regs[2 * insn.src] as number) : insn.immLo;
          const hi = insn.k === K_STORE ? (regs[2 * insn.src + 1] as number) : insn.immHi;
          const gfn = Math.floor(gpa / PAGE);
          const t = gfn & TLB_MASK;
          const inPage = gpa - gfn * PAGE;
          if (inPage + insn.size <= PAGE) {
            this.syncTlb(mmu);
            if (this.tlbWrite[t] === gfn || this.tlbRefill(gfn, true)) {
              writeValue(this.tlbView[t] as DataView, (this.tlbOff[t] as number) + inPage, insn.size, lo, hi);
              this.stats.tlbHits++;
              break;
            }
            const a = this.ea(insn.base, insn.disp);
            r = this.slowWrite(a, insn.size, lo, hi, a === gpa);
            break;
          }
          r = this.slowWrite(this.ea(insn.base, insn.disp), insn.size, lo, hi);
          break;
        }
        case K_FILL:
          r = this.repFill(insn);
          break;
        case K_COPY:
          r = this.repCopy(insn);
          break;
        case K_CMP: {
          r = this.slowRead(this.ea(insn.base, insn.disp), insn.size, REG_RBX);
          if (r === OK && (regs[2 * REG_RBX] !== insn.immLo || regs[2 * REG_RBX + 1] !== maskHi(insn))) {
            return this.ioExit(REPORT_PORT, insn.tag);
          }
          break;
        }
        case K_LOOP_INIT:
          regs[2 * insn.dst] = insn.count >>> 0;
          regs[2 * insn.dst + 1] = Math.floor(insn.count / TWO32);
          break;
        case K_LOOP_END: {
          // dec counter; jnz top
          let lo = regs[2 * insn.dst] as number;
          let hi = regs[2 * insn.dst + 1] as number;
          if (lo === 0) {
            lo = 0xffffffff;
            hi = (hi - 1) >>> 0;
          } else lo--;
          regs[2 * insn.dst] = lo;
          regs[2 * insn.dst + 1] = hi;
          if (lo !== 0 || hi !== 0) {
            this.pc = insn.target;
            continue;
          }
          break;
        }
        case K_OUT:
          return this.ioExit(insn.port, insn.tag);
        case K_HYPERCALL:
          r = this.hypercall(insn);
          break;
        case K_HALT:
        case K_END:
          // kvm_emulate_halt skips the HLT before exiting: RIP is past it at KVM_EXIT_HLT. Past
          // the end of the program the vCPU halts again at every entry.
          this.exit = emptyExit();
          this.exit.reason = KVM_EXIT_HLT;
          if (insn.k === K_HALT) this.retire();
          return EXIT;
      }
      if (r === OK) {
        this.pc++;
        if (this.fragments.length > 0 || this.repDone !== 0) {
          this.fragments = [];
          this.repDone = 0;
        }
        this.retries = 0;
        if (one) return OK;
        continue;
      }
      if (r === RETRY) {
        if (this.signal) {
          this.runErrno = ERRNO.EINTR;
          return ERROR;
        }
        if (++this.retries > MAX_RETRIES) {
          kvmWarn(`vCPU ${this.id}: ${MAX_RETRIES} consecutive fault retries at pc ${this.pc} (livelock)`);
          this.retries = 0;
          return this.kickExit();
        }
        continue;
      }
      return r;
    }
  }

  private kickExit(): number {
    this.runErrno = ERRNO.EINTR;
    return ERROR;
  }

  /** The code page must be reachable (an instruction fetch); otherwise emulation fails. */
  private checkFetch(): number {
    const gpa = this.layout.codeGpa;
    const t = this.translate(gpa, false, true);
    if (t === OK) {
      this.fetchGen = this.vm.memslots[0]?.generation ?? 0;
      return OK;
    }
    if (t === EXIT) {
      // Fetching from MMIO: the emulator cannot decode the instruction (set_memory_region_test
      // accepts KVM_EXIT_INTERNAL_ERROR or SHUTDOWN here).
      this.exit = emptyExit();
      this.exit.reason = KVM_EXIT_INTERNAL_ERROR;
      this.exit.internal = { suberror: KVM_INTERNAL_ERROR_EMULATION, data: [] };
      return EXIT;
    }
    return t;
  }

  private ioExit(port: number, value: number): number {
    const data = new Uint8Array(4);
    new DataView(data.buffer).setUint32(0, value >>> 0, true);
    this.exit = emptyExit();
    this.exit.reason = KVM_EXIT_IO;
    this.exit.io = { direction: KVM_EXIT_IO_OUT, size: 4, port, count: 1, data };
    this.kvmRun.io.data.set(data);
    this.pendingExit = 'io';
    return EXIT;
  }

  private hypercall(insn: Insn): number {
    const arg = (i: number): bigint => {
      const a = insn.args[i] as NonNullable<Insn['args'][number]>;
      return a.reg >= 0 ? this.regBig(a.reg) : (BigInt(a.hi) << 32n) | BigInt(a.lo);
    };
    const nr = insn.nr;
    const a0 = arg(0);
    const a1 = arg(1);
    const a2 = arg(2);
    if (tpKvmHypercall.enabled) tpKvmHypercall.emit(hypercallArgs(this.id, nr, a0, a1, a2));
    const guestRet = (v: bigint): number => {
      this.setRegBig(REG_RAX, v);
      this.setReg(insn.dst, this.regs[0] as number, this.regs[1] as number);
      return OK;
    };
    if (nr !== KVM_HC_MAP_GPA_RANGE) return guestRet(BigInt(-KVM_ENOSYS));
    // HC-3
    if ((this.vm.exitHypercallMask & (1 << KVM_HC_MAP_GPA_RANGE)) === 0) return guestRet(BigInt(-KVM_ENOSYS));
    const gfn = a0 >> 12n;
    if ((a0 & 0xfffn) !== 0n || a1 === 0n || gfn + a1 > 0xffff_ffff_ffff_ffffn >> 12n || gfn + a1 < gfn) {
      return guestRet(BigInt(-KVM_EINVAL));
    }
    this.exit = emptyExit();
    this.exit.reason = KVM_EXIT_HYPERCALL;
    this.exit.hypercall = {
      nr,
      args: [Number(a0), Number(a1), Number(a2), 0, 0, 0],
      flags: KVM_EXIT_HYPERCALL_LONG_MODE,
    };
    this.kvmRun.hypercall.ret = 0;
    this.pendingExit = 'hypercall';
    return EXIT;
  }

  // ---- memory access slow paths -------------------------------------------------------------

  /**
   * Empties the TLB if the TDP MMU's generation moved since it was filled (always true, for use
   * inside a condition). Called before every consultation of the TLB.
   */
  syncTlb(mmu: TdpMmu): true {
    const g = mmu.generation;
    if (g !== this.tlbEpoch) {
      this.tlbRead.fill(Number.NaN);
      this.tlbWrite.fill(Number.NaN);
      this.tlbEpoch = g;
    }
    return true;
  }

  /**
   * The TLB miss path without a fault: fills gfn's entry from a present SPTE, if there is one;
   * whether the entry then allows the access. Changes nothing but the entry (and the frame's
   * dirty-data flag), so compiled code calls it in place. The TLB must be in sync (`syncTlb`).
   */
  tlbRefill(gfn: number, write: boolean): boolean {
    this.stats.tlbMisses++;
    const mmu = this.vm.mmu[0] as TdpMmu;
    const pfn = mmu.lookup(gfn);
    if (pfn < 0) return false;
    const writable = (mmu.lastFlags & SPTE_WRITABLE) !== 0;
    this.tlbFill(gfn, pfn, writable);
    return writable || !write;
  }

  private tlbFill(gfn: number, pfn: number, writable: boolean): number {
    const t = gfn & TLB_MASK;
    const alloc = this.vm.kernel.alloc;
    this.tlbRead[t] = gfn;
    this.tlbWrite[t] = writable ? gfn : Number.NaN;
    this.tlbData[t] = alloc.sectionData(pfn as Pfn);
    this.tlbView[t] = alloc.sectionView(pfn as Pfn);
    this.tlbOff[t] = alloc.dataOffset(pfn as Pfn);
    // The data is going to be written through the TLB: the frame must be zeroed on reuse.
    if (writable) alloc.markDirtyData(pfn as Pfn);
    return t;
  }

  /** `vcpuSlot` as the fault handler's lookup argument (one closure per vCPU, not per fault). */
  private readonly slotLookup = (gfn: number): import('../kvm/memslot.js').KvmMemorySlot | null =>
    this.vcpuSlot(gfn);

  private vcpuSlot(gfn: number): import('../kvm/memslot.js').KvmMemorySlot | null {
    const gen = (this.vm.memslots[0] as import('../kvm/memslot.js').KvmMemslots).generation;
    if (this.lastSlotGen === gen && gfn >= this.lastSlotBase && gfn < this.lastSlotEnd) return this.lastSlot;
    const found = this.vm.gfnToMemslot(gfn, 0);
    this.lastSlot = found;
    this.lastSlotBase = found === null ? 0 : found.baseGfn;
    this.lastSlotEnd = found === null ? 0 : found.baseGfn + found.npages;
    this.lastSlotGen = gen;
    return found;
  }

  /**
   * Makes gfn(gpa) accessible: TLB hit, SPTE walk, or page fault. OK with `this.tlbSlot` set;
   * EXIT when the access must be emulated (the caller builds the MMIO exit); RETRY; ERROR.
   */
  private tlbSlot = 0;
  private translate(gpa: number, write: boolean, fetch = false, probed = false): number {
    const gfn = Math.floor(gpa / PAGE);
    const mmu = this.vm.mmu[0] as TdpMmu;
    if (!probed) {
      // (`probed`: the caller has just found no usable entry and no usable SPTE for gpa.)
      const t = gfn & TLB_MASK;
      this.syncTlb(mmu);
      if ((write ? this.tlbWrite[t] : this.tlbRead[t]) === gfn || this.tlbRefill(gfn, write)) {
        this.tlbSlot = t;
        return OK;
      }
    }
    // tlbRefill's SPTE walk left its findings in lastFlags: no present leaf, or a read-only one.
    if (
      (mmu.lastFlags & SPTE_PRESENT) === 0 &&
      (mmu.lastFlags & SPTE_MMIO) !== 0 &&
      mmu.lastMmioGeneration === (this.vm.memslots[0]?.generation ?? 0) &&
      !(this.vm.hasPrivateMem && this.vm.isPrivateGfn(gfn))
    ) {
      // A cached MMIO SPTE of the current memslot generation: emulate without a page fault.
      return EXIT;
    }
    const fault = newFault(gpa, write, false, 0);
    this.stats.faults++;
    const r = kvmTdpPageFault(this.vm, fault, this.slotLookup);
    if (tpKvmPageFault.enabled) tpKvmPageFault.emit(pageFaultArgs(this.id, gpa, fault, r));
    this.lastFault = fault;
    if (r === RET_PF_FIXED) return this.translate(gpa, write, fetch);
    if (r === RET_PF_RETRY) {
      if (fault.signal) this.signal = fault.signal;
      return RETRY;
    }
    if (r === RET_PF_EMULATE) {
      if (fault.isPrivate) {
        // Row 12: KVM never emulates private accesses.
        fault.memoryFaultErrno = ERRNO.EFAULT;
        return ERROR;
      }
      return EXIT;
    }
    this.runErrno = -r;
    return ERROR;
  }

  /** A completed fragment for [gpa, gpa+len) of the current instruction, if any. */
  private takeFragment(gpa: number, len: number, isWrite: boolean): Fragment | null {
    for (const f of this.fragments) if (f.gpa === gpa && f.len === len && f.isWrite === isWrite) return f;
    return null;
  }

  private mmioExit(gpa: number, len: number, isWrite: boolean, data: Uint8Array): number {
    this.exit = emptyExit();
    this.exit.reason = KVM_EXIT_MMIO;
    const d = new Uint8Array(8);
    if (isWrite) d.set(data.subarray(0, len));
    // kvm_run.mmio.phys_addr is a u64: a negative gpa is 2^64 + gpa (see `ea`), given as a
    // number the way the host binding gives it (Number of the u64: rounded above 2^53).
    const physAddr = gpa < 0 ? Number(BigInt.asUintN(64, BigInt(gpa))) : gpa;
    this.exit.mmio = { physAddr, data: d, len, isWrite };
    this.pendingGpa = gpa;
    this.kvmRun.mmio.data.set(d);
    this.pendingExit = isWrite ? 'mmio-write' : 'mmio-read';
    this.vm.stats.mmioExits++;
    return EXIT;
  }

  /** Reads `size` bytes at gpa into register `dst` (zero-extended), fragment by fragment. */
  private slowRead(gpa: number, size: number, dst: number, probed = false): number {
    const bytes = this.scratch;
    const inPage = pageOffset(gpa);
    if (inPage + size <= PAGE && this.fragments.length === 0) {
      // One page, nothing completed yet: translate (fault) and read in place.
      const r = this.translate(gpa, false, false, probed);
      if (r === EXIT) return this.mmioExit(gpa, size, false, bytes);
      if (r !== OK) return r;
      const t = this.tlbSlot;
      readValue(this.regs, 2 * dst, this.tlbView[t] as DataView, (this.tlbOff[t] as number) + inPage, size);
      return OK;
    }
    const first = Math.min(size, PAGE - inPage);
    let r = this.readFragment(gpa, first, bytes, 0);
    if (r !== OK) return r;
    if (first < size) {
      r = this.readFragment(gpa + first, size - first, bytes, first);
      if (r !== OK) return r;
    }
    let lo = 0;
    let hi = 0;
    for (let i = 0; i < size; i++) {
      const b = bytes[i] as number;
      if (i < 4) lo += b * 2 ** (8 * i);
      else hi += b * 2 ** (8 * (i - 4));
    }
    this.setReg(dst, lo >>> 0, hi >>> 0);
    return OK;
  }
  private readonly scratch = new Uint8Array(8);

  private readFragment(gpa: number, len: number, out: Uint8Array, at: number): number {
    const done = this.takeFragment(gpa, len, false);
    if (done) {
      out.set(done.data.subarray(0, len), at);
      return OK;
    }
    const r = this.translate(gpa, false);
    if (r === EXIT) return this.mmioExit(gpa, len, false, out);
    if (r !== OK) return r;
    const t = this.tlbSlot;
    const off = (this.tlbOff[t] as number) + (gpa % PAGE);
    out.set((this.tlbData[t] as Uint8Array).subarray(off, off + len), at);
    return OK;
  }

  private slowWrite(gpa: number, size: number, lo: number, hi: number, probed = false): number {
    const bytes = this.scratch;
    for (let i = 0; i < size; i++) bytes[i] = i < 4 ? (lo >>> (8 * i)) & 0xff : (hi >>> (8 * (i - 4))) & 0xff;
    const inPage = pageOffset(gpa);
    if (inPage + size <= PAGE && this.fragments.length === 0) {
      // One page, nothing completed yet: translate (fault) and write in place.
      const r = this.translate(gpa, true, false, probed);
      if (r === EXIT) return this.mmioExit(gpa, size, true, bytes);
      if (r !== OK) return r;
      const t = this.tlbSlot;
      writeValue(this.tlbView[t] as DataView, (this.tlbOff[t] as number) + inPage, size, lo, hi);
      return OK;
    }
    const first = Math.min(size, PAGE - inPage);
    let r = this.writeFragment(gpa, first, bytes.subarray(0, first));
    if (r !== OK) return r;
    if (first < size) {
      r = this.writeFragment(gpa + first, size - first, bytes.subarray(first, size));
      if (r !== OK) return r;
    }
    return OK;
  }

  private writeFragment(gpa: number, len: number, data: Uint8Array): number {
    if (this.takeFragment(gpa, len, true)) return OK;
    const r = this.translate(gpa, true);
    if (r === EXIT) return this.mmioExit(gpa, len, true, data);
    if (r !== OK) return r;
    const t = this.tlbSlot;
    (this.tlbData[t] as Uint8Array).set(data, (this.tlbOff[t] as number) + (gpa % PAGE));
    return OK;
  }

  /**
   * The TLB entry that allows an access to gpa's page without a fault (a hit, or a refill from
   * a present SPTE), or -1.
   */
  private probe(gpa: number, write: boolean): number {
    const gfn = Math.floor(gpa / PAGE);
    const t = gfn & TLB_MASK;
    this.syncTlb(this.vm.mmu[0] as TdpMmu);
    return (write ? this.tlbWrite[t] : this.tlbRead[t]) === gfn || this.tlbRefill(gfn, write) ? t : -1;
  }

  /**
   * How far the run of `n` bytes at frame offset `off` of `data` (guest bytes from gpa) extends
   * over the following pages, up to `max` bytes: as long as each next page is mapped without a
   * fault (`probe`) to the very next bytes of the same section buffer. A page that would fault
   * ends the run; the caller's next `translate` faults it in, in the guest's order.
   */
  private extendRun(
    gpa: number,
    data: Uint8Array,
    off: number,
    n: number,
    max: number,
    write: boolean,
  ): number {
    let len = n;
    while (len < max) {
      const t = this.probe(gpa + len, write);
      if (t < 0 || this.tlbData[t] !== data || this.tlbOff[t] !== off + len) break;
      len = Math.min(max, len + PAGE);
    }
    return len;
  }

  /**
   * rep stosb: through the TLB a run of pages at a time — the pages that are contiguous in one
   * section buffer take one `fill`; MMIO bytes one exit each.
   */
  private repFill(insn: Insn): number {
    const start = this.ea(insn.base, insn.disp);
    while (this.repDone < insn.len) {
      const gpa = start + this.repDone;
      const r = this.translate(gpa, true);
      if (r === EXIT) {
        if (this.takeFragment(gpa, 1, true)) {
          this.repDone++;
          this.fragments = [];
          continue;
        }
        return this.mmioExit(gpa, 1, true, new Uint8Array([insn.byte]));
      }
      if (r !== OK) return r;
      const t = this.tlbSlot;
      const data = this.tlbData[t] as Uint8Array;
      const off = (this.tlbOff[t] as number) + (gpa % PAGE);
      const left = insn.len - this.repDone;
      const n = this.extendRun(gpa, data, off, Math.min(left, PAGE - (gpa % PAGE)), left, true);
      data.fill(insn.byte, off, off + n);
      this.repDone += n;
    }
    return OK;
  }

  /**
   * rep movsb: runs that are contiguous on both sides (in one section buffer each) take one
   * `copyWithin`/`set`, chunked at both sides' page boundaries in between; MMIO on either side
   * goes a byte at a time.
   */
  private repCopy(insn: Insn): number {
    const dst = this.ea(insn.base, insn.disp);
    const src = this.ea(insn.base2, insn.disp2);
    while (this.repDone < insn.len) {
      const s = src + this.repDone;
      const d = dst + this.repDone;
      const chunk = Math.min(insn.len - this.repDone, PAGE - (s % PAGE), PAGE - (d % PAGE));
      let r = this.translate(s, false);
      if (r === EXIT || r === OK) {
        let srcData: Uint8Array;
        let srcOff: number;
        let n = chunk;
        if (r === EXIT) {
          const got = this.takeFragment(s, 1, false);
          if (!got) return this.mmioExit(s, 1, false, this.scratch);
          srcData = got.data;
          srcOff = 0;
          n = 1;
        } else {
          const t = this.tlbSlot;
          srcData = this.tlbData[t] as Uint8Array;
          srcOff = (this.tlbOff[t] as number) + (s % PAGE);
        }
        r = this.translate(d, true);
        if (r === EXIT) {
          if (!this.takeFragment(d, 1, true))
            return this.mmioExit(d, 1, true, srcData.subarray(srcOff, srcOff + 1));
          n = 1;
        } else if (r !== OK) {
          return r;
        } else {
          const t = this.tlbSlot;
          const dstData = this.tlbData[t] as Uint8Array;
          const dstOff = (this.tlbOff[t] as number) + (d % PAGE);
          if (n > 1) n = this.extendCopy(s, d, srcData, srcOff, dstData, dstOff, n, insn.len - this.repDone);
          if (dstData === srcData && dstOff > srcOff && dstOff < srcOff + n) {
            // rep movsb copies forward a byte at a time: an overlapping destination above the
            // source repeats the pattern (not memmove).
            for (let i = 0; i < n; i++) dstData[dstOff + i] = dstData[srcOff + i] as number;
          } else if (dstData === srcData) {
            dstData.copyWithin(dstOff, srcOff, srcOff + n);
          } else {
            dstData.set(srcData.subarray(srcOff, srcOff + n), dstOff);
          }
        }
        this.repDone += n;
        if (n === 1 && this.fragments.length > 0) this.fragments = [];
        continue;
      }
      return r;
    }
    return OK;
  }

  /** `extendRun` for both sides of a copy at once: the run's length (≥ n, ≤ max). */
  private extendCopy(
    s: number,
    d: number,
    srcData: Uint8Array,
    srcOff: number,
    dstData: Uint8Array,
    dstOff: number,
    n: number,
    max: number,
  ): number {
    let len = n;
    while (len < max) {
      const step = Math.min(max - len, PAGE - ((s + len) % PAGE), PAGE - ((d + len) % PAGE));
      const ts = this.probe(s + len, false);
      if (
        ts < 0 ||
        this.tlbData[ts] !== srcData ||
        (this.tlbOff[ts] as number) + ((s + len) % PAGE) !== srcOff + len
      )
        break;
      const td = this.probe(d + len, true);
      if (
        td < 0 ||
        this.tlbData[td] !== dstData ||
        (this.tlbOff[td] as number) + ((d + len) % PAGE) !== dstOff + len
      )
        break;
      len += step;
    }
    return len;
  }

  // ---- KVM_PRE_FAULT_MEMORY (PF-1..PF-5) ---------------------------------------------------

  preFaultMemory(range: PreFaultMemory): 0 {
    const call = 'KVM_PRE_FAULT_MEMORY';
    this.check(call);
    const flags = range.flags ?? 0;
    if (flags !== 0) fail('EINVAL', `flags ${flags} must be 0`, call, 'PF-1');
    if (range.gpa % PAGE !== 0 || range.size % PAGE !== 0 || range.gpa + range.size <= range.gpa) {
      fail('EINVAL', `gpa ${range.gpa} / size ${range.size}: unaligned, empty or wrapping`, call, 'PF-1');
    }
    if (!this.vm.preFaultAllowed)
      fail('EOPNOTSUPP', 'this VM type does not allow pre-faulting', call, 'PF-2');
    let progressed = false;
    let error: { code: ErrnoName; detail: string; rule: string } | null = null;
    while (range.size > 0) {
      const fault = newFault(range.gpa, false, true, 0);
      let r = RET_PF_RETRY;
      let tries = 0;
      for (;;) {
        r = kvmTdpPageFault(this.vm, fault, this.slotLookup);
        if (r !== RET_PF_RETRY || fault.row === '5' || fault.signal) break;
        if (++tries > MAX_RETRIES) {
          kvmWarn('KVM_PRE_FAULT_MEMORY livelocked on retries');
          break;
        }
      }
      if (r === RET_PF_FIXED) {
        const bytes = PAGE * (fault.goalLevel === 1 ? 1 : fault.goalLevel === 2 ? 512 : 262144);
        const end = Math.min(range.gpa + range.size, Math.floor(range.gpa / bytes) * bytes + bytes);
        range.size -= end - range.gpa;
        range.gpa = end;
        progressed = true;
        continue;
      }
      if (r === RET_PF_RETRY && fault.row === '5') {
        error = {
          code: 'EAGAIN',
          detail: `the memslot at gpa ${range.gpa} is being deleted or moved`,
          rule: 'PF-4',
        };
      } else if (r === RET_PF_EMULATE) {
        error = { code: 'ENOENT', detail: `gpa ${range.gpa} has no memslot`, rule: 'PF-4' };
      } else if (fault.memoryFaultErrno !== 0) {
        this.exit.memoryFault = {
          flags: fault.isPrivate ? KVM_MEMORY_EXIT_FLAG_PRIVATE : 0,
          gpa: fault.gfn * PAGE,
          size: PAGE,
        };
        error = {
          code: errnoName(fault.memoryFaultErrno) as ErrnoName,
          detail: `gpa ${range.gpa}: fault row ${fault.row}`,
          rule: 'PF-4',
        };
      } else if (fault.signal) {
        error = { code: 'EINTR', detail: `gpa ${range.gpa}: SIGBUS from a poisoned host page`, rule: 'PF-3' };
      } else {
        error = {
          code: errnoName(-r) as ErrnoName,
          detail: `gpa ${range.gpa}: fault row ${fault.row}`,
          rule: 'PF-4',
        };
      }
      break;
    }
    // PF-5: 0 if anything was processed, else the first error; gpa/size describe the rest.
    if (!progressed && error) fail(error.code, error.detail, call, error.rule);
    return 0;
  }

  // ---- lifetime ---------------------------------------------------------------------------

  close(): 0 {
    this.check('close');
    this.vm.kernel.fds.close(this.fd);
    return 0;
  }

  /** Freed with the VM (kvm_destroy_vcpus). */
  destroy(): void {
    this.closed = true;
    this.flushTlb();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Drops every TLB entry (tests; zaps do it through the generation). */
  flushTlb(): void {
    this.tlbRead.fill(Number.NaN);
    this.tlbWrite.fill(Number.NaN);
    this.tlbData.fill(NO_DATA);
    this.tlbView.fill(NO_VIEW);
  }
}

/** Reads a value of `size` bytes little-endian into register halves regs[d], regs[d + 1]. */
function readValue(regs: Uint32Array, d: number, dv: DataView, off: number, size: number): void {
  switch (size) {
    case 8:
      regs[d] = dv.getUint32(off, true);
      regs[d + 1] = dv.getUint32(off + 4, true);
      break;
    case 4:
      regs[d] = dv.getUint32(off, true);
      regs[d + 1] = 0;
      break;
    case 2:
      regs[d] = dv.getUint16(off, true);
      regs[d + 1] = 0;
      break;
    default:
      regs[d] = dv.getUint8(off);
      regs[d + 1] = 0;
  }
}

/** Writes a value of `size` bytes (lo/hi halves) little-endian. */
function writeValue(dv: DataView, off: number, size: number, lo: number, hi: number): void {
  switch (size) {
    case 8:
      dv.setUint32(off, lo, true);
      dv.setUint32(off + 4, hi, true);
      break;
    case 4:
      dv.setUint32(off, lo, true);
      break;
    case 2:
      dv.setUint16(off, lo & 0xffff, true);
      break;
    default:
      dv.setUint8(off, lo & 0xff);
  }
}

/** The high half `cmp` compares against for its size (0 below 8 bytes). */
function maskHi(insn: Insn): number {
  return insn.size === 8 ? insn.immHi : 0;
}

/** vCPU fds: closing the last reference drops the vCPU's reference on the VM. */
const vcpuFops = {
  name: 'kvm-vcpu',
  release: (file: File) => (file.priv as KvmVcpu).vm.put(),
};

/** KVM_CREATE_VCPU. */
export function createVcpu(vm: KvmVm, id: number): KvmVcpu {
  const call = 'KVM_CREATE_VCPU';
  if (!Number.isInteger(id) || id < 0 || id >= 4096) fail('EINVAL', `vcpu id ${id} ≥ KVM_MAX_VCPU_IDS`, call);
  if (vm.vcpus.some((v) => v.id === id)) fail('EEXIST', `vcpu ${id} already exists`, call);
  const file = new File<KvmVcpu>(
    vcpuFops,
    { ino: newIno(), mode: 0o600, size: 0, maxBytes: 0, mapping: null, mmaps: new Set() },
    FMODE_READ | FMODE_WRITE,
    // The file's private data is the vCPU; set right below (the fd is needed to build it).
    null as unknown as KvmVcpu,
  );
  let fd: number;
  try {
    fd = vm.kernel.fds.install(file, true, call);
  } catch (e) {
    file.refs = 0; // never visible to anyone: no release
    throw e;
  }
  const vcpu = new KvmVcpu(vm, id, fd, file);
  file.priv = vcpu;
  vm.get(); // the vCPU pins the VM
  vm.vcpus.push(vcpu);
  return vcpu;
}
