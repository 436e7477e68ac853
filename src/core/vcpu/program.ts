/**
 * Guest programs (architecture §5): a small instruction set that a vCPU runs.
 *
 * The model interprets a program through its MMU (`vcpu/interp.ts`); the real backend compiles
 * the same program to x86-64 machine code that runs in 64-bit long mode over identity-mapped
 * page tables (`src/host/x86/`). Both give the same exits and the same memory, which is what the
 * differential tests compare.
 *
 * Registers are r8..r15 (the x86 registers of the same names), so that compiled code can keep
 * rax/rbx/rcx/rdx/rsi/rdi for hypercalls, string operations and port I/O. Addresses are guest
 * physical (identity mapping). Immediates for 8-byte values are bigint; everything else number.
 *
 * Exits a program causes on purpose:
 * - `sync(tag)`: port I/O OUT of 4 bytes (the tag) to `SYNC_PORT` — a KVM_EXIT_IO;
 * - `cmp(...)` that finds a different value: OUT of the tag to `REPORT_PORT`, with the value
 *   found left in rbx (read it with `vcpu.getRegs()`);
 * - `hypercall(...)`: VMCALL (KVM_EXIT_HYPERCALL when the VM enabled the exit);
 * - `halt()`: HLT — KVM_EXIT_HLT.
 * Any memory access may also exit (MMIO, memory fault) as the MMU decides.
 */

export const SYNC_PORT = 0xe0;
export const REPORT_PORT = 0xe1;

export const REGS = ['r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15'] as const;
export type Reg = (typeof REGS)[number];
export type AccessSize = 1 | 2 | 4 | 8;

/** A memory operand: `base + disp` (base absent: the absolute gpa `disp`). */
export interface Addr {
  readonly base?: Reg;
  readonly disp: number;
}

export type Op =
  /** dst = imm */
  | { readonly op: 'mov'; readonly dst: Reg; readonly imm: bigint }
  /** dst += imm (a signed 32-bit immediate) */
  | { readonly op: 'add'; readonly dst: Reg; readonly imm: number }
  /** dst += src */
  | { readonly op: 'addReg'; readonly dst: Reg; readonly src: Reg }
  /** dst = zero-extended load of `size` bytes at addr */
  | { readonly op: 'load'; readonly size: AccessSize; readonly dst: Reg; readonly addr: Addr }
  /** store the low `size` bytes of src at addr */
  | { readonly op: 'store'; readonly size: AccessSize; readonly addr: Addr; readonly src: Reg }
  /** store an immediate (sign-extended 32-bit for size 8) at addr */
  | { readonly op: 'storeImm'; readonly size: AccessSize; readonly addr: Addr; readonly imm: number }
  /** memset(addr, byte, len) — `rep stosb` */
  | { readonly op: 'fill'; readonly addr: Addr; readonly len: number; readonly byte: number }
  /** memcpy(dst, src, len) — `rep movsb` */
  | { readonly op: 'copy'; readonly dst: Addr; readonly src: Addr; readonly len: number }
  /** load `size` bytes at addr; if ≠ expect, report `tag` (value found in rbx) */
  | {
      readonly op: 'cmp';
      readonly size: AccessSize;
      readonly addr: Addr;
      readonly expect: bigint;
      readonly tag: number;
    }
  /** repeat body `count` times, counting down in `counter` (count ≥ 1) */
  | { readonly op: 'loop'; readonly counter: Reg; readonly count: number; readonly body: readonly Op[] }
  /** exit to the VMM with a tag (KVM_EXIT_IO, OUT to SYNC_PORT) */
  | { readonly op: 'sync'; readonly tag: number }
  /** VMCALL: rax = nr, rbx = a0, rcx = a1, rdx = a2; the result (rax) goes to `ret` */
  | {
      readonly op: 'hypercall';
      readonly nr: number;
      readonly args: readonly [Operand, Operand, Operand];
      readonly ret: Reg;
    }
  /** HLT */
  | { readonly op: 'halt' };

/** An immediate (number or bigint) or a register. */
export type Operand = Reg | number | bigint;

export interface Program {
  readonly ops: readonly Op[];
}

function addr(a: Addr | number): Addr {
  return typeof a === 'number' ? { disp: a } : a;
}

function checkSize(size: number): AccessSize {
  if (size !== 1 && size !== 2 && size !== 4 && size !== 8) {
    throw new TypeError(`access size ${size} is not 1, 2, 4 or 8`);
  }
  return size;
}

/**
 * Builds a program: `new ProgramBuilder().storeImm(8, 0x1000, 42).sync(1).halt().build()`.
 * Addresses are a gpa number or `{ base: 'r9', disp: 16 }`.
 */
export class ProgramBuilder {
  private readonly ops: Op[] = [];

  mov(dst: Reg, imm: bigint | number): this {
    this.ops.push({ op: 'mov', dst, imm: BigInt(imm) });
    return this;
  }
  add(dst: Reg, imm: number): this {
    if (!Number.isInteger(imm) || imm < -(2 ** 31) || imm >= 2 ** 31) {
      throw new TypeError(`add immediate ${imm} is not a signed 32-bit integer`);
    }
    this.ops.push({ op: 'add', dst, imm });
    return this;
  }
  addReg(dst: Reg, src: Reg): this {
    this.ops.push({ op: 'addReg', dst, src });
    return this;
  }
  load(size: number, dst: Reg, at: Addr | number): this {
    this.ops.push({ op: 'load', size: checkSize(size), dst, addr: addr(at) });
    return this;
  }
  store(size: number, at: Addr | number, src: Reg): this {
    this.ops.push({ op: 'store', size: checkSize(size), addr: addr(at), src });
    return this;
  }
  storeImm(size: number, at: Addr | number, imm: number): this {
    if (!Number.isInteger(imm) || imm < -(2 ** 31) || imm >= 2 ** 32) {
      throw new TypeError(`store immediate ${imm} does not fit in 32 bits`);
    }
    this.ops.push({ op: 'storeImm', size: checkSize(size), addr: addr(at), imm });
    return this;
  }
  fill(at: Addr | number, len: number, byte: number): this {
    this.ops.push({ op: 'fill', addr: addr(at), len, byte: byte & 0xff });
    return this;
  }
  copy(dst: Addr | number, src: Addr | number, len: number): this {
    this.ops.push({ op: 'copy', dst: addr(dst), src: addr(src), len });
    return this;
  }
  cmp(size: number, at: Addr | number, expect: bigint | number, tag: number): this {
    this.ops.push({ op: 'cmp', size: checkSize(size), addr: addr(at), expect: BigInt(expect), tag });
    return this;
  }
  loop(counter: Reg, count: number, body: (b: ProgramBuilder) => void): this {
    if (!Number.isInteger(count) || count < 1) throw new TypeError(`loop count ${count} must be ≥ 1`);
    const inner = new ProgramBuilder();
    body(inner);
    this.ops.push({ op: 'loop', counter, count, body: inner.ops });
    return this;
  }
  sync(tag: number): this {
    this.ops.push({ op: 'sync', tag: tag >>> 0 });
    return this;
  }
  hypercall(nr: number, args: readonly [Operand, Operand, Operand], ret: Reg): this {
    this.ops.push({ op: 'hypercall', nr, args, ret });
    return this;
  }
  halt(): this {
    this.ops.push({ op: 'halt' });
    return this;
  }
  build(): Program {
    return { ops: [...this.ops] };
  }
}

/** Shorthand: `program(b => b.storeImm(4, 0x2000, 7).halt())`. */
export function program(body: (b: ProgramBuilder) => void): Program {
  const b = new ProgramBuilder();
  body(b);
  return b.build();
}
