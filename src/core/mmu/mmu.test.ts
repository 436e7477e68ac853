import { afterEach, describe, expect, it } from 'vitest';
import { expectErrno, expectNoLeaks, MiB, PAGE } from '../../../test/helpers.js';
import { memfdMapping, region, vcpuWith, vmWithRam } from '../../../test/kvm_helpers.js';
import type { KvmVm } from '../kvm/kvm_main.js';
import * as U from '../uapi.js';
import { program } from '../vcpu/program.js';
import {
  type FaultPhase,
  kvmTdpPageFault,
  newFault,
  RET_PF_EMULATE,
  RET_PF_FIXED,
  RET_PF_RETRY,
} from './mmu.js';

afterEach(expectNoLeaks);

const R = region;

function fault(vm: KvmVm, gpa: number, write = false) {
  const f = newFault(gpa, write, false, 0);
  return { r: kvmTdpPageFault(vm, f), f };
}

describe('the decision table, shared rows (§3)', () => {
  it('row 11: a fault installs an SPTE for the host page behind userspace_addr', () => {
    const t = vmWithRam();
    t.host.writeMemory(t.ramHva + 0x3000, new Uint8Array([0x5a]));
    const { r, f } = fault(t.vm.kvm, 0x3000);
    expect(r).toBe(RET_PF_FIXED);
    expect(f.row).toBe('8b');
    const mmu = t.vm.kvm.mmu[0];
    const pfn = mmu?.lookup(3) ?? -1;
    const buf = new Uint8Array(1);
    t.host.kernel.alloc.read(pfn as never, 0, buf, 0, 1);
    expect(buf[0]).toBe(0x5a);
    expect(mmu?.lastLevel).toBe(1);
    // A read fault of a shared writable mapping maps writable (8b: opportunistic write).
    expect((mmu?.lastFlags ?? 0) & 0x02).toBe(0x02);
  });

  it('row 4: no memslot → emulated MMIO with an MMIO SPTE cached until the next memslot change (MR-20)', () => {
    const t = vmWithRam(0, MiB);
    const { r } = fault(t.vm.kvm, 0x800000);
    expect(r).toBe(RET_PF_EMULATE);
    expect(t.vm.kvm.mmu[0]?.stats().mmio).toBe(1);
    const [, hva] = memfdMapping(t.host, PAGE);
    t.vm.setUserMemoryRegion(R(1, 0x800000, PAGE, hva));
    // The cached MMIO SPTE is stale by generation: the next fault maps memory.
    expect(fault(t.vm.kvm, 0x800000).r).toBe(RET_PF_FIXED);
  });

  it('row 4, MR-16: no MMIO SPTE for a gfn above kvm_mmu_max_gfn() (kvm_handle_noslot_fault): emulated, SPTEs untouched', () => {
    const t = vmWithRam(0, MiB); // host MAXPHYADDR 48: kvm_mmu_max_gfn() = 2^36 - 1
    const k = t.vm.kvm;
    expect(k.maxGfn).toBe(2 ** 36 - 1);
    const gen = k.mmu[0]?.generation;
    // gpa 2^48 and up, 2^52 + a page, a gpa ≥ 2^63, and negative gpas: the u64s 2^64 - 16 and
    // 2^64 - 2^40 (vcpu.ts `ea`: the model's form of an address ≥ 2^63).
    for (const gpa of [2 ** 48, 2 ** 52 + PAGE + 8, 2 ** 63 + 2 ** 20, -16, -(2 ** 40)]) {
      for (const write of [false, true]) {
        const { r, f } = fault(k, gpa, write);
        expect(r, `gpa ${gpa}`).toBe(RET_PF_EMULATE);
        expect(f.row).toBe('4');
        expect(f.gfn).toBeGreaterThan(k.maxGfn);
        expect(f.gfn).toBeLessThan(2 ** 52);
      }
    }
    // The gfn is the u64 gpa's: (u64)-16 >> 12 = 2^52 - 1; 2^52 + a page wraps to nothing past 2^52.
    expect(newFault(-16, false, false, 0).gfn).toBe(2 ** 52 - 1);
    expect(newFault(-(2 ** 40), false, false, 0).gfn).toBe(2 ** 52 - 2 ** 28);
    expect(newFault(2 ** 64 + 2 * PAGE, false, false, 0).gfn).toBe(2);
    expect(k.mmu[0]?.stats()).toMatchObject({ mmio: 0, tables: 0 });
    expect(k.mmu[0]?.generation).toBe(gen);
    // The last gfn below the limit still caches its MMIO SPTE.
    expect(fault(k, 2 ** 48 - PAGE).r).toBe(RET_PF_EMULATE);
    expect(k.mmu[0]?.stats().mmio).toBe(1);
  });

  it('row 5: a fault on an INVALID slot retries; row 8a: a write to a READONLY slot emulates', () => {
    const t = vmWithRam();
    t.vm.setUserMemoryRegion(R(1, 0x800000, PAGE, t.ramHva, U.KVM_MEM_READONLY));
    expect(fault(t.vm.kvm, 0x800000, true)).toMatchObject({ r: RET_PF_EMULATE, f: { row: '8a' } });
    expect(fault(t.vm.kvm, 0x800000, false).r).toBe(RET_PF_FIXED); // reads are RAM (RO-1)
    t.vm.kvm.memslotWindowHook = () => {
      expect(fault(t.vm.kvm, 0x800000)).toMatchObject({ r: RET_PF_RETRY, f: { row: '5' } });
    };
    t.vm.setUserMemoryRegion(R(1, 0, 0, 0));
    expect.assertions(3);
  });

  it('row 8f / RUN-3: a bad hva is EFAULT with no memory-fault record', () => {
    const t = vmWithRam();
    const [, hva] = memfdMapping(t.host, 2 * PAGE);
    t.vm.setUserMemoryRegion(R(1, 0x800000, 2 * PAGE, hva));
    t.host.munmap(hva + PAGE, PAGE);
    const { r, f } = fault(t.vm.kvm, 0x801000);
    expect(r).toBe(-U.KVM_EINVAL + 22 - 14); // -EFAULT
    expect(f.memoryFaultErrno).toBe(0);
    expect(f.row).toBe('8f');
    t.host.mprotect(hva, PAGE, U.PROT_READ);
    expect(fault(t.vm.kvm, 0x800000, true).r).toBe(-14); // RO-4: write to a read-only VMA
    expect(fault(t.vm.kvm, 0x800000, false).r).toBe(RET_PF_FIXED);
  });

  it('RO-5, row 8e: a poisoned host page raises SIGBUS at the vCPU and retries', () => {
    const t = vmWithRam();
    t.host.madvise(t.ramHva + 0x5000, PAGE, U.MADV_HWPOISON);
    const { r, f } = fault(t.vm.kvm, 0x5000);
    expect(r).toBe(RET_PF_RETRY);
    expect(f.signal).toMatchObject({ name: 'SIGBUS', code: 'BUS_MCEERR_AR', hva: t.ramHva + 0x5000 });
  });
});

describe('the invalidation protocol (INV-1..INV-5) and the fault windows (architecture §6)', () => {
  it('INV-1, INV-2, INV-3: brackets nest, ranges widen, seq moves at every end', () => {
    const t = vmWithRam();
    const k = t.vm.kvm;
    const seq = k.mmuInvalidateSeq;
    k.invalidateBegin();
    k.invalidateRangeAdd(10, 20);
    k.invalidateBegin();
    k.invalidateRangeAdd(5, 12);
    expect([k.mmuInvalidateInProgress, k.mmuInvalidateRangeStart, k.mmuInvalidateRangeEnd]).toEqual([
      2, 5, 20,
    ]);
    k.invalidateEnd();
    expect([k.mmuInvalidateSeq, k.mmuInvalidateInProgress]).toEqual([seq + 1, 1]);
    expect(k.invalidateRetryGfn(k.mmuInvalidateSeq, 7)).toBe(true); // INV-5: in progress, in range
    expect(k.invalidateRetryGfn(k.mmuInvalidateSeq, 30)).toBe(false);
    k.invalidateEnd();
    expect(k.invalidateRetryGfn(seq, 30)).toBe(true); // INV-5: seq changed
    k.invalidateBegin(); // a new first bracket starts from an empty range (INV-1)
    k.invalidateRangeAdd(100, 101);
    expect([k.mmuInvalidateRangeStart, k.mmuInvalidateRangeEnd]).toEqual([100, 101]);
    k.invalidateEnd();
  });

  it('INV-4: host notifiers invalidate only when a memslot maps the range', () => {
    const t = vmWithRam();
    const seq = t.vm.kvm.mmuInvalidateSeq;
    const [fd, other] = memfdMapping(t.host, PAGE);
    t.host.munmap(other, PAGE);
    expect(t.vm.kvm.mmuInvalidateSeq).toBe(seq);
    t.host.madvise(t.ramHva, PAGE, U.MADV_DONTNEED);
    expect(t.vm.kvm.mmuInvalidateSeq).toBe(seq + 1);
    t.host.close(fd);
  });

  const windows: FaultPhase[] = ['snapshot', 'classify', 'resolve'];
  const intruders: [string, (t: ReturnType<typeof vmWithRam>) => void][] = [
    ['munmap of the backing', (t) => t.host.munmap(t.ramHva + 0x7000, PAGE)],
    ['MADV_DONTNEED', (t) => t.host.madvise(t.ramHva + 0x7000, PAGE, U.MADV_DONTNEED)],
    ['a hole punched in the memfd', (t) => t.host.fallocate(t.ramFd, 3, 0x7000, PAGE)],
    ['mprotect', (t) => t.host.mprotect(t.ramHva + 0x7000, PAGE, U.PROT_READ)],
  ];
  for (const phase of windows) {
    for (const [what, intrude] of intruders) {
      // Between classify and resolve the kernel has already passed its lockless pre-check (row
      // 6): a munmap there makes the pfn lookup itself fail (row 8f, EFAULT), as it does in the
      // kernel; every other intruder is caught by row 9 or row 10.
      const want = phase === 'classify' && what.startsWith('munmap') ? -14 : RET_PF_RETRY;
      it(`INV-5: ${what} after '${phase}' → ${want === RET_PF_RETRY ? 'retry' : 'EFAULT'}; no stale SPTE survives`, () => {
        const t = vmWithRam();
        t.host.writeMemory(t.ramHva + 0x7000, new Uint8Array([1]));
        const k = t.vm.kvm;
        let ran = false;
        k.faultPhaseHook = (p) => {
          if (p !== phase || ran) return;
          ran = true;
          intrude(t);
        };
        const { r } = fault(k, 0x7000);
        k.faultPhaseHook = null;
        expect(ran).toBe(true);
        expect(r).toBe(want);
        expect(k.mmu[0]?.lookup(7)).toBe(-1);
        expect(k.mmuInvalidateInProgress).toBe(0);
      });
    }
    // Right after the snapshot the delete completes before the memslot lookup: the fault sees
    // no slot at all (row 4). Later, the slot it found is gone by install time: retry (row 10).
    const afterDelete = phase === 'snapshot' ? RET_PF_EMULATE : RET_PF_RETRY;
    it(`a slot delete after '${phase}' → ${phase === 'snapshot' ? 'MMIO' : 'retry, then MMIO'}`, () => {
      const t = vmWithRam();
      t.vm.setUserMemoryRegion(R(1, 0x800000, PAGE, t.ramHva));
      const k = t.vm.kvm;
      let ran = false;
      k.faultPhaseHook = (p) => {
        if (p !== phase || ran) return;
        ran = true;
        t.vm.setUserMemoryRegion(R(1, 0, 0, 0));
      };
      const { r } = fault(k, 0x800000);
      k.faultPhaseHook = null;
      expect(r).toBe(afterDelete);
      expect(k.mmu[0]?.lookup(0x800)).toBe(-1);
      expect(fault(k, 0x800000).r).toBe(RET_PF_EMULATE);
    });
  }

  it('after a punch the guest sees the new (zero) page, not the freed one', () => {
    const t = vmWithRam();
    t.host.writeMemory(t.ramHva + 0x7000, new Uint8Array([9]));
    const v = vcpuWith(
      t,
      program((b) => b.load(1, 'r8', 0x7000).sync(1).load(1, 'r8', 0x7000).sync(2).halt()),
    );
    v.run();
    expect(v.getRegs().r8).toBe(9n);
    t.host.fallocate(t.ramFd, U.FALLOC_FL_PUNCH_HOLE | U.FALLOC_FL_KEEP_SIZE, 0x7000, PAGE);
    v.run();
    expect(v.getRegs().r8).toBe(0n);
    v.close();
  });

  it('a copy-on-write break in the host moves the guest to the new page (MR-26)', () => {
    const h = vmWithRam().host;
    const kvm = h.openKvm();
    const vm = kvm.createVm();
    kvm.close();
    const fd = h.memfdCreate('file');
    h.pwrite(fd, new Uint8Array(PAGE).fill(3), PAGE, 0);
    const priv = h.mmap(0, 2 * PAGE, U.PROT_READ | U.PROT_WRITE, U.MAP_PRIVATE, fd, 0);
    h.ftruncate(fd, 2 * PAGE);
    vm.setUserMemoryRegion(R(0, 0, 2 * PAGE, priv));
    const v = vm.createVcpu(0);
    v.setProgram(
      program((b) => b.load(1, 'r8', 0x10).sync(1).load(1, 'r8', 0x10).halt()),
      { codeGpa: 0x1000, pageTableGpa: 0 },
    );
    v.run();
    expect(v.getRegs().r8).toBe(3n);
    h.writeMemory(priv + 0x10, new Uint8Array([4])); // CoW in the host
    v.run();
    expect(v.getRegs().r8).toBe(4n);
    v.close();
    vm.close();
    h.munmap(priv, 2 * PAGE);
    h.close(fd);
  });
});

describe('mapping levels (HP-1, HP-2, HP-4, HP-5)', () => {
  function hugeVm(gpa: number, hvaOffset: number, slotBytes: number, flags = 0) {
    const t = vmWithRam(0, MiB);
    const fd = t.host.memfdCreate('huge', U.MFD_HUGETLB | U.MFD_HUGE_2MB);
    t.host.ftruncate(fd, 8 * MiB);
    const hva = t.host.mmap(0, 8 * MiB, U.PROT_READ | U.PROT_WRITE, U.MAP_SHARED, fd, 0);
    t.vm.setUserMemoryRegion(R(1, gpa, slotBytes, hva + hvaOffset, flags));
    return { ...t, hva, fd };
  }

  it('HP-4: a hugetlb-backed slot with aligned gfn and hva maps 2 MiB leaves', () => {
    const t = hugeVm(0x4000_0000, 0, 4 * MiB);
    expect(fault(t.vm.kvm, 0x4000_0000 + 0x3000).f.goalLevel).toBe(2);
    const s = t.vm.kvm.mmu[0]?.stats();
    expect(s?.leaves2m).toBe(1);
    // Any 4K page of the same 2 MiB frame is now mapped.
    expect(t.vm.kvm.mmu[0]?.lookup(0x40000 + 0x1ff)).toBeGreaterThanOrEqual(0);
  });

  it('HP-2: gfn and hva equally misaligned by 4 KiB → 4K everywhere; a partial head frame → 4K there', () => {
    const t = hugeVm(0x4000_0000 + PAGE, 0, 4 * MiB - PAGE);
    expect(fault(t.vm.kvm, 0x4020_0000).f.goalLevel).toBe(1);
    const t2 = hugeVm(0x4000_0000 - PAGE, 2 * MiB - PAGE, 4 * MiB);
    expect(fault(t2.vm.kvm, 0x4000_0000 - PAGE).f.goalLevel).toBe(1); // head frame not fully inside
    expect(fault(t2.vm.kvm, 0x4000_0000).f.goalLevel).toBe(2);
  });

  it('HP-4: ordinary memfd memory is mapped at 4K (the model host has no THP)', () => {
    const t = vmWithRam(0, 4 * MiB);
    expect(fault(t.vm.kvm, 0x200000).f.goalLevel).toBe(1);
  });

  it('HP-5: dirty logging forces 4K, and enabling it drops existing huge mappings', () => {
    const t = hugeVm(0x4000_0000, 0, 4 * MiB);
    fault(t.vm.kvm, 0x4000_0000);
    expect(t.vm.kvm.mmu[0]?.stats().leaves2m).toBe(1);
    t.vm.setUserMemoryRegion(R(1, 0x4000_0000, 4 * MiB, t.hva, U.KVM_MEM_LOG_DIRTY_PAGES));
    expect(t.vm.kvm.mmu[0]?.stats().leaves2m).toBe(0);
    expect(fault(t.vm.kvm, 0x4000_0000).f.goalLevel).toBe(1);
  });
});

describe('dirty logging through guest writes (DL-2, DL-3)', () => {
  it('a page written again after GET_DIRTY_LOG is reported again (write protection + fast fault)', () => {
    const t = vmWithRam();
    t.vm.setUserMemoryRegion(R(1, 0x800000, 64 * PAGE, t.ramHva + MiB, U.KVM_MEM_LOG_DIRTY_PAGES));
    const v = vcpuWith(
      t,
      program((b) =>
        b.storeImm(8, 0x805000, 1).sync(1).storeImm(8, 0x805000, 2).storeImm(8, 0x806000, 2).sync(2).halt(),
      ),
    );
    const bm = new Uint8Array(8);
    v.run();
    t.vm.getDirtyLog({ slot: 1, dirtyBitmap: bm });
    expect(bm[0]).toBe(1 << 5);
    v.run();
    t.vm.getDirtyLog({ slot: 1, dirtyBitmap: bm });
    expect(bm[0]).toBe((1 << 5) | (1 << 6));
    t.vm.getDirtyLog({ slot: 1, dirtyBitmap: bm });
    expect(bm[0]).toBe(0);
    v.close();
  });
});

describe('KVM_PRE_FAULT_MEMORY, shared (PF-1..PF-5)', () => {
  it('maps the range, updates gpa/size in place, and stops at a hole with ENOENT', () => {
    const t = vmWithRam(0, 2 * MiB);
    const v = vcpuWith(
      t,
      program((b) => b.halt()),
    );
    const range = { gpa: 0x10000, size: 4 * PAGE };
    v.preFaultMemory(range);
    expect(range).toEqual({ gpa: 0x14000, size: 0 });
    expect(t.vm.kvm.mmu[0]?.lookup(0x13)).toBeGreaterThanOrEqual(0);
    const partial = { gpa: 2 * MiB - PAGE, size: 2 * PAGE };
    expect(v.preFaultMemory(partial)).toBe(0); // PF-5: progress → 0
    expect(partial).toEqual({ gpa: 2 * MiB, size: PAGE });
    expectErrno(() => v.preFaultMemory(partial), 'ENOENT', 'PF-4');
    expect(partial).toEqual({ gpa: 2 * MiB, size: PAGE });
    v.close();
  });

  it('PF-1: flags, alignment and empty ranges are EINVAL', () => {
    const t = vmWithRam();
    const v = vcpuWith(
      t,
      program((b) => b.halt()),
    );
    expectErrno(() => v.preFaultMemory({ gpa: 0, size: PAGE, flags: 1 }), 'EINVAL', 'PF-1');
    expectErrno(() => v.preFaultMemory({ gpa: 1, size: PAGE }), 'EINVAL', 'PF-1');
    expectErrno(() => v.preFaultMemory({ gpa: 0, size: 0 }), 'EINVAL', 'PF-1');
    v.close();
  });

  it('PF-4: EAGAIN while the slot is being deleted', () => {
    const t = vmWithRam();
    t.vm.setUserMemoryRegion(R(1, 0x800000, PAGE, t.ramHva));
    const v = vcpuWith(
      t,
      program((b) => b.halt()),
    );
    let code = '';
    t.vm.kvm.memslotWindowHook = () => {
      code = expectErrno(() => v.preFaultMemory({ gpa: 0x800000, size: PAGE }), 'EAGAIN', 'PF-4').code;
    };
    t.vm.setUserMemoryRegion(R(1, 0, 0, 0));
    expect(code).toBe('EAGAIN');
    v.close();
  });

  it('PF-3: a pre-fault is a read fault: it does not break copy-on-write', () => {
    const t = vmWithRam(0, MiB);
    const anon = t.host.mmap(0, MiB, U.PROT_READ | U.PROT_WRITE, U.MAP_PRIVATE | U.MAP_ANONYMOUS, -1, 0);
    t.vm.setUserMemoryRegion(R(1, 0x800000, MiB, anon));
    const v = vcpuWith(
      t,
      program((b) => b.halt()),
    );
    v.preFaultMemory({ gpa: 0x800000, size: 16 * PAGE });
    expect(t.host.kernel.mm.stats.cowBreaks).toBe(0);
    expect(t.vm.kvm.mmu[0]?.lookup(0x800)).toBe(t.host.kernel.zeroPfn);
    v.close();
  });
});

describe('the SMM address space’s TDP root is created on first use (kvm_mmu_load)', () => {
  const SMM = 1 << 16; // as_id 1 in the slot field (MR-9)

  it('memslot changes, dirty logging and invalidations in address space 1 leave it uncreated, with the same stats', () => {
    const t = vmWithRam(0, MiB);
    const k = t.vm.kvm;
    expect(k.nrAs).toBe(2);
    expect(k.mmu.length).toBe(1);
    const [, hva] = memfdMapping(t.host, 64 * PAGE);
    t.vm.setUserMemoryRegion(R(SMM | 1, 0x800000, 64 * PAGE, hva));
    t.vm.setUserMemoryRegion(R(SMM | 1, 0x800000, 64 * PAGE, hva, U.KVM_MEM_LOG_DIRTY_PAGES));
    const bm = new Uint8Array(8);
    t.vm.getDirtyLog({ slot: SMM | 1, dirtyBitmap: bm });
    expect(k.unmapGfnRange(1, 0, 2 ** 36)).toBe(0);
    t.host.madvise(hva, 64 * PAGE, 4 /* MADV_DONTNEED: an invalidation over the SMM slot */);
    t.vm.setUserMemoryRegion(R(SMM | 1, 0x800000, 0, hva)); // delete: a flush
    expect(k.mmu.length).toBe(1);
    // As when the root was created eagerly: unmapGfnRange, the invalidation and the flush count as zaps.
    expect(k.stats).toMatchObject({ zaps: 3, zappedSptes: 0 });
  });

  it('a fault in address space 1 creates its root and maps there only; later zaps act on it', () => {
    const t = vmWithRam(0, MiB);
    const k = t.vm.kvm;
    const [, hva] = memfdMapping(t.host, 64 * PAGE);
    t.vm.setUserMemoryRegion(R(SMM | 1, 0x800000, 64 * PAGE, hva));
    const f = newFault(0x803000, true, false, 1);
    expect(kvmTdpPageFault(k, f)).toBe(RET_PF_FIXED);
    expect(k.mmu.length).toBe(2);
    expect(k.mmu[1]?.lookup(0x803)).toBeGreaterThanOrEqual(0);
    expect(k.mmu[0]?.lookup(0x803)).toBe(-1);
    expect(k.mmuFor(1)).toBe(k.mmu[1]);
    t.vm.setUserMemoryRegion(R(SMM | 1, 0x800000, 0, hva));
    expect(k.mmu[1]?.lookup(0x803)).toBe(-1);
    expect(k.stats.zappedSptes).toBe(1);
  });

  it('a VM with one address space has no SMM root to create', () => {
    const t = vmWithRam(U.KVM_X86_SW_PROTECTED_VM, MiB);
    expect(t.vm.kvm.nrAs).toBe(1);
    expect(() => t.vm.kvm.mmuFor(1)).toThrow(/address space 1 of 1/);
  });
});
