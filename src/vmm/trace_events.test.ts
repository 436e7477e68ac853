/**
 * The Chrome trace-event writer: a scenario's timeline is a well-formed trace-event file (every
 * B has its E, X durations ≥ 0, pids and tids named, timestamps monotonic per thread), and its
 * events agree with the run's report — KVM_RUN spans per exit reason, conversions, page faults,
 * invalidations and notifier calls — so the timeline shows what the counters count.
 */
import { describe, expect, it } from 'vitest';
import { runScenario } from './index.js';
import type { RunReport } from './report.js';
import {
  checkTraceEventFile,
  KERNEL_TID,
  type TraceEvent,
  TraceEventRecorder,
  VCPU_TID_BASE,
  VMM_TID,
} from './trace_events.js';

async function traced(name: string): Promise<{ run: RunReport; events: TraceEvent[]; file: unknown }> {
  const tracer = new TraceEventRecorder({ scenario: name });
  tracer.start();
  let report: Awaited<ReturnType<typeof runScenario>>;
  try {
    report = await runScenario(name, { backend: 'model', tracer });
  } finally {
    tracer.stop();
  }
  expect(report.status).toBe('pass');
  const run = report.runs[0];
  if (run === undefined) throw new Error('no run');
  const file: unknown = JSON.parse(tracer.toJson());
  return { run, events: (file as { traceEvents: TraceEvent[] }).traceEvents, file };
}

/** Events of the run proper: before the machine's teardown (the vCPU fd's close) began. */
function beforeTeardown(events: readonly TraceEvent[]): TraceEvent[] {
  const cut =
    events.find((e) => e.name === 'close' && e.tid >= VCPU_TID_BASE)?.ts ?? Number.POSITIVE_INFINITY;
  return events.filter((e) => e.ts < cut);
}

const count = (events: readonly TraceEvent[], pred: (e: TraceEvent) => boolean): number =>
  events.filter(pred).length;

describe('trace events of a scenario (model)', () => {
  it('confidential-boot: a well-formed file whose events match the report', async () => {
    const { run, events, file } = await traced('confidential-boot');
    expect(checkTraceEventFile(file)).toEqual([]);
    expect(file).toMatchObject({ displayTimeUnit: 'ns', metadata: { scenario: 'confidential-boot' } });
    // One process, named; the VMM, kernel and vCPU 0 threads, named.
    const names = events
      .filter((e) => e.ph === 'M')
      .map((e) => `${e.name}:${e.tid}:${e.args?.['name'] ?? ''}`);
    expect(names).toEqual(
      expect.arrayContaining([
        'process_name:0:model: confidential-boot / default',
        `thread_name:${VMM_TID}:VMM`,
        `thread_name:${KERNEL_TID}:kernel (model tracepoints)`,
        `thread_name:${VCPU_TID_BASE}:vCPU 0`,
      ]),
    );
    // One KVM_RUN span per exit, on the vCPU's thread, with its exit reason.
    const runs = events.filter((e) => e.name === 'KVM_RUN');
    expect(runs.every((e) => e.ph === 'X' && e.tid === VCPU_TID_BASE)).toBe(true);
    const byReason: Record<string, number> = {};
    for (const e of runs)
      byReason[String(e.args?.['exit_reason'])] = (byReason[String(e.args?.['exit_reason'])] ?? 0) + 1;
    expect(byReason).toEqual(run.exits);
    expect(count(events, (e) => e.name === 'kvm_hypercall')).toBe(run.exits['KVM_EXIT_HYPERCALL']);
    // Every page fault the vCPU took, with gfn, private/shared, level and outcome.
    const faults = events.filter((e) => e.name === 'kvm_page_fault');
    expect(faults).toHaveLength(run.model?.vcpuFaults ?? -1);
    expect(faults.some((e) => e.args?.['private'] === true)).toBe(true);
    expect(
      faults.every((e) => typeof e.args?.['gfn'] === 'number' && typeof e.args?.['level'] === 'number'),
    ).toBe(true);
    // Conversions: one span each, the QEMU-order steps nested inside.
    const ended = events.filter((e) => e.ph === 'E' && e.name.startsWith('convert to'));
    expect(count(ended, (e) => e.args?.['ok'] === true)).toBe(
      run.conversions.toPrivate + run.conversions.toShared,
    );
    const refusedInSpan = count(ended, (e) => e.args?.['ok'] === false);
    expect(refusedInSpan).toBeLessThanOrEqual(run.conversions.failed);
    expect(count(events, (e) => e.name === 'conversion refused')).toBe(run.conversions.failed);
    const first = events.findIndex((e) => e.ph === 'B' && e.name === 'convert to private');
    const steps = events
      .slice(first + 1)
      .filter((e) => e.tid === VMM_TID && (e.ph === 'B' || e.ph === 'E'))
      .slice(0, 6)
      .map((e) => `${e.ph} ${e.name}`);
    expect(steps).toEqual([
      'B 1. set attributes',
      'E 1. set attributes',
      'B 2. discard listeners',
      'E 2. discard listeners',
      'B 3. discard shared',
      'E 3. discard shared',
    ]);
    // Invalidations and notifier calls, up to the teardown (the report's counters stop there).
    const live = beforeTeardown(events);
    expect(count(live, (e) => e.ph === 'B' && e.name === 'kvm_mmu_invalidate')).toBe(
      run.model?.kvmInvalidations,
    );
    expect(count(live, (e) => e.ph === 'B' && e.name === 'mmu_notifier_invalidate_range')).toBe(
      run.model?.mmuNotifierStarts,
    );
    const zapped = live
      .filter((e) => e.ph === 'E' && e.name === 'kvm_mmu_invalidate')
      .reduce((n, e) => n + Number(e.args?.['sptesZapped'] ?? 0), 0);
    expect(zapped).toBeGreaterThan(0);
    expect(zapped).toBeLessThanOrEqual(run.model?.zappedSptes ?? 0);
    // Memslot updates: the ioctl on the VMM thread and the model's tracepoint on the kernel's.
    expect(
      count(events, (e) => e.name === 'KVM_SET_USER_MEMORY_REGION2' && e.tid === VMM_TID),
    ).toBeGreaterThan(0);
    expect(
      count(events, (e) => e.name === 'kvm_set_user_memory_region' && e.tid === KERNEL_TID),
    ).toBeGreaterThan(0);
  });

  it('memfd-private: one KVM_EXIT_MEMORY_FAULT span per memory-fault exit; memfile_notifier calls', async () => {
    const { run, events, file } = await traced('memfd-private');
    expect(checkTraceEventFile(file)).toEqual([]);
    const mf = count(
      events,
      (e) => e.name === 'KVM_RUN' && e.args?.['exit_reason'] === 'KVM_EXIT_MEMORY_FAULT',
    );
    expect(mf).toBe(run.faults.memoryFaultExits);
    expect(mf).toBe(5);
    expect(count(events, (e) => e.name === 'KVM_RUN' && e.args?.['errno'] === 'EFAULT')).toBe(5);
    const live = beforeTeardown(events);
    expect(count(live, (e) => e.name === 'memfile_notifier_invalidate' && e.args?.['consumers'] === 1)).toBe(
      run.model?.memfilePairing?.invalidates,
    );
    expect(count(live, (e) => e.name === 'memfile_notifier_fallocate' && e.args?.['consumers'] === 1)).toBe(
      run.model?.memfilePairing?.fallocates,
    );
  });

  it('pci-scan: one process per variant, each well-formed', async () => {
    const tracer = new TraceEventRecorder();
    tracer.start();
    const r = await runScenario('pci-scan', { backend: 'model', tracer });
    tracer.stop();
    const file: unknown = JSON.parse(tracer.toJson());
    expect(checkTraceEventFile(file)).toEqual([]);
    const procs = tracer.traceEvents.filter((e) => e.name === 'process_name').map((e) => e.args?.['name']);
    expect(procs).toEqual(r.runs.map((x) => `model: pci-scan / ${x.variant}`));
    const mmio = tracer.traceEvents.filter(
      (e) => e.name === 'KVM_RUN' && e.args?.['exit_reason'] === 'KVM_EXIT_MMIO',
    );
    expect(mmio).toHaveLength(r.runs.reduce((n, x) => n + (x.exits['KVM_EXIT_MMIO'] ?? 0), 0));
  });

  it('the checker finds what is wrong', () => {
    const ev = (e: Partial<TraceEvent>): TraceEvent => ({ name: 'x', ph: 'i', ts: 1, pid: 1, tid: 1, ...e });
    const named = [
      ev({ name: 'process_name', ph: 'M', ts: 0, tid: 0 }),
      ev({ name: 'thread_name', ph: 'M', ts: 0 }),
    ];
    const file = (events: TraceEvent[]) => ({
      traceEvents: [...named, ...events],
      displayTimeUnit: 'ns',
      metadata: {},
    });
    expect(checkTraceEventFile(file([ev({ ph: 'B' })]))).toEqual(["B 'x' on 1:1 has no E"]);
    expect(checkTraceEventFile(file([ev({ ph: 'E' })]))[0]).toMatch(/E without an open B/);
    expect(checkTraceEventFile(file([ev({ ph: 'X', dur: -1 })]))[0]).toMatch(/X without dur/);
    expect(checkTraceEventFile(file([ev({ ts: 5 }), ev({ ts: 4 })]))[0]).toMatch(
      /before the thread's previous/,
    );
    expect(checkTraceEventFile(file([ev({ tid: 7 })]))).toEqual(['thread 1:7 has no thread_name']);
  });
});
