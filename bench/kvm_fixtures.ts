/**
 * Shared set-up for the KVM benchmarks (kvm.bench.ts, private.bench.ts, profile.ts): VMs with
 * guest RAM, a host whose free frames must be zeroed when handed out, deterministic gfns, and a
 * direct first-touch fault loop. Nothing here is timed; it is not a benchmark module itself.
 */
import type { UserspaceMemoryRegion } from '../src/core/api.js';
import { createHost, type ModelHost } from '../src/core/host.js';
import type { VmHandle } from '../src/core/kvm/kvm_main.js';
import { OWNER_KERNEL, type PageAllocator } from '../src/core/mm/page_alloc.js';
import { kvmTdpPageFault, newFault, RET_PF_FIXED } from '../src/core/mmu/mmu.js';
import {
  KVM_MEM_GUEST_MEMFD,
  KVM_MEMORY_ATTRIBUTE_PRIVATE,
  KVM_X86_SW_PROTECTED_VM,
  MAP_ANONYMOUS,
  MAP_NORESERVE,
  MAP_PRIVATE,
  MAP_SHARED,
  PROT_READ,
  PROT_WRITE,
} from '../src/core/uapi.js';
import type { Pfn } from '../src/core/units.js';
import { type Timing, time } from './harness.js';

export const PAGE = 4096;
export const GiB = 2 ** 30;
export const PAGES_1G = GiB / PAGE;

/** The most memslots one address space of an x86 VM holds (KVM_USER_MEM_SLOTS). */
export const NR_SLOTS = 32764;
/** The size of each slot in the many-slot VMs: set_memory_region_test's 2 MiB. */
export const SLOT_BYTES = 2 * 2 ** 20;

/** A fresh host with an empty VM and one anonymous mapping with room for NR_SLOTS slots. */
export interface SlotsVm {
  readonly host: ModelHost;
  readonly vm: VmHandle;
  readonly hva: number;
}

/** set_memory_region_test's shape: one mapping; slot i is [i, i + 1) × SLOT_BYTES at hva + i × SLOT_BYTES. */
export function slotsVm(): SlotsVm {
  const host = createHost();
  const kvm = host.openKvm();
  const vm = kvm.createVm(0);
  kvm.close();
  const hva = host.mmap(
    0,
    NR_SLOTS * SLOT_BYTES,
    PROT_READ | PROT_WRITE,
    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
    -1,
    0,
  );
  return { host, vm, hva };
}

/** Slot i of a SlotsVm: created with `size` = SLOT_BYTES, deleted with `size` = 0. */
export function slotRegion(f: SlotsVm, i: number, size = SLOT_BYTES): UserspaceMemoryRegion {
  return {
    slot: i,
    flags: 0,
    guestPhysAddr: i * SLOT_BYTES,
    memorySize: size,
    userspaceAddr: size === 0 ? 0 : f.hva + i * SLOT_BYTES,
  };
}

/** A VM whose slot 0 = [0, bytes) is backed by a shared mapping of a memfd (the usual VMM layout). */
export interface RamVm {
  readonly vm: VmHandle;
  readonly memfd: number;
  readonly hva: number;
  readonly bytes: number;
}

export function ramVm(host: ModelHost, bytes: number, type = 0): RamVm {
  const kvm = host.openKvm();
  const vm = kvm.createVm(type);
  kvm.close();
  const memfd = host.memfdCreate('ram');
  host.ftruncate(memfd, bytes);
  const hva = host.mmap(0, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  vm.setUserMemoryRegion({ slot: 0, flags: 0, guestPhysAddr: 0, memorySize: bytes, userspaceAddr: hva });
  return { vm, memfd, hva, bytes };
}

/** Closes what `ramVm` opened (the VM goes when its last user does). */
export function closeRamVm(host: ModelHost, r: RamVm): void {
  r.vm.close();
  host.munmap(r.hva, r.bytes);
  host.close(r.memfd);
}

/**
 * A private-memory (SW_PROTECTED) VM whose slot 0 = [0, bytes) is a guest_memfd slot, with its
 * shared half backed by a memfd mapping; optionally every gfn of the slot set PRIVATE.
 */
export interface GmemVm extends RamVm {
  readonly gmem: number;
}

export function gmemVm(host: ModelHost, bytes: number, allPrivate: boolean): GmemVm {
  const kvm = host.openKvm();
  const vm = kvm.createVm(KVM_X86_SW_PROTECTED_VM);
  kvm.close();
  const memfd = host.memfdCreate('shared');
  host.ftruncate(memfd, bytes);
  const hva = host.mmap(0, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  const gmem = vm.createGuestMemfd({ size: bytes, flags: 0 });
  vm.setUserMemoryRegion2({
    slot: 0,
    flags: KVM_MEM_GUEST_MEMFD,
    guestPhysAddr: 0,
    memorySize: bytes,
    userspaceAddr: hva,
    guestMemfd: gmem,
    guestMemfdOffset: 0,
  });
  if (allPrivate) {
    vm.setMemoryAttributes({ address: 0, size: bytes, attributes: KVM_MEMORY_ATTRIBUTE_PRIVATE, flags: 0 });
  }
  return { vm, memfd, hva, bytes, gmem };
}

export function closeGmemVm(host: ModelHost, g: GmemVm): void {
  host.close(g.gmem);
  closeRamVm(host, g);
}

/**
 * Makes the allocator's next `frames` order-0 allocations come from frames whose bytes were
 * written and freed, in sections whose data buffers stay alive: each such allocation zeroes its
 * 4 KiB (`data.fill(0)` on hand-out), which is what "zeroing included" means for the model. One
 * frame per section stays allocated as the pin that keeps the buffer; freed frames keep their
 * dirty mark, so the state survives any number of allocate/free rounds.
 *
 * Without this, a fresh host hands out frames of sections that have no buffer yet: they read as
 * zeros and cost nothing to zero until the first data access creates the 2 MiB buffer.
 */
export function pinDirtySections(alloc: PageAllocator, frames: number): void {
  const sections = Math.ceil(frames / 511) + 1;
  const got: Pfn[] = [];
  for (let i = 0; i < sections * 512; i++) {
    const p = alloc.alloc(OWNER_KERNEL);
    if (p === -1) throw new Error('pinDirtySections: host RAM limit reached');
    alloc.fill(p, 0, 1, 0xa5); // creates the section buffer and marks the frame's data dirty
    got.push(p);
  }
  // Free in reverse allocation order so the free stack hands frames out in ascending order.
  for (let i = got.length - 1; i >= 0; i--) {
    const p = got[i] as Pfn;
    if (p % 512 !== 0) alloc.put(p);
  }
}

/** Deterministic values in [0, limit) (xorshift32, fixed seed, so runs compare). */
export function randomInts(count: number, limit: number, seed = 0x9e3779b9): Float64Array {
  const out = new Float64Array(count);
  let x = seed | 0;
  for (let i = 0; i < count; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = Math.floor(((x >>> 0) / 2 ** 32) * limit);
  }
  return out;
}

/**
 * kvm_tdp_page_fault for every page of [0, pages) in order, as write faults — a vCPU's first
 * touch of each page, without the interpreter. Returns the number that ended RET_PF_FIXED.
 */
export function faultAll(vm: VmHandle, pages: number, write = true): number {
  const kvm = vm.kvm;
  let fixed = 0;
  for (let gfn = 0; gfn < pages; gfn++) {
    if (kvmTdpPageFault(kvm, newFault(gfn * PAGE, write, false, 0)) === RET_PF_FIXED) fixed++;
  }
  return fixed;
}

/**
 * The machine's limit for faults that zero their frame: `Uint8Array.fill(0)` of one 4 KiB page
 * at a time, over 256 MiB of 2 MiB buffers written before each call (8× this machine's 32 MiB
 * L3, so the lines are cold as a recycled frame's are). This is the zeroing the allocator does
 * when it hands out a frame whose bytes were written (page_alloc.ts), without anything else:
 * a first-touch fault with zeroing cannot be cheaper.
 */
export async function zeroingReference(): Promise<Timing> {
  const SECTION = 2 * 2 ** 20;
  const buffers = Array.from({ length: 128 }, () => new Uint8Array(SECTION));
  const pages = (buffers.length * SECTION) / PAGE;
  const t = await time(
    'zero 4 KiB pages of written buffers',
    () => {
      for (const b of buffers) for (let off = 0; off < SECTION; off += PAGE) b.fill(0, off, off + PAGE);
    },
    {
      batch: pages,
      setup: () => {
        for (const b of buffers) b.fill(0xa5);
      },
      timeMs: 800,
      warmupMs: 200,
      iterations: 6,
    },
  );
  return t;
}
