/**
 * Compiles a guest program (the IR of `core/vcpu/program.ts`, architecture §5) to x86-64 machine
 * code for the real /dev/kvm backend, together with what the vCPU needs to run it in 64-bit long
 * mode: identity-mapping page tables, the initial rip/rflags/rsp and the kvm_sregs changes (the
 * setup recorded in realkvm-notes §6.3). The model interprets the same IR; differential tests
 * compare the exits and memory of both, so the translation below *is* the IR's semantics on x86
 * and `vcpu/interp.ts` must match it:
 *
 * | op | code | notes |
 * |---|---|---|
 * | `mov dst, imm` | `mov dst, imm` (shortest form) | imm taken modulo 2^64 (−2^63 ≤ imm < 2^64) |
 * | `add dst, imm` | `add dst, imm32` | 64-bit add, wraps modulo 2^64 |
 * | `addReg dst, src` | `add dst, src` | wraps modulo 2^64 |
 * | `load size` | `movzx r32, byte/word` / `mov r32` / `mov r64` | zero-extended into dst |
 * | `store size` | `mov [addr], r8/r16/r32/r64` | the low `size` bytes of src |
 * | `storeImm size` | `mov byte/word/dword/qword [addr], imm` | the low 1/2/4 bytes of imm; size 8 stores imm32 sign-extended (0xffffffff → all ones) |
 * | `fill` | `rdi = addr; al = byte; rcx = len; rep stosb` | |
 * | `copy` | `rdi = dst; rsi = src; rcx = len; rep movsb` | a *forward byte-by-byte* copy: with dst − src in (0, len) the source pattern repeats, unlike memmove |
 * | `cmp` | `rbx = zero-extended load; cmp rbx, expect; je 1f; mov eax, tag; out 0xE1, eax; 1:` | expect compared modulo 2^64, so an expect ≥ 2^(8·size) never matches; rbx keeps the value either way |
 * | `loop counter, n` | `mov counter, n; L: body; dec counter; jnz L` | the body may write counter: the loop runs until `dec` reaches exactly 0 |
 * | `sync tag` | `mov eax, tag; out 0xE0, eax` | KVM_EXIT_IO, OUT, size 4, count 1, data = tag (LE) |
 * | `hypercall nr, [a0, a1, a2], ret` | `rax = nr; rbx = a0; rcx = a1; rdx = a2; vmcall; mov ret, rax` | `vmmcall` instead with `hypercallInsn: 'vmmcall'` |
 * | `halt` | `hlt` | KVM_EXIT_HLT; the next KVM_RUN continues after it |
 *
 * After the last op comes a terminal `hlt` (the program's own, when its last top-level op is
 * `halt`) followed by a `jmp` back to it: falling off the end halts, and re-entering a finished
 * program halts again every time, which is what the model does too.
 *
 * Tags (`sync`, `cmp`) are 32-bit: the low 32 bits of the tag are the OUT data.
 *
 * Addresses: `{ base, disp }` is `(base + disp) mod 2^64`, `{ disp }` the absolute gpa `disp`
 * (0 ≤ disp < 2^53). Both are guest physical through the identity map, so they must lie below
 * `identityMapBytes`: anything above it is not mapped and the access faults in the guest (a #PF
 * with no IDT → triple fault → KVM_EXIT_SHUTDOWN) instead of reaching KVM's MMU. Note too that a
 * vCPU without KVM_SET_CPUID2 has MAXPHYADDR 36 in KVM (cpuid_query_maxphyaddr), so gpas at or
 * above 64 GiB need the VMM to set CPUID first.
 *
 * Registers: the compiled code writes only the IR registers an op names (r8..r15) and the
 * scratch registers rax, rbx, rcx, rdx, rsi, rdi (and rflags). rax is the scratch for addresses
 * that do not fit an instruction (absolute ≥ 2^31, or a disp outside int32 next to a base),
 * for `cmp` expectations outside the sign-extended imm32 range, and for tags; rbx holds the
 * value `cmp` loaded; rcx/rsi/rdi/al are the string-instruction operands (after `fill` rdi =
 * addr + len and rcx = 0, after `copy` also rsi = src + len); rax..rdx carry hypercall
 * arguments. rsp and rbp are never used, so no stack is needed (rsp starts at 0).
 *
 * What KVM does with this code, as observed on a PVM host (kvm_pvm, where KVM's instruction
 * emulator runs the guest): an access inside the map to a gpa with no memslot is a
 * KVM_EXIT_MMIO of the access size (len 1/2/4/8); `fill` and `copy` over MMIO exit once per
 * byte (len 1); overlapping copies repeat the pattern as described above. On such hosts neither
 * `vmcall` nor `vmmcall` ever completes (the vCPU re-executes it and KVM_RUN does not return
 * until a signal), so `hypercall` ops need hardware-assisted KVM.
 */

import type { ProgramLayout } from '../../core/api.js';
import type { Addr, Op, Operand, Program, Reg } from '../../core/vcpu/program.js';
import { REGS, REPORT_PORT, SYNC_PORT } from '../../core/vcpu/program.js';
import { Asm, type Gpr, type Mem } from './asm.js';

/** What the real-KVM vCPU writes into the guest and its registers to run a compiled program. */
export interface LongModeImage {
  /** x86-64 machine code, to be written at layout.codeGpa */
  readonly code: Uint8Array;
  /** PML4, PDPT and PDs, contiguous, to be written at layout.pageTableGpa */
  readonly pageTables: Uint8Array;
  /** initial registers: rip = codeGpa, rflags = 2n, rsp (a small stack is not needed by the IR; set rsp to 0n unless you use one) */
  readonly regs: { readonly rip: bigint; readonly rflags: bigint; readonly rsp: bigint };
  /** patch a 312-byte struct kvm_sregs (as returned by KVM_GET_SREGS) in place for 64-bit long mode with these page tables */
  patchSregs(sregs: Uint8Array): void;
}

const GIB = 2 ** 30;
const MIB2 = 2 ** 21;
const PAGE_SIZE = 4096;
/** Default identity map: 8 GiB (covers the conformance suite's gpas above 4 GiB). */
export const DEFAULT_IDENTITY_MAP_BYTES = 8 * GIB;
/** One PML4 entry maps 512 GiB; this compiler builds exactly one. */
export const MAX_IDENTITY_MAP_BYTES = 512 * GIB;
/** sizeof(struct kvm_sregs) on x86-64. */
export const KVM_SREGS_SIZE = 312;

// Page-table entry bits (Intel SDM vol. 3 §4.5).
const PTE_P = 0x1;
const PTE_RW = 0x2;
const PTE_PS = 0x80;

/**
 * Size in bytes of the page-table image for an identity map of `identityMapBytes`:
 * one 4 KiB PML4, one 4 KiB PDPT and one 4 KiB PD per GiB (8 GiB → 40 KiB, 512 GiB → 2 MiB + 8 KiB).
 */
export function pageTableImageBytes(identityMapBytes: number): number {
  checkIdentityMapBytes(identityMapBytes);
  return (2 + identityMapBytes / GIB) * PAGE_SIZE;
}

function checkIdentityMapBytes(bytes: number): void {
  if (!Number.isInteger(bytes) || bytes < GIB || bytes > MAX_IDENTITY_MAP_BYTES || bytes % GIB !== 0) {
    throw new RangeError(`identityMapBytes ${bytes} is not a multiple of 1 GiB in [1 GiB, 512 GiB]`);
  }
}

/**
 * Builds identity-mapping page tables for [0, identityMapBytes) with 2 MiB pages, to be placed
 * at guest physical `pageTableGpa` (4 KiB aligned):
 *
 *   +0x0000  PML4: entry 0 = (pageTableGpa + 0x1000) | P | RW, the other 511 entries 0
 *   +0x1000  PDPT: entry i = (pageTableGpa + 0x2000 + i·0x1000) | P | RW for each GiB i
 *   +0x2000  PD i (one per GiB): entry j = (i·1 GiB + j·2 MiB) | P | RW | PS
 *
 * No NX, user or accessed/dirty bits are set; the CPU sets A/D in guest memory as it walks.
 */
export function buildIdentityPageTables(pageTableGpa: number, identityMapBytes: number): Uint8Array {
  checkIdentityMapBytes(identityMapBytes);
  if (!Number.isSafeInteger(pageTableGpa) || pageTableGpa < 0 || pageTableGpa % PAGE_SIZE !== 0) {
    throw new RangeError(`pageTableGpa ${pageTableGpa} is not a 4 KiB-aligned guest physical address`);
  }
  const nPd = identityMapBytes / GIB;
  const image = new Uint8Array((2 + nPd) * PAGE_SIZE);
  const view = new DataView(image.buffer);
  // Entries are 64-bit; values reach 2^39, so write them as two 32-bit halves without bit ops.
  const put = (offset: number, value: number): void => {
    view.setUint32(offset, value % 2 ** 32, true);
    view.setUint32(offset + 4, Math.floor(value / 2 ** 32), true);
  };
  put(0, pageTableGpa + PAGE_SIZE + PTE_P + PTE_RW);
  for (let i = 0; i < nPd; i++) {
    put(PAGE_SIZE + 8 * i, pageTableGpa + (2 + i) * PAGE_SIZE + PTE_P + PTE_RW);
    const pd = (2 + i) * PAGE_SIZE;
    for (let j = 0; j < 512; j++) put(pd + 8 * j, i * GIB + j * MIB2 + PTE_P + PTE_RW + PTE_PS);
  }
  return image;
}

// struct kvm_sregs (arch/x86/include/uapi/asm/kvm.h): 8 × struct kvm_segment (24 bytes) for
// cs, ds, es, fs, gs, ss, tr, ldt; then gdt and idt (struct kvm_dtable: base u64, limit u16,
// padding), cr0, cr2, cr3, cr4, cr8, efer, apic_base (u64 each), interrupt_bitmap.
const SREGS_CS = 0;
const SREGS_DS = 24;
const SREGS_ES = 48;
const SREGS_FS = 72;
const SREGS_GS = 96;
const SREGS_SS = 120;
const SREGS_TR = 144;
const SREGS_GDT = 192;
const SREGS_IDT = 208;
const SREGS_CR0 = 224;
const SREGS_CR3 = 240;
const SREGS_CR4 = 248;
const SREGS_EFER = 264;

const CR0_PE = 1n << 0n;
const CR0_ET = 1n << 4n;
const CR0_PG = 1n << 31n;
const CR4_PAE = 1n << 5n;
const EFER_LME = 1n << 8n;
const EFER_LMA = 1n << 10n;

interface Segment {
  readonly base: number;
  readonly limit: number;
  readonly selector: number;
  readonly type: number;
  readonly present: number;
  readonly dpl: number;
  readonly db: number;
  readonly s: number;
  readonly l: number;
  readonly g: number;
}

/** struct kvm_segment: base u64 @0, limit u32 @8, selector u16 @12, then u8 type @14, present,
 * dpl, db, s, l, g, avl, unusable @22, padding @23. */
function writeSegment(view: DataView, at: number, seg: Segment): void {
  view.setBigUint64(at, BigInt(seg.base), true);
  view.setUint32(at + 8, seg.limit, true);
  view.setUint16(at + 12, seg.selector, true);
  view.setUint8(at + 14, seg.type);
  view.setUint8(at + 15, seg.present);
  view.setUint8(at + 16, seg.dpl);
  view.setUint8(at + 17, seg.db);
  view.setUint8(at + 18, seg.s);
  view.setUint8(at + 19, seg.l);
  view.setUint8(at + 20, seg.g);
  view.setUint8(at + 21, 0); // avl
  view.setUint8(at + 22, 0); // unusable
  view.setUint8(at + 23, 0); // padding
}

/** 64-bit code: execute/read, accessed (type 0xb), L = 1, D/B = 0, flat. */
const CODE64: Segment = {
  base: 0,
  limit: 0xffffffff,
  selector: 0x08,
  type: 0xb,
  present: 1,
  dpl: 0,
  db: 0,
  s: 1,
  l: 1,
  g: 1,
};
/** Flat data: read/write, accessed (type 3). Base and limit are ignored in 64-bit mode except fs/gs base. */
const DATA: Segment = {
  base: 0,
  limit: 0xffffffff,
  selector: 0x10,
  type: 0x3,
  present: 1,
  dpl: 0,
  db: 1,
  s: 1,
  l: 0,
  g: 1,
};
/** A busy 64-bit TSS (type 0xb, system segment): VMX entry checks require a usable TR. */
const TSS64: Segment = {
  base: 0,
  limit: 0x67,
  selector: 0x18,
  type: 0xb,
  present: 1,
  dpl: 0,
  db: 0,
  s: 0,
  l: 0,
  g: 0,
};

/**
 * Patches a 312-byte struct kvm_sregs in place for 64-bit long mode over page tables at
 * `pageTableGpa` (realkvm-notes §6.3): cs 64-bit code, ds/es/fs/gs/ss flat data, tr a busy
 * 64-bit TSS; cr0 = PG|ET|PE, cr3 = pageTableGpa, cr4 = PAE, efer = LME|LMA. gdt and idt get
 * base 0 and limit 0: nothing reloads a segment, and an empty IDT makes any guest exception a
 * triple fault (KVM_EXIT_SHUTDOWN) instead of a jump through whatever lies at gpa 0. ldt, cr2,
 * cr8, apic_base and the interrupt bitmap are left as KVM_GET_SREGS returned them.
 */
export function patchSregsLongMode(sregs: Uint8Array, pageTableGpa: number): void {
  if (sregs.byteLength !== KVM_SREGS_SIZE) {
    throw new RangeError(`kvm_sregs is ${KVM_SREGS_SIZE} bytes, got ${sregs.byteLength}`);
  }
  const view = new DataView(sregs.buffer, sregs.byteOffset, sregs.byteLength);
  writeSegment(view, SREGS_CS, CODE64);
  for (const at of [SREGS_DS, SREGS_ES, SREGS_FS, SREGS_GS, SREGS_SS]) writeSegment(view, at, DATA);
  writeSegment(view, SREGS_TR, TSS64);
  for (const at of [SREGS_GDT, SREGS_IDT]) {
    view.setBigUint64(at, 0n, true);
    view.setUint16(at + 8, 0, true);
  }
  view.setBigUint64(SREGS_CR0, CR0_PG | CR0_ET | CR0_PE, true);
  view.setBigUint64(SREGS_CR3, BigInt(pageTableGpa), true);
  view.setBigUint64(SREGS_CR4, CR4_PAE, true);
  view.setBigUint64(SREGS_EFER, EFER_LME | EFER_LMA, true);
}

// ---------------------------------------------------------------------------------------------
// Code generation

/** The scratch register for addresses and values that do not fit an instruction field. */
const SCRATCH: Gpr = 'rax';
const I64_MIN = -(1n << 63n);
const U64_LIMIT = 1n << 64n;

function isInt32(v: number): boolean {
  return v >= -(2 ** 31) && v < 2 ** 31;
}

function reg(r: unknown, where: string): Reg {
  if (typeof r !== 'string' || !(REGS as readonly string[]).includes(r)) {
    throw new TypeError(`${where}: '${String(r)}' is not an IR register (r8..r15)`);
  }
  return r as Reg; // checked against REGS just above
}

function u64(v: bigint | number, where: string): bigint {
  const b = typeof v === 'bigint' ? v : Number.isSafeInteger(v) ? BigInt(v) : undefined;
  if (b === undefined || b < I64_MIN || b >= U64_LIMIT) {
    throw new RangeError(`${where}: ${String(v)} is not an integer in [-2^63, 2^64)`);
  }
  return BigInt.asUintN(64, b);
}

function intIn(v: number, min: number, max: number, where: string): number {
  if (!Number.isSafeInteger(v) || v < min || v > max) {
    throw new RangeError(`${where}: ${v} is not an integer in [${min}, ${max}]`);
  }
  return v;
}

class Compiler {
  readonly asm = new Asm();

  constructor(private readonly hypercallInsn: HypercallInsn) {}

  /** A memory operand for `addr`, loading rax first when the address does not fit disp32. */
  private mem(addr: Addr, where: string): Mem {
    const disp = addr.disp;
    if (addr.base === undefined) {
      intIn(disp, 0, Number.MAX_SAFE_INTEGER, `${where}: absolute gpa`);
      if (disp < 2 ** 31) return { abs: disp };
      // [disp32] is sign-extended by the CPU: 2^31 and up need the address in a register.
      this.asm.movImm(SCRATCH, BigInt(disp));
      return { base: SCRATCH, disp: 0 };
    }
    const base = reg(addr.base, `${where}: base`);
    intIn(disp, Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, `${where}: disp`);
    if (isInt32(disp)) return { base, disp };
    this.asm.movImm(SCRATCH, BigInt.asUintN(64, BigInt(disp)));
    this.asm.addReg(SCRATCH, base);
    return { base: SCRATCH, disp: 0 };
  }

  /** dst = the effective address of `addr` (used for rdi/rsi of the string instructions). */
  private addrInto(dst: Gpr, addr: Addr, where: string): void {
    const disp = addr.disp;
    if (addr.base === undefined) {
      intIn(disp, 0, Number.MAX_SAFE_INTEGER, `${where}: absolute gpa`);
      this.asm.movImm(dst, BigInt(disp));
      return;
    }
    const base = reg(addr.base, `${where}: base`);
    intIn(disp, Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, `${where}: disp`);
    if (isInt32(disp)) {
      this.asm.lea(dst, { base, disp });
    } else {
      this.asm.movImm(dst, BigInt.asUintN(64, BigInt(disp)));
      this.asm.addReg(dst, base);
    }
  }

  private operand(dst: Gpr, v: Operand, where: string): void {
    if (typeof v === 'string') this.asm.movReg(dst, reg(v, where));
    else this.asm.movImm(dst, u64(v, where));
  }

  private tag(tag: number, where: string): number {
    return intIn(tag, -(2 ** 31), 2 ** 32 - 1, `${where}: tag`) >>> 0; // in int32/uint32 range: >>> 0 is exact
  }

  ops(ops: readonly Op[], path: string): void {
    ops.forEach((op, i) => {
      this.op(op, `${path}[${i}] ${op.op}`);
    });
  }

  private op(op: Op, where: string): void {
    const a = this.asm;
    switch (op.op) {
      case 'mov':
        a.movImm(reg(op.dst, where), u64(op.imm, `${where}: imm`));
        return;
      case 'add':
        a.addImm(reg(op.dst, where), intIn(op.imm, -(2 ** 31), 2 ** 31 - 1, `${where}: imm`));
        return;
      case 'addReg':
        a.addReg(reg(op.dst, where), reg(op.src, where));
        return;
      case 'load': {
        const dst = reg(op.dst, where);
        a.load(size(op.size, where), dst, this.mem(op.addr, where));
        return;
      }
      case 'store': {
        const src = reg(op.src, where);
        a.store(size(op.size, where), this.mem(op.addr, where), src);
        return;
      }
      case 'storeImm': {
        const s = size(op.size, where);
        const imm = intIn(op.imm, -(2 ** 31), 2 ** 32 - 1, `${where}: imm`);
        const m = this.mem(op.addr, where);
        // The low bytes of imm: the same bits the model stores. Size 8 sign-extends imm32.
        if (s === 1) a.storeImm(1, m, ((imm % 256) + 256) % 256);
        else if (s === 2) a.storeImm(2, m, ((imm % 65536) + 65536) % 65536);
        else a.storeImm(s, m, imm);
        return;
      }
      case 'fill':
        this.addrInto('rdi', op.addr, where);
        a.movImm8('rax', intIn(op.byte, 0, 255, `${where}: byte`));
        a.movImm('rcx', BigInt(intIn(op.len, 0, Number.MAX_SAFE_INTEGER, `${where}: len`)));
        a.repStosb();
        return;
      case 'copy':
        this.addrInto('rdi', op.dst, `${where}: dst`);
        this.addrInto('rsi', op.src, `${where}: src`);
        a.movImm('rcx', BigInt(intIn(op.len, 0, Number.MAX_SAFE_INTEGER, `${where}: len`)));
        a.repMovsb();
        return;
      case 'cmp': {
        const s = size(op.size, where);
        const tag = this.tag(op.tag, where);
        const expect = u64(op.expect, `${where}: expect`);
        a.load(s, 'rbx', this.mem(op.addr, where));
        const signed = BigInt.asIntN(64, expect);
        if (signed >= -(1n << 31n) && signed < 1n << 31n) {
          a.cmpImm('rbx', Number(signed));
        } else {
          a.movImm(SCRATCH, expect);
          a.cmpReg('rbx', SCRATCH);
        }
        const same = a.label();
        a.jcc('e', same);
        a.movImm('rax', BigInt(tag));
        a.outImm8Eax(REPORT_PORT);
        a.bind(same);
        return;
      }
      case 'loop': {
        const counter = reg(op.counter, where);
        a.movImm(counter, BigInt(intIn(op.count, 1, Number.MAX_SAFE_INTEGER, `${where}: count`)));
        const top = a.label();
        a.bind(top);
        this.ops(op.body, `${where}.body`);
        a.dec(counter);
        a.jcc('ne', top);
        return;
      }
      case 'sync':
        a.movImm('rax', BigInt(this.tag(op.tag, where)));
        a.outImm8Eax(SYNC_PORT);
        return;
      case 'hypercall': {
        const ret = reg(op.ret, `${where}: ret`);
        if (!Array.isArray(op.args) || op.args.length !== 3) {
          throw new TypeError(`${where}: a hypercall takes exactly 3 arguments`);
        }
        a.movImm('rax', u64(op.nr, `${where}: nr`));
        this.operand('rbx', op.args[0], `${where}: a0`);
        this.operand('rcx', op.args[1], `${where}: a1`);
        this.operand('rdx', op.args[2], `${where}: a2`);
        if (this.hypercallInsn === 'vmmcall') a.vmmcall();
        else a.vmcall();
        a.movReg(ret, 'rax');
        return;
      }
      case 'halt':
        a.hlt();
        return;
      default: {
        const unknown: never = op;
        throw new TypeError(`${where}: unknown op ${JSON.stringify(unknown)}`);
      }
    }
  }
}

function size(s: number, where: string): 1 | 2 | 4 | 8 {
  if (s !== 1 && s !== 2 && s !== 4 && s !== 8)
    throw new RangeError(`${where}: access size ${s} is not 1, 2, 4 or 8`);
  return s;
}

/**
 * The hypercall instruction: `vmcall` is Intel's, `vmmcall` AMD's. KVM accepts either on either
 * vendor, but only by taking the #UD of the foreign one and rewriting the instruction in guest
 * memory (KVM_X86_QUIRK_FIX_HYPERCALL_INSN; with the quirk disabled the guest gets the #UD), so
 * a VMM on AMD should ask for `vmmcall` to keep the code page unchanged.
 */
export type HypercallInsn = 'vmcall' | 'vmmcall';

/** Options of `compileProgram`. */
export interface CompileOptions {
  /** Bytes identity-mapped from gpa 0: a multiple of 1 GiB, at most 512 GiB (default 8 GiB). */
  readonly identityMapBytes?: number;
  /** Instruction for the `hypercall` op (default `vmcall`). */
  readonly hypercallInsn?: HypercallInsn;
}

/**
 * Compiles `program` for a vCPU in 64-bit long mode: code for `layout.codeGpa`, identity-mapping
 * page tables for `layout.pageTableGpa` covering `options.identityMapBytes` (default 8 GiB; a
 * multiple of 1 GiB, at most 512 GiB), initial registers, and the sregs patch. Throws
 * `TypeError`/`RangeError` naming the op path (`ops[2].body[0] load`) for a malformed program,
 * and `RangeError` when the layout is unusable (code outside the map, code overlapping the
 * page tables).
 */
export function compileProgram(
  program: Program,
  layout: ProgramLayout,
  options?: CompileOptions,
): LongModeImage {
  const identityMapBytes = options?.identityMapBytes ?? DEFAULT_IDENTITY_MAP_BYTES;
  const hypercallInsn = options?.hypercallInsn ?? 'vmcall';
  if (hypercallInsn !== 'vmcall' && hypercallInsn !== 'vmmcall') {
    throw new TypeError(`hypercallInsn '${String(hypercallInsn)}' is not 'vmcall' or 'vmmcall'`);
  }
  const c = new Compiler(hypercallInsn);
  const ops = program.ops;
  // The terminal hlt is the program's own final halt, or one appended; the jmp back keeps a
  // finished program halting on every later KVM_RUN (KVM resumes after a HLT exit).
  const endsInHalt = ops[ops.length - 1]?.op === 'halt';
  c.ops(endsInHalt ? ops.slice(0, -1) : ops, 'ops');
  const a = c.asm;
  const end = a.label();
  a.bind(end);
  a.hlt();
  a.jmp(end);
  const code = a.finish();

  const { codeGpa, pageTableGpa } = layout;
  const pageTables = buildIdentityPageTables(pageTableGpa, identityMapBytes);
  intIn(codeGpa, 0, Number.MAX_SAFE_INTEGER, 'layout.codeGpa');
  if (codeGpa + code.length > identityMapBytes) {
    throw new RangeError(
      `code at ${hex(codeGpa)}..${hex(codeGpa + code.length)} is not inside the identity map of ${hex(identityMapBytes)} bytes`,
    );
  }
  if (codeGpa < pageTableGpa + pageTables.length && pageTableGpa < codeGpa + code.length) {
    throw new RangeError(
      `code at ${hex(codeGpa)}..${hex(codeGpa + code.length)} overlaps the page tables at ` +
        `${hex(pageTableGpa)}..${hex(pageTableGpa + pageTables.length)}`,
    );
  }
  return {
    code,
    pageTables,
    regs: { rip: BigInt(codeGpa), rflags: 2n, rsp: 0n },
    patchSregs(sregs: Uint8Array): void {
      patchSregsLongMode(sregs, pageTableGpa);
    },
  };
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}
