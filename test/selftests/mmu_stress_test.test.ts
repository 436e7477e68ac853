/**
 * tools/testing/selftests/kvm/mmu_stress_test.c (kvm-semantics.md §4.8), on the model, bounded:
 * 2 vCPUs and 4 slots × 2 MiB (instead of 3/4 of the host's CPUs and up to 128 GiB of 2 GiB
 * slots), all aliasing one 2 MiB memfd mapping, starting at 4 GiB as in the C test.
 *
 * Stages, each ending in GUEST_SYNC(stage): 0 write every page (the value is its gpa); 1 write
 * again; 2 read; the host mprotect(PROT_READ)s the mapping; 3 every write must fail with KVM_RUN
 * −1/EFAULT and no memory-fault record (RO-4, §3 row 8f, RUN-3) — the host skips each faulting
 * store, as the C test advances rip past its 3-byte `mov`, until the guest syncs; the host
 * mprotect(RW)s; 4 writes succeed. Not ported: the CR0.WP toggle between stages 0 and 1 (the
 * model has no control registers). The rendezvous of the C test is the sequential order of runs.
 *
 * At the end, as in the C test, even slots are deleted and the first half of the backing is
 * unmapped, and the rest is left for teardown (`expectNoLeaks` disposes the host, the model's
 * mmu_notifier release path).
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { RunResult } from '../../src/core/api.js';
import { KVM_CAP_NR_MEMSLOTS, KVM_EXIT_IO, MAP_SHARED, PROT_READ, PROT_WRITE } from '../../src/core/uapi.js';
import { type ProgramBuilder, program } from '../../src/core/vcpu/program.js';
import type { KvmVcpu } from '../../src/core/vcpu/vcpu.js';
import { expectNoLeaks, trackedHost } from '../helpers.js';
import { describeRun, expectSync, leU64, PAGE, SZ_2M, vmCreateWithOneVcpu } from './kvm_util.js';

afterEach(expectNoLeaks);

const SZ_4G = 4 * 1024 * 1024 * 1024;
const NR_VCPUS = 2;
const NR_SLOTS = 4;
const SLOT_SIZE = SZ_2M;
const FIRST_SLOT = 1;
const START_GPA = SZ_4G;
/** The model's instruction size: rip advances by 16 per instruction (insn.ts). */
const INSN_BYTES = 16n;

/** guest_code(start_gpa, end_gpa, stride = PAGE) with the stage-3 loop run once (see below). */
function guestCode(startGpa: number, endGpa: number) {
  const pages = (endGpa - startGpa) / PAGE;
  const writeAll = (b: ProgramBuilder) =>
    b
      .mov('r11', startGpa)
      .loop('r15', pages, (l) => l.store(8, { base: 'r11', disp: 0 }, 'r11').add('r11', PAGE));
  return program((b) => {
    for (let i = 0; i < 2; i++) writeAll(b).sync(i);
    b.mov('r11', startGpa)
      .loop('r15', pages, (l) => l.load(8, 'r8', { base: 'r11', disp: 0 }).add('r11', PAGE))
      .sync(2);
    // Stage 3: the C guest repeats its writes until it reads mprotect_ro_done; here the host
    // mprotects before the stage starts, so one pass already writes read-only memory.
    writeAll(b).sync(3);
    writeAll(b).sync(4);
    b.halt();
  });
}

describe('mmu_stress_test', () => {
  it('RO-4/RUN-3/MR-26: aliasing slots over one memfd; writes to mprotect(PROT_READ) memory fail with EFAULT and no record', () => {
    const host = trackedHost();
    const kvm = host.openKvm();
    const maxSlots = kvm.checkExtension(KVM_CAP_NR_MEMSLOTS);
    kvm.close();
    expect(maxSlots, 'KVM is broken').toBeGreaterThan(FIRST_SLOT);

    // kvm_memfd_alloc + mmap(MAP_SHARED), pre-faulted by the host with 0xaa.
    const fd = host.memfdCreate('mmu_stress');
    host.ftruncate(fd, SLOT_SIZE);
    const mem = host.mmap(0, SLOT_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    for (let i = 0; i < SLOT_SIZE; i += PAGE) host.writeMemory(mem + i, new Uint8Array([0xaa]));

    const endGpa = START_GPA + NR_SLOTS * SLOT_SIZE;
    const perVcpu = (endGpa - START_GPA) / NR_VCPUS;
    const { t, vcpu: vcpu0 } = vmCreateWithOneVcpu(host, guestCode(START_GPA, START_GPA + perVcpu));
    const vcpus: KvmVcpu[] = [vcpu0];
    for (let i = 1; i < NR_VCPUS; i++) {
      vcpus.push(t.addVcpu(i, guestCode(START_GPA + i * perVcpu, START_GPA + (i + 1) * perVcpu)));
    }
    const maxGpa = t.vm.kvm.maxGfn * PAGE;
    expect(maxGpa > 4 * SLOT_SIZE, 'MAXPHYADDR <4gb').toBe(true);
    for (let slot = FIRST_SLOT; slot < FIRST_SLOT + NR_SLOTS; slot++) {
      const gpa = START_GPA + (slot - FIRST_SLOT) * SLOT_SIZE;
      t.vm.setUserMemoryRegion({
        slot,
        flags: 0,
        guestPhysAddr: gpa,
        memorySize: SLOT_SIZE,
        userspaceAddr: mem,
      });
    }
    /** The value at an offset of the shared backing. */
    const backing = (off: number): bigint => leU64(host.readMemory(mem + off, 8));
    /** Every slot aliases the backing: the last vCPU's last slot wrote last, so its gpas win. */
    const expectLastWriterWins = (stage: number): void => {
      const lastSlotGpa = START_GPA + (NR_SLOTS - 1) * SLOT_SIZE;
      for (let off = 0; off < SLOT_SIZE; off += PAGE) {
        const v = backing(off);
        if (v !== BigInt(lastSlotGpa + off))
          expect.fail(`stage ${stage}: offset ${off} holds 0x${v.toString(16)}`);
      }
    };

    // Stages 0 and 1: write all of guest memory, twice. Stage 2: read it.
    for (const stage of [0, 1, 2]) {
      for (const v of vcpus) expectSync(v.run(), stage);
      if (stage < 2) expectLastWriterWins(stage);
    }

    // mprotect(PROT_READ): the notifier zaps every alias (MR-26). Stage 3: every write faults.
    host.mprotect(mem, SLOT_SIZE, PROT_READ);
    for (const v of vcpus) {
      const pages = perVcpu / PAGE;
      let efaults = 0;
      let r: RunResult;
      for (;;) {
        r = v.run();
        if (r.ret === 0) break;
        expect(r.errno, describeRun(r)).toBe('EFAULT');
        // No memory-fault record: exit_reason is stale, still the previous exit's (the stage-2 sync).
        expect(r.memoryFaultValid, describeRun(r)).toBeUndefined();
        expect(r.exitReason, describeRun(r)).toBe(KVM_EXIT_IO);
        // RUN-2: the store did not execute; skip it as the C test skips its `mov`.
        v.setRegs({ rip: v.getRegs().rip + INSN_BYTES });
        efaults++;
        if (efaults > pages) break;
      }
      expectSync(r, 3);
      expect(efaults, 'every stage-3 write hit EFAULT').toBe(pages);
    }
    expectLastWriterWins(3); // nothing was written

    // mprotect(RW): stage 4 writes succeed (the model's mprotect has landed before the run).
    host.mprotect(mem, SLOT_SIZE, PROT_READ | PROT_WRITE);
    for (const v of vcpus) expectSync(v.run(), 4);
    expectLastWriterWins(4);

    // Delete even numbered slots and unmap the first half of the backing; leave the rest for
    // teardown.
    for (let slot = (FIRST_SLOT + NR_SLOTS - 1) & ~1; slot >= FIRST_SLOT; slot -= 2) {
      t.vm.setUserMemoryRegion({ slot, flags: 0, guestPhysAddr: 0, memorySize: 0, userspaceAddr: 0 });
    }
    expect(
      t.vm.kvm
        .listMemslots()
        .map((s) => s.id)
        .sort(),
    ).toEqual([0, 1, 3]);
    host.munmap(mem, SLOT_SIZE / 2);
  });
});
