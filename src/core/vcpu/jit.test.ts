/**
 * The JIT (jit.ts) against the interpreter, the reference: random programs run on two identical
 * VMs, one per engine, must give the same exits, registers and memory — including MMIO exits in
 * the middle of loops, page-crossing accesses, TLB misses after zaps, and budget kicks.
 */
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { expectNoLeaks, MiB } from '../../../test/helpers.js';
import { vmWithRam } from '../../../test/kvm_helpers.js';
import { type Op, type Program, REGS, type Reg } from './program.js';
import type { KvmVcpu } from './vcpu.js';

afterEach(expectNoLeaks);

const reg = fc.constantFrom(...REGS) as fc.Arbitrary<Reg>;
/** Addresses: RAM pages (some at page ends, so accesses cross), and an MMIO hole above RAM. */
const addr = fc.oneof(
  fc.integer({ min: 0x10000, max: 0x30000 }),
  fc.constantFrom(0x10ffc, 0x11ffe, 0x2fff9, 0x800000, 0x800ffc),
);
const size = fc.constantFrom(1, 2, 4, 8);
const simpleOp: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ op: fc.constant('mov' as const), dst: reg, imm: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) }),
  fc.record({
    op: fc.constant('add' as const),
    dst: reg,
    imm: fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
  }),
  fc.record({ op: fc.constant('addReg' as const), dst: reg, src: reg }),
  fc.record({ op: fc.constant('load' as const), size, dst: reg, addr: addr.map((disp) => ({ disp })) }),
  fc.record({ op: fc.constant('store' as const), size, addr: addr.map((disp) => ({ disp })), src: reg }),
  fc.record({
    op: fc.constant('storeImm' as const),
    size,
    addr: addr.map((disp) => ({ disp })),
    imm: fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
  }),
  fc.record({ op: fc.constant('sync' as const), tag: fc.nat({ max: 1000 }) }),
  fc.record({
    op: fc.constant('fill' as const),
    addr: addr.map((disp) => ({ disp })),
    len: fc.nat({ max: 5000 }),
    byte: fc.nat({ max: 255 }),
  }),
  fc.record({
    op: fc.constant('cmp' as const),
    size,
    addr: addr.map((disp) => ({ disp })),
    expect: fc.bigInt({ min: 0n, max: 255n }),
    tag: fc.nat({ max: 1000 }),
  }),
);
/** A loop whose body walks memory through a base register (the JIT's hot path). */
const walkLoop: fc.Arbitrary<Op[]> = fc
  .record({
    base: fc.integer({ min: 0x10000, max: 0x2f000 }),
    stride: fc.constantFrom(1, 8, 4095, 4096),
    n: fc.integer({ min: 1, max: 300 }),
    size,
    store: fc.boolean(),
  })
  .map(
    ({ base, stride, n, size: sz, store }) =>
      [
        { op: 'mov', dst: 'r9', imm: BigInt(base) },
        {
          op: 'loop',
          counter: 'r10',
          count: n,
          body: [
            store
              ? { op: 'store', size: sz, addr: { base: 'r9', disp: 0 }, src: 'r11' }
              : { op: 'load', size: sz, dst: 'r8', addr: { base: 'r9', disp: 0 } },
            { op: 'add', dst: 'r11', imm: 3 },
            { op: 'add', dst: 'r9', imm: stride },
          ],
        },
      ] as Op[],
  );
/**
 * A loop whose body is an access group (jit.ts): several loads and stores through one base
 * register at different displacements, ALU instructions on other registers in between, and
 * sometimes a load into the base itself — spans that fit a page, cross one, or reach the MMIO
 * hole above RAM.
 */
const groupMember: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    op: fc.constant('load' as const),
    size,
    dst: fc.constantFrom('r8', 'r11', 'r12') as fc.Arbitrary<Reg>,
    addr: fc.integer({ min: 0, max: 4200 }).map((disp) => ({ base: 'r9' as const, disp })),
  }),
  fc.record({
    op: fc.constant('store' as const),
    size,
    addr: fc.integer({ min: 0, max: 4200 }).map((disp) => ({ base: 'r9' as const, disp })),
    src: fc.constantFrom('r8', 'r11', 'r12') as fc.Arbitrary<Reg>,
  }),
  fc.record({
    op: fc.constant('storeImm' as const),
    size,
    addr: fc.integer({ min: 0, max: 64 }).map((disp) => ({ base: 'r9' as const, disp })),
    imm: fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
  }),
  fc.record({
    op: fc.constant('add' as const),
    dst: fc.constantFrom('r11', 'r12') as fc.Arbitrary<Reg>,
    imm: fc.integer({ min: -9, max: 9 }),
  }),
  fc.record({
    op: fc.constant('addReg' as const),
    dst: fc.constant('r8' as Reg),
    src: fc.constant('r11' as Reg),
  }),
);
const groupLoop: fc.Arbitrary<Op[]> = fc
  .record({
    base: fc.oneof(fc.integer({ min: 0x10000, max: 0x2e000 }), fc.constantFrom(0x10fc0, 0x7ff000, 0x800000)),
    stride: fc.constantFrom(8, 64, 4096, -8),
    n: fc.integer({ min: 1, max: 200 }),
    body: fc.array(groupMember, { minLength: 2, maxLength: 8 }),
    /** Where a 1-byte load into the base goes (-1: none); the accesses after it use the new base. */
    intoBase: fc.integer({ min: -1, max: 8 }),
  })
  .map(({ base, stride, n, body, intoBase }) => {
    const ops: Op[] = [...body];
    if (intoBase >= 0) {
      ops.splice(Math.min(intoBase, ops.length), 0, {
        op: 'load',
        size: 1,
        dst: 'r9',
        addr: { base: 'r9', disp: 0 },
      });
    }
    // A base loaded from memory is small: keep it from going below 0 (a gpa past MAXPHYADDR).
    const step = intoBase >= 0 ? Math.abs(stride) : stride;
    return [
      { op: 'mov', dst: 'r9', imm: BigInt(base) },
      { op: 'loop', counter: 'r10', count: n, body: [...ops, { op: 'add', dst: 'r9', imm: step }] },
    ] as Op[];
  });
const programArb: fc.Arbitrary<Program> = fc
  .array(
    fc.oneof(
      { weight: 4, arbitrary: simpleOp.map((o) => [o]) },
      { weight: 1, arbitrary: walkLoop },
      { weight: 1, arbitrary: groupLoop },
    ),
    { maxLength: 12 },
  )
  .map((chunks) => ({ ops: [...chunks.flat(), { op: 'halt' as const }] }));

interface Trace {
  exits: string[];
  regs: string;
  mem: number;
}

function runOn(program: Program, jit: boolean): Trace {
  const t = vmWithRam(0, MiB);
  const v = t.vm.createVcpu(0) as KvmVcpu;
  v.useJit = jit;
  v.budget = 20000;
  v.setProgram(program);
  const exits: string[] = [];
  for (let i = 0; i < 60; i++) {
    const r = v.run();
    const tag = `${r.ret}:${r.exitReasonName}:${r.mmio ? `${r.mmio.physAddr}/${r.mmio.len}/${r.mmio.isWrite}/${[...r.mmio.data].join(',')}` : ''}${r.io ? `${r.io.port}/${[...r.io.data].join(',')}` : ''}`;
    exits.push(tag);
    if (r.exitReasonName === 'KVM_EXIT_MMIO' && !r.mmio?.isWrite)
      v.kvmRun.mmio.data.set([0xa5, 0x5a, 1, 2, 3, 4, 5, 6]);
    if (r.exitReasonName === 'KVM_EXIT_HLT' || r.ret !== 0) break;
    if (i % 7 === 3) t.host.madvise(t.ramHva + 0x10000, 0x4000, 4 /* MADV_DONTNEED: zap */);
  }
  const regs = JSON.stringify(v.getRegs(), (_k, x) => (typeof x === 'bigint' ? x.toString(16) : x));
  const mem = t.host
    .readMemory(t.ramHva + 0x10000, 0x22000)
    .reduce((a, b, i) => (a * 31 + b + i) % 2147483647, 7);
  v.close();
  return { exits, regs, mem };
}

describe('JIT vs interpreter', () => {
  it('random programs give the same exits, registers and memory', () => {
    fc.assert(
      fc.property(programArb, (p) => {
        const a = runOn(p, false);
        const b = runOn(p, true);
        expect(b).toEqual(a);
        expectNoLeaks();
      }),
      { numRuns: 120 },
    );
  });

  it('RO-2, §3 row 4, MR-16: gpas past kvm_mmu_max_gfn() and base + disp wrapping modulo 2^64 give the same exits', () => {
    /** Bases near 0, near 2^64 (so a displacement wraps either way), past 2^48 and at 2^63. */
    const wildBase = fc.constantFrom(
      0n,
      8n,
      0x10ff8n,
      2n ** 64n - 8n,
      2n ** 64n - 4096n,
      2n ** 48n - 8n,
      2n ** 63n,
    );
    const wildDisp = fc.oneof(
      fc.integer({ min: -64, max: 64 }),
      fc.constantFrom(-(2 ** 40), 2 ** 48, 2 ** 52 + 0x123, 2 ** 60, 2 ** 64),
    );
    const wildAccess: fc.Arbitrary<Op> = fc.oneof(
      fc.record({
        op: fc.constant('load' as const),
        size,
        dst: fc.constantFrom('r8', 'r11') as fc.Arbitrary<Reg>,
        addr: wildDisp.map((disp) => ({ base: 'r9' as const, disp })),
      }),
      fc.record({
        op: fc.constant('store' as const),
        size,
        addr: wildDisp.map((disp) => ({ base: 'r9' as const, disp })),
        src: fc.constant('r11' as Reg),
      }),
      fc.record({
        op: fc.constant('fill' as const),
        addr: wildDisp.map((disp) => ({ base: 'r9' as const, disp })),
        len: fc.nat({ max: 12 }),
        byte: fc.nat({ max: 255 }),
      }),
      // Absolute loads, into registers other than the loop's base (r9) and counter (r10): a
      // clobbered counter makes a runaway loop that ends at the budget, and the JIT charges its
      // budget per loop iteration where the interpreter charges per instruction, so the two
      // stop at different (equally valid) preemption points.
      fc.record({
        op: fc.constant('load' as const),
        size,
        dst: fc.constantFrom('r8', 'r11') as fc.Arbitrary<Reg>,
        addr: wildDisp.map((disp) => ({ disp })),
      }),
    );
    const wildProgram: fc.Arbitrary<Program> = fc
      .array(
        fc.tuple(
          wildBase,
          fc.array(wildAccess, { minLength: 1, maxLength: 4 }),
          fc.integer({ min: 1, max: 40 }),
          fc.constantFrom(-8, 8, 4096),
        ),
        { minLength: 1, maxLength: 4 },
      )
      .map((parts) => ({
        ops: [
          ...parts.flatMap(
            ([base, body, n, stride]) =>
              [
                { op: 'mov', dst: 'r9', imm: base },
                {
                  op: 'loop',
                  counter: 'r10',
                  count: n,
                  body: [...body, { op: 'add', dst: 'r9', imm: stride }],
                },
              ] as Op[],
          ),
          { op: 'halt' as const },
        ],
      }));
    fc.assert(
      fc.property(wildProgram, (p) => {
        const a = runOn(p, false);
        expect(runOn(p, true)).toEqual(a);
        expectNoLeaks();
      }),
      { numRuns: 60 },
    );
    // One fixed case, checked against the expected exits: a walk down from gpa 8 by 8 reads RAM
    // at 8 and 0, then MMIO at 2^64 - 8 (phys_addr as the host binding's Number(u64)).
    const walk: Program = {
      ops: [
        { op: 'mov', dst: 'r9', imm: 8n },
        {
          op: 'loop',
          counter: 'r10',
          count: 3,
          body: [
            { op: 'load', size: 8, dst: 'r8', addr: { base: 'r9', disp: 0 } },
            { op: 'add', dst: 'r9', imm: -8 },
          ],
        },
        { op: 'halt' },
      ],
    };
    for (const jit of [false, true]) {
      const { exits } = runOn(walk, jit);
      expect(exits[0]).toBe(`0:KVM_EXIT_MMIO:${Number(2n ** 64n - 8n)}/8/false/0,0,0,0,0,0,0,0`);
      expect(exits[1]).toBe('0:KVM_EXIT_HLT:');
    }
  });

  it('the JIT is actually used: a hot loop runs without interpreter steps', () => {
    const t = vmWithRam(0, MiB);
    const v = t.vm.createVcpu(0) as KvmVcpu;
    v.setProgram({
      ops: [
        { op: 'mov', dst: 'r9', imm: 0x10000n },
        {
          op: 'loop',
          counter: 'r10',
          count: 100000,
          body: [{ op: 'load', size: 8, dst: 'r8', addr: { base: 'r9', disp: 0 } }],
        },
        { op: 'halt' },
      ],
    });
    expect(v.run().exitReasonName).toBe('KVM_EXIT_HLT');
    // The interpreter counts every instruction it runs; the JIT charges loop bodies at back-edges.
    expect(v.stats.instructions).toBeGreaterThanOrEqual(100000);
    expect(v.stats.tlbMisses).toBeLessThan(10);
    v.close();
  });
});
