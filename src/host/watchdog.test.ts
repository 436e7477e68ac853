// The KVM_RUN watchdog (watchdog.ts): a synchronous run that outlasts the vCPU's runTimeoutMs is
// kicked (SIGUSR2) and returns EINTR / KVM_EXIT_INTR with `watchdog: true`, on the main thread and
// in a vCPU worker; runs that exit by themselves are untouched; many short runs cost no timers
// and (almost) no watchdog wake-ups; a stray EINTR that is not the watchdog's keeps its meaning.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import {
  KVM_CAP_EXIT_HYPERCALL,
  KVM_EXIT_HLT,
  KVM_EXIT_HYPERCALL,
  KVM_EXIT_INTR,
  KVM_EXIT_IO,
  KVM_HC_MAP_GPA_RANGE,
} from '../core/uapi.js';
import { program } from '../core/vcpu/program.js';
import {
  createRealHost,
  DEFAULT_RUN_TIMEOUT_MS,
  type RealHost,
  type RealHostOptions,
  realKvmAvailable,
  runWatchdogStats,
  startVcpuWorker,
  type VcpuWorker,
} from './index.js';
import { createOneVcpuGuest, runSkippingIntr } from './kvm_util.js';

const kvm = realKvmAvailable();
const hosts: RealHost[] = [];
const workers: VcpuWorker[] = [];
afterEach(async () => {
  for (const w of workers.splice(0)) await w.stop();
  for (const h of hosts.splice(0)) h.dispose();
});

function guest(options: RealHostOptions = {}) {
  const h = createRealHost(options);
  hosts.push(h);
  return { ...createOneVcpuGuest(h), host: h };
}
async function worker(...args: Parameters<typeof startVcpuWorker>): Promise<VcpuWorker> {
  const w = await startVcpuWorker(...args);
  workers.push(w);
  return w;
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A guest that spins for about half an hour at PVM's guest speed, then syncs. */
const spinner = program((b) =>
  b
    .mov('r9', 0)
    .loop('r8', 2 ** 31 - 1, (l) => l.add('r9', 1))
    .sync(1),
);

const WATCHDOG_EINTR = {
  ret: -1,
  errno: 'EINTR',
  exitReason: KVM_EXIT_INTR,
  exitReasonName: 'KVM_EXIT_INTR',
  memoryFaultValid: false,
  watchdog: true,
} as const;

/** Whether SIGUSR2 has a handler in this process (SigCgt of /proc/self/status). */
function sigusr2Caught(): boolean {
  const m = /^SigCgt:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return m?.[1] !== undefined && ((BigInt(`0x${m[1]}`) >> 11n) & 1n) === 1n;
}

/** Sends SIGUSR2 to this (main) thread after `ms`, from a helper thread with its own koffi. */
function strayKickAfter(ms: number): Worker {
  const koffiPath = createRequire(import.meta.url).resolve('koffi');
  const w = new Worker(
    `const { workerData } = require('node:worker_threads');
     const tgkill = require(workerData.koffiPath).load('libc.so.6').func('int tgkill(int tgid, int tid, int sig)');
     Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, workerData.ms);
     tgkill(workerData.pid, workerData.pid, 12);`,
    { eval: true, workerData: { koffiPath, pid: process.pid, ms } },
  );
  w.unref();
  return w;
}

describe.skipIf(!kvm.ok)(`the KVM_RUN watchdog${kvm.ok ? '' : ` — skipped: ${kvm.reason}`}`, () => {
  it('must be a positive number of ms up to 2^29, or Infinity', () => {
    expect(() => createRealHost({ runTimeoutMs: 0 })).toThrow(RangeError);
    expect(() => createRealHost({ runTimeoutMs: Number.NaN })).toThrow(RangeError);
    const { vcpu } = guest();
    expect(vcpu.runTimeoutMs).toBe(DEFAULT_RUN_TIMEOUT_MS);
    for (const bad of [0, -5, Number.NaN, 2 ** 30]) {
      expect(() => {
        vcpu.runTimeoutMs = bad;
      }).toThrow(RangeError);
    }
    vcpu.runTimeoutMs = Number.POSITIVE_INFINITY;
    vcpu.runTimeoutMs = 0.5;
    expect(vcpu.runTimeoutMs).toBe(0.5);
    expect(guest({ runTimeoutMs: 1234 }).vcpu.runTimeoutMs).toBe(1234);
  });
  it('a spinning guest on the main thread is kicked after runTimeoutMs: EINTR, KVM_EXIT_INTR, watchdog: true', () => {
    const { vcpu } = guest({ runTimeoutMs: 300 });
    vcpu.setProgram(spinner);
    const t0 = performance.now();
    const r = vcpu.run();
    const took = performance.now() - t0;
    expect(r).toEqual(WATCHDOG_EINTR);
    expect(took).toBeGreaterThanOrEqual(295);
    expect(took).toBeLessThan(1000);
    expect(sigusr2Caught()).toBe(true); // otherwise the signal would have killed the process
    // Exactly a kick: immediate_exit untouched, the guest's progress kept, and it resumes.
    expect(vcpu.kvmRun.immediateExit).toBe(0);
    const progress = vcpu.getRegs().r9;
    expect(progress).toBeGreaterThan(0n);
    // runSkippingIntr returns the watchdog's EINTR instead of re-entering the runaway guest.
    vcpu.runTimeoutMs = 150;
    const t1 = performance.now();
    expect(runSkippingIntr(vcpu)).toEqual(WATCHDOG_EINTR);
    expect(performance.now() - t1).toBeLessThan(1000);
    expect(vcpu.getRegs().r9).toBeGreaterThan(progress);
  });

  it('HC-3 on the main thread: a VMCALL that never retires (PVM) ends with the watchdog instead of hanging', () => {
    const { vm, vcpu } = guest({ runTimeoutMs: 300 });
    vm.enableCap({ cap: KVM_CAP_EXIT_HYPERCALL, args: [2 ** KVM_HC_MAP_GPA_RANGE] });
    vcpu.setProgram(program((b) => b.hypercall(KVM_HC_MAP_GPA_RANGE, [0x10_0000, 2, 0x10], 'r10').sync(1)));
    const t0 = performance.now();
    const r = runSkippingIntr(vcpu);
    expect(performance.now() - t0).toBeLessThan(1000);
    if (r.ret === 0) {
      expect(r).toMatchObject({ exitReason: KVM_EXIT_HYPERCALL, hypercall: { nr: KVM_HC_MAP_GPA_RANGE } });
      expect(r.hypercall?.args.slice(0, 3)).toEqual([0x10_0000, 2, 0x10]);
    } else {
      // PVM deviation (docs/host-deviations.md #2): rip stays on the VMCALL, rax still holds nr.
      expect(r).toEqual(WATCHDOG_EINTR);
      const regs = vcpu.getRegs();
      expect(regs.rax).toBe(BigInt(KVM_HC_MAP_GPA_RANGE));
      expect(regs.r10).toBe(0n);
    }
  });

  it('a guest that exits by itself is unaffected: exact results, no signal sent', () => {
    const { vcpu } = guest({ runTimeoutMs: 300 });
    vcpu.setProgram(program((b) => b.sync(5).sync(6).halt()));
    const before = runWatchdogStats();
    const results = [vcpu.run(), vcpu.run(), vcpu.run()];
    expect(results.map((r) => [r.ret, r.exitReason, 'watchdog' in r])).toEqual([
      [0, KVM_EXIT_IO, false],
      [0, KVM_EXIT_IO, false],
      [0, KVM_EXIT_HLT, false],
    ]);
    expect(runWatchdogStats().signals).toBe(before.signals);
  });

  it('many short runs arm and disarm without timers; the watchdog wakes about once per budget, not per run', async () => {
    const { vcpu } = guest({ runTimeoutMs: 300 });
    vcpu.setProgram(program((b) => b.halt()));
    vcpu.run(); // may start the watchdog, or wake it from a quiet sleep
    await sleep(20);
    const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const timersBefore = timers();
    const before = runWatchdogStats();
    const t0 = performance.now();
    const N = 5000;
    for (let i = 0; i < N; i++) {
      const r = vcpu.run();
      if (r.exitReason !== KVM_EXIT_HLT || r.watchdog === true) expect.fail(`run ${i}: ${JSON.stringify(r)}`);
    }
    const took = performance.now() - t0;
    const after = runWatchdogStats();
    expect(timers()).toBe(timersBefore);
    expect(after.running).toBe(true);
    expect(after.signals - before.signals).toBe(0);
    expect(after.slotsInUse).toBe(before.slotsInUse);
    // At most one early wake-up (an arm notifies only if its deadline is before the planned one).
    expect(after.notifies - before.notifies).toBeLessThanOrEqual(1);
    expect(after.wakeups - before.wakeups).toBeLessThanOrEqual(3 + Math.ceil(took / 100));
    // The deadline is per run, never a stale one: a spinning run still gets its whole budget.
    vcpu.setProgram(spinner);
    const t1 = performance.now();
    expect(vcpu.run()).toEqual(WATCHDOG_EINTR);
    const spun = performance.now() - t1;
    expect(spun).toBeGreaterThanOrEqual(295);
    expect(spun).toBeLessThan(1000);
  });

  it('Infinity turns the watchdog off for a vCPU: its runs are not armed', () => {
    const { vcpu } = guest({ runTimeoutMs: Number.POSITIVE_INFINITY });
    vcpu.setProgram(program((b) => b.sync(1).halt()));
    const before = runWatchdogStats();
    expect(vcpu.run()).toMatchObject({ ret: 0, exitReason: KVM_EXIT_IO });
    const after = runWatchdogStats();
    expect([after.notifies, after.signals]).toEqual([before.notifies, before.signals]);
  });

  it('a stray EINTR that is not the watchdog’s keeps today’s meaning: no flag, runSkippingIntr re-enters', async () => {
    const { vcpu } = guest({ runTimeoutMs: 400 });
    vcpu.setProgram(spinner);
    const kicker = strayKickAfter(100);
    await new Promise((r) => kicker.once('online', r));
    const stray = vcpu.run();
    expect(stray).toEqual({
      ret: -1,
      errno: 'EINTR',
      exitReason: KVM_EXIT_INTR,
      exitReasonName: 'KVM_EXIT_INTR',
      memoryFaultValid: false,
    });
    // Re-entered after a stray signal, the run gets a fresh budget and the watchdog ends it.
    const second = strayKickAfter(50);
    await new Promise((r) => second.once('online', r));
    const t1 = performance.now();
    expect(runSkippingIntr(vcpu)).toEqual(WATCHDOG_EINTR);
    const total = performance.now() - t1;
    expect(total).toBeGreaterThanOrEqual(400);
    expect(total).toBeLessThan(1500);
  });

  it('a vCPU worker’s run is watched too: EINTR with watchdog: true, no immediate_exit left behind', async () => {
    const { vcpu } = guest({ runTimeoutMs: 300 });
    vcpu.setProgram(spinner);
    const w = await worker(vcpu);
    const slots = runWatchdogStats().slotsInUse;
    const t0 = performance.now();
    const r = await w.run();
    expect(r).toEqual(WATCHDOG_EINTR);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(290);
    expect(vcpu.kvmRun.immediateExit).toBe(0);
    // A kick before the budget is spent is a plain kick, not the watchdog's.
    const again = w.run();
    await sleep(50);
    w.kick();
    const kicked = await again;
    expect(kicked).toMatchObject({ ret: -1, errno: 'EINTR' });
    expect(kicked.watchdog).toBeUndefined();
    expect(vcpu.kvmRun.immediateExit).toBe(0);
    // The worker's slot is freed with the worker.
    workers.splice(workers.indexOf(w), 1);
    await w.stop();
    await sleep(20);
    expect(runWatchdogStats().slotsInUse).toBe(slots - 1);
  });

  it('main thread and worker at once: each run is kicked by its own deadline, never the other’s', async () => {
    const a = guest({ runTimeoutMs: Number.POSITIVE_INFINITY });
    a.vcpu.setProgram(spinner);
    const w = await worker(a.vcpu);
    const b = guest({ runTimeoutMs: 300 });
    b.vcpu.setProgram(spinner);
    const inWorker = w.run();
    await sleep(20);
    // The main thread spins (blocked) while the worker spins too.
    expect(b.vcpu.run()).toEqual(WATCHDOG_EINTR);
    expect(w.running).toBe(true); // the main thread's watchdog signal did not reach the worker
    a.vcpu.runTimeoutMs = 200; // read at the start of the next run
    w.kick();
    const first = await inWorker;
    expect(first).toMatchObject({ ret: -1, errno: 'EINTR' });
    expect(first.watchdog).toBeUndefined();
    const t0 = performance.now();
    // Now the worker runs with a 200 ms budget while the main thread runs a guest that exits.
    const second = w.run();
    b.vcpu.setProgram(program((p) => p.sync(9)));
    expect(b.vcpu.run()).toMatchObject({ ret: 0, exitReason: KVM_EXIT_IO });
    expect(await second).toEqual(WATCHDOG_EINTR);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(190);
  });
});
