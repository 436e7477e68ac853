/**
 * Declarative scenarios: the same scenarios as `defineScenario`, written as YAML or JSON, checked
 * against a zod schema (docs/decisions/0003-scenario-schema.md). Every error names the field
 * (`guest[3].fill.len`), the value found, and the line and column in the file, found through
 * `yaml`'s `parseDocument` (JSON is parsed the same way: it is YAML 1.2).
 *
 * ```yaml
 * name: hello-dma
 * description: the DMA device writes into guest RAM, the guest checks it
 * vmType: default                  # default | sw-protected
 * memory: { lowRam: 4MiB, backing: memfd }
 * pci: { holes: mmio, ecamBuses: 1 }
 * guest:
 *   - print: "hi\n"
 *   - dma: { dst: lowData, len: 16, expectStatus: done, tag: 1 }
 *   - sync: 1
 *   - halt
 * on:
 *   sync:
 *     1:
 *       - expectShared: { gpa: lowData, hex: "31383f464d545b62" }
 * check:
 *   - serial: "hi\n"
 *   - exits: { reason: KVM_EXIT_HLT, equals: 1 }
 * ```
 *
 * Numbers are integers, `0x…` hex strings, or sizes (`4KiB`, `2MiB`, `1GiB`). Addresses may also
 * name a place in the machine, optionally plus an offset: `lowRam`, `lowData`, `highRam`, `ecam`,
 * `serial`, `dma`, `scratch` (`highRam+0x1000`). An op is an object with one key (or the word
 * `halt`); ops and actions are listed in `OPS` and `ACTIONS` below.
 */

import { LineCounter, parseDocument } from 'yaml';
import { z } from 'zod';
import type { Op, ProgramBuilder, Reg } from '../core/vcpu/program.js';
import { DMA_STATUS_DONE, DMA_STATUS_ERROR } from './devices.js';
import { GuestBuilder, HC_EINVAL_U64 } from './guest.js';
import { HOLE_STRATEGIES } from './holes.js';
import type { MachineLayout } from './layout.js';
import { defineScenario, type Scenario, type ScenarioContext, type ScenarioVariant } from './scenario.js';

// ---- scalars ----------------------------------------------------------------------------------

const SIZE_RE = /^(\d+)\s*(KiB|MiB|GiB)$/;
const UNITS: Record<string, number> = { KiB: 2 ** 10, MiB: 2 ** 20, GiB: 2 ** 30 };

/** Parses a number spec; returns null if it is not one. */
function parseNumber(v: unknown): number | null {
  if (typeof v === 'number') return Number.isSafeInteger(v) ? v : null;
  if (typeof v !== 'string') return null;
  const s = v.trim();
  if (/^-?0x[0-9a-fA-F_]+$/.test(s)) {
    const n = Number.parseInt(s.replaceAll('_', '').replace('0x', ''), 16);
    return Number.isSafeInteger(n) ? n : null;
  }
  if (/^-?\d+$/.test(s)) {
    const n = Number(s);
    return Number.isSafeInteger(n) ? n : null;
  }
  const m = SIZE_RE.exec(s);
  if (m) {
    const n = Number(m[1]) * (UNITS[m[2] as string] as number);
    return Number.isSafeInteger(n) ? n : null;
  }
  return null;
}

const NUMBER_HINT = 'an integer, a 0x… hex string or a size like 4MiB';

function int(min = 0, max = Number.MAX_SAFE_INTEGER) {
  return z.unknown().transform((v, ctx): number => {
    const n = parseNumber(v);
    if (n === null) {
      ctx.addIssue({ code: 'custom', message: `expected ${NUMBER_HINT}`, input: v });
      return z.NEVER;
    }
    if (n < min || n > max) {
      ctx.addIssue({ code: 'custom', message: `expected a value in [${min}, ${max}]`, input: v });
      return z.NEVER;
    }
    return n;
  });
}

/** A u64 (cmp expectations): number or hex string. */
const u64 = z.unknown().transform((v, ctx): bigint => {
  if (typeof v === 'number' && Number.isSafeInteger(v)) return BigInt.asUintN(64, BigInt(v));
  if (typeof v === 'string' && /^0x[0-9a-fA-F_]{1,16}$/.test(v.trim()))
    return BigInt(v.trim().replaceAll('_', ''));
  const n = parseNumber(v);
  if (n !== null) return BigInt.asUintN(64, BigInt(n));
  ctx.addIssue({
    code: 'custom',
    message: 'expected a 64-bit value: an integer or a 0x… hex string',
    input: v,
  });
  return z.NEVER;
});

export const ADDRESS_SYMBOLS = ['lowRam', 'lowData', 'highRam', 'ecam', 'serial', 'dma', 'scratch'] as const;
type AddressSymbol = (typeof ADDRESS_SYMBOLS)[number];
/** An address: a symbol of the layout (or null: absolute) plus an offset. */
interface AddrSpec {
  readonly sym: AddressSymbol | null;
  readonly offset: number;
}

const addr = z.unknown().transform((v, ctx): AddrSpec => {
  const n = parseNumber(v);
  if (n !== null && n >= 0) return { sym: null, offset: n };
  if (typeof v === 'string') {
    const m = /^\s*([A-Za-z]+)\s*(?:\+\s*(\S+))?\s*$/.exec(v);
    const sym = ADDRESS_SYMBOLS.find((s) => s === m?.[1]);
    const off = m?.[2] === undefined ? 0 : parseNumber(m[2]);
    if (sym !== undefined && off !== null && off >= 0) return { sym, offset: off };
  }
  ctx.addIssue({
    code: 'custom',
    message: `expected a guest-physical address: ${NUMBER_HINT}, or ${ADDRESS_SYMBOLS.join('|')} with an optional +offset`,
    input: v,
  });
  return z.NEVER;
});

/** `mov`'s immediate: a 64-bit value, or an address of the machine (`lowData+0x3000`). */
const movImm = z.unknown().transform((v, ctx): bigint | AddrSpec => {
  const asU64 = u64.safeParse(v);
  if (asU64.success) return asU64.data;
  const asAddr = addr.safeParse(v);
  if (asAddr.success) return asAddr.data;
  ctx.addIssue({
    code: 'custom',
    message: `expected a 64-bit value or an address (${ADDRESS_SYMBOLS.join('|')} with an optional +offset)`,
    input: v,
  });
  return z.NEVER;
});

function resolve(a: AddrSpec, l: MachineLayout): number {
  const base: Record<AddressSymbol, number> = {
    lowRam: l.lowRam.gpa,
    lowData: l.lowData.gpa,
    highRam: l.highRam.gpa,
    ecam: l.ecam.gpa,
    serial: l.serialMmio.gpa,
    dma: l.dmaMmio.gpa,
    scratch: l.scratchGpa,
  };
  return (a.sym === null ? 0 : base[a.sym]) + a.offset;
}

const reg = z.enum(['r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15']);
const accessSize = z.union([z.literal(1), z.literal(2), z.literal(4), z.literal(8)], {
  error: 'expected an access size of 1, 2, 4 or 8',
});
/** A memory operand: an address, or `{ base: r9, disp: 16 }`. */
const mem = z.union([z.strictObject({ base: reg, disp: int(-(2 ** 31), 2 ** 31 - 1).optional() }), addr]);
type MemSpec = z.output<typeof mem>;
const tag = int(0, 0xffff_ffff);
/** Bytes: hex, text, or a fill. */
const bytes = z.union([
  z.strictObject({ hex: z.string().regex(/^([0-9a-fA-F]{2})*$/, 'expected an even number of hex digits') }),
  z.strictObject({ text: z.string() }),
  z.strictObject({ fill: z.strictObject({ byte: int(0, 255), len: int(1, 1 << 20) }) }),
]);
type BytesSpec = z.output<typeof bytes>;

function bytesOf(b: BytesSpec): Uint8Array {
  if ('hex' in b) return Uint8Array.from(b.hex.match(/../g) ?? [], (h) => Number.parseInt(h, 16));
  if ('text' in b) return new TextEncoder().encode(b.text);
  return new Uint8Array(b.fill.len).fill(b.fill.byte);
}

// ---- guest ops --------------------------------------------------------------------------------

const OPS = {
  print: z.string(),
  mov: z.strictObject({ dst: reg, imm: movImm }),
  add: z.strictObject({ dst: reg, imm: int(-(2 ** 31), 2 ** 31 - 1) }),
  load: z.strictObject({ size: accessSize, dst: reg, at: mem }),
  store: z.strictObject({ size: accessSize, at: mem, src: reg }),
  storeImm: z.strictObject({ size: accessSize, at: mem, imm: int(-(2 ** 31), 2 ** 32 - 1) }),
  fill: z.strictObject({ at: mem, len: int(1, 1 << 30), byte: int(0, 255) }),
  copy: z.strictObject({ dst: mem, src: mem, len: int(1, 1 << 30) }),
  cmp: z.strictObject({ size: accessSize, at: mem, expect: u64, tag }),
  sync: tag,
  halt: z.literal(true).optional(),
  convert: z.strictObject({
    gpa: addr,
    size: int(0),
    to: z.enum(['private', 'shared']),
    pageSize: z.enum(['4k', '2m', '1g']).optional(),
    expect: z.enum(['ok', 'einval']).optional(),
    tag: tag.optional(),
  }),
  dma: z.strictObject({
    dst: addr,
    len: int(1, 0xffff_ffff),
    expectStatus: z.enum(['done', 'error']).optional(),
    tag: tag.optional(),
  }),
  pciScan: z.strictObject({ out: addr, buses: int(1, 256) }),
} as const;
type BaseOpName = keyof typeof OPS;
type BaseOp = { [K in BaseOpName]: { readonly op: K; readonly args: z.output<(typeof OPS)[K]> } }[BaseOpName];
interface LoopArgs {
  readonly counter: Reg;
  readonly count: number;
  readonly body: readonly DeclOp[];
}
type DeclOp = BaseOp | { readonly op: 'loop'; readonly args: LoopArgs };

/** Parses an object with exactly one known key into `{ op, args }` (shared by ops and actions). */
function oneOf<T extends Record<string, z.ZodType>>(
  table: T,
  what: string,
  shorthand: readonly string[] = [],
) {
  const names = Object.keys(table);
  return z.unknown().transform((v, ctx) => {
    let key: string;
    let arg: unknown;
    if (typeof v === 'string' && shorthand.includes(v)) {
      key = v;
      arg = undefined;
    } else {
      const entries = v !== null && typeof v === 'object' && !Array.isArray(v) ? Object.entries(v) : [];
      if (entries.length !== 1) {
        ctx.addIssue({
          code: 'custom',
          message: `expected ${what}: an object with exactly one of the keys ${names.join(', ')}`,
          input: v,
        });
        return z.NEVER;
      }
      [key, arg] = entries[0] as [string, unknown];
    }
    const schema = table[key];
    if (schema === undefined) {
      ctx.addIssue({
        code: 'custom',
        message: `unknown ${what} '${key}' (known: ${names.join(', ')})`,
        path: [key],
        input: v,
      });
      return z.NEVER;
    }
    const r = schema.safeParse(arg);
    if (!r.success) {
      for (const i of r.error.issues) {
        ctx.addIssue({ code: 'custom', message: i.message, path: [key, ...i.path], input: arg });
      }
      return z.NEVER;
    }
    return { op: key, args: r.data };
  });
}

/** `loop: { counter, count, body: [ops] }` — the body is parsed with the op schema itself. */
const loopSchema: z.ZodType<LoopArgs> = z
  .strictObject({
    counter: reg,
    count: int(1, 2 ** 31),
    body: z.array(z.unknown()).min(1, 'expected at least one op'),
  })
  .transform((v, ctx): LoopArgs => {
    const body: DeclOp[] = [];
    v.body.forEach((item, i) => {
      const r = op.safeParse(item);
      if (r.success) body.push(r.data);
      else
        for (const iss of r.error.issues)
          ctx.addIssue({ code: 'custom', message: iss.message, path: ['body', i, ...iss.path], input: item });
    });
    return { counter: v.counter, count: v.count, body };
  });

const op: z.ZodType<DeclOp> = oneOf({ ...OPS, loop: loopSchema }, 'a guest op', [
  'halt',
]) as unknown as z.ZodType<DeclOp>; // oneOf checked args with the schema of exactly that op

// ---- VMM actions and checks -------------------------------------------------------------------

const ACTIONS = {
  writeShared: z.strictObject({ gpa: addr, data: bytes }),
  expectShared: z.strictObject({ gpa: addr, data: bytes, name: z.string().optional() }),
  convert: z.strictObject({ gpa: addr, size: int(1), to: z.enum(['private', 'shared']) }),
  setDmaPayload: bytes,
  dirtyLog: z.strictObject({ region: z.enum(['low', 'high']), expect: z.array(int(0)) }),
  note: z.strictObject({ key: z.string(), value: z.union([z.string(), z.number(), z.boolean()]) }),
} as const;
type ActionName = keyof typeof ACTIONS;
type DeclAction = {
  [K in ActionName]: { readonly op: K; readonly args: z.output<(typeof ACTIONS)[K]> };
}[ActionName];
// oneOf checked args with the schema of exactly that action (its output type cannot say so).
const action = oneOf(ACTIONS, 'a VMM action') as unknown as z.ZodType<DeclAction>;

const counts = z.strictObject({ equals: int(0).optional(), min: int(0).optional(), max: int(0).optional() });
const CHECKS = {
  serial: z.string(),
  serialContains: z.string(),
  shared: z.strictObject({ gpa: addr, data: bytes }),
  exits: counts.extend({ reason: z.string().regex(/^KVM_EXIT_[A-Z_0-9]+$/, 'expected a KVM_EXIT_* name') }),
  conversions: z.strictObject({
    toPrivate: int(0).optional(),
    toShared: int(0).optional(),
    failed: int(0).optional(),
  }),
  memoryFaults: counts,
  dma: z.strictObject({ transfers: int(0).optional(), refused: int(0).optional() }),
  holesUsed: z.enum(HOLE_STRATEGIES),
  privateBytes: z.strictObject({ region: z.enum(['low', 'high']), equals: int(0) }),
} as const;
type CheckName = keyof typeof CHECKS;
type DeclCheck = {
  [K in CheckName]: { readonly op: K; readonly args: z.output<(typeof CHECKS)[K]> };
}[CheckName];
// oneOf checked args with the schema of exactly that check.
const checkItem = oneOf(CHECKS, 'a check') as unknown as z.ZodType<DeclCheck>;

// ---- the scenario -----------------------------------------------------------------------------

const backing = z.enum(['auto', 'memfd', 'guest_memfd', 'private-memfd']);
const memory = z.strictObject({
  lowRam: int(2 ** 21),
  highRam: int(0).optional(),
  backing: backing.optional(),
  highBacking: backing.optional(),
  sharedDiscard: z.enum(['punch-hole', 'madv-remove']).optional(),
  dirtyLog: z.array(z.enum(['low', 'high'])).optional(),
});
const pci = z.strictObject({ holes: z.enum(HOLE_STRATEGIES).optional(), ecamBuses: int(1, 256).optional() });
const host = z.strictObject({
  gmemLifetime: z.enum(['file-pins-vm', 'slot-pins-file']).optional(),
  extensions: z
    .strictObject({ privateMemfd: z.boolean().optional(), allones: z.boolean().optional() })
    .optional(),
});
const kebab = z.string().regex(/^[a-z0-9]+(-[a-z0-9]+)*$/, 'expected a kebab-case name');
const vmType = z.enum(['default', 'sw-protected']);
const variant = z.strictObject({
  name: kebab,
  description: z.string().optional(),
  vmType: vmType.optional(),
  memory: memory.partial().optional(),
  pci: pci.optional(),
  host: host.optional(),
});

export const scenarioSchema = z.strictObject({
  name: kebab,
  description: z.string().min(1, 'expected a non-empty description'),
  vmType,
  memory,
  pci: pci.optional(),
  host: host.optional(),
  variants: z.array(variant).optional(),
  expectOutcome: z.enum(['halt', 'memory-fault', 'error', 'limit']).optional(),
  guest: z.array(op).min(1, 'expected at least one guest op'),
  on: z
    .strictObject({
      sync: z.record(z.string().regex(/^\d+$/, 'expected a sync tag number'), z.array(action)),
    })
    .optional(),
  check: z.array(checkItem).optional(),
});
export type DeclScenario = z.output<typeof scenarioSchema>;

// ---- errors with lines ------------------------------------------------------------------------

export interface ValidationIssue {
  /** The field, as `guest[3].fill.len`. */
  readonly path: string;
  readonly message: string;
  /** The value found there, as JSON (truncated), or "missing". */
  readonly value: string;
  /** 1-based line and column in the source, when known. */
  readonly line: number | null;
  readonly column: number | null;
}

export class ScenarioValidationError extends Error {
  override readonly name = 'ScenarioValidationError';
  constructor(
    readonly source: string,
    readonly issues: readonly ValidationIssue[],
  ) {
    super(
      `${source}: ${issues.length} problem${issues.length === 1 ? '' : 's'}\n` +
        issues
          .map(
            (i) =>
              `  ${source}:${i.line ?? '?'}:${i.column ?? '?'}: ${i.path || '(top level)'}: ${i.message}, got ${i.value}`,
          )
          .join('\n'),
    );
  }
}

function pathText(path: readonly PropertyKey[]): string {
  let out = '';
  for (const k of path) {
    if (typeof k === 'number') out += `[${k}]`;
    else out += out === '' ? String(k) : `.${String(k)}`;
  }
  return out;
}

function shortJson(v: unknown): string {
  if (v === undefined) return 'missing';
  let s: string;
  try {
    s = JSON.stringify(v) ?? String(v);
  } catch {
    s = String(v);
  }
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/**
 * Parses and validates a YAML or JSON scenario; throws `ScenarioValidationError` (with line
 * numbers) if it is not one. `source` names the text in messages (a file name).
 */
export function parseScenario(text: string, source = 'scenario.yaml'): Scenario {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ScenarioValidationError(
      source,
      doc.errors.map((e) => {
        const pos = lineCounter.linePos(e.pos[0]);
        return {
          path: '',
          message: `not valid YAML/JSON (${e.code}): ${e.message.split('\n')[0] ?? ''}`,
          value: shortJson(text.slice(e.pos[0], e.pos[0] + 20)),
          line: pos.line,
          column: pos.col,
        };
      }),
    );
  }
  const data: unknown = doc.toJS();
  const r = scenarioSchema.safeParse(data);
  if (!r.success) {
    const issues = r.error.issues.flatMap((i): ValidationIssue[] => {
      const paths =
        i.code === 'unrecognized_keys' ? i.keys.map((k) => [...i.path, k]) : [[...i.path] as PropertyKey[]];
      return paths.map((p) => {
        // The deepest node that exists along the path carries the position.
        let node: unknown = null;
        let at = p.length;
        for (; at >= 0; at--) {
          node = doc.getIn(p.slice(0, at) as (string | number)[], true);
          if (node !== undefined) break;
        }
        const range = (node as { range?: [number, number, number] } | null)?.range;
        const pos = range ? lineCounter.linePos(range[0]) : null;
        const value =
          i.code === 'invalid_key'
            ? p[p.length - 1]
            : at === p.length
              ? doc.getIn(p as (string | number)[])
              : undefined;
        const json =
          value !== null && typeof value === 'object' && 'toJSON' in value
            ? (value as { toJSON(): unknown }).toJSON()
            : value;
        return {
          path: pathText(p),
          message:
            i.code === 'unrecognized_keys'
              ? 'unknown field'
              : i.code === 'invalid_key'
                ? `bad key: ${i.issues[0]?.message ?? i.message}`
                : i.message,
          value: shortJson(json),
          line: pos?.line ?? null,
          column: pos?.col ?? null,
        };
      });
    });
    throw new ScenarioValidationError(source, issues);
  }
  return toScenario(r.data, source);
}

// ---- from declaration to Scenario -------------------------------------------------------------

function memOf(m: MemSpec, l: MachineLayout): number | { base: Reg; disp: number } {
  return 'base' in m ? { base: m.base, disp: m.disp ?? 0 } : resolve(m, l);
}

function emit(b: GuestBuilder, ops: readonly DeclOp[]): void {
  const l = b.layout;
  for (const o of ops) {
    switch (o.op) {
      case 'print':
        b.print(o.args);
        break;
      case 'mov':
        b.mov(o.args.dst, typeof o.args.imm === 'bigint' ? o.args.imm : resolve(o.args.imm, l));
        break;
      case 'add':
        b.add(o.args.dst, o.args.imm);
        break;
      case 'load':
        b.load(o.args.size, o.args.dst, memOf(o.args.at, l));
        break;
      case 'store':
        b.store(o.args.size, memOf(o.args.at, l), o.args.src);
        break;
      case 'storeImm':
        b.storeImm(o.args.size, memOf(o.args.at, l), o.args.imm);
        break;
      case 'fill':
        b.fill(memOf(o.args.at, l), o.args.len, o.args.byte);
        break;
      case 'copy':
        b.copy(memOf(o.args.dst, l), memOf(o.args.src, l), o.args.len);
        break;
      case 'cmp':
        b.cmp(o.args.size, memOf(o.args.at, l), o.args.expect, o.args.tag);
        break;
      case 'sync':
        b.sync(o.args);
        break;
      case 'halt':
        b.halt();
        break;
      case 'convert': {
        const a = o.args;
        const gpa = resolve(a.gpa, l);
        if (a.expect === undefined) b.mapGpaRange(gpa, a.size, a.to, { pageSize: a.pageSize ?? '4k' });
        else
          b.convertExpect(
            gpa,
            a.size,
            a.to,
            a.expect === 'ok' ? 0 : HC_EINVAL_U64,
            a.tag ?? 0,
            a.pageSize ?? '4k',
          );
        break;
      }
      case 'dma':
        b.dma(resolve(o.args.dst, l), o.args.len);
        if (o.args.expectStatus !== undefined) {
          b.expectDmaStatus(
            o.args.expectStatus === 'done' ? DMA_STATUS_DONE : DMA_STATUS_ERROR,
            o.args.tag ?? 0,
          );
        }
        break;
      case 'pciScan':
        b.pciScan(resolve(o.args.out, l), o.args.buses);
        break;
      case 'loop':
        // The loop body is plain program ops (helpers are expanded by the outer builder only).
        b.loop(o.args.counter, o.args.count, (inner) => {
          const sub = new GuestBuilder(l);
          emit(sub, o.args.body);
          for (const x of sub.build().ops) pushOp(inner, x);
        });
        break;
    }
  }
}

/** Appends one built op to a plain builder (loop bodies). */
function pushOp(b: ProgramBuilder, x: Op): void {
  switch (x.op) {
    case 'mov':
      b.mov(x.dst, x.imm);
      break;
    case 'add':
      b.add(x.dst, x.imm);
      break;
    case 'addReg':
      b.addReg(x.dst, x.src);
      break;
    case 'load':
      b.load(x.size, x.dst, x.addr);
      break;
    case 'store':
      b.store(x.size, x.addr, x.src);
      break;
    case 'storeImm':
      b.storeImm(x.size, x.addr, x.imm);
      break;
    case 'fill':
      b.fill(x.addr, x.len, x.byte);
      break;
    case 'copy':
      b.copy(x.dst, x.src, x.len);
      break;
    case 'cmp':
      b.cmp(x.size, x.addr, x.expect, x.tag);
      break;
    case 'loop':
      b.loop(x.counter, x.count, (inner) => {
        for (const y of x.body) pushOp(inner, y);
      });
      break;
    case 'sync':
      b.sync(x.tag);
      break;
    case 'hypercall':
      b.hypercall(x.nr, x.args, x.ret);
      break;
    case 'halt':
      b.halt();
      break;
  }
}

function countOk(
  n: number,
  c: { equals?: number | undefined; min?: number | undefined; max?: number | undefined },
): boolean {
  return (
    (c.equals === undefined || n === c.equals) &&
    (c.min === undefined || n >= c.min) &&
    (c.max === undefined || n <= c.max)
  );
}

function runAction(a: DeclAction, ctx: ScenarioContext, where: string): void {
  const m = ctx.machine;
  const l = ctx.layout;
  switch (a.op) {
    case 'writeShared':
      m.writeShared(resolve(a.args.gpa, l), bytesOf(a.args.data));
      break;
    case 'expectShared': {
      const want = bytesOf(a.args.data);
      const got = m.readShared(resolve(a.args.gpa, l), want.length);
      ctx.check(
        a.args.name ?? `${where}: shared memory holds the expected bytes`,
        got.every((x, i) => x === want[i]),
      );
      break;
    }
    case 'convert': {
      const r = m.conversions.convert({
        gpa: resolve(a.args.gpa, l),
        size: a.args.size,
        toPrivate: a.args.to === 'private',
        source: 'vmm',
      });
      ctx.check(`${where}: the VMM converts to ${a.args.to}`, r.ok, r.ok ? '' : r.reason);
      break;
    }
    case 'setDmaPayload':
      m.dma.payload = bytesOf(a.args);
      break;
    case 'dirtyLog': {
      const region = m.region(a.args.region);
      const bitmap = new Uint8Array(Math.ceil(region.range.size / 4096 / 64) * 8);
      m.vm.getDirtyLog({ slot: region.slot, dirtyBitmap: bitmap });
      const pages: number[] = [];
      bitmap.forEach((byte, i) => {
        for (let bit = 0; bit < 8; bit++) if ((byte >> bit) & 1) pages.push(i * 8 + bit);
      });
      ctx.expectEqual(`${where}: dirty pages of ${a.args.region} RAM`, pages, [...a.args.expect]);
      break;
    }
    case 'note':
      ctx.note(a.args.key, a.args.value);
      break;
  }
}

function runCheck(c: DeclCheck, ctx: ScenarioContext, where: string): void {
  const m = ctx.machine;
  switch (c.op) {
    case 'serial':
      ctx.expectEqual(`${where}: serial output`, ctx.serial, c.args);
      break;
    case 'serialContains':
      ctx.check(
        `${where}: serial output contains ${JSON.stringify(c.args)}`,
        ctx.serial.includes(c.args),
        ctx.serial,
      );
      break;
    case 'shared': {
      const want = bytesOf(c.args.data);
      const got = m.readShared(resolve(c.args.gpa, ctx.layout), want.length);
      ctx.check(
        `${where}: shared memory holds the expected bytes`,
        got.every((x, i) => x === want[i]),
      );
      break;
    }
    case 'exits': {
      const n = m.exits[c.args.reason] ?? 0;
      ctx.check(`${where}: ${c.args.reason} exits`, countOk(n, c.args), `${n}`);
      break;
    }
    case 'memoryFaults':
      ctx.check(
        `${where}: memory-fault exits`,
        countOk(m.runStats.memoryFaultExits, c.args),
        `${m.runStats.memoryFaultExits}`,
      );
      break;
    case 'conversions': {
      const s = m.conversions.stats;
      for (const k of ['toPrivate', 'toShared', 'failed'] as const) {
        const want = c.args[k];
        if (want !== undefined) ctx.expectEqual(`${where}: conversions.${k}`, s[k], want);
      }
      break;
    }
    case 'dma':
      if (c.args.transfers !== undefined)
        ctx.expectEqual(`${where}: DMA transfers`, m.dma.stats.transfers, c.args.transfers);
      if (c.args.refused !== undefined)
        ctx.expectEqual(`${where}: DMA refused`, m.dma.stats.refused, c.args.refused);
      break;
    case 'holesUsed':
      ctx.expectEqual(`${where}: hole strategy used`, m.holeReport.used, c.args);
      break;
    case 'privateBytes': {
      const p = m.region(c.args.region).private;
      ctx.expectEqual(
        `${where}: private bytes of ${c.args.region} RAM`,
        p === null ? 0 : m.allocatedBytes(p),
        c.args.equals,
      );
      break;
    }
  }
}

function memorySpec(m: z.output<ReturnType<typeof memory.partial>>) {
  return {
    ...(m.lowRam === undefined ? {} : { lowRamBytes: m.lowRam }),
    ...(m.highRam === undefined ? {} : { highRamBytes: m.highRam }),
    ...(m.backing === undefined ? {} : { backing: m.backing }),
    ...(m.highBacking === undefined ? {} : { highBacking: m.highBacking }),
    ...(m.sharedDiscard === undefined ? {} : { sharedDiscard: m.sharedDiscard }),
    ...(m.dirtyLog === undefined ? {} : { dirtyLog: m.dirtyLog }),
  };
}

function hostRequest(h: z.output<typeof host> | undefined) {
  if (h === undefined) return {};
  const ext = h.extensions;
  return {
    ...(h.gmemLifetime === undefined ? {} : { gmemLifetime: h.gmemLifetime }),
    ...(ext === undefined
      ? {}
      : {
          extensions: {
            ...(ext.privateMemfd === undefined ? {} : { privateMemfd: ext.privateMemfd }),
            ...(ext.allones === undefined ? {} : { allones: ext.allones }),
          },
        }),
  };
}

function pciSpec(p: z.output<typeof pci> | undefined) {
  return {
    ...(p?.holes === undefined ? {} : { holes: p.holes }),
    ...(p?.ecamBuses === undefined ? {} : { ecamBuses: p.ecamBuses }),
  };
}

/** The validated declaration as a runnable `Scenario`. */
function toScenario(d: DeclScenario, source: string): Scenario {
  const variants: ScenarioVariant[] | undefined = d.variants?.map((v) => ({
    name: v.name,
    ...(v.description === undefined ? {} : { description: v.description }),
    ...(v.vmType === undefined ? {} : { vmType: v.vmType }),
    ...(v.memory === undefined ? {} : { memory: memorySpec(v.memory) }),
    ...(v.pci === undefined ? {} : { pci: pciSpec(v.pci) }),
    ...(v.host === undefined ? {} : { host: hostRequest(v.host) }),
  }));
  const onSync = d.on?.sync;
  const checks = d.check;
  return defineScenario({
    name: d.name,
    description: `${d.description} (${source})`,
    vmType: d.vmType,
    memory: { lowRamBytes: d.memory.lowRam, ...memorySpec(d.memory) },
    pci: pciSpec(d.pci),
    host: hostRequest(d.host),
    ...(variants === undefined ? {} : { variants }),
    ...(d.expectOutcome === undefined ? {} : { expectOutcome: d.expectOutcome }),
    guest: (b) => emit(b, d.guest),
    ...(onSync === undefined
      ? {}
      : {
          on: {
            sync: (t: number, ctx: ScenarioContext) => {
              const actions = onSync[String(t)];
              if (actions === undefined) return;
              actions.forEach((a, i) => {
                runAction(a, ctx, `on.sync.${t}[${i}]`);
              });
            },
          },
        }),
    ...(checks === undefined
      ? {}
      : {
          check: (ctx: ScenarioContext) => {
            checks.forEach((c, i) => {
              runCheck(c, ctx, `check[${i}]`);
            });
          },
        }),
  });
}
