/**
 * tools/testing/selftests/kvm/memslot_modification_stress_test.c (kvm-semantics.md §4.6), on the
 * model, bounded: one vCPU (the C default) touching 4 MiB (instead of 1 GiB) at the top of the
 * guest physical address space, as memstress places it, while the host adds and deletes a 1-page
 * dummy slot (id 7) just below it, 10 times (the C default `-i`), with and without the
 * SLOT_ZAP_ALL quirk (`-q`).
 *
 * The C test's vCPU thread runs concurrently with the add/delete loop. Here the vCPU runs between
 * the ioctls and also inside each DELETE, from `memslotWindowHook`, while the dummy slot is
 * INVALID and (with SLOT_ZAP_ALL) every SPTE of the VM has just been zapped (MR-21). The churn is
 * unrelated to the vCPU's memory, so every KVM_RUN must return 0 with the guest's sync — never
 * MMIO, never an error, never a kick (a vCPU stuck retrying would be kicked by its budget).
 *
 * The memstress guest writes every page of its region, then GUEST_SYNC(1), forever. Here each
 * pass writes its pass number, so the host can also check that no write was lost to a zap.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { RunResult } from '../../src/core/api.js';
import { KVM_CAP_DISABLE_QUIRKS2, KVM_X86_QUIRK_SLOT_ZAP_ALL } from '../../src/core/uapi.js';
import { program } from '../../src/core/vcpu/program.js';
import { expectNoLeaks, trackedHost } from '../helpers.js';
import { describeRun, expectSync, PAGE, type SelftestVm, vmCreateWithOneVcpu } from './kvm_util.js';

afterEach(expectNoLeaks);

const DUMMY_MEMSLOT_INDEX = 7;
const MEMSTRESS_SLOT = 1;
const NR_MODIFICATIONS = 10;
const GUEST_PAGES = 1024;
/** Full guest passes per run phase: a budget well above one pass (about 3 instructions a page). */
const PASS_BUDGET = 64 * GUEST_PAGES;

function memstressGuest(gpa: number) {
  // r12 counts passes; each pass stores r12 into the first 8 bytes of every page.
  return program((b) =>
    b.mov('r12', 0).loop('r14', 2 ** 40, (outer) =>
      outer
        .add('r12', 1)
        .mov('r11', gpa)
        .loop('r15', GUEST_PAGES, (l) => l.store(8, { base: 'r11', disp: 0 }, 'r12').add('r11', PAGE))
        .sync(1),
    ),
  );
}

describe.each([
  ['SLOT_ZAP_ALL quirk enabled', false],
  ['SLOT_ZAP_ALL quirk disabled (-q)', true],
])('memslot_modification_stress_test, %s', (_name, disableQuirk) => {
  it('MR-20/MR-21: adding and deleting an unrelated slot causes only UCALL_SYNC exits and loses no write', () => {
    const host = trackedHost();
    const { t, vcpu } = vmCreateWithOneVcpu(
      host,
      program((b) => b.halt()),
    );
    // memstress puts the test region at the top of the guest physical address space.
    const gpa = (t.vm.kvm.maxGfn - GUEST_PAGES) * PAGE;
    vcpu.setProgram(memstressGuest(gpa));
    if (disableQuirk) t.vm.enableCap({ cap: KVM_CAP_DISABLE_QUIRKS2, args: [KVM_X86_QUIRK_SLOT_ZAP_ALL] });
    t.addRegion(gpa, MEMSTRESS_SLOT, GUEST_PAGES);
    vcpu.budget = PASS_BUDGET;

    let passes = 0;
    const runs: RunResult[] = [];
    /** vcpu_worker: one KVM_RUN, which must be a sync, then the memory must hold the pass. */
    const runPass = (): void => {
      const r = vcpu.run();
      runs.push(r);
      expectSync(r, 1);
      passes++;
      expect(vcpu.getRegs().r12).toBe(BigInt(passes));
      checkMemory(t, gpa, passes);
    };

    runPass();
    const dummyGpa = gpa - PAGE;
    let windows = 0;
    t.vm.kvm.memslotWindowHook = (slot, change) => {
      expect([slot.id, change]).toEqual([DUMMY_MEMSLOT_INDEX, 'DELETE']);
      windows++;
      runPass();
    };
    for (let i = 0; i < NR_MODIFICATIONS; i++) {
      t.addRegion(dummyGpa, DUMMY_MEMSLOT_INDEX, 1);
      runPass();
      t.deleteRegion(DUMMY_MEMSLOT_INDEX);
      runPass();
    }
    t.vm.kvm.memslotWindowHook = null;
    expect(windows).toBe(NR_MODIFICATIONS);
    expect(passes).toBe(1 + 3 * NR_MODIFICATIONS);
    for (const r of runs) expect(r.ret, describeRun(r)).toBe(0);
    expect(t.vm.kvm.stats.mmioExits).toBe(0);
    t.vm.close();
  });
});

/** Every page of the memstress region holds the pass number just completed. */
function checkMemory(t: SelftestVm, gpa: number, pass: number): void {
  for (let p = 0; p < GUEST_PAGES; p++) {
    const v = t.readU64(gpa + p * PAGE);
    if (v !== BigInt(pass)) expect.fail(`page ${p} holds ${v} after pass ${pass}`);
  }
}
