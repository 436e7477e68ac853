/**
 * MMU notifiers (mm/mmu_notifier.c): a secondary MMU — KVM — subscribes to a process address
 * space and is told before and after any change that can make a translation it cached stale:
 * munmap, mmap over a range, mprotect, madvise(DONTNEED/REMOVE), a hole punched in a mapped
 * file, a copy-on-write break.
 *
 * Brackets always balance: every `invalidateRangeStart` is followed by the matching
 * `invalidateRangeEnd` with the same range, and `inProgress` counts open brackets so tests can
 * assert none is left open. Delivery iterates a snapshot of the subscriptions and skips any that
 * unregistered meanwhile, so unregistering from inside a callback is safe (the kernel uses SRCU
 * for the same guarantee; see memfile_notifier.ts for the comparison).
 */

import { kvmWarn } from '../errno.js';
import { tpMmuNotifierInvalidateRangeEnd, tpMmuNotifierInvalidateRangeStart } from '../tracepoints.js';

/** Why a range is being invalidated (enum mmu_notifier_event), for traces. */
export type MmuNotifierEvent =
  | 'UNMAP' // munmap, mmap over a mapping, MADV_DONTNEED, punching a hole in a mapped file
  | 'CLEAR' // page reclaim / COW break: the page behind the address changes
  | 'PROTECTION_VMA' // mprotect
  | 'SOFT_DIRTY';

export interface MmuNotifierRange {
  /** hva, inclusive, page aligned. */
  readonly start: number;
  /** hva, exclusive, page aligned. */
  readonly end: number;
  readonly event: MmuNotifierEvent;
}

export interface MmuNotifierOps {
  invalidateRangeStart(range: MmuNotifierRange): void;
  invalidateRangeEnd(range: MmuNotifierRange): void;
  /** The address space is being torn down (exit_mmap). */
  release?(): void;
}

export interface MmuNotifierSubscription {
  unregister(): void;
}

interface Sub {
  readonly ops: MmuNotifierOps;
  live: boolean;
}

export class MmuNotifierList {
  private subs: Sub[] = [];
  /** Brackets currently open (start delivered, end not yet). */
  inProgress = 0;
  /** Counters for reports. */
  readonly stats = { starts: 0, ends: 0 };

  register(ops: MmuNotifierOps): MmuNotifierSubscription {
    const sub: Sub = { ops, live: true };
    this.subs = [...this.subs, sub];
    return {
      unregister: () => {
        if (!sub.live) return;
        sub.live = false;
        this.subs = this.subs.filter((s) => s !== sub);
      },
    };
  }

  get count(): number {
    return this.subs.length;
  }

  /** Runs `work` inside a start/end bracket over [start, end). */
  invalidate(start: number, end: number, event: MmuNotifierEvent, work: () => void): void {
    if (start >= end) {
      work();
      return;
    }
    const range: MmuNotifierRange = { start, end, event };
    const subs = this.subs;
    this.inProgress++;
    this.stats.starts++;
    if (tpMmuNotifierInvalidateRangeStart.enabled)
      tpMmuNotifierInvalidateRangeStart.emit({ start, end, event });
    for (const s of subs) if (s.live) s.ops.invalidateRangeStart(range);
    try {
      work();
    } finally {
      for (const s of subs) if (s.live) s.ops.invalidateRangeEnd(range);
      this.stats.ends++;
      if (tpMmuNotifierInvalidateRangeEnd.enabled)
        tpMmuNotifierInvalidateRangeEnd.emit({ start, end, event });
      this.inProgress--;
      if (this.inProgress < 0) kvmWarn('mmu notifier brackets unbalanced');
    }
  }

  /** exit_mmap: tells every subscriber the address space is going away. */
  release(): void {
    const subs = this.subs;
    this.subs = [];
    for (const s of subs) {
      if (!s.live) continue;
      s.live = false;
      s.ops.release?.();
    }
  }
}
