/**
 * A small x86-64 encoder: exactly the instructions that the guest-program compiler
 * (`compile.ts`) emits, and nothing else. It is not a general assembler; it exists so that the
 * real-KVM backend can run the IR of `core/vcpu/program.ts` without an external toolchain.
 *
 * Every method appends one instruction and encodes it the way GNU `as` does for the matching
 * AT&T text (shortest displacement: none, disp8 or disp32; the accumulator short forms of
 * `add`/`cmp`; sign-extended imm8 where it fits), so the tests can pin the bytes against GNU
 * binutils. Jumps are always rel32 (no relaxation), with fixups resolved by `finish()`.
 *
 * Encoding reference (Intel SDM vol. 2, ch. 2): an instruction is
 *   [legacy prefixes: 66 operand size, F3 rep] [REX 0100WRXB] opcode [ModRM] [SIB] [disp] [imm].
 * REX.W selects 64-bit operand size, REX.R extends ModRM.reg, REX.X the SIB index, REX.B the
 * ModRM.rm / SIB.base / opcode register. In 64-bit mode ModRM mod=00 rm=101 means RIP-relative,
 * so an absolute `[disp32]` is encoded through a SIB byte with no base and no index (04 25).
 */

/** The 16 general-purpose registers, in hardware encoding order (index = register number). */
export const GPRS = [
  'rax',
  'rcx',
  'rdx',
  'rbx',
  'rsp',
  'rbp',
  'rsi',
  'rdi',
  'r8',
  'r9',
  'r10',
  'r11',
  'r12',
  'r13',
  'r14',
  'r15',
] as const;
/** A 64-bit general-purpose register; narrower accesses name the same register (r8 → r8b/r8w/r8d). */
export type Gpr = (typeof GPRS)[number];

/** Hardware number (0..15) of a register; throws on a name that is not a register. */
export function gprNumber(reg: Gpr): number {
  const n = GPRS.indexOf(reg);
  if (n < 0) throw new TypeError(`'${String(reg)}' is not an x86-64 general-purpose register`);
  return n;
}

/**
 * A memory operand: `[base + disp]` with a signed 32-bit disp, or the absolute address `[abs]`
 * (a disp32 that the CPU sign-extends to 64 bits, so only 0..2^31-1 reach low memory).
 */
export type Mem = { readonly base: Gpr; readonly disp: number } | { readonly abs: number };

/** Condition codes of Jcc (the low nibble of 0F 8x). */
export const CONDITIONS = {
  o: 0x0,
  no: 0x1,
  b: 0x2,
  ae: 0x3,
  e: 0x4,
  ne: 0x5,
  be: 0x6,
  a: 0x7,
  s: 0x8,
  ns: 0x9,
  p: 0xa,
  np: 0xb,
  l: 0xc,
  ge: 0xd,
  le: 0xe,
  g: 0xf,
} as const;
/** A Jcc condition name (`ne` = jnz, `e` = jz, …). */
export type Condition = keyof typeof CONDITIONS;

/** Access sizes in bytes. */
export type Width = 1 | 2 | 4 | 8;

/** A jump target; create with `Asm.label()`, place with `Asm.bind()`. */
export interface Label {
  /** Offset in the code, or -1 while unbound. */
  readonly offset: number;
}

class LabelImpl implements Label {
  offset = -1;
}

interface Fixup {
  readonly label: LabelImpl;
  /** Where the rel32 field starts. */
  readonly at: number;
  /** The offset the rel32 is relative to (the end of the jump instruction). */
  readonly from: number;
}

const INT32_MIN = -(2 ** 31);
const INT32_MAX = 2 ** 31 - 1;
const UINT32_LIMIT = 2 ** 32;
const U64_LIMIT = 1n << 64n;

function isInt32(v: number): boolean {
  return Number.isInteger(v) && v >= INT32_MIN && v <= INT32_MAX;
}
function isInt8(v: number): boolean {
  return Number.isInteger(v) && v >= -128 && v <= 127;
}
function checkRange(what: string, v: number, min: number, max: number): void {
  if (!Number.isInteger(v) || v < min || v > max) {
    throw new RangeError(`${what} ${v} is not an integer in [${min}, ${max}]`);
  }
}

function checkWidth(size: number): void {
  if (size !== 1 && size !== 2 && size !== 4 && size !== 8)
    throw new RangeError(`access size ${size} is not 1, 2, 4 or 8`);
}

/** Appends x86-64 instructions to a growing buffer; `finish()` resolves jumps and returns the code. */
export class Asm {
  private buf = new Uint8Array(256);
  private len = 0;
  private readonly fixups: Fixup[] = [];

  /** Bytes emitted so far (the offset the next instruction starts at). */
  get offset(): number {
    return this.len;
  }

  // -------------------------------------------------------------------------------------------
  // Byte emission

  private byte(b: number): void {
    if (this.len === this.buf.length) {
      const grown = new Uint8Array(this.buf.length * 2);
      grown.set(this.buf);
      this.buf = grown;
    }
    this.buf[this.len++] = b;
  }
  private bytes(...bs: number[]): void {
    for (const b of bs) this.byte(b);
  }
  /** Little-endian, `n` bytes of a value already known to fit (two's complement for negatives). */
  private le(value: number, n: 1 | 2 | 4): void {
    let v = value < 0 ? value + 2 ** (8 * n) : value;
    for (let i = 0; i < n; i++) {
      this.byte(v % 256);
      v = Math.floor(v / 256);
    }
  }
  private le64(value: bigint): void {
    let v = BigInt.asUintN(64, value);
    for (let i = 0; i < 8; i++) {
      this.byte(Number(v & 0xffn));
      v >>= 8n;
    }
  }

  /**
   * REX prefix, emitted when any bit is set or when `force` (an 8-bit access to spl/bpl/sil/dil,
   * which without REX would mean ah/ch/dh/bh).
   */
  private rex(w: boolean, r: number, x: number, b: number, force = false): void {
    const bits = (w ? 8 : 0) | ((r >> 3) << 2) | ((x >> 3) << 1) | (b >> 3);
    if (bits !== 0 || force) this.byte(0x40 | bits);
  }

  /** ModRM (and SIB/disp) for `reg` (a register number or an opcode extension /n) and a memory operand. */
  private modrmMem(reg: number, mem: Mem): void {
    const regBits = (reg & 7) << 3;
    if ('abs' in mem) {
      checkRange('absolute disp32', mem.abs, INT32_MIN, INT32_MAX);
      // mod=00 rm=100 → SIB; SIB base=101 with mod=00 → no base, index=100 → none: [disp32].
      this.bytes(0x04 | regBits, 0x25);
      this.le(mem.abs, 4);
      return;
    }
    const base = gprNumber(mem.base);
    if (!isInt32(mem.disp))
      throw new RangeError(`displacement ${mem.disp} does not fit in a signed 32-bit field`);
    const low = base & 7;
    // rbp/r13 as base with mod=00 would mean RIP-relative/no-base: they need an explicit disp8 0.
    const mod = mem.disp === 0 && low !== 5 ? 0 : isInt8(mem.disp) ? 1 : 2;
    this.byte((mod << 6) | regBits | low);
    // rsp/r12 as base (rm=100) means "a SIB follows": SIB with base=that register, no index.
    if (low === 4) this.byte(0x24);
    if (mod === 1) this.le(mem.disp, 1);
    else if (mod === 2) this.le(mem.disp, 4);
  }
  private memRexB(mem: Mem): number {
    return 'abs' in mem ? 0 : gprNumber(mem.base);
  }

  /** `op` with ModRM mod=11: register-direct `rm`, and `reg` a register or opcode extension. */
  private rr(w: boolean, opcode: readonly number[], reg: number, rm: number): void {
    this.rex(w, reg, 0, rm);
    this.bytes(...opcode, 0xc0 | ((reg & 7) << 3) | (rm & 7));
  }
  private rm(w: boolean, opcode: readonly number[], reg: number, mem: Mem, forceRex = false): void {
    this.rex(w, reg, 0, this.memRexB(mem), forceRex);
    this.bytes(...opcode);
    this.modrmMem(reg, mem);
  }

  // -------------------------------------------------------------------------------------------
  // Moves

  /**
   * dst = imm (a 64-bit value; negative numbers are two's complement), in the shortest form that
   * gives the same 64 bits: `mov r32, imm32` (zero-extends) for 0..2^32-1, `mov r/m64, imm32`
   * (sign-extends) for -2^31..-1, `movabs r64, imm64` otherwise.
   */
  movImm(dst: Gpr, imm: bigint): void {
    if (imm < -(1n << 63n) || imm >= U64_LIMIT)
      throw new RangeError(`immediate ${imm} does not fit in 64 bits`);
    const u = BigInt.asUintN(64, imm);
    const d = gprNumber(dst);
    if (u < 1n << 32n) {
      this.rex(false, 0, 0, d);
      this.byte(0xb8 | (d & 7));
      this.le(Number(u), 4);
    } else if (u >= U64_LIMIT - (1n << 31n)) {
      this.rr(true, [0xc7], 0, d);
      this.le(Number(BigInt.asIntN(64, u)), 4);
    } else {
      this.movabs(dst, u);
    }
  }
  /** `movabs r64, imm64`: always the 10-byte form (REX.W B8+r io). */
  movabs(dst: Gpr, imm: bigint): void {
    if (imm < -(1n << 63n) || imm >= U64_LIMIT)
      throw new RangeError(`immediate ${imm} does not fit in 64 bits`);
    const d = gprNumber(dst);
    this.rex(true, 0, 0, d);
    this.byte(0xb8 | (d & 7));
    this.le64(imm);
  }
  /** `mov r8, imm8` (B0+r ib): sets the low byte of dst, the other 56 bits are kept. */
  movImm8(dst: Gpr, imm: number): void {
    checkRange('imm8', imm, -128, 255);
    const d = gprNumber(dst);
    this.rex(false, 0, 0, d, d >= 4 && d <= 7);
    this.byte(0xb0 | (d & 7));
    this.le(imm, 1);
  }
  /** `mov dst, src` (64-bit, REX.W 89 /r). */
  movReg(dst: Gpr, src: Gpr): void {
    this.rr(true, [0x89], gprNumber(src), gprNumber(dst));
  }
  /** `lea dst, [mem]` (REX.W 8D /r): dst = the effective address. */
  lea(dst: Gpr, mem: Mem): void {
    this.rm(true, [0x8d], gprNumber(dst), mem);
  }
  /**
   * Zero-extending load of `size` bytes: `movzx r32, byte/word` (0F B6 / 0F B7), `mov r32`
   * (8B; a 32-bit write clears bits 63:32) or `mov r64` (REX.W 8B).
   */
  load(size: Width, dst: Gpr, mem: Mem): void {
    checkWidth(size);
    const d = gprNumber(dst);
    if (size === 1) this.rm(false, [0x0f, 0xb6], d, mem);
    else if (size === 2) this.rm(false, [0x0f, 0xb7], d, mem);
    else this.rm(size === 8, [0x8b], d, mem);
  }
  /** Stores the low `size` bytes of src (88, 66 89, 89, REX.W 89). */
  store(size: Width, mem: Mem, src: Gpr): void {
    checkWidth(size);
    const s = gprNumber(src);
    if (size === 1) {
      this.rm(false, [0x88], s, mem, s >= 4 && s <= 7);
      return;
    }
    if (size === 2) this.byte(0x66);
    this.rm(size === 8, [0x89], s, mem);
  }
  /**
   * Stores an immediate: `mov byte/word/dword [mem], imm` (C6 /0 ib, 66 C7 /0 iw, C7 /0 id), or
   * for size 8 `mov qword [mem], imm32` (REX.W C7 /0 id), which sign-extends bit 31. The
   * immediate is taken as its low `min(size, 4)` bytes; values must fit that field signed or
   * unsigned (size 1: -128..255, size 2: -32768..65535, sizes 4/8: -2^31..2^32-1).
   */
  storeImm(size: Width, mem: Mem, imm: number): void {
    checkWidth(size);
    if (size === 1) {
      checkRange('imm8', imm, -128, 255);
      this.rm(false, [0xc6], 0, mem);
      this.le(imm, 1);
    } else if (size === 2) {
      checkRange('imm16', imm, -32768, 65535);
      this.byte(0x66);
      this.rm(false, [0xc7], 0, mem);
      this.le(imm, 2);
    } else {
      checkRange('imm32', imm, INT32_MIN, UINT32_LIMIT - 1);
      this.rm(size === 8, [0xc7], 0, mem);
      this.le(imm, 4);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Arithmetic

  /** ALU op with a sign-extended immediate: 83 /ext ib, the rax short form, or 81 /ext id. */
  private aluImm(ext: number, raxOpcode: number, dst: Gpr, imm: number): void {
    checkRange('imm32', imm, INT32_MIN, INT32_MAX);
    const d = gprNumber(dst);
    if (isInt8(imm)) {
      this.rr(true, [0x83], ext, d);
      this.le(imm, 1);
    } else if (d === 0) {
      this.bytes(0x48, raxOpcode);
      this.le(imm, 4);
    } else {
      this.rr(true, [0x81], ext, d);
      this.le(imm, 4);
    }
  }
  /** `add dst, imm32` (64-bit; the immediate is sign-extended). */
  addImm(dst: Gpr, imm: number): void {
    this.aluImm(0, 0x05, dst, imm);
  }
  /** `add dst, src` (64-bit, REX.W 01 /r). */
  addReg(dst: Gpr, src: Gpr): void {
    this.rr(true, [0x01], gprNumber(src), gprNumber(dst));
  }
  /** `cmp left, imm32`: flags of left − sign-extended imm (64-bit). */
  cmpImm(left: Gpr, imm: number): void {
    this.aluImm(7, 0x3d, left, imm);
  }
  /** `cmp left, right`: flags of left − right (64-bit, REX.W 39 /r with rm = left). */
  cmpReg(left: Gpr, right: Gpr): void {
    this.rr(true, [0x39], gprNumber(right), gprNumber(left));
  }
  /** `dec reg` (64-bit, REX.W FF /1): sets ZF when the result is 0. */
  dec(reg: Gpr): void {
    this.rr(true, [0xff], 1, gprNumber(reg));
  }

  // -------------------------------------------------------------------------------------------
  // Control flow

  /** A new, unbound label. */
  label(): Label {
    return new LabelImpl();
  }
  /** Places `label` at the current offset. */
  bind(label: Label): void {
    const l = this.own(label);
    if (l.offset !== -1) throw new Error(`label already bound at offset ${l.offset}`);
    l.offset = this.len;
  }
  /** `jmp rel32` (E9 cd) to `label`. */
  jmp(label: Label): void {
    this.byte(0xe9);
    this.rel32(label);
  }
  /** `jcc rel32` (0F 80+cc cd) to `label`. */
  jcc(cond: Condition, label: Label): void {
    const cc = CONDITIONS[cond];
    if (cc === undefined) throw new TypeError(`'${String(cond)}' is not a condition code`);
    this.bytes(0x0f, 0x80 | cc);
    this.rel32(label);
  }
  private own(label: Label): LabelImpl {
    if (!(label instanceof LabelImpl)) throw new TypeError('label was not created by Asm.label()');
    return label;
  }
  private rel32(label: Label): void {
    this.fixups.push({ label: this.own(label), at: this.len, from: this.len + 4 });
    this.le(0, 4);
  }

  // -------------------------------------------------------------------------------------------
  // String, port I/O and system instructions

  /** `rep stosb` (F3 AA): store al at [rdi], rcx times, rdi += 1 each (DF = 0). */
  repStosb(): void {
    this.bytes(0xf3, 0xaa);
  }
  /** `rep movsb` (F3 A4): copy [rsi] → [rdi] byte by byte, rcx times, forwards (DF = 0). */
  repMovsb(): void {
    this.bytes(0xf3, 0xa4);
  }
  /** `out imm8, eax` (E7 ib): a 4-byte OUT to port `port` (0..255). */
  outImm8Eax(port: number): void {
    checkRange('port', port, 0, 255);
    this.byte(0xe7);
    this.le(port, 1);
  }
  /** `out dx, eax` (EF): a 4-byte OUT to the port in dx. */
  outDxEax(): void {
    this.byte(0xef);
  }
  /**
   * `vmcall` (0F 01 C1): Intel's hypercall instruction. On AMD it raises #UD, which KVM
   * intercepts and answers by rewriting the instruction in guest memory to `vmmcall`.
   */
  vmcall(): void {
    this.bytes(0x0f, 0x01, 0xc1);
  }
  /** `vmmcall` (0F 01 D9): AMD's hypercall instruction (on Intel KVM rewrites it to `vmcall`). */
  vmmcall(): void {
    this.bytes(0x0f, 0x01, 0xd9);
  }
  /** `hlt` (F4). */
  hlt(): void {
    this.byte(0xf4);
  }

  /** Resolves every jump (all labels must be bound) and returns a copy of the code. */
  finish(): Uint8Array {
    const code = this.buf.slice(0, this.len);
    const view = new DataView(code.buffer);
    for (const f of this.fixups) {
      if (f.label.offset === -1)
        throw new Error(`jump at offset ${f.at - 1} targets a label that was never bound`);
      view.setInt32(f.at, f.label.offset - f.from, true);
    }
    return code;
  }
}
