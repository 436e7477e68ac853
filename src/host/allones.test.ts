// All-ones holes emulated by the VMM (seed 004, realkvm-notes §6.4): a READONLY memslot over one
// 0xff memfd chunk mapped many times. Guest reads return 0xff everywhere (chunk boundaries, the
// last byte); guest writes exit as KVM_EXIT_MMIO with the data; the VMA budget is respected.
import { afterEach, describe, expect, it } from 'vitest';
import {
  KVM_EXIT_HLT,
  KVM_EXIT_IO,
  KVM_EXIT_MMIO,
  KVM_MEM_READONLY,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  PROT_READ,
} from '../core/uapi.js';
import { program, SYNC_PORT } from '../core/vcpu/program.js';
import { vmaBudget } from './address_space.js';
import {
  createAllOnesSlot,
  createRealHost,
  type RealHost,
  type RealHostOptions,
  realKvmAvailable,
} from './index.js';
import { createOneVcpuGuest, runSkippingIntr } from './kvm_util.js';

const GiB = 2 ** 30;
const KiB = 1024;
const kvm = realKvmAvailable();
const hosts: RealHost[] = [];
afterEach(() => {
  for (const h of hosts.splice(0)) h.dispose();
});
function guest(options?: RealHostOptions) {
  const h = createRealHost(options);
  hosts.push(h);
  return { ...createOneVcpuGuest(h), host: h };
}
function errOf(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return undefined;
}

const ONES = 0xffff_ffff_ffff_ffffn;

describe.skipIf(!kvm.ok)(`all-ones holes on /dev/kvm${kvm.ok ? '' : ` — skipped: ${kvm.reason}`}`, () => {
  for (const chunkSize of [4 * KiB, 64 * KiB]) {
    it(`guest reads return 0xff at chunk boundaries and the last byte (chunk ${chunkSize / KiB} KiB)`, () => {
      const { host, vm, vcpu } = guest();
      const memorySize = 16 * chunkSize;
      const hole = createAllOnesSlot(host, vm, { slot: 1, guestPhysAddr: GiB, memorySize, chunkSize });
      expect(hole.mappings).toBe(16);
      expect(vm.memslots().find((s) => s.slot === 1)).toMatchObject({
        flags: KVM_MEM_READONLY,
        userspaceAddr: hole.hva,
      });
      const probes = [0, chunkSize - 8, chunkSize, 7 * chunkSize + 4, memorySize - 8];
      vcpu.setProgram(
        program((b) => {
          probes.forEach((off, i) => {
            b.cmp(8, GiB + off, ONES, 100 + i);
          });
          b.cmp(1, GiB + memorySize - 1, 0xff, 200);
          b.load(1, 'r9', GiB + memorySize - 1);
          b.sync(1).halt();
        }),
      );
      const r = runSkippingIntr(vcpu);
      // A cmp mismatch would be an OUT to REPORT_PORT with its tag; only the final sync may come.
      expect(r, JSON.stringify(r)).toMatchObject({
        ret: 0,
        exitReason: KVM_EXIT_IO,
        io: { port: SYNC_PORT },
      });
      expect(vcpu.getRegs().r9).toBe(0xffn);
      expect(runSkippingIntr(vcpu).exitReason).toBe(KVM_EXIT_HLT);
      // The host sees the same bytes, and cannot write them.
      expect(host.readMemory(hole.hva + memorySize - 2, 2)).toEqual(new Uint8Array([0xff, 0xff]));
      expect(errOf(() => host.writeMemory(hole.hva, new Uint8Array(1)))).toMatchObject({
        sigCode: 'SEGV_ACCERR',
      });
    });
  }

  it('a guest write exits as KVM_EXIT_MMIO with the data, and the hole still reads 0xff', () => {
    const { vm, vcpu, host } = guest();
    const hole = createAllOnesSlot(host, vm, { slot: 1, guestPhysAddr: GiB, memorySize: 128 * KiB });
    expect(hole.chunkSize).toBe(64 * KiB);
    vcpu.setProgram(
      program((b) =>
        b
          .storeImm(4, GiB + 64 * KiB, 0x12345678)
          .load(4, 'r9', GiB + 64 * KiB)
          .sync(1),
      ),
    );
    const w = runSkippingIntr(vcpu);
    expect(w, JSON.stringify(w)).toMatchObject({
      ret: 0,
      exitReason: KVM_EXIT_MMIO,
      mmio: { physAddr: GiB + 64 * KiB, len: 4, isWrite: true },
    });
    expect([...(w.mmio?.data ?? []).slice(0, 4)]).toEqual([0x78, 0x56, 0x34, 0x12]);
    expect(runSkippingIntr(vcpu).exitReason).toBe(KVM_EXIT_IO);
    expect(vcpu.getRegs().r9).toBe(0xffff_ffffn);
  });

  it('dispose deletes the slot first, then unmaps every chunk (the VMA budget returns to where it was)', () => {
    const { vm, host } = guest();
    const before = vmaBudget().byBinding;
    const hole = createAllOnesSlot(host, vm, {
      slot: 1,
      guestPhysAddr: GiB,
      memorySize: 32 * 4 * KiB,
      chunkSize: 4 * KiB,
    });
    expect(vmaBudget().byBinding - before).toBeGreaterThanOrEqual(32);
    hole.dispose();
    expect(vm.memslots().map((s) => s.slot)).toEqual([0]);
    expect(vmaBudget().byBinding).toBe(before);
    expect(errOf(() => host.readMemory(hole.hva, 1))).toMatchObject({
      signal: 'SIGSEGV',
      sigCode: 'SEGV_MAPERR',
    });
  });

  it('a hole that would eat into the VMA headroom is refused with ENOMEM, leaving no slot and no mapping', () => {
    const b = vmaBudget();
    // Headroom such that a few mappings fit but not 64 more.
    const { vm, host } = guest({ vmaHeadroom: b.max - b.inUse - 40 });
    const before = vmaBudget().byBinding;
    const e = errOf(() =>
      createAllOnesSlot(host, vm, {
        slot: 1,
        guestPhysAddr: GiB,
        memorySize: 64 * 4 * KiB,
        chunkSize: 4 * KiB,
      }),
    );
    expect(e).toMatchObject({ code: 'ENOMEM' });
    expect(vm.memslots().map((s) => s.slot)).toEqual([0]);
    expect(vmaBudget().byBinding).toBe(before);
    // A plain mapping still fits.
    expect(host.mmap(0, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)).toBeGreaterThan(0);
  });

  it('chunk sizes that are not a power of two in [4 KiB, 2 MiB] are EINVAL', () => {
    const { vm, host } = guest();
    for (const chunkSize of [2048, 12 * KiB, 4 * 1024 * KiB]) {
      expect(
        errOf(() =>
          createAllOnesSlot(host, vm, { slot: 1, guestPhysAddr: GiB, memorySize: 4 * 1024 * KiB, chunkSize }),
        ),
        `${chunkSize}`,
      ).toMatchObject({
        code: 'EINVAL',
      });
    }
  });
});
