/**
 * Progress: a redrawn bar only on a terminal outside CI; elsewhere plain lines without escape
 * codes, at most one per interval and none for work shorter than the interval.
 */
import { describe, expect, it } from 'vitest';
import { Progress, type ProgressStream, wantsBar } from './progress.js';

function sink(isTTY: boolean): ProgressStream & { text: string } {
  const s = {
    isTTY,
    columns: 80,
    text: '',
    write(t: string): boolean {
      s.text += t;
      return true;
    },
  };
  return s;
}

describe('progress', () => {
  it('draws a bar only on a terminal that is not CI or TERM=dumb', () => {
    expect(wantsBar(sink(true), {})).toBe(true);
    expect(wantsBar(sink(false), {})).toBe(false);
    expect(wantsBar(sink(true), { CI: 'true' })).toBe(false);
    expect(wantsBar(sink(true), { CI: '1' })).toBe(false);
    expect(wantsBar(sink(true), { CI: 'false' })).toBe(true);
    expect(wantsBar(sink(true), { TERM: 'dumb' })).toBe(false);
  });

  it('not on a terminal: quiet lines, one per interval, without escape codes', () => {
    const out = sink(false);
    let now = 0;
    const p = new Progress('replay', 10, { stream: out, env: {}, intervalMs: 1000, now: () => now });
    p.update(1);
    expect(out.text).toBe(''); // nothing before the first interval
    now = 1500;
    p.update(3, 'call 3');
    now = 1600;
    p.update(4); // within the interval: nothing
    now = 2600;
    p.update(9);
    p.done();
    expect(out.text).toBe('replay: 3/10 call 3 (1.5 s)\nreplay: 9/10 (2.6 s)\n');
    expect(out.text.includes('\u001b') || out.text.includes('\r')).toBe(false);
  });

  it('work shorter than the interval prints nothing but its summary', () => {
    const out = sink(false);
    const p = new Progress('run', 3, { stream: out, env: {}, intervalMs: 5000, now: () => 10 });
    p.update(1);
    p.update(3);
    p.done('finished');
    expect(out.text).toBe('finished\n');
  });

  it('in CI a terminal gets lines too', () => {
    const out = sink(true);
    let now = 0;
    const p = new Progress('bench', 2, { stream: out, env: { CI: 'true' }, intervalMs: 0, now: () => now });
    now = 1;
    p.update(1, 'kvm');
    p.done();
    expect(out.text).toBe('bench: 1/2 kvm (0.0 s)\n');
  });

  it('on a terminal: a bar redrawn in place, erased at the end', () => {
    const out = sink(true);
    let now = 0;
    const p = new Progress('conform', 4, { stream: out, env: {}, now: () => now });
    p.update(1, 'caps');
    now = 10;
    p.update(2); // within 50 ms of the last redraw: skipped
    now = 100;
    p.update(2, 'memslots');
    p.log('a line of its own');
    p.done();
    const frames = out.text.split('\r\x1b[K').filter((f) => f !== '');
    expect(frames[0]).toMatch(/^conform █{6}░{18} 1\/4 0\.0 s {2}caps$/);
    expect(frames[1]).toMatch(/^conform █{12}░{12} 2\/4 0\.1 s {2}memslots$/);
    expect(frames[2]).toBe('a line of its own\n');
    expect(out.text.endsWith('a line of its own\n')).toBe(true); // nothing redrawn after the log line
  });
});
