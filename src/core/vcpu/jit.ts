/**
 * A small JIT for guest programs: the lowered instructions (insn.ts) become one specialised JS
 * function — a `switch (pc)` whose cases fall through in program order, with every operand
 * folded into the code and the software-TLB fast path of loads and stores inlined. The
 * interpreter (vcpu.ts) stays the reference: everything that is not a hot, simple instruction,
 * and every slow path (fault, MMIO, exit), is one interpreter step.
 *
 * Why: an interpreter reading instruction objects spends most of an 8-byte guest load on
 * dispatch; folding the operands and the dispatch away is what brings the guest access path near
 * a plain typed-array loop (the issue's target: ≥ 100 M accesses/s, ≥ 0.25 of the raw loop).
 * What the profile showed (bench/PROFILE.md, "Guest access path") and what the code does for it:
 *
 * - Guest registers live in JS locals (`r<i>`, one per u32 half) while the function runs, and are
 *   written back to `vc.regs` once, when it returns: the typed-array loads and stores of the
 *   register file were most of an access. The instruction budget is a local too.
 * - Nothing that runs inside the function can change the TDP MMU's generation or the memslot
 *   generation (it only reads and writes frames, and refills the TLB from SPTEs without
 *   faulting): the vCPU drops stale TLB entries (`syncTlb`) and checks the code page's
 *   fetchability before calling it, and neither is re-checked per access or per iteration.
 * - A TLB entry is one tag compare: `tlbRead[t] === gfn` for a load, `tlbWrite[t] === gfn` for a
 *   store (the tag is only there when the SPTE is writable).
 * - A run of loads and stores through the same base register, which that run does not change
 *   (`load [r9+0]; load [r9+8]; …`), is one access group: one TLB probe and one in-page check
 *   for the whole span of its displacements, then every access at a fixed offset from one
 *   frame offset. When the span crosses a page or misses, the group runs access by access.
 * - A TLB miss refills the entry from a present SPTE without leaving compiled code
 *   (`vc.tlbRefill`): only a missing SPTE (a fault) or an emulated access goes to the
 *   interpreter.
 *
 * Contract with the vCPU (`JitVcpu`): the function runs until something it does not handle, then
 * returns with `pc` saved in the vCPU —
 *   JIT_STEP  the instruction at pc needs the interpreter (one step, then the JIT resumes);
 *   JIT_KICK  the instruction budget ran out.
 * Budget is charged per loop iteration (the body's length), not per instruction, and the
 * instruction counter is updated by the same amounts when the function returns.
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
/** Inside compiled code only: a loop's function returns to the dispatch loop at `vc.pc`. */
const JIT_CONTINUE = 0;

/** What generated code touches in the vCPU (fields of KvmVcpu, read through this shape). */
export interface JitVcpu {
  pc: number;
  budgetLeft: number;
  readonly stats: { instructions: number };
  readonly regs: Uint32Array;
  /** Read tags: gfn, or NaN (empty). */
  readonly tlbRead: Float64Array;
  /** Write tags: gfn when the SPTE is writable, else NaN. */
  readonly tlbWrite: Float64Array;
  /** Byte offset of the frame's data in its section buffer. */
  readonly tlbOff: Int32Array;
  readonly tlbView: DataView[];
  /**
   * Fills gfn's TLB entry from a present SPTE (no fault, no generation change); whether the
   * entry now allows the access (a read, or a write when `write`).
   */
  tlbRefill(gfn: number, write: boolean): boolean;
}

export type JitFunction = () => number;

const TWO32 = 4294967296;
const PAGE = 4096;

/** Local variable holding u32 half `h` of the register file (2r = lo, 2r + 1 = hi). */
const R = (h: number): string => `r${h}`;

function addrExpr(base: number, disp: number): string {
  if (base < 0) return String(disp);
  const lo = R(2 * base);
  const hi = R(2 * base + 1);
  const d = disp === 0 ? '' : ` + ${disp}`;
  return `(${hi} === 0 ? ${lo} : ${hi} * ${TWO32} + ${lo})${d}`;
}

/** Declares gfn `g` and in-page offset `ip` of the gpa `a`. */
function locate(addr: string): string {
  return `const a = ${addr};
      const g = a >= 0 && a < ${TWO32} ? a >>> 12 : Math.floor(a / ${PAGE});
      const ip = a - g * ${PAGE};`;
}

/**
 * Makes the last-page cache (`cg`: gfn, `cw`: writable, `cdv`/`coff`: its frame) hold page g:
 * unless it already does, a TLB probe — refilled from the SPTEs on a tag miss — or `fail`.
 * The cache is only as old as this call of the function, in which no translation can change.
 */
function translate(write: boolean, fail: string): string {
  return `if (g !== cg${write ? ' || !cw' : ''}) {
        const t = g & 1023;
        if (!(${write ? 'tlbWrite' : 'tlbRead'}[t] === g || vc.tlbRefill(g, ${write}))) ${fail}
        cg = g; cw = tlbWrite[t] === g; cdv = tlbView[t]; coff = tlbOff[t];
      }`;
}

function loadBody(size: number, d: number, o: string): string {
  switch (size) {
    case 8:
      return `${R(d)} = dv.getUint32(${o}, true); ${R(d + 1)} = dv.getUint32(${o} + 4, true);`;
    case 4:
      return `${R(d)} = dv.getUint32(${o}, true); ${R(d + 1)} = 0;`;
    case 2:
      return `${R(d)} = dv.getUint16(${o}, true); ${R(d + 1)} = 0;`;
    default:
      return `${R(d)} = dv.getUint8(${o}); ${R(d + 1)} = 0;`;
  }
}

function storeBody(size: number, lo: string, hi: string, o: string): string {
  switch (size) {
    case 8:
      return `dv.setUint32(${o}, ${lo}, true); dv.setUint32(${o} + 4, ${hi}, true);`;
    case 4:
      return `dv.setUint32(${o}, ${lo}, true);`;
    case 2:
      return `dv.setUint16(${o}, ${lo} & 0xffff, true);`;
    default:
      return `dv.setUint8(${o}, ${lo} & 0xff);`;
  }
}

const isAccess = (k: number): boolean => k === K_LOAD || k === K_STORE || k === K_STOREIMM;
const isAlu = (k: number): boolean => k === K_MOV || k === K_ADD || k === K_ADDREG;

/** The register (index) an instruction writes, or -1. */
function writes(insn: Insn): number {
  return insn.k === K_LOAD || isAlu(insn.k) || insn.k === K_LOOP_INIT || insn.k === K_LOOP_END
    ? insn.dst
    : -1;
}

/** The access at `o` (an offset expression into `dv`), operands folded in. */
function accessBody(insn: Insn, o: string): string {
  if (insn.k === K_LOAD) return loadBody(insn.size, 2 * insn.dst, o);
  const lo = insn.k === K_STORE ? R(2 * insn.src) : String(insn.immLo);
  const hi = insn.k === K_STORE ? R(2 * insn.src + 1) : String(insn.immHi);
  return storeBody(insn.size, lo, hi, o);
}

/** One access on its own: probe, refill on a miss, or hand instruction i to the interpreter. */
function accessAlone(insn: Insn, i: number): string {
  const write = insn.k !== K_LOAD;
  return `{ ${locate(addrExpr(insn.base, insn.disp))}
      if (ip > ${PAGE - insn.size}) { pc = ${i}; break run; }
      ${translate(write, `{ pc = ${i}; break run; }`)}
      const dv = cdv; const o = coff + ip; ${accessBody(insn, 'o')} }`;
}

function aluBody(insn: Insn): string {
  const d = 2 * insn.dst;
  if (insn.k === K_MOV) return `${R(d)} = ${insn.immLo}; ${R(d + 1)} = ${insn.immHi};`;
  const lo2 = insn.k === K_ADD ? String(insn.immLo) : R(2 * insn.src);
  const hi2 = insn.k === K_ADD ? String(insn.immHi) : R(2 * insn.src + 1);
  return insn.k === K_ADD && insn.immHi === 0
    ? `{ const lo = ${R(d)} + ${lo2}; if (lo < ${TWO32}) ${R(d)} = lo; else { ${R(d)} = lo - ${TWO32}; ${R(d + 1)} = (${R(d + 1)} + 1) >>> 0; } }`
    : `{ const lo = ${R(d)} + ${lo2}; ${R(d + 1)} = (${R(d + 1)} + ${hi2} + (lo >= ${TWO32} ? 1 : 0)) >>> 0; ${R(d)} = lo >>> 0; }`;
}

/** Code for instruction i on its own (no grouping); `null` for the interpreter's business. */
function single(insn: Insn, i: number): string | null {
  if (isAccess(insn.k)) return accessAlone(insn, i);
  if (isAlu(insn.k)) return aluBody(insn);
  if (insn.k === K_LOOP_INIT) {
    return `${R(2 * insn.dst)} = ${insn.count >>> 0}; ${R(2 * insn.dst + 1)} = ${Math.floor(insn.count / TWO32)};`;
  }
  if (insn.k === K_LOOP_END) {
    const d = 2 * insn.dst;
    const len = i - insn.target + 1;
    return `if (${R(d)} === 0) { ${R(d)} = 0xffffffff; ${R(d + 1)} = (${R(d + 1)} - 1) >>> 0; } else ${R(d)}--;
        if (${R(d)} !== 0 || ${R(d + 1)} !== 0) {
          budget -= ${len};
          pc = ${insn.target};
          if (budget <= 0) { code = ${JIT_KICK}; break run; }
          continue run;
        }`;
  }
  // fill, copy, cmp, out, hypercall, halt, end: the interpreter's business.
  return null;
}

/** An access group: instructions [first, last] (see the file comment). */
interface Group {
  readonly first: number;
  readonly last: number;
  readonly base: number;
  /** Lowest displacement and one past the highest byte, relative to the base register. */
  readonly lo: number;
  readonly hi: number;
  readonly write: boolean;
}

/**
 * Finds the access groups: from an access, extend over accesses with the same base and over
 * ALU instructions, while the base register keeps its value, up to the last access before
 * anything else — never across a branch target (a loop top enters at its own case).
 */
function findGroups(code: readonly Insn[]): Map<number, Group> {
  const targets = new Set<number>();
  for (const insn of code) if (insn.k === K_LOOP_END) targets.add(insn.target);
  const groups = new Map<number, Group>();
  let i = 0;
  while (i < code.length) {
    const head = code[i] as Insn;
    if (!isAccess(head.k)) {
      i++;
      continue;
    }
    const base = head.base;
    let last = i;
    let accesses = 0;
    let lo = Number.POSITIVE_INFINITY;
    let hi = Number.NEGATIVE_INFINITY;
    let write = false;
    for (let j = i; j < code.length; j++) {
      const insn = code[j] as Insn;
      if (j > i && targets.has(j)) break;
      if (isAccess(insn.k) && insn.base === base) {
        accesses++;
        last = j;
        lo = Math.min(lo, insn.disp);
        hi = Math.max(hi, insn.disp + insn.size);
        if (insn.k !== K_LOAD) write = true;
        if (base >= 0 && writes(insn) === base) break; // a load into the base ends the group
      } else if (!(isAlu(insn.k) && (base < 0 || insn.dst !== base))) {
        break;
      }
    }
    if (accesses >= 2 && hi - lo <= PAGE) groups.set(i, { first: i, last, base, lo, hi, write });
    i = accesses >= 2 && hi - lo <= PAGE ? last + 1 : i + 1;
  }
  return groups;
}

/**
 * Innermost loops whose every instruction compiles (no interpreter step inside): loop top →
 * the index of its LOOP_END.
 */
function innermostLoops(code: readonly Insn[]): Map<number, number> {
  const out = new Map<number, number>();
  for (let end = 0; end < code.length; end++) {
    const e = code[end] as Insn;
    if (e.k !== K_LOOP_END) continue;
    let ok = true;
    for (let j = e.target; j < end && ok; j++) {
      const k = (code[j] as Insn).k;
      ok = isAccess(k) || isAlu(k);
    }
    if (ok && e.target < end) out.set(e.target, end);
  }
  return out;
}

/** Compiles lowered instructions, or returns null where `new Function` is unavailable. */
export function compileJit(code: readonly Insn[], vc: JitVcpu): JitFunction | null {
  const groups = findGroups(code);
  const loopEnds = innermostLoops(code);
  // Register halves the compiled instructions read (loaded on entry) and write (stored back).
  const used = new Set<number>();
  const dirty = new Set<number>();
  const use = (r: number, written: boolean): void => {
    if (r < 0) return;
    for (const h of [2 * r, 2 * r + 1]) {
      used.add(h);
      if (written) dirty.add(h);
    }
  };
  for (const insn of code) {
    if (single(insn, 0) === null) continue;
    use(insn.base, false);
    if (insn.k === K_STORE || insn.k === K_ADDREG) use(insn.src, false);
    use(writes(insn), true);
  }

  const cases: string[] = [];
  /**
   * Cases only entered by pc, after an interpreter step inside a group or a compiled loop: one
   * instruction each, then dispatch again.
   */
  const inner: string[] = [];
  const innerCase = (j: number): void => {
    inner.push(`case ${j}: ${single(code[j] as Insn, j)} pc = ${j + 1}; continue run;`);
  };
  /** Code that continues compiled execution at instruction k: in jitRun, a dispatch. */
  const dispatch = (k: number): string => `pc = ${k}; continue run;`;
  /**
   * Straight-line code for [from, to): groups with their fast path, else instruction by
   * instruction. `resume(k)` continues compiled code at k after a group's slow path.
   */
  const straight = (
    from: number,
    to: number,
    out: string[],
    labelled: boolean,
    resume: (k: number) => string,
  ): void => {
    for (let i = from; i < to; i++) {
      const insn = code[i] as Insn;
      const g = groups.get(i);
      const label = labelled ? `case ${i}: ` : '';
      if (!labelled && i > from) innerCase(i);
      if (g) {
        // The fast path: the whole span in one page, one probe; otherwise access by access.
        const fast: string[] = [];
        for (let j = g.first; j <= g.last; j++) {
          const m = code[j] as Insn;
          fast.push(isAccess(m.k) ? accessBody(m, `o + ${m.disp - g.lo}`) : aluBody(m));
        }
        out.push(`${label}grp${i}: {
        fast${i}: {
          ${locate(addrExpr(g.base, g.lo))}
          if (ip > ${PAGE - (g.hi - g.lo)}) break fast${i};
          ${translate(g.write, `break fast${i};`)}
          const dv = cdv; const o = coff + ip;
          ${fast.join('\n          ')}
          break grp${i};
        }
        ${single(insn, i)}
        ${resume(i + 1)}
      }`);
        for (let j = g.first + 1; j <= g.last; j++) innerCase(j);
        i = g.last;
        continue;
      }
      const body = single(insn, i);
      out.push(`${label}${body ?? `pc = ${i}; break run;`}`);
    }
  };
  const regsIn = [...used].map((h) => `let ${R(h)} = regs[${h}];`).join(' ');
  const regsOut = [...dirty].map((h) => `regs[${h}] = ${R(h)};`).join(' ');
  const reload = [...used].map((h) => `${R(h)} = regs[${h}];`).join(' ');
  const prologue = `const regs = regs0, tlbRead = tlbRead0, tlbWrite = tlbWrite0, tlbOff = tlbOff0, tlbView = tlbView0;
    let cg = NaN, cw = false, cdv = tlbView[0], coff = 0;`;
  /** Functions of their own for the innermost loops that compile whole. */
  const loopFns: string[] = [];
  for (let i = 0; i < code.length; i++) {
    const end = loopEnds.get(i);
    if (end !== undefined) {
      // An innermost loop that compiles whole: a JS loop in a small function of its own, which
      // V8 optimises as well as a hand-written loop (inside the dispatch loop it did not: the
      // switch cost about a third of a 3-instruction iteration). Entering its body anywhere but
      // the top (after an interpreter step) goes through inner cases of jitRun.
      const body: string[] = [];
      straight(i, end, body, false, (k) => `{ pc = ${k}; code = ${JIT_CONTINUE}; break run; }`);
      innerCase(end);
      const e = code[end] as Insn;
      const d = 2 * e.dst;
      loopFns.push(`function loop${i}() {
    ${prologue}
    let pc = ${i};
    let code = ${JIT_STEP};
    let budget = vc.budgetLeft;
    ${regsIn}
    run: {
      loop${i}: for (;;) {
        ${body.join('\n        ')}
        if (${R(d)} === 0) { ${R(d)} = 0xffffffff; ${R(d + 1)} = (${R(d + 1)} - 1) >>> 0; } else ${R(d)}--;
        if (${R(d)} === 0 && ${R(d + 1)} === 0) break loop${i};
        budget -= ${end - i + 1};
        if (budget <= 0) { pc = ${i}; code = ${JIT_KICK}; break run; }
      }
      pc = ${end + 1};
      code = ${JIT_CONTINUE};
    }
    ${regsOut}
    vc.pc = pc;
    vc.budgetLeft = budget;
    return code;
  }`);
      cases.push(`case ${i}: {
          ${regsOut}
          vc.budgetLeft = budget;
          const c = loop${i}();
          ${reload}
          budget = vc.budgetLeft;
          pc = vc.pc;
          if (c !== ${JIT_CONTINUE}) { code = c; break run; }
          continue run;
        }`);
      i = end;
      continue;
    }
    const groupEnd = groups.get(i)?.last ?? i;
    straight(i, groupEnd + 1, cases, true, dispatch);
    i = groupEnd;
  }
  // The factory's parameters are copied into constants of the function, so that nothing has to
  // be reloaded from the closure's context after the calls to vc.tlbRefill.
  const src = `${loopFns.join('\n  ')}
  return function jitRun() {
    ${prologue}
    let pc = vc.pc;
    let code = ${JIT_STEP};
    const budget0 = vc.budgetLeft;
    let budget = budget0;
    ${regsIn}
    run: for (;;) {
      switch (pc) {
        ${cases.join('\n        ')}
        // Only entered by pc (the last instruction, K_END, never falls through to them).
        ${inner.join('\n        ')}
        default: break run;
      }
    }
    ${regsOut}
    vc.pc = pc;
    vc.budgetLeft = budget;
    vc.stats.instructions += budget0 - budget;
    return code;
  };`;
  let factory = factories.get(src);
  if (factory) {
    factories.delete(src); // most recently used last
  } else {
    try {
      factory = new Function('vc', 'regs0', 'tlbRead0', 'tlbWrite0', 'tlbOff0', 'tlbView0', src) as Factory;
    } catch (e) {
      // A Content-Security-Policy without 'unsafe-eval' throws an EvalError; a SyntaxError is
      // a bug here, not a reason to fall back quietly.
      if (e instanceof SyntaxError) throw e;
      return null;
    }
    if (factories.size >= MAX_FACTORIES) factories.delete(factories.keys().next().value as string);
  }
  factories.set(src, factory);
  return factory(vc, vc.regs, vc.tlbRead, vc.tlbWrite, vc.tlbOff, vc.tlbView);
}

type Factory = (...args: unknown[]) => JitFunction;

/**
 * Compiled programs by source, least recently used first. The functions a factory returns (one
 * per vCPU and load) share V8's type feedback and optimised code, so reloading a program — a
 * benchmark's every sample, a VMM restarting a guest — does not start again from the bytecode
 * interpreter and re-learn the same types.
 */
const factories = new Map<string, Factory>();
const MAX_FACTORIES = 64;
