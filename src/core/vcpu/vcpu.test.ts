import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { expectErrno, expectNoLeaks, MiB, PAGE } from '../../../test/helpers.js';
import { memfdMapping, region, vcpuWith, vmWithRam } from '../../../test/kvm_helpers.js';
import * as U from '../uapi.js';
import { program, REPORT_PORT, SYNC_PORT } from './program.js';

afterEach(expectNoLeaks);

const R = region;

describe('guest programs', () => {
  it('loads, stores of every width, add, loops and sync exits', () => {
    const t = vmWithRam();
    const v = vcpuWith(
      t,
      program((b) =>
        b
          .mov('r9', 0x10000)
          .loop('r10', 8, (l) => l.storeImm(8, { base: 'r9', disp: 0 }, 0x11).add('r9', 8))
          .storeImm(1, 0x20000, 0xab)
          .storeImm(2, 0x20002, 0xcdef)
          .storeImm(4, 0x20004, 0x12345678)
          .mov('r11', 0xfedcba9876543210n)
          .store(8, 0x20008, 'r11')
          .load(8, 'r8', 0x20000)
          .load(2, 'r12', 0x20002)
          .mov('r13', 2n ** 64n - 1n)
          .add('r13', 2)
          .sync(0x55aa),
      ),
    );
    const r = v.run();
    expect(r).toMatchObject({
      ret: 0,
      exitReasonName: 'KVM_EXIT_IO',
      io: { port: SYNC_PORT, size: 4, direction: 1 },
    });
    expect([...(r.io?.data ?? [])]).toEqual([0xaa, 0x55, 0, 0]);
    const regs = v.getRegs();
    expect(regs.r8).toBe(0x12345678cdef00abn);
    expect(regs.r12).toBe(0xcdefn);
    expect(regs.r13).toBe(1n); // wraps modulo 2^64
    expect(regs.r10).toBe(0n);
    expect([...t.host.readMemory(t.ramHva + 0x10000 + 56, 8)]).toEqual([0x11, 0, 0, 0, 0, 0, 0, 0]);
    expect([...t.host.readMemory(t.ramHva + 0x20008, 8)]).toEqual([
      0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe,
    ]);
    expect(v.run().exitReasonName).toBe('KVM_EXIT_HLT'); // falling off the end halts
    v.close();
  });

  it('fill and copy across pages; cmp reports mismatches with the value in rbx', () => {
    const t = vmWithRam();
    const v = vcpuWith(
      t,
      program((b) =>
        b
          .fill(0x10ff0, 0x20, 0x7e)
          .copy(0x30ff8, 0x10ff0, 0x20)
          .cmp(8, 0x31000, 0x7e7e7e7e7e7e7e7en, 1)
          .cmp(4, 0x31018, 0x7e7e7e7e, 2)
          .halt(),
      ),
    );
    const r = v.run();
    expect(r.io?.port).toBe(REPORT_PORT);
    expect(r.io?.data[0]).toBe(2); // tag 1 matched, tag 2 did not (0x31018 is past the copy)
    expect(v.getRegs().rbx).toBe(0n);
    expect(t.host.readMemory(t.ramHva + 0x30ff8, 0x20).every((x) => x === 0x7e)).toBe(true);
    expect(v.run().exitReasonName).toBe('KVM_EXIT_HLT');
    v.close();
  });

  it('copy is rep movsb: an overlapping destination above the source repeats the pattern', () => {
    const t = vmWithRam();
    t.host.writeMemory(t.ramHva + 0x10000, new Uint8Array([1, 2, 3]));
    const v = vcpuWith(
      t,
      program((b) => b.copy(0x10003, 0x10000, 9).copy(0x20000, 0x20001, 0).halt()),
    );
    v.run();
    expect([...t.host.readMemory(t.ramHva + 0x10000, 12)]).toEqual([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3]);
    v.close();
  });

  it('fill and copy over runs of pages match byte-at-a-time rep stosb / rep movsb', () => {
    // Page runs (vcpu.ts extendRun): some pages mapped beforehand, some faulted in mid-run, and
    // overlapping copies in both directions; the reference is a byte loop over a plain array.
    const WIN = 0x10000;
    const BYTES = 16 * PAGE;
    const op = fc.record({
      copy: fc.boolean(),
      dst: fc.nat({ max: BYTES - 1 }),
      src: fc.nat({ max: BYTES - 1 }),
      len: fc.nat({ max: 3 * PAGE + 17 }),
      byte: fc.nat({ max: 255 }),
    });
    fc.assert(
      fc.property(
        fc.array(op, { minLength: 1, maxLength: 6 }),
        fc.array(fc.boolean(), { minLength: 16, maxLength: 16 }),
        (ops, touched) => {
          const t = vmWithRam(0, MiB);
          const init = new Uint8Array(BYTES).map((_, i) => (i * 7 + (i >> 12)) & 0xff);
          t.host.writeMemory(t.ramHva + WIN, init);
          const ref = init.slice();
          const steps = ops.map((o) => ({ ...o, len: Math.min(o.len, BYTES - o.dst, BYTES - o.src) }));
          const v = vcpuWith(
            t,
            program((b) => {
              touched.forEach((on, p) => {
                if (on) b.load(1, 'r8', WIN + p * PAGE);
              });
              for (const o of steps) {
                if (o.copy) b.copy(WIN + o.dst, WIN + o.src, o.len);
                else b.fill(WIN + o.dst, o.len, o.byte);
              }
              b.halt();
            }),
          );
          for (const o of steps) {
            for (let i = 0; i < o.len; i++) ref[o.dst + i] = o.copy ? (ref[o.src + i] as number) : o.byte;
          }
          expect(v.run().exitReasonName).toBe('KVM_EXIT_HLT');
          expect([...t.host.readMemory(t.ramHva + WIN, BYTES)]).toEqual([...ref]);
          v.close();
          expectNoLeaks();
        },
      ),
      { numRuns: 60 },
    );
  });

  it('getRegs/setRegs round trip; rip follows the program', () => {
    const t = vmWithRam();
    const v = vcpuWith(
      t,
      program((b) => b.sync(1).sync(2).halt()),
    );
    v.setRegs({ r14: 77n, rip: 0x1000n + 16n });
    expect(v.getRegs().r14).toBe(77n);
    expect(v.run().io?.data[0]).toBe(2);
    expectErrno(() => v.setRegs({ rip: 3n }), 'EINVAL');
    v.close();
  });
});

describe('MMIO exits (RO-1..RO-3)', () => {
  it('RO-2: a read with no memslot exits with len; the data userspace writes completes it', () => {
    const t = vmWithRam(0, MiB);
    const v = vcpuWith(
      t,
      program((b) => b.load(4, 'r8', 0xfee00000).sync(1)),
    );
    const r = v.run();
    expect(r).toMatchObject({
      ret: 0,
      exitReasonName: 'KVM_EXIT_MMIO',
      mmio: { physAddr: 0xfee00000, len: 4, isWrite: false },
    });
    v.kvmRun.mmio.data.set([0xef, 0xbe, 0, 0]);
    expect(v.run().exitReasonName).toBe('KVM_EXIT_IO');
    expect(v.getRegs().r8).toBe(0xbeefn);
    expect(t.vm.kvm.mmu[0]?.stats().mmio).toBe(1);
    v.close();
  });

  it('RO-2: an access crossing a page boundary exits once per fragment', () => {
    const t = vmWithRam(0, MiB);
    const v = vcpuWith(
      t,
      program((b) => b.load(8, 'r8', 0xfee00ffc).storeImm(8, 0xfee01ffa, -1).sync(1)),
    );
    let r = v.run();
    expect(r.mmio).toMatchObject({ physAddr: 0xfee00ffc, len: 4, isWrite: false });
    v.kvmRun.mmio.data.set([1, 2, 3, 4]);
    r = v.run();
    expect(r.mmio).toMatchObject({ physAddr: 0xfee01000, len: 4, isWrite: false });
    v.kvmRun.mmio.data.set([5, 6, 7, 8]);
    r = v.run();
    expect(v.getRegs().r8).toBe(0x0807060504030201n);
    expect(r.mmio).toMatchObject({ physAddr: 0xfee01ffa, len: 6, isWrite: true });
    expect([...(r.mmio?.data ?? [])]).toEqual([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]);
    r = v.run();
    expect(r.mmio).toMatchObject({ physAddr: 0xfee02000, len: 2, isWrite: true });
    expect(v.run().exitReasonName).toBe('KVM_EXIT_IO');
    v.close();
  });

  it('RO-2, §3 row 4, MR-16: accesses above kvm_mmu_max_gfn() exit as MMIO without an MMIO SPTE (kvm_handle_noslot_fault)', () => {
    const t = vmWithRam(0, MiB); // host MAXPHYADDR 48
    const v = vcpuWith(
      t,
      program((b) =>
        b
          .load(4, 'r8', 2 ** 48)
          .storeImm(2, 2 ** 52 + 0x123, 0x1234)
          .fill(2 ** 60, 2, 0xab)
          .load(1, 'r10', 2 ** 48 - PAGE)
          .halt(),
      ),
    );
    let r = v.run();
    expect(r).toMatchObject({ ret: 0, exitReasonName: 'KVM_EXIT_MMIO', mmio: { physAddr: 2 ** 48, len: 4 } });
    v.kvmRun.mmio.data.set([1, 2, 3, 4]);
    r = v.run();
    expect(r.mmio).toMatchObject({ physAddr: 2 ** 52 + 0x123, len: 2, isWrite: true });
    expect([...(r.mmio?.data.subarray(0, 2) ?? [])]).toEqual([0x34, 0x12]);
    for (const physAddr of [2 ** 60, 2 ** 60 + 1]) {
      expect(v.run().mmio).toMatchObject({ physAddr, len: 1, isWrite: true });
    }
    expect(t.vm.kvm.mmu[0]?.stats().mmio).toBe(0);
    // The last page below 2^48 is an ordinary MMIO hole: its SPTE is cached.
    expect(v.run().mmio).toMatchObject({ physAddr: 2 ** 48 - PAGE, len: 1 });
    expect(t.vm.kvm.mmu[0]?.stats().mmio).toBe(1);
    expect(v.run().exitReasonName).toBe('KVM_EXIT_HLT');
    expect(v.getRegs().r8).toBe(0x04030201n);
    v.close();
  });

  it('RO-2, §3 row 4: base + disp wraps modulo 2^64 — below 0 is MMIO at 2^64 - n, past 2^64 is RAM again', () => {
    const t = vmWithRam(0, MiB);
    const v = vcpuWith(
      t,
      program((b) =>
        b
          .storeImm(8, 0, 0x44332211)
          .mov('r9', 0)
          .load(8, 'r8', { base: 'r9', disp: -4 }) // bytes 2^64-4..2^64-1 (MMIO), then 0..3 (RAM)
          .mov('r12', 2n ** 64n - 8n)
          .load(4, 'r11', { base: 'r12', disp: 8 }) // (2^64 - 8) + 8 = gpa 0
          .store(1, { base: 'r12', disp: 0 }, 'r11') // 2^64 - 8: MMIO
          .halt(),
      ),
    );
    let r = v.run();
    // phys_addr is a u64; the number is the host binding's Number(u64), rounded above 2^53.
    expect(r).toMatchObject({ ret: 0, exitReasonName: 'KVM_EXIT_MMIO', mmio: { len: 4, isWrite: false } });
    expect(r.mmio?.physAddr).toBe(Number(2n ** 64n - 4n));
    v.kvmRun.mmio.data.set([0xa1, 0xa2, 0xa3, 0xa4]);
    r = v.run();
    expect(r.mmio).toMatchObject({ len: 1, isWrite: true });
    expect(r.mmio?.physAddr).toBe(Number(2n ** 64n - 8n));
    expect(r.mmio?.data[0]).toBe(0x11);
    expect(v.run().exitReasonName).toBe('KVM_EXIT_HLT');
    expect(v.getRegs()).toMatchObject({ r8: 0x44332211a4a3a2a1n, r11: 0x44332211n });
    expect(t.vm.kvm.mmu[0]?.stats().mmio).toBe(0);
    v.close();
  });

  it('RO-1: READONLY slots read like RAM; writes exit as MMIO with the data and change nothing', () => {
    const t = vmWithRam(0, MiB);
    const [, hva] = memfdMapping(t.host, 2 * PAGE);
    t.host.writeMemory(hva, new Uint8Array([1, 2, 3, 4]));
    t.vm.setUserMemoryRegion(R(1, 0x800000, 2 * PAGE, hva, U.KVM_MEM_READONLY));
    const v = vcpuWith(
      t,
      program((b) => b.load(4, 'r8', 0x800000).storeImm(2, 0x800000, 0xbeef).load(4, 'r9', 0x800000).halt()),
    );
    const r = v.run();
    expect(r).toMatchObject({
      exitReasonName: 'KVM_EXIT_MMIO',
      mmio: { physAddr: 0x800000, len: 2, isWrite: true },
    });
    expect([...(r.mmio?.data.subarray(0, 2) ?? [])]).toEqual([0xef, 0xbe]);
    expect(v.run().exitReasonName).toBe('KVM_EXIT_HLT');
    expect(v.getRegs().r8).toBe(0x04030201n);
    expect(v.getRegs().r9).toBe(0x04030201n);
    expect(t.vm.kvm.mmu[0]?.stats().mmio).toBe(0); // no MMIO SPTE for READONLY writes
    v.close();
  });

  it('RO-3: re-entering with immediate_exit completes the exit without running guest code', () => {
    const t = vmWithRam(0, MiB);
    const v = vcpuWith(
      t,
      program((b) => b.load(4, 'r8', 0xfee00000).sync(9)),
    );
    v.run();
    v.kvmRun.mmio.data.set([7, 0, 0, 0]);
    v.kvmRun.immediateExit = 1;
    expect(v.run()).toMatchObject({ ret: -1, errno: 'EINTR', exitReasonName: 'KVM_EXIT_INTR' });
    expect(v.getRegs().r8).toBe(7n);
    v.kvmRun.immediateExit = 0;
    expect(v.run().io?.data[0]).toBe(9);
    v.close();
  });
});

describe('KVM_RUN errors (RUN-3, RUN-4, RO-4, 8e)', () => {
  it('RO-4 / RUN-3: a write to a read-only host VMA is EFAULT with no record; exit_reason stays stale', () => {
    const t = vmWithRam(0, MiB);
    const v = vcpuWith(
      t,
      program((b) => b.sync(1).storeImm(4, 0x40000, 5).sync(2)),
    );
    expect(v.run().exitReasonName).toBe('KVM_EXIT_IO');
    t.host.mprotect(t.ramHva + 0x40000, PAGE, U.PROT_READ);
    const r = v.run();
    expect(r).toMatchObject({ ret: -1, errno: 'EFAULT', exitReasonName: 'KVM_EXIT_IO' });
    expect(r.memoryFaultValid).toBeUndefined();
    // RUN-2: the instruction did not execute; it retries once the cause is fixed.
    t.host.mprotect(t.ramHva + 0x40000, PAGE, U.PROT_READ | U.PROT_WRITE);
    expect(v.run().io?.data[0]).toBe(2);
    expect(t.host.readMemory(t.ramHva + 0x40000, 1)[0]).toBe(5);
    v.close();
  });

  it('RUN-4: a kick (a signal at the vCPU thread) makes KVM_RUN return EINTR / KVM_EXIT_INTR', () => {
    const t = vmWithRam(0, MiB);
    const v = vcpuWith(
      t,
      program((b) => b.loop('r8', 1_000_000, (l) => l.load(8, 'r9', 0x3000))),
    );
    v.budget = 1000;
    expect(v.run()).toMatchObject({ ret: -1, errno: 'EINTR', exitReasonName: 'KVM_EXIT_INTR' });
    v.kick();
    v.budget = 1e9;
    expect(v.run()).toMatchObject({ errno: 'EINTR' });
    v.close();
  });

  it('8e: a poisoned host page sends SIGBUS and KVM_RUN returns EINTR', () => {
    const t = vmWithRam(0, MiB);
    t.host.madvise(t.ramHva + 0x9000, PAGE, U.MADV_HWPOISON);
    const v = vcpuWith(
      t,
      program((b) => b.load(1, 'r8', 0x9000)),
    );
    const r = v.run() as { errno?: string; signal?: { name: string } };
    expect(r.errno).toBe('EINTR');
    expect(r.signal?.name).toBe('SIGBUS');
    v.close();
  });

  it('deleting the memslot that holds the code gives KVM_EXIT_INTERNAL_ERROR (set_memory_region_test)', () => {
    const t = vmWithRam(0, MiB);
    const v = vcpuWith(
      t,
      program((b) => b.sync(1).sync(2)),
    );
    v.run();
    t.vm.setUserMemoryRegion(R(0, 0, 0, 0));
    expect(v.run()).toMatchObject({
      ret: 0,
      exitReasonName: 'KVM_EXIT_INTERNAL_ERROR',
      internal: { suberror: 1 },
    });
    v.close();
  });
});

describe('KVM_HC_MAP_GPA_RANGE without private memory (HC-1, HC-3, HC-4)', () => {
  it('without the exit enabled the guest gets -KVM_ENOSYS; bad args -KVM_EINVAL; otherwise an exit', () => {
    const t = vmWithRam(0, MiB);
    const v = vcpuWith(
      t,
      program((b) =>
        b
          .hypercall(U.KVM_HC_MAP_GPA_RANGE, [0x10000, 4, 0], 'r8')
          .sync(1)
          .hypercall(U.KVM_HC_MAP_GPA_RANGE, [0x10001, 4, 0], 'r9')
          .hypercall(U.KVM_HC_MAP_GPA_RANGE, [0x10000, 0, 0], 'r10')
          .hypercall(U.KVM_HC_MAP_GPA_RANGE, [0x10000, 4, 0x12345], 'r11')
          .hypercall(99, [0, 0, 0], 'r12')
          .sync(2),
      ),
    );
    v.run();
    expect(v.getRegs().r8).toBe(2n ** 64n - 1000n);
    expectErrno(() => t.vm.enableCap({ cap: U.KVM_CAP_EXIT_HYPERCALL, args: [1] }), 'EINVAL', 'HC-1');
    t.vm.enableCap({ cap: U.KVM_CAP_EXIT_HYPERCALL, args: [1 << U.KVM_HC_MAP_GPA_RANGE] });
    const r = v.run();
    expect(r).toMatchObject({
      exitReasonName: 'KVM_EXIT_HYPERCALL',
      hypercall: { nr: 12, args: [0x10000, 4, 0x12345, 0, 0, 0], flags: U.KVM_EXIT_HYPERCALL_LONG_MODE },
    });
    expect(v.getRegs().r9).toBe(2n ** 64n - 22n);
    expect(v.getRegs().r10).toBe(2n ** 64n - 22n);
    v.kvmRun.hypercall.ret = 0;
    expect(v.run().io?.data[0]).toBe(2);
    expect(v.getRegs().r11).toBe(0n);
    expect(v.getRegs().r12).toBe(2n ** 64n - 1000n);
    // MA-7: KVM changed no attribute on its own.
    expect(t.vm.kvm.isPrivateGfn(0x10)).toBe(false);
    v.close();
  });
});

describe('vCPU lifetime', () => {
  it('a vCPU fd keeps the VM alive after the VM fd is closed; KVM_CREATE_VCPU refuses duplicates', () => {
    const t = vmWithRam(0, MiB);
    const v = vcpuWith(
      t,
      program((b) => b.storeImm(1, 0x5000, 3).halt()),
    );
    expectErrno(() => t.vm.createVcpu(0), 'EEXIST');
    const k = t.vm.kvm;
    t.vm.close();
    expect(k.destroyed).toBe(false);
    expect(v.run().exitReasonName).toBe('KVM_EXIT_HLT');
    v.close();
    expect(k.destroyed).toBe(true);
  });
});
