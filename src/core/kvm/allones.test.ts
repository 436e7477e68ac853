/**
 * KVM_MEM_ALLONES (seed 004), the extension in allones.ts: the RFC's checks one by one (capability,
 * flag validity, userspace_addr, mutual exclusion, in the RFC's order), the shared 0xff page's
 * life (one frame per host, slot references, teardown), guest reads and writes, delete/move zaps,
 * the whole-slot option, and a guest scanning a 256 MiB PCIe ECAM window.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { expectErrno, expectNoLeaks, MiB, PAGE, trackedHost } from '../../../test/helpers.js';
import { type TestVm, vcpuWith, vmWithRam } from '../../../test/kvm_helpers.js';
import type { RunResult, UserspaceMemoryRegion2 } from '../api.js';
import { InvariantError } from '../errno.js';
import { createHost, type HostOptions, type ModelHost } from '../host.js';
import { OWNER_KERNEL, PG_RESERVED } from '../mm/page_alloc.js';
import { SPTE_HOST_WRITABLE, SPTE_WRITABLE } from '../mmu/spte.js';
import type { TdpMmu } from '../mmu/tdp_mmu.js';
import * as U from '../uapi.js';
import { program, REPORT_PORT } from '../vcpu/program.js';
import type { KvmVcpu } from '../vcpu/vcpu.js';
import {
  ALLONES_MAP_WINDOW_PAGES,
  allonesPage,
  allonesStats,
  KVM_ALLONES_MAP_WHOLE_SLOT,
} from './allones.js';
import type { VmHandle } from './kvm_main.js';

afterEach(expectNoLeaks);

const ON: HostOptions = { kvm: { extensions: { allones: true } } };
/** A hole right above the 1 MiB of RAM that vmWithRam gives slot 0. */
const HOLE = MiB;

function region(slot: number, gpa: number, size: number, flags = U.KVM_MEM_ALLONES): UserspaceMemoryRegion2 {
  return { slot, flags, guestPhysAddr: gpa, memorySize: size, userspaceAddr: 0 };
}

/** A DEFAULT VM with 1 MiB of RAM on a host with the extension, the cap enabled with `args`. */
function allonesVm(args: number[] = [], host = trackedHost(ON)): TestVm {
  const t = vmWithRam(U.KVM_X86_DEFAULT_VM, MiB, host);
  t.vm.enableCap({ cap: U.KVM_CAP_GUESTMEM_ALLONES, args });
  return t;
}

const mmuOf = (vm: VmHandle): TdpMmu => vm.kvm.mmu[0] as TdpMmu;
const slotsOf = (vm: VmHandle) => vm.kvm.listMemslots().map((s) => [s.id, s.baseGfn, s.npages, s.flags]);
const pageOf = (host: ModelHost) => {
  const p = allonesPage(host.kernel);
  if (!p) throw new Error('no all-ones page on this host');
  return p;
};

describe('KVM_MEM_ALLONES (seed 004), an extension: capability and flag', () => {
  it('off by default: cap 0, enableCap EINVAL, the flag rejected as an unknown flag (MR-4)', () => {
    const t = vmWithRam(U.KVM_X86_DEFAULT_VM, MiB);
    expect(t.vm.checkExtension(U.KVM_CAP_GUESTMEM_ALLONES)).toBe(0);
    expectErrno(() => t.vm.enableCap({ cap: U.KVM_CAP_GUESTMEM_ALLONES }), 'EINVAL');
    expectErrno(() => t.vm.setUserMemoryRegion2(region(1, HOLE, PAGE)), 'EINVAL', 'MR-4');
    expect(allonesPage(t.host.kernel)).toBeNull();
  });

  it('available on the host: the VM reports 1, but the flag stays MR-4 until the VM enables it', () => {
    const t = vmWithRam(U.KVM_X86_DEFAULT_VM, MiB, trackedHost(ON));
    expect(t.vm.checkExtension(U.KVM_CAP_GUESTMEM_ALLONES)).toBe(1);
    expectErrno(() => t.vm.setUserMemoryRegion2(region(1, HOLE, PAGE)), 'EINVAL', 'MR-4');
    t.vm.enableCap({ cap: U.KVM_CAP_GUESTMEM_ALLONES });
    t.vm.setUserMemoryRegion2(region(1, HOLE, PAGE));
    expect(slotsOf(t.vm)).toContainEqual([1, HOLE / PAGE, 1, U.KVM_MEM_ALLONES]);
  });

  it('KVM_ENABLE_CAP: flags must be 0 and args[0] may only hold KVM_ALLONES_MAP_WHOLE_SLOT', () => {
    const t = vmWithRam(U.KVM_X86_DEFAULT_VM, MiB, trackedHost(ON));
    expectErrno(() => t.vm.enableCap({ cap: U.KVM_CAP_GUESTMEM_ALLONES, flags: 1 }), 'EINVAL');
    expectErrno(() => t.vm.enableCap({ cap: U.KVM_CAP_GUESTMEM_ALLONES, args: [2] }), 'EINVAL');
    // A failed enable enabled nothing.
    expectErrno(() => t.vm.setUserMemoryRegion2(region(1, HOLE, PAGE)), 'EINVAL', 'MR-4');
    t.vm.enableCap({ cap: U.KVM_CAP_GUESTMEM_ALLONES, args: [KVM_ALLONES_MAP_WHOLE_SLOT] });
    t.vm.setUserMemoryRegion2(region(1, HOLE, PAGE));
  });
});

describe('KVM_MEM_ALLONES: the seed’s validation, in its order', () => {
  it.each([
    // [what, patch, errno, rule]
    ['the v1 ioctl takes bits 0–1 only (bit 8 is ALLONES here, not the RFC’s bit 2)', null, 'EINVAL', 'MR-2'],
    ['slot id checks come first', { slot: 32764, userspaceAddr: PAGE }, 'EINVAL', 'MR-3'],
    [
      'exclusive with GUEST_MEMFD (MR-4, like GUEST_MEMFD’s own exclusions)',
      { flags: U.KVM_MEM_ALLONES | U.KVM_MEM_GUEST_MEMFD },
      'EINVAL',
      'MR-4',
    ],
    [
      'exclusive with PRIVATE_MEMFD',
      { flags: U.KVM_MEM_ALLONES | U.KVM_MEM_PRIVATE_MEMFD },
      'EINVAL',
      'MR-4',
    ],
    [
      'memory_size alignment before userspace_addr',
      { memorySize: PAGE + 1, userspaceAddr: PAGE },
      'EINVAL',
      'MR-5',
    ],
    [
      'guest_phys_addr alignment before userspace_addr',
      { guestPhysAddr: HOLE + 8, userspaceAddr: PAGE },
      'EINVAL',
      'MR-6',
    ],
    ['userspace_addr must be 0', { userspaceAddr: 0x7f00_0000_0000 }, 'EINVAL', 'AO-1'],
    [
      'userspace_addr 0 is checked before its alignment (MR-7 never sees it)',
      { userspaceAddr: 0x800 },
      'EINVAL',
      'AO-1',
    ],
    [
      'userspace_addr before the READONLY exclusion',
      { flags: U.KVM_MEM_ALLONES | U.KVM_MEM_READONLY, userspaceAddr: PAGE },
      'EINVAL',
      'AO-1',
    ],
    ['exclusive with READONLY', { flags: U.KVM_MEM_ALLONES | U.KVM_MEM_READONLY }, 'EINVAL', 'AO-2'],
    [
      'exclusive with LOG_DIRTY_PAGES',
      { flags: U.KVM_MEM_ALLONES | U.KVM_MEM_LOG_DIRTY_PAGES },
      'EINVAL',
      'AO-2',
    ],
    ['the seed checks deletes too', { slot: 0, memorySize: 0, userspaceAddr: PAGE }, 'EINVAL', 'AO-1'],
    ['address space after the seed’s checks', { slot: 2 << 16 }, 'EINVAL', 'MR-9'],
    ['overlap with RAM', { guestPhysAddr: 0 }, 'EEXIST', 'MR-15'],
    ['last gfn above kvm_mmu_max_gfn()', { guestPhysAddr: 2 ** 48 }, 'EINVAL', 'MR-16'],
  ] as const)('%s → %s (%s)', (_what, patch, code, rule) => {
    const t = allonesVm();
    const before = slotsOf(t.vm);
    const r = { ...region(1, HOLE, 4 * PAGE), ...(patch ?? {}) };
    if (patch === null) expectErrno(() => t.vm.setUserMemoryRegion(r), code, rule);
    else expectErrno(() => t.vm.setUserMemoryRegion2(r), code, rule);
    // A failed call changes nothing, and a failed CREATE leaves no page reference behind.
    expect(slotsOf(t.vm)).toEqual(before);
    expect(allonesPage(t.host.kernel)?.slots ?? 0).toBe(0);
  });

  it('MR-14: ALLONES cannot be toggled on an existing slot, either way; an identical re-issue is a no-op', () => {
    const t = allonesVm();
    t.vm.setUserMemoryRegion2(region(1, HOLE, 4 * PAGE));
    expectErrno(() => t.vm.setUserMemoryRegion2(region(1, HOLE, 4 * PAGE, 0)), 'EINVAL', 'MR-14');
    // A plain slot with userspace_addr 0 is legal (MR-7); it cannot become ALLONES in place.
    t.vm.setUserMemoryRegion2(region(2, 2 * MiB, PAGE, 0));
    expectErrno(() => t.vm.setUserMemoryRegion2(region(2, 2 * MiB, PAGE)), 'EINVAL', 'MR-14');
    // Dirty logging cannot be switched on either (AO-2 before MR-14).
    expectErrno(
      () =>
        t.vm.setUserMemoryRegion2(region(1, HOLE, 4 * PAGE, U.KVM_MEM_ALLONES | U.KVM_MEM_LOG_DIRTY_PAGES)),
      'EINVAL',
      'AO-2',
    );
    expect(t.vm.kvm.setMemoryRegion(region(1, HOLE, 4 * PAGE), true)).toBe('NONE');
    expect(pageOf(t.host).slots).toBe(1);
  });

  it('MR-12: an ALLONES slot is deleted with any flags (flags 0 here) and drops its page reference', () => {
    const t = allonesVm();
    t.vm.setUserMemoryRegion2(region(1, HOLE, 4 * PAGE));
    expect(pageOf(t.host).slots).toBe(1);
    t.vm.setUserMemoryRegion2(region(1, HOLE, 0, 0));
    expect(pageOf(t.host).slots).toBe(0);
    expect(slotsOf(t.vm).map((s) => s[0])).toEqual([0]);
  });

  it('KVM’s own accessors go through userspace_addr, which an ALLONES slot does not have: EFAULT', () => {
    const t = allonesVm();
    t.vm.setUserMemoryRegion2(region(1, HOLE, PAGE));
    expectErrno(() => t.vm.kvm.readGuest(HOLE, 4), 'EFAULT');
    expectErrno(() => t.vm.kvm.writeGuest(HOLE, new Uint8Array(4)), 'EFAULT');
  });
});

describe('KVM_MEM_ALLONES: the shared 0xff page', () => {
  it('is one reserved kernel frame of 0xff, in no file and no VMA, created on the first slot', () => {
    const t = allonesVm();
    const alloc = t.host.kernel.alloc;
    const frames = alloc.stats.allocated;
    expect(allonesPage(t.host.kernel)).toBeNull();
    t.vm.setUserMemoryRegion2(region(1, HOLE, 64 * PAGE));
    expect(alloc.stats.allocated - frames).toBe(1);
    const { pfn } = pageOf(t.host);
    expect(alloc.ownerOf(pfn)).toBe(OWNER_KERNEL);
    expect((alloc.flags[pfn] as number) & PG_RESERVED).toBe(PG_RESERVED);
    expect(alloc.refcount[pfn]).toBe(2); // the kernel's reference and the slot's
    const bytes = new Uint8Array(PAGE);
    alloc.read(pfn, 0, bytes, 0, PAGE);
    expect(bytes.every((b) => b === 0xff)).toBe(true);
    // Owned by the kernel, not by an inode: it is in no page cache, so no mmap can reach it;
    // and the process maps nothing but its RAM memfd.
    expect(t.host.memoryMap().map((m) => m.ino)).toEqual([t.host.fstat(t.ramFd).ino]);
  });

  it('two VMs, four slots, one page: the frame count proves it', () => {
    const host = trackedHost(ON);
    const alloc = host.kernel.alloc;
    const a = allonesVm([], host);
    const b = allonesVm([], host);
    // Each vCPU fetches its code once first, so its RAM page is counted before the baseline.
    const vcpus = [a, b].map((t) =>
      vcpuWith(
        t,
        program((p) => p.halt()),
      ),
    );
    for (const v of vcpus) expect(v.run().exitReasonName).toBe('KVM_EXIT_HLT');
    const frames = alloc.stats.allocated;
    a.vm.setUserMemoryRegion2(region(1, HOLE, 256 * PAGE));
    a.vm.setUserMemoryRegion2(region(2, 4 * MiB, 256 * PAGE));
    b.vm.setUserMemoryRegion2(region(1, HOLE, 256 * PAGE));
    b.vm.setUserMemoryRegion2(region(7, 64 * MiB, 1024 * PAGE));
    const body = program((p) =>
      p
        .mov('r9', HOLE)
        .loop('r10', 256, (l) => l.load(4, 'r8', { base: 'r9', disp: 0 }).add('r9', PAGE))
        .halt(),
    );
    for (const v of vcpus) {
      v.setProgram(body);
      expect(v.run().exitReasonName).toBe('KVM_EXIT_HLT');
    }
    // 2 × 256 hole pages read, 4 slots, 2 VMs: one frame.
    expect(alloc.stats.allocated - frames).toBe(1);
    const { pfn, slots } = pageOf(host);
    expect(slots).toBe(4);
    expect(alloc.refcount[pfn]).toBe(5);
    expect(mmuOf(a.vm).lookup(HOLE / PAGE + 17)).toBe(pfn);
    expect(mmuOf(b.vm).lookup(HOLE / PAGE + 255)).toBe(pfn);
    // Closing one VM (its vCPU pins it too) drops its two references; the page stays for the other.
    vcpus[0]?.close();
    a.vm.close();
    expect(pageOf(host).slots).toBe(2);
    expect(alloc.refcount[pfn]).toBe(3);
  });

  it('host teardown frees it: leaks() reports 0 frames with VMs and vCPUs left open', () => {
    const host = createHost(ON);
    const t = allonesVm([], host);
    t.vm.setUserMemoryRegion2(region(1, HOLE, 8 * PAGE));
    const v = vcpuWith(
      t,
      program((p) => p.load(8, 'r8', HOLE).halt()),
    );
    expect(v.run().exitReasonName).toBe('KVM_EXIT_HLT');
    const { pfn } = pageOf(host);
    host.dispose();
    expect(host.leaks()).toEqual({ frames: 0, fds: 0, vmas: 0, openInvalidations: 0, lockWaiters: 0 });
    expect(host.kernel.alloc.refcount[pfn]).toBe(0);
    expect(allonesPage(host.kernel)).toBeNull();
  });

  it('is never freed while a slot references it: teardown with a VM kept alive warns and keeps it', () => {
    const host = createHost(ON);
    const t = allonesVm([], host);
    t.vm.setUserMemoryRegion2(region(1, HOLE, 8 * PAGE));
    const { pfn } = pageOf(host);
    t.vm.kvm.get(); // a reference that nobody drops before teardown (a leaked kvm_get_kvm)
    expect(() => host.dispose()).toThrow(InvariantError);
    expect(host.kernel.alloc.refcount[pfn]).toBe(2);
    const bytes = new Uint8Array(8);
    host.kernel.alloc.read(pfn, 0, bytes, 0, 8);
    expect([...bytes]).toEqual(new Array(8).fill(0xff));
    t.vm.kvm.put(); // the VM goes; its slot drops the reference
    expect(host.kernel.alloc.refcount[pfn]).toBe(1);
  });

  it('ENOMEM (MR-18) when the host has no frame left for it; nothing changes', () => {
    const host = trackedHost({ ...ON, ramLimitBytes: PAGE }); // the zero page takes the only frame
    const kvm = host.openKvm();
    const vm = kvm.createVm();
    kvm.close();
    vm.enableCap({ cap: U.KVM_CAP_GUESTMEM_ALLONES });
    expectErrno(() => vm.setUserMemoryRegion2(region(1, HOLE, PAGE)), 'ENOMEM', 'MR-18');
    expect(vm.kvm.listMemslots()).toEqual([]);
    expect(allonesPage(host.kernel)).toBeNull();
  });

  it('a MOVE carries the slot’s reference; a MOVE that fails after prepare (MR-16) keeps it with the old slot', () => {
    const t = allonesVm();
    t.vm.setUserMemoryRegion2(region(1, HOLE, 4 * PAGE));
    const { pfn } = pageOf(t.host);
    const refs = t.host.kernel.alloc.refcount[pfn];
    expectErrno(() => t.vm.setUserMemoryRegion2(region(1, 2 ** 48, 4 * PAGE)), 'EINVAL', 'MR-16');
    t.vm.setUserMemoryRegion2(region(1, 8 * MiB, 4 * PAGE));
    expect(pageOf(t.host).slots).toBe(1);
    expect(t.host.kernel.alloc.refcount[pfn]).toBe(refs);
    t.vm.setUserMemoryRegion2(region(1, 8 * MiB, 0));
    expect(pageOf(t.host).slots).toBe(0);
  });
});

/** Runs until HLT, answering MMIO reads with `answer(gpa, len)`; returns every exit seen. */
function runToHalt(v: KvmVcpu, answer: (gpa: number, len: number) => number[] = () => []): RunResult[] {
  const exits: RunResult[] = [];
  for (let i = 0; i < 1000; i++) {
    const r = v.run();
    exits.push(r);
    if (r.exitReasonName === 'KVM_EXIT_HLT') return exits;
    if (r.exitReasonName !== 'KVM_EXIT_MMIO') throw new Error(`unexpected exit ${r.exitReasonName}`);
    if (r.mmio && !r.mmio.isWrite) v.kvmRun.mmio.data.set(answer(r.mmio.physAddr, r.mmio.len));
  }
  throw new Error('no HLT after 1000 exits');
}

describe('KVM_MEM_ALLONES: guest accesses', () => {
  const SLOT_PAGES = 4;
  const END = HOLE + SLOT_PAGES * PAGE;

  it('reads of every width, across page boundaries and at the slot’s last byte: all-ones, no exit', () => {
    const t = allonesVm();
    t.vm.setUserMemoryRegion2(region(1, HOLE, SLOT_PAGES * PAGE));
    t.host.writeMemory(t.ramHva + HOLE - 4, new Uint8Array([0x11, 0x22, 0x33, 0x44]));
    const v = vcpuWith(
      t,
      program((p) =>
        p
          .load(1, 'r8', HOLE)
          .load(2, 'r9', HOLE + 0x7ff)
          .load(4, 'r10', HOLE + 2 * PAGE + 0x123)
          .load(8, 'r11', HOLE + PAGE - 4) // crosses from page 0 into page 1 of the slot
          .load(1, 'r12', END - 1) // the slot's last byte
          .load(8, 'r13', END - 8) // the slot's last 8 bytes
          .load(8, 'r14', HOLE - 4) // RAM then ALLONES, no exit
          .halt(),
      ),
    );
    const exits = runToHalt(v);
    expect(exits.map((e) => e.exitReasonName)).toEqual(['KVM_EXIT_HLT']);
    const r = v.getRegs();
    expect([r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14]).toEqual([
      0xffn,
      0xffffn,
      0xffffffffn,
      0xffffffffffffffffn,
      0xffn,
      0xffffffffffffffffn,
      0xffffffff44332211n,
    ]);
    expect(t.vm.kvm.stats.mmioExits).toBe(0);
    expect(allonesStats(t.vm.kvm)).toMatchObject({ readFaults: SLOT_PAGES, writeEmulations: 0 });
  });

  it('a read past the slot’s end: the in-slot fragment reads 0xff, the rest is an MMIO exit (RO-2)', () => {
    const t = allonesVm();
    t.vm.setUserMemoryRegion2(region(1, HOLE, SLOT_PAGES * PAGE));
    const v = vcpuWith(
      t,
      program((p) => p.load(8, 'r8', END - 3).halt()),
    );
    const exits = runToHalt(v, () => [1, 2, 3, 4, 5]);
    expect(exits[0]).toMatchObject({
      exitReasonName: 'KVM_EXIT_MMIO',
      mmio: { physAddr: END, len: 5, isWrite: false },
    });
    expect(exits).toHaveLength(2);
    expect(v.getRegs().r8).toBe(0x0504030201ffffffn);
  });

  it('mapped read-only at 4 KiB: no WRITABLE, no HOST_WRITABLE, never huge (even 2 MiB-aligned)', () => {
    const t = allonesVm();
    const base = 4 * MiB; // 2 MiB-aligned, 2 MiB frames wholly inside the slot
    t.vm.setUserMemoryRegion2(region(1, base, 4 * MiB));
    const v = vcpuWith(
      t,
      program((p) =>
        p
          .mov('r9', base)
          .loop('r10', 1024, (l) => l.load(8, 'r8', { base: 'r9', disp: 0 }).add('r9', PAGE))
          .halt(),
      ),
    );
    expect(runToHalt(v)).toHaveLength(1);
    const mmu = mmuOf(t.vm);
    const { pfn } = pageOf(t.host);
    for (const gfn of [base / PAGE, base / PAGE + 511, base / PAGE + 1023]) {
      expect(mmu.lookup(gfn)).toBe(pfn);
      expect(mmu.lastLevel).toBe(1);
      expect(mmu.lastFlags & (SPTE_WRITABLE | SPTE_HOST_WRITABLE)).toBe(0);
    }
    expect(mmu.stats().leaves2m + mmu.stats().leaves1g).toBe(0);
    // KVM_PRE_FAULT_MEMORY maps at 4 KiB too.
    const range = { gpa: 16 * MiB, size: 2 * MiB };
    t.vm.setUserMemoryRegion2(region(2, 16 * MiB, 2 * MiB));
    v.preFaultMemory(range);
    expect(range.size).toBe(0);
    expect(mmu.stats().leaves2m).toBe(0);
  });

  it('writes exit as KVM_EXIT_MMIO with their data and length, change nothing, and complete on re-entry', () => {
    const t = allonesVm();
    t.vm.setUserMemoryRegion2(region(1, HOLE, SLOT_PAGES * PAGE));
    const v = vcpuWith(
      t,
      program((p) =>
        p
          .load(4, 'r12', HOLE + 0x10) // maps the page read-only first
          .storeImm(4, HOLE + 0x10, 0x12345678)
          .mov('r8', 0x1122334455667788n)
          .store(8, HOLE + PAGE - 4, 'r8') // crosses a page boundary: two fragments
          .storeImm(1, END - 1, 0x5a)
          .load(4, 'r9', HOLE + 0x10)
          .load(8, 'r10', HOLE + PAGE - 4)
          .load(1, 'r11', END - 1)
          .halt(),
      ),
    );
    const exits = runToHalt(v);
    const writes = exits.filter((e) => e.exitReasonName === 'KVM_EXIT_MMIO');
    expect(
      writes.map((e) => ({ ...e.mmio, data: [...(e.mmio?.data.subarray(0, e.mmio.len) ?? [])] })),
    ).toEqual([
      { physAddr: HOLE + 0x10, len: 4, isWrite: true, data: [0x78, 0x56, 0x34, 0x12] },
      { physAddr: HOLE + PAGE - 4, len: 4, isWrite: true, data: [0x88, 0x77, 0x66, 0x55] },
      { physAddr: HOLE + PAGE, len: 4, isWrite: true, data: [0x44, 0x33, 0x22, 0x11] },
      { physAddr: END - 1, len: 1, isWrite: true, data: [0x5a] },
    ]);
    expect(exits.at(-1)?.exitReasonName).toBe('KVM_EXIT_HLT');
    const r = v.getRegs();
    expect([r.r9, r.r10, r.r11]).toEqual([0xffffffffn, 0xffffffffffffffffn, 0xffn]);
    const { pfn } = pageOf(t.host);
    const bytes = new Uint8Array(PAGE);
    t.host.kernel.alloc.read(pfn, 0, bytes, 0, PAGE);
    expect(bytes.every((b) => b === 0xff)).toBe(true);
    // Like READONLY-slot writes: no MMIO SPTE cached, reads stay mapped.
    expect(mmuOf(t.vm).stats().mmio).toBe(0);
    expect(mmuOf(t.vm).lookup(HOLE / PAGE)).toBe(pfn);
    expect(allonesStats(t.vm.kvm)?.writeEmulations).toBe(4);
  });

  it('private accesses on a SW_PROTECTED VM end in a memory-fault exit (row 7a: no guest_memfd)', () => {
    const t = vmWithRam(U.KVM_X86_SW_PROTECTED_VM, MiB, trackedHost(ON));
    t.vm.enableCap({ cap: U.KVM_CAP_GUESTMEM_ALLONES });
    t.vm.setUserMemoryRegion2(region(1, HOLE, 2 * PAGE));
    t.vm.setMemoryAttributes({
      address: HOLE + PAGE,
      size: PAGE,
      attributes: U.KVM_MEMORY_ATTRIBUTE_PRIVATE,
    });
    const v = vcpuWith(
      t,
      program((p) =>
        p
          .load(4, 'r8', HOLE)
          .load(4, 'r9', HOLE + PAGE)
          .halt(),
      ),
    );
    expect(v.run()).toMatchObject({
      ret: -1,
      errno: 'EFAULT',
      exitReasonName: 'KVM_EXIT_MEMORY_FAULT',
      memoryFault: { gpa: HOLE + PAGE, size: PAGE, flags: U.KVM_MEMORY_EXIT_FLAG_PRIVATE },
    });
    expect(v.getRegs().r8).toBe(0xffffffffn);
  });
});

describe('KVM_MEM_ALLONES: delete and move zap like any slot (MR-21)', () => {
  it.each([
    ['with SLOT_ZAP_ALL (everything zapped)', false],
    ['without the quirk (only the slot’s range zapped)', true],
  ])('%s', (_what, disableQuirk) => {
    const t = allonesVm();
    if (disableQuirk)
      t.vm.enableCap({ cap: U.KVM_CAP_DISABLE_QUIRKS2, args: [U.KVM_X86_QUIRK_SLOT_ZAP_ALL] });
    t.vm.setUserMemoryRegion2(region(1, HOLE, 4 * PAGE));
    const v = vcpuWith(
      t,
      program((p) => p.load(4, 'r8', HOLE + 3 * PAGE).halt()),
    );
    runToHalt(v);
    const mmu = mmuOf(t.vm);
    const { pfn } = pageOf(t.host);
    const gfn = HOLE / PAGE + 3;
    expect(mmu.lookup(gfn)).toBe(pfn);
    // MOVE: the old range is unmapped and has no memslot; the new one reads 0xff.
    t.vm.setUserMemoryRegion2(region(1, 32 * MiB, 4 * PAGE));
    expect(mmu.lookup(gfn)).toBe(-1);
    v.setProgram(
      program((p) =>
        p
          .load(4, 'r8', HOLE + 3 * PAGE)
          .load(4, 'r9', 32 * MiB + 3 * PAGE)
          .halt(),
      ),
    );
    const exits = runToHalt(v, () => [7, 0, 0, 0]);
    expect(exits[0]).toMatchObject({ exitReasonName: 'KVM_EXIT_MMIO', mmio: { physAddr: HOLE + 3 * PAGE } });
    expect([v.getRegs().r8, v.getRegs().r9]).toEqual([7n, 0xffffffffn]);
    expect(mmu.lookup((32 * MiB) / PAGE + 3)).toBe(pfn);
    // DELETE: unmapped; the code page in RAM survives unless SLOT_ZAP_ALL zapped everything.
    t.vm.setUserMemoryRegion2(region(1, 32 * MiB, 0));
    expect(mmu.lookup((32 * MiB) / PAGE + 3)).toBe(-1);
    expect(mmu.lookup(0x1000 / PAGE) >= 0).toBe(disableQuirk);
    expect(pageOf(t.host).slots).toBe(0);
  });
});

describe('KVM_MEM_ALLONES: the RFC’s “map the whole slot upon first fault” (args[0] = 1)', () => {
  it('one read maps every page of the slot; on demand maps one', () => {
    const pages = 4096; // 16 MiB
    const spte = (args: number[]) => {
      const t = allonesVm(args);
      t.vm.setUserMemoryRegion2(region(1, 64 * MiB, pages * PAGE));
      runToHalt(
        vcpuWith(
          t,
          program((p) => p.load(4, 'r8', 64 * MiB + 100 * PAGE).halt()),
        ),
      );
      const mmu = mmuOf(t.vm);
      let leaves = 0;
      for (let i = 0; i < pages; i++) if (mmu.lookup((64 * MiB) / PAGE + i) >= 0) leaves++;
      return { leaves, stats: allonesStats(t.vm.kvm) };
    };
    const onDemand = spte([]);
    const whole = spte([KVM_ALLONES_MAP_WHOLE_SLOT]);
    expect(onDemand).toEqual({ leaves: 1, stats: { readFaults: 1, writeEmulations: 0, eagerSptes: 0 } });
    expect(whole).toEqual({
      leaves: pages,
      stats: { readFaults: 1, writeEmulations: 0, eagerSptes: pages - 1 },
    });
  });

  it('skips private gfns and those under an invalidation, and stays within its 2^20-page window', () => {
    const t = vmWithRam(U.KVM_X86_SW_PROTECTED_VM, MiB, trackedHost(ON));
    t.vm.enableCap({ cap: U.KVM_CAP_GUESTMEM_ALLONES, args: [KVM_ALLONES_MAP_WHOLE_SLOT] });
    const W = ALLONES_MAP_WINDOW_PAGES * PAGE;
    // A slot straddling a window boundary: 8 pages below it, 8 above.
    const base = 2 * W - 8 * PAGE;
    t.vm.setUserMemoryRegion2(region(1, base, 16 * PAGE));
    t.vm.setMemoryAttributes({
      address: base + 2 * PAGE,
      size: PAGE,
      attributes: U.KVM_MEMORY_ATTRIBUTE_PRIVATE,
    });
    // An invalidation of page 5 is in progress when the fault comes (a host notifier bracket).
    const kvm = t.vm.kvm;
    kvm.invalidateBegin();
    kvm.invalidateRangeAdd(base / PAGE + 5, base / PAGE + 6);
    const v = vcpuWith(
      t,
      program((p) => p.load(4, 'r8', base).halt()),
    );
    const mmu = mmuOf(t.vm);
    runToHalt(v);
    kvm.invalidateEnd();
    const mapped = Array.from({ length: 16 }, (_, i) => mmu.lookup(base / PAGE + i) >= 0);
    // 0: the fault's own gfn; 2: private; 5: under the invalidation; 8..15: the next window.
    expect(mapped).toEqual([true, true, false, true, true, false, true, true, ...new Array(8).fill(false)]);
    expect(allonesStats(kvm)?.eagerSptes).toBe(5);
    // Page 5's own fault later maps it and installs nothing new elsewhere: 1, 3, 4, 6, 7 are
    // mapped already, 2 is still private.
    v.setProgram(program((p) => p.load(4, 'r8', base + 5 * PAGE).halt()));
    runToHalt(v);
    expect(mmu.lookup(base / PAGE + 5) >= 0).toBe(true);
    expect(mmu.lookup(base / PAGE + 2)).toBe(-1);
    expect(allonesStats(kvm)).toMatchObject({ readFaults: 2, eagerSptes: 5 });
  });
});

describe('KVM_MEM_ALLONES: a guest scans a 256 MiB PCIe ECAM window', () => {
  // q35's MMCONFIG: 256 buses × 32 devices × 8 functions × 4 KiB.
  const ECAM = 0xb000_0000;
  const FUNCTIONS = 256 * 32 * 8;
  const bdf = (bus: number, dev: number, fn: number): number => bus * MiB + dev * 32 * 1024 + fn * PAGE;
  /** Present functions: offset in the window → vendor/device dword (what a device model answers). */
  const PRESENT = new Map([
    [bdf(0, 0, 0), 0x29c0_8086], // host bridge
    [bdf(0, 1, 0), 0x1111_1234], // VGA
    [bdf(0, 2, 0), 0x1000_1af4], // virtio-net
    [bdf(0, 0x1f, 0), 0x2918_8086], // LPC
    [bdf(0, 0x1f, 2), 0x2922_8086], // AHCI
    [bdf(0, 0x1f, 3), 0x2930_8086], // SMBus
    [bdf(1, 0, 0), 0x1041_1af4], // virtio behind a root port
  ]);
  const TAG = 0xec;

  /** The holes between present functions, as ALLONES slots 10, 11, … */
  function holeSlots(vm: VmHandle): number {
    const present = [...PRESENT.keys()].sort((x, y) => x - y);
    let slot = 10;
    let from = 0;
    for (const end of [...present, 256 * MiB]) {
      if (end > from) vm.setUserMemoryRegion2(region(slot++, ECAM + from, end - from));
      from = end + PAGE;
    }
    return slot - 10;
  }

  it.each([
    ['on demand', [], FUNCTIONS - PRESENT.size],
    ['whole slot on first fault', [KVM_ALLONES_MAP_WHOLE_SLOT], 6],
  ])('%s: holes read 0xffffffff without exits; present functions exit once each', (_what, args, faults) => {
    const t = allonesVm(args);
    const v = vcpuWith(
      t,
      program((p) => p.halt()),
    );
    expect(v.run().exitReasonName).toBe('KVM_EXIT_HLT'); // the code page is RAM the VM already had
    const alloc = t.host.kernel.alloc;
    const frames = alloc.stats.allocated;
    expect(holeSlots(t.vm)).toBe(6); // 1f.2 and 1f.3 are adjacent: no hole between them
    v.setProgram(
      program((p) =>
        p
          .mov('r9', ECAM)
          .loop('r10', FUNCTIONS, (l) => l.cmp(4, { base: 'r9', disp: 0 }, 0xffff_ffff, TAG).add('r9', PAGE))
          .halt(),
      ),
    );
    const found = new Map<number, number>();
    const mmioReads: number[] = [];
    const exits: string[] = [];
    for (;;) {
      const r = v.run();
      exits.push(r.exitReasonName);
      if (r.exitReasonName === 'KVM_EXIT_HLT') break;
      if (r.mmio) {
        // The device model: a config-space read of a present function's vendor/device ID.
        const off = r.mmio.physAddr - ECAM;
        const id = PRESENT.get(off);
        expect(id, `MMIO read at ECAM offset 0x${off.toString(16)}, a hole`).toBeDefined();
        expect(r.mmio).toMatchObject({ len: 4, isWrite: false });
        new DataView(v.kvmRun.mmio.data.buffer).setUint32(0, id ?? 0, true);
        mmioReads.push(off);
      } else {
        expect(r.io).toMatchObject({ port: REPORT_PORT });
        expect(r.io?.data[0]).toBe(TAG);
        const regs = v.getRegs();
        found.set(Number(regs.r9) - ECAM, Number(regs.rbx));
      }
    }
    expect(found).toEqual(PRESENT);
    expect(mmioReads).toEqual([...PRESENT.keys()].sort((x, y) => x - y));
    // 7 MMIO reads, 7 reports, 1 HLT: the 65529 hole reads caused no exit.
    expect(exits).toHaveLength(2 * PRESENT.size + 1);
    expect(allonesStats(t.vm.kvm)?.readFaults).toBe(faults);
    // 256 MiB of holes (minus 7 pages) for one 4 KiB frame.
    expect(alloc.stats.allocated - frames).toBe(1);
    expect(mmuOf(t.vm).stats().leaves4k).toBe(FUNCTIONS - PRESENT.size + 1); // + the code page
  });
});

describe('KVM_MEM_ALLONES: the page refcount is bounded', () => {
  it('65533 slots over three VMs fit; the next one fails with ENOMEM (MR-18), as GUP does on overflow', () => {
    const host = trackedHost(ON);
    const kvm = host.openKvm();
    const vms = [0, 1, 2].map(() => kvm.createVm());
    kvm.close();
    for (const vm of vms) vm.enableCap({ cap: U.KVM_CAP_GUESTMEM_ALLONES });
    const MAX = 0xffff - 2; // u16 refcount, minus the kernel's reference and one fault's
    for (let i = 0; i < MAX; i++) {
      const id = i % 21845;
      (vms[Math.floor(i / 21845)] as VmHandle).setUserMemoryRegion2(region(id, id * PAGE, PAGE));
    }
    const last = vms[2] as VmHandle;
    const { pfn } = pageOf(host);
    expect(host.kernel.alloc.refcount[pfn]).toBe(0xfffe);
    expectErrno(() => last.setUserMemoryRegion2(region(30000, 30000 * PAGE, PAGE)), 'ENOMEM', 'MR-18');
    expect(pageOf(host).slots).toBe(MAX);
    // A fault's transient reference still fits (the code page at 0x1000 is an ALLONES page too).
    const v = last.createVcpu(0) as KvmVcpu;
    v.setProgram(program((p) => p.load(4, 'r8', 2 * PAGE).halt()));
    expect(v.run().exitReasonName).toBe('KVM_EXIT_HLT');
    expect(v.getRegs().r8).toBe(0xffffffffn);
    expect(host.kernel.alloc.refcount[pfn]).toBe(0xfffe);
  });
});
