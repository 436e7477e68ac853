/**
 * The KVM_RUN watchdog: no synchronous KVM_RUN blocks its thread for longer than the vCPU's
 * `runTimeoutMs`. When the budget is spent, the run is kicked the way realkvm-notes §6.5 kicks a
 * vCPU — tgkill(SIGUSR2) at the thread inside KVM_RUN — so KVM_RUN returns -1/EINTR with
 * exit_reason KVM_EXIT_INTR, and `run()` marks the result `watchdog: true`.
 *
 * One watchdog `worker_thread` per isolate that runs vCPUs (in practice one per process: the main
 * thread and every vCPU worker of vcpu_worker.ts share it), started on the first watched run and
 * `unref()`ed so it never keeps Node alive. It has its own koffi handle (loaded only once a run
 * has used half its budget: a process that exits while a thread is inside koffi's initialisation
 * aborts, and most processes never need a kick) and does nothing but wait and send signals. The
 * threads that issue KVM_RUN and the watchdog talk through one SharedArrayBuffer (`Int32Array`
 * words, all accessed with Atomics where it matters):
 *
 *   header: BELL (bumped + notified to wake the watchdog early), WAKE (when the watchdog plans to
 *           wake next), and statistics.
 *   slots:  one per thread that issues KVM_RUN: OWNER (its kernel tid, 0 = free), STATE, DEADLINE
 *           and BUDGET. STATE is `seq << 2 | kind`, kind IDLE / ARMED / FIRED (the watchdog has
 *           signalled this run at least once) / SIGNALLING (the watchdog is inside tgkill).
 *           `seq` grows by one per run, so a compare-and-swap on STATE names one run exactly.
 *           Only the watchdog moves a slot out of SIGNALLING; a thread waiting for that gives
 *           up after `STUCK_MS` (the watchdog would have to be gone mid-tgkill).
 *
 * Times are int32 milliseconds since the block was made (`base`), on the monotonic clock that
 * every thread shares (each thread calibrates `performance.now()` against `process.hrtime` once),
 * compared with wrap-around arithmetic.
 *
 * A run, on the thread that issues it:
 *   arm:    DEADLINE = now + budget; STATE = seq | ARMED (Atomics.store); if DEADLINE is earlier
 *           than WAKE, bump BELL, Atomics.notify, and lower WAKE to DEADLINE (the watchdog now
 *           scans before it). Nothing else: no timer, no message.
 *   KVM_RUN
 *   disarm: compare-and-swap STATE from seq | ARMED to seq | IDLE. If that fails the watchdog
 *           fired (FIRED), or is signalling right now (SIGNALLING: spin the few µs until it is
 *           done, so no signal of this run can be sent after `disarm` returns).
 *
 * The watchdog loop: scan the slots; for every armed slot past its deadline, CAS STATE to
 * SIGNALLING, tgkill the owner with SIGUSR2, set DEADLINE = now + REKICK_MS and STATE = FIRED
 * (so it repeats every few ms until the run has returned: a signal that lands between arm and
 * KVM_RUN is consumed in userspace and does not interrupt the guest). Then publish WAKE = the
 * earliest deadline (or, while runs keep coming, now + the smallest budget seen; after a quiet
 * scan, about 12 days), re-check the slots (an arm that raced with the scan and saw the old WAKE
 * is caught here: Dekker's argument on the sequentially consistent STATE and WAKE), and
 * Atomics.wait on BELL until WAKE. Because WAKE tracks the budget while runs keep coming, an arm
 * whose deadline is later than WAKE does not notify: many short runs cost the watchdog one wake-up
 * per budget period, not one per run, and create no timers at all.
 *
 * SIGUSR2 must have a handler, or it kills the process: `process.on('SIGUSR2')` (libuv's handler,
 * process-wide) is installed on the main thread, as for the vCPU worker's kick. A worker thread
 * cannot install one (`process.on` there does not reach the kernel); a run issued from a thread
 * other than the main thread is watched only if /proc/self/status shows SIGUSR2 caught, and runs
 * unwatched otherwise (`runWatchdogStats().unwatchedReason` says why).
 */

import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { isMainThread, Worker } from 'node:worker_threads';
import { KvmError } from '../core/errno.js';
import { getSys, SIGUSR2 } from './sys.js';

/** The default `runTimeoutMs` of a vCPU: 10 s. */
export const DEFAULT_RUN_TIMEOUT_MS = 10_000;
/** The largest finite `runTimeoutMs` (2^29 ms, about 6 days); `Infinity` turns the watchdog off. */
export const MAX_RUN_TIMEOUT_MS = 2 ** 29;
/** How often the watchdog re-sends SIGUSR2 while a run it fired at has not returned. */
export const REKICK_MS = 5;

// Header words.
const BELL = 0;
const WAKE = 1;
const STAT_WAKEUPS = 2;
const STAT_SIGNALS = 3;
const STAT_NOTIFIES = 4;
const STAT_FIRED_RUNS = 5;
const HEADER = 8;
// Slot words.
const OWNER = 0;
const STATE = 1;
const DEADLINE = 2;
const BUDGET = 3;
const SLOT_WORDS = 4;
/** Threads that can issue KVM_RUN at once under one watchdog. */
const SLOTS = 128;
// STATE kinds.
const IDLE = 0;
const ARMED = 1;
const FIRED = 2;
const SIGNALLING = 3;
const KIND = 3;
/** The watchdog's planned wake-up after a scan that saw no run at all (about 12 days). */
const FAR_MS = 2 ** 30;
/** Margin for the per-thread clock calibrations when the watchdog plans a wake-up by budget. */
const SLACK_MS = 2;
/** A slot SIGNALLING for this long has lost its watchdog (a tgkill takes microseconds). */
const STUCK_MS = 1000;

/** The protocol constants, shared by this file, the watchdog's source and the vCPU worker's. */
const PROTOCOL = {
  BELL,
  WAKE,
  STAT_WAKEUPS,
  STAT_SIGNALS,
  STAT_NOTIFIES,
  STAT_FIRED_RUNS,
  HEADER,
  OWNER,
  STATE,
  DEADLINE,
  BUDGET,
  SLOT_WORDS,
  SLOTS,
  IDLE,
  ARMED,
  FIRED,
  SIGNALLING,
  KIND,
  FAR_MS,
  SLACK_MS,
  STUCK_MS,
  REKICK_MS,
  SIGUSR2,
} as const;
const P = `const P = ${JSON.stringify(PROTOCOL)};`;

// The watchdog's whole program: plain JavaScript evaluated in the worker (no TypeScript loader is
// available there). See the file comment for the protocol.
const WATCHDOG_SOURCE = `
'use strict';
const { workerData } = require('node:worker_threads');
${P}
// koffi is loaded once some run has used half its budget, not at start: a process that exits
// while a worker is inside koffi's initialisation aborts (napi_throw during teardown), and a
// process that is inside a long KVM_RUN is not exiting. Loaded before any slot is claimed, so a
// failure cannot leave one SIGNALLING.
let tgkill = null;
const loadTgkill = () =>
  require(workerData.koffiPath).load('libc.so.6').func('int tgkill(int tgid, int tid, int sig)');
const c = new Int32Array(workerData.sab);
const pid = process.pid;
const perfNow = performance.now.bind(performance);
const off = Number(process.hrtime.bigint()) / 1e6 - perfNow() - workerData.base;
const now = () => (perfNow() + off) | 0;
const before = (a, b) => ((a - b) | 0) < 0;
const seen = new Int32Array(P.SLOTS);
for (;;) {
  const bell = Atomics.load(c, P.BELL);
  Atomics.add(c, P.STAT_WAKEUPS, 1);
  const t = now();
  let next = (t + P.FAR_MS) | 0;
  let busy = false;
  let minBudget = P.FAR_MS;
  for (let i = 0; i < P.SLOTS; i++) {
    const b = P.HEADER + i * P.SLOT_WORDS;
    const s = Atomics.load(c, b + P.STATE);
    if (s !== seen[i]) {
      // Runs came and went on this slot since the last scan: plan by its budget.
      seen[i] = s;
      busy = true;
      const budget = Atomics.load(c, b + P.BUDGET);
      if (budget > 0 && budget < minBudget) minBudget = budget;
    }
    const kind = s & P.KIND;
    if (kind !== P.ARMED && kind !== P.FIRED) continue;
    const d = Atomics.load(c, b + P.DEADLINE);
    if (tgkill === null) {
      const half = (d - (Atomics.load(c, b + P.BUDGET) >> 1)) | 0;
      if (!before(t, half)) {
        tgkill = loadTgkill();
        next = t; // that took a while: scan again at once
        continue;
      }
      if (before(half, next)) next = half;
    }
    if (before(t, d)) {
      if (before(d, next)) next = d;
      continue;
    }
    if (Atomics.compareExchange(c, b + P.STATE, s, (s & ~P.KIND) | P.SIGNALLING) !== s) {
      next = t; // the run ended or a new one began meanwhile: scan again at once
      continue;
    }
    const r = tgkill(pid, Atomics.load(c, b + P.OWNER), P.SIGUSR2);
    Atomics.add(c, P.STAT_SIGNALS, 1);
    if (kind === P.ARMED) Atomics.add(c, P.STAT_FIRED_RUNS, 1);
    const again = (now() + P.REKICK_MS) | 0;
    Atomics.store(c, b + P.DEADLINE, again);
    // tgkill fails only if the thread is gone (it died inside KVM_RUN): nothing left to watch.
    const after = (s & ~P.KIND) | (r === 0 ? P.FIRED : P.IDLE);
    Atomics.store(c, b + P.STATE, after);
    seen[i] = after;
    if (before(again, next)) next = again;
  }
  if (busy) {
    const byBudget = (t + Math.max(P.REKICK_MS, minBudget - P.SLACK_MS)) | 0;
    if (before(byBudget, next)) next = byBudget;
  }
  Atomics.store(c, P.WAKE, next);
  // An arm that raced with the scan above read the previous WAKE; it is visible now.
  let missed = false;
  for (let i = 0; i < P.SLOTS && !missed; i++) {
    const b = P.HEADER + i * P.SLOT_WORDS;
    const kind = Atomics.load(c, b + P.STATE) & P.KIND;
    if ((kind === P.ARMED || kind === P.FIRED) && before(Atomics.load(c, b + P.DEADLINE), next)) missed = true;
  }
  if (missed) continue;
  const ms = (next - now()) | 0;
  if (ms > 0) Atomics.wait(c, P.BELL, bell, ms);
}
`;

/**
 * The arm/disarm half of the protocol in plain JavaScript, for a vCPU worker (vcpu_worker.ts):
 * defines `wdArm(slot, budget)` and `wdDisarm(slot)` (true if the watchdog signalled the run),
 * over `workerData.wd = { sab, base }`. Mirrors `RunGuard.arm`/`disarm` below.
 */
export const WORKER_GUARD_SOURCE = `
${P}
const wdC = new Int32Array(workerData.wd.sab);
const wdPerfNow = performance.now.bind(performance);
const wdOff = Number(process.hrtime.bigint()) / 1e6 - wdPerfNow() - workerData.wd.base;
let wdSeq = -1;
function wdArm(slot, budget) {
  const b = P.HEADER + slot * P.SLOT_WORDS;
  if (wdSeq === -1) wdSeq = Atomics.load(wdC, b + P.STATE) & ~P.KIND;
  wdSeq = (wdSeq + 4) | 0;
  const d = Math.ceil(wdPerfNow() + wdOff + budget) | 0;
  wdC[b + P.DEADLINE] = d;
  wdC[b + P.BUDGET] = budget;
  Atomics.store(wdC, b + P.STATE, wdSeq | P.ARMED);
  const wake = Atomics.load(wdC, P.WAKE);
  if (((d - wake) | 0) < 0) {
    Atomics.add(wdC, P.BELL, 1);
    Atomics.notify(wdC, P.BELL);
    Atomics.compareExchange(wdC, P.WAKE, wake, d);
    Atomics.add(wdC, P.STAT_NOTIFIES, 1);
  }
}
function wdDisarm(slot) {
  const b = P.HEADER + slot * P.SLOT_WORDS;
  const armed = wdSeq | P.ARMED;
  if (Atomics.compareExchange(wdC, b + P.STATE, armed, wdSeq) === armed) return false;
  let stuckAt = 0;
  for (let spins = 1; ; spins++) {
    const s = Atomics.load(wdC, b + P.STATE);
    if ((s & P.KIND) === P.SIGNALLING) {
      if ((spins & 1023) !== 0) continue;
      if (stuckAt === 0) stuckAt = wdPerfNow() + P.STUCK_MS;
      if (wdPerfNow() < stuckAt) continue;
      Atomics.store(wdC, b + P.STATE, wdSeq);
      return true;
    }
    if (Atomics.compareExchange(wdC, b + P.STATE, s, wdSeq) === s) return (s & P.KIND) === P.FIRED;
  }
}
`;

/** Checks a `runTimeoutMs` value: a positive number of ms up to `MAX_RUN_TIMEOUT_MS`, or Infinity. */
export function checkRunTimeout(ms: number, what: string): number {
  if (ms === Number.POSITIVE_INFINITY || (typeof ms === 'number' && ms > 0 && ms <= MAX_RUN_TIMEOUT_MS)) {
    return ms;
  }
  throw new RangeError(
    `${what} must be a number of ms in (0, ${MAX_RUN_TIMEOUT_MS}] or Infinity (no watchdog), got ${String(ms)}`,
  );
}

const perfNow = performance.now.bind(performance);
const hrMs = (): number => Number(process.hrtime.bigint()) / 1e6;

let signalHandlerInstalled = false;
/**
 * Makes SIGUSR2 non-fatal (libuv's handler, process-wide) so a kick or the watchdog can interrupt
 * KVM_RUN on any thread. Only effective on the main thread; elsewhere `process.on` does not
 * reach the kernel.
 */
export function installKickHandler(): void {
  if (signalHandlerInstalled || !isMainThread) return;
  process.on('SIGUSR2', () => {});
  signalHandlerInstalled = true;
}

/** True if this process has a handler for SIGUSR2 (SigCgt of /proc/self/status). */
function sigusr2Caught(): boolean {
  try {
    const m = /^SigCgt:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m === null || m[1] === undefined) return false;
    return ((BigInt(`0x${m[1]}`) >> BigInt(SIGUSR2 - 1)) & 1n) === 1n;
  } catch {
    return false;
  }
}

/**
 * Sets a slot's STATE to `to` once the watchdog is not inside tgkill for it (or after STUCK_MS,
 * should the watchdog be gone mid-signal). Returns the kind it replaced.
 */
function settleSlot(c: Int32Array, stateIndex: number, to: number): number {
  let stuckAt = 0;
  for (let spins = 1; ; spins++) {
    const s = Atomics.load(c, stateIndex);
    if ((s & KIND) === SIGNALLING) {
      // The watchdog is inside tgkill: a few µs. Look at the clock only now and then.
      if ((spins & 1023) !== 0) continue;
      if (stuckAt === 0) stuckAt = perfNow() + STUCK_MS;
      if (perfNow() < stuckAt) continue;
      Atomics.store(c, stateIndex, to);
      return SIGNALLING;
    }
    if (Atomics.compareExchange(c, stateIndex, s, to) === s) return s & KIND;
  }
}

/** The shared block and the watchdog worker of this isolate. */
class Watchdog {
  readonly sab = new SharedArrayBuffer((HEADER + SLOTS * SLOT_WORDS) * 4);
  readonly c = new Int32Array(this.sab);
  /** `hrMs()` when the block was made: time 0 of every int32 time in it. */
  readonly base = hrMs();
  /** Added to `performance.now()` on this thread to get ms since `base`. */
  readonly off = hrMs() - perfNow() - this.base;
  private worker: Worker | undefined;
  private failures = 0;
  failure: string | undefined;

  constructor() {
    // WAKE starts at time 0, before any deadline: no arm notifies before the watchdog's first
    // scan, which sees every armed slot anyway.
    Atomics.store(this.c, WAKE, 0);
  }

  /** ms since `base`, on this thread. */
  now(): number {
    return perfNow() + this.off;
  }

  get running(): boolean {
    return this.worker !== undefined;
  }

  /** Starts the worker if it is not running (it restarts after an error, at most 3 times). */
  ensureStarted(): void {
    if (this.worker !== undefined || this.failures >= 3) return;
    const koffiPath = createRequire(import.meta.url).resolve('koffi');
    const w = new Worker(WATCHDOG_SOURCE, {
      eval: true,
      workerData: { sab: this.sab, base: this.base, koffiPath },
      name: 'guestmem KVM_RUN watchdog',
    });
    w.unref();
    const gone = () => {
      if (this.worker !== w) return;
      this.worker = undefined;
      // A new watchdog starts with a full scan; until then no arm needs to notify.
      Atomics.store(this.c, WAKE, (this.now() - 1) | 0);
    };
    w.on('error', (e) => {
      this.failures++;
      this.failure = `the KVM_RUN watchdog failed: ${e instanceof Error ? e.message : String(e)}`;
      gone();
    });
    w.on('exit', gone);
    this.worker = w;
  }

  /** Claims a free slot for `tid` (reclaiming the slots of threads that are gone); -1 if full. */
  claim(tid: number): number {
    for (let pass = 0; pass < 2; pass++) {
      for (let i = 0; i < SLOTS; i++) {
        if (Atomics.compareExchange(this.c, HEADER + i * SLOT_WORDS + OWNER, 0, tid) === 0) return i;
      }
      if (pass === 0 && existsSync(`/proc/self/task/${process.pid}`)) {
        for (let i = 0; i < SLOTS; i++) {
          const owner = Atomics.load(this.c, HEADER + i * SLOT_WORDS + OWNER);
          if (owner !== 0 && !existsSync(`/proc/self/task/${owner}`)) this.release(i, owner);
        }
      }
    }
    return -1;
  }

  /** Frees slot `i` if `tid` still owns it; its thread must not be inside a watched KVM_RUN. */
  release(i: number, tid: number): void {
    const b = HEADER + i * SLOT_WORDS;
    settleSlot(this.c, b + STATE, Atomics.load(this.c, b + STATE) & ~KIND);
    Atomics.compareExchange(this.c, b + OWNER, tid, 0);
  }

  stats(): RunWatchdogStats {
    let slotsInUse = 0;
    for (let i = 0; i < SLOTS; i++)
      if (Atomics.load(this.c, HEADER + i * SLOT_WORDS + OWNER) !== 0) slotsInUse++;
    return {
      running: this.running,
      wakeups: Atomics.load(this.c, STAT_WAKEUPS),
      signals: Atomics.load(this.c, STAT_SIGNALS),
      notifies: Atomics.load(this.c, STAT_NOTIFIES),
      firedRuns: Atomics.load(this.c, STAT_FIRED_RUNS),
      slotsInUse,
      ...(this.failure === undefined ? {} : { failure: this.failure }),
    };
  }
}

/**
 * The calling thread's slot: arms the watchdog before a KVM_RUN and disarms it after. One per
 * thread; a thread has at most one KVM_RUN in flight, so one slot serves all its vCPUs.
 */
export class RunGuard {
  private seq: number;
  private readonly b: number;

  constructor(
    private readonly wd: Watchdog,
    slot: number,
  ) {
    this.b = HEADER + slot * SLOT_WORDS;
    this.seq = Atomics.load(wd.c, this.b + STATE) & ~KIND;
  }

  /** Before KVM_RUN: the watchdog kicks this thread if the run lasts longer than `budgetMs`. */
  arm(budgetMs: number): void {
    this.wd.ensureStarted(); // a property check, unless the watchdog died
    const c = this.wd.c;
    const b = this.b;
    this.seq = (this.seq + 4) | 0;
    const d = Math.ceil(this.wd.now() + budgetMs) | 0;
    // Plain stores: the Atomics.store of STATE below publishes them.
    c[b + DEADLINE] = d;
    c[b + BUDGET] = budgetMs;
    Atomics.store(c, b + STATE, this.seq | ARMED);
    const wake = Atomics.load(c, WAKE);
    if (((d - wake) | 0) < 0) {
      Atomics.add(c, BELL, 1);
      Atomics.notify(c, BELL);
      // The watchdog now scans before `d`: later arms with later deadlines need not notify.
      // (Its scan overwrites WAKE; an arm racing with that scan is caught by its re-check.)
      Atomics.compareExchange(c, WAKE, wake, d);
      Atomics.add(c, STAT_NOTIFIES, 1);
    }
  }

  /** After KVM_RUN: true if the watchdog signalled this thread during the run. */
  disarm(): boolean {
    const c = this.wd.c;
    const b = this.b;
    const armed = this.seq | ARMED;
    if (Atomics.compareExchange(c, b + STATE, armed, this.seq) === armed) return false;
    const was = settleSlot(c, b + STATE, this.seq); // FIRED, or SIGNALLING right now
    return was === FIRED || was === SIGNALLING;
  }
}

/** What `runWatchdogStats()` reports (counters since the watchdog's block was made). */
export interface RunWatchdogStats {
  /** The watchdog worker is running. */
  readonly running: boolean;
  /** Times the watchdog woke up and scanned the slots. */
  readonly wakeups: number;
  /** SIGUSR2 signals it sent (a fired run gets one every `REKICK_MS` until it returns). */
  readonly signals: number;
  /** Times an arm woke the watchdog early (its deadline was before the planned wake-up). */
  readonly notifies: number;
  /** Runs the watchdog interrupted. */
  readonly firedRuns: number;
  /** Threads holding a slot (this isolate's thread, vCPU workers). */
  readonly slotsInUse: number;
  /** Why the watchdog worker is not running, if it failed. */
  readonly failure?: string;
  /** Why runs on this thread are not watched, if they are not. */
  readonly unwatchedReason?: string;
}

let watchdog: Watchdog | undefined;
let guard: RunGuard | { unwatched: string } | undefined;

function theWatchdog(): Watchdog {
  watchdog ??= new Watchdog();
  return watchdog;
}

/**
 * This thread's `RunGuard` (claimed on first use), or null if runs here cannot be watched: a
 * worker thread in a process without a SIGUSR2 handler, or all slots taken.
 */
export function runGuard(): RunGuard | null {
  if (guard === undefined) {
    installKickHandler();
    if (!isMainThread && !sigusr2Caught()) {
      guard = {
        unwatched:
          'this thread is not the main thread and the process has no SIGUSR2 handler (install one with ' +
          "process.on('SIGUSR2', () => {}) on the main thread)",
      };
    } else {
      const wd = theWatchdog();
      const slot = wd.claim(getSys().gettid());
      if (slot < 0) guard = { unwatched: `all ${SLOTS} watchdog slots are taken` };
      else {
        wd.ensureStarted();
        guard = new RunGuard(wd, slot);
      }
    }
  }
  return guard instanceof RunGuard ? guard : null;
}

/** The watchdog's shared block, for a vCPU worker's `WORKER_GUARD_SOURCE` (`workerData.wd`). */
export function watchdogBlock(): { readonly sab: SharedArrayBuffer; readonly base: number } {
  installKickHandler();
  const wd = theWatchdog();
  return { sab: wd.sab, base: wd.base };
}

/**
 * Claims a watchdog slot for the vCPU worker thread `tid` (vcpu_worker.ts) and starts the
 * watchdog. Throws EAGAIN if every slot is taken. `release()` once the thread has ended.
 */
export function claimWorkerSlot(tid: number): { readonly slot: number; release(): void } {
  const wd = theWatchdog();
  const slot = wd.claim(tid);
  if (slot < 0) {
    throw new KvmError('EAGAIN', `all ${SLOTS} KVM_RUN watchdog slots are taken`, {
      call: 'startVcpuWorker',
    });
  }
  wd.ensureStarted();
  return { slot, release: () => wd.release(slot, tid) };
}

/** Counters of this isolate's watchdog, for tests and diagnostics. */
export function runWatchdogStats(): RunWatchdogStats {
  const s = theWatchdog().stats();
  return guard !== undefined && !(guard instanceof RunGuard) ? { ...s, unwatchedReason: guard.unwatched } : s;
}
