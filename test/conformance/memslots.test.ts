// Conformance: memslots (kvm-semantics §2.1) and read-only / unbacked guest accesses (§2.8) on
// every backend — errno samples in the kernel's order of checks (MR-2..MR-15), the four
// transitions (create, move, flags-only, delete), EEXIST for overlaps, READONLY writes exiting as
// MMIO with their data (RO-1) and reads of unbacked gpas completed with the VMM's data (RO-2, RO-3).
import { describe, expect, it } from 'vitest';
import type { Host, UserspaceMemoryRegion2 } from '../../src/core/api.js';
import {
  KVM_EXIT_HLT,
  KVM_EXIT_MMIO,
  KVM_MEM_GUEST_MEMFD,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_READONLY,
} from '../../src/core/uapi.js';
import { program, SYNC_PORT } from '../../src/core/vcpu/program.js';
import {
  anon,
  backends,
  backendTitle,
  describeRun,
  errnoOf,
  guestVm,
  MiB,
  need,
  needTitle,
  outOf,
  PAGE,
  runVcpu,
  useHosts,
} from './backends.js';

const GPA = 2 * MiB;
const SIZE = 16 * PAGE;

for (const b of backends) {
  describe.skipIf(!b.available.ok)(backendTitle(b, 'memslots (§2.1) and MMIO (§2.8)'), () => {
    const make = useHosts(b);

    /** A DEFAULT VM with slot 1 = [GPA, +SIZE) over anonymous memory. */
    function vmWithSlot(host: Host = make()) {
      const vm = host.openKvm().createVm(0);
      const mem = anon(host, 4 * SIZE);
      vm.setUserMemoryRegion({ slot: 1, flags: 0, guestPhysAddr: GPA, memorySize: SIZE, userspaceAddr: mem });
      return { host, vm, mem };
    }

    it('MR-2: the v1 ioctl rejects KVM_MEM_GUEST_MEMFD and every bit ≥ 2 with EINVAL', () => {
      const { vm, mem } = vmWithSlot();
      for (let bit = 2; bit < 32; bit++) {
        const flags = (1 << bit) >>> 0;
        const r = { slot: 2, flags, guestPhysAddr: 8 * MiB, memorySize: PAGE, userspaceAddr: mem };
        expect(
          errnoOf(() => vm.setUserMemoryRegion(r)),
          `bit ${bit}`,
        ).toBe('EINVAL');
      }
    });

    it('MR-4: the v2 ioctl rejects bits ≥ 3, GUEST_MEMFD|LOG_DIRTY_PAGES and GUEST_MEMFD|READONLY with EINVAL', () => {
      const { host, vm, mem } = vmWithSlot();
      const gfd = vm.createGuestMemfd({ size: SIZE });
      for (let bit = 3; bit < 32; bit++) {
        const r = {
          slot: 2,
          flags: (1 << bit) >>> 0,
          guestPhysAddr: 8 * MiB,
          memorySize: PAGE,
          userspaceAddr: mem,
        };
        expect(
          errnoOf(() => vm.setUserMemoryRegion2(r)),
          `bit ${bit}`,
        ).toBe('EINVAL');
      }
      for (const extra of [KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY]) {
        const r: UserspaceMemoryRegion2 = {
          slot: 2,
          flags: KVM_MEM_GUEST_MEMFD | extra,
          guestPhysAddr: 8 * MiB,
          memorySize: PAGE,
          userspaceAddr: mem,
          guestMemfd: gfd,
          guestMemfdOffset: 0,
        };
        expect(
          errnoOf(() => vm.setUserMemoryRegion2(r)),
          `GUEST_MEMFD|${extra}`,
        ).toBe('EINVAL');
      }
      host.close(gfd);
    });

    it('MR-3, MR-5, MR-6, MR-7, MR-10, MR-11: invalid ids, sizes, addresses are EINVAL', () => {
      const { vm, mem } = vmWithSlot();
      const base = { slot: 2, flags: 0, guestPhysAddr: 8 * MiB, memorySize: PAGE, userspaceAddr: mem };
      const cases: [string, Partial<UserspaceMemoryRegion2>][] = [
        ['MR-3 slot id 32764 (internal)', { slot: 32764 }],
        ['MR-3 slot id 32767', { slot: 32767 }],
        ['MR-5 memory_size 4097', { memorySize: PAGE + 1 }],
        ['MR-5 memory_size 100', { memorySize: 100 }],
        ['MR-6 guest_phys_addr + 1', { guestPhysAddr: 8 * MiB + 1 }],
        ['MR-7 userspace_addr + 8', { userspaceAddr: mem + 8 }],
        ['MR-10 gpa + size overflows u64', { guestPhysAddr: 2 ** 64 - PAGE, memorySize: 2 * PAGE }],
        ['MR-11 more than 2^31 − 1 pages', { memorySize: 2 ** 43 }],
        ['MR-9 address space 2', { slot: (2 << 16) | 2 }],
      ];
      for (const [what, patch] of cases) {
        expect(
          errnoOf(() => vm.setUserMemoryRegion({ ...base, ...patch })),
          what,
        ).toBe('EINVAL');
      }
    });

    it('MR-5/MR-7 before MR-15: a misaligned request that also overlaps a slot is EINVAL, not EEXIST', () => {
      const { vm, mem } = vmWithSlot();
      const r = { slot: 2, flags: 0, guestPhysAddr: GPA, memorySize: PAGE, userspaceAddr: mem };
      expect(
        errnoOf(() => vm.setUserMemoryRegion(r)),
        'plain overlap',
      ).toBe('EEXIST');
      expect(
        errnoOf(() => vm.setUserMemoryRegion({ ...r, memorySize: PAGE + 1 })),
        'MR-5',
      ).toBe('EINVAL');
      expect(
        errnoOf(() => vm.setUserMemoryRegion({ ...r, userspaceAddr: mem + 1 })),
        'MR-7',
      ).toBe('EINVAL');
    });

    it('MR-15 before GB-1: a guest_memfd slot overlapping another gpa range is EEXIST even with a bad fd; MR-8 before GB-1', () => {
      const { vm, mem } = vmWithSlot();
      const r: UserspaceMemoryRegion2 = {
        slot: 2,
        flags: KVM_MEM_GUEST_MEMFD,
        guestPhysAddr: GPA + PAGE,
        memorySize: PAGE,
        userspaceAddr: mem,
        guestMemfd: 999,
        guestMemfdOffset: 0,
      };
      expect(
        errnoOf(() => vm.setUserMemoryRegion2(r)),
        'MR-15',
      ).toBe('EEXIST');
      expect(
        errnoOf(() => vm.setUserMemoryRegion2({ ...r, guestPhysAddr: 8 * MiB })),
        'GB-1',
      ).toBe('EBADF');
      expect(
        errnoOf(() => vm.setUserMemoryRegion2({ ...r, guestPhysAddr: 8 * MiB, guestMemfdOffset: 100 })),
        'MR-8',
      ).toBe('EINVAL');
    });

    it('MR-12: deleting a slot that does not exist is EINVAL; MR-7 applies to deletes too; delete ignores flags and gpa', () => {
      const { vm, mem } = vmWithSlot();
      const del = { slot: 3, flags: 0, guestPhysAddr: 0, memorySize: 0, userspaceAddr: 0 };
      expect(
        errnoOf(() => vm.setUserMemoryRegion(del)),
        'absent slot',
      ).toBe('EINVAL');
      expect(
        errnoOf(() => vm.setUserMemoryRegion({ ...del, slot: 1, userspaceAddr: 8 })),
        'MR-7',
      ).toBe('EINVAL');
      // The slot is still there: creating over its range is EEXIST.
      const over = { slot: 2, flags: 0, guestPhysAddr: GPA, memorySize: PAGE, userspaceAddr: mem };
      expect(errnoOf(() => vm.setUserMemoryRegion(over))).toBe('EEXIST');
      vm.setUserMemoryRegion({ ...del, slot: 1, flags: KVM_MEM_READONLY, guestPhysAddr: 64 * MiB });
      vm.setUserMemoryRegion(over); // the range is free again
    });

    it('MR-14: modifying a slot may not change userspace_addr, size or READONLY (EINVAL); identical re-issue is 0', () => {
      const { vm, mem } = vmWithSlot();
      const r = { slot: 1, flags: 0, guestPhysAddr: GPA, memorySize: SIZE, userspaceAddr: mem };
      expect(vm.setUserMemoryRegion(r)).toBe(0);
      expect(
        errnoOf(() => vm.setUserMemoryRegion({ ...r, userspaceAddr: mem + PAGE })),
        'hva',
      ).toBe('EINVAL');
      expect(
        errnoOf(() => vm.setUserMemoryRegion({ ...r, memorySize: 2 * SIZE })),
        'size',
      ).toBe('EINVAL');
      expect(
        errnoOf(() => vm.setUserMemoryRegion({ ...r, flags: KVM_MEM_READONLY })),
        'READONLY',
      ).toBe('EINVAL');
    });

    it('MR-14: a guest_memfd slot is immutable: even an identical re-issue is EINVAL; delete then recreate works (GB-9)', () => {
      const { host, vm, mem } = vmWithSlot();
      const gfd = vm.createGuestMemfd({ size: SIZE });
      const r: UserspaceMemoryRegion2 = {
        slot: 2,
        flags: KVM_MEM_GUEST_MEMFD,
        guestPhysAddr: 8 * MiB,
        memorySize: SIZE,
        userspaceAddr: mem,
        guestMemfd: gfd,
        guestMemfdOffset: 0,
      };
      vm.setUserMemoryRegion2(r);
      expect(errnoOf(() => vm.setUserMemoryRegion2(r))).toBe('EINVAL');
      expect(
        errnoOf(() => vm.setUserMemoryRegion2({ ...r, flags: 0 })),
        'gmem → plain',
      ).toBe('EINVAL');
      vm.setUserMemoryRegion2({ slot: 2, flags: 0, guestPhysAddr: 0, memorySize: 0, userspaceAddr: 0 });
      vm.setUserMemoryRegion2(r);
      host.close(gfd);
    });

    it('MR-15: overlapping another slot is EEXIST (front, back, inside, around, and by MOVE); a MOVE may overlap its own old range', () => {
      const { vm, mem } = vmWithSlot();
      const r = { slot: 2, flags: 0, memorySize: 4 * PAGE, userspaceAddr: mem + SIZE };
      for (const gpa of [GPA - 2 * PAGE, GPA + SIZE - PAGE, GPA + 4 * PAGE]) {
        expect(
          errnoOf(() => vm.setUserMemoryRegion({ ...r, guestPhysAddr: gpa })),
          `gpa 0x${gpa.toString(16)}`,
        ).toBe('EEXIST');
      }
      expect(
        errnoOf(() =>
          vm.setUserMemoryRegion({ ...r, guestPhysAddr: GPA - PAGE, memorySize: SIZE + 2 * PAGE }),
        ),
        'around',
      ).toBe('EEXIST');
      vm.setUserMemoryRegion({ ...r, guestPhysAddr: GPA + SIZE }); // adjacent: fine
      const move = { slot: 1, flags: 0, memorySize: SIZE, userspaceAddr: mem };
      expect(
        errnoOf(() => vm.setUserMemoryRegion({ ...move, guestPhysAddr: GPA + PAGE })),
        'MOVE onto slot 2',
      ).toBe('EEXIST');
      vm.setUserMemoryRegion({ ...move, guestPhysAddr: GPA - PAGE }); // overlaps only its own old range
    });

    it.skipIf(!need(b, 'twoAddressSpaces').ok)(
      needTitle(
        b,
        'twoAddressSpaces',
        'MR-9, MR-15: slots in address space 1 never conflict with address space 0',
      ),
      () => {
        const { vm, mem } = vmWithSlot();
        vm.setUserMemoryRegion({
          slot: (1 << 16) | 1,
          flags: 0,
          guestPhysAddr: GPA,
          memorySize: SIZE,
          userspaceAddr: mem,
        });
      },
    );

    it('MR-20, MR-23, MR-24, MR-22: create, MOVE, FLAGS_ONLY and DELETE as the guest sees them', () => {
      const host = make();
      const { vm, vcpu } = guestVm(host);
      const mem = anon(host, SIZE);
      host.writeMemory(mem + 8, new Uint8Array([0x78, 0x56, 0x34, 0x12]));
      const r = { slot: 1, flags: 0, guestPhysAddr: GPA, memorySize: SIZE, userspaceAddr: mem };
      vm.setUserMemoryRegion(r);
      vcpu.setProgram(
        program((p) =>
          p
            .load(4, 'r9', GPA + 8)
            .sync(1)
            .load(4, 'r10', 2 * GPA + 8)
            .sync(2)
            .load(4, 'r11', GPA + 8)
            .sync(3)
            .storeImm(4, 2 * GPA + 12, 0xabcd)
            .sync(4)
            .load(4, 'r12', 2 * GPA + 8)
            .sync(5)
            .halt(),
        ),
      );
      expect(outOf(runVcpu(vcpu))).toEqual([SYNC_PORT, 1]);
      expect(vcpu.getRegs().r9).toBe(0x12345678n);
      vm.setUserMemoryRegion({ ...r, guestPhysAddr: 2 * GPA }); // MOVE
      expect(outOf(runVcpu(vcpu))).toEqual([SYNC_PORT, 2]);
      expect(vcpu.getRegs().r10, 'MR-23: the same memory at the new gpa').toBe(0x12345678n);
      const old = runVcpu(vcpu);
      expect(old, describeRun(old)).toMatchObject({
        ret: 0,
        exitReason: KVM_EXIT_MMIO,
        mmio: { physAddr: GPA + 8, len: 4, isWrite: false },
      });
      vcpu.kvmRun.mmio.data.set([1, 2, 0, 0, 0, 0, 0, 0]);
      expect(outOf(runVcpu(vcpu))).toEqual([SYNC_PORT, 3]);
      expect(vcpu.getRegs().r11, 'MR-23: the old range is MMIO').toBe(0x201n);
      vm.setUserMemoryRegion({ ...r, guestPhysAddr: 2 * GPA, flags: KVM_MEM_LOG_DIRTY_PAGES }); // FLAGS_ONLY
      expect(outOf(runVcpu(vcpu))).toEqual([SYNC_PORT, 4]);
      expect([...host.readMemory(mem + 12, 4)]).toEqual([0xcd, 0xab, 0, 0]);
      vm.setUserMemoryRegion({ ...r, memorySize: 0 }); // DELETE
      const gone = runVcpu(vcpu);
      expect(gone, describeRun(gone)).toMatchObject({
        exitReason: KVM_EXIT_MMIO,
        mmio: { physAddr: 2 * GPA + 8, isWrite: false },
      });
      vcpu.kvmRun.mmio.data.fill(0);
      expect(outOf(runVcpu(vcpu))).toEqual([SYNC_PORT, 5]);
      expect(runVcpu(vcpu).exitReason).toBe(KVM_EXIT_HLT);
    });

    it('RO-1: READONLY slots read like RAM; writes of 1/2/4/8 bytes exit as MMIO with the data and change nothing', () => {
      const host = make();
      const { vm, vcpu } = guestVm(host);
      const mem = anon(host, SIZE);
      host.writeMemory(mem, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]));
      vm.setUserMemoryRegion({
        slot: 1,
        flags: KVM_MEM_READONLY,
        guestPhysAddr: GPA,
        memorySize: SIZE,
        userspaceAddr: mem,
      });
      vcpu.setProgram(
        program((p) =>
          p
            .load(8, 'r8', GPA)
            .storeImm(1, GPA + 0x10, 0xa1)
            .storeImm(2, GPA + 0x20, 0xb2b1)
            .storeImm(4, GPA + 0x30, 0xc4c3c2c1)
            .mov('r9', 0x1122334455667788n)
            .store(8, GPA + 0x40, 'r9')
            .sync(7)
            .halt(),
        ),
      );
      const want: [number, number[]][] = [
        [GPA + 0x10, [0xa1]],
        [GPA + 0x20, [0xb1, 0xb2]],
        [GPA + 0x30, [0xc1, 0xc2, 0xc3, 0xc4]],
        [GPA + 0x40, [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]],
      ];
      for (const [gpa, data] of want) {
        const r = runVcpu(vcpu);
        expect(r, describeRun(r)).toMatchObject({
          ret: 0,
          exitReason: KVM_EXIT_MMIO,
          mmio: { physAddr: gpa, len: data.length, isWrite: true },
        });
        expect([...(r.mmio?.data ?? []).slice(0, data.length)]).toEqual(data);
      }
      expect(outOf(runVcpu(vcpu))).toEqual([SYNC_PORT, 7]);
      expect(vcpu.getRegs().r8).toBe(0x0807060504030201n);
      expect(
        [...host.readMemory(mem + 0x10, 0x38)].every((x) => x === 0),
        'memory unchanged',
      ).toBe(true);
    });

    it('RO-2, RO-3: a read of a gpa without a memslot exits as MMIO of the access size; re-entering completes it with the VMM’s data', () => {
      const host = make();
      const { vcpu } = guestVm(host);
      const HOLE = 0x4000_0000;
      vcpu.setProgram(
        program((p) =>
          p
            .load(1, 'r8', HOLE + 1)
            .load(2, 'r9', HOLE + 2)
            .load(4, 'r10', HOLE + 4)
            .load(8, 'r11', HOLE + 8)
            .cmp(4, HOLE + 0x100, 0x1234, 9)
            .sync(1)
            .halt(),
        ),
      );
      const reads: [number, number][] = [
        [HOLE + 1, 1],
        [HOLE + 2, 2],
        [HOLE + 4, 4],
        [HOLE + 8, 8],
        [HOLE + 0x100, 4],
      ];
      for (const [gpa, len] of reads) {
        const r = runVcpu(vcpu);
        expect(r, describeRun(r)).toMatchObject({
          ret: 0,
          exitReason: KVM_EXIT_MMIO,
          mmio: { physAddr: gpa, len, isWrite: false },
        });
        const data =
          gpa === HOLE + 0x100
            ? [0x34, 0x12, 0, 0, 0, 0, 0, 0]
            : [0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8];
        vcpu.kvmRun.mmio.data.set(data);
      }
      expect(outOf(runVcpu(vcpu)), 'the cmp matched the MMIO data: no report').toEqual([SYNC_PORT, 1]);
      const regs = vcpu.getRegs();
      expect([regs.r8, regs.r9, regs.r10, regs.r11]).toEqual([
        0xf1n,
        0xf2f1n,
        0xf4f3f2f1n,
        0xf8f7f6f5f4f3f2f1n,
      ]);
      expect(regs.rbx).toBe(0x1234n);
    });

    it('RO-2: writes to a gpa without a memslot exit as MMIO writes with their data', () => {
      const host = make();
      const { vcpu } = guestVm(host);
      const HOLE = 0x4000_0000;
      vcpu.setProgram(
        program((p) =>
          p
            .storeImm(2, HOLE + 0x22, 0x5aa5)
            .sync(1)
            .halt(),
        ),
      );
      const r = runVcpu(vcpu);
      expect(r, describeRun(r)).toMatchObject({
        exitReason: KVM_EXIT_MMIO,
        mmio: { physAddr: HOLE + 0x22, len: 2, isWrite: true },
      });
      expect([...(r.mmio?.data ?? []).slice(0, 2)]).toEqual([0xa5, 0x5a]);
      expect(outOf(runVcpu(vcpu))).toEqual([SYNC_PORT, 1]);
    });
  });
}
