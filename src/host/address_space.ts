/**
 * The owner of every mapping the real-kernel backend makes in this process — the binding's
 * stand-in for the kernel's VMA tree (mm/mmap.c, mm/mprotect.c, mm/madvise.c) — and the only
 * code that touches mapped memory.
 *
 * Why it exists: koffi cannot detach an ArrayBuffer, so a view that outlives its `munmap` is a
 * SIGSEGV that kills Node, and touching a guest_memfd page of a file without INIT_SHARED (or past
 * a file's EOF) is a SIGBUS that kills Node too (realkvm-notes §7.4, §7.7). So host memory is
 * reached only through `read`/`write`/`access` here, which check every byte against a live
 * mapping with the needed protection and every file-backed page against the file's flags and
 * size, and throw `HostFault` instead of touching memory the CPU would fault on. Views are
 * cached per mapping and dropped *before* the mapping is unmapped.
 *
 * Three kinds of mapping are recorded:
 * - `user`: made through the `Host` API; the only kind the API can see, read or change;
 * - `hidden`: PROT_NONE anonymous reservations the binding keeps where a live memslot points at
 *   an hva range the user unmapped (or never mapped). The guest sees exactly what it would see
 *   over a hole (KVM_RUN fails with EFAULT, row 8f), but the address range cannot be reused by
 *   Node's allocator while a guest could still write through it;
 * - `internal`: the binding's own mappings (kvm_run pages, the dirty-bitmap scratch buffer).
 *
 * The API refuses to let `munmap`, `mprotect`, `madvise` or a `MAP_FIXED` mapping reach memory it
 * did not map: pieces of Node's own memory are never touched. And every mapping is counted against
 * vm.max_map_count, keeping a headroom of VMAs for Node (exhausting it aborts V8 later, somewhere
 * unrelated: realkvm-notes §6.4).
 */

import { readFileSync } from 'node:fs';
import { HostFault, KvmError } from '../core/errno.js';
import {
  GUEST_MEMFD_FLAG_INIT_SHARED,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_FIXED_NOREPLACE,
  MAP_NORESERVE,
  MAP_PRIVATE,
  MAP_SHARED,
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
} from '../core/uapi.js';
import { PAGE_SIZE, pageAlignUp } from '../core/units.js';
import type { GuestMemfdInfo } from './files.js';
import type { Sys } from './sys.js';

/** Who a mapping belongs to: the user API, a hidden memslot reservation, or the binding itself. */
export type MappingKind = 'user' | 'hidden' | 'internal';

/** A file kept open (a private CLOEXEC dup) while a mapping of it exists, to read its size. */
export interface FilePin {
  readonly key: string;
  readonly fd: number;
  /** Set for a guest_memfd: its creation flags, or `unknown` if it was not created by the binding. */
  readonly gmem: GuestMemfdInfo | 'unknown' | undefined;
  refs: number;
}

/** One recorded mapping: [start, end) with its protection and backing. */
export interface Mapping {
  start: number;
  end: number;
  prot: number;
  readonly flags: number;
  readonly kind: MappingKind;
  readonly file: FilePin | null;
  /** File offset of `start` (for a repeated mapping: of the chunk containing `start`). */
  fileOffset: number;
  /** For a mapping of one file chunk repeated (all-ones): the chunk size; else 0. */
  readonly period: number;
  /** For a repeated mapping: bytes into the chunk at `start`. */
  phase: number;
  /** VMAs this record stands for (1, or the chunk count of a repeated mapping). */
  vmas: number;
  /** What it is, for messages ("kvm_run of vcpu 0"). */
  readonly note: string;
  /** Zero-copy view over [start, end), created on first access, dropped before any unmap. */
  view: Uint8Array | null;
}

/** Views over mappings larger than this are made per access instead of cached. */
const MAX_CACHED_VIEW = 2 ** 30;
/** Default number of VMAs left free for Node (V8 heap growth, thread stacks, libraries). */
export const DEFAULT_VMA_HEADROOM = 4096;

/** The VMA budget is per process, shared by every host in it. */
const budget = { max: 0, baseline: 0, used: 0, ready: false };

function countMaps(): number {
  const text = readFileSync('/proc/self/maps', 'utf8');
  let n = 0;
  for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) === 10) n++;
  return n;
}

function initBudget(): void {
  if (budget.ready) return;
  budget.max = Number(readFileSync('/proc/sys/vm/max_map_count', 'utf8').trim());
  budget.baseline = countMaps();
  budget.ready = true;
}

/**
 * VMAs this process can still create before reaching the headroom (for tests and reports). Counts
 * /proc/self/maps afresh, so `inUse` includes what Node mapped since the last count (a new thread
 * such as the KVM_RUN watchdog's maps a few dozen VMAs), and the binding's checks start from it.
 */
export function vmaBudget(): { readonly max: number; readonly inUse: number; readonly byBinding: number } {
  initBudget();
  budget.baseline = countMaps() - budget.used;
  return { max: budget.max, inUse: budget.baseline + budget.used, byBinding: budget.used };
}

const hex = (n: number): string => `0x${n.toString(16)}`;
const big = (n: number): bigint => BigInt(n);

/** Parameters of a user `mmap`, after the host resolved the fd to a pinned file. */
export interface MmapRequest {
  readonly addr: number;
  readonly length: number;
  readonly prot: number;
  readonly flags: number;
  readonly fd: number;
  readonly offset: number;
  readonly file: FilePin | null;
  /** hva ranges live memslots point at: a failed MAP_FIXED re-reserves holes only there. */
  readonly keep: readonly (readonly [number, number])[];
}

/** The owner of this host's mappings; see the file comment. */
export class AddressSpace {
  /** Sorted by `start`, non-overlapping. */
  private readonly maps: Mapping[] = [];
  private readonly pins = new Map<string, FilePin>();

  constructor(
    private readonly sys: Sys,
    private readonly vmaHeadroom: number = DEFAULT_VMA_HEADROOM,
  ) {
    initBudget();
  }

  // -------------------------------------------------------------------------------------------
  // The record list

  /** Index of the first mapping whose end is above `addr`. */
  private firstEndingAfter(addr: number): number {
    let lo = 0;
    let hi = this.maps.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const m = this.maps[mid];
      if (m !== undefined && m.end <= addr) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The mapping containing `addr`, of any kind. */
  find(addr: number): Mapping | undefined {
    const m = this.maps[this.firstEndingAfter(addr)];
    return m !== undefined && m.start <= addr ? m : undefined;
  }

  /** Mappings overlapping [start, end), in address order. */
  overlapping(start: number, end: number): Mapping[] {
    const out: Mapping[] = [];
    for (let i = this.firstEndingAfter(start); i < this.maps.length; i++) {
      const m = this.maps[i];
      if (m === undefined || m.start >= end) break;
      out.push(m);
    }
    return out;
  }

  /** Every recorded mapping (a copy), for introspection and tests. */
  mappings(): readonly Readonly<Mapping>[] {
    return this.maps.map((m) => ({ ...m, view: null }));
  }

  private insert(m: Mapping): void {
    const i = this.firstEndingAfter(m.start);
    this.maps.splice(i, 0, m);
    budget.used += m.vmas;
  }

  /** Takes a mapping out of the record and drops its view. Called *before* the memory changes. */
  private detach(m: Mapping): void {
    const i = this.maps.indexOf(m);
    if (i < 0) return;
    this.maps.splice(i, 1);
    m.view = null;
    budget.used -= m.vmas;
  }

  /** Forgets a mapping for good: `detach`, and drop its file pin. */
  private forget(m: Mapping): void {
    if (!this.maps.includes(m)) return;
    this.detach(m);
    if (m.file !== null) this.unpin(m.file);
  }

  private chunksOf(m: Pick<Mapping, 'start' | 'end' | 'period' | 'phase'>): number {
    return m.period === 0 ? 1 : Math.ceil((m.phase + m.end - m.start) / m.period);
  }

  /**
   * Splits the mapping containing `addr` at `addr`, if `addr` is strictly inside it and the
   * mapping is of one of `kinds` (binding-internal mappings are never split).
   */
  private splitAt(addr: number, kinds: readonly MappingKind[]): void {
    const m = this.find(addr);
    if (m === undefined || m.start === addr || !kinds.includes(m.kind)) return;
    const delta = addr - m.start;
    const right: Mapping = {
      ...m,
      start: addr,
      fileOffset: m.period === 0 ? m.fileOffset + delta : m.fileOffset,
      phase: m.period === 0 ? 0 : (m.phase + delta) % m.period,
      view: null,
      vmas: 0,
    };
    budget.used -= m.vmas;
    m.end = addr;
    m.view = null;
    m.vmas = this.chunksOf(m);
    right.vmas = this.chunksOf(right);
    budget.used += m.vmas;
    if (right.file !== null) right.file.refs++;
    this.insert(right);
  }

  /** Splits records of `kinds` at both ends so [start, end) is covered by whole records; returns those. */
  private carve(start: number, end: number, kinds: readonly MappingKind[]): Mapping[] {
    this.splitAt(start, kinds);
    this.splitAt(end, kinds);
    return this.overlapping(start, end).filter((m) => kinds.includes(m.kind));
  }

  /** Sub-ranges of [start, end) not covered by a mapping of one of `kinds`. */
  private gaps(start: number, end: number, kinds: readonly MappingKind[]): [number, number][] {
    const out: [number, number][] = [];
    let at = start;
    for (const m of this.overlapping(start, end)) {
      if (!kinds.includes(m.kind)) continue;
      if (m.start > at) out.push([at, m.start]);
      at = Math.max(at, m.end);
    }
    if (at < end) out.push([at, end]);
    return out;
  }

  /** True if [start, end) is entirely covered by mappings of the given kinds. */
  covered(start: number, end: number, kinds: readonly MappingKind[]): boolean {
    return this.gaps(start, end, kinds).length === 0;
  }

  // -------------------------------------------------------------------------------------------
  // File pins

  /** Pins a file for a new mapping of it (a private dup, so its size stays readable). */
  pin(fd: number, key: string, gmem: GuestMemfdInfo | 'unknown' | undefined): FilePin {
    const have = this.pins.get(key);
    if (have !== undefined) {
      have.refs++;
      return have;
    }
    const p: FilePin = { key, fd: this.sys.dupCloexec(fd), gmem, refs: 1 };
    this.pins.set(key, p);
    return p;
  }

  /** Drops one reference; the dup is closed with the last mapping of the file. */
  unpin(p: FilePin): void {
    p.refs--;
    if (p.refs > 0) return;
    this.pins.delete(p.key);
    this.sys.close(p.fd);
  }

  // -------------------------------------------------------------------------------------------
  // The VMA budget

  /** Refuses (ENOMEM) an operation that would leave fewer than the headroom of free VMAs. */
  private ensureVmas(extra: number, call: string): void {
    const free = () => budget.max - (budget.baseline + budget.used + extra);
    if (free() >= this.vmaHeadroom) return;
    // The baseline was counted at start; Node may have grown or shrunk since. Count again.
    budget.baseline = countMaps() - budget.used;
    if (free() >= this.vmaHeadroom) return;
    throw new KvmError(
      'ENOMEM',
      `${extra} more mapping(s) would leave ${free()} of vm.max_map_count=${budget.max} VMAs free, fewer than the ` +
        `${this.vmaHeadroom} the binding keeps for Node (running out aborts V8 later, somewhere unrelated)`,
      { call },
    );
  }

  // -------------------------------------------------------------------------------------------
  // The user API: mmap, munmap, mprotect, madvise

  private record(
    addr: number,
    length: number,
    prot: number,
    flags: number,
    kind: MappingKind,
    file: FilePin | null,
    offset: number,
    note: string,
  ): Mapping {
    const m: Mapping = {
      start: addr,
      end: addr + pageAlignUp(length),
      prot,
      flags,
      kind,
      file,
      fileOffset: offset,
      period: 0,
      phase: 0,
      vmas: 1,
      note,
      view: null,
    };
    this.insert(m);
    return m;
  }

  private recordHidden(start: number, end: number): Mapping {
    return this.record(
      start,
      end - start,
      PROT_NONE,
      MAP_PRIVATE | MAP_ANONYMOUS,
      'hidden',
      null,
      0,
      'reservation',
    );
  }

  /** Maps PROT_NONE anonymous memory over [start, end), which this host owns, as a hidden reservation. */
  private coverHidden(start: number, end: number): Mapping {
    this.sys.mmap(
      big(start),
      end - start,
      PROT_NONE,
      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED,
      -1,
      0,
    );
    return this.recordHidden(start, end);
  }

  /** Reserves [start, end) with PROT_NONE only if nothing at all is mapped there (else EEXIST). */
  private reserve(start: number, end: number, call: string, why: string): Mapping {
    try {
      this.sys.mmap(
        big(start),
        end - start,
        PROT_NONE,
        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE,
        -1,
        0,
      );
    } catch (e) {
      if (e instanceof KvmError && e.code === 'EEXIST') {
        throw new KvmError(
          'EEXIST',
          `[${hex(start)}, ${hex(end)}) holds memory this host did not map (Node's own); ${why}`,
          { call },
        );
      }
      throw e;
    }
    return this.recordHidden(start, end);
  }

  /**
   * mmap(2) for the user. Without MAP_FIXED the kernel picks a free range. With MAP_FIXED (or
   * MAP_FIXED_NOREPLACE) the range may only replace this host's own mappings: parts mapped by
   * nobody are first reserved with MAP_FIXED_NOREPLACE, which fails (EEXIST) if Node owns them.
   * The caller's `file` pin reference is taken over by the new mapping (or released on failure).
   */
  mmap(req: MmapRequest): number {
    const { addr, length, prot, flags, fd, offset, file } = req;
    const fixed = (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) !== 0;
    const note = file === null ? 'anonymous' : `fd ${fd}`;
    try {
      if (!fixed) {
        this.ensureVmas(1, 'mmap');
        const r = Number(this.sys.mmap(big(addr), length, prot, flags, fd, offset));
        this.record(r, length, prot, flags, 'user', file, offset, note);
        return r;
      }
      if (addr % PAGE_SIZE !== 0 || length <= 0) {
        // The kernel's first checks; answered here because nothing below may run on such a range.
        throw new KvmError('EINVAL', `mmap(addr ${hex(addr)}, length ${length}) with MAP_FIXED`, {
          call: 'mmap',
        });
      }
      const end = addr + pageAlignUp(length);
      if ((flags & MAP_FIXED_NOREPLACE) !== 0 && this.overlapping(addr, end).some((m) => m.kind === 'user')) {
        throw new KvmError(
          'EEXIST',
          `MAP_FIXED_NOREPLACE over [${hex(addr)}, ${hex(end)}), which is mapped`,
          {
            call: 'mmap',
          },
        );
      }
      const gaps = this.gaps(addr, end, ['user', 'hidden']);
      this.ensureVmas(gaps.length + 3, 'mmap');
      const made: Mapping[] = [];
      try {
        for (const [s, e] of gaps)
          made.push(this.reserve(s, e, 'mmap', 'MAP_FIXED may only replace mappings of this host'));
      } catch (e) {
        // Give back the addresses reserved so far: they were free before this call.
        for (const m of made) {
          this.forget(m);
          this.sys.munmap(big(m.start), m.end - m.start);
        }
        throw e;
      }
      const old = this.carve(addr, end, ['user', 'hidden']);
      for (const m of old) this.detach(m);
      const fixedFlags = (flags & ~MAP_FIXED_NOREPLACE) | MAP_FIXED;
      try {
        this.sys.mmap(big(addr), length, prot, fixedFlags, fd, offset);
      } catch (e) {
        this.recoverFailedFixed(addr, end, old, req.keep);
        throw e;
      }
      for (const m of old) if (m.file !== null) this.unpin(m.file);
      this.record(addr, length, prot, fixedFlags, 'user', file, offset, note);
      return addr;
    } catch (e) {
      // No record took over the caller's pin reference.
      if (file !== null) this.unpin(file);
      throw e;
    }
  }

  /**
   * After a failed MAP_FIXED: the kernel may have left the old mappings in place (argument errors
   * are found before anything is unmapped) or left a hole (a failing mmap hook, e.g. GM-6).
   * /proc/self/maps says which: survivors are recorded again; a hole stays a hole, except where a
   * live memslot points, which is reserved again so Node cannot get those addresses.
   */
  private recoverFailedFixed(
    start: number,
    end: number,
    old: readonly Mapping[],
    keep: readonly (readonly [number, number])[],
  ): void {
    const live = mappedRanges(start, end);
    const isLive = (s: number, e: number) => subtractSegments(s, e, live).every(([, , kept]) => kept);
    for (const m of old) {
      if (isLive(m.start, m.end)) this.insert(m);
      else if (m.file !== null) this.unpin(m.file);
    }
    for (const [s, e, mapped] of subtractSegments(start, end, live)) {
      if (mapped) continue;
      for (const [ks, ke, kept] of subtractSegments(s, e, keep)) {
        if (!kept) continue;
        try {
          this.reserve(ks, ke, 'mmap', 'restoring a memslot range after a failed MAP_FIXED');
        } catch {
          // Left unrecorded: nothing in the binding will touch it.
        }
      }
    }
  }

  /**
   * munmap(2) for the user. Only this host's user mappings in the range are unmapped; the rest
   * (other kinds, or memory this host never mapped) is left alone, as if already unmapped.
   * Parts that a live memslot still points at (`keep`) become hidden PROT_NONE reservations
   * instead, so Node cannot reuse the addresses while a guest can write through them.
   */
  munmap(addr: number, length: number, keep: readonly (readonly [number, number])[]): void {
    if (addr % PAGE_SIZE !== 0 || length <= 0) {
      throw new KvmError('EINVAL', `munmap(${hex(addr)}, ${length}): address not page aligned or length 0`, {
        call: 'munmap',
      });
    }
    const end = addr + pageAlignUp(length);
    const pieces = this.carve(addr, end, ['user']);
    const plan = pieces.map((m) => subtractSegments(m.start, m.end, keep));
    this.ensureVmas(plan.flat().filter(([, , kept]) => kept).length, 'munmap');
    pieces.forEach((m, i) => {
      this.forget(m);
      for (const [s, e, kept] of plan[i] ?? []) {
        if (kept) this.coverHidden(s, e);
        else this.sys.munmap(big(s), e - s);
      }
    });
  }

  /** mprotect(2) for the user: the whole range must be this host's user mappings (else ENOMEM). */
  mprotect(addr: number, length: number, prot: number): void {
    if (addr % PAGE_SIZE !== 0) {
      throw new KvmError('EINVAL', `mprotect(${hex(addr)}, ${length}): address not page aligned`, {
        call: 'mprotect',
      });
    }
    if (length === 0) return;
    const end = addr + pageAlignUp(length);
    this.requireUser(addr, end, 'mprotect');
    this.ensureVmas(2, 'mprotect');
    const pieces = this.carve(addr, end, ['user']);
    this.sys.mprotect(big(addr), length, prot);
    for (const m of pieces) m.prot = prot;
  }

  /** madvise(2) for the user: the whole range must be this host's user mappings (else ENOMEM). */
  madvise(addr: number, length: number, advice: number): void {
    if (advice === MADV_HWPOISON || advice === MADV_SOFT_OFFLINE) {
      throw new KvmError(
        'EPERM',
        `madvise advice ${advice} (hwpoison/soft-offline) is refused by the binding: a later touch of the page is a SIGBUS that kills Node`,
        { call: 'madvise' },
      );
    }
    if (addr % PAGE_SIZE !== 0) {
      throw new KvmError('EINVAL', `madvise(${hex(addr)}, ${length}): address not page aligned`, {
        call: 'madvise',
      });
    }
    if (length === 0) return;
    this.requireUser(addr, addr + pageAlignUp(length), 'madvise');
    this.sys.madvise(big(addr), length, advice);
  }

  private requireUser(start: number, end: number, call: string): void {
    const gaps = this.gaps(start, end, ['user']);
    const first = gaps[0];
    if (first !== undefined) {
      throw new KvmError('ENOMEM', `[${hex(first[0])}, ${hex(first[1])}) is not mapped by this host`, {
        call,
      });
    }
  }

  // -------------------------------------------------------------------------------------------
  // Binding-internal mappings

  /** Maps memory for the binding itself (kvm_run, scratch); invisible to the user API. */
  mapInternal(length: number, prot: number, flags: number, fd: number, note: string): number {
    this.ensureVmas(1, 'mmap');
    const r = Number(this.sys.mmap(0n, length, prot, flags, fd, 0));
    this.record(r, length, prot, flags, 'internal', null, 0, note);
    return r;
  }

  /** Unmaps a binding-internal mapping (its record is forgotten first). */
  unmapInternal(addr: number): void {
    const m = this.find(addr);
    if (m === undefined || m.kind !== 'internal' || m.start !== addr) return;
    const len = m.end - m.start;
    this.forget(m);
    this.sys.munmap(big(addr), len);
  }

  /**
   * Replaces an internal mapping by private anonymous memory at the same address (MAP_FIXED), so
   * that views already handed out (kvm_run's `mmio.data`) stay valid but no longer reach the
   * kernel object. The tombstone is unmapped by `unmapInternal` once no view can exist.
   */
  tombstone(addr: number): void {
    const m = this.find(addr);
    if (m === undefined || m.kind !== 'internal' || m.start !== addr) return;
    const len = m.end - m.start;
    this.forget(m);
    this.sys.mmap(big(addr), len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    this.record(
      addr,
      len,
      PROT_READ | PROT_WRITE,
      MAP_PRIVATE | MAP_ANONYMOUS,
      'internal',
      null,
      0,
      `tombstone of ${m.note}`,
    );
  }

  /** A raw view of an internal mapping (kvm_run). It must never be used after `unmapInternal`. */
  internalView(addr: number): ArrayBuffer {
    const m = this.find(addr);
    if (m === undefined || m.kind !== 'internal') {
      throw new HostFault('SIGSEGV', 'SEGV_MAPERR', addr, 'not a mapping of the binding');
    }
    return this.sys.view(big(m.start), m.end - m.start);
  }

  /**
   * Reserves the parts of [start, end) that nothing is mapped at, for a memslot whose hva range
   * must not become Node's memory. Ranges below mmap_min_addr cannot be mapped by Node and are
   * left alone. Returns the reservations made (for undo); throws EEXIST if Node owns a part.
   */
  reserveForSlot(start: number, end: number, minAddr: number): Mapping[] {
    const made: Mapping[] = [];
    const from = Math.max(start, minAddr);
    if (from >= end) return made;
    const gaps = this.gaps(from, end, ['user', 'hidden']);
    try {
      this.ensureVmas(gaps.length, 'KVM_SET_USER_MEMORY_REGION');
      for (const [s, e] of gaps) {
        made.push(
          this.reserve(
            s,
            e,
            'KVM_SET_USER_MEMORY_REGION',
            'a memslot may only point at memory this host mapped or at unmapped addresses',
          ),
        );
      }
    } catch (err) {
      this.releaseHidden(made, []);
      throw err;
    }
    return made;
  }

  /**
   * Unmaps the hidden reservations in `ranges`, except the parts still inside `keep` (hva ranges of
   * memslots that remain live).
   */
  releaseHidden(
    ranges: readonly Pick<Mapping, 'start' | 'end'>[],
    keep: readonly (readonly [number, number])[],
  ): void {
    const drop: [number, number][] = [];
    for (const { start, end } of ranges) {
      for (const m of this.overlapping(start, end)) {
        if (m.kind !== 'hidden') continue;
        for (const [s, e, kept] of subtractSegments(Math.max(start, m.start), Math.min(end, m.end), keep)) {
          if (!kept) drop.push([s, e]);
        }
      }
    }
    for (const [s, e] of drop) {
      const [piece] = this.carve(s, e, ['hidden']);
      if (piece === undefined || piece.start !== s || piece.end !== e) continue;
      this.forget(piece);
      this.sys.munmap(big(s), e - s);
    }
  }

  /** Hidden reservations overlapping [start, end). */
  hiddenIn(start: number, end: number): Mapping[] {
    return this.overlapping(start, end).filter((m) => m.kind === 'hidden');
  }

  /**
   * Maps `count` copies of the first `chunk` bytes of file `fd` back to back, read-only, into a
   * fresh PROT_NONE reservation (realkvm-notes §6.4), recorded as one repeated user mapping.
   * Each copy is its own VMA (file offset 0 every time, so the kernel cannot merge them).
   */
  mapRepeated(fd: number, file: FilePin, chunk: number, count: number, prot: number): number {
    const length = chunk * count;
    try {
      this.ensureVmas(count + 1, 'mmap');
    } catch (e) {
      this.unpin(file);
      throw e;
    }
    const base = this.sys.mmap(0n, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    try {
      for (let i = 0; i < count; i++) {
        this.sys.mmap(base + big(i * chunk), chunk, prot, MAP_SHARED | MAP_FIXED, fd, 0);
      }
    } catch (e) {
      this.sys.munmap(base, length);
      this.unpin(file);
      throw e;
    }
    const start = Number(base);
    this.insert({
      start,
      end: start + length,
      prot,
      flags: MAP_SHARED | MAP_FIXED,
      kind: 'user',
      file,
      fileOffset: 0,
      period: chunk,
      phase: 0,
      vmas: count,
      note: `fd ${fd} repeated ${count}×${chunk}`,
      view: null,
    });
    return start;
  }

  /** Unmaps every mapping except tombstones (whose views may still exist); for `dispose`. */
  unmapAll(): void {
    for (const m of [...this.maps]) {
      if (m.kind === 'internal' && m.note.startsWith('tombstone')) continue;
      const len = m.end - m.start;
      this.forget(m);
      this.sys.munmap(big(m.start), len);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Access: the only code that touches mapped memory

  /**
   * Checks that [hva, hva + length) is readable (or writable) user memory whose every page the
   * CPU could touch without a signal, then calls `fn` on each contiguous piece with a view of it
   * and the piece's offset in the access. Throws `HostFault` (and touches nothing) otherwise.
   * `fn` must not keep the view.
   */
  access(hva: number, length: number, write: boolean, fn: (view: Uint8Array, at: number) => void): void {
    if (length === 0) return;
    if (!Number.isSafeInteger(hva) || hva < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new HostFault(
        'SIGSEGV',
        'SEGV_MAPERR',
        Math.max(0, Math.trunc(hva) || 0),
        `bad access [${hva}, +${length})`,
      );
    }
    const end = hva + length;
    const need = write ? PROT_WRITE : PROT_READ;
    // First pass: check everything, so a refused access has no partial effect.
    const pieces: [Mapping, number, number][] = [];
    let at = hva;
    for (const m of this.overlapping(hva, end)) {
      if (m.start > at || m.kind !== 'user') break;
      const e = Math.min(end, m.end);
      if ((m.prot & need) === 0) {
        throw new HostFault(
          'SIGSEGV',
          'SEGV_ACCERR',
          at,
          `${write ? 'write to' : 'read of'} a mapping with prot ${hex(m.prot)} (${m.note})`,
        );
      }
      if (m.file !== null) this.checkFilePages(m, at, e);
      pieces.push([m, at, e]);
      at = e;
      if (at >= end) break;
    }
    if (at < end) {
      throw new HostFault('SIGSEGV', 'SEGV_MAPERR', at, `no mapping of this host at ${hex(at)}`);
    }
    for (const [m, s, e] of pieces) {
      if (m.end - m.start <= MAX_CACHED_VIEW) {
        m.view ??= new Uint8Array(this.sys.view(big(m.start), m.end - m.start));
        fn(m.view.subarray(s - m.start, e - m.start), s - hva);
      } else {
        fn(new Uint8Array(this.sys.view(big(s), e - s)), s - hva);
      }
    }
  }

  /** Copies [hva, hva + length) out of user memory (HostFault instead of a signal). */
  read(hva: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    this.access(hva, length, false, (v, at) => out.set(v, at));
    return out;
  }

  /** Copies `bytes` into user memory at `hva` (HostFault instead of a signal). */
  write(hva: number, bytes: Uint8Array): void {
    this.access(hva, bytes.byteLength, true, (v, at) => v.set(bytes.subarray(at, at + v.byteLength)));
  }

  /**
   * SIGBUS rules for file-backed pages (GM-8 for guest_memfd; mm/filemap.c and mm/shmem.c for
   * pages at or past EOF): the file's size is read from its pin at access time.
   */
  private checkFilePages(m: Mapping, from: number, to: number): void {
    const file = m.file;
    if (file === null) return;
    if (
      file.gmem !== undefined &&
      (file.gmem === 'unknown' || (file.gmem.flags & GUEST_MEMFD_FLAG_INIT_SHARED) === 0)
    ) {
      throw new HostFault(
        'SIGBUS',
        'BUS_ADRERR',
        from,
        file.gmem === 'unknown'
          ? 'a guest_memfd the binding did not create (its flags are unknown, so every touch is refused)'
          : `a guest_memfd created without GUEST_MEMFD_FLAG_INIT_SHARED (flags ${hex(file.gmem.flags)}): every host fault is a SIGBUS (GM-8)`,
      );
    }
    const limit = pageAlignUp(this.sys.fstat(file.fd).size);
    const offsetAt = (a: number): number =>
      m.period === 0 ? m.fileOffset + (a - m.start) : m.fileOffset + ((a - m.start + m.phase) % m.period);
    const spansChunk = m.period !== 0 && offsetAt(from) + (to - from) > m.fileOffset + m.period;
    const maxOffset = spansChunk ? m.fileOffset + m.period - 1 : offsetAt(to - 1);
    if (maxOffset < limit) return;
    // Find the first faulting byte, page by page (only on the failing path).
    let a = from;
    while (a < to && offsetAt(a) < limit) a = Math.min(to, (Math.floor(a / PAGE_SIZE) + 1) * PAGE_SIZE);
    throw new HostFault(
      'SIGBUS',
      'BUS_ADRERR',
      a,
      `file offset ${offsetAt(a)} is at or past the end of the file (size ${limit} rounded to pages)`,
    );
  }
}

const MADV_HWPOISON = 100;
const MADV_SOFT_OFFLINE = 101;

/**
 * Splits [start, end) into segments, each marked `true` if inside the union of `keep`.
 * `keep` need not be sorted or disjoint.
 */
export function subtractSegments(
  start: number,
  end: number,
  keep: readonly (readonly [number, number])[],
): [number, number, boolean][] {
  const inside = keep
    .map(([s, e]) => [Math.max(s, start), Math.min(e, end)] as const)
    .filter(([s, e]) => s < e)
    .sort((a, b) => a[0] - b[0]);
  const out: [number, number, boolean][] = [];
  let at = start;
  for (const [s, e] of inside) {
    if (e <= at) continue;
    if (s > at) out.push([at, s, false]);
    out.push([Math.max(s, at), e, true]);
    at = e;
  }
  if (at < end) out.push([at, end, false]);
  return out;
}

/** Address ranges mapped in this process that overlap [start, end), from /proc/self/maps. */
function mappedRanges(start: number, end: number): [number, number][] {
  const out: [number, number][] = [];
  for (const line of readFileSync('/proc/self/maps', 'utf8').split('\n')) {
    const dash = line.indexOf('-');
    const space = line.indexOf(' ');
    if (dash < 0 || space < dash) continue;
    const s = Number.parseInt(line.slice(0, dash), 16);
    const e = Number.parseInt(line.slice(dash + 1, space), 16);
    if (s < end && e > start) out.push([s, e]);
  }
  return out;
}
