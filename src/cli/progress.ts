/**
 * Progress for long work, on stderr so that stdout (`--json`) stays machine-readable:
 *
 * - on a terminal, a bar redrawn in place (`\r` and erase-line), at most every 50 ms, erased when
 *   the work is done;
 * - otherwise (stderr piped or redirected, `CI` set, `TERM=dumb`), plain lines without escape
 *   codes, at most one every `intervalMs` (default 5 s, `GUESTMEM_PROGRESS_INTERVAL_MS`), and
 *   none for work that ends before the first interval — a log stays quiet for quick commands.
 *
 * Written here rather than taken from a library: the two modes are forty lines, and the libraries
 * that do both (cli-progress, listr2) bring more than they save.
 */

/** The part of a stream progress writes to. */
export interface ProgressStream {
  readonly isTTY?: boolean;
  readonly columns?: number;
  write(text: string): boolean;
}

export interface ProgressOptions {
  readonly stream?: ProgressStream;
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Minimum ms between two lines in line mode. */
  readonly intervalMs?: number;
  /** The clock, in ms (tests pass their own). */
  readonly now?: () => number;
}

/** Whether `stream` gets a redrawn bar (a terminal, not CI, not TERM=dumb). */
export function wantsBar(stream: ProgressStream, env: Readonly<Record<string, string | undefined>>): boolean {
  const ci = env['CI'];
  const inCi = ci !== undefined && ci !== '' && ci !== '0' && ci !== 'false';
  return stream.isTTY === true && !inCi && env['TERM'] !== 'dumb';
}

const BAR_WIDTH = 24;
const REDRAW_MS = 50;

/** One piece of long work: `update` as it goes, `done` at the end. */
export class Progress {
  private readonly stream: ProgressStream;
  private readonly bar: boolean;
  private readonly intervalMs: number;
  private readonly now: () => number;
  private readonly started: number;
  private last: number;
  private drawn = false;
  private finished = false;

  constructor(
    private readonly label: string,
    private total: number,
    options: ProgressOptions = {},
  ) {
    const env = options.env ?? process.env;
    this.stream = options.stream ?? process.stderr;
    this.bar = wantsBar(this.stream, env);
    const fromEnv = Number(env['GUESTMEM_PROGRESS_INTERVAL_MS']);
    this.intervalMs =
      options.intervalMs ??
      (env['GUESTMEM_PROGRESS_INTERVAL_MS'] !== undefined && fromEnv >= 0 ? fromEnv : 5000);
    this.now = options.now ?? (() => performance.now());
    this.started = this.now();
    this.last = this.bar ? Number.NEGATIVE_INFINITY : this.started;
  }

  /** True when this progress is a redrawn bar (a terminal), false for plain lines. */
  get drawsBar(): boolean {
    return this.bar;
  }

  /** `done` of `total` units are finished; `detail` says what is being worked on. */
  update(done: number, detail = '', total = this.total): void {
    if (this.finished) return;
    this.total = total;
    const t = this.now();
    if (this.bar) {
      if (t - this.last < REDRAW_MS && done < total) return;
      this.last = t;
      this.stream.write(`\r\x1b[K${this.barLine(done, detail)}`);
      this.drawn = true;
      return;
    }
    if (t - this.last < this.intervalMs) return;
    this.last = t;
    this.stream.write(`${this.plainLine(done, detail)}\n`);
  }

  /** Writes a line of its own (a result, a warning) without tearing the bar. */
  log(line: string): void {
    if (this.bar && this.drawn) this.stream.write('\r\x1b[K');
    this.stream.write(`${line}\n`);
    this.drawn = false;
  }

  /** Ends the work: erases the bar (a line mode that printed anything gets a last line). */
  done(summary?: string): void {
    if (this.finished) return;
    this.finished = true;
    if (this.bar) {
      if (this.drawn) this.stream.write('\r\x1b[K');
      if (summary !== undefined) this.stream.write(`${summary}\n`);
      return;
    }
    if (summary !== undefined) this.stream.write(`${summary}\n`);
  }

  private elapsed(): string {
    return `${((this.now() - this.started) / 1000).toFixed(1)} s`;
  }

  private plainLine(done: number, detail: string): string {
    return `${this.label}: ${done}/${this.total}${detail ? ` ${detail}` : ''} (${this.elapsed()})`;
  }

  private barLine(done: number, detail: string): string {
    const frac = this.total > 0 ? Math.min(1, Math.max(0, done / this.total)) : 0;
    const full = Math.round(frac * BAR_WIDTH);
    const bar = `${'█'.repeat(full)}${'░'.repeat(BAR_WIDTH - full)}`;
    const line = `${this.label} ${bar} ${done}/${this.total} ${this.elapsed()}${detail ? `  ${detail}` : ''}`;
    const cols = (this.stream.columns ?? 0) >= 20 ? (this.stream.columns as number) : 80; // a pty may say 0
    return line.length >= cols ? `${line.slice(0, Math.max(0, cols - 2))}…` : line;
  }
}
