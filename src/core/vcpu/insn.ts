/**
 * Guest programs lowered to a flat instruction array for the interpreter (vcpu.ts): loops become
 * a counter initialisation and a backward branch, registers become indices, immediates are split
 * into 32-bit halves. Every instruction object has the same shape, so the interpreter's dispatch
 * stays monomorphic.
 *
 * Register indices follow x86's encoding order: rax 0, rcx 1, rdx 2, rbx 3, rsp 4, rbp 5, rsi 6,
 * rdi 7, r8..r15 8..15. A register is two u32 halves (lo at 2i, hi at 2i + 1), so 64-bit values
 * are exact without BigInt on the hot path.
 *
 * The vCPU's rip is `codeGpa + 16 × index` of the current instruction (a model convention; the
 * compiled x86 code of the real backend has its own addresses).
 */

import type { Addr, Op, Operand, Program, Reg } from './program.js';
import { REPORT_PORT, SYNC_PORT } from './program.js';

export const K_MOV = 1;
export const K_ADD = 2;
export const K_ADDREG = 3;
export const K_LOAD = 4;
export const K_STORE = 5;
export const K_STOREIMM = 6;
export const K_FILL = 7;
export const K_COPY = 8;
export const K_CMP = 9;
export const K_LOOP_INIT = 10;
export const K_LOOP_END = 11;
export const K_OUT = 12;
export const K_HYPERCALL = 13;
export const K_HALT = 14;
/** Past the last instruction: behaves as HLT, forever (the compiled code appends a HLT too). */
export const K_END = 15;

export const REG_RAX = 0;
export const REG_RCX = 1;
export const REG_RDX = 2;
export const REG_RBX = 3;
export const REG_RSI = 6;
export const REG_RDI = 7;
export const REG_NAMES = [
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

export function regIndex(r: Reg): number {
  return Number(r.slice(1));
}

/** An operand of a hypercall: a register index, or an immediate (lo/hi). */
export interface HcArg {
  readonly reg: number;
  readonly lo: number;
  readonly hi: number;
}

export class Insn {
  k = 0;
  size = 0;
  dst = -1;
  base = -1;
  disp = 0;
  src = -1;
  /** Second address (copy source): base register or -1, and displacement. */
  base2 = -1;
  disp2 = 0;
  immLo = 0;
  immHi = 0;
  len = 0;
  byte = 0;
  tag = 0;
  port = 0;
  /** Loop: the counter's initial value; loop end: the instruction index to branch back to. */
  count = 0;
  target = 0;
  nr = 0;
  args: readonly HcArg[] = [];
  constructor(k: number) {
    this.k = k;
  }
}

function splitU64(v: bigint): [number, number] {
  const u = BigInt.asUintN(64, v);
  return [Number(u & 0xffffffffn), Number(u >> 32n)];
}

function setAddr(i: Insn, a: Addr, second = false): void {
  // The effective address is formed from it in 64-bit integer arithmetic (vcpu.ts `ea`).
  if (!Number.isInteger(a.disp)) throw new TypeError(`displacement ${a.disp} is not an integer`);
  const base = a.base === undefined ? -1 : regIndex(a.base);
  if (second) {
    i.base2 = base;
    i.disp2 = a.disp;
  } else {
    i.base = base;
    i.disp = a.disp;
  }
}

function hcArg(o: Operand): HcArg {
  if (typeof o === 'string') return { reg: regIndex(o), lo: 0, hi: 0 };
  const [lo, hi] = splitU64(BigInt(o));
  return { reg: -1, lo, hi };
}

/** Lowers a program to instructions; the last one is always K_END. */
export function lower(program: Program): Insn[] {
  const out: Insn[] = [];
  const emit = (ops: readonly Op[]): void => {
    for (const op of ops) {
      switch (op.op) {
        case 'mov': {
          const i = new Insn(K_MOV);
          i.dst = regIndex(op.dst);
          [i.immLo, i.immHi] = splitU64(op.imm);
          out.push(i);
          break;
        }
        case 'add': {
          const i = new Insn(K_ADD);
          i.dst = regIndex(op.dst);
          [i.immLo, i.immHi] = splitU64(BigInt(op.imm));
          out.push(i);
          break;
        }
        case 'addReg': {
          const i = new Insn(K_ADDREG);
          i.dst = regIndex(op.dst);
          i.src = regIndex(op.src);
          out.push(i);
          break;
        }
        case 'load': {
          const i = new Insn(K_LOAD);
          i.size = op.size;
          i.dst = regIndex(op.dst);
          setAddr(i, op.addr);
          out.push(i);
          break;
        }
        case 'store': {
          const i = new Insn(K_STORE);
          i.size = op.size;
          i.src = regIndex(op.src);
          setAddr(i, op.addr);
          out.push(i);
          break;
        }
        case 'storeImm': {
          const i = new Insn(K_STOREIMM);
          i.size = op.size;
          // Sign-extended to 64 bits, as `mov qword [m], imm32` does.
          [i.immLo, i.immHi] = splitU64(BigInt(op.size === 8 ? op.imm | 0 : op.imm >>> 0));
          setAddr(i, op.addr);
          out.push(i);
          break;
        }
        case 'fill': {
          const i = new Insn(K_FILL);
          i.len = op.len;
          i.byte = op.byte;
          setAddr(i, op.addr);
          out.push(i);
          break;
        }
        case 'copy': {
          const i = new Insn(K_COPY);
          i.len = op.len;
          setAddr(i, op.dst);
          setAddr(i, op.src, true);
          out.push(i);
          break;
        }
        case 'cmp': {
          const i = new Insn(K_CMP);
          i.size = op.size;
          [i.immLo, i.immHi] = splitU64(op.expect);
          i.tag = op.tag >>> 0;
          setAddr(i, op.addr);
          out.push(i);
          break;
        }
        case 'loop': {
          const init = new Insn(K_LOOP_INIT);
          init.dst = regIndex(op.counter);
          init.count = op.count;
          out.push(init);
          const top = out.length;
          emit(op.body);
          const end = new Insn(K_LOOP_END);
          end.dst = init.dst;
          end.target = top;
          out.push(end);
          break;
        }
        case 'sync': {
          const i = new Insn(K_OUT);
          i.port = SYNC_PORT;
          i.tag = op.tag >>> 0;
          out.push(i);
          break;
        }
        case 'hypercall': {
          const i = new Insn(K_HYPERCALL);
          i.nr = op.nr;
          i.args = op.args.map(hcArg);
          i.dst = regIndex(op.ret);
          out.push(i);
          break;
        }
        case 'halt':
          out.push(new Insn(K_HALT));
          break;
      }
    }
  };
  emit(program.ops);
  out.push(new Insn(K_END));
  return out;
}

export { REPORT_PORT };
