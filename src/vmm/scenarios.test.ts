// End-to-end runs of every shipped scenario: on the model always, on /dev/kvm when this machine
// has it (a scenario needing what the kernel lacks must come back "skipped" with the reason,
// never failed). Assertions are on the reports: exits, memory contents seen by the checks,
// conversion and discard counters, model counters.
import { describe, expect, it } from 'vitest';
import { realKvmAvailable } from '../host/index.js';
import { listScenarios, runScenario, type ScenarioReport } from './index.js';

const kvm = realKvmAvailable();

function failures(r: ScenarioReport): string {
  const lines: string[] = [];
  for (const run of r.runs) {
    for (const c of run.checks) if (!c.pass) lines.push(`${run.variant}: ${c.name}: ${c.detail}`);
  }
  for (const c of r.checks) if (!c.pass) lines.push(`compare: ${c.name}: ${c.detail}`);
  return lines.join('\n');
}

describe('listScenarios', () => {
  it('lists the five shipped scenarios, confidential-boot first and default', () => {
    const list = listScenarios();
    expect(list.map((s) => s.name)).toEqual([
      'confidential-boot',
      'pci-scan',
      'gmem-lifetimes',
      'memfd-private',
      'dirty-tracking',
    ]);
    expect(list.filter((s) => s.isDefault).map((s) => s.name)).toEqual(['confidential-boot']);
    expect(list.find((s) => s.name === 'pci-scan')?.variants).toEqual(['allones', 'readonly-ff', 'mmio']);
    expect(list.find((s) => s.name === 'gmem-lifetimes')?.modelOnly).toMatch(/only in the model/);
  });

  it('an unknown scenario or variant is an error naming the choices', async () => {
    await expect(runScenario('no-such-thing')).rejects.toThrow(
      /no scenario 'no-such-thing' \(shipped: confidential-boot/,
    );
    await expect(runScenario('pci-scan', { variants: ['nope'] })).rejects.toThrow(
      /pci-scan has no variant 'nope' \(it has allones, readonly-ff, mmio\)/,
    );
  });
});

describe('on the model', () => {
  it('confidential-boot: accept, bounce-buffer DMA, PCI scan, unshare, refused conversions, punch', async () => {
    const r = await runScenario('confidential-boot', { backend: 'model' });
    expect(r.status, failures(r)).toBe('pass');
    const run = r.runs[0];
    if (run === undefined) throw new Error('no run');
    expect(run.outcome?.end).toBe('halt');
    expect(run.exits['KVM_EXIT_HYPERCALL']).toBe(8);
    expect(run.exits['KVM_EXIT_HLT']).toBe(1);
    expect(run.devices?.serial).toBe('boot\ndone\n');
    expect(run.conversions).toMatchObject({ toPrivate: 3, toShared: 2, failed: 3 });
    expect(run.conversions.failures.map((f) => f.reason)).toEqual([
      expect.stringMatching(/is not inside one RAM region the VMM owns \(0xe0000000 is PCIe ECAM/),
      expect.stringMatching(/is not aligned to its page size 0x200000/),
      expect.stringMatching(
        /is not inside one RAM region the VMM owns \(0x800000 is not backed by anything\)/,
      ),
    ]);
    // Listeners were told exactly: accept low + high, bounce back (discard); bounce, high release (populate).
    expect(run.discard).toMatchObject({ listeners: 1, discards: 3, populates: 2 });
    expect(run.devices?.dma).toMatchObject({ transfers: 1, refused: 1, mappingsDropped: 1, discardCalls: 3 });
    expect(run.devices?.dma.lastError).toMatch(/private memory/);
    // The model saw zaps (attribute changes, punches) and MMU-notifier brackets (shared discards).
    expect(run.model?.zaps).toBeGreaterThan(0);
    expect(run.model?.mmuNotifierStarts).toBeGreaterThan(0);
    expect(run.model?.mmuNotifierStarts).toBe(run.model?.mmuNotifierEnds);
    expect(run.memoryMap?.ram.map((x) => [x.name, x.shared, x.private])).toEqual([
      ['low', 'memfd', 'guest_memfd'],
      ['high', 'memfd', 'guest_memfd'],
    ]);
    const highPrivate = run.memory?.backings.find((b) => b.region === 'high' && b.side === 'private');
    // st_blocks of a guest_memfd says nothing (always 0, as upstream); the model's page cache does.
    expect(highPrivate?.allocatedBytes).toBe(0);
    expect(highPrivate?.residentBytes).toBe(0);
    expect(run.notes['highPrivateBytesBeforeRelease']).toBe(64 * 1024);
    const lowPrivate = run.memory?.backings.find((b) => b.region === 'low' && b.side === 'private');
    // The secret and its private copy; the bounce buffer was never written while private.
    expect(lowPrivate?.residentBytes).toBe(2 * 4096);
    expect(highPrivate?.model?.punches).toBeGreaterThan(0);
    expect(run.checks.find((c) => c.name.startsWith('host teardown'))?.pass).toBe(true);
    // The report is plain JSON (no bigint, no class instances): it survives a round trip.
    expect(JSON.parse(JSON.stringify(r))).toEqual(r);
  });

  it('pci-scan: the three hole strategies agree; only MMIO pays an exit per absent function', async () => {
    const r = await runScenario('pci-scan', { backend: 'model' });
    expect(r.status, failures(r)).toBe('pass');
    const by = (v: string) => r.runs.find((x) => x.variant === v);
    expect(by('allones')?.holes?.used).toBe('allones');
    expect(by('readonly-ff')?.holes?.used).toBe('readonly-ff');
    expect(by('mmio')?.holes?.used).toBe('mmio');
    expect(by('mmio')?.holes?.ecamExits).toEqual({ present: 3, absent: 511 });
    expect(by('allones')?.holes?.ecamExits).toEqual({ present: 3, absent: 1 });
    expect(by('readonly-ff')?.holes?.hostMemoryBytes).toBe(64 * 1024);
    expect(by('readonly-ff')?.holes?.mappings).toBeGreaterThan(4000);
    expect(by('allones')?.holes?.hostMemoryBytes).toBe(0);
    expect(r.checks.map((c) => c.pass)).toEqual([true, true]);
  });

  it('gmem-lifetimes: both designs, both teardown orders', async () => {
    const r = await runScenario('gmem-lifetimes', { backend: 'model' });
    expect(r.status, failures(r)).toBe('pass');
    const by = (v: string) => r.runs.find((x) => x.variant === v);
    const broken = by('file-pins-vm-gmem-closed-first');
    expect(broken?.outcome).toMatchObject({
      end: 'memory-fault',
      errno: 'EFAULT',
      memoryFault: { gpa: 2 ** 32 },
    });
    expect(broken?.exits['KVM_EXIT_MEMORY_FAULT']).toBe(1);
    expect(by('slot-pins-file-gmem-closed-first')?.outcome?.end).toBe('halt');
    expect(by('file-pins-vm-vm-closed-first')?.notes['destroyedAfterVmClose']).toBe(false);
    expect(by('slot-pins-file-vm-closed-first')?.notes['destroyedAfterVmClose']).toBe(true);
  });

  it('memfd-private: lazy private faults, memfile_notifier punches, the presence rule', async () => {
    const r = await runScenario('memfd-private', { backend: 'model' });
    expect(r.status, failures(r)).toBe('pass');
    const run = r.runs[0];
    expect(run?.faults.memoryFaultExits).toBe(5);
    expect(run?.conversions.bySource).toEqual({ 'memory-fault': 5, hypercall: 1, vmm: 1 });
    expect(run?.model?.memfilePairing).toMatchObject({ fallocates: 5, invalidates: 2 });
    const priv = run?.memory?.backings.find((b) => b.side === 'private');
    expect(priv).toMatchObject({ kind: 'private-memfd', allocatedBytes: 3 * 4096 });
  });

  it('dirty-tracking: each log names exactly the pages written since the last', async () => {
    const r = await runScenario('dirty-tracking', { backend: 'model' });
    expect(r.status, failures(r)).toBe('pass');
    const notes = r.runs[0]?.notes ?? {};
    expect(notes['round1']).toEqual([0, 1, 5]);
    expect(notes['round3']).toEqual([]);
    expect(notes['round4']).toEqual([200, 201, 202, 203, 204, 205, 206, 207]);
    expect(r.runs[0]?.memoryMap?.ram.find((x) => x.name === 'high')?.slotFlags).toEqual([
      'KVM_MEM_LOG_DIRTY_PAGES',
    ]);
  });
});

describe.skipIf(!kvm.ok)(`on /dev/kvm${kvm.ok ? '' : ` (skipped: ${kvm.reason})`}`, () => {
  it('pci-scan runs all three strategies; allones falls back to the read-only 0xff slots', async () => {
    const r = await runScenario('pci-scan', { backend: 'kvm' });
    expect(r.backend).toBe('kvm');
    expect(r.status, failures(r)).toBe('pass');
    const allones = r.runs.find((x) => x.variant === 'allones');
    expect(allones?.holes?.used).toBe('readonly-ff');
    expect(allones?.holes?.fallbacks[0]).toMatch(/KVM_CAP_GUESTMEM_ALLONES is 0/);
    expect(r.runs.find((x) => x.variant === 'mmio')?.exits['KVM_EXIT_MMIO']).toBe(514);
    expect(allones?.model).toBeNull(); // nothing of the model's introspection on the real kernel
  });

  it('dirty-tracking passes on the real kernel', async () => {
    const r = await runScenario('dirty-tracking', { backend: 'kvm' });
    expect(r.status, failures(r)).toBe('pass');
    expect(r.runs[0]?.notes['round2']).toEqual([1, 7, 100, 101, 102, 103]);
  });

  it.each(['confidential-boot', 'memfd-private'])(
    '%s: runs, or is skipped naming what the kernel lacks',
    async (name) => {
      const r = await runScenario(name, { backend: 'kvm' });
      if (r.status === 'skipped') {
        expect(r.skipReason).toMatch(
          /KVM_CAP_VM_TYPES|KVM_CAP_MEMORY_ATTRIBUTES|KVM_CAP_EXIT_HYPERCALL|KVM_CAP_GUESTMEM/,
        );
      } else {
        expect(r.status, failures(r)).toBe('pass');
      }
    },
  );

  it('gmem-lifetimes is skipped with its reason', async () => {
    const r = await runScenario('gmem-lifetimes', { backend: 'kvm' });
    expect(r.status).toBe('skipped');
    expect(r.skipReason).toMatch(/only in the model/);
    expect(r.runs).toHaveLength(4);
  });
});
