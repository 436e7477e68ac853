/**
 * Guest RAM as the VMM owns it: regions, their backings, and the `RamDiscardManager` analogue
 * (QEMU's RamBlockAttributes, system/ram-block-attributes.c) that tells device models which parts
 * of RAM are shared (populated for them) and which are private (discarded for them).
 *
 * A region has a *shared* backing the host can map (a memfd, or a guest_memfd with
 * MMAP | INIT_SHARED on VMs without private memory) and, on private-memory VMs, a *private*
 * backing (a guest_memfd, or — the seeds 000/001 extension — an ordinary memfd paired with the
 * slot). Device models only ever reach guest memory through the shared backing's mapping, so they
 * must stop using a range the moment it goes private: that is what the discard listeners are for.
 */

import { IntervalMap } from '../core/lib/interval_map.js';
import { type GpaRange, PAGE_SIZE, rangesOverlap } from './layout.js';

/** Where a region's shared side lives. */
export type SharedBackingKind = 'memfd' | 'guest_memfd';
/** Where a region's private side lives. */
export type PrivateBackingKind = 'guest_memfd' | 'private-memfd';

/** One backing file of a region. `fd` is -1 once the VMM closed it. */
export interface Backing<K extends string> {
  readonly kind: K;
  fd: number;
  /** Bytes of the file used by the region (= region size). */
  readonly size: number;
  /** Byte offset of the region's first page in the file. */
  readonly offset: number;
  /** The host mapping (shared backings), or 0 when not mapped / unmapped. */
  hva: number;
}

/** A RAM region and its memslot. */
export interface RamRegion {
  readonly name: 'low' | 'high';
  readonly range: GpaRange;
  readonly slot: number;
  readonly slotFlags: number;
  readonly shared: Backing<SharedBackingKind>;
  readonly private: Backing<PrivateBackingKind> | null;
  readonly dirtyLog: boolean;
}

/** A device model that caches mappings of guest RAM (QEMU's RamDiscardListener). */
export interface RamDiscardListener {
  readonly name: string;
  /** [gpa, gpa + size) went private: drop every mapping of it now. */
  onDiscard(gpa: number, size: number): void;
  /** [gpa, gpa + size) became shared: it may be mapped again. */
  onPopulate(gpa: number, size: number): void;
}

/** What `register` returns. */
export interface ListenerRegistration {
  unregister(): void;
}

/**
 * The shared/private state of the VMM's RAM, kept as gfn ranges (the interval map the model uses
 * for attributes: a 1 TiB conversion costs O(log n)), and the listeners that care about it.
 * Everything starts shared (populated), as KVM's attributes do.
 */
export class RamDiscardManager {
  /** gfn ranges that are private (value 1); absent = shared. */
  private readonly privateGfns = new IntervalMap();
  private readonly listeners: { listener: RamDiscardListener; section: GpaRange | null }[] = [];
  readonly stats = { discards: 0, populates: 0, discardedBytes: 0, populatedBytes: 0 };

  /** Registers a listener for all RAM or for one section of it (QEMU's MemoryRegionSection). */
  register(listener: RamDiscardListener, section: GpaRange | null = null): ListenerRegistration {
    const entry = { listener, section };
    this.listeners.push(entry);
    return {
      unregister: () => {
        const i = this.listeners.indexOf(entry);
        if (i >= 0) this.listeners.splice(i, 1);
      },
    };
  }

  get listenerCount(): number {
    return this.listeners.length;
  }

  /** True iff every page of [gpa, gpa + size) is shared. */
  isShared(gpa: number, size: number): boolean {
    return this.privateGfns.isUniform(gpa / PAGE_SIZE, Math.ceil((gpa + size) / PAGE_SIZE), 0);
  }

  /** True iff every page of [gpa, gpa + size) is private. */
  isPrivate(gpa: number, size: number): boolean {
    return this.privateGfns.isUniform(gpa / PAGE_SIZE, Math.ceil((gpa + size) / PAGE_SIZE), 1);
  }

  /** The private ranges, in order (for reports). */
  privateRanges(): GpaRange[] {
    return this.privateGfns
      .toArray()
      .map((r) => ({ gpa: r.start * PAGE_SIZE, size: (r.end - r.start) * PAGE_SIZE }));
  }

  /**
   * ram_block_attributes_state_change: marks [gpa, gpa + size) private or shared and notifies
   * the listeners of exactly the sub-ranges whose state changed (a range already in the target
   * state notifies nobody; a mixture notifies each changed run, QEMU's per-page fallback done by
   * ranges). Returns the changed runs. `gpa` and `size` are page-aligned (the caller checked).
   */
  stateChange(gpa: number, size: number, toPrivate: boolean): GpaRange[] {
    const start = gpa / PAGE_SIZE;
    const end = start + size / PAGE_SIZE;
    const want = toPrivate ? 1 : 0;
    const changed: GpaRange[] = [];
    this.privateGfns.forEachSegment(start, end, (s, e, v) => {
      if (v !== want) changed.push({ gpa: s * PAGE_SIZE, size: (e - s) * PAGE_SIZE });
    });
    this.privateGfns.set(start, end, want);
    for (const run of changed) {
      for (const { listener, section } of [...this.listeners]) {
        let r = run;
        if (section !== null) {
          if (!rangesOverlap(run, section)) continue;
          const lo = Math.max(run.gpa, section.gpa);
          const hi = Math.min(run.gpa + run.size, section.gpa + section.size);
          r = { gpa: lo, size: hi - lo };
        }
        if (toPrivate) {
          this.stats.discards++;
          this.stats.discardedBytes += r.size;
          listener.onDiscard(r.gpa, r.size);
        } else {
          this.stats.populates++;
          this.stats.populatedBytes += r.size;
          listener.onPopulate(r.gpa, r.size);
        }
      }
    }
    return changed;
  }
}
