// Memslots on the real kernel (kvm-semantics.md §2.1, §2.8): create/move/delete with v1 and v2,
// overlap and validation errors in the kernel's order, READONLY writes and unbacked reads as
// KVM_EXIT_MMIO, and the binding's guards on the hva range a guest can write through.
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import type { RunResult } from '../core/api.js';
import {
  GUEST_MEMFD_FLAG_INIT_SHARED,
  GUEST_MEMFD_FLAG_MMAP,
  KVM_EXIT_HLT,
  KVM_EXIT_IO,
  KVM_EXIT_MMIO,
  KVM_MEM_GUEST_MEMFD,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_READONLY,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  MAP_SHARED,
  PROT_READ,
  PROT_WRITE,
} from '../core/uapi.js';
import { program, SYNC_PORT } from '../core/vcpu/program.js';
import { createRealHost, type RealHost, realKvmAvailable } from './index.js';
import { createOneVcpuGuest, type OneVcpuGuest, runSkippingIntr } from './kvm_util.js';
import type { RealVcpu } from './vcpu.js';

const PAGE = 4096;
const MiB = 1024 * 1024;
const RW = PROT_READ | PROT_WRITE;
const kvm = realKvmAvailable();
const hosts: RealHost[] = [];
function guest(): OneVcpuGuest & { host: RealHost } {
  const h = createRealHost();
  hosts.push(h);
  return { ...createOneVcpuGuest(h), host: h };
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

function expectSync(vcpu: RealVcpu, tag: number): void {
  const r = runSkippingIntr(vcpu);
  expect(r, JSON.stringify(r)).toMatchObject({
    ret: 0,
    exitReason: KVM_EXIT_IO,
    io: { port: SYNC_PORT, direction: 1 },
  });
  expect(new DataView((r.io?.data ?? new Uint8Array(4)).buffer).getUint32(0, true)).toBe(tag);
}

function expectMmio(r: RunResult, physAddr: number, isWrite: boolean, len: number): void {
  expect(r, JSON.stringify(r)).toMatchObject({
    ret: 0,
    exitReason: KVM_EXIT_MMIO,
    mmio: { physAddr, isWrite, len },
  });
}

describe.skipIf(!kvm.ok)(`memslots on /dev/kvm${kvm.ok ? '' : ` — skipped: ${kvm.reason}`}`, () => {
  it('v1 create, MOVE (MR-14, MR-23) and delete: the same host memory follows the slot; the old gpa is MMIO', () => {
    const { host, vm, vcpu } = guest();
    const mem = host.mmap(0, 64 * 1024, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    host.writeMemory(mem + 8, new Uint8Array([0x78, 0x56, 0x34, 0x12]));
    vm.setUserMemoryRegion({
      slot: 1,
      flags: 0,
      guestPhysAddr: MiB,
      memorySize: 64 * 1024,
      userspaceAddr: mem,
    });
    vcpu.setProgram(
      program((b) =>
        b
          .load(4, 'r9', MiB + 8)
          .sync(1)
          .load(4, 'r10', 2 * MiB + 8)
          .sync(2)
          .load(4, 'r11', MiB + 8)
          .sync(3),
      ),
    );
    expectSync(vcpu, 1);
    expect(vcpu.getRegs().r9).toBe(0x12345678n);
    vm.setUserMemoryRegion({
      slot: 1,
      flags: 0,
      guestPhysAddr: 2 * MiB,
      memorySize: 64 * 1024,
      userspaceAddr: mem,
    });
    expectSync(vcpu, 2);
    expect(vcpu.getRegs().r10).toBe(0x12345678n);
    expect(vm.memslots().find((s) => s.slot === 1)?.guestPhysAddr).toBe(2 * MiB);
    expectMmio(runSkippingIntr(vcpu), MiB + 8, false, 4);
    vcpu.kvmRun.mmio.data.set([1, 0, 0, 0]);
    expectSync(vcpu, 3);
    expect(vcpu.getRegs().r11).toBe(1n);
    vm.setUserMemoryRegion({ slot: 1, flags: 0, guestPhysAddr: 2 * MiB, memorySize: 0, userspaceAddr: mem });
    expect(vm.memslots().map((s) => s.slot)).toEqual([0]);
  });

  it('v2 with guest_memfd: guest stores land in the gmem mapping; delete ignores flags and fd (MR-12); recreate works (GB-9)', () => {
    const { host, vm, vcpu } = guest();
    const gfd = vm.createGuestMemfd({
      size: 64 * 1024,
      flags: GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED,
    });
    const mem = host.mmap(0, 64 * 1024, RW, MAP_SHARED, gfd, 0);
    const slot = {
      slot: 2,
      flags: KVM_MEM_GUEST_MEMFD,
      guestPhysAddr: MiB,
      memorySize: 64 * 1024,
      userspaceAddr: mem,
      guestMemfd: gfd,
      guestMemfdOffset: 0,
    };
    vm.setUserMemoryRegion2(slot);
    vcpu.setProgram(program((b) => b.storeImm(8, MiB + 0x100, 0x0badcafe).sync(1)));
    expectSync(vcpu, 1);
    expect([...host.readMemory(mem + 0x100, 4)]).toEqual([0xfe, 0xca, 0xad, 0x0b]);
    // MR-14: a gmem slot is immutable, even an identical re-issue is EINVAL.
    expect(errOf(() => vm.setUserMemoryRegion2(slot))).toMatchObject({ code: 'EINVAL' });
    vm.setUserMemoryRegion2({ slot: 2, flags: 0, guestPhysAddr: 0, memorySize: 0, userspaceAddr: 0 });
    vm.setUserMemoryRegion2(slot);
  });

  it('MR-15: a slot overlapping another slot’s gpa range is EEXIST; moving onto another slot too', () => {
    const { host, vm } = guest();
    const mem = host.mmap(0, 2 * 64 * 1024, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    vm.setUserMemoryRegion({
      slot: 1,
      flags: 0,
      guestPhysAddr: MiB,
      memorySize: 64 * 1024,
      userspaceAddr: mem,
    });
    const overlap = {
      slot: 3,
      flags: 0,
      guestPhysAddr: MiB + 60 * 1024,
      memorySize: 64 * 1024,
      userspaceAddr: mem + 64 * 1024,
    };
    expect(errOf(() => vm.setUserMemoryRegion(overlap))).toMatchObject({ code: 'EEXIST' });
    expect(errOf(() => vm.setUserMemoryRegion({ ...overlap, guestPhysAddr: 0 }))).toMatchObject({
      code: 'EEXIST',
    });
    vm.setUserMemoryRegion({ ...overlap, guestPhysAddr: 2 * MiB });
    expect(errOf(() => vm.setUserMemoryRegion({ ...overlap, guestPhysAddr: MiB }))).toMatchObject({
      code: 'EEXIST',
    });
    expect(vm.memslots().map((s) => [s.slot, s.guestPhysAddr])).toEqual([
      [0, 0],
      [1, MiB],
      [3, 2 * MiB],
    ]);
  });

  it('GB-5: two slots binding overlapping ranges of one guest_memfd are refused (EEXIST in v7.3, EINVAL before)', () => {
    const { host, vm } = guest();
    const gfd = vm.createGuestMemfd({ size: 2 * 64 * 1024, flags: 3 });
    const mem = host.mmap(0, 2 * 64 * 1024, RW, MAP_SHARED, gfd, 0);
    const base = { flags: KVM_MEM_GUEST_MEMFD, memorySize: 64 * 1024, guestMemfd: gfd };
    vm.setUserMemoryRegion2({
      ...base,
      slot: 1,
      guestPhysAddr: MiB,
      userspaceAddr: mem,
      guestMemfdOffset: 0,
    });
    const e = errOf(() =>
      vm.setUserMemoryRegion2({
        ...base,
        slot: 2,
        guestPhysAddr: 2 * MiB,
        userspaceAddr: mem,
        guestMemfdOffset: 4096,
      }),
    );
    expect(['EEXIST', 'EINVAL']).toContain((e as { code?: string }).code);
    // The disjoint second half binds fine (GB-6).
    vm.setUserMemoryRegion2({
      ...base,
      slot: 2,
      guestPhysAddr: 2 * MiB,
      userspaceAddr: mem + 64 * 1024,
      guestMemfdOffset: 64 * 1024,
    });
  });

  it('MR-2..MR-14: invalid requests are EINVAL, decided by the kernel in its order', () => {
    const { host, vm } = guest();
    const mem = host.mmap(0, 64 * 1024, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    const gfd = vm.createGuestMemfd({ size: 64 * 1024, flags: 3 });
    const ok = { slot: 5, flags: 0, guestPhysAddr: MiB, memorySize: 64 * 1024, userspaceAddr: mem };
    const cases: [string, () => unknown][] = [
      [
        'MR-2 v1 rejects KVM_MEM_GUEST_MEMFD',
        () => vm.setUserMemoryRegion({ ...ok, flags: KVM_MEM_GUEST_MEMFD }),
      ],
      ['MR-3 slot id 32764', () => vm.setUserMemoryRegion({ ...ok, slot: 32764 })],
      ['MR-4 flag bit 3', () => vm.setUserMemoryRegion2({ ...ok, flags: 1 << 3 })],
      [
        'MR-4 GUEST_MEMFD|READONLY',
        () =>
          vm.setUserMemoryRegion2({ ...ok, flags: KVM_MEM_GUEST_MEMFD | KVM_MEM_READONLY, guestMemfd: gfd }),
      ],
      [
        'MR-4 GUEST_MEMFD|LOG_DIRTY_PAGES',
        () =>
          vm.setUserMemoryRegion2({
            ...ok,
            flags: KVM_MEM_GUEST_MEMFD | KVM_MEM_LOG_DIRTY_PAGES,
            guestMemfd: gfd,
          }),
      ],
      ['MR-5 memory_size 4097', () => vm.setUserMemoryRegion({ ...ok, memorySize: 4097 })],
      ['MR-6 guest_phys_addr 0x100800', () => vm.setUserMemoryRegion({ ...ok, guestPhysAddr: MiB + 0x800 })],
      ['MR-7 userspace_addr unaligned', () => vm.setUserMemoryRegion({ ...ok, userspaceAddr: mem + 8 })],
      [
        'MR-7 also on delete',
        () => vm.setUserMemoryRegion({ ...ok, slot: 0, memorySize: 0, userspaceAddr: 8 }),
      ],
      [
        'MR-8 guest_memfd_offset unaligned',
        () =>
          vm.setUserMemoryRegion2({
            ...ok,
            flags: KVM_MEM_GUEST_MEMFD,
            guestMemfd: gfd,
            guestMemfdOffset: 512,
          }),
      ],
      ['MR-9 as_id 2', () => vm.setUserMemoryRegion({ ...ok, slot: (2 << 16) | 5 })],
      ['MR-10 gpa + size wraps', () => vm.setUserMemoryRegion({ ...ok, guestPhysAddr: 2 ** 64 - 4096 })],
      [
        'MR-12 delete of a slot that does not exist',
        () => vm.setUserMemoryRegion({ ...ok, slot: 77, memorySize: 0 }),
      ],
      [
        'MR-14 modify userspace_addr',
        () => vm.setUserMemoryRegion({ ...ok, slot: 0, memorySize: MiB, guestPhysAddr: 0 }),
      ],
      [
        'MR-14 resize',
        () => vm.setUserMemoryRegion({ ...ok, slot: 0, userspaceAddr: vm.memslots()[0]?.userspaceAddr ?? 0 }),
      ],
    ];
    for (const [name, f] of cases) expect(errOf(f), name).toMatchObject({ code: 'EINVAL' });
    // MR-14: toggling READONLY on an existing slot.
    vm.setUserMemoryRegion(ok);
    expect(errOf(() => vm.setUserMemoryRegion({ ...ok, flags: KVM_MEM_READONLY }))).toMatchObject({
      code: 'EINVAL',
    });
    // FLAGS_ONLY: toggling dirty logging is allowed.
    vm.setUserMemoryRegion({ ...ok, flags: KVM_MEM_LOG_DIRTY_PAGES });
    expect(vm.memslots().find((s) => s.slot === 5)?.flags).toBe(KVM_MEM_LOG_DIRTY_PAGES);
  });

  it('the seed extension fields privateFd/privateOffset are EINVAL, naming the extension', () => {
    const { host, vm } = guest();
    const mem = host.mmap(0, PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    const e = errOf(() =>
      vm.setUserMemoryRegion2({
        slot: 1,
        flags: 0,
        guestPhysAddr: MiB,
        memorySize: PAGE,
        userspaceAddr: mem,
        privateFd: 3,
      }),
    );
    expect(e).toMatchObject({ code: 'EINVAL', call: 'KVM_SET_USER_MEMORY_REGION2' });
    expect((e as Error).message).toContain('KVM_MEM_PRIVATE_MEMFD');
  });

  it('RO-1: a READONLY slot reads like RAM; a write exits as KVM_EXIT_MMIO with the data and leaves memory unchanged', () => {
    const { host, vm, vcpu } = guest();
    const mem = host.mmap(0, PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    host.writeMemory(mem + 16, new Uint8Array([0x11, 0x22]));
    vm.setUserMemoryRegion({
      slot: 1,
      flags: KVM_MEM_READONLY,
      guestPhysAddr: MiB,
      memorySize: PAGE,
      userspaceAddr: mem,
    });
    vcpu.setProgram(
      program((b) =>
        b
          .load(2, 'r9', MiB + 16)
          .sync(1)
          .storeImm(4, MiB + 16, 0xdeadbeef)
          .sync(2)
          .halt(),
      ),
    );
    expectSync(vcpu, 1);
    expect(vcpu.getRegs().r9).toBe(0x2211n);
    const w = runSkippingIntr(vcpu);
    expectMmio(w, MiB + 16, true, 4);
    expect([...(w.mmio?.data ?? []).slice(0, 4)]).toEqual([0xef, 0xbe, 0xad, 0xde]);
    expectSync(vcpu, 2);
    expect([...host.readMemory(mem + 16, 4)]).toEqual([0x11, 0x22, 0, 0]);
    expect(runSkippingIntr(vcpu).exitReason).toBe(KVM_EXIT_HLT);
  });

  it('RO-2/RO-3: a read of a gpa without a memslot exits as MMIO; the data the VMM fills in reaches the guest', () => {
    const { vcpu } = guest();
    vcpu.setProgram(program((b) => b.load(8, 'r12', 0xd000_0000).sync(1)));
    expectMmio(runSkippingIntr(vcpu), 0xd000_0000, false, 8);
    vcpu.kvmRun.mmio.data.set([1, 2, 3, 4, 5, 6, 7, 8]);
    expectSync(vcpu, 1);
    expect(vcpu.getRegs().r12).toBe(0x0807060504030201n);
  });

  it('munmap under a live slot keeps the hva range reserved (PROT_NONE) until the slot is deleted', () => {
    const { host, vm, vcpu } = guest();
    const mem = host.mmap(0, 2 * PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    vm.setUserMemoryRegion({
      slot: 1,
      flags: 0,
      guestPhysAddr: MiB,
      memorySize: 2 * PAGE,
      userspaceAddr: mem,
    });
    host.munmap(mem, 2 * PAGE);
    expect(() => host.readMemory(mem, 1)).toThrow(/SIGSEGV/);
    const line = `${mem.toString(16)}-${(mem + 2 * PAGE).toString(16)} ---p`;
    expect(readFileSync('/proc/self/maps', 'utf8')).toContain(line);
    // The guest sees a hole: row 8f says KVM_RUN fails with EFAULT; PVM emulates it as MMIO.
    vcpu.setProgram(program((b) => b.load(4, 'r9', MiB).sync(1)));
    const r = runSkippingIntr(vcpu);
    expect(r.exitReason === KVM_EXIT_MMIO || (r.ret === -1 && r.errno === 'EFAULT'), JSON.stringify(r)).toBe(
      true,
    );
    vm.setUserMemoryRegion({ slot: 1, flags: 0, guestPhysAddr: MiB, memorySize: 0, userspaceAddr: mem });
    expect(readFileSync('/proc/self/maps', 'utf8')).not.toContain(line);
  });

  it('a slot whose hva range reaches Node’s own memory is undone and refused (EFAULT)', () => {
    const { host, vm } = guest();
    const first = readFileSync('/proc/self/maps', 'utf8').split('\n')[0] ?? '';
    const nodeAddr = Number.parseInt(first.split('-')[0] ?? '0', 16);
    const e = errOf(() =>
      vm.setUserMemoryRegion({
        slot: 1,
        flags: 0,
        guestPhysAddr: MiB,
        memorySize: PAGE,
        userspaceAddr: nodeAddr,
      }),
    );
    expect(e).toMatchObject({ code: 'EFAULT', call: 'KVM_SET_USER_MEMORY_REGION' });
    // The kernel no longer has slot 1: deleting it is EINVAL (MR-12), creating it again works.
    expect(
      errOf(() =>
        vm.setUserMemoryRegion({ slot: 1, flags: 0, guestPhysAddr: MiB, memorySize: 0, userspaceAddr: 0 }),
      ),
    ).toMatchObject({
      code: 'EINVAL',
    });
    const mem = host.mmap(0, PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    vm.setUserMemoryRegion({ slot: 1, flags: 0, guestPhysAddr: MiB, memorySize: PAGE, userspaceAddr: mem });
  });

  it('a slot over addresses nobody mapped is accepted and reserved, so Node cannot map there while it lives', () => {
    const { host, vm } = guest();
    // Find a free range: map and unmap (no slot points at it yet).
    const free = host.mmap(0, 4 * PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    host.munmap(free, 4 * PAGE);
    vm.setUserMemoryRegion({
      slot: 1,
      flags: 0,
      guestPhysAddr: MiB,
      memorySize: 4 * PAGE,
      userspaceAddr: free,
    });
    expect(readFileSync('/proc/self/maps', 'utf8')).toContain(
      `${free.toString(16)}-${(free + 4 * PAGE).toString(16)} ---p`,
    );
    expect(() => host.readMemory(free, 1)).toThrow(/SEGV_MAPERR/);
    // The user may still place memory there with MAP_FIXED (the range is the host's).
    const m = host.mmap(free, PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS | 0x10, -1, 0);
    expect(m).toBe(free);
    host.writeMemory(free, new Uint8Array([1]));
  });
});
