/**
 * The VMM runtime (architecture §7): a small x86 machine over the `Host` interface, conversion
 * handling in QEMU's order with discard listeners, PCI holes served three ways, an MMIO bus with
 * a serial, PCI config space and a DMA device, and scenarios that run on the model or /dev/kvm.
 *
 *   const report = await runScenario('confidential-boot', { backend: 'model' });
 *   for (const s of listScenarios()) console.log(s.name, s.description);
 *
 * Declarative scenarios (YAML or JSON, schema.ts) run the same way:
 *   await runScenario(parseScenario(text, 'my.yaml'), { backend: 'kvm' });
 */

import type { ScenarioReport } from './report.js';
import type { RunOptions, Scenario } from './scenario.js';
import { runScenarioObject, ScenarioError } from './scenario.js';
import { DEFAULT_SCENARIO, SHIPPED_SCENARIOS } from './scenarios/index.js';

export {
  type Backend,
  type BackendHost,
  type BackendName,
  getBackend,
  type HostRequest,
  kvmBackend,
  modelBackend,
  requirementsUnmet,
} from './backends.js';
export { Bus, type BusDevice, type BusStats } from './bus.js';
export {
  type ConversionFailure,
  ConversionHandler,
  type ConversionRequest,
  type ConversionResult,
  type ConversionSource,
  type ConversionStats,
  type ConversionStep,
  type SharedDiscard,
} from './conversion.js';
export {
  DMA_REG,
  DMA_STATUS_DONE,
  DMA_STATUS_ERROR,
  DmaDevice,
  defaultPciFunctions,
  PciConfigSpace,
  type PciFunctionDef,
  SerialDevice,
} from './devices.js';
export { GuestBuilder, HC_EINVAL_U64, type MapPageSize } from './guest.js';
export {
  genericReadonlyFf,
  HOLE_STRATEGIES,
  type HoleReport,
  type HoleStrategy,
  type ReadonlyFfProvider,
} from './holes.js';
export * from './layout.js';
export {
  type GuestReport,
  Machine,
  type MachineConfig,
  MachineError,
  type MemoryMap,
  type MemorySpec,
  type PciSpec,
  type RamBackingChoice,
  type RunEnd,
  type RunLimits,
  type RunOutcome,
  type VmKind,
} from './machine.js';
export {
  type ListenerRegistration,
  type RamDiscardListener,
  RamDiscardManager,
  type RamRegion,
} from './ram.js';
export type { CheckResult, ModelCounters, NoteValue, RunReport, ScenarioReport, Status } from './report.js';
export {
  type Checks,
  defineScenario,
  type RunOptions,
  type RunProgress,
  type Scenario,
  type ScenarioContext,
  ScenarioError,
  type ScenarioVariant,
} from './scenario.js';
export { parseScenario, ScenarioValidationError, type ValidationIssue } from './schema.js';
export {
  checkTraceEventFile,
  KERNEL_TID,
  type SpanSink,
  type TraceEvent,
  type TraceEventFile,
  TraceEventRecorder,
  VCPU_TID_BASE,
  VMM_TID,
} from './trace_events.js';
export { DEFAULT_SCENARIO };

/** What `listScenarios` says about each shipped scenario. */
export interface ScenarioInfo {
  readonly name: string;
  readonly description: string;
  readonly vmType: string;
  readonly variants: readonly string[];
  /** Model only (with the reason), or runnable on both backends. */
  readonly modelOnly: string | null;
  readonly isDefault: boolean;
}

/** The shipped scenarios, the default first. */
export function listScenarios(): ScenarioInfo[] {
  return SHIPPED_SCENARIOS.map((s) => ({
    name: s.name,
    description: s.description,
    vmType: s.vmType,
    variants: (s.variants ?? []).map((v) => v.name),
    modelOnly: s.modelOnly?.reason ?? null,
    isDefault: s.name === DEFAULT_SCENARIO,
  }));
}

/** The shipped scenario called `name`; throws `ScenarioError` listing the names otherwise. */
export function getScenario(name: string): Scenario {
  const s = SHIPPED_SCENARIOS.find((x) => x.name === name);
  if (s === undefined) {
    throw new ScenarioError(
      `no scenario '${name}' (shipped: ${SHIPPED_SCENARIOS.map((x) => x.name).join(', ')})`,
    );
  }
  return s;
}

/**
 * Runs a shipped scenario by name, or any `Scenario` (from `defineScenario` or `parseScenario`),
 * on `options.backend` ('model' by default, or 'kvm'). Never rejects for a failing or skipped
 * scenario — the report says so; rejects for an unknown name or variant.
 */
export function runScenario(scenario: string | Scenario, options: RunOptions = {}): Promise<ScenarioReport> {
  try {
    const s = typeof scenario === 'string' ? getScenario(scenario) : scenario;
    return runScenarioObject(s, options);
  } catch (e) {
    return Promise.reject(e);
  }
}
