/**
 * The benchmark suite runner (`npm run bench`): finds every `bench/*.bench.ts`, runs each
 * exported `bench…()` function in a fresh Node process (one heap per module, so one module's
 * garbage does not slow the next), `--runs` times (default 2), and writes
 *
 * - `BENCHMARKS.md` at the repository root: one table per area (figure, median, spread, target,
 *   ratio, met), the misses first, and the machine line (CPU model, cores, Node, date, load);
 * - `bench/results.json`: the raw rows of every run, and the merged rows.
 *
 * Merging runs: a figure's median is the median of its runs' medians; its spread is the larger of
 * the within-run spread (median absolute deviation / median, the harness's) and the between-run
 * half-range ((max − min) / 2 / median), so a figure that moved between runs says so.
 *
 * Each module's CPU share — process CPU time / wall time while it ran — is reported too: on a
 * shared machine a share well under 100 % means the figures include time the process waited for
 * a CPU (V8's GC helper threads can push it above 100 %).
 *
 * Options:
 *   --runs N      runs per module (default 2)
 *   --timeout S   seconds a module may run before it is stopped and reported failed (default 900)
 *   --only a,b    only the modules whose file name contains one of the words
 *   --no-write    print the tables only; --write forces writing
 *   --compiled    run JavaScript compiled by tsc (bench/tsconfig.compiled.json, output in
 *                 node_modules/.cache/guestmem-bench) instead of TypeScript through tsx. tsx's
 *                 esbuild transform wraps every named closure in a `__name()` call each time the
 *                 closure is created, which costs hot paths that create closures; the shipped
 *                 package is tsc's output.
 * `--only` and `--compiled` do not overwrite BENCHMARKS.md and results.json unless `--write`.
 */
import { execFileSync, fork } from 'node:child_process';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { arch, cpus, loadavg, platform } from 'node:os';
import { basename, dirname, join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { type BenchRow, markdownTable, meets } from './harness.js';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');

/** Modules in this order first (the issue's order), then any other `*.bench.ts` alphabetically. */
const ORDER = ['mm', 'tdp_mmu', 'memslot_index', 'interval_map', 'kvm', 'private'];

interface ChildResult {
  readonly module: string;
  readonly functions: string[];
  readonly rows: BenchRow[];
  readonly ms: number;
  /** Process CPU time / wall time while the module ran. */
  readonly cpuShare: number;
  readonly error?: string;
}

interface RunRecord extends ChildResult {
  readonly run: number;
}

interface MergedRow extends BenchRow {
  /** The medians of each run, in run order. */
  readonly runs: number[];
}

function isBenchFunction(name: string, v: unknown): v is () => Promise<BenchRow[]> | BenchRow[] {
  return /^bench[A-Z0-9]\w*$/.test(name) && typeof v === 'function';
}

/** Child side: import one module, run its bench functions, send the rows to the parent. */
async function child(file: string): Promise<void> {
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const mod = (await import(pathToFileURL(file).href)) as Record<string, unknown>;
  const functions: string[] = [];
  const rows: BenchRow[] = [];
  for (const [name, fn] of Object.entries(mod)) {
    if (!isBenchFunction(name, fn)) continue;
    functions.push(name);
    rows.push(...(await fn()));
  }
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  const cpuShare = (cpu.user + cpu.system) / 1e3 / ms;
  const result: ChildResult = { module: basename(file), functions, rows, ms, cpuShare };
  await new Promise<void>((resolve) => process.send?.(result, () => resolve()));
}

/** Runs one module in a fresh process: `runner` is this file (tsx) or its compiled twin (plain node). */
function runChild(runner: string, file: string, compiled: boolean, timeoutS: number): Promise<ChildResult> {
  return new Promise((resolve) => {
    const p = fork(runner, ['--child', file], {
      stdio: 'inherit',
      ...(compiled ? { execArgv: [] } : {}),
    });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      p.kill();
    }, timeoutS * 1e3);
    let result: ChildResult | null = null;
    p.on('message', (m) => {
      result = m as ChildResult;
    });
    p.on('exit', (code) => {
      clearTimeout(timer);
      resolve(
        result ?? {
          module: basename(file),
          functions: [],
          rows: [],
          ms: 0,
          cpuShare: 0,
          error: timedOut ? `stopped after ${timeoutS} s (--timeout)` : `exited with code ${code}`,
        },
      );
    });
  });
}

/** Compiles bench/ and src/ with tsc; returns the output directory (its bench/ holds run.js). */
function compile(): string {
  const out = join(root, 'node_modules', '.cache', 'guestmem-bench');
  mkdirSync(out, { recursive: true });
  // Below node_modules/, Node looks for no package.json above: say the output is ESM here.
  writeFileSync(join(out, 'package.json'), '{ "type": "module" }\n');
  const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
  process.stderr.write('compiling bench/ and src/ with tsc … ');
  try {
    execFileSync(process.execPath, [tsc, '-p', join(here, 'tsconfig.compiled.json'), '--outDir', out], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    process.stderr.write('done\n');
  } catch {
    // Type errors still emit JavaScript (noEmitOnError is off); missing output fails below.
    process.stderr.write(
      'done, with type errors (npx tsc -p bench/tsconfig.compiled.json --noEmit lists them)\n',
    );
  }
  return out;
}

function discover(only: string[] | null): string[] {
  const files = readdirSync(here)
    .filter((f) => f.endsWith('.bench.ts'))
    .map((f) => f.slice(0, -'.bench.ts'.length));
  const known = ORDER.filter((m) => files.includes(m));
  const rest = files.filter((f) => !ORDER.includes(f)).sort();
  return [...known, ...rest]
    .filter((m) => only === null || only.some((w) => m.includes(w)))
    .map((m) => join(here, `${m}.bench.ts`));
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

/** Merges the rows of several runs of the same modules (see the header). */
function merge(records: readonly RunRecord[]): MergedRow[] {
  const byKey = new Map<string, BenchRow[]>();
  for (const rec of records) {
    for (const r of rec.rows) {
      const key = `${r.area}\u0000${r.name}`;
      const list = byKey.get(key) ?? [];
      list.push(r);
      byKey.set(key, list);
    }
  }
  const out: MergedRow[] = [];
  for (const list of byKey.values()) {
    const values = list.map((r) => r.value);
    const value = median(values);
    const within = median(list.map((r) => r.spread ?? 0));
    const between = value !== 0 ? (Math.max(...values) - Math.min(...values)) / 2 / Math.abs(value) : 0;
    const spread = Math.max(within, between);
    // The note of the run nearest the median (notes quote per-run numbers).
    let nearest = list[0] as BenchRow;
    for (const r of list) if (Math.abs(r.value - value) < Math.abs(nearest.value - value)) nearest = r;
    const ratios = list.flatMap((r) => (r.ratio ? [r.ratio.value] : []));
    const samples = list.reduce((n, r) => n + (r.samples ?? 0), 0);
    out.push({
      area: nearest.area,
      name: nearest.name,
      value,
      unit: nearest.unit,
      ...(list.some((r) => r.spread !== undefined) || between > 0 ? { spread } : {}),
      ...(samples > 0 ? { samples } : {}),
      ...(nearest.target ? { target: nearest.target } : {}),
      ...(nearest.ratio ? { ratio: { value: median(ratios), to: nearest.ratio.to } } : {}),
      ...(nearest.note ? { note: nearest.note } : {}),
      runs: values,
    });
  }
  return out;
}

/** The commit measured, with a mark when the work tree differs from it (`git describe`-like). */
function commit(): string {
  try {
    const git = (...args: string[]): string =>
      execFileSync('git', args, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const head = git('rev-parse', '--short', 'HEAD');
    return git('status', '--porcelain', '--untracked-files=no', '--', 'src').length > 0
      ? `${head} with uncommitted changes in src/`
      : head;
  } catch {
    return 'unknown (not a git work tree)';
  }
}

interface Machine {
  readonly commit: string;
  readonly cpu: string;
  readonly cores: number;
  readonly node: string;
  readonly platform: string;
  readonly date: string;
  readonly loadStart: number;
  readonly loadEnd: number;
}

function markdown(
  rows: readonly MergedRow[],
  machine: Machine,
  runs: number,
  records: RunRecord[],
  compiled: boolean,
): string {
  const areas = [...new Set(rows.map((r) => r.area))];
  const misses = rows.filter((r) => meets(r) === false);
  const failed = records.filter((r) => r.error);
  const lines = [
    '# Benchmarks',
    '',
    'Generated by `npm run bench` (bench/run.ts); do not edit by hand. How to read and rerun the',
    'figures: [bench/README.md](bench/README.md). Where the time goes: [bench/PROFILE.md](bench/PROFILE.md).',
    '',
    `Machine: ${machine.cpu}, ${machine.cores} cores, Node ${machine.node}, ${machine.platform}; ${machine.date}; ` +
      `1-minute load average ${machine.loadStart.toFixed(2)} at the start, ${machine.loadEnd.toFixed(2)} at the end` +
      (Math.max(machine.loadStart, machine.loadEnd) > 0.5
        ? ' (the machine was shared with other work).'
        : '.'),
    '',
    `Source measured: commit ${machine.commit}.`,
    '',
    `Each module ran ${runs} time${runs === 1 ? '' : 's'}, each time in a fresh process, ` +
      (compiled
        ? 'as JavaScript compiled by tsc (`npm run bench -- --compiled`). '
        : 'as TypeScript through tsx (`npm run bench`). ') +
      "Median: the median of the runs' medians. Spread: the larger of the within-run MAD / median and " +
      "the runs' half-range / median.",
    '',
    `CPU share of each module (process CPU time / wall time, per run; under 100 % = waited for a CPU): ${cpuShares(records)}.`,
    '',
  ];
  if (failed.length > 0) {
    lines.push('## Modules that failed', '');
    for (const f of failed) lines.push(`- ${f.module} (run ${f.run}): ${f.error}`);
    lines.push('');
  }
  lines.push(
    `## Misses (${misses.length} of ${rows.filter((r) => r.target).length} figures with a target)`,
    '',
  );
  if (misses.length === 0) lines.push('None.');
  for (const r of misses) {
    const op = r.target?.op === '>=' ? '≥' : '≤';
    lines.push(
      `- **${r.area}** — ${r.name}: ${r.value.toPrecision(3)} ${r.unit}, target ${op} ${r.target?.value} ${r.unit}`,
    );
  }
  lines.push('');
  for (const a of areas) {
    lines.push(`## ${a}`, '', markdownTable(rows.filter((r) => r.area === a)), '');
  }
  return lines.join('\n');
}

function cpuShares(records: readonly RunRecord[]): string {
  const by = new Map<string, string[]>();
  for (const r of records) {
    const list = by.get(r.module) ?? [];
    list.push(r.error ? 'failed' : `${(100 * r.cpuShare).toFixed(0)} %`);
    by.set(r.module, list);
  }
  return [...by].map(([m, l]) => `${m.replace(/\.bench\.(ts|js)$/, '')} ${l.join(' / ')}`).join('; ');
}

async function main(argv: string[]): Promise<void> {
  const childAt = argv.indexOf('--child');
  if (childAt >= 0) {
    await child(argv[childAt + 1] as string);
    return;
  }
  const runsAt = argv.indexOf('--runs');
  const runs = runsAt >= 0 ? Number(argv[runsAt + 1]) : 2;
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs ${argv[runsAt + 1]}: want an integer ≥ 1`);
  const timeoutAt = argv.indexOf('--timeout');
  const timeoutS = timeoutAt >= 0 ? Number(argv[timeoutAt + 1]) : 900;
  if (!(timeoutS > 0)) throw new Error(`--timeout ${argv[timeoutAt + 1]}: want seconds > 0`);
  const onlyAt = argv.indexOf('--only');
  const only = onlyAt >= 0 ? (argv[onlyAt + 1] ?? '').split(',').filter((w) => w.length > 0) : null;
  const compiled = argv.includes('--compiled');
  const write = argv.includes('--write') || (only === null && !compiled && !argv.includes('--no-write'));

  const names = discover(only);
  if (names.length === 0) throw new Error('no benchmark module matched');
  const out = compiled ? compile() : null;
  const runner = out ? join(out, 'bench', 'run.js') : fileURLToPath(import.meta.url);
  const files = out ? names.map((f) => join(out, 'bench', basename(f).replace(/\.ts$/, '.js'))) : names;
  const cpu = cpus();
  const commitStart = commit();
  const loadStart = loadavg()[0] ?? 0;
  const records: RunRecord[] = [];
  for (let run = 1; run <= runs; run++) {
    for (const f of files) {
      process.stderr.write(`run ${run}/${runs}: ${relative(root, f)} … `);
      const res = await runChild(runner, f, compiled, timeoutS);
      records.push({ ...res, run });
      process.stderr.write(
        res.error ? `FAILED (${res.error})\n` : `${res.rows.length} rows in ${(res.ms / 1e3).toFixed(1)} s\n`,
      );
    }
  }
  const machine: Machine = {
    commit: ((end) => (end === commitStart ? end : `${commitStart} at the start, ${end} at the end`))(
      commit(),
    ),
    cpu: cpu[0]?.model.trim() ?? 'unknown CPU',
    cores: cpu.length,
    node: process.version,
    platform: `${platform()} ${arch()}`,
    date: `${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC`,
    loadStart,
    loadEnd: loadavg()[0] ?? 0,
  };
  const merged = merge(records);
  const md = markdown(merged, machine, runs, records, compiled);
  console.log(md);
  if (write) {
    writeFileSync(join(root, 'BENCHMARKS.md'), md);
    const command = compiled ? 'npm run bench -- --compiled' : 'npm run bench';
    const json = { machine, runs, compiled, command, modules: records, rows: merged };
    writeFileSync(join(here, 'results.json'), `${JSON.stringify(json, null, 2)}\n`);
    process.stderr.write('wrote BENCHMARKS.md and bench/results.json\n');
  }
  if (records.some((r) => r.error)) process.exitCode = 1;
}

await main(process.argv.slice(2));
