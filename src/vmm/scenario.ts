/**
 * Scenarios: a guest program plus the VMM's actions around it, run on a fresh host and machine
 * per variant, ending in a `ScenarioReport`.
 *
 *   defineScenario({
 *     name, description, vmType, memory,
 *     guest: (b) => b.print('hi\n').sync(1).halt(),
 *     on: { sync: (tag, ctx) => … },
 *     check: (ctx) => ctx.check('serial', ctx.serial === 'hi\n'),
 *   })
 *
 * A scenario may list `variants` (the same guest on differently configured machines, e.g. the
 * three hole strategies) and a `compare` over their reports. Each run:
 *   1. asks the backend for a host (`HostRequest`); a backend or kernel lacking what the run needs
 *      (SW_PROTECTED VMs, attributes, hypercall exits, a model-only option) makes the run
 *      "skipped: <reason>", never failed;
 *   2. builds the machine, the guest program, runs `setup`;
 *   3. runs the vCPU to its end, calling `on.sync` at each sync point;
 *   4. checks: the run ended as expected (default: the guest halted), the guest's own `cmp`s all
 *      matched (no report-port exits), then the scenario's `check`; on the model, the host
 *      teardown must leave no frame, fd or mapping behind.
 */

import type { Host } from '../core/api.js';
import type { ModelHost } from '../core/host.js';
import {
  type Backend,
  type BackendName,
  getBackend,
  type HostRequest,
  requirementsUnmet,
} from './backends.js';
import { GuestBuilder } from './guest.js';
import type { MachineLayout } from './layout.js';
import {
  Machine,
  type MachineConfig,
  type MemorySpec,
  type PciSpec,
  type RunEnd,
  type RunLimits,
  type RunOutcome,
  type VmKind,
} from './machine.js';
import {
  type CheckResult,
  collectRun,
  emptyRun,
  type NoteValue,
  type RunReport,
  type ScenarioReport,
  type Status,
} from './report.js';
import { type TraceEventRecorder, VMM_TID } from './trace_events.js';

/** One configuration of a scenario's machine; unset fields come from the scenario. */
export interface ScenarioVariant {
  readonly name: string;
  readonly description?: string;
  readonly vmType?: VmKind;
  readonly memory?: Partial<MemorySpec>;
  readonly pci?: PciSpec;
  readonly host?: HostRequest;
}

/** What scenario code sees during a run. */
export interface ScenarioContext {
  readonly scenario: string;
  readonly variant: string;
  readonly backend: BackendName;
  readonly host: Host;
  /** The host when it is the model (for introspection), else null. */
  readonly model: ModelHost | null;
  readonly machine: Machine;
  readonly layout: MachineLayout;
  /** How the run ended (null until it has). */
  readonly outcome: RunOutcome | null;
  /** What the guest wrote to the serial so far. */
  readonly serial: string;
  /** Records a check; returns `pass`. */
  check(name: string, pass: boolean, detail?: string): boolean;
  /** Records a check that `actual` equals `expected` (structurally, as JSON). */
  expectEqual(name: string, actual: NoteValue, expected: NoteValue): boolean;
  /** Adds a value to the run's report (and keeps it for later handlers). */
  note(key: string, value: NoteValue): void;
  readonly notes: Readonly<Record<string, NoteValue>>;
}

/** Checks across runs (`compare`). */
export interface Checks {
  check(name: string, pass: boolean, detail?: string): boolean;
}

export interface Scenario {
  /** kebab-case, unique among the shipped scenarios. */
  readonly name: string;
  readonly description: string;
  readonly vmType: VmKind;
  readonly memory: MemorySpec;
  readonly pci?: PciSpec;
  readonly host?: HostRequest;
  readonly variants?: readonly ScenarioVariant[];
  /** Builds the guest program (the machine's layout is `b.layout`). */
  readonly guest: (b: GuestBuilder, ctx: ScenarioContext) => void;
  /** VMM actions before the vCPU first runs. */
  readonly setup?: (ctx: ScenarioContext) => void | Promise<void>;
  readonly on?: { readonly sync?: (tag: number, ctx: ScenarioContext) => void | Promise<void> };
  /** Checks after the run (the machine is still up). */
  readonly check?: (ctx: ScenarioContext) => void | Promise<void>;
  /** Checks across the runs of all variants (runs that were skipped are included, marked). */
  readonly compare?: (runs: readonly RunReport[], c: Checks) => void;
  /** How the run must end (default 'halt'), per variant if a function. */
  readonly expectOutcome?: RunEnd | ((variant: string) => RunEnd);
  readonly limits?: RunLimits;
  /**
   * Set when the scenario observes what only the model shows (e.g. a VM's destruction): on
   * another backend every run is skipped with `reason`.
   */
  readonly modelOnly?: { readonly reason: string };
}

export class ScenarioError extends Error {
  override readonly name = 'ScenarioError';
}

const NAME_RE = /^[a-z0-9]+(-[a-z0-9]+)*$/;

/** Checks a scenario's shape and returns it (frozen). */
export function defineScenario(s: Scenario): Scenario {
  if (!NAME_RE.test(s.name)) throw new ScenarioError(`scenario name '${s.name}' is not kebab-case`);
  const names = new Set<string>();
  for (const v of s.variants ?? []) {
    if (!NAME_RE.test(v.name))
      throw new ScenarioError(`${s.name}: variant name '${v.name}' is not kebab-case`);
    if (names.has(v.name)) throw new ScenarioError(`${s.name}: variant '${v.name}' is defined twice`);
    names.add(v.name);
  }
  return Object.freeze({ ...s });
}

/** Options of `runScenarioObject` / `runScenario`. */
export interface RunOptions {
  /** 'model' (default) or 'kvm' (the real /dev/kvm). */
  readonly backend?: BackendName;
  /** A backend of your own (e.g. a recording wrapper); overrides `backend`. */
  readonly hostFactory?: Backend;
  /** Run only these variants (by name). */
  readonly variants?: readonly string[];
  readonly limits?: RunLimits;
  /**
   * Chrome trace events (`--trace-events`): each run becomes a process of `tracer`, its host
   * wrapped so every call is on the timeline. The caller starts and stops the recorder.
   */
  readonly tracer?: TraceEventRecorder;
  /** Called as runs start and end (progress display): `done` of `total` runs finished. */
  readonly onProgress?: (p: RunProgress) => void;
}

/** Where a scenario run is (for `RunOptions.onProgress`). */
export interface RunProgress {
  readonly scenario: string;
  readonly variant: string;
  /** Runs finished so far. */
  readonly done: number;
  readonly total: number;
  /** What just happened in the current run. */
  readonly phase: 'start' | 'sync' | 'end';
  /** The sync tag, for 'sync'. */
  readonly tag?: number;
}

interface ResolvedRun {
  readonly name: string;
  readonly description: string;
  readonly vmType: VmKind;
  readonly memory: MemorySpec;
  readonly pci: PciSpec;
  readonly host: HostRequest;
}

function resolveRuns(s: Scenario): ResolvedRun[] {
  const variants = s.variants && s.variants.length > 0 ? s.variants : [{ name: 'default' }];
  return variants.map((v) => ({
    name: v.name,
    description: v.description ?? s.description,
    vmType: v.vmType ?? s.vmType,
    memory: { ...s.memory, ...v.memory },
    pci: { ...s.pci, ...v.pci },
    host: {
      ...s.host,
      ...v.host,
      ...(s.host?.extensions || v.host?.extensions
        ? { extensions: { ...s.host?.extensions, ...v.host?.extensions } }
        : {}),
    },
  }));
}

function errText(e: unknown): string {
  return e instanceof Error ? `${e.name}: ${e.message}` : String(e);
}

function json(v: NoteValue): string {
  return JSON.stringify(v);
}

async function runOne(
  s: Scenario,
  run: ResolvedRun,
  backend: Backend,
  limits: RunLimits,
  tracer: TraceEventRecorder | undefined,
  onSyncPoint: (tag: number) => void,
): Promise<RunReport> {
  const t0 = performance.now();
  const skip = (reason: string): RunReport =>
    emptyRun(run.name, run.description, 'skipped', { skipReason: reason, timeMs: performance.now() - t0 });
  if (s.modelOnly !== undefined && backend.name !== 'model') return skip(s.modelOnly.reason);
  const down = backend.unavailable();
  if (down !== null) return skip(`${backend.name} backend unavailable: ${down}`);
  const unsupported = backend.unsupported(run.host);
  if (unsupported !== null) return skip(unsupported);

  const made = backend.create(run.host);
  tracer?.beginProcess(`${backend.name}: ${s.name} / ${run.name}`);
  const bh = tracer === undefined ? made : { ...made, host: tracer.wrapHost(made.host) };
  const checks: CheckResult[] = [];
  const notes: Record<string, NoteValue> = {};
  const record = (name: string, pass: boolean, detail = ''): boolean => {
    checks.push({ name, pass, detail });
    return pass;
  };
  let machine: Machine | null = null;
  try {
    let unmet: string | null;
    try {
      unmet = requirementsUnmet(bh.host, run.vmType, run.host);
    } catch (e) {
      unmet = `probing the backend failed: ${errText(e)}`;
    }
    if (unmet !== null) return skip(unmet);

    const config: MachineConfig = {
      vmType: run.vmType,
      memory: run.memory,
      pci: run.pci,
      ...(bh.readonlyFf === undefined ? {} : { readonlyFf: bh.readonlyFf }),
      ...(tracer === undefined ? {} : { tracer }),
    };
    try {
      machine = Machine.create(bh.host, config);
    } catch (e) {
      return emptyRun(run.name, run.description, 'fail', {
        checks: [{ name: 'machine setup', pass: false, detail: errText(e) }],
        timeMs: performance.now() - t0,
      });
    }
    const m = machine;
    let outcome: RunOutcome | null = null;
    const ctx: ScenarioContext = {
      scenario: s.name,
      variant: run.name,
      backend: backend.name,
      host: bh.host,
      model: bh.model,
      machine: m,
      layout: m.layout,
      get outcome() {
        return outcome;
      },
      get serial() {
        return m.serial.text;
      },
      check: record,
      expectEqual: (name, actual, expected) =>
        record(name, json(actual) === json(expected), `actual ${json(actual)}, expected ${json(expected)}`),
      note(key, value) {
        notes[key] = value;
      },
      notes,
    };

    try {
      const b = new GuestBuilder(m.layout);
      s.guest(b, ctx);
      m.loadProgram(b.build());
      await s.setup?.(ctx);
      const onSync = s.on?.sync;
      const sync = async (tag: number): Promise<void> => {
        onSyncPoint(tag);
        tracer?.begin(VMM_TID, `sync ${tag}`, 'scenario');
        try {
          await onSync?.(tag, ctx);
        } finally {
          tracer?.end(VMM_TID);
        }
      };
      outcome = await m.run(
        { sync },
        {
          ...s.limits,
          ...limits,
        },
      );
    } catch (e) {
      outcome = { end: 'error', detail: `the VMM failed: ${errText(e)}` };
    }
    const want =
      typeof s.expectOutcome === 'function' ? s.expectOutcome(run.name) : (s.expectOutcome ?? 'halt');
    record(`the run ends: ${want}`, outcome.end === want, `${outcome.end}: ${outcome.detail}`);
    record(
      "the guest's own checks passed (no report-port exits)",
      m.guestReports.length === 0,
      m.guestReports.map((r) => `tag ${r.tag} found ${r.value}`).join('; '),
    );
    try {
      await s.check?.(ctx);
    } catch (e) {
      record('the scenario check ran', false, errText(e));
    }
    const status: Status = checks.every((c) => c.pass) ? 'pass' : 'fail';
    const report = collectRun(m, bh.model, {
      variant: run.name,
      description: run.description,
      status,
      timeMs: 0,
      outcome,
      notes,
      checks,
    });
    return finish(report, bh.model, m, bh.host, t0);
  } finally {
    if (machine === null) bh.host.dispose();
  }
}

/** Tears the run down; on the model, checks the teardown leaked nothing. */
function finish(report: RunReport, model: ModelHost | null, m: Machine, host: Host, t0: number): RunReport {
  const checks = [...report.checks];
  try {
    m.dispose();
    host.dispose();
  } catch (e) {
    checks.push({ name: 'machine teardown', pass: false, detail: errText(e) });
    try {
      host.dispose();
    } catch {
      // already reported
    }
  }
  if (model !== null) {
    const leaks = model.leaks();
    const clean = Object.values(leaks).every((n) => n === 0);
    checks.push({ name: 'host teardown leaves nothing (model)', pass: clean, detail: JSON.stringify(leaks) });
  }
  const status: Status = checks.every((c) => c.pass) ? 'pass' : 'fail';
  return { ...report, status, checks, timeMs: performance.now() - t0 };
}

/** One reason if all runs share it, else each run's. */
function skipReasons(reports: readonly RunReport[]): string {
  const reasons = new Set(reports.map((r) => r.skipReason ?? ''));
  if (reasons.size === 1) return [...reasons][0] ?? '';
  return reports.map((r) => `${r.variant}: ${r.skipReason ?? ''}`).join('; ');
}

/** Runs every variant of `s` on the chosen backend. */
export async function runScenarioObject(s: Scenario, options: RunOptions = {}): Promise<ScenarioReport> {
  const backend = options.hostFactory ?? (await getBackend(options.backend ?? 'model'));
  const startedAt = new Date().toISOString();
  const t0 = performance.now();
  let runs = resolveRuns(s);
  if (options.variants !== undefined) {
    const unknown = options.variants.filter((v) => !runs.some((r) => r.name === v));
    if (unknown.length > 0) {
      throw new ScenarioError(
        `${s.name} has no variant ${unknown.map((u) => `'${u}'`).join(', ')} (it has ${runs.map((r) => r.name).join(', ')})`,
      );
    }
    runs = runs.filter((r) => options.variants?.includes(r.name));
  }
  const reports: RunReport[] = [];
  const progress = options.onProgress;
  for (const run of runs) {
    const at = { scenario: s.name, variant: run.name, done: reports.length, total: runs.length };
    progress?.({ ...at, phase: 'start' });
    const onSyncPoint = (tag: number): void => progress?.({ ...at, phase: 'sync', tag });
    reports.push(await runOne(s, run, backend, options.limits ?? {}, options.tracer, onSyncPoint));
    progress?.({ ...at, done: reports.length, phase: 'end' });
  }

  const checks: CheckResult[] = [];
  const ran = reports.filter((r) => r.status !== 'skipped');
  if (s.compare && ran.length === reports.length && reports.length > 1) {
    try {
      s.compare(reports, {
        check(name, pass, detail = '') {
          checks.push({ name, pass, detail });
          return pass;
        },
      });
    } catch (e) {
      checks.push({ name: 'the comparison ran', pass: false, detail: errText(e) });
    }
  }
  const allSkipped = ran.length === 0;
  const status: Status = allSkipped
    ? 'skipped'
    : ran.every((r) => r.status === 'pass') && checks.every((c) => c.pass)
      ? 'pass'
      : 'fail';
  return {
    scenario: s.name,
    description: s.description,
    backend: backend.name,
    status,
    ...(allSkipped ? { skipReason: skipReasons(reports) } : {}),
    startedAt,
    timeMs: performance.now() - t0,
    runs: reports,
    checks,
  };
}
