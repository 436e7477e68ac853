import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { expectErrno, expectNoLeaks, MiB, PAGE } from '../../../test/helpers.js';
import { vcpuWith, vmWithRam } from '../../../test/kvm_helpers.js';
import * as U from '../uapi.js';
import { program } from '../vcpu/program.js';

afterEach(expectNoLeaks);

const P = U.KVM_MEMORY_ATTRIBUTE_PRIVATE;

describe('KVM_SET_MEMORY_ATTRIBUTES (MA-0..MA-7)', () => {
  it('MA-1: errno order — flags, attributes, size/overflow, alignment', () => {
    const t = vmWithRam(U.KVM_X86_SW_PROTECTED_VM, MiB);
    const s =
      (address: number, size: number, attributes: number, flags = 0) =>
      () =>
        t.vm.setMemoryAttributes({ address, size, attributes, flags });
    expectErrno(s(1, 0, 0xff, 1), 'EINVAL', 'MA-1');
    const e = expectErrno(s(1, 0, 0xff), 'EINVAL', 'MA-1');
    expect(e.message).toContain('attributes');
    expect(expectErrno(s(1, 0, P), 'EINVAL', 'MA-1').message).toContain('size 0');
    expectErrno(s(2 ** 64 - PAGE, 2 * PAGE, P), 'EINVAL', 'MA-1');
    expect(expectErrno(s(1, PAGE, P), 'EINVAL', 'MA-1').message).toContain('aligned');
    expectErrno(s(0, PAGE + 1, P), 'EINVAL', 'MA-1');
  });

  it('MA-4: on a DEFAULT VM 0 is a successful no-op and PRIVATE is EINVAL', () => {
    const t = vmWithRam(0, MiB);
    const seq = t.vm.kvm.mmuInvalidateSeq;
    t.vm.setMemoryAttributes({ address: 0, size: MiB, attributes: 0 });
    expect(t.vm.kvm.mmuInvalidateSeq).toBe(seq);
    expectErrno(() => t.vm.setMemoryAttributes({ address: 0, size: MiB, attributes: P }), 'EINVAL', 'MA-1');
  });

  it('MA-2, MA-3: any gfn range, no memslot needed; the call replaces; attributes survive slot deletion', () => {
    const t = vmWithRam(U.KVM_X86_SW_PROTECTED_VM, MiB);
    const k = t.vm.kvm;
    t.vm.setMemoryAttributes({ address: 2 ** 50, size: 2 ** 40, attributes: P });
    expect(k.isPrivateGfn(2 ** 38 + 5)).toBe(true);
    t.vm.setMemoryAttributes({ address: 0, size: MiB, attributes: P });
    t.vm.setMemoryAttributes({ address: 4 * PAGE, size: PAGE, attributes: 0 });
    expect([k.isPrivateGfn(3), k.isPrivateGfn(4), k.isPrivateGfn(5)]).toEqual([true, false, true]);
    t.vm.setUserMemoryRegion({ slot: 0, flags: 0, guestPhysAddr: 0, memorySize: 0, userspaceAddr: 0 });
    expect(k.isPrivateGfn(3)).toBe(true); // MR-22
  });

  it('MA-4, MA-5, INV-4: an unchanged range does nothing; a change invalidates only where a slot intersects', () => {
    const t = vmWithRam(U.KVM_X86_SW_PROTECTED_VM, MiB);
    const k = t.vm.kvm;
    const v = vcpuWith(
      t,
      program((b) => b.load(8, 'r8', 0x8000).halt()),
    );
    v.run();
    expect(k.mmu[0]?.lookup(8)).toBeGreaterThanOrEqual(0);
    let seq = k.mmuInvalidateSeq;
    t.vm.setMemoryAttributes({ address: 0x4000_0000, size: MiB, attributes: P }); // no slot there
    expect(k.mmuInvalidateSeq).toBe(seq);
    t.vm.setMemoryAttributes({ address: 0x8000, size: PAGE, attributes: P });
    expect(k.mmuInvalidateSeq).toBe(seq + 1);
    expect(k.mmu[0]?.lookup(8)).toBe(-1); // zapped
    seq = k.mmuInvalidateSeq;
    t.vm.setMemoryAttributes({ address: 0x8000, size: PAGE, attributes: P }); // MA-4
    expect(k.mmuInvalidateSeq).toBe(seq);
    expect(k.attributes.stats.noops).toBe(1);
    v.close();
  });

  it('MA-2 complexity: converting a 1 TiB range touches ranges, not pages', () => {
    const t = vmWithRam(U.KVM_X86_SW_PROTECTED_VM, MiB);
    for (let i = 0; i < 8; i++)
      t.vm.setMemoryAttributes({ address: i * 2 ** 40, size: 2 ** 40, attributes: i % 2 ? P : 0 });
    expect(t.vm.kvm.attributes.map.rangeCount).toBe(4);
    t.vm.setMemoryAttributes({ address: 0, size: 8 * 2 ** 40, attributes: P });
    expect(t.vm.kvm.attributes.map.rangeCount).toBe(1);
  });

  it('HP-3: frames with mixed attributes are not mapped huge; uniform ones are again after conversion', () => {
    const t = vmWithRam(U.KVM_X86_SW_PROTECTED_VM, MiB);
    const fd = t.host.memfdCreate('huge', U.MFD_HUGETLB | U.MFD_HUGE_2MB);
    t.host.ftruncate(fd, 4 * MiB);
    const hva = t.host.mmap(0, 4 * MiB, U.PROT_READ | U.PROT_WRITE, U.MAP_SHARED, fd, 0);
    t.vm.setMemoryAttributes({ address: 0x4000_0000 + 0x5000, size: PAGE, attributes: P }); // before the slot
    t.vm.setUserMemoryRegion({
      slot: 1,
      flags: 0,
      guestPhysAddr: 0x4000_0000,
      memorySize: 4 * MiB,
      userspaceAddr: hva,
    });
    const slot = t.vm.kvm.gfnToMemslot(0x40000);
    expect([...(slot?.lpageMixed[0] ?? [])]).toEqual([1, 0]); // computed at slot creation
    t.vm.setMemoryAttributes({ address: 0x4020_0000 + 0x1000, size: 0x3000, attributes: P });
    expect([...(slot?.lpageMixed[0] ?? [])]).toEqual([1, 1]);
    t.vm.setMemoryAttributes({ address: 0x4000_0000, size: 4 * MiB, attributes: 0 });
    expect([...(slot?.lpageMixed[0] ?? [])]).toEqual([0, 0]); // interior frames cleared
    expect(slot?.lpageAllowed(0x40000, 2)).toBe(true);
    t.host.munmap(hva, 4 * MiB);
  });

  it('MA-7: neither a hypercall exit nor a memory-fault exit changes attributes', () => {
    const t = vmWithRam(U.KVM_X86_SW_PROTECTED_VM, MiB);
    t.vm.enableCap({ cap: U.KVM_CAP_EXIT_HYPERCALL, args: [1 << 12] });
    const v = vcpuWith(
      t,
      program((b) => b.hypercall(12, [0x8000, 1, U.KVM_MAP_GPA_RANGE_ENCRYPTED], 'r8')),
    );
    expect(v.run().exitReasonName).toBe('KVM_EXIT_HYPERCALL');
    expect(t.vm.kvm.isPrivateGfn(8)).toBe(false);
    v.close();
  });
});

describe('MA-5: the zap covers the range, the retry range its huge frames', () => {
  it('converting one 4 KiB page of a fully mapped slot zaps that page only', () => {
    const t = vmWithRam(U.KVM_X86_SW_PROTECTED_VM, 4 * MiB);
    const v = vcpuWith(
      t,
      program((b) => b.fill(0, 4 * MiB, 1).halt()),
    );
    v.run();
    const mmu = t.vm.kvm.mmu[0];
    const before = mmu?.stats().leaves4k ?? 0;
    expect(before).toBeGreaterThanOrEqual(1024);
    const k = t.vm.kvm;
    let added: [number, number] = [0, 0];
    const begin = k.invalidateRangeAdd.bind(k);
    k.invalidateRangeAdd = (s, e) => {
      added = [s, e];
      begin(s, e);
    };
    t.vm.setMemoryAttributes({ address: 0x203000, size: PAGE, attributes: P });
    expect(mmu?.stats().leaves4k).toBe(before - 1);
    expect(added).toEqual([0x200, 0x400]); // widened to the 2 MiB frame inside the slot
    v.close();
  });
});

describe('HP-3: mixed flags after any sequence of conversions', () => {
  it('property: equal to a recomputation from the attributes, tracked frames only', () => {
    const GiB = 2 ** 30;
    const t = vmWithRam(U.KVM_X86_SW_PROTECTED_VM, MiB);
    // A slot that starts 2 MiB before a 1 GiB boundary and ends 2 MiB after one: its first and
    // last 1 GiB frames are only partly inside (never tracked), the two between are.
    const base = GiB - 2 * MiB;
    const size = 2 * GiB + 4 * MiB;
    const fd = t.host.memfdCreate('ram');
    t.host.ftruncate(fd, size);
    const hva = t.host.mmap(0, size, U.PROT_READ | U.PROT_WRITE, U.MAP_SHARED, fd, 0);
    t.vm.setUserMemoryRegion({
      slot: 1,
      flags: 0,
      guestPhysAddr: base,
      memorySize: size,
      userspaceAddr: hva,
    });
    const k = t.vm.kvm;
    const slot = k.gfnToMemslot(base / PAGE);
    if (!slot) throw new Error('no slot');
    const attrs = k.attributes.map;
    // The first frame whose flag differs from a recomputation, or null (one expect per check).
    const wrongFrame = (): string | null => {
      const m2 = slot.lpageMixed[0];
      for (let i = 0; i < m2.length; i++) {
        const b = slot.frameBase(i, 2);
        const want = slot.frameInside(i, 2) && !attrs.isUniform(b, b + 512, attrs.get(b));
        if (m2[i] !== (want ? 1 : 0)) return `2 MiB frame ${i}`;
      }
      const m3 = slot.lpageMixed[1];
      for (let i = 0; i < m3.length; i++) {
        const b = slot.frameBase(i, 3);
        let want = slot.frameInside(i, 3) && !attrs.isUniform(b, b + 262144, attrs.get(b));
        if (slot.frameInside(i, 3)) {
          const i2 = slot.lpageIndex(b, 2);
          for (let j = 0; j < 512; j++) want ||= m2[i2 + j] === 1;
        }
        if (m3[i] !== (want ? 1 : 0)) return `1 GiB frame ${i}`;
      }
      return null;
    };
    // Conversions near the frame boundaries: single pages, a few frames, whole gigabytes.
    const gfn = fc.oneof(
      fc.integer({ min: 0, max: 4 * 262144 }),
      fc
        .constantFrom(262144, 2 * 262144, 3 * 262144, 262144 - 512)
        .chain((g) => fc.integer({ min: g - 600, max: g + 600 })),
    );
    const len = fc.oneof(
      fc.constant(1),
      fc.integer({ min: 1, max: 2048 }),
      fc.integer({ min: 1, max: 600_000 }),
    );
    fc.assert(
      fc.property(fc.array(fc.tuple(gfn, len, fc.boolean()), { minLength: 1, maxLength: 30 }), (ops) => {
        t.vm.setMemoryAttributes({ address: 0, size: 4 * GiB, attributes: 0 });
        for (const [g, n, priv] of ops) {
          t.vm.setMemoryAttributes({ address: g * PAGE, size: n * PAGE, attributes: priv ? P : 0 });
          expect(wrongFrame()).toBeNull();
        }
      }),
      { numRuns: 25 },
    );
    t.vm.setUserMemoryRegion({ slot: 1, flags: 0, guestPhysAddr: base, memorySize: 0, userspaceAddr: hva });
    t.host.munmap(hva, size);
    t.host.close(fd);
  });
});
