/**
 * The `guestmem` command, end to end: every command on the model, and bad input (unknown
 * scenario, malformed scenario file, unknown backend) giving one clear line and a non-zero exit.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const dir = mkdtempSync(join(tmpdir(), 'guestmem-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function cli(...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
    encoding: 'utf8',
    env: { ...process.env, GUESTMEM_NO_REAL_KVM: '1' },
    timeout: 120_000,
  });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

describe('guestmem', () => {
  it('run (default scenario) prints a readable report and exits 0', () => {
    const r = cli('run');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/^confidential-boot on the model — PASS/);
    expect(r.out).toContain('memory map');
    expect(r.out).toMatch(/exits: \d+/);
    expect(r.out).toMatch(/checks passed/);
  });

  it('run --json prints the report as JSON', () => {
    const r = cli('run', 'dirty-tracking', '--json');
    expect(r.code, r.err).toBe(0);
    const rep = JSON.parse(r.out) as { scenario: string; status: string; runs: unknown[] };
    expect(rep).toMatchObject({ scenario: 'dirty-tracking', status: 'pass' });
    expect(rep.runs.length).toBeGreaterThan(0);
  });

  it('list names the five shipped scenarios', () => {
    const r = cli('list');
    expect(r.code).toBe(0);
    for (const s of ['confidential-boot', 'pci-scan', 'gmem-lifetimes', 'memfd-private', 'dirty-tracking']) {
      expect(r.out).toContain(s);
    }
  });

  it('run --trace writes a trace that replay reproduces on the model', () => {
    const trace = join(dir, 'boot.json');
    expect(cli('run', 'dirty-tracking', '--trace', trace).code).toBe(0);
    expect(JSON.parse(readFileSync(trace, 'utf8'))).toMatchObject({ format: 'guestmem-trace', version: 1 });
    const r = cli('replay', trace);
    expect(r.code, r.out + r.err).toBe(0);
    expect(r.out).toMatch(/calls replayed identically on model/);
  });

  it('inspect shows the memory map and the model counters', () => {
    const r = cli('inspect', 'memfd-private');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain('"memoryMap"');
    expect(r.out).toContain('"kvmFaults"');
  });

  it('demo tours the host memory model and leaks nothing', () => {
    const r = cli('demo');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain('memfile_notifier: invalidate');
    expect(r.out).toMatch(/leaks \{"frames":0,"fds":0/);
  });

  it('an unknown scenario is one line and exit 1', () => {
    const r = cli('run', 'no-such-scenario');
    expect(r.code).toBe(1);
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toMatch(/^guestmem: .*no-such-scenario/);
  });

  it('a malformed scenario file names the field, the value and the line', () => {
    const f = join(dir, 'bad.yaml');
    writeFileSync(f, 'name: bad\ndescription: x\nvmType: nonsense\n');
    const r = cli('run', '--file', f);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/bad\.yaml:3:\d+/);
    expect(r.err).toContain('vmType');
    expect(r.err).toContain('nonsense');
  });

  it('an unknown backend is refused by name', () => {
    const r = cli('run', '--backend', 'xen');
    expect(r.code).not.toBe(0);
    expect(r.err).toMatch(/xen/);
  });

  it('--debug shows the stack on an error', () => {
    const r = cli('--debug', 'run', 'no-such-scenario');
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/\n\s+at /);
  });
});
