/**
 * Model tracepoints: the model's analogue of the kernel's static tracepoints
 * (include/linux/tracepoint.h, include/trace/events/kvm.h, arch/x86/kvm/trace.h). A site in the
 * model does
 *
 *   if (tpKvmPageFault.enabled) tpKvmPageFault.emit({ vcpuId, gpa, … });
 *
 * so that with no probe attached the cost is one property load and a branch — the arguments are
 * not even built — like a static key in the kernel. A consumer (src/vmm/trace_events.ts, the
 * Chrome trace-event writer) attaches a probe with `attachProbe`, which turns `enabled` on, and
 * detaches it when done.
 *
 * Names follow the kernel's tracepoints where one exists (kvm_page_fault, kvm_hypercall,
 * kvm_unmap_gfn_range, kvm_set_user_memory_region); the brackets the kernel has no tracepoint for
 * (kvm_mmu_invalidate_begin/end, the mmu notifier's and memfile notifier's calls) are named after
 * the function they mark. `*_begin`/`*_end` pairs always balance, like the brackets they mark.
 *
 * Simplifications: probes run synchronously at the site, one at a time, in attach order; there
 * is no ring buffer and no timestamp here (the consumer takes its own: the model must not read a
 * clock, it runs in a browser and in tests alike).
 */

import type { UserspaceMemoryRegion } from './api.js';
import type { KvmPageFault } from './mmu/mmu.js';

/** A tracepoint's payload: flat, JSON-safe values (numbers, strings, booleans). */
export type TraceArgs = { readonly [k: string]: number | string | boolean };

/** A probe attached to one or more tracepoints. */
export type TraceProbe = (name: string, args: TraceArgs) => void;

/** One tracepoint. Check `enabled` before building the arguments of `emit`. */
export class Tracepoint {
  /** True while at least one probe is attached. */
  enabled = false;
  private probes: TraceProbe[] = [];

  constructor(readonly name: string) {}

  /** Calls every attached probe with `args`. */
  emit(args: TraceArgs): void {
    for (const p of this.probes) p(this.name, args);
  }

  /** @internal (attachProbe) */
  add(p: TraceProbe): void {
    this.probes = [...this.probes, p];
    this.enabled = true;
  }

  /** @internal (attachProbe) */
  remove(p: TraceProbe): void {
    this.probes = this.probes.filter((x) => x !== p);
    this.enabled = this.probes.length > 0;
  }
}

const registry = new Map<string, Tracepoint>();

/** The tracepoint called `name` (created on first use; one object per name). */
export function tracepoint(name: string): Tracepoint {
  let tp = registry.get(name);
  if (tp === undefined) {
    tp = new Tracepoint(name);
    registry.set(name, tp);
  }
  return tp;
}

/** Every tracepoint defined so far, by name. */
export function listTracepoints(): string[] {
  return [...registry.keys()].sort();
}

/**
 * Attaches `probe` to the tracepoints called `names` (all defined ones if omitted); returns the
 * function that detaches it again. Attaching and detaching are not for hot paths.
 */
export function attachProbe(probe: TraceProbe, names?: readonly string[]): () => void {
  const tps = (names ?? listTracepoints()).map(tracepoint);
  for (const tp of tps) tp.add(probe);
  let attached = true;
  return () => {
    if (!attached) return;
    attached = false;
    for (const tp of tps) tp.remove(probe);
  };
}

// ---- the model's tracepoints ----------------------------------------------------------------
// Defined here, not at their sites, so that a consumer can attach to all of them before the
// modules that emit them have been loaded.

/**
 * A guest page fault handled by kvm_tdp_page_fault (arch/x86/kvm/trace.h `kvm_page_fault`, which
 * the kernel emits on entry; the model emits it on return so that it carries the outcome):
 * `{ vcpuId, gpa, gfn, write, private, level, row, ret }` — `row` is the row of the fault table
 * (kvm-semantics §3.1) that decided it, `ret` the RET_PF_* name or the negative errno.
 */
export const tpKvmPageFault = tracepoint('kvm_page_fault');
/** A KVM_HC_* hypercall executed by the guest (arch/x86/kvm/trace.h `kvm_hypercall`): `{ vcpuId, nr, a0, a1, a2 }`. */
export const tpKvmHypercall = tracepoint('kvm_hypercall');
/** kvm_mmu_invalidate_begin (INV-1): `{ inProgress }` after the increment. */
export const tpKvmMmuInvalidateBegin = tracepoint('kvm_mmu_invalidate_begin');
/** kvm_mmu_invalidate_end (INV-3): `{ seq, inProgress }` after the update. */
export const tpKvmMmuInvalidateEnd = tracepoint('kvm_mmu_invalidate_end');
/** kvm_unmap_gfn_range: `{ asId, start, end, zapped }` (gfns; SPTEs zapped). */
export const tpKvmUnmapGfnRange = tracepoint('kvm_unmap_gfn_range');
/** KVM_SET_USER_MEMORY_REGION(2) succeeded (include/trace/events/kvm.h, older kernels): `{ slot, flags, gpa, size, hva }`. */
export const tpKvmSetUserMemoryRegion = tracepoint('kvm_set_user_memory_region');
/** mmu_notifier_invalidate_range_start: `{ start, end, event }` (hvas). */
export const tpMmuNotifierInvalidateRangeStart = tracepoint('mmu_notifier_invalidate_range_start');
/** mmu_notifier_invalidate_range_end: `{ start, end, event }`. */
export const tpMmuNotifierInvalidateRangeEnd = tracepoint('mmu_notifier_invalidate_range_end');
/** memfile_notifier_invalidate (seeds 000/001): `{ start, end, consumers }` (page offsets; notifiers registered). */
export const tpMemfileNotifierInvalidate = tracepoint('memfile_notifier_invalidate');
/** memfile_notifier_fallocate (seeds 000/001): `{ start, end, consumers }`. */
export const tpMemfileNotifierFallocate = tracepoint('memfile_notifier_fallocate');

// ---- argument builders (called only when the tracepoint is enabled) -------------------------

/** RET_PF_* by value (src/core/mmu/mmu.ts; a type-only import keeps this file free of cycles). */
const RET_PF_NAMES = ['CONTINUE', 'RETRY', 'EMULATE', 'WRITE_PROTECTED', 'INVALID', 'FIXED', 'SPURIOUS'];

/** `kvm_page_fault`'s arguments from a handled fault and kvm_tdp_page_fault's return value. */
export function pageFaultArgs(vcpuId: number, gpa: number, fault: KvmPageFault, ret: number): TraceArgs {
  return {
    vcpuId,
    gpa,
    gfn: fault.gfn,
    write: fault.write,
    private: fault.isPrivate,
    level: fault.goalLevel,
    row: fault.row,
    ret: ret >= 0 ? `RET_PF_${RET_PF_NAMES[ret] ?? ret}` : String(ret),
    memoryFault: fault.memoryFaultErrno !== 0,
  };
}

/** `kvm_hypercall`'s arguments (u64 registers as numbers: exact below 2^53, which gpas are). */
export function hypercallArgs(vcpuId: number, nr: number, a0: bigint, a1: bigint, a2: bigint): TraceArgs {
  return { vcpuId, nr, a0: Number(a0), a1: Number(a1), a2: Number(a2) };
}

/** `kvm_set_user_memory_region`'s arguments. */
export function memoryRegionArgs(r: UserspaceMemoryRegion): TraceArgs {
  return { slot: r.slot, flags: r.flags, gpa: r.guestPhysAddr, size: r.memorySize, hva: r.userspaceAddr };
}
