/**
 * tools/testing/selftests/kvm/pre_fault_memory_test.c (kvm-semantics.md §4.5), on the model: the
 * shared variants, on a DEFAULT VM and on a SW_PROTECTED VM. Not ported: the SW_PROTECTED
 * private variant (a guest_memfd slot with the PRIVATE attribute), which belongs to the
 * guest_memfd work.
 *
 * Slot 10 of TEST_SIZE = 2 MiB + 4 KiB at the top of the guest physical address space, 2 MiB
 * aligned. The C test's helper thread deletes the slot "as soon as prefaulting starts" and
 * recreates it when asked. Which of the ioctl and the deletion wins is a race there; here each
 * outcome is its own case: the ioctl completes before the delete, runs inside the delete's
 * window (`memslotWindowHook`, the INVALID slot of MR-21: EAGAIN, PF-4), or runs after it (no
 * memslot: ENOENT, PF-4). After that the C test's loop runs unchanged: recreate, re-issue while
 * bytes remain, stop on success with nothing left or on an error. Every call must satisfy
 * `(size decreased) XOR (error)` (PF-5).
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { PreFaultMemory } from '../../src/core/api.js';
import { KvmError } from '../../src/core/errno.js';
import type { TdpMmu } from '../../src/core/mmu/tdp_mmu.js';
import {
  KVM_CAP_PRE_FAULT_MEMORY,
  KVM_CAP_VM_TYPES,
  KVM_X86_DEFAULT_VM,
  KVM_X86_SW_PROTECTED_VM,
} from '../../src/core/uapi.js';
import { program } from '../../src/core/vcpu/program.js';
import type { KvmVcpu } from '../../src/core/vcpu/vcpu.js';
import { expectNoLeaks, trackedHost } from '../helpers.js';
import { describeRun, expectSync, PAGE, type SelftestVm, SZ_2M, vmCreateWithOneVcpu } from './kvm_util.js';

afterEach(expectNoLeaks);

const TEST_SIZE = SZ_2M + PAGE;
const TEST_NPAGES = TEST_SIZE / PAGE;
const TEST_SLOT = 10;
const UCALL_DONE = 0xd0e;

type Race = 'completes before the delete' | 'runs inside the delete window' | 'runs after the delete';
type Outcome = { ret: 0 | -1; errno?: string; sizeLeft: number };

/** guest_code(base): read the first u64 of every page, then GUEST_DONE. */
function guestCode(base: number) {
  return program((b) =>
    b
      .mov('r11', base)
      .loop('r15', TEST_NPAGES, (l) => l.load(8, 'r8', { base: 'r11', disp: 0 }).add('r11', PAGE))
      .sync(UCALL_DONE),
  );
}

/** One KVM_PRE_FAULT_MEMORY with the PF-5 invariant checked, and PF-3: what it did is mapped. */
function issue(t: SelftestVm, vcpu: KvmVcpu, range: PreFaultMemory): Outcome {
  const prev = range.size;
  const start = range.gpa;
  let out: Outcome;
  try {
    vcpu.preFaultMemory(range);
    out = { ret: 0, sizeLeft: range.size };
  } catch (e) {
    if (!(e instanceof KvmError)) throw e;
    out = { ret: -1, errno: e.code, sizeLeft: range.size };
  }
  expect(
    range.size < prev !== out.ret < 0,
    `PF-5: ${out.ret < 0 ? 'not ' : ''}expecting range.size to change on ${out.ret < 0 ? 'failure' : 'success'}`,
  ).toBe(true);
  if (out.ret < 0) expect(range.gpa, 'a failed call leaves gpa alone').toBe(start);
  const mmu = t.vm.kvm.mmu[0] as TdpMmu;
  for (let gpa = start; gpa < range.gpa; gpa += PAGE) {
    if (mmu.lookup(gpa / PAGE) < 0)
      expect.fail(`PF-3: gpa 0x${gpa.toString(16)} was processed but is not mapped`);
  }
  return out;
}

/**
 * pre_fault_memory(vcpu, base_gpa, offset, size, expected_left) with the deletion ordered by
 * `race`. Returns the first call's outcome (the one that raced the deletion).
 */
function preFaultMemory(
  t: SelftestVm,
  vcpu: KvmVcpu,
  baseGpa: number,
  offset: number,
  size: number,
  expectedLeft: number,
  race: Race,
): Outcome {
  const range: PreFaultMemory = { gpa: baseGpa + offset, size, flags: 0 };
  let first: Outcome | null = null;
  const racingFirstCall = (): Outcome => {
    switch (race) {
      case 'completes before the delete': {
        const o = issue(t, vcpu, range);
        t.deleteRegion(TEST_SLOT);
        return o;
      }
      case 'runs inside the delete window': {
        let o: Outcome | null = null;
        t.vm.kvm.memslotWindowHook = (slot, change) => {
          expect([slot.id, change]).toEqual([TEST_SLOT, 'DELETE']);
          o = issue(t, vcpu, range);
        };
        try {
          t.deleteRegion(TEST_SLOT);
        } finally {
          t.vm.kvm.memslotWindowHook = null;
        }
        if (o === null) throw new Error('the delete window never opened');
        return o;
      }
      case 'runs after the delete':
        t.deleteRegion(TEST_SLOT);
        return issue(t, vcpu, range);
    }
  };

  let slotRecreated = false;
  let last: Outcome;
  for (;;) {
    if (first === null) {
      first = racingFirstCall();
      last = first;
    } else {
      last = issue(t, vcpu, range);
    }
    // Immediately retry if KVM was interrupted by an unrelated signal.
    if (last.ret < 0 && last.errno === 'EINTR') continue;
    if (!slotRecreated) {
      t.addRegion(baseGpa, TEST_SLOT, TEST_NPAGES);
      slotRecreated = true;
      if (range.size !== 0) continue;
    }
    if (range.size === 0 || last.ret < 0) break;
  }
  expect(range.size, `Completed with ${range.size} bytes left, expected ${expectedLeft}`).toBe(expectedLeft);
  if (expectedLeft === 0) expect(last.ret, 'KVM_PRE_FAULT_MEMORY').toBe(0);
  else
    expect([last.ret, last.errno], 'KVM_PRE_FAULT_MEMORY (PF-4: no memslot → ENOENT)').toEqual([
      -1,
      'ENOENT',
    ]);
  return first;
}

const RACES: readonly Race[] = [
  'completes before the delete',
  'runs inside the delete window',
  'runs after the delete',
];

/**
 * What the racing first call must return for each case. Case 1 is (gpa, 2 MiB), case 2
 * (gpa + 2 MiB, 8 KiB: one page in the slot, one past it), case 3 (gpa + TEST_SIZE, 4 KiB).
 */
const FIRST_CALL: Record<Race, [Outcome, Outcome, Outcome]> = {
  'completes before the delete': [
    { ret: 0, sizeLeft: 0 },
    { ret: 0, sizeLeft: PAGE },
    { ret: -1, errno: 'ENOENT', sizeLeft: PAGE },
  ],
  'runs inside the delete window': [
    { ret: -1, errno: 'EAGAIN', sizeLeft: SZ_2M },
    { ret: -1, errno: 'EAGAIN', sizeLeft: 2 * PAGE },
    { ret: -1, errno: 'ENOENT', sizeLeft: PAGE },
  ],
  'runs after the delete': [
    { ret: -1, errno: 'ENOENT', sizeLeft: SZ_2M },
    { ret: -1, errno: 'ENOENT', sizeLeft: 2 * PAGE },
    { ret: -1, errno: 'ENOENT', sizeLeft: PAGE },
  ],
};

describe.each([
  ['KVM_X86_DEFAULT_VM', KVM_X86_DEFAULT_VM],
  ['KVM_X86_SW_PROTECTED_VM (shared)', KVM_X86_SW_PROTECTED_VM],
])('pre_fault_memory_test on %s', (_name, vmType) => {
  it.each(RACES)('PF-3/PF-4/PF-5: the three cases, when the ioctl %s', (race) => {
    const host = trackedHost();
    const kvm = host.openKvm();
    expect(kvm.checkExtension(KVM_CAP_PRE_FAULT_MEMORY)).toBe(1);
    expect(kvm.checkExtension(KVM_CAP_VM_TYPES) & (1 << vmType)).not.toBe(0);
    kvm.close();
    const { t, vcpu } = vmCreateWithOneVcpu(
      host,
      program((b) => b.halt()),
      vmType,
    );
    const gpa = Math.floor(((t.vm.kvm.maxGfn - TEST_NPAGES) * PAGE) / SZ_2M) * SZ_2M;
    vcpu.setProgram(guestCode(gpa));
    t.addRegion(gpa, TEST_SLOT, TEST_NPAGES);

    const firsts = [
      preFaultMemory(t, vcpu, gpa, 0, SZ_2M, 0, race),
      preFaultMemory(t, vcpu, gpa, SZ_2M, PAGE * 2, PAGE, race),
      preFaultMemory(t, vcpu, gpa, TEST_SIZE, PAGE, PAGE, race),
    ];
    expect(firsts).toEqual(FIRST_CALL[race]);

    // The guest reads every page of the (recreated) slot: GUEST_DONE, no MMIO on the way.
    const r = vcpu.run();
    expectSync(r, UCALL_DONE);
    expect(t.vm.kvm.stats.mmioExits, describeRun(r)).toBe(0);
    t.vm.close();
  });
});
