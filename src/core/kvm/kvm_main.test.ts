import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { expectErrno, expectNoLeaks, MiB, PAGE, trackedHost } from '../../../test/helpers.js';
import { memfdMapping, region, vmWithRam } from '../../../test/kvm_helpers.js';
import * as U from '../uapi.js';

afterEach(expectNoLeaks);

const R = region;

describe('/dev/kvm (GEN-3, GEN-4, §1.4)', () => {
  it('answers the API version, vCPU mmap size and the x86-64 capabilities of §1.4', () => {
    const h = trackedHost();
    const kvm = h.openKvm();
    expect(kvm.getApiVersion()).toBe(12);
    expect(kvm.getVcpuMmapSize()).toBe(12288);
    const caps: [number, number][] = [
      [U.KVM_CAP_USER_MEMORY, 1],
      [U.KVM_CAP_NR_MEMSLOTS, 32764],
      [U.KVM_CAP_SYNC_MMU, 1],
      [U.KVM_CAP_READONLY_MEM, 1],
      [U.KVM_CAP_CHECK_EXTENSION_VM, 1],
      [U.KVM_CAP_MULTI_ADDRESS_SPACE, 2],
      [U.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, 3],
      [U.KVM_CAP_EXIT_HYPERCALL, 0x1000],
      [U.KVM_CAP_USER_MEMORY2, 1],
      [U.KVM_CAP_MEMORY_FAULT_INFO, 1],
      [U.KVM_CAP_MEMORY_ATTRIBUTES, 8],
      [U.KVM_CAP_GUEST_MEMFD, 1],
      [U.KVM_CAP_VM_TYPES, 3],
      [U.KVM_CAP_PRE_FAULT_MEMORY, 1],
      [U.KVM_CAP_GUEST_MEMFD_FLAGS, 3],
      [12345, 0],
    ];
    for (const [cap, want] of caps)
      expect(kvm.checkExtension(cap), U.CAP_NAMES[cap] ?? String(cap)).toBe(want);
    expect(kvm.checkExtension(U.KVM_CAP_DISABLE_QUIRKS2) & U.KVM_X86_QUIRK_SLOT_ZAP_ALL).toBeTruthy();
    kvm.close();
  });

  it('VM-scoped answers differ for private-memory VMs (GEN-4)', () => {
    const h = trackedHost();
    const kvm = h.openKvm();
    const def = kvm.createVm(U.KVM_X86_DEFAULT_VM);
    const sw = kvm.createVm(U.KVM_X86_SW_PROTECTED_VM);
    expect(def.checkExtension(U.KVM_CAP_MULTI_ADDRESS_SPACE)).toBe(2);
    expect(sw.checkExtension(U.KVM_CAP_MULTI_ADDRESS_SPACE)).toBe(1);
    expect(def.checkExtension(U.KVM_CAP_MEMORY_ATTRIBUTES)).toBe(0);
    expect(sw.checkExtension(U.KVM_CAP_MEMORY_ATTRIBUTES)).toBe(8);
    expect(def.checkExtension(U.KVM_CAP_GUEST_MEMFD_FLAGS)).toBe(3);
    expect(sw.checkExtension(U.KVM_CAP_GUEST_MEMFD_FLAGS)).toBe(1);
    expect(def.kvm.preFaultAllowed && sw.kvm.preFaultAllowed).toBe(true);
    expect([def.kvm.hasPrivateMem, sw.kvm.hasPrivateMem]).toEqual([false, true]);
    def.close();
    sw.close();
    kvm.close();
  });

  it('GEN-3: KVM_CREATE_VM accepts exactly the types in KVM_CAP_VM_TYPES', () => {
    const h = trackedHost();
    const kvm = h.openKvm();
    const types = kvm.checkExtension(U.KVM_CAP_VM_TYPES);
    for (let t = 0; t < 64; t++) {
      if (t < 32 && (types & (1 << t)) !== 0) kvm.createVm(t).close();
      else expectErrno(() => kvm.createVm(t), 'EINVAL', 'GEN-3');
    }
    kvm.close();
  });

  it('VM fds are CLOEXEC; a closed VM fd answers EBADF', () => {
    const h = trackedHost();
    const kvm = h.openKvm();
    const vm = kvm.createVm();
    expect(h.kernel.fds.isCloexec(vm.fd)).toBe(true);
    vm.close();
    expectErrno(() => vm.checkExtension(U.KVM_CAP_USER_MEMORY), 'EBADF');
    kvm.close();
  });

  it('GEN-1: a dead VM answers EIO to every ioctl', () => {
    const { vm } = vmWithRam();
    vm.kvm.markDead();
    expectErrno(() => vm.setUserMemoryRegion(R(1, 0x100000, 0, 0)), 'EIO', 'GEN-1');
    expectErrno(() => vm.createVcpu(0), 'EIO', 'GEN-1');
    expectErrno(() => vm.enableCap({ cap: U.KVM_CAP_EXIT_HYPERCALL }), 'EIO', 'GEN-1');
  });
});

describe('KVM_SET_USER_MEMORY_REGION(2): validation in the kernel order (MR-1..MR-19)', () => {
  it.each([
    ['MR-2: v1 rejects GUEST_MEMFD', false, { flags: U.KVM_MEM_GUEST_MEMFD }, 'MR-2'],
    ['MR-2: v1 rejects bit 5', false, { flags: 1 << 5 }, 'MR-2'],
    ['MR-3: slot id 32764', true, { slot: 32764 }, 'MR-3'],
    ['MR-3: as_id bits are ignored there, id 32767 of as 1', true, { slot: (1 << 16) | 32767 }, 'MR-3'],
    ['MR-4: bit 3', true, { flags: 1 << 3 }, 'MR-4'],
    [
      'MR-4: GUEST_MEMFD | LOG_DIRTY_PAGES',
      true,
      { flags: U.KVM_MEM_GUEST_MEMFD | U.KVM_MEM_LOG_DIRTY_PAGES },
      'MR-4',
    ],
    ['MR-4: GUEST_MEMFD | READONLY', true, { flags: U.KVM_MEM_GUEST_MEMFD | U.KVM_MEM_READONLY }, 'MR-4'],
    ['MR-4: an extension flag not enabled (ALLONES)', true, { flags: U.KVM_MEM_ALLONES }, 'MR-4'],
    ['MR-5: memory_size 4097', true, { memorySize: 4097 }, 'MR-5'],
    ['MR-6: unaligned gpa', true, { guestPhysAddr: 0x100800 }, 'MR-6'],
    ['MR-7: unaligned userspace_addr', true, { userspaceAddr: 0x7f0000000800 }, 'MR-7'],
    ['MR-7: userspace_addr beyond the user address space', true, { userspaceAddr: 2 ** 47 }, 'MR-7'],
    ['MR-7: checked even for deletes', true, { slot: 0, memorySize: 0, userspaceAddr: 1 }, 'MR-7'],
    [
      'MR-8: unaligned guest_memfd_offset',
      true,
      { flags: U.KVM_MEM_GUEST_MEMFD, guestMemfdOffset: 100, guestMemfd: 3 },
      'MR-8',
    ],
    ['MR-9: address space 2', true, { slot: 2 << 16 }, 'MR-9'],
    ['MR-10: gpa + size overflows', true, { guestPhysAddr: 2 ** 64 - PAGE, memorySize: 2 * PAGE }, 'MR-10'],
    ['MR-11: more than 2^31 − 1 pages', true, { memorySize: 2 ** 31 * PAGE, userspaceAddr: 0 }, 'MR-11'],
    ['MR-12: deleting a slot that does not exist', true, { slot: 9, memorySize: 0 }, 'MR-12'],
    ['MR-16: last gfn above kvm_mmu_max_gfn()', true, { guestPhysAddr: 2 ** 48 }, 'MR-16'],
  ] as const)('%s → EINVAL', (_what, v2, patch, rule) => {
    const t = vmWithRam();
    const before = t.vm.kvm.listMemslots().map((s) => [s.id, s.baseGfn, s.npages, s.flags]);
    const region = { ...R(1, 0x100000, 2 * PAGE, t.ramHva), ...patch };
    expectErrno(
      () => (v2 ? t.vm.setUserMemoryRegion2(region) : t.vm.setUserMemoryRegion(region)),
      'EINVAL',
      rule,
    );
    expect(t.vm.kvm.listMemslots().map((s) => [s.id, s.baseGfn, s.npages, s.flags])).toEqual(before);
  });

  it('MR-3 is checked before the flags (MR-4): slot 32764 with a bad flag says MR-3', () => {
    const t = vmWithRam();
    expectErrno(
      () => t.vm.setUserMemoryRegion2({ ...R(32764, 0, PAGE, t.ramHva), flags: 1 << 9 }),
      'EINVAL',
      'MR-3',
    );
  });

  it('MR-5 before MR-6 before MR-7', () => {
    const t = vmWithRam();
    expectErrno(() => t.vm.setUserMemoryRegion2(R(3, 0x801, 4097, 0x3)), 'EINVAL', 'MR-5');
    expectErrno(() => t.vm.setUserMemoryRegion2(R(3, 0x801, 4096, 0x3)), 'EINVAL', 'MR-6');
    expectErrno(() => t.vm.setUserMemoryRegion2(R(3, 0x1000, 4096, 0x3)), 'EINVAL', 'MR-7');
  });

  it('MR-9: private-memory VMs have a single address space; default VMs two', () => {
    const h = trackedHost();
    const [, hva] = memfdMapping(h, 2 * PAGE);
    const kvm = h.openKvm();
    const def = kvm.createVm(0);
    const sw = kvm.createVm(U.KVM_X86_SW_PROTECTED_VM);
    def.setUserMemoryRegion(R((1 << 16) | 1, 0, PAGE, hva));
    expectErrno(() => sw.setUserMemoryRegion(R((1 << 16) | 1, 0, PAGE, hva)), 'EINVAL', 'MR-9');
    // MR-15: the two address spaces never conflict.
    def.setUserMemoryRegion(R(1, 0, PAGE, hva));
    expect(def.kvm.listMemslots()).toHaveLength(2);
    for (const v of [def, sw, kvm]) v.close();
    h.munmap(hva, 2 * PAGE);
  });

  it('MR-12: a delete ignores flags, userspace_addr and gpa of the request', () => {
    const t = vmWithRam();
    t.vm.setUserMemoryRegion(R(5, 0x400000, 2 * PAGE, t.ramHva));
    t.vm.setUserMemoryRegion(R(5, 0x12345000, 0, t.ramHva + PAGE, U.KVM_MEM_READONLY));
    expect(t.vm.kvm.listMemslots().map((s) => s.id)).toEqual([0]);
    expectErrno(() => t.vm.setUserMemoryRegion(R(5, 0, 0, 0)), 'EINVAL', 'MR-12');
  });

  it('MR-14: no resize, no new userspace_addr, no READONLY toggle; identical → no-op', () => {
    const t = vmWithRam();
    const base = R(2, 0x400000, 4 * PAGE, t.ramHva);
    t.vm.setUserMemoryRegion(base);
    const gen = t.vm.kvm.memslots[0]?.generation;
    t.vm.setUserMemoryRegion(base);
    expect(t.vm.kvm.memslots[0]?.generation).toBe(gen); // no-op: nothing published
    expectErrno(() => t.vm.setUserMemoryRegion({ ...base, memorySize: 8 * PAGE }), 'EINVAL', 'MR-14');
    expectErrno(
      () => t.vm.setUserMemoryRegion({ ...base, userspaceAddr: t.ramHva + PAGE }),
      'EINVAL',
      'MR-14',
    );
    expectErrno(() => t.vm.setUserMemoryRegion({ ...base, flags: U.KVM_MEM_READONLY }), 'EINVAL', 'MR-14');
  });

  it('MR-15: EEXIST for an overlap with another slot, on create and on move; none with itself', () => {
    const t = vmWithRam(0, 4 * MiB);
    t.vm.setUserMemoryRegion(R(1, 0x800000, 4 * PAGE, t.ramHva));
    expectErrno(() => t.vm.setUserMemoryRegion(R(2, 0x3ff000, 2 * PAGE, t.ramHva)), 'EEXIST', 'MR-15');
    expectErrno(() => t.vm.setUserMemoryRegion(R(2, 0x803000, 2 * PAGE, t.ramHva)), 'EEXIST', 'MR-15');
    t.vm.setUserMemoryRegion(R(2, 0x804000, 2 * PAGE, t.ramHva)); // adjacent is fine
    expectErrno(() => t.vm.setUserMemoryRegion(R(2, 0x801000, 2 * PAGE, t.ramHva)), 'EEXIST', 'MR-15');
    t.vm.setUserMemoryRegion(R(1, 0x7ff000, 4 * PAGE, t.ramHva)); // moving over its own old range
    expect(t.vm.kvm.gfnToMemslot(0x7ff)?.id).toBe(1);
    expect(t.vm.kvm.gfnToMemslot(0x803)).toBe(null);
  });

  it('MR-19: all 32764 user slots can be created; the next id is EINVAL (MR-3)', () => {
    const h = trackedHost();
    const kvm = h.openKvm();
    const vm = kvm.createVm();
    const n = kvm.checkExtension(U.KVM_CAP_NR_MEMSLOTS);
    const hva = h.mmap(
      0,
      n * 2 * MiB,
      U.PROT_READ | U.PROT_WRITE,
      U.MAP_PRIVATE | U.MAP_ANONYMOUS | U.MAP_NORESERVE,
      -1,
      0,
    );
    for (let i = 0; i < n; i++) vm.setUserMemoryRegion(R(i, i * 2 * MiB, 2 * MiB, hva + i * 2 * MiB));
    expectErrno(() => vm.setUserMemoryRegion(R(n, n * 2 * MiB, 2 * MiB, hva)), 'EINVAL', 'MR-3');
    expect(vm.kvm.listMemslots()).toHaveLength(n);
    expect(vm.kvm.gfnToMemslot((n - 1) * 512 + 5)?.id).toBe(n - 1);
    vm.close();
    kvm.close();
  });

  it('MR-25: each update bumps the generation by the number of address spaces', () => {
    const t = vmWithRam();
    const slots = t.vm.kvm.memslots[0];
    const g0 = slots?.generation ?? 0;
    t.vm.setUserMemoryRegion(R(1, 0x800000, PAGE, t.ramHva));
    expect(slots?.generation).toBe(g0 + 2);
    t.vm.setUserMemoryRegion(R(1, 0x800000, 0, 0)); // delete: INVALID published, then final
    expect(slots?.generation).toBe(g0 + 6);
  });
});

describe('MR-21: DELETE and MOVE are two-phase, with the SLOT_ZAP_ALL quirk', () => {
  function mapTwoSlots() {
    const t = vmWithRam(0, 2 * MiB);
    t.vm.setUserMemoryRegion(R(1, 0x400000, 2 * PAGE, t.ramHva + PAGE));
    const k = t.vm.kvm;
    // Fault in a page of each slot through the handler (as a guest access would).
    for (const gpa of [0x3000, 0x400000]) {
      const slot = k.gfnToMemslot(gpa / PAGE);
      expect(slot).not.toBe(null);
      k.writeGuest(gpa, new Uint8Array([1]));
    }
    return t;
  }

  it('the INVALID slot is published while the zap runs; SLOT_ZAP_ALL zaps every SPTE of a default VM', async () => {
    const { vcpuWith } = await import('../../../test/kvm_helpers.js');
    const { program } = await import('../vcpu/program.js');
    const t = mapTwoSlots();
    const v = vcpuWith(
      t,
      program((b) => b.load(8, 'r8', 0x3000).load(8, 'r9', 0x400000).halt()),
    );
    expect(v.run().exitReasonName).toBe('KVM_EXIT_HLT');
    const mmu = t.vm.kvm.mmu[0];
    expect(mmu?.stats().leaves4k).toBe(3); // code page, 0x3000, 0x400000
    let seen: boolean | null = null;
    t.vm.kvm.memslotWindowHook = (slot, change) => {
      seen = slot.invalid && change === 'DELETE' && t.vm.kvm.gfnToMemslot(0x400) === slot;
    };
    t.vm.setUserMemoryRegion(R(1, 0, 0, 0));
    expect(seen).toBe(true);
    expect(mmu?.stats().leaves4k).toBe(0);
    v.close();
  });

  it('with the quirk disabled only the slot’s own range is zapped', async () => {
    const { vcpuWith } = await import('../../../test/kvm_helpers.js');
    const { program } = await import('../vcpu/program.js');
    const t = mapTwoSlots();
    t.vm.enableCap({ cap: U.KVM_CAP_DISABLE_QUIRKS2, args: [U.KVM_X86_QUIRK_SLOT_ZAP_ALL] });
    const v = vcpuWith(
      t,
      program((b) => b.load(8, 'r8', 0x3000).load(8, 'r9', 0x400000).halt()),
    );
    v.run();
    t.vm.setUserMemoryRegion(R(1, 0x600000, 2 * PAGE, t.ramHva + PAGE)); // MOVE
    expect(t.vm.kvm.mmu[0]?.stats().leaves4k).toBe(2);
    expect(t.vm.kvm.gfnToMemslot(0x600)?.id).toBe(1);
    v.close();
  });

  it('KVM_CAP_DISABLE_QUIRKS2 rejects unknown quirk bits', () => {
    const t = vmWithRam();
    expectErrno(() => t.vm.enableCap({ cap: U.KVM_CAP_DISABLE_QUIRKS2, args: [1 << 20] }), 'EINVAL');
  });
});

describe('MR-26, MR-22: KVM accessors go through userspace_addr; deletes free the bitmap', () => {
  it('kvm_read_guest / kvm_write_guest see the host mapping and EFAULT without a slot', () => {
    const t = vmWithRam();
    t.host.writeMemory(t.ramHva + 0x5000, new Uint8Array([7, 8]));
    expect([...t.vm.kvm.readGuest(0x5000, 2)]).toEqual([7, 8]);
    t.vm.kvm.writeGuest(0x6000, new Uint8Array([9]));
    expect(t.host.readMemory(t.ramHva + 0x6000, 1)[0]).toBe(9);
    expectErrno(() => t.vm.kvm.readGuest(0x4000_0000, 1), 'EFAULT');
  });
});

describe('dirty logging (DL-1..DL-6)', () => {
  function loggedVm(initiallySet = false) {
    const t = vmWithRam();
    if (initiallySet) {
      t.vm.enableCap({
        cap: U.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        args: [U.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | U.KVM_DIRTY_LOG_INITIALLY_SET],
      });
    }
    t.vm.setUserMemoryRegion(R(1, 0x800000, 100 * PAGE, t.ramHva, U.KVM_MEM_LOG_DIRTY_PAGES));
    return t;
  }

  it('DL-1: the bitmap is ALIGN(npages, 64) / 8 bytes; DL-3 EFAULT when the buffer is smaller', () => {
    const t = loggedVm();
    const slot = t.vm.kvm.gfnToMemslot(0x800);
    expect(slot?.dirtyBitmapBytes).toBe(16);
    expectErrno(() => t.vm.getDirtyLog({ slot: 1, dirtyBitmap: new Uint8Array(15) }), 'EFAULT', 'DL-3');
  });

  it('DL-2, DL-3: KVM writes are logged; GET clears and a page written again is reported again', () => {
    const t = loggedVm();
    const bm = new Uint8Array(16);
    t.vm.kvm.writeGuest(0x800000 + 3 * PAGE, new Uint8Array([1]));
    t.vm.kvm.writeGuest(0x800000 + 9 * PAGE, new Uint8Array([1]));
    t.vm.getDirtyLog({ slot: 1, dirtyBitmap: bm });
    expect([...bm.subarray(0, 2)]).toEqual([0b1000, 0b10]);
    t.vm.getDirtyLog({ slot: 1, dirtyBitmap: bm });
    expect(bm.every((b) => b === 0)).toBe(true);
    t.vm.kvm.writeGuest(0x800000 + 3 * PAGE, new Uint8Array([2]));
    t.vm.getDirtyLog({ slot: 1, dirtyBitmap: bm });
    expect(bm[0]).toBe(0b1000);
  });

  it('DL-3: errno order ENXIO/EINVAL/ENOENT', () => {
    const t = loggedVm();
    const bm = new Uint8Array(16);
    expectErrno(() => t.vm.getDirtyLog({ slot: 32764, dirtyBitmap: bm }), 'EINVAL', 'DL-3');
    expectErrno(() => t.vm.getDirtyLog({ slot: 2 << 16, dirtyBitmap: bm }), 'EINVAL', 'DL-3');
    expectErrno(() => t.vm.getDirtyLog({ slot: 7, dirtyBitmap: bm }), 'ENOENT', 'DL-3');
    expectErrno(() => t.vm.getDirtyLog({ slot: 0, dirtyBitmap: bm }), 'ENOENT', 'DL-3'); // no LOG_DIRTY
  });

  it('DL-4: MANUAL_DIRTY_LOG_PROTECT2 argument rules', () => {
    const t = vmWithRam();
    const e =
      (args: number[], flags = 0) =>
      () =>
        t.vm.enableCap({ cap: U.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, flags, args });
    expectErrno(e([U.KVM_DIRTY_LOG_INITIALLY_SET]), 'EINVAL', 'DL-4');
    expectErrno(e([4 | 1]), 'EINVAL', 'DL-4');
    expectErrno(e([1], 1), 'EINVAL', 'DL-4');
    e([3])();
    e([0])();
    expect(t.vm.kvm.manualDirtyLogProtect).toBe(0);
  });

  it('DL-4, DL-5: INITIALLY_SET starts all-ones; manual GET does not clear; CLEAR re-arms', () => {
    const t = loggedVm(true);
    const bm = new Uint8Array(16);
    t.vm.getDirtyLog({ slot: 1, dirtyBitmap: bm });
    expect(bm.subarray(0, 12).every((b) => b === 0xff)).toBe(true);
    expect(bm[12]).toBe(0x0f); // 100 pages: bits beyond the slot stay clear
    t.vm.getDirtyLog({ slot: 1, dirtyBitmap: bm });
    expect(bm[0]).toBe(0xff); // manual mode: GET reports without clearing
    t.vm.clearDirtyLog({ slot: 1, firstPage: 0, numPages: 100, dirtyBitmap: new Uint8Array(16).fill(0xff) });
    t.vm.getDirtyLog({ slot: 1, dirtyBitmap: bm });
    expect(bm.every((b) => b === 0)).toBe(true);
  });

  it('DL-5: CLEAR_DIRTY_LOG argument checks', () => {
    const t = loggedVm(true);
    const bm = new Uint8Array(16).fill(0xff);
    const c =
      (firstPage: number, numPages: number, b = bm) =>
      () =>
        t.vm.clearDirtyLog({ slot: 1, firstPage, numPages, dirtyBitmap: b });
    expectErrno(c(1, 8), 'EINVAL', 'DL-5'); // first_page % 64
    expectErrno(c(128, 1), 'EINVAL', 'DL-5'); // first_page > npages
    expectErrno(c(64, 64), 'EINVAL', 'DL-5'); // num_pages > npages − first_page
    expectErrno(c(0, 10), 'EINVAL', 'DL-5'); // short and not a multiple of 64
    expectErrno(c(0, 100, new Uint8Array(8)), 'EFAULT', 'DL-5');
    c(0, 64)();
    c(64, 36)(); // the tail may be any length
    expectErrno(
      () => t.vm.clearDirtyLog({ slot: 9, firstPage: 0, numPages: 64, dirtyBitmap: bm }),
      'ENOENT',
      'DL-5',
    );
  });

  it('MR-24: enabling logging on a live slot (FLAGS_ONLY) allocates the bitmap; disabling frees it', () => {
    const t = vmWithRam();
    t.vm.setUserMemoryRegion(R(0, 0, 4 * MiB, t.ramHva, U.KVM_MEM_LOG_DIRTY_PAGES));
    expect(t.vm.kvm.gfnToMemslot(0)?.dirtyBitmap?.length).toBe(128);
    t.vm.setUserMemoryRegion(R(0, 0, 4 * MiB, t.ramHva));
    expect(t.vm.kvm.gfnToMemslot(0)?.dirtyBitmap).toBe(null);
  });
});

describe('bad input leaves the VM exactly as it was (property)', () => {
  it('random invalid memslot calls change no memslot, SPTE or host memory', async () => {
    const { vcpuWith } = await import('../../../test/kvm_helpers.js');
    const { program } = await import('../vcpu/program.js');
    const t = vmWithRam(0, 4 * MiB);
    t.vm.setUserMemoryRegion(R(1, 0x800000, 16 * PAGE, t.ramHva, U.KVM_MEM_LOG_DIRTY_PAGES));
    t.vm.setUserMemoryRegion(R(2, 0x900000, 16 * PAGE, t.ramHva + 0x10000, U.KVM_MEM_READONLY));
    const v = vcpuWith(
      t,
      program((b) => b.storeImm(8, 0x8000, 5).load(8, 'r8', 0x900000).storeImm(4, 0x800000, 1).halt()),
    );
    expect(v.run().exitReasonName).toBe('KVM_EXIT_HLT');
    const k = t.vm.kvm;
    const snapshot = () => ({
      slots: k.listMemslots().map((s) => [s.asId, s.id, s.baseGfn, s.npages, s.flags, s.userspaceAddr]),
      sptes: (() => {
        const out: number[][] = [];
        for (const m of k.mmu) m.forEachLeaf(0, 2 ** 36, (g, l, p, f) => out.push([g, l, p, f]));
        return out;
      })(),
      mem: t.host.readMemory(t.ramHva, 0x10000).reduce((a, b, i) => (a + b * (i + 1)) % 1000003, 0),
      bitmap: [...(k.gfnToMemslot(0x800)?.dirtyBitmap ?? [])],
    });
    let before = snapshot();
    const invalid = fc.record({
      slot: fc.oneof(fc.constantFrom(0, 1, 2, 3, 32764, (1 << 16) | 1, 2 << 16), fc.nat({ max: 0xffffffff })),
      flags: fc.oneof(fc.constantFrom(0, 1, 2, 3, 4, 5, 6, 8, 1 << 8, 1 << 16), fc.nat({ max: 0xffffffff })),
      guestPhysAddr: fc.oneof(
        fc.constantFrom(0, 0x800000, 0x801000, 0x900800, 2 ** 48, 2 ** 64 - PAGE),
        fc.nat(),
      ),
      memorySize: fc.oneof(fc.constantFrom(0, 1, PAGE, 16 * PAGE, 17 * PAGE, 4 * MiB), fc.nat()),
      userspaceAddr: fc.oneof(fc.constantFrom(0, t.ramHva, t.ramHva + 1, 2 ** 47), fc.nat()),
      v2: fc.boolean(),
    });
    let rejected = 0;
    fc.assert(
      fc.property(invalid, (r) => {
        const region = { ...r, guestMemfd: 0, guestMemfdOffset: 0 };
        try {
          if (r.v2) t.vm.setUserMemoryRegion2(region);
          else t.vm.setUserMemoryRegion(region);
        } catch (e) {
          if (!(e instanceof Error) || e.name !== 'KvmError') throw e;
          rejected++;
          expect(snapshot()).toEqual(before);
          return;
        }
        // A call that happened to be valid changed the VM on purpose: compare against the new state.
        before = snapshot();
      }),
      { numRuns: 200 },
    );
    expect(rejected).toBeGreaterThan(60);
    v.close();
  });
});
