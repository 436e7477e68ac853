/**
 * What a scenario run reports: plain JSON (numbers below 2^53, strings, arrays, objects), so the
 * CLI can print it and a trace can store it.
 *
 * Counters the VMM keeps itself (exits, conversions, discard notifications, device activity,
 * backing files' st_blocks) are reported on both backends. Counters only the model can show
 * (page faults, zaps, MMU-notifier calls, guest_memfd and memfile_notifier activity, host frames)
 * come from the model's read-only introspection and are `null` on the real kernel, which has no
 * interface for them.
 */

import type { ModelHost } from '../core/host.js';
import { GmemInode } from '../core/kvm/guest_memfd.js';
import { VmHandle } from '../core/kvm/kvm_main.js';
import { pairingOf } from '../core/kvm/memfd_private.js';
import { ShmemInode } from '../core/mm/shmem.js';
import { KvmVcpu } from '../core/vcpu/vcpu.js';
import type { BackendName } from './backends.js';
import { type ConversionFailure, type ConversionStats, emptyConversionStats } from './conversion.js';
import type { HoleReport } from './holes.js';
import type { GuestReport, Machine, MemoryMap, RunOutcome } from './machine.js';
import { unwrapRecorded } from './trace.js';

/** A JSON value scenarios may note in their report. */
export type NoteValue =
  | number
  | string
  | boolean
  | null
  | readonly NoteValue[]
  | { readonly [k: string]: NoteValue };

export interface CheckResult {
  readonly name: string;
  readonly pass: boolean;
  readonly detail: string;
}

export type Status = 'pass' | 'fail' | 'skipped';

/** Activity of one backing file. */
export interface BackingReport {
  readonly region: string;
  readonly side: 'shared' | 'private';
  readonly kind: string;
  readonly sizeBytes: number;
  /**
   * st_blocks × 512 at the end of the run, what the VMM can observe (0 once closed). guest_memfd
   * never updates st_blocks (upstream), so it is 0 for them whatever is allocated.
   */
  readonly allocatedBytes: number;
  /** Model only: bytes in the file's page cache at the end of the run (guest_memfd included). */
  readonly residentBytes: number | null;
  /** Model only: pages allocated, freed and hole punches over the run. */
  readonly model: { readonly allocated: number; readonly freed: number; readonly punches: number } | null;
}

/** The model's view of the run (null on the real kernel). */
export interface ModelCounters {
  readonly kvmFaults: number;
  readonly faultRetries: number;
  readonly zaps: number;
  readonly zappedSptes: number;
  readonly kvmInvalidations: number;
  readonly memslotUpdates: number;
  readonly mmuNotifierStarts: number;
  readonly mmuNotifierEnds: number;
  readonly attributeCalls: number;
  readonly attributeChanges: number;
  readonly vcpuInstructions: number;
  readonly vcpuFaults: number;
  /** memfd-paired slots (seeds 000/001): memfile_notifier events KVM received. */
  readonly memfilePairing: {
    readonly invalidates: number;
    readonly fallocates: number;
    readonly lockedFaults: number;
  } | null;
  /** Host frames in use at the end of the run, in bytes. */
  readonly hostFramesBytes: number;
}

export interface RunReport {
  readonly variant: string;
  readonly description: string;
  readonly status: Status;
  readonly skipReason?: string;
  readonly timeMs: number;
  readonly memoryMap: MemoryMap | null;
  readonly outcome: RunOutcome | null;
  readonly exits: Readonly<Record<string, number>>;
  readonly totalExits: number;
  readonly faults: { readonly memoryFaultExits: number; readonly hypercallExits: number };
  readonly conversions: ConversionStats & { readonly failures: readonly ConversionFailure[] };
  readonly discard: {
    readonly listeners: number;
    readonly discards: number;
    readonly populates: number;
    readonly discardedBytes: number;
    readonly populatedBytes: number;
  };
  readonly holes:
    | (HoleReport & { readonly ecamExits: { readonly present: number; readonly absent: number } })
    | null;
  readonly devices: {
    readonly serial: string;
    readonly dma: DmaStats;
    readonly mmio: { readonly reads: number; readonly writes: number; readonly unassigned: number };
  } | null;
  readonly memory: { readonly backings: readonly BackingReport[]; readonly holeBytes: number } | null;
  readonly model: ModelCounters | null;
  readonly guestReports: readonly GuestReport[];
  readonly notes: Readonly<Record<string, NoteValue>>;
  readonly checks: readonly CheckResult[];
}

export interface DmaStats {
  readonly transfers: number;
  readonly refused: number;
  readonly bytesWritten: number;
  readonly mappingsCreated: number;
  readonly mappingsDropped: number;
  readonly discardCalls: number;
  readonly populateCalls: number;
  readonly lastError: string;
}

export interface ScenarioReport {
  readonly scenario: string;
  readonly description: string;
  readonly backend: BackendName;
  readonly status: Status;
  /** For a skipped scenario: why (every run was skipped). */
  readonly skipReason?: string;
  readonly startedAt: string;
  readonly timeMs: number;
  readonly runs: readonly RunReport[];
  /** Checks across runs (e.g. the three hole strategies agree). */
  readonly checks: readonly CheckResult[];
}

/** An empty run report (skipped runs, runs that failed before the machine existed). */
export function emptyRun(
  variant: string,
  description: string,
  status: Status,
  extra: { skipReason?: string; checks?: readonly CheckResult[]; timeMs?: number },
): RunReport {
  return {
    variant,
    description,
    status,
    ...(extra.skipReason === undefined ? {} : { skipReason: extra.skipReason }),
    timeMs: extra.timeMs ?? 0,
    memoryMap: null,
    outcome: null,
    exits: {},
    totalExits: 0,
    faults: { memoryFaultExits: 0, hypercallExits: 0 },
    conversions: { ...emptyConversionStats(), failures: [] },
    discard: { listeners: 0, discards: 0, populates: 0, discardedBytes: 0, populatedBytes: 0 },
    holes: null,
    devices: null,
    memory: null,
    model: null,
    guestReports: [],
    notes: {},
    checks: extra.checks ?? [],
  };
}

/**
 * Bytes in the page cache of the file at `fd` (a memfd or a guest_memfd), from the model's
 * introspection; null on the real kernel or for a closed fd. Unlike st_blocks this counts
 * guest_memfd pages too.
 */
export function residentBytes(model: ModelHost | null, fd: number): number | null {
  if (model === null || fd < 0) return null;
  const inode = model.kernel.fds.lookup(fd)?.inode;
  if (inode instanceof GmemInode || inode instanceof ShmemInode) return inode.mapping.nrpages * 4096;
  return null;
}

function inodeStats(model: ModelHost, fd: number): BackingReport['model'] {
  const inode = fd >= 0 ? model.kernel.fds.lookup(fd)?.inode : undefined;
  if (inode instanceof GmemInode || inode instanceof ShmemInode) {
    return { allocated: inode.stats.allocated, freed: inode.stats.freed, punches: inode.stats.punches };
  }
  return null;
}

/** The model's counters for `machine` (null when the machine does not run on the model). */
export function modelCounters(machine: Machine, model: ModelHost | null): ModelCounters | null {
  const vm = unwrapRecorded(machine.vm);
  const vcpu = unwrapRecorded(machine.vcpu);
  if (model === null || !(vm instanceof VmHandle)) return null;
  const k = vm.kvm;
  const v = vcpu instanceof KvmVcpu ? vcpu.stats : null;
  let pairing: { invalidates: number; fallocates: number; lockedFaults: number } | null = null;
  for (const slot of k.listMemslots()) {
    const p = pairingOf(slot);
    if (p === null) continue;
    pairing ??= { invalidates: 0, fallocates: 0, lockedFaults: 0 };
    pairing.invalidates += p.stats.invalidates;
    pairing.fallocates += p.stats.fallocates;
    pairing.lockedFaults += p.stats.lockedFaults;
  }
  const n = model.kernel.mm.notifiers.stats;
  return {
    kvmFaults: k.stats.faults,
    faultRetries: k.stats.faultRetries,
    zaps: k.stats.zaps,
    zappedSptes: k.stats.zappedSptes,
    kvmInvalidations: k.stats.invalidations,
    memslotUpdates: k.stats.memslotUpdates,
    mmuNotifierStarts: n.starts,
    mmuNotifierEnds: n.ends,
    attributeCalls: k.attributes.stats.calls,
    attributeChanges: k.attributes.stats.changes,
    vcpuInstructions: v?.instructions ?? 0,
    vcpuFaults: v?.faults ?? 0,
    memfilePairing: pairing,
    hostFramesBytes: model.kernel.alloc.stats.allocated * 4096,
  };
}

/** Everything a finished run of `machine` can report (before the machine is disposed). */
export function collectRun(
  machine: Machine,
  model: ModelHost | null,
  base: {
    variant: string;
    description: string;
    status: Status;
    timeMs: number;
    outcome: RunOutcome | null;
    notes: Record<string, NoteValue>;
    checks: readonly CheckResult[];
  },
): RunReport {
  const backings: BackingReport[] = [];
  for (const r of machine.regions) {
    for (const side of ['shared', 'private'] as const) {
      const b = side === 'shared' ? r.shared : r.private;
      if (b === null) continue;
      let allocated = 0;
      try {
        allocated = machine.allocatedBytes(b);
      } catch {
        allocated = 0; // closed behind the machine's back
      }
      backings.push({
        region: r.name,
        side,
        kind: b.kind,
        sizeBytes: b.size,
        allocatedBytes: allocated,
        residentBytes: residentBytes(model, b.fd),
        model: model === null ? null : inodeStats(model, b.fd),
      });
    }
  }
  const d = machine.discard.stats;
  const dma = machine.dma;
  const totalExits = Object.values(machine.exits).reduce((a, b) => a + b, 0);
  return {
    variant: base.variant,
    description: base.description,
    status: base.status,
    timeMs: base.timeMs,
    memoryMap: machine.memoryMap(),
    outcome: base.outcome,
    exits: { ...machine.exits },
    totalExits,
    faults: {
      memoryFaultExits: machine.runStats.memoryFaultExits,
      hypercallExits: machine.runStats.hypercallExits,
    },
    conversions: {
      ...machine.conversions.stats,
      bySource: { ...machine.conversions.stats.bySource },
      failures: [...machine.conversions.failures],
    },
    discard: { listeners: machine.discard.listenerCount, ...d },
    holes: {
      ...machine.holeReport,
      ecamExits: {
        present: machine.pci.stats.presentReads + machine.pci.stats.presentWrites,
        absent: machine.pci.stats.absentReads + machine.pci.stats.absentWrites,
      },
    },
    devices: {
      serial: machine.serial.text,
      dma: { ...dma.stats, lastError: dma.lastError },
      mmio: {
        reads: machine.mmio.stats.reads,
        writes: machine.mmio.stats.writes,
        unassigned: machine.mmio.stats.unassignedReads + machine.mmio.stats.unassignedWrites,
      },
    },
    memory: { backings, holeBytes: machine.holeReport.hostMemoryBytes },
    model: modelCounters(machine, model),
    guestReports: [...machine.guestReports],
    notes: { ...base.notes },
    checks: base.checks,
  };
}
