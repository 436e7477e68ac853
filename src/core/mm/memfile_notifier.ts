/**
 * memfile_notifier (seed 001, "[PATCH v4 03/12] mm: Introduce memfile_notifier"): a memory
 * backing file keeps a list of consumers (KVM) and tells them when pages of the file are
 * allocated (`fallocate`) or about to be freed (`invalidate`); consumers get pages through the
 * file's pfn ops, `getLockPfn(pgoff) → { pfn, order }` and `putUnlockPfn(pfn)`, and the page
 * stays locked in between so it cannot be freed while KVM installs a mapping of it.
 *
 * Differences from the seed, and why:
 * - SRCU. The seed walks the list under `srcu_read_lock` and `memfile_unregister_notifier`
 *   waits with `synchronize_srcu`, so after unregistering no callback runs. The model cannot
 *   block; instead delivery iterates a snapshot and skips entries that unregistered meanwhile —
 *   the same guarantee (no callback after unregister returns), and unregistering from inside a
 *   callback is safe here, where the kernel would deadlock on its own read section.
 * - `getLockPfn` returns its failure as a value (`{ errno }`), not as a negative long: an absent
 *   page is an expected outcome for the seed-003 fault path (private access to an unallocated
 *   page ⇒ exit to userspace), not an exceptional one.
 * - A hole punch that meets a locked page does not sleep (nothing can block in the model): the
 *   rest of that page's truncation is parked on the page lock and runs in `putUnlockPfn` — see
 *   `PageAllocator.waitUnlocked` and shmem.ts.
 */

import { fail } from '../errno.js';
import { tpMemfileNotifierFallocate, tpMemfileNotifierInvalidate } from '../tracepoints.js';
import type { PgOff } from '../units.js';
import type { Inode } from './file.js';

/** struct memfile_notifier_ops: what a consumer is told. Page ranges are [start, end). */
export interface MemfileNotifier {
  invalidate?(start: PgOff, end: PgOff): void;
  fallocate?(start: PgOff, end: PgOff): void;
}

export type MemfilePfnResult =
  | { readonly pfn: number; readonly order: 0 | 9 | 18 }
  | { readonly errno: 'ENOENT' | 'EHWPOISON' | 'ENOMEM' };

/** struct memfile_pfn_ops: how a consumer gets pages. */
export interface MemfilePfnOps {
  /** The page at pgoff, locked and with a reference; never allocates (SGP_NOALLOC). */
  getLockPfn(pgoff: PgOff): MemfilePfnResult;
  /** Unlocks the page and drops the reference getLockPfn took. */
  putUnlockPfn(pfn: number): void;
}

/** A file that can back memory for a consumer (shmem; guest_memfd later). */
export interface MemfileBacking {
  readonly memfileNotifiers: MemfileNotifierList;
  readonly memfilePfnOps: MemfilePfnOps;
  /** False for files of a kind the seed does not support (hugetlbfs). */
  readonly memfileSupported: boolean;
}

export function isMemfileBacking(inode: Inode): inode is Inode & MemfileBacking {
  return 'memfileNotifiers' in inode && (inode as Partial<MemfileBacking>).memfileSupported === true;
}

interface Entry {
  readonly notifier: MemfileNotifier;
  live: boolean;
}

/** struct memfile_notifier_list. */
export class MemfileNotifierList {
  private entries: Entry[] = [];
  readonly stats = { invalidates: 0, fallocates: 0 };
  /** Test seam: runs between deliveries to two consumers (a window another thread could use). */
  betweenDeliveries: (() => void) | null = null;

  add(notifier: MemfileNotifier): void {
    if (this.entries.some((e) => e.notifier === notifier)) {
      fail('EINVAL', 'notifier is already registered on this file', 'memfile_register_notifier');
    }
    this.entries = [...this.entries, { notifier, live: true }];
  }

  remove(notifier: MemfileNotifier): boolean {
    const e = this.entries.find((x) => x.notifier === notifier);
    if (!e) return false;
    e.live = false;
    this.entries = this.entries.filter((x) => x !== e);
    return true;
  }

  get count(): number {
    return this.entries.length;
  }

  /** memfile_notifier_invalidate(): pages [start, end) are about to be freed. */
  invalidate(start: PgOff, end: PgOff): void {
    this.stats.invalidates++;
    if (tpMemfileNotifierInvalidate.enabled)
      tpMemfileNotifierInvalidate.emit({ start, end, consumers: this.entries.length });
    this.deliver((n) => n.invalidate?.(start, end));
  }

  /** memfile_notifier_fallocate(): pages [start, end) were allocated. */
  fallocate(start: PgOff, end: PgOff): void {
    this.stats.fallocates++;
    if (tpMemfileNotifierFallocate.enabled)
      tpMemfileNotifierFallocate.emit({ start, end, consumers: this.entries.length });
    this.deliver((n) => n.fallocate?.(start, end));
  }

  private deliver(call: (n: MemfileNotifier) => void): void {
    const snapshot = this.entries;
    let first = true;
    for (const e of snapshot) {
      if (!first && this.betweenDeliveries) this.betweenDeliveries();
      first = false;
      if (e.live) call(e.notifier);
    }
  }
}

/**
 * memfile_register_notifier(): adds `notifier` to the file's list and returns the file's pfn
 * ops. EINVAL for a missing inode or notifier (the seed's argument check), EOPNOTSUPP if the
 * file cannot back memory (memfile_get_notifier_info fails).
 */
export function memfileRegisterNotifier(
  inode: Inode | null,
  notifier: MemfileNotifier | null,
): MemfilePfnOps {
  const call = 'memfile_register_notifier';
  if (!inode || !notifier) fail('EINVAL', `${!inode ? 'inode' : 'notifier'} is NULL`, call);
  if (!isMemfileBacking(inode)) {
    fail('EOPNOTSUPP', `inode ${inode.ino} is not a memory backing file (shmem or guest_memfd)`, call);
  }
  inode.memfileNotifiers.add(notifier);
  return inode.memfilePfnOps;
}

/**
 * memfile_unregister_notifier(): removes `notifier`; no callback reaches it after this returns,
 * even one whose delivery is under way. Missing arguments are ignored, as in the seed.
 */
export function memfileUnregisterNotifier(inode: Inode | null, notifier: MemfileNotifier | null): void {
  if (!inode || !notifier || !isMemfileBacking(inode)) return;
  inode.memfileNotifiers.remove(notifier);
}
