/**
 * The parts of tools/testing/selftests/kvm/lib/kvm_util.c that the ported selftests use, on the
 * model backend: a VM with a code slot (slot 0), user memory regions backed by anonymous memory
 * that the helper remembers (so a region can be moved, deleted and re-added by slot id, as
 * `vm_mem_region_move` / `vm_mem_region_delete` do), and `ucall`-style decoding of vCPU exits.
 *
 * Differences from the C library: guest code is a guest program (src/core/vcpu/program.ts)
 * rather than compiled C, and guest addresses are physical (the model identity-maps), so there
 * is no `virt_map`. A `GUEST_SYNC(n)` is `sync(n)`: KVM_EXIT_IO, OUT of 4 bytes to port 0xE0.
 */
import { expect } from 'vitest';
import type { RunResult } from '../../src/core/api.js';
import type { ModelHost } from '../../src/core/host.js';
import type { VmHandle } from '../../src/core/kvm/kvm_main.js';
import {
  KVM_EXIT_IO,
  KVM_X86_DEFAULT_VM,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  PROT_READ,
  PROT_WRITE,
} from '../../src/core/uapi.js';
import { type Program, SYNC_PORT } from '../../src/core/vcpu/program.js';
import type { KvmVcpu } from '../../src/core/vcpu/vcpu.js';

export const PAGE = 4096;
export const SZ_2M = 2 * 1024 * 1024;
/** Slot 0: the guest's code page (0x1000) and any data the host shares with the guest. */
export const SLOT0_BYTES = 1024 * 1024;

/** One user memory region the helper created (struct userspace_mem_region). */
export interface MemRegion {
  readonly slot: number;
  gpa: number;
  readonly bytes: number;
  readonly hva: number;
  readonly flags: number;
}

/** A VM plus the memory regions added through it (struct kvm_vm). */
export class SelftestVm {
  readonly regions = new Map<number, MemRegion>();

  constructor(
    readonly host: ModelHost,
    readonly vm: VmHandle,
  ) {}

  /** vm_userspace_mem_region_add(VM_MEM_SRC_ANONYMOUS): fresh anonymous memory, mapped and added. */
  addRegion(gpa: number, slot: number, npages: number, flags = 0): MemRegion {
    const bytes = npages * PAGE;
    const hva = this.host.mmap(0, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    this.vm.setUserMemoryRegion({ slot, flags, guestPhysAddr: gpa, memorySize: bytes, userspaceAddr: hva });
    const region: MemRegion = { slot, gpa, bytes, hva, flags };
    this.regions.set(slot, region);
    return region;
  }

  private region(slot: number): MemRegion {
    const r = this.regions.get(slot);
    if (!r) throw new Error(`slot ${slot} was not added through this helper`);
    return r;
  }

  /** vm_mem_region_move: the same slot, userspace_addr and size at a new gpa (MR-14 MOVE). */
  moveRegion(slot: number, newGpa: number): void {
    const r = this.region(slot);
    this.vm.setUserMemoryRegion({
      slot,
      flags: r.flags,
      guestPhysAddr: newGpa,
      memorySize: r.bytes,
      userspaceAddr: r.hva,
    });
    r.gpa = newGpa;
  }

  /**
   * vm_mem_region_delete: memory_size 0, then the backing is unmapped. `keepBacking` leaves the
   * host mapping in place (returned) so a test can show the guest no longer reaches it.
   */
  deleteRegion(slot: number, keepBacking = false): MemRegion {
    const r = this.region(slot);
    this.vm.setUserMemoryRegion({ slot, flags: 0, guestPhysAddr: 0, memorySize: 0, userspaceAddr: 0 });
    this.regions.delete(slot);
    if (!keepBacking) this.host.munmap(r.hva, r.bytes);
    return r;
  }

  /** addr_gpa2hva for a gpa inside a region added through the helper. */
  gpa2hva(gpa: number): number {
    for (const r of this.regions.values()) {
      if (gpa >= r.gpa && gpa < r.gpa + r.bytes) return r.hva + (gpa - r.gpa);
    }
    throw new Error(`gpa 0x${gpa.toString(16)} is in no region`);
  }

  writeU64(gpa: number, value: bigint): void {
    this.host.writeMemory(this.gpa2hva(gpa), u64Bytes(value));
  }

  readU64(gpa: number): bigint {
    return leU64(this.host.readMemory(this.gpa2hva(gpa), 8));
  }

  /**
   * vm_vcpu_add with a guest program. The model's vCPU class is needed for its test seams
   * (`budget`, `kick`); `Vm.createVcpu` is typed as the interface, which the class implements.
   */
  addVcpu(id: number, guest: Program): KvmVcpu {
    const vcpu = this.vm.createVcpu(id) as KvmVcpu; // the model's VmHandle makes KvmVcpus
    vcpu.setProgram(guest);
    return vcpu;
  }
}

/** vm_create_barebones(_type): a VM with no memslots. /dev/kvm is closed again right away. */
export function vmCreateBarebones(host: ModelHost, type: number = KVM_X86_DEFAULT_VM): VmHandle {
  const kvm = host.openKvm();
  try {
    return kvm.createVm(type);
  } finally {
    kvm.close();
  }
}

/**
 * vm_create_with_one_vcpu: slot 0 = [0, SLOT0_BYTES) of anonymous memory holding the code page
 * (the default program layout puts code at 0x1000), and vCPU 0 running `guest`.
 */
export function vmCreateWithOneVcpu(
  host: ModelHost,
  guest: Program,
  type: number = KVM_X86_DEFAULT_VM,
): { t: SelftestVm; vcpu: KvmVcpu } {
  const t = new SelftestVm(host, vmCreateBarebones(host, type));
  t.addRegion(0, 0, SLOT0_BYTES / PAGE);
  return { t, vcpu: t.addVcpu(0, guest) };
}

export function u64Bytes(value: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, value), true);
  return b;
}

export function leU64(bytes: Uint8Array): bigint {
  return new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
}

/** A short description of a KVM_RUN result for assertion messages. */
export function describeRun(r: RunResult): string {
  const parts = [`ret ${r.ret}`, r.exitReasonName];
  if (r.errno !== undefined) parts.push(r.errno);
  if (r.mmio)
    parts.push(`mmio ${r.mmio.isWrite ? 'W' : 'R'} 0x${r.mmio.physAddr.toString(16)}/${r.mmio.len}`);
  if (r.io) parts.push(`io port 0x${r.io.port.toString(16)}`);
  return parts.join(', ');
}

/**
 * get_ucall() == UCALL_SYNC: the run returned 0 with KVM_EXIT_IO to the sync port. Returns the
 * tag; fails the test for any other exit.
 */
export function expectSync(r: RunResult, tag?: number): number {
  expect(r.ret, describeRun(r)).toBe(0);
  expect(r.exitReason, describeRun(r)).toBe(KVM_EXIT_IO);
  expect(r.io?.port, describeRun(r)).toBe(SYNC_PORT);
  const data = r.io?.data ?? new Uint8Array(4);
  const got = new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true);
  if (tag !== undefined) expect(got, 'sync tag').toBe(tag);
  return got;
}

/** Whether a run ended at a sync exit (without asserting). */
export function isSync(r: RunResult): boolean {
  return r.ret === 0 && r.exitReason === KVM_EXIT_IO && r.io?.port === SYNC_PORT;
}

/** A small deterministic PRNG (xorshift32), so runs are reproducible. */
export function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}
