/**
 * The long differential fuzzing run (issue 6): `npx tsx scripts/diff-fuzz.ts --runs 1000 --seed 42`.
 *
 * Generates random call sequences (test/conformance/fuzz.ts), runs each on the model and on the
 * real /dev/kvm, and compares every result, forgiving only the deviations documented in
 * docs/host-deviations.md. On a difference fast-check shrinks the sequence; the script prints the
 * minimal sequence and the first diverging call, writes both traces (--out, default a directory
 * under the system temp dir) and exits 1. Otherwise it prints what the run covered (outcomes per
 * call, exits, tolerated deviations) and exits 0. Exits 2 when /dev/kvm cannot be used here.
 *
 * Options: --runs N (default 200), --seed S (default: time-based, printed), --max-actions N
 * (default 24), --out DIR, --quiet.
 */
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import fc from 'fast-check';
import { createHost } from '../src/core/host.js';
import { createRealHost, realKvmAvailable } from '../src/host/index.js';
import { type Trace, writeTrace } from '../src/vmm/trace.js';
import {
  type Action,
  compareTraces,
  describeDifference,
  runSequence,
  sequenceArb,
} from '../test/conformance/fuzz.js';

const cli = new Command()
  .name('diff-fuzz')
  .description('differential fuzzing: the model against the real /dev/kvm')
  .option('--runs <n>', 'sequences to run', '200')
  .option('--seed <n>', 'fast-check seed (default: time-based)')
  .option('--max-actions <n>', 'longest sequence', '24')
  .option('--out <dir>', 'where to write the traces of a failing sequence')
  .option('--quiet', 'print only the summary')
  .parse();
const opts = cli.opts<{ runs: string; seed?: string; maxActions: string; out?: string; quiet?: boolean }>();
const runs = Number(opts.runs);
const seed = opts.seed === undefined ? Date.now() % 2 ** 31 : Number(opts.seed);
const maxActions = Number(opts.maxActions);

const probe = realKvmAvailable();
if (!probe.ok) {
  console.error(`diff-fuzz: the real backend is not usable here: ${probe.reason}`);
  process.exit(2);
}

/** What the run covered: outcome per call kind, exits, tolerated deviations. */
const outcomes = new Map<string, number>();
const tolerated = new Map<string, number>();
let calls = 0;
let sequences = 0;

function count(map: Map<string, number>, key: string): void {
  map.set(key, (map.get(key) ?? 0) + 1);
}

function note(t: Trace): void {
  for (const c of t.calls) {
    const o = c.out;
    let what: string;
    if ('errno' in o) what = o.errno;
    else if ('fault' in o) what = o.fault;
    else if ('threw' in o) what = o.threw;
    else if (c.method === 'run' && o.ok !== null && typeof o.ok === 'object' && 'exit' in o.ok)
      what = String(o.ok['exit']);
    else what = 'ok';
    count(outcomes, `${c.method} → ${what}`);
  }
}

let failure: { actions: readonly Action[]; text: string; model: Trace; kvm: Trace } | null = null;
const started = performance.now();
const result = fc.check(
  fc.property(sequenceArb(maxActions), (actions) => {
    const model = runSequence(createHost(), actions);
    const kvm = runSequence(createRealHost(), actions);
    const tol: string[] = [];
    const d = compareTraces(model, kvm, tol);
    if (d !== null) {
      failure = { actions, text: describeDifference(actions, d), model, kvm };
      return false;
    }
    sequences++;
    calls += model.calls.length;
    note(model);
    for (const t of tol) count(tolerated, t.replace(/^call [0-9]+: /, ''));
    return true;
  }),
  { numRuns: runs, seed },
);
const seconds = (performance.now() - started) / 1000;

if (result.failed) {
  // fast-check re-ran the shrunk counterexample last, so `failure` holds the minimal sequence.
  const f = failure as { actions: readonly Action[]; text: string; model: Trace; kvm: Trace } | null;
  console.log(
    `diff-fuzz: DIFFERENCE after ${result.numRuns} sequences (seed ${seed}, ${seconds.toFixed(1)} s)`,
  );
  if (f !== null) {
    console.log(f.text);
    const dir = opts.out ?? mkdtempSync(join(tmpdir(), 'guestmem-diff-fuzz-'));
    mkdirSync(dir, { recursive: true });
    writeTrace(join(dir, 'model.trace.json'), f.model);
    writeTrace(join(dir, 'kvm.trace.json'), f.kvm);
    console.log(`traces: ${join(dir, 'model.trace.json')} ${join(dir, 'kvm.trace.json')}`);
  }
  console.log(
    `reproduce: npx tsx scripts/diff-fuzz.ts --runs ${runs} --seed ${seed} --max-actions ${maxActions}`,
  );
  process.exit(1);
}

console.log(
  `diff-fuzz: ${sequences} sequences agree (${calls} calls, seed ${seed}, ${seconds.toFixed(1)} s, ` +
    `${((seconds * 1000) / Math.max(1, sequences)).toFixed(1)} ms/sequence)`,
);
if (tolerated.size > 0) {
  console.log('documented deviations forgiven:');
  for (const [k, n] of [...tolerated].sort((a, b) => b[1] - a[1]))
    console.log(`  ${String(n).padStart(6)}  ${k}`);
}
if (opts.quiet !== true) {
  console.log('outcomes covered (call → result, on both backends):');
  for (const [k, n] of [...outcomes].sort((a, b) => a[0].localeCompare(b[0]))) {
    console.log(`  ${String(n).padStart(6)}  ${k}`);
  }
}
