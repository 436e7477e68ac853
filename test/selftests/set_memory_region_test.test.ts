/**
 * tools/testing/selftests/kvm/set_memory_region_test.c (kvm-semantics.md §4.2), on the model.
 *
 * Ported: test_zero_memory_regions, test_invalid_memory_region_flags, test_add_max_memory_regions,
 * test_move_memory_region and test_delete_memory_region (each with and without the SLOT_ZAP_ALL
 * quirk). Not ported: test_mmio_during_vectoring (the model has no IDT or exception delivery) and
 * test_add_private_memory_region / test_add_overlapping_private_memory_regions (covered by the
 * guest_memfd work).
 *
 * The C test's guest spins in `guest_spin_on_val()` while a second thread moves or deletes the
 * slot. Here the guest loops "load the u64 at MEM_REGION_GPA into r8; sync", and the host plays
 * the spin (it reads r8 at each sync). The concurrent window is reproduced in two ways: the slot
 * change happens between two KVM_RUNs, and the vCPU also runs *inside* the change, from
 * `memslotWindowHook`, while the INVALID slot is published (MR-21). A vCPU that can only retry
 * there is stopped by its instruction budget (the model's kick: KVM_RUN −1/EINTR).
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { RunResult } from '../../src/core/api.js';
import { KvmError } from '../../src/core/errno.js';
import type { MemslotWindowHook } from '../../src/core/kvm/kvm_main.js';
import type { TdpMmu } from '../../src/core/mmu/tdp_mmu.js';
import {
  KVM_CAP_DISABLE_QUIRKS2,
  KVM_CAP_MEMORY_ATTRIBUTES,
  KVM_CAP_NR_MEMSLOTS,
  KVM_EXIT_INTERNAL_ERROR,
  KVM_EXIT_INTR,
  KVM_EXIT_MMIO,
  KVM_EXIT_SHUTDOWN,
  KVM_INTERNAL_ERROR_EMULATION,
  KVM_MEM_GUEST_MEMFD,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_READONLY,
  KVM_MEMORY_ATTRIBUTE_PRIVATE,
  KVM_USER_MEM_SLOTS,
  KVM_X86_DEFAULT_VM,
  KVM_X86_QUIRK_SLOT_ZAP_ALL,
  KVM_X86_SW_PROTECTED_VM,
  MAP_ANONYMOUS,
  MAP_NORESERVE,
  MAP_PRIVATE,
  PROT_READ,
  PROT_WRITE,
} from '../../src/core/uapi.js';
import { K_LOOP_END, K_LOOP_INIT, lower } from '../../src/core/vcpu/insn.js';
import { program } from '../../src/core/vcpu/program.js';
import type { KvmVcpu } from '../../src/core/vcpu/vcpu.js';
import { expectErrno, expectNoLeaks, trackedHost } from '../helpers.js';
import {
  describeRun,
  expectSync,
  isSync,
  PAGE,
  type SelftestVm,
  SZ_2M,
  u64Bytes,
  vmCreateBarebones,
  vmCreateWithOneVcpu,
} from './kvm_util.js';

afterEach(expectNoLeaks);

const MEM_REGION_SIZE = SZ_2M;
const MEM_REGION_GPA = 0xc0000000;
const MEM_REGION_SLOT = 10;
const MMIO_VAL = 0xbeefn;
/** The C test runs 10 loops against a racing thread; the model is deterministic, so 2 suffice. */
const LOOPS = 2;
/** The code page (default program layout). */
const CODE_GFN = 0x1000 / PAGE;

/**
 * The guest: GUEST_SYNC(0), then forever { r8 = *(u64 *)MEM_REGION_GPA; GUEST_SYNC(1) }. The
 * host reads r8 at each sync: that is the value `guest_spin_on_val()` would have seen.
 */
const spinGuest = program((b) =>
  b
    .sync(0)
    .loop('r15', 2 ** 40, (l) => l.load(8, 'r8', MEM_REGION_GPA).sync(1))
    .halt(),
);

/** [first, end) rips of the spin loop: the C test's final_rip_start..final_rip_end. */
function spinLoopRips(): [bigint, bigint] {
  const code = lower(spinGuest);
  const init = code.findIndex((i) => i.k === K_LOOP_INIT);
  const end = code.findIndex((i) => i.k === K_LOOP_END);
  return [BigInt(0x1000 + 16 * (init + 1)), BigInt(0x1000 + 16 * (end + 1))];
}

/**
 * vcpu_worker's exit handling: MMIO exits must be reads of 8 bytes at MEM_REGION_GPA and are
 * answered with MMIO_VAL, re-entering until the run ends in some other exit, which is returned.
 */
function completeMmio(vcpu: KvmVcpu, r: RunResult): RunResult {
  let out = r;
  while (out.ret === 0 && out.exitReason === KVM_EXIT_MMIO) {
    const m = out.mmio;
    expect(m?.isWrite, `Unexpected exit mmio write (${describeRun(out)})`).toBe(false);
    expect(m?.len, `Unexpected exit mmio size (${describeRun(out)})`).toBe(8);
    expect(m?.physAddr, `Unexpected exit mmio address (${describeRun(out)})`).toBe(MEM_REGION_GPA);
    vcpu.kvmRun.mmio.data.set(u64Bytes(MMIO_VAL));
    out = vcpu.run();
  }
  return out;
}

/** One iteration of the guest's spin: the value read, and whether it came from MMIO. */
function readVal(vcpu: KvmVcpu): { val: bigint; mmio: boolean } {
  const first = vcpu.run();
  const r = completeMmio(vcpu, first);
  expectSync(r, 1);
  return { val: vcpu.getRegs().r8, mmio: first.exitReason === KVM_EXIT_MMIO };
}

/**
 * Runs the vCPU while a DELETE/MOVE has its INVALID slot published (MR-21). Guest faults on the
 * INVALID slot are retried, never exited, so the only ways out are MMIO (tolerated, as in the C
 * test: an emulated access treats the INVALID slot as absent) and the budget's kick. Any sync
 * in the window must therefore carry MMIO_VAL: memory itself is unreachable.
 */
function runInWindow(vcpu: KvmVcpu): RunResult {
  const saved = vcpu.budget;
  vcpu.budget = 256; // far below the model's livelock limit of 10 000 retries
  try {
    for (;;) {
      const r = completeMmio(vcpu, vcpu.run());
      if (isSync(r)) {
        expect(vcpu.getRegs().r8, 'value read while the slot is INVALID').toBe(MMIO_VAL);
        continue;
      }
      return r;
    }
  } finally {
    vcpu.budget = saved;
  }
}

/** spawn_vm: slot 10 at MEM_REGION_GPA, its first two pages zeroed, the guest past GUEST_SYNC(0). */
function spawnVm(disableSlotZapQuirk: boolean): { t: SelftestVm; vcpu: KvmVcpu; hva: number } {
  const host = trackedHost();
  const { t, vcpu } = vmCreateWithOneVcpu(host, spinGuest);
  const region = t.addRegion(MEM_REGION_GPA, MEM_REGION_SLOT, MEM_REGION_SIZE / PAGE);
  host.writeMemory(region.hva, new Uint8Array(2 * PAGE));
  expectSync(vcpu.run(), 0);
  if (disableSlotZapQuirk) {
    t.vm.enableCap({ cap: KVM_CAP_DISABLE_QUIRKS2, args: [KVM_X86_QUIRK_SLOT_ZAP_ALL] });
  }
  return { t, vcpu, hva: region.hva };
}

/**
 * A memslotWindowHook that checks the zap scope of MR-21 (all SPTEs with SLOT_ZAP_ALL on a
 * DEFAULT VM, else only the slot's range) and then runs the vCPU in the window.
 */
function windowHook(
  t: SelftestVm,
  vcpu: KvmVcpu,
  zapAll: boolean,
  seen: { change: string; window: RunResult }[],
): MemslotWindowHook {
  const mmu = t.vm.kvm.mmu[0] as TdpMmu;
  return (slot, change) => {
    expect(slot.invalid, 'the slot is published INVALID during the window').toBe(true);
    expect(mmu.lookup(slot.baseGfn), 'the changing slot is zapped').toBeLessThan(0);
    if (slot.id !== 0) {
      // The code page was mapped by the run before the change; SLOT_ZAP_ALL zaps it too.
      if (zapAll) expect(mmu.lookup(CODE_GFN), 'SLOT_ZAP_ALL zaps every SPTE').toBeLessThan(0);
      else
        expect(mmu.lookup(CODE_GFN), 'without SLOT_ZAP_ALL other slots keep theirs').toBeGreaterThanOrEqual(
          0,
        );
    }
    seen.push({ change, window: runInWindow(vcpu) });
  };
}

function expectKicked(r: RunResult): void {
  // The budget's kick, i.e. the vCPU was still retrying when the window closed.
  expect([r.ret, r.errno, r.exitReason], describeRun(r)).toEqual([-1, 'EINTR', KVM_EXIT_INTR]);
}

describe('set_memory_region_test', () => {
  it('test_zero_memory_regions: KVM_RUN with no memslots → KVM_EXIT_INTERNAL_ERROR (§3 row 4, RO-2)', () => {
    // The C test runs a barebones vCPU; KVM cannot fetch its first instruction from a gpa with
    // no memslot (an emulated fetch from MMIO) and reports an internal error. In the model the
    // vCPU's code page (0x1000) has no memslot, which gives the same exit.
    const host = trackedHost();
    const vm = vmCreateBarebones(host);
    const vcpu = vm.createVcpu(0);
    const r = vcpu.run();
    expect(r.ret, describeRun(r)).toBe(0);
    expect(r.exitReason, describeRun(r)).toBe(KVM_EXIT_INTERNAL_ERROR);
    expect(r.internal?.suberror).toBe(KVM_INTERNAL_ERROR_EMULATION);
    expect(vm.kvm.listMemslots()).toEqual([]);
  });

  describe.each([
    ['KVM_X86_SW_PROTECTED_VM', KVM_X86_SW_PROTECTED_VM],
    ['KVM_X86_DEFAULT_VM', KVM_X86_DEFAULT_VM],
  ])('test_invalid_memory_region_flags on %s', (_name, type) => {
    it('MR-2/MR-4: every unsupported or v2-only bit 0..31 → EINVAL from v1, every unsupported bit from v2', () => {
      const host = trackedHost();
      const kvm = host.openKvm();
      // As in the C test, GUEST_MEMFD counts as supported when /dev/kvm reports PRIVATE.
      let supported = KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY;
      if ((kvm.checkExtension(KVM_CAP_MEMORY_ATTRIBUTES) & KVM_MEMORY_ATTRIBUTE_PRIVATE) !== 0) {
        supported |= KVM_MEM_GUEST_MEMFD;
      }
      kvm.close();
      expect(supported & KVM_MEM_GUEST_MEMFD, '§1.4: /dev/kvm reports PRIVATE').toBe(KVM_MEM_GUEST_MEMFD);
      const v2OnlyFlags = KVM_MEM_GUEST_MEMFD;
      const vm = vmCreateBarebones(host, type);
      let v1Checked = 0;
      let v2Checked = 0;
      for (let i = 0; i < 32; i++) {
        const bit = 2 ** i; // u32, also for bit 31
        const isSupported = (supported & bit) !== 0;
        if (isSupported && (v2OnlyFlags & bit) === 0) continue;
        const region = {
          slot: 0,
          flags: bit,
          guestPhysAddr: MEM_REGION_GPA,
          memorySize: MEM_REGION_SIZE,
          userspaceAddr: 0,
        };
        expectErrno(() => vm.setUserMemoryRegion(region), 'EINVAL', 'MR-2');
        v1Checked++;
        if (isSupported) continue;
        expectErrno(() => vm.setUserMemoryRegion2(region), 'EINVAL', 'MR-4');
        v2Checked++;
      }
      expect([v1Checked, v2Checked]).toEqual([30, 29]);

      // With a guest_memfd: GUEST_MEMFD excludes LOG_DIRTY_PAGES and READONLY (MR-4). The model
      // has no KVM_CREATE_GUEST_MEMFD yet (ENOTTY); the flags check runs before the binding
      // (MR-17), so with a non-guest_memfd fd it must still be MR-4 that rejects the call.
      let gmemFd = -1;
      try {
        gmemFd = vm.createGuestMemfd({ size: MEM_REGION_SIZE });
      } catch (e) {
        if (!(e instanceof KvmError && e.code === 'ENOTTY')) throw e;
      }
      for (const extra of [KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY]) {
        expectErrno(
          () =>
            vm.setUserMemoryRegion2({
              slot: 0,
              flags: extra | KVM_MEM_GUEST_MEMFD,
              guestPhysAddr: MEM_REGION_GPA,
              memorySize: MEM_REGION_SIZE,
              userspaceAddr: 0,
              guestMemfd: gmemFd,
              guestMemfdOffset: 0,
            }),
          'EINVAL',
          'MR-4',
        );
      }
      if (gmemFd >= 0) host.close(gmemFd);

      // The supported flags themselves are accepted by both ioctls (so the loop above did not
      // pass merely because everything fails).
      const hva = host.mmap(0, MEM_REGION_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      for (const flags of [0, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY]) {
        for (const set of [vm.setUserMemoryRegion.bind(vm), vm.setUserMemoryRegion2.bind(vm)]) {
          set({
            slot: 0,
            flags,
            guestPhysAddr: MEM_REGION_GPA,
            memorySize: MEM_REGION_SIZE,
            userspaceAddr: hva,
          });
          set({ slot: 0, flags, guestPhysAddr: MEM_REGION_GPA, memorySize: 0, userspaceAddr: hva });
        }
      }
      host.munmap(hva, MEM_REGION_SIZE);
      vm.close();
    });
  });

  it('test_add_max_memory_regions: KVM_CAP_NR_MEMSLOTS slots of 2 MiB fit, slot N → EINVAL (MR-19, MR-3)', () => {
    const host = trackedHost();
    const kvm = host.openKvm();
    const maxMemSlots = kvm.checkExtension(KVM_CAP_NR_MEMSLOTS);
    kvm.close();
    expect(maxMemSlots).toBeGreaterThan(0);
    expect(maxMemSlots, '§1.4').toBe(KVM_USER_MEM_SLOTS);
    const vm = vmCreateBarebones(host);
    // One MAP_NORESERVE mapping of 32764 × 2 MiB (64 GiB): nothing is touched, so nothing is allocated.
    const memBytes = maxMemSlots * MEM_REGION_SIZE;
    const mem = host.mmap(
      0,
      memBytes,
      PROT_READ | PROT_WRITE,
      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
      -1,
      0,
    );
    for (let slot = 0; slot < maxMemSlots; slot++) {
      vm.setUserMemoryRegion({
        slot,
        flags: 0,
        guestPhysAddr: slot * MEM_REGION_SIZE,
        memorySize: MEM_REGION_SIZE,
        userspaceAddr: mem + slot * MEM_REGION_SIZE,
      });
    }
    expect(vm.kvm.memslots[0]?.byId.size).toBe(maxMemSlots);
    const memExtra = host.mmap(
      0,
      MEM_REGION_SIZE,
      PROT_READ | PROT_WRITE,
      MAP_PRIVATE | MAP_ANONYMOUS,
      -1,
      0,
    );
    expectErrno(
      () =>
        vm.setUserMemoryRegion({
          slot: maxMemSlots,
          flags: 0,
          guestPhysAddr: maxMemSlots * MEM_REGION_SIZE,
          memorySize: MEM_REGION_SIZE,
          userspaceAddr: memExtra,
        }),
      'EINVAL',
      'MR-3',
    );
    host.munmap(mem, memBytes);
    host.munmap(memExtra, MEM_REGION_SIZE);
    vm.close();
  });

  describe.each([
    ['SLOT_ZAP_ALL quirk enabled', false],
    ['SLOT_ZAP_ALL quirk disabled', true],
  ])('test_move_memory_region, %s', (_name, disableQuirk) => {
    it.each([
      ['between runs', false],
      ['with the vCPU running inside the MOVE window', true],
    ])('MR-21/MR-23: a moved slot never shows the old translation (%s)', (_how, inWindow) => {
      for (let loop = 0; loop < LOOPS; loop++) {
        const { t, vcpu, hva } = spawnVm(disableQuirk);
        const seen: { change: string; window: RunResult }[] = [];
        // The guest is spinning on 0.
        expect(readVal(vcpu)).toEqual({ val: 0n, mmio: false });
        if (inWindow) t.vm.kvm.memslotWindowHook = windowHook(t, vcpu, !disableQuirk, seen);

        // Shift the base gpa down one page: gpa MEM_REGION_GPA is now backed by hva + 4096, so
        // the guest must not see the "2" written at the old translation's hva.
        t.moveRegion(MEM_REGION_SLOT, MEM_REGION_GPA - PAGE);
        t.host.writeMemory(hva, u64Bytes(2n));
        for (let i = 0; i < 3; i++)
          expect(readVal(vcpu), 'misaligned slot').toEqual({ val: 0n, mmio: false });

        // The value changes before the slot is restored, so the guest can only ever see "1".
        t.host.writeMemory(hva, u64Bytes(1n));
        t.moveRegion(MEM_REGION_SLOT, MEM_REGION_GPA);
        t.vm.kvm.memslotWindowHook = null;
        expect(readVal(vcpu), 'realigned slot').toEqual({ val: 1n, mmio: false });

        if (inWindow) {
          expect(seen.map((s) => s.change)).toEqual(['MOVE', 'MOVE']);
          for (const s of seen) expectKicked(s.window);
        }
        t.vm.close();
      }
    });
  });

  describe.each([
    ['SLOT_ZAP_ALL quirk enabled', false],
    ['SLOT_ZAP_ALL quirk disabled', true],
  ])('test_delete_memory_region, %s', (_name, disableQuirk) => {
    it.each([
      ['between runs', false],
      ['with the vCPU running inside each DELETE window', true],
    ])(
      'MR-21/MR-22/RO-2: reads of a deleted slot are MMIO; deleting slot 0 stops the guest (%s)',
      (_how, inWindow) => {
        const [finalRipStart, finalRipEnd] = spinLoopRips();
        for (let loop = 0; loop < LOOPS; loop++) {
          const { t, vcpu } = spawnVm(disableQuirk);
          const seen: { change: string; window: RunResult }[] = [];
          expect(readVal(vcpu)).toEqual({ val: 0n, mmio: false });
          if (inWindow) t.vm.kvm.memslotWindowHook = windowHook(t, vcpu, !disableQuirk, seen);

          // Delete the memory region: the guest does not die, its reads become MMIO.
          const old = t.deleteRegion(MEM_REGION_SLOT, true);
          // The old backing still exists and holds a marker: a stale translation would show it.
          t.host.writeMemory(old.hva, u64Bytes(0x5a5an));
          expect(readVal(vcpu), 'deleted slot').toEqual({ val: MMIO_VAL, mmio: true });
          expect(readVal(vcpu), 'deleted slot, again').toEqual({ val: MMIO_VAL, mmio: true });

          // Recreate it on fresh anonymous memory: the guest sees 0 (MR-20: no stale MMIO SPTE).
          t.addRegion(MEM_REGION_GPA, MEM_REGION_SLOT, MEM_REGION_SIZE / PAGE);
          t.host.munmap(old.hva, old.bytes);
          expect(readVal(vcpu), 'recreated slot').toEqual({ val: 0n, mmio: false });

          // Delete it again so that only slot 0 is left.
          t.deleteRegion(MEM_REGION_SLOT);
          expect(readVal(vcpu), 'deleted again').toEqual({ val: MMIO_VAL, mmio: true });

          // Delete the code slot: the vCPU cannot fetch and stops with an emulation error (or
          // shutdown) while in its final spin loop.
          t.deleteRegion(0);
          t.vm.kvm.memslotWindowHook = null;
          const r = vcpu.run();
          expect([KVM_EXIT_SHUTDOWN, KVM_EXIT_INTERNAL_ERROR], describeRun(r)).toContain(r.exitReason);
          if (r.exitReason === KVM_EXIT_INTERNAL_ERROR) {
            const rip = vcpu.getRegs().rip;
            expect(rip >= finalRipStart && rip < finalRipEnd, `rip ${rip} in the final spin loop`).toBe(true);
          }
          if (inWindow) {
            expect(seen.map((s) => s.change)).toEqual(['DELETE', 'DELETE', 'DELETE']);
            for (const s of seen) expectKicked(s.window);
          }
          t.vm.close();
        }
      },
    );
  });
});
