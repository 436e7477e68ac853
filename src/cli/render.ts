/**
 * Renders scenario reports for people: a short block per run that reads at a glance — status,
 * the memory map, exits by reason, faults, conversions, zaps and notifier calls, memory used,
 * time — and the checks that failed.
 */
import type { CheckResult, RunReport, ScenarioReport } from '../vmm/index.js';

const KiB = 1024;
function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return '–';
  if (n >= KiB * KiB * KiB) return `${(n / KiB ** 3).toFixed(2)} GiB`;
  if (n >= KiB * KiB) return `${(n / KiB ** 2).toFixed(1)} MiB`;
  if (n >= KiB) return `${(n / KiB).toFixed(0)} KiB`;
  return `${n} B`;
}
const hex = (n: number): string => `0x${n.toString(16)}`;

function checksLine(checks: readonly CheckResult[]): string {
  const failed = checks.filter((c) => !c.pass);
  return failed.length === 0
    ? `${checks.length} checks passed`
    : `${failed.length} of ${checks.length} checks FAILED`;
}

export function renderRun(r: RunReport): string[] {
  const out: string[] = [];
  out.push(
    `  ▸ ${r.variant}: ${r.status.toUpperCase()}${r.skipReason ? ` (${r.skipReason})` : ''}  ${r.timeMs.toFixed(1)} ms`,
  );
  if (r.status === 'skipped') return out;
  const map = r.memoryMap;
  if (map) {
    out.push(`    memory map (${map.vmType}${map.hasPrivateMem ? ', private memory' : ''}):`);
    for (const m of map.layout) {
      const ram = map.ram.find((x) => x.gpa === m.gpa);
      const back = ram
        ? ` slot ${ram.slot}, ${ram.shared}${ram.private ? ` + ${ram.private}` : ''}${ram.slotFlags.length ? ` [${ram.slotFlags.join('|')}]` : ''}`
        : '';
      out.push(
        `      ${hex(m.gpa).padStart(12)} +${bytes(m.size).padEnd(10)} ${m.kind.padEnd(8)} ${m.name}${back}`,
      );
    }
    if (map.privateRanges.length > 0) {
      out.push(
        `      private: ${map.privateRanges.map((p) => `[${hex(p.gpa)}, +${bytes(p.size)})`).join(' ')}`,
      );
    }
    if (map.pci.length > 0) out.push(`      PCI: ${map.pci.map((p) => `${p.bdf} ${p.name}`).join(', ')}`);
  }
  const exits = Object.entries(r.exits)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k.replace('KVM_EXIT_', '')} ${v}`)
    .join(', ');
  out.push(`    exits: ${r.totalExits} (${exits || 'none'})`);
  out.push(`    memory-fault exits ${r.faults.memoryFaultExits}, hypercall exits ${r.faults.hypercallExits}`);
  const c = r.conversions as unknown as Record<string, number | unknown>;
  const conv = Object.entries(c)
    .filter(([k, v]) => typeof v === 'number' && k !== 'failures')
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
  out.push(
    `    conversions: ${conv}${r.conversions.failures.length ? `, refused ${r.conversions.failures.length}` : ''}`,
  );
  out.push(
    `    discard listeners ${r.discard.listeners}: ${r.discard.discards} discards (${bytes(r.discard.discardedBytes)}), ${r.discard.populates} populates`,
  );
  if (r.holes) {
    const fell =
      r.holes.used !== r.holes.requested
        ? ` (asked ${r.holes.requested}: ${r.holes.fallbacks.join('; ')})`
        : '';
    out.push(
      `    PCI holes: ${r.holes.used}${fell} — ECAM exits ${r.holes.ecamExits.present} present / ${r.holes.ecamExits.absent} absent, host memory ${bytes(r.holes.hostMemoryBytes)}`,
    );
  }
  if (r.model) {
    const m = r.model;
    out.push(
      `    KVM (model): ${m.kvmFaults} faults (${m.faultRetries} retries), ${m.zaps} zaps of ${m.zappedSptes} SPTEs, ${m.kvmInvalidations} invalidations`,
    );
    out.push(
      `    notifiers: mmu ${m.mmuNotifierStarts}/${m.mmuNotifierEnds} start/end${m.memfilePairing ? `, memfile ${m.memfilePairing.invalidates} invalidate / ${m.memfilePairing.fallocates} fallocate` : ''}; attributes ${m.attributeChanges}/${m.attributeCalls} changed/calls`,
    );
    out.push(`    host frames in use: ${bytes(m.hostFramesBytes)}; guest instructions ${m.vcpuInstructions}`);
  }
  if (r.devices?.serial) out.push(`    serial: ${JSON.stringify(r.devices.serial.slice(0, 200))}`);
  out.push(`    ${checksLine(r.checks)}`);
  for (const f of r.checks.filter((x) => !x.pass)) out.push(`      ✗ ${f.name}: ${f.detail}`);
  return out;
}

export function renderReport(rep: ScenarioReport): string {
  const lines = [
    `${rep.scenario} on ${rep.backend === 'model' ? 'the model' : 'the real /dev/kvm'} — ${rep.status.toUpperCase()}${rep.skipReason ? ` (${rep.skipReason})` : ''} in ${rep.timeMs.toFixed(1)} ms`,
    `  ${rep.description}`,
  ];
  for (const r of rep.runs) lines.push(...renderRun(r));
  if (rep.checks.length > 0) {
    lines.push(`  scenario: ${checksLine(rep.checks)}`);
    for (const f of rep.checks.filter((x) => !x.pass)) lines.push(`    ✗ ${f.name}: ${f.detail}`);
  }
  return lines.join('\n');
}
