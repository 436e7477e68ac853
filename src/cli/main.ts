#!/usr/bin/env node
/**
 * The `guestmem` command.
 *
 *   guestmem run [scenario] [--backend model|kvm] [--file F.yaml] [--trace FILE] [--json]
 *   guestmem list                          the shipped scenarios
 *   guestmem replay TRACE [--backend …]    replay a trace, report the first divergence
 *   guestmem conform [--backend …]         the conformance suite (test/conformance)
 *   guestmem bench                         every benchmark → BENCHMARKS.md
 *   guestmem inspect [scenario]            the memory map and the model's counters after a run
 *   guestmem demo                          a tour of the modelled host memory
 *
 * Errors are one line and a non-zero exit; `--debug` shows the stack.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { Command, Option } from 'commander';
import type { Host } from '../core/api.js';
import {
  type Backend,
  type BackendName,
  getBackend,
  listScenarios,
  parseScenario,
  runScenario,
  type ScenarioReport,
} from '../vmm/index.js';
import { readTrace, recordingHost, replay, traceToJson } from '../vmm/trace.js';
import { runHostDemo } from './demo.js';
import { renderReport } from './render.js';

const program = new Command();
program
  .name('guestmem')
  .description("KVM's fd-based guest memory: an executable model of the host and KVM, and the real /dev/kvm")
  .option('--debug', 'show stack traces on errors');

const backendOption = () =>
  new Option('--backend <name>', 'model (the executable model) or kvm (the real /dev/kvm)')
    .choices(['model', 'kvm'])
    .default('model');

/** The scenario's host, wrapped so every call is recorded when --trace asks for it. */
async function tracingBackend(
  name: BackendName,
  traceFile: string | undefined,
): Promise<{ backend: Backend; save(): void }> {
  const inner = await getBackend(name);
  if (!traceFile) return { backend: inner, save: () => {} };
  const recorders: ReturnType<typeof recordingHost>[] = [];
  const backend: Backend = {
    ...inner,
    create(req) {
      const made = inner.create(req);
      const rec = recordingHost(made.host);
      recorders.push(rec);
      return { ...made, host: rec as Host };
    },
  };
  return {
    backend,
    save() {
      const first = recorders[0];
      if (!first) throw new Error('the scenario created no host to trace');
      writeFileSync(traceFile, traceToJson(first.trace({ scenarioHosts: recorders.length })));
      if (recorders.length > 1) {
        console.error(`guestmem: the scenario made ${recorders.length} hosts; ${traceFile} holds the first`);
      }
    },
  };
}

program
  .command('run')
  .description('run a scenario (default: confidential-boot) and print a report')
  .argument('[scenario]', 'a shipped scenario (see `guestmem list`)')
  .addOption(backendOption())
  .option('--file <path>', 'a declarative scenario (YAML or JSON)')
  .option('--trace <path>', 'record every call as a replayable JSON trace')
  .option('--json', 'print the report as JSON')
  .action(
    async (
      name: string | undefined,
      opts: { backend: BackendName; file?: string; trace?: string; json?: boolean },
    ) => {
      const scenario = opts.file ? parseScenario(readFileSync(opts.file, 'utf8'), opts.file) : name;
      const { backend, save } = await tracingBackend(opts.backend, opts.trace);
      if (process.stderr.isTTY && !opts.json)
        process.stderr.write(`running ${opts.file ?? name ?? 'confidential-boot'} on ${opts.backend}…\n`);
      const report: ScenarioReport = await runScenario(scenario ?? 'confidential-boot', {
        hostFactory: backend,
      });
      if (opts.trace) save();
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
  .action(async (file: string, opts: { backend: BackendName }) => {
    const trace = readTrace(file);
    const backend = await getBackend(opts.backend);
    const why = backend.unavailable();
    if (why) throw new Error(`backend ${opts.backend} is unavailable: ${why}`);
    const made = backend.create({});
    try {
      const r = replay(trace, made.host);
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
      made.host.dispose();
    }
  });

program
  .command('conform')
  .description('run the conformance suite on the model and, when usable, the real /dev/kvm')
  .addOption(
    new Option('--backend <name>', 'only this backend').choices(['model', 'kvm', 'both']).default('both'),
  )
  .action((opts: { backend: string }) => {
    const env = { ...process.env, ...(opts.backend === 'model' ? { GUESTMEM_NO_REAL_KVM: '1' } : {}) };
    const r = spawnSync('npx', ['vitest', 'run', 'test/conformance'], { stdio: 'inherit', env });
    process.exitCode = r.status ?? 1;
  });

program
  .command('bench')
  .description('run every benchmark and write BENCHMARKS.md and bench/results.json')
  .action(() => {
    const r = spawnSync('npx', ['tsx', 'bench/run.ts'], { stdio: 'inherit' });
    process.exitCode = r.status ?? 1;
  });

program
  .command('inspect')
  .description('run a scenario on the model and show its memory map and the model counters')
  .argument('[scenario]', 'a shipped scenario', 'confidential-boot')
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

try {
  await program.parseAsync(process.argv);
} catch (e) {
  const debug = program.opts<{ debug?: boolean }>().debug === true;
  console.error(
    debug && e instanceof Error ? e.stack : `guestmem: ${e instanceof Error ? e.message : String(e)}`,
  );
  process.exitCode = 1;
}
