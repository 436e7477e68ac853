/**
 * private_mem_conversions_test (kvm-semantics §4.4), on the model: a SW_PROTECTED VM whose guest
 * converts memory with KVM_HC_MAP_GPA_RANGE; the host handles each hypercall exit like the
 * selftest does (optionally fallocate / punch the guest_memfd, then KVM_SET_MEMORY_ATTRIBUTES),
 * and guest and host exchange patterns through shared memory. Scaled to one vCPU and one slot of
 * 2 MiB + 4 KiB (the selftest's per-vCPU chunk).
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { ModelHost } from '../../src/core/host.js';
import { gmemPages } from '../../src/core/kvm/guest_memfd.js';
import type { VmHandle } from '../../src/core/kvm/kvm_main.js';
import * as U from '../../src/core/uapi.js';
import { type ProgramBuilder, program } from '../../src/core/vcpu/program.js';
import type { KvmVcpu } from '../../src/core/vcpu/vcpu.js';
import { expectNoLeaks, MiB, PAGE, trackedHost } from '../helpers.js';

afterEach(expectNoLeaks);

const BASE = 2 ** 32; // 4 GiB, as the selftest
const CHUNK = 2 * MiB + PAGE;
const SHARED = 0;
const PRIVATE = U.KVM_MAP_GPA_RANGE_ENCRYPTED;
/** Flags the guest passes in the hypercall's attrs (bits above the page-size field), like the test. */
const DO_FALLOCATE = 1 << 8;
const SET_ATTRIBUTES = 1 << 9;

interface Vm {
  host: ModelHost;
  vm: VmHandle;
  gmem: number;
  sharedHva: number;
}

function setup(): Vm {
  const host = trackedHost();
  const kvm = host.openKvm();
  const vm = kvm.createVm(U.KVM_X86_SW_PROTECTED_VM);
  kvm.close();
  vm.enableCap({ cap: U.KVM_CAP_EXIT_HYPERCALL, args: [1 << U.KVM_HC_MAP_GPA_RANGE] });
  // Code and page tables in a small ordinary slot.
  const code = host.memfdCreate('code');
  host.ftruncate(code, MiB);
  const codeHva = host.mmap(0, MiB, U.PROT_READ | U.PROT_WRITE, U.MAP_SHARED, code, 0);
  host.close(code);
  vm.setUserMemoryRegion({ slot: 0, flags: 0, guestPhysAddr: 0, memorySize: MiB, userspaceAddr: codeHva });
  // The test region: shared backing + guest_memfd.
  const size = 4 * MiB; // ALIGN(2 MiB + 4 KiB, 2 MiB)
  const shared = host.memfdCreate('shared');
  host.ftruncate(shared, size);
  const sharedHva = host.mmap(0, size, U.PROT_READ | U.PROT_WRITE, U.MAP_SHARED, shared, 0);
  host.close(shared);
  const gmem = vm.createGuestMemfd({ size });
  vm.setUserMemoryRegion2({
    slot: 10,
    flags: U.KVM_MEM_GUEST_MEMFD,
    guestPhysAddr: BASE,
    memorySize: size,
    userspaceAddr: sharedHva,
    guestMemfd: gmem,
    guestMemfdOffset: 0,
  });
  return { host, vm, gmem, sharedHva };
}

/** The selftest's host side of KVM_EXIT_HYPERCALL. */
function handleHypercall(t: Vm, v: KvmVcpu, args: readonly number[]): void {
  const [gpa, npages, attrs] = args as [number, number, number];
  const size = npages * PAGE;
  const toPrivate = (attrs & U.KVM_MAP_GPA_RANGE_ENCRYPTED) !== 0;
  if ((attrs & DO_FALLOCATE) !== 0) {
    const mode = toPrivate ? U.FALLOC_FL_KEEP_SIZE : U.FALLOC_FL_PUNCH_HOLE | U.FALLOC_FL_KEEP_SIZE;
    t.host.fallocate(t.gmem, mode, gpa - BASE, size);
  }
  if ((attrs & SET_ATTRIBUTES) !== 0) {
    t.vm.setMemoryAttributes({
      address: gpa,
      size,
      attributes: toPrivate ? U.KVM_MEMORY_ATTRIBUTE_PRIVATE : 0,
    });
  }
  v.kvmRun.hypercall.ret = 0;
}

/** Runs until the guest syncs; handles hypercalls; returns the tag. Any other exit fails the test. */
function runToSync(t: Vm, v: KvmVcpu): number {
  for (;;) {
    const r = v.run();
    if (r.exitReasonName === 'KVM_EXIT_HYPERCALL' && r.hypercall) {
      expect(r.hypercall.nr).toBe(U.KVM_HC_MAP_GPA_RANGE);
      handleHypercall(t, v, r.hypercall.args);
      continue;
    }
    expect(r.exitReasonName, JSON.stringify(r)).toBe('KVM_EXIT_IO');
    return new DataView((r.io?.data ?? new Uint8Array(4)).buffer).getUint32(0, true);
  }
}

function convert(
  b: ProgramBuilder,
  gpa: number,
  size: number,
  to: number,
  fallocate: boolean,
): ProgramBuilder {
  const flags = SET_ATTRIBUTES | (fallocate ? DO_FALLOCATE : 0) | to;
  return b.hypercall(U.KVM_HC_MAP_GPA_RANGE, [gpa, size / PAGE, flags], 'r15');
}

const ranges: [number, number][] = [
  [0, PAGE],
  [0, 2 * MiB],
  [PAGE, PAGE],
  [PAGE, 2 * MiB],
  [2 * MiB, PAGE],
];

describe.each([false, true])('private_mem_conversions_test (fallocate: %s)', (fallocate) => {
  it('memory is shared by default: guest and host exchange patterns', () => {
    const t = setup();
    const v = t.vm.createVcpu(0) as KvmVcpu;
    v.setProgram(
      program((b) =>
        b
          .fill(BASE, CHUNK, 0xaa)
          .sync(1)
          .cmp(8, BASE + CHUNK - 8, 0xccccccccccccccccn, 9)
          .sync(2),
      ),
    );
    expect(runToSync(t, v)).toBe(1);
    expect(t.host.readMemory(t.sharedHva + CHUNK - 1, 1)[0]).toBe(0xaa);
    t.host.writeMemory(t.sharedHva, new Uint8Array(CHUNK).fill(0xcc));
    expect(runToSync(t, v)).toBe(2); // tag 9 would mean the guest did not see 0xcc
    v.close();
  });

  it.each(ranges)(
    'convert [+%s, %s bytes) to private and back: private data never reaches the host',
    (off, size) => {
      const t = setup();
      const v = t.vm.createVcpu(0) as KvmVcpu;
      const gpa = BASE + off;
      v.setProgram(
        program((b) => {
          b.fill(BASE, CHUNK, 0x11); // p1, shared
          convert(b, gpa, size, PRIVATE, fallocate);
          b.fill(gpa, size, 0x22).sync(1); // p2, private
          b.cmp(1, gpa, 0x22, 10).cmp(1, gpa + size - 1, 0x22, 11);
          if (off > 0) b.cmp(1, BASE, 0x11, 12); // the rest of the chunk keeps p1
          convert(b, gpa, size, SHARED, fallocate);
          b.fill(gpa, size, 0x33).sync(2); // p3, shared again
          b.cmp(1, gpa, 0x44, 13).sync(3); // p4 written by the host
        }),
      );
      expect(runToSync(t, v)).toBe(1);
      // The host still sees p1 in shared memory: the guest's p2 went to guest_memfd.
      expect(t.host.readMemory(t.sharedHva + off, 1)[0]).toBe(0x11);
      expect(t.host.readMemory(t.sharedHva + off + size - 1, 1)[0]).toBe(0x11);
      expect(runToSync(t, v)).toBe(2);
      expect(t.host.readMemory(t.sharedHva + off, 1)[0]).toBe(0x33);
      t.host.writeMemory(t.sharedHva + off, new Uint8Array([0x44]));
      expect(runToSync(t, v)).toBe(3);
      if (fallocate) expect(gmemPages(t.host.kernel.fds.get(t.gmem, 't'))).toBe(0); // punched on the way back
      v.close();
    },
  );

  it('guest_test_punch_hole: a punched private range reads zeros, memory staying private', () => {
    const t = setup();
    const v = t.vm.createVcpu(0) as KvmVcpu;
    v.setProgram(
      program((b) => {
        convert(b, BASE, CHUNK - PAGE, PRIVATE, fallocate);
        b.fill(BASE, CHUNK - PAGE, 0xcc);
        // Punch (DO_FALLOCATE toward shared) without SET_ATTRIBUTES: still private.
        b.hypercall(U.KVM_HC_MAP_GPA_RANGE, [BASE + PAGE, 2, DO_FALLOCATE | SHARED], 'r15');
        b.cmp(8, BASE + PAGE, 0, 20)
          .cmp(8, BASE + 2 * PAGE + 8, 0, 21)
          .cmp(1, BASE, 0xcc, 22)
          .sync(1);
      }),
    );
    expect(runToSync(t, v)).toBe(1);
    expect(t.vm.kvm.isPrivateGfn(BASE / PAGE + 1)).toBe(true);
    v.close();
  });
});

it('after the VM is freed, the guest_memfd still accepts punch and allocate over its whole size', () => {
  const t = setup();
  const k = t.vm.kvm;
  t.vm.close();
  expect(k.destroyed).toBe(false);
  t.host.fallocate(t.gmem, U.FALLOC_FL_PUNCH_HOLE | U.FALLOC_FL_KEEP_SIZE, 0, 4 * MiB);
  t.host.fallocate(t.gmem, U.FALLOC_FL_KEEP_SIZE, 0, 4 * MiB);
  t.host.close(t.gmem);
  expect(k.destroyed).toBe(true);
});
