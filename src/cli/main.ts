#!/usr/bin/env node
/**
 * The `guestmem` command.
 *
 *   guestmem run [scenario] [--backend model|kvm] [--file F.yaml] [--variant V…] [--trace FILE]
 *                [--trace-events FILE] [--json]
 *   guestmem list                          the shipped scenarios
 *   guestmem replay TRACE [--backend …] [--trace-events FILE]
 *                                          replay a trace, report the first divergence
 *   guestmem conform [--backend …] [file…] the conformance suite (test/conformance)
 *   guestmem bench [--runs N] [--only a,b] every benchmark → BENCHMARKS.md
 *   guestmem inspect [scenario]            the memory map and the model's counters after a run
 *   guestmem demo                          a tour of the modelled host memory
 *
 * Long work shows progress on stderr (progress.ts): a bar on a terminal, quiet lines otherwise,
 * so stdout stays the result (`--json` parses). Errors are one line per problem, prefixed
 * `guestmem:`, and a non-zero exit; `--debug` shows the stack.
 */
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError, Option } from 'commander';
import {
  type Backend,
  type BackendName,
  DEFAULT_SCENARIO,
  getBackend,
  listScenarios,
  parseScenario,
  type RunProgress,
  runScenario,
  type Scenario,
  type ScenarioReport,
  ScenarioValidationError,
  TraceEventRecorder,
} from '../vmm/index.js';
import { hostRequestOf, readTrace, recordingBackend, replay, traceOf, traceToJson } from '../vmm/trace.js';
import { runHostDemo } from './demo.js';
import { Progress } from './progress.js';
import { renderReport } from './render.js';

const here = dirname(fileURLToPath(import.meta.url));
/** The package root (src/cli/ or dist/cli/ is two levels down). */
const root = join(here, '..', '..');

const program = new Command();
program
  .name('guestmem')
  .description("KVM's fd-based guest memory: an executable model of the host and KVM, and the real /dev/kvm")
  .option('--debug', 'show stack traces on errors')
  .exitOverride()
  .configureOutput({
    // Commander's own errors (unknown option, invalid choice) in the command's one-line form.
    outputError: (text, write) => write(`guestmem: ${text.replace(/^error: /, '')}`),
  });

const backendOption = () =>
  new Option('--backend <name>', 'model (the executable model) or kvm (the real /dev/kvm)')
    .choices(['model', 'kvm'])
    .default('model');

/** The backend called `name`; an error naming the reason if it cannot run here. */
async function usableBackend(name: BackendName): Promise<Backend> {
  const backend = await getBackend(name);
  const why = backend.unavailable();
  if (why !== null) throw new Error(`backend ${name} is unavailable: ${why}`);
  return backend;
}

/** `inner`, wrapped so every call is recorded when --trace asks for it. */
function tracingBackend(inner: Backend, traceFile: string | undefined): { backend: Backend; save(): void } {
  if (!traceFile) return { backend: inner, save: () => {} };
  const { backend, recordings } = recordingBackend(inner);
  return {
    backend,
    save() {
      const first = recordings[0];
      if (!first) throw new Error('the scenario created no host to trace (every run was skipped)');
      writeFileSync(traceFile, traceToJson(traceOf(first, { scenarioHosts: recordings.length })));
      if (recordings.length > 1) {
        console.error(
          `guestmem: the scenario made ${recordings.length} hosts; ${traceFile} holds the first (choose one with --variant)`,
        );
      }
    },
  };
}

function loadScenarioFile(path: string): Scenario {
  return parseScenario(readFileSync(path, 'utf8'), path);
}

function progressDetail(p: RunProgress): string {
  return `${p.variant}${p.phase === 'sync' ? `: sync ${p.tag}` : p.phase === 'end' ? ' done' : ''}`;
}

program
  .command('run')
  .description('run a scenario (default: confidential-boot) and print a report')
  .argument('[scenario]', 'a shipped scenario (see `guestmem list`)')
  .addOption(backendOption())
  .option('--file <path>', 'a declarative scenario (YAML or JSON)')
  .option('--trace <path>', 'record every call as a replayable JSON trace')
  .option('--trace-events <path>', 'write a Chrome trace-event timeline (open it in ui.perfetto.dev)')
  .option('--variant <names...>', 'run only these variants of the scenario')
  .option('--json', 'print the report as JSON')
  .action(
    async (
      name: string | undefined,
      opts: {
        backend: BackendName;
        file?: string;
        trace?: string;
        traceEvents?: string;
        variant?: string[];
        json?: boolean;
      },
    ) => {
      if (opts.file !== undefined && name !== undefined) {
        throw new Error(`give a scenario name or --file, not both ('${name}' and ${opts.file})`);
      }
      const scenario = opts.file !== undefined ? loadScenarioFile(opts.file) : (name ?? DEFAULT_SCENARIO);
      const label = typeof scenario === 'string' ? scenario : scenario.name;
      const { backend, save } = tracingBackend(await usableBackend(opts.backend), opts.trace);
      const tracer =
        opts.traceEvents === undefined
          ? undefined
          : new TraceEventRecorder({ command: 'run', scenario: label, backend: opts.backend });
      const progress = new Progress(`run ${label} on ${opts.backend}`, 1);
      tracer?.start();
      let report: ScenarioReport;
      try {
        report = await runScenario(scenario, {
          hostFactory: backend,
          ...(opts.variant === undefined ? {} : { variants: opts.variant }),
          ...(tracer === undefined ? {} : { tracer }),
          onProgress: (p) => progress.update(p.done, progressDetail(p), p.total),
        });
      } finally {
        tracer?.stop();
        progress.done();
      }
      if (opts.trace) save();
      if (tracer !== undefined && opts.traceEvents !== undefined)
        writeFileSync(opts.traceEvents, tracer.toJson());
      console.log(opts.json ? JSON.stringify(report, null, 2) : renderReport(report));
      if (report.status === 'fail') process.exitCode = 1;
    },
  );

program
  .command('list')
  .description('list the shipped scenarios')
  .action(() => {
    for (const s of listScenarios()) {
      console.log(`${s.name.padEnd(18)} ${s.description}${s.isDefault ? ' (default)' : ''}`);
    }
  });

program
  .command('replay')
  .description('replay a trace on a backend and report the first divergence')
  .argument('<trace>', 'a trace written by `guestmem run --trace`')
  .addOption(backendOption())
  .option('--trace-events <path>', 'write a Chrome trace-event timeline of the replay')
  .action(async (file: string, opts: { backend: BackendName; traceEvents?: string }) => {
    const trace = readTrace(file);
    const backend = await usableBackend(opts.backend);
    const made = backend.create(hostRequestOf(trace));
    const tracer =
      opts.traceEvents === undefined
        ? undefined
        : new TraceEventRecorder({ command: 'replay', trace: file, backend: opts.backend });
    const progress = new Progress(`replay on ${opts.backend}`, trace.calls.length);
    tracer?.start();
    tracer?.beginProcess(`${opts.backend}: replay of ${file}`);
    try {
      const host = tracer === undefined ? made.host : tracer.wrapHost(made.host);
      const r = replay(trace, host, { onCall: (done, total) => progress.update(done, '', total) });
      progress.done();
      if (r.ok) {
        console.log(
          `${trace.calls.length} calls replayed identically on ${opts.backend}${r.tolerated.length ? ` (${r.tolerated.length} tolerated)` : ''}`,
        );
      } else {
        console.log(
          `diverged at call ${r.index} (${r.call.method}): expected ${JSON.stringify(r.expected.out)}, got ${JSON.stringify(r.actual.out)}`,
        );
        process.exitCode = 1;
      }
    } finally {
      progress.done();
      made.host.dispose();
      tracer?.stop();
    }
    if (tracer !== undefined && opts.traceEvents !== undefined)
      writeFileSync(opts.traceEvents, tracer.toJson());
  });

program
  .command('conform')
  .description('run the conformance suite on the model and, when usable, the real /dev/kvm')
  .argument('[files...]', 'only the test/conformance files whose name contains one of these words')
  .addOption(
    new Option(
      '--backend <name>',
      'model only, kvm (fails if /dev/kvm is unusable), or both (kvm when usable)',
    )
      .choices(['model', 'kvm', 'both'])
      .default('both'),
  )
  .action(async (files: string[], opts: { backend: string }) => {
    if (opts.backend === 'kvm') await usableBackend('kvm');
    const dir = join(root, 'test', 'conformance');
    const all = readdirSync(dir).filter((f) => f.endsWith('.test.ts'));
    const picked = files.length === 0 ? all : all.filter((f) => files.some((w) => f.includes(w)));
    if (picked.length === 0) {
      throw new Error(`no conformance test file matches ${files.join(', ')} (there are ${all.join(', ')})`);
    }
    const env = { ...process.env, ...(opts.backend === 'model' ? { GUESTMEM_NO_REAL_KVM: '1' } : {}) };
    const reporter = join(here, `conform_reporter${extname(fileURLToPath(import.meta.url))}`);
    const r = spawnSync(
      process.execPath,
      [
        join(root, 'node_modules', 'vitest', 'vitest.mjs'),
        'run',
        ...picked.map((f) => join('test', 'conformance', f)),
        `--reporter=${reporter}`,
      ],
      { stdio: 'inherit', env, cwd: root },
    );
    if (r.error)
      throw new Error(
        `cannot run vitest (the conformance suite needs the dev dependencies): ${r.error.message}`,
      );
    process.exitCode = r.status ?? 1;
  });

program
  .command('bench')
  .description('run every benchmark and write BENCHMARKS.md and bench/results.json')
  .option('--runs <n>', 'runs per module (default 2)')
  .option('--only <words>', 'only the modules whose file name contains one of these comma-separated words')
  .option('--no-write', 'print the tables only')
  .action(async (opts: { runs?: string; only?: string; write: boolean }) => {
    const runs = opts.runs === undefined ? 2 : Number(opts.runs);
    if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs ${opts.runs}: want an integer ≥ 1`);
    const words = (opts.only ?? '').split(',').filter((w) => w.length > 0);
    const modules = readdirSync(join(root, 'bench')).filter(
      (f) => f.endsWith('.bench.ts') && (words.length === 0 || words.some((w) => f.includes(w))),
    );
    if (modules.length === 0) throw new Error(`no benchmark module matches --only ${opts.only}`);
    const args = [
      '--import',
      'tsx',
      join(root, 'bench', 'run.ts'),
      '--runs',
      String(runs),
      ...(opts.only ? ['--only', opts.only] : []),
      ...(opts.write ? [] : ['--no-write']),
    ];
    const total = runs * modules.length;
    const progress = new Progress('bench', total);
    const child = spawn(process.execPath, args, { stdio: ['inherit', 'inherit', 'pipe'], cwd: root });
    // bench/run.ts writes "run r/R: bench/x.bench.ts … " then the outcome on stderr: those
    // lines are the quiet per-module progress; a terminal also gets the bar.
    let started = 0;
    let counted = false; // the pending partial line was counted
    let buffered = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => {
      buffered += chunk;
      for (;;) {
        const nl = buffered.indexOf('\n');
        const m = /run (\d+)\/(\d+): (\S+) … $/.exec(buffered);
        if (nl < 0) {
          if (m && !counted) {
            counted = true;
            started++;
            if (progress.drawsBar) progress.update(started - 1, `run ${m[1]}/${m[2]}: ${m[3]}`, total);
          }
          return;
        }
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        counted = false;
        progress.log(line);
        if (progress.drawsBar && line.startsWith('run ')) progress.update(started, '', total);
      }
    });
    const code = await new Promise<number>((resolve) => child.on('close', (c) => resolve(c ?? 1)));
    if (buffered) progress.log(buffered);
    progress.done();
    process.exitCode = code;
  });

program
  .command('inspect')
  .description('run a scenario on the model and show its memory map and the model counters')
  .argument('[scenario]', 'a shipped scenario', DEFAULT_SCENARIO)
  .action(async (name: string) => {
    const report = await runScenario(name, { backend: 'model' });
    for (const run of report.runs) {
      console.log(`${report.scenario} / ${run.variant}`);
      console.log(
        JSON.stringify({ memoryMap: run.memoryMap, model: run.model, memory: run.memory }, null, 2),
      );
    }
  });

program
  .command('demo')
  .description('a short tour of the modelled host memory: memfd, mappings, notifiers, hole punching, CoW')
  .action(() => runHostDemo());

for (const c of program.commands) {
  c.exitOverride().configureOutput({
    outputError: (text, write) => write(`guestmem: ${text.replace(/^error: /, '')}`),
  });
}

/** The error as the lines to print: one per problem (a scenario file can have several). */
function errorLines(e: unknown): string[] {
  if (e instanceof ScenarioValidationError) {
    return e.issues.map(
      (i) =>
        `guestmem: ${e.source}:${i.line ?? '?'}:${i.column ?? '?'}: ${i.path || '(top level)'}: ${i.message}, got ${i.value}`,
    );
  }
  const text = e instanceof Error ? e.message : String(e);
  return [`guestmem: ${text.split('\n')[0] ?? text}`];
}

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof CommanderError) {
    // Already printed by commander (help, version, or its one-line error).
    process.exitCode = e.exitCode;
  } else {
    const debug = program.opts<{ debug?: boolean }>().debug === true;
    if (debug && e instanceof Error && e.stack) console.error(e.stack);
    else for (const line of errorLines(e)) console.error(line);
    process.exitCode = 1;
  }
}
