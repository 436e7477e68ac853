/**
 * Private/shared conversion, in QEMU's order (accel/kvm/kvm-all.c `kvm_convert_memory`,
 * peers.md §2.1): on a `KVM_EXIT_MEMORY_FAULT` (RUN-1) or a `KVM_HC_MAP_GPA_RANGE` hypercall exit
 *
 *   1. KVM_SET_MEMORY_ATTRIBUTES — KVM zaps the old mappings and from now on faults the range
 *      from the other side;
 *   2. the RamDiscardManager's state change — device models drop (discard) or may re-create
 *      (populate) their mappings of the range;
 *   3. discard the side no longer used — punch the private backing going shared
 *      (`ram_block_discard_guest_memfd_range`), discard the shared backing going private
 *      (`ram_block_discard_range`: PUNCH_HOLE on the memfd, or MADV_REMOVE on its mapping).
 *
 * Why this order: attributes first, so no vCPU can fault the old side back in after the listeners
 * and the discard ran; listeners before the discard, so no device writes through a mapping into
 * memory that is about to be freed (which would allocate it again: the double allocation
 * Cloud Hypervisor reverted in PR #8246).
 *
 * The seeds 000/001 design (memfd-paired private slots) adds a fourth step going private: the
 * private page must exist in the memfd for KVM to map it (seed 003's presence rule), so the VMM
 * allocates it (`fallocate(KEEP_SIZE)`), as the RFC-era QEMU patches did.
 *
 * A request that is not aligned to its page size, or that reaches memory the VMM does not own as
 * one RAM region (a PCI hole, ECAM, nothing), is refused before anything changes; a hypercall gets
 * -KVM_EINVAL back (QEMU: "-EINVAL" for an unaligned or unknown range).
 */

import type { Host, Vm } from '../core/api.js';
import { KvmError } from '../core/errno.js';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  KVM_MAP_GPA_RANGE_ENCRYPTED,
  KVM_MAP_GPA_RANGE_PAGE_SZ_1G,
  KVM_MAP_GPA_RANGE_PAGE_SZ_2M,
  KVM_MAP_GPA_RANGE_PAGE_SZ_4K,
  KVM_MEMORY_ATTRIBUTE_PRIVATE,
  MADV_REMOVE,
} from '../core/uapi.js';
import { GiB, type GpaRange, MiB, PAGE_SIZE, rangeWithin } from './layout.js';
import type { RamDiscardManager, RamRegion } from './ram.js';
import { type SpanSink, VMM_TID } from './trace_events.js';

/** Who asked for the conversion. */
export type ConversionSource = 'memory-fault' | 'hypercall' | 'vmm';

/** How the shared side is discarded going private. */
export type SharedDiscard = 'punch-hole' | 'madv-remove';

export interface ConversionRequest {
  readonly gpa: number;
  readonly size: number;
  readonly toPrivate: boolean;
  readonly source: ConversionSource;
  /** Required alignment of gpa and size in bytes (the hypercall's page size); default 4096. */
  readonly alignment?: number;
  /**
   * memfd-paired private slots only: allocate the private pages going private (default true).
   * False leaves them absent, so the guest's first private access exits to userspace (lazy
   * acceptance, seed 003).
   */
  readonly populatePrivate?: boolean;
}

export type ConversionResult =
  | { readonly ok: true; readonly changed: readonly GpaRange[] }
  | { readonly ok: false; readonly errno: 'EINVAL'; readonly reason: string };

/** One step of a conversion, in the order it ran. */
export interface ConversionStep {
  readonly step: 'attributes' | 'listeners' | 'discard-shared' | 'punch-private' | 'populate-private';
  readonly gpa: number;
  readonly size: number;
  readonly toPrivate: boolean;
}

/** A refused or failed conversion, for reports. */
export interface ConversionFailure {
  readonly gpa: number;
  readonly size: number;
  readonly toPrivate: boolean;
  readonly source: ConversionSource;
  readonly reason: string;
}

export interface ConversionStats {
  toPrivate: number;
  toShared: number;
  pagesToPrivate: number;
  pagesToShared: number;
  /** Pages whose state actually changed (a conversion to the current state changes none). */
  pagesChanged: number;
  failed: number;
  bySource: Record<ConversionSource, number>;
  sharedDiscardedBytes: number;
  privatePunchedBytes: number;
  privatePopulatedBytes: number;
}

const hex = (n: number): string => `0x${n.toString(16)}`;
const MAX_LOGGED = 10_000;

/** What the handler needs from the machine. */
export interface ConversionTarget {
  readonly host: Host;
  readonly vm: Vm;
  readonly hasPrivateMem: boolean;
  readonly regions: readonly RamRegion[];
  readonly discard: RamDiscardManager;
  readonly sharedDiscard: SharedDiscard;
  /** Names what lies at `gpa` when it is not RAM (for error messages). */
  describe(gpa: number): string;
  /** Where conversions are traced as nested spans (`--trace-events`), if anywhere. */
  readonly tracer?: SpanSink | null;
}

/** The attrs argument of KVM_HC_MAP_GPA_RANGE decoded, or the reason it is invalid. */
export function decodeMapGpaRangeAttrs(
  attrs: number,
): { readonly toPrivate: boolean; readonly alignment: number } | { readonly error: string } {
  const pageSz = attrs % 16; // bits 0..3: KVM_MAP_GPA_RANGE_PAGE_SZ_*
  // Bits 0..3 and bit 4 are all there is: any value above 31 has another bit set.
  const known = 15 + KVM_MAP_GPA_RANGE_ENCRYPTED;
  if (!Number.isSafeInteger(attrs) || attrs < 0 || attrs > known) {
    return { error: `attrs ${hex(attrs)} has bits other than the page size and ENCRYPTED` };
  }
  const alignment =
    pageSz === KVM_MAP_GPA_RANGE_PAGE_SZ_4K
      ? PAGE_SIZE
      : pageSz === KVM_MAP_GPA_RANGE_PAGE_SZ_2M
        ? 2 * MiB
        : pageSz === KVM_MAP_GPA_RANGE_PAGE_SZ_1G
          ? GiB
          : 0;
  if (alignment === 0) return { error: `attrs page size ${pageSz} is not 4K (0), 2M (1) or 1G (2)` };
  return { toPrivate: (attrs & KVM_MAP_GPA_RANGE_ENCRYPTED) !== 0, alignment };
}

/** Counters of a handler that has converted nothing (also a skipped run's report). */
export function emptyConversionStats(): ConversionStats {
  return {
    toPrivate: 0,
    toShared: 0,
    pagesToPrivate: 0,
    pagesToShared: 0,
    pagesChanged: 0,
    failed: 0,
    bySource: { 'memory-fault': 0, hypercall: 0, vmm: 0 },
    sharedDiscardedBytes: 0,
    privatePunchedBytes: 0,
    privatePopulatedBytes: 0,
  };
}

/** The VMM's conversion handler; see the file comment. */
export class ConversionHandler {
  readonly stats: ConversionStats = emptyConversionStats();
  /** Every step taken, in order (the first 10 000). */
  readonly steps: ConversionStep[] = [];
  readonly failures: ConversionFailure[] = [];
  /** Test and trace seam: runs after each step. */
  onStep: ((step: ConversionStep) => void) | null = null;

  constructor(private readonly t: ConversionTarget) {}

  /** Validates, then converts in QEMU's order. Never throws for a bad request: see the result. */
  convert(req: ConversionRequest): ConversionResult {
    const tr = this.t.tracer;
    if (!tr) return this.convertRange(req);
    const to = req.toPrivate ? 'private' : 'shared';
    tr.begin(VMM_TID, `convert to ${to}`, 'conversion', { gpa: req.gpa, size: req.size, source: req.source });
    let r: ConversionResult | null = null;
    try {
      r = this.convertRange(req);
      return r;
    } finally {
      tr.end(VMM_TID, r === null ? { threw: true } : r.ok ? { ok: true } : { ok: false, reason: r.reason });
    }
  }

  /** Runs one step as a span when tracing. */
  private span<T>(name: string, f: () => T): T {
    const tr = this.t.tracer;
    if (!tr) return f();
    tr.begin(VMM_TID, name, 'conversion');
    try {
      return f();
    } finally {
      tr.end(VMM_TID);
    }
  }

  private convertRange(req: ConversionRequest): ConversionResult {
    const bad = this.validate(req);
    if (bad !== null) return this.refuse(req, bad);
    const region = this.regionOf(req) as RamRegion; // validate() found it
    const { gpa, size, toPrivate } = req;
    const off = region.shared.offset + (gpa - region.range.gpa);
    const privOff = (region.private?.offset ?? 0) + (gpa - region.range.gpa);

    // 1. KVM_SET_MEMORY_ATTRIBUTES (kvm_set_memory_attributes_private/shared).
    try {
      this.span('1. set attributes', () =>
        this.t.vm.setMemoryAttributes({
          address: gpa,
          size,
          attributes: toPrivate ? KVM_MEMORY_ATTRIBUTE_PRIVATE : 0,
        }),
      );
    } catch (e) {
      return this.refuse(req, `KVM_SET_MEMORY_ATTRIBUTES failed: ${errText(e)}`);
    }
    this.step('attributes', req);

    // 2. ram_block_attributes_state_change: listeners drop or re-allow their mappings.
    const changed = this.span('2. discard listeners', () => this.t.discard.stateChange(gpa, size, toPrivate));
    this.step('listeners', req);

    // 3. Discard the side no longer used.
    try {
      if (toPrivate) {
        this.span('3. discard shared', () => this.discardShared(region, off, gpa, size));
        this.step('discard-shared', req);
        const p = region.private;
        if (p !== null && p.kind === 'private-memfd' && req.populatePrivate !== false) {
          this.span('4. populate private', () =>
            this.t.host.fallocate(p.fd, FALLOC_FL_KEEP_SIZE, privOff, size),
          );
          this.stats.privatePopulatedBytes += size;
          this.step('populate-private', req);
        }
      } else if (region.private !== null && region.private.fd >= 0) {
        const fd = region.private.fd;
        this.span('3. punch private', () =>
          this.t.host.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, privOff, size),
        );
        this.stats.privatePunchedBytes += size;
        this.step('punch-private', req);
      }
    } catch (e) {
      // The attributes already changed (QEMU leaves them too); the guest still sees the error.
      return this.refuse(req, `discarding the unused side failed: ${errText(e)}`);
    }

    const pages = size / PAGE_SIZE;
    if (toPrivate) {
      this.stats.toPrivate++;
      this.stats.pagesToPrivate += pages;
    } else {
      this.stats.toShared++;
      this.stats.pagesToShared += pages;
    }
    this.stats.bySource[req.source]++;
    for (const c of changed) this.stats.pagesChanged += c.size / PAGE_SIZE;
    return { ok: true, changed };
  }

  private discardShared(region: RamRegion, off: number, gpa: number, size: number): void {
    const s = region.shared;
    if (s.kind !== 'memfd') return; // a gmem-only region has no separate shared side
    if (this.t.sharedDiscard === 'madv-remove' && s.hva !== 0) {
      this.t.host.madvise(s.hva + (gpa - region.range.gpa), size, MADV_REMOVE);
    } else {
      this.t.host.fallocate(s.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, size);
    }
    this.stats.sharedDiscardedBytes += size;
  }

  private regionOf(req: GpaRange): RamRegion | undefined {
    return this.t.regions.find((r) => rangeWithin(req, r.range));
  }

  /** The reason a request is refused, or null (kvm_convert_memory's checks, then ours). */
  validate(req: ConversionRequest): string | null {
    const { gpa, size } = req;
    const align = req.alignment ?? PAGE_SIZE;
    const range = `[${hex(gpa)}, ${hex(gpa + size)})`;
    if (!this.t.hasPrivateMem) return 'the VM has no private memory (not a private-memory VM type)';
    if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(size) || gpa < 0 || size <= 0) {
      return `range gpa ${gpa} size ${size} is not a non-empty range`;
    }
    if (gpa % align !== 0 || size % align !== 0) {
      return `range ${range} is not aligned to its page size ${hex(align)}`;
    }
    const region = this.regionOf(req);
    if (region === undefined) {
      const inside = this.t.regions.find((r) => gpa >= r.range.gpa && gpa < r.range.gpa + r.range.size);
      const end = inside ? inside.range.gpa + inside.range.size : gpa;
      return `range ${range} is not inside one RAM region the VMM owns (${hex(end)} is ${this.t.describe(end)})`;
    }
    if (req.toPrivate && region.private === null) {
      return `${region.name} RAM has no private backing (memory backing '${region.shared.kind}')`;
    }
    if (region.private !== null && region.private.fd < 0) {
      return `the private backing of ${region.name} RAM was closed`;
    }
    return null;
  }

  /** Records a refused request (also for requests refused before they were decoded). */
  refuse(req: ConversionRequest, reason: string): ConversionResult {
    this.stats.failed++;
    this.t.tracer?.instant(VMM_TID, 'conversion refused', 'conversion', {
      gpa: req.gpa,
      size: req.size,
      reason,
    });
    if (this.failures.length < MAX_LOGGED) {
      this.failures.push({
        gpa: req.gpa,
        size: req.size,
        toPrivate: req.toPrivate,
        source: req.source,
        reason,
      });
    }
    return { ok: false, errno: 'EINVAL', reason };
  }

  private step(step: ConversionStep['step'], req: ConversionRequest): void {
    const s: ConversionStep = { step, gpa: req.gpa, size: req.size, toPrivate: req.toPrivate };
    if (this.steps.length < MAX_LOGGED) this.steps.push(s);
    this.onStep?.(s);
  }
}

function errText(e: unknown): string {
  if (e instanceof KvmError) return `${e.code}: ${e.message}`;
  return e instanceof Error ? e.message : String(e);
}
