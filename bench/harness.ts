/**
 * The benchmark harness: every benchmark file exports rows of figures, measured with tinybench
 * (warm-up, then repeated samples; the median and the median absolute deviation are reported).
 *
 * A row says what was measured, its median, how much it spread, the target it is held to (if
 * any) and whether it met it — never a timed assertion inside a test (CONTRIBUTING rule: timings
 * live in bench/). Ratios are taken between figures measured in the same run.
 */
import { Bench } from 'tinybench';

export interface BenchRow {
  /** The table the row belongs to (e.g. "host memory"). */
  readonly area: string;
  readonly name: string;
  /** Median value, in `unit`. */
  readonly value: number;
  readonly unit: string;
  /** Relative spread: median absolute deviation / median (0.05 = ±5 %). */
  readonly spread?: number;
  readonly samples?: number;
  /** Target, e.g. `≥ 1e6` or `≤ 30` (same unit as value). */
  readonly target?: { readonly op: '>=' | '<='; readonly value: number };
  /** A ratio to a reference measured in the same run. */
  readonly ratio?: { readonly value: number; readonly to: string };
  readonly note?: string;
}

export interface Timing {
  /** Median time of one operation, in nanoseconds. */
  readonly nsPerOp: number;
  /** Median operations per second. */
  readonly opsPerSec: number;
  /** MAD / median of the per-call latency. */
  readonly spread: number;
  readonly samples: number;
}

export interface TimeOptions {
  /** Operations one call of fn performs (per-op figures divide by it). Default 1. */
  readonly batch?: number;
  /** Sampling time in ms. Default 400. */
  readonly timeMs?: number;
  /** Warm-up time in ms. Default 100. */
  readonly warmupMs?: number;
  /** Minimum calls. Default 10. */
  readonly iterations?: number;
  /** Runs before each call, outside the timed region (fresh state for a destructive fn). */
  readonly setup?: () => void;
}

/** Times `fn` and returns per-operation figures. */
export async function time(name: string, fn: () => void, opts: TimeOptions = {}): Promise<Timing> {
  const batch = opts.batch ?? 1;
  const bench = new Bench({
    time: opts.timeMs ?? 400,
    warmupTime: opts.warmupMs ?? 100,
    iterations: opts.iterations ?? 10,
    throws: true,
  });
  const setup = opts.setup;
  bench.add(name, fn, setup ? { beforeEach: setup } : {});
  await bench.run();
  const task = bench.tasks[0];
  const r = task?.result;
  if (!r || !('latency' in r)) throw new Error(`benchmark ${name} produced no result`);
  const medianMs = r.latency.p50 ?? r.latency.mean;
  const nsPerOp = (medianMs * 1e6) / batch;
  return {
    nsPerOp,
    opsPerSec: 1e9 / nsPerOp,
    spread: medianMs > 0 ? r.latency.mad / medianMs : 0,
    samples: r.latency.samplesCount,
  };
}

/** Whether a row meets its target (undefined when it has none). */
export function meets(row: BenchRow): boolean | undefined {
  if (!row.target) return undefined;
  return row.target.op === '>=' ? row.value >= row.target.value : row.value <= row.target.value;
}

function fmt(n: number): string {
  if (n === 0) return '0';
  const a = Math.abs(n);
  if (a >= 1e9) return `${(n / 1e9).toFixed(2)} G`;
  if (a >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (a >= 1e4) return `${(n / 1e3).toFixed(1)} k`;
  if (a >= 100) return n.toFixed(0);
  if (a >= 1) return n.toFixed(2);
  return n.toPrecision(3);
}

/** A Markdown table of rows (one area). */
export function markdownTable(rows: readonly BenchRow[]): string {
  const lines = ['| figure | median | spread | target | ratio | met |', '|---|---:|---:|---|---|---|'];
  for (const r of rows) {
    const met = meets(r);
    lines.push(
      `| ${r.name}${r.note ? ` — ${r.note}` : ''} | ${fmt(r.value)} ${r.unit} | ${r.spread === undefined ? '' : `±${(r.spread * 100).toFixed(1)} %`} | ${
        r.target ? `${r.target.op === '>=' ? '≥' : '≤'} ${fmt(r.target.value)} ${r.unit}` : ''
      } | ${r.ratio ? `${r.ratio.value.toFixed(2)}× ${r.ratio.to}` : ''} | ${met === undefined ? '' : met ? 'yes' : '**no**'} |`,
    );
  }
  return lines.join('\n');
}

/** Prints rows grouped by area (for running one benchmark file alone). */
export function printRows(rows: readonly BenchRow[]): void {
  const areas = [...new Set(rows.map((r) => r.area))];
  for (const a of areas) {
    console.log(`\n## ${a}\n`);
    console.log(markdownTable(rows.filter((r) => r.area === a)));
  }
}

/** True when the module at `url` is the script node was started with. */
export function isMain(url: string): boolean {
  const arg = process.argv[1];
  return arg !== undefined && new URL(url).pathname.endsWith(arg.replace(/^\.\//, ''));
}
