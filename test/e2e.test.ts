/**
 * End to end, every shipped scenario: it runs (on the model always, on /dev/kvm where this
 * machine has it) with its exits, guest-visible memory and counters as expected, and every run's
 * recorded trace replays identically on a fresh host of the same backend — through the trace
 * file's JSON, with the host's options carried in the trace (`meta.hostRequest`), as
 * `guestmem run --trace` / `guestmem replay` do it.
 *
 * On /dev/kvm a scenario the kernel cannot run (this host: no SW_PROTECTED VMs, no memory
 * attributes — docs/host-deviations.md) is skipped with the kernel's reason in the skip note.
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createRealHost, kvmDevicePath, realKvmAvailable } from '../src/host/index.js';
import {
  type Backend,
  getBackend,
  listScenarios,
  modelBackend,
  type RunReport,
  runScenario,
  type ScenarioReport,
} from '../src/vmm/index.js';
import {
  hostRequestOf,
  recordingBackend,
  replay,
  traceFromJson,
  traceOf,
  traceToJson,
} from '../src/vmm/trace.js';

const kvm = realKvmAvailable();
const names = listScenarios().map((s) => s.name);

function failures(r: ScenarioReport): string {
  const lines: string[] = [];
  for (const run of r.runs)
    for (const c of run.checks) if (!c.pass) lines.push(`${run.variant}: ${c.name}: ${c.detail}`);
  for (const c of r.checks) if (!c.pass) lines.push(`compare: ${c.name}: ${c.detail}`);
  return lines.join('\n');
}

/** Runs `name` on `backend` recording every host; replays each recording on a fresh host. */
async function recordAndReplay(name: string, backend: Backend): Promise<ScenarioReport> {
  const rec = recordingBackend(backend);
  const report = await runScenario(name, { hostFactory: rec.backend });
  // One host per run that got as far as asking for one (a run the kernel cannot do is skipped
  // after probing it: its trace is the probe).
  expect(rec.recordings.length).toBeGreaterThanOrEqual(
    report.runs.filter((r) => r.status !== 'skipped').length,
  );
  rec.recordings.forEach((recording, i) => {
    const trace = traceFromJson(traceToJson(traceOf(recording, { scenario: name })));
    expect(trace.calls.length).toBeGreaterThan(0);
    const fresh = backend.create(hostRequestOf(trace));
    try {
      const r = replay(trace, fresh.host);
      const what = r.ok
        ? 'identical'
        : `diverged at call ${r.index} (${r.call.method}): ${JSON.stringify(r.actual.out)}`;
      expect(`${name} host ${i + 1}: ${what}`).toBe(`${name} host ${i + 1}: identical`);
    } finally {
      fresh.host.dispose();
    }
  });
  return report;
}

/** Exits by reason of each scenario's runs on the model (the guest programs are fixed). */
const MODEL_EXITS: Record<string, Record<string, Record<string, number>>> = {
  'confidential-boot': {
    default: { KVM_EXIT_MMIO: 21, KVM_EXIT_HYPERCALL: 8, KVM_EXIT_IO: 3, KVM_EXIT_HLT: 1 },
  },
  'pci-scan': {
    allones: { KVM_EXIT_MMIO: 4, KVM_EXIT_IO: 1, KVM_EXIT_HLT: 1 },
    'readonly-ff': { KVM_EXIT_MMIO: 4, KVM_EXIT_IO: 1, KVM_EXIT_HLT: 1 },
    mmio: { KVM_EXIT_MMIO: 514, KVM_EXIT_IO: 1, KVM_EXIT_HLT: 1 },
  },
  'gmem-lifetimes': {
    'file-pins-vm-gmem-closed-first': { KVM_EXIT_IO: 1, KVM_EXIT_MEMORY_FAULT: 1 },
    'file-pins-vm-vm-closed-first': { KVM_EXIT_IO: 2, KVM_EXIT_HLT: 1 },
    'slot-pins-file-gmem-closed-first': { KVM_EXIT_IO: 2, KVM_EXIT_HLT: 1 },
    'slot-pins-file-vm-closed-first': { KVM_EXIT_IO: 2, KVM_EXIT_HLT: 1 },
  },
  'memfd-private': {
    default: { KVM_EXIT_MEMORY_FAULT: 5, KVM_EXIT_IO: 3, KVM_EXIT_HYPERCALL: 1, KVM_EXIT_HLT: 1 },
  },
  'dirty-tracking': { default: { KVM_EXIT_IO: 5, KVM_EXIT_HLT: 1 } },
};

/** What holds for every run that ran, on any backend. */
function commonChecks(run: RunReport): void {
  const sum = Object.values(run.exits).reduce((a, b) => a + b, 0);
  expect(run.totalExits).toBe(sum);
  expect(run.checks.length).toBeGreaterThan(0);
  expect(run.checks.filter((c) => !c.pass)).toEqual([]);
  expect(run.faults.memoryFaultExits).toBe(run.exits['KVM_EXIT_MEMORY_FAULT'] ?? 0);
  expect(run.faults.hypercallExits).toBe(run.exits['KVM_EXIT_HYPERCALL'] ?? 0);
}

describe('every scenario on the model: exits, memory, counters; record → replay', () => {
  it('covers the shipped scenarios', () => {
    expect(Object.keys(MODEL_EXITS).sort()).toEqual([...names].sort());
  });

  it.each(names)('%s', async (name) => {
    const r = await recordAndReplay(name, modelBackend);
    expect(r.status, failures(r)).toBe('pass');
    const expected = MODEL_EXITS[name] ?? {};
    expect(r.runs.map((x) => x.variant)).toEqual(Object.keys(expected));
    for (const run of r.runs) {
      commonChecks(run);
      expect(run.exits, run.variant).toEqual(expected[run.variant]);
      const m = run.model;
      if (m === null) throw new Error('no model counters on the model');
      // Notifier brackets balance; the model's fault counter saw every vCPU fault (and maybe pre-faults).
      expect(m.mmuNotifierStarts).toBe(m.mmuNotifierEnds);
      expect(m.kvmFaults).toBeGreaterThanOrEqual(m.vcpuFaults);
      expect(m.vcpuFaults).toBeGreaterThan(0);
      expect(m.zaps).toBeGreaterThanOrEqual(m.kvmInvalidations);
      expect(run.checks.find((c) => c.name.startsWith('host teardown'))?.pass).toBe(true);
    }
    // Memory contents the guest produced, per scenario.
    if (name === 'confidential-boot') expect(r.runs[0]?.devices?.serial).toBe('boot\ndone\n');
    if (name === 'pci-scan') {
      // The same config space bytes whichever way the holes were served.
      const digests = new Set(r.runs.map((x) => x.notes['scanDigest']));
      expect(digests.size).toBe(1);
    }
    if (name === 'dirty-tracking') expect(r.runs[0]?.notes['round2']).toEqual([1, 7, 100, 101, 102, 103]);
    if (name === 'memfd-private') expect(r.runs[0]?.model?.memfilePairing?.fallocates).toBe(5);
  });
});

describe.skipIf(!kvm.ok)(`every scenario on /dev/kvm${kvm.ok ? '' : ` (skipped: ${kvm.reason})`}`, () => {
  it.for(names)('%s: runs and replays, or is skipped with the kernel’s reason', async (name, ctx) => {
    const backend = await getBackend('kvm');
    const r = await recordAndReplay(name, backend);
    expect(r.backend).toBe('kvm');
    for (const run of r.runs) {
      if (run.status === 'skipped') {
        expect(run.skipReason).toMatch(/KVM_CAP_|only in the model|real kernel implements/);
        continue;
      }
      commonChecks(run);
      expect(run.model).toBeNull();
    }
    if (r.status === 'skipped') ctx.skip(`${name} on /dev/kvm: ${r.skipReason}`);
    expect(r.status, failures(r)).toBe('pass');
    if (name === 'pci-scan') expect(new Set(r.runs.map((x) => x.notes['scanDigest'])).size).toBe(1);
  });
});

describe.skipIf(process.platform !== 'linux' || process.arch !== 'x64')('GUESTMEM_KVM_DEVICE', () => {
  it('is the device the probe and the real host open (how the tests simulate a missing /dev/kvm)', () => {
    const saved = process.env['GUESTMEM_KVM_DEVICE'];
    const missing = join(tmpdir(), 'guestmem-no-such-kvm');
    try {
      delete process.env['GUESTMEM_KVM_DEVICE'];
      expect(kvmDevicePath()).toBe('/dev/kvm');
      process.env['GUESTMEM_KVM_DEVICE'] = missing;
      expect(kvmDevicePath()).toBe(missing);
      expect(realKvmAvailable()).toEqual({
        ok: false,
        reason: `${missing} does not exist (no KVM on this machine)`,
      });
      const host = createRealHost();
      try {
        expect(() => host.openKvm()).toThrow(/ENOENT/);
      } finally {
        host.dispose();
      }
    } finally {
      if (saved === undefined) delete process.env['GUESTMEM_KVM_DEVICE'];
      else process.env['GUESTMEM_KVM_DEVICE'] = saved;
    }
    expect(realKvmAvailable()).toEqual(kvm); // the probe of the real path again
  });
});
