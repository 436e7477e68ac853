/**
 * A small JIT for guest programs: the lowered instructions (insn.ts) become one specialised JS
 * function — a `switch (pc)` whose cases fall through in program order, with every operand
 * folded into the code and the software-TLB fast path of loads and stores inlined. The
 * interpreter (vcpu.ts) stays the reference: everything that is not a hot, simple instruction,
 * and every slow path (TLB miss, fault, MMIO, exit), is one interpreter step.
 *
 * Why: an interpreter reading instruction objects spends most of an 8-byte guest load on
 * dispatch; folding the operands and the dispatch away is what brings the guest access path near
 * a plain typed-array loop (the target: ≥ 100 M accesses/s, ≥ 0.25 of the raw loop).
 *
 * Contract with the vCPU (`JitVcpu`): the function runs until something it does not handle, then
 * returns with `pc` saved in the vCPU —
 *   JIT_STEP  the instruction at pc needs the interpreter (one step, then the JIT resumes);
 *   JIT_KICK  the instruction budget ran out.
 * Budget is charged per loop iteration (the body's length), not per instruction, and the
 * instruction counter is updated at the same points. The code page's fetchability is rechecked
 * at loop back-edges (by returning JIT_STEP when the memslot generation moved).
 *
 * `new Function` is standard JavaScript and runs in browsers; a page with a CSP that forbids it
 * gets the interpreter (`compileJit` returns null).
 */

import {
  type Insn,
  K_ADD,
  K_ADDREG,
  K_LOAD,
  K_LOOP_END,
  K_LOOP_INIT,
  K_MOV,
  K_STORE,
  K_STOREIMM,
} from './insn.js';

export const JIT_STEP = 100;
export const JIT_KICK = 101;

/** What generated code touches in the vCPU (fields of KvmVcpu, read through this shape). */
export interface JitVcpu {
  pc: number;
  budgetLeft: number;
  readonly stats: { instructions: number };
  fetchGen: number;
  readonly regs: Uint32Array;
  readonly tlbGfn: Float64Array;
  readonly tlbGen: Int32Array;
  readonly tlbWritable: Uint8Array;
  readonly tlbOff: Int32Array;
  readonly tlbView: (DataView | null)[];
}

export type JitFunction = () => number;

const TWO32 = 4294967296;

function addrExpr(base: number, disp: number): string {
  if (base < 0) return String(disp);
  const lo = `regs[${2 * base}]`;
  const hi = `regs[${2 * base + 1}]`;
  return `((${hi} === 0 ? ${lo} : ${hi} * ${TWO32} + ${lo}) + ${disp})`;
}

/** The TLB probe for an access at `addr` of `size` bytes: sets gfn, t, ip; true on a hit. */
function probe(addr: string, size: number, write: boolean): string {
  return `const gpa = ${addr};
      const gfn = gpa < 2147483648 ? gpa >>> 12 : Math.floor(gpa / 4096);
      const t = gfn & 1023;
      const ip = gpa - gfn * 4096;
      if (tlbGfn[t] === gfn && tlbGen[t] === mmu.generation && ip <= ${4096 - size}${write ? ' && tlbWritable[t] === 1' : ''})`;
}

function loadBody(size: number, d: number): string {
  switch (size) {
    case 8:
      return `regs[${d}] = dv.getUint32(o, true); regs[${d + 1}] = dv.getUint32(o + 4, true);`;
    case 4:
      return `regs[${d}] = dv.getUint32(o, true); regs[${d + 1}] = 0;`;
    case 2:
      return `regs[${d}] = dv.getUint16(o, true); regs[${d + 1}] = 0;`;
    default:
      return `regs[${d}] = dv.getUint8(o); regs[${d + 1}] = 0;`;
  }
}

function storeBody(size: number, lo: string, hi: string): string {
  switch (size) {
    case 8:
      return `dv.setUint32(o, ${lo}, true); dv.setUint32(o + 4, ${hi}, true);`;
    case 4:
      return `dv.setUint32(o, ${lo}, true);`;
    case 2:
      return `dv.setUint16(o, (${lo}) & 0xffff, true);`;
    default:
      return `dv.setUint8(o, (${lo}) & 0xff);`;
  }
}

/** Hands instruction i to the interpreter. */
function step(i: number): string {
  return `vc.pc = ${i}; return ${JIT_STEP};`;
}

/** Compiles lowered instructions, or returns null where `new Function` is unavailable. */
export function compileJit(
  code: readonly Insn[],
  vc: JitVcpu,
  mmu: { readonly generation: number },
  memslotGen: () => number,
): JitFunction | null {
  const cases: string[] = [];
  // The length of each loop body (for budget charging), keyed by the LOOP_END index.
  for (let i = 0; i < code.length; i++) {
    const insn = code[i] as Insn;
    let body: string;
    switch (insn.k) {
      case K_MOV:
        body = `regs[${2 * insn.dst}] = ${insn.immLo}; regs[${2 * insn.dst + 1}] = ${insn.immHi};`;
        break;
      case K_ADD:
      case K_ADDREG: {
        const d = 2 * insn.dst;
        const lo2 = insn.k === K_ADD ? String(insn.immLo) : `regs[${2 * insn.src}]`;
        const hi2 = insn.k === K_ADD ? String(insn.immHi) : `regs[${2 * insn.src + 1}]`;
        body =
          insn.k === K_ADD && insn.immHi === 0
            ? `{ const lo = regs[${d}] + ${lo2}; if (lo < ${TWO32}) regs[${d}] = lo; else { regs[${d}] = lo - ${TWO32}; regs[${d + 1}] = (regs[${d + 1}] + 1) >>> 0; } }`
            : `{ const lo = regs[${d}] + ${lo2}; regs[${d + 1}] = (regs[${d + 1}] + ${hi2} + (lo >= ${TWO32} ? 1 : 0)) >>> 0; regs[${d}] = lo >>> 0; }`;
        break;
      }
      case K_LOAD:
        body = `{ ${probe(addrExpr(insn.base, insn.disp), insn.size, false)} {
        const dv = tlbView[t]; const o = tlbOff[t] + ip; ${loadBody(insn.size, 2 * insn.dst)}
      } else { ${step(i)} } }`;
        break;
      case K_STORE:
      case K_STOREIMM: {
        const lo = insn.k === K_STORE ? `regs[${2 * insn.src}]` : String(insn.immLo);
        const hi = insn.k === K_STORE ? `regs[${2 * insn.src + 1}]` : String(insn.immHi);
        body = `{ ${probe(addrExpr(insn.base, insn.disp), insn.size, true)} {
        const dv = tlbView[t]; const o = tlbOff[t] + ip; ${storeBody(insn.size, lo, hi)}
      } else { ${step(i)} } }`;
        break;
      }
      case K_LOOP_INIT:
        body = `regs[${2 * insn.dst}] = ${insn.count >>> 0}; regs[${2 * insn.dst + 1}] = ${Math.floor(insn.count / TWO32)};`;
        break;
      case K_LOOP_END: {
        const d = 2 * insn.dst;
        const len = i - insn.target + 1;
        body = `{ let lo = regs[${d}]; let hi = regs[${d + 1}];
        if (lo === 0) { lo = 0xffffffff; hi = (hi - 1) >>> 0; } else lo--;
        regs[${d}] = lo; regs[${d + 1}] = hi;
        if (lo !== 0 || hi !== 0) {
          vc.stats.instructions += ${len};
          vc.budgetLeft -= ${len};
          if (vc.budgetLeft <= 0) { vc.pc = ${insn.target}; return ${JIT_KICK}; }
          if (vc.fetchGen !== memslotGen()) { vc.pc = ${insn.target}; return ${JIT_STEP}; }
          pc = ${insn.target}; continue;
        } }`;
        break;
      }
      default:
        // fill, copy, cmp, out, hypercall, halt, end: the interpreter's business.
        body = step(i);
    }
    cases.push(`case ${i}: ${body}`);
  }
  const src = `return function jitRun() {
    let pc = vc.pc;
    for (;;) {
      switch (pc) {
        ${cases.join('\n        ')}
        default: vc.pc = pc; return ${JIT_STEP};
      }
    }
  };`;
  try {
    const factory = new Function(
      'vc',
      'regs',
      'tlbGfn',
      'tlbGen',
      'tlbWritable',
      'tlbOff',
      'tlbView',
      'mmu',
      'memslotGen',
      src,
    ) as (...args: unknown[]) => JitFunction;
    return factory(vc, vc.regs, vc.tlbGfn, vc.tlbGen, vc.tlbWritable, vc.tlbOff, vc.tlbView, mmu, memslotGen);
  } catch {
    return null; // e.g. a Content-Security-Policy without 'unsafe-eval'
  }
}
