/**
 * Serving the PCI holes — the ECAM pages of absent functions — with all-ones, by the best means
 * the backend has (architecture §7, seed 004):
 *
 * | strategy | how | a guest read costs | host memory |
 * |---|---|---|---|
 * | `allones` | `KVM_MEM_ALLONES` slots (extension, seed 004): one read-only 0xff page shared by every hole of every VM | nothing (in-kernel) | none per VM |
 * | `readonly-ff` | `KVM_MEM_READONLY` slots over one chunk of 0xff memory mapped again and again (the RFC reviewers' alternative, realkvm-notes §6.4; src/host/allones.ts on the real kernel) | nothing (RAM speed) | one chunk per slot set, plus one VMA per chunk mapping |
 * | `mmio` | no slot: every read is a `KVM_EXIT_MMIO` that the VMM answers with 0xffffffff | one userspace exit | none |
 *
 * A strategy the backend cannot provide falls back to the next one (allones → readonly-ff →
 * mmio), and the report says which was requested, which was used, and why it fell back. Writes
 * to a hole exit as MMIO under every strategy (the slots are read-only) and are dropped.
 */

import type { Host, Vm } from '../core/api.js';
import { KvmError } from '../core/errno.js';
import {
  KVM_CAP_GUESTMEM_ALLONES,
  KVM_MEM_ALLONES,
  KVM_MEM_READONLY,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_PRIVATE,
  MAP_SHARED,
  MFD_CLOEXEC,
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
} from '../core/uapi.js';
import { type GpaRange, KiB } from './layout.js';

export const HOLE_STRATEGIES = ['allones', 'readonly-ff', 'mmio'] as const;
export type HoleStrategy = (typeof HOLE_STRATEGIES)[number];

/** One memslot serving a hole. */
export interface HoleSlot {
  readonly slot: number;
  readonly gpa: number;
  readonly size: number;
}

/** What the holes cost and how they were served. */
export interface HoleReport {
  readonly requested: HoleStrategy;
  readonly used: HoleStrategy;
  /** Why each better strategy was not used ("allones: KVM_CAP_GUESTMEM_ALLONES is 0"). */
  readonly fallbacks: readonly string[];
  readonly slots: readonly HoleSlot[];
  /** Bytes of hole the slots cover. */
  readonly holeBytes: number;
  /** Host RAM this VM's hole slots use (the 0xff chunks; 0 for allones and mmio). */
  readonly hostMemoryBytes: number;
  /** Host mappings (VMAs) the 0xff memory takes. */
  readonly mappings: number;
}

/** A set of read-only 0xff slots made by a provider. */
export interface ReadonlyFfSlots {
  readonly hostMemoryBytes: number;
  readonly mappings: number;
  /** Deletes the memslots (if the VM is open), then unmaps the memory. */
  dispose(): void;
}

/**
 * Makes `KVM_MEM_READONLY` slots whose every byte reads 0xff. The real backend plugs in
 * src/host/allones.ts; `genericReadonlyFf` works on any `Host`.
 */
export type ReadonlyFfProvider = (host: Host, vm: Vm, slots: readonly HoleSlot[]) => ReadonlyFfSlots;

/** Bytes of 0xff per mapping (as src/host/allones.ts's default). */
export const GENERIC_FF_CHUNK = 64 * KiB;

function deleteSlot(vm: Vm, s: HoleSlot): void {
  try {
    vm.setUserMemoryRegion2({
      slot: s.slot,
      flags: 0,
      guestPhysAddr: s.gpa,
      memorySize: 0,
      userspaceAddr: 0,
    });
  } catch (e) {
    // The VM fd is already closed: its slots went with it.
    if (!(e instanceof KvmError && e.code === 'EBADF')) throw e;
  }
}

/**
 * Read-only 0xff slots through the `Host` interface alone: one memfd chunk of 0xff, mapped
 * read-only back to back over a PROT_NONE reservation for each hole (MAP_FIXED), one slot each.
 * All slots share the chunk, so the RAM cost is one chunk per machine.
 */
export const genericReadonlyFf: ReadonlyFfProvider = (host, vm, slots) => {
  const chunk = GENERIC_FF_CHUNK;
  const fd = host.memfdCreate('guestmem-allones', MFD_CLOEXEC);
  const maps: { hva: number; length: number }[] = [];
  const made: HoleSlot[] = [];
  let mappings = 0;
  const undo = (): void => {
    for (const s of made.splice(0).reverse()) deleteSlot(vm, s);
    for (const m of maps.splice(0)) host.munmap(m.hva, m.length);
  };
  try {
    host.ftruncate(fd, chunk);
    const tmp = host.mmap(0, chunk, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    host.writeMemory(tmp, new Uint8Array(chunk).fill(0xff));
    host.munmap(tmp, chunk);
    for (const s of slots) {
      const count = Math.ceil(s.size / chunk);
      const length = count * chunk;
      const hva = host.mmap(0, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      maps.push({ hva, length });
      for (let i = 0; i < count; i++) {
        host.mmap(hva + i * chunk, chunk, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0);
      }
      mappings += count;
      vm.setUserMemoryRegion({
        slot: s.slot,
        flags: KVM_MEM_READONLY,
        guestPhysAddr: s.gpa,
        memorySize: s.size,
        userspaceAddr: hva,
      });
      made.push(s);
    }
  } catch (e) {
    undo();
    throw e;
  } finally {
    host.close(fd); // the mappings keep the file
  }
  return { hostMemoryBytes: chunk, mappings, dispose: undo };
};

/** Live hole slots. */
export class Holes {
  private disposed = false;

  constructor(
    readonly report: HoleReport,
    private readonly release: () => void,
  ) {}

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.release();
  }
}

function errText(e: unknown): string {
  if (e instanceof KvmError) return `${e.code}: ${e.message}`;
  return e instanceof Error ? e.message : String(e);
}

/** Tries KVM_MEM_ALLONES slots; returns null on success or why not. */
function tryAllones(vm: Vm, slots: readonly HoleSlot[]): string | null {
  let cap = 0;
  try {
    cap = vm.checkExtension(KVM_CAP_GUESTMEM_ALLONES);
  } catch (e) {
    return `KVM_CHECK_EXTENSION(KVM_CAP_GUESTMEM_ALLONES) failed: ${errText(e)}`;
  }
  if (cap <= 0) return `KVM_CAP_GUESTMEM_ALLONES is ${cap} on this VM (extension not available)`;
  try {
    vm.enableCap({ cap: KVM_CAP_GUESTMEM_ALLONES });
  } catch (e) {
    // An extension that is on without enabling answers EINVAL here; the slots decide.
    if (!(e instanceof KvmError && e.code === 'EINVAL')) return `enabling ALLONES failed: ${errText(e)}`;
  }
  const made: HoleSlot[] = [];
  try {
    for (const s of slots) {
      // Seed 004: userspace_addr must be 0 (AO-1); only the region2 ioctl takes the flag (MR-2).
      vm.setUserMemoryRegion2({
        slot: s.slot,
        flags: KVM_MEM_ALLONES,
        guestPhysAddr: s.gpa,
        memorySize: s.size,
        userspaceAddr: 0,
      });
      made.push(s);
    }
  } catch (e) {
    for (const s of made.reverse()) deleteSlot(vm, s);
    return `a KVM_MEM_ALLONES slot was refused: ${errText(e)}`;
  }
  return null;
}

/**
 * Serves `holes` (guest-physical ranges, page-aligned) with `requested` or the best fallback,
 * using memslots `firstSlot`, `firstSlot + 1`, ….
 */
export function setupHoles(
  host: Host,
  vm: Vm,
  holes: readonly GpaRange[],
  firstSlot: number,
  requested: HoleStrategy,
  readonlyFf: ReadonlyFfProvider,
): Holes {
  const slots: HoleSlot[] = holes.map((h, i) => ({ slot: firstSlot + i, gpa: h.gpa, size: h.size }));
  const holeBytes = holes.reduce((n, h) => n + h.size, 0);
  const fallbacks: string[] = [];
  let strategy: HoleStrategy = requested;
  const base = { requested, fallbacks, holeBytes };

  if (strategy === 'allones') {
    const why = tryAllones(vm, slots);
    if (why === null) {
      return new Holes({ ...base, used: 'allones', slots, hostMemoryBytes: 0, mappings: 0 }, () => {
        for (const s of [...slots].reverse()) deleteSlot(vm, s);
      });
    }
    fallbacks.push(`allones: ${why}`);
    strategy = 'readonly-ff';
  }
  if (strategy === 'readonly-ff') {
    try {
      const ff = readonlyFf(host, vm, slots);
      return new Holes(
        { ...base, used: 'readonly-ff', slots, hostMemoryBytes: ff.hostMemoryBytes, mappings: ff.mappings },
        () => ff.dispose(),
      );
    } catch (e) {
      fallbacks.push(`readonly-ff: ${errText(e)}`);
    }
  }
  return new Holes({ ...base, used: 'mmio', slots: [], hostMemoryBytes: 0, mappings: 0 }, () => {});
}
