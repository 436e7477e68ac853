// vCPUs on the real kernel: guest programs compiled to x86-64 (sync, loads, stores, fill, copy,
// cmp, loops, halt) with their exits and memory; the RUN-3 sentinel; registers; pre-faulting; and
// kvm_run views that stay harmless after the vCPU is closed.
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { KVM_CAP_PRE_FAULT_MEMORY, KVM_EXIT_HLT, KVM_EXIT_INTR, KVM_EXIT_IO } from '../core/uapi.js';
import { program, REPORT_PORT, SYNC_PORT } from '../core/vcpu/program.js';
import { createRealHost, type RealHost, realKvmAvailable } from './index.js';
import { createOneVcpuGuest, type RamBacking, runSkippingIntr } from './kvm_util.js';
import type { RealVcpu } from './vcpu.js';

const kvm = realKvmAvailable();
const hosts: RealHost[] = [];
function guest(backing: RamBacking = 'anon') {
  const h = createRealHost();
  hosts.push(h);
  return { ...createOneVcpuGuest(h, { backing }), host: h };
}
afterEach(() => {
  for (const h of hosts.splice(0)) h.dispose();
});

function errOf(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return undefined;
}

/** Runs to the next exit and returns [port, u32 data] of an OUT, failing on anything else. */
function nextOut(vcpu: RealVcpu): [number, number] {
  const r = runSkippingIntr(vcpu);
  expect(r, JSON.stringify(r)).toMatchObject({
    ret: 0,
    exitReason: KVM_EXIT_IO,
    io: { direction: 1, size: 4, count: 1 },
  });
  const io = r.io;
  if (io === undefined) throw new Error('no io');
  return [io.port, new DataView(io.data.buffer, io.data.byteOffset).getUint32(0, true)];
}

describe.skipIf(!kvm.ok)(`vCPUs on /dev/kvm${kvm.ok ? '' : ` — skipped: ${kvm.reason}`}`, () => {
  for (const backing of ['anon', 'memfd', 'gmem'] as const) {
    it(`a guest program's stores, loads and syncs give the expected exits and memory (${backing} RAM)`, () => {
      const { host, vcpu, ramHva } = guest(backing);
      vcpu.setProgram(
        program((b) =>
          b
            .storeImm(1, 0x8000, 0xab)
            .storeImm(2, 0x8002, 0x1234)
            .storeImm(4, 0x8004, 0xdeadbeef)
            .mov('r8', 0x1122334455667788n)
            .store(8, 0x8008, 'r8')
            .sync(1)
            .load(8, 'r9', 0x8008)
            .load(2, 'r10', 0x8002)
            .load(1, 'r11', 0x8000)
            .sync(2)
            .halt(),
        ),
      );
      expect(nextOut(vcpu)).toEqual([SYNC_PORT, 1]);
      expect([...host.readMemory(ramHva + 0x8000, 16)]).toEqual([
        0xab, 0, 0x34, 0x12, 0xef, 0xbe, 0xad, 0xde, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
      ]);
      host.writeMemory(ramHva + 0x8008, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8])); // the guest sees host writes
      expect(nextOut(vcpu)).toEqual([SYNC_PORT, 2]);
      const regs = vcpu.getRegs();
      expect([regs.r9, regs.r10, regs.r11]).toEqual([0x0807060504030201n, 0x1234n, 0xabn]);
      expect(runSkippingIntr(vcpu).exitReason).toBe(KVM_EXIT_HLT);
      // A finished program halts again on every later run.
      expect(runSkippingIntr(vcpu).exitReason).toBe(KVM_EXIT_HLT);
    });
  }

  it('fill, copy, loop and cmp (a mismatch reports its tag with the value found in rbx)', () => {
    const { host, vcpu, ramHva } = guest();
    vcpu.setProgram(
      program((b) =>
        b
          .fill(0x9000, 64, 0x5a)
          .copy(0xa000, 0x9000, 32)
          .mov('r9', 0)
          .loop('r8', 10, (l) => l.add('r9', 3))
          .cmp(8, 0xa000, 0x5a5a5a5a5a5a5a5an, 7)
          .cmp(1, 0xa020, 0x5a, 8)
          .sync(3),
      ),
    );
    expect(nextOut(vcpu)).toEqual([REPORT_PORT, 8]);
    expect(vcpu.getRegs().rbx).toBe(0n); // byte 32 of the copy destination was never written
    expect(nextOut(vcpu)).toEqual([SYNC_PORT, 3]);
    expect(vcpu.getRegs().r9).toBe(30n);
    expect(host.readMemory(ramHva + 0xa000, 33)).toEqual(
      new Uint8Array([...new Array<number>(32).fill(0x5a), 0]),
    );
  });

  it('RUN-3: a run that writes no exit record leaves exit_reason as it was (the sentinel is put back)', () => {
    const { vcpu } = guest();
    vcpu.setProgram(program((b) => b.halt()));
    expect(runSkippingIntr(vcpu).exitReason).toBe(KVM_EXIT_HLT);
    vcpu.kvmRun.immediateExit = 1;
    const r = vcpu.run();
    vcpu.kvmRun.immediateExit = 0;
    // KVM returns EINTR before entering the guest and does not write exit_reason: still HLT.
    expect(r).toMatchObject({ ret: -1, errno: 'EINTR', exitReason: KVM_EXIT_HLT, memoryFaultValid: false });
    expect(r.exitReason).not.toBe(KVM_EXIT_INTR);
    expect(runSkippingIntr(vcpu).exitReason).toBe(KVM_EXIT_HLT);
  });

  it('KVM_GET_REGS/KVM_SET_REGS round-trip all 18 registers; setRegs merges a partial set', () => {
    const { vcpu } = guest();
    const before = vcpu.getRegs();
    vcpu.setRegs({ r13: 0xfedcba9876543210n, rsi: 5n });
    const after = vcpu.getRegs();
    expect(after).toEqual({ ...before, r13: 0xfedcba9876543210n, rsi: 5n });
  });

  it('KVM_PRE_FAULT_MEMORY (PF-1..PF-5): maps and consumes the range with TDP; EOPNOTSUPP and an untouched range without', () => {
    const { vm, vcpu } = guest();
    expect(errOf(() => vcpu.preFaultMemory({ gpa: 0, size: 0 }))).toMatchObject({ code: 'EINVAL' });
    const range = { gpa: 0x4000, size: 0x2000 };
    if (vm.checkExtension(KVM_CAP_PRE_FAULT_MEMORY) === 0) {
      // PF-2: a vCPU not using TDP page tables (this is the case under PVM's shadow paging).
      expect(errOf(() => vcpu.preFaultMemory(range))).toMatchObject({ code: 'EOPNOTSUPP' });
      expect(range).toEqual({ gpa: 0x4000, size: 0x2000 });
    } else {
      vcpu.preFaultMemory(range);
      expect(range).toEqual({ gpa: 0x6000, size: 0 });
    }
  });

  it('setProgram refuses a layout outside every memslot with EFAULT naming the gpa', () => {
    const { vcpu } = guest();
    const e = errOf(() =>
      vcpu.setProgram(
        program((b) => b.halt()),
        { codeGpa: 0x1000, pageTableGpa: 0x20_0000 },
      ),
    );
    expect(e).toMatchObject({ code: 'EFAULT', call: 'setProgram' });
    expect((e as Error).message).toContain('0x200000');
  });

  it('closing a vCPU replaces kvm_run by a tombstone: stale views stay harmless and the vCPU file is released', () => {
    const { vcpu } = guest();
    const data = vcpu.kvmRun.mmio.data;
    const run = vcpu.kvmRun;
    /** The /proc/self/maps line of the mapping containing the kvm_run address. */
    const line = () =>
      readFileSync('/proc/self/maps', 'utf8')
        .split('\n')
        .find((l) => {
          const [s = '0', e = '0'] = (l.split(' ')[0] ?? '').split('-');
          return Number.parseInt(s, 16) <= vcpu.runAddr && vcpu.runAddr < Number.parseInt(e, 16);
        }) ?? '';
    expect(line()).toMatch(/ rw-s .*kvm-vcpu/);
    vcpu.close();
    data.set([1, 2, 3]); // would be a SIGSEGV if the mapping were simply gone
    run.immediateExit = 1;
    expect(data[2]).toBe(3);
    // Private anonymous memory now (the kernel may merge it with a neighbouring mapping).
    expect(line()).toMatch(/ rw-p 00000000 00:00 0\s*$/);
  });
});
