/**
 * Summarises a V8 CPU profile (`node --cpu-prof`): the functions with the most self time, as a
 * share of the samples — optionally only the samples inside measured intervals (`--windows
 * FILE`, written by bench/profile.ts; garbage collection in them counts) or taken while a given
 * function was on the stack (`--under NAME`; a function V8 inlined is not on the stack).
 *
 *   npx tsx bench/cpuprofile_top.ts FILE.cpuprofile... [--windows FILE] [--under NAME] [--top N]
 *
 * Given several files (`--cpu-prof` writes one per thread), it reports on the one with the most
 * selected samples.
 *
 * Prints a Markdown table: function, file (repository-relative), self share, and inclusive share
 * (time with the function anywhere on the stack, within the same selection). Functions are told
 * apart by name and file.
 */
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { fileURLToPath } from 'node:url';

interface CallFrame {
  readonly functionName: string;
  readonly url: string;
}

interface ProfileNode {
  readonly id: number;
  readonly callFrame: CallFrame;
  readonly children?: number[];
}

interface CpuProfile {
  readonly nodes: ProfileNode[];
  readonly samples: number[];
  /** µs between samples (the first relative to startTime). */
  readonly timeDeltas: number[];
  readonly startTime: number;
}

function where(f: CallFrame): string {
  if (f.url === '') return '(native / V8)';
  const path = f.url.startsWith('file:') ? fileURLToPath(f.url) : f.url;
  // Files only: tsx's transpiled code does not keep the source's line numbers.
  return path.startsWith('/') ? relative(process.cwd(), path) : path;
}

function label(f: CallFrame): string {
  return f.functionName === '' ? '(anonymous)' : f.functionName;
}

interface Summary {
  readonly total: number;
  readonly self: Map<string, number>;
  readonly incl: Map<string, number>;
  readonly loc: Map<string, string>;
}

/**
 * Self and inclusive samples per function (name + file), of the samples under `under` (a
 * function on the stack) and inside `windows` (intervals on the profile's clock), if given.
 */
function summarise(prof: CpuProfile, under: string | null, windows: [number, number][] | null): Summary {
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of prof.nodes) {
    byId.set(n.id, n);
    for (const c of n.children ?? []) parent.set(c, n.id);
  }
  /** The stack of a node, leaf first. */
  const stack = (id: number): ProfileNode[] => {
    const out: ProfileNode[] = [];
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const n = byId.get(at);
      if (n) out.push(n);
    }
    return out;
  };
  const key = (f: CallFrame): string => `${label(f)}\u0000${where(f)}`;
  const self = new Map<string, number>();
  const incl = new Map<string, number>();
  const loc = new Map<string, string>();
  let total = 0;
  let t = prof.startTime;
  let w = 0;
  for (let i = 0; i < prof.samples.length; i++) {
    const id = prof.samples[i] as number;
    t += prof.timeDeltas[i] ?? 0;
    if (windows) {
      while (w < windows.length && (windows[w] as [number, number])[1] < t) w++;
      const win = windows[w];
      if (!win || t < win[0]) continue;
    }
    const frames = stack(id);
    if (frames.some((n) => n.callFrame.functionName === '(idle)')) continue;
    if (under !== null) {
      const at = frames.findIndex((n) => n.callFrame.functionName === under);
      if (at < 0) continue;
      frames.length = at + 1; // only the part of the stack from `under` down
    }
    const leaf = frames[0];
    if (!leaf) continue;
    total++;
    const k = key(leaf.callFrame);
    self.set(k, (self.get(k) ?? 0) + 1);
    const seen = new Set<string>();
    for (const n of frames) {
      const kk = key(n.callFrame);
      loc.set(kk, where(n.callFrame));
      if (seen.has(kk)) continue;
      seen.add(kk);
      incl.set(kk, (incl.get(kk) ?? 0) + 1);
    }
  }
  return { total, self, incl, loc };
}

function main(argv: string[]): void {
  const files: string[] = [];
  let under: string | null = null;
  let windows: [number, number][] | null = null;
  let top = 12;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '--under') under = argv[++i] ?? null;
    else if (a === '--windows')
      windows = JSON.parse(readFileSync(argv[++i] as string, 'utf8')) as [number, number][];
    else if (a === '--top') top = Number(argv[++i]);
    else files.push(a);
  }
  if (files.length === 0) {
    throw new Error('usage: cpuprofile_top.ts FILE.cpuprofile... [--windows FILE] [--under NAME] [--top N]');
  }
  let best: { file: string; s: Summary } | null = null;
  for (const file of files) {
    const s = summarise(JSON.parse(readFileSync(file, 'utf8')) as CpuProfile, under, windows);
    if (!best || s.total > best.s.total) best = { file, s };
  }
  const { total, self, incl, loc } = (best as { s: Summary }).s;
  const rows = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, top);
  const sel = [windows ? 'inside the measured intervals' : '', under ? `with ${under} on the stack` : '']
    .filter((x) => x !== '')
    .join(', ');
  console.log(`${total} samples${sel ? ` ${sel}` : ''} (idle excluded)\n`);
  console.log('| function | file | self | inclusive |');
  console.log('|---|---|---:|---:|');
  const pct = (n: number): string => `${((100 * n) / Math.max(1, total)).toFixed(1)} %`;
  for (const [k, n] of rows) {
    const name = k.split('\u0000')[0] ?? k;
    console.log(`| ${name} | ${loc.get(k) ?? ''} | ${pct(n)} | ${pct(incl.get(k) ?? 0)} |`);
  }
}

main(process.argv.slice(2));
