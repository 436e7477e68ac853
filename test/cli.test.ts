/**
 * The `guestmem` command, end to end: every command (and its --help) on the model; progress on
 * stderr without escape codes when stderr is not a terminal, so `--json` stdout still parses;
 * `--trace-events` files that are well-formed; and bad input — unknown scenario, command, option
 * or backend, malformed scenario and trace files, a missing /dev/kvm — giving one clear line
 * (`guestmem: …`), no stack unless `--debug`, and a non-zero exit.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { checkTraceEventFile, type TraceEventFile } from '../src/vmm/trace_events.js';

const dir = mkdtempSync(join(tmpdir(), 'guestmem-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function cli(
  args: readonly string[],
  env: Record<string, string> = {},
): { code: number; out: string; err: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
    encoding: 'utf8',
    env: { ...process.env, GUESTMEM_NO_REAL_KVM: '1', ...env },
    timeout: 120_000,
  });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

const ESC = '\u001b';
/** A missing KVM device: the path the real backend would open instead of /dev/kvm. */
const NO_KVM = { GUESTMEM_KVM_DEVICE: join(dir, 'no-such-kvm') };

describe('guestmem commands', () => {
  it('run (default scenario) prints a readable report and exits 0', () => {
    const r = cli(['run']);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/^confidential-boot on the model — PASS/);
    expect(r.out).toContain('memory map');
    expect(r.out).toMatch(/exits: \d+/);
    expect(r.out).toMatch(/checks passed/);
  });

  it('run --json prints the report as JSON on stdout; progress lines go to stderr, without escape codes', () => {
    const r = cli(['run', 'dirty-tracking', '--json'], { GUESTMEM_PROGRESS_INTERVAL_MS: '0' });
    expect(r.code, r.err).toBe(0);
    const rep = JSON.parse(r.out) as { scenario: string; status: string; runs: unknown[] };
    expect(rep).toMatchObject({ scenario: 'dirty-tracking', status: 'pass' });
    expect(rep.runs.length).toBeGreaterThan(0);
    expect(r.err).toMatch(/^run dirty-tracking on model: 0\/1 default/m);
    expect(r.err).toMatch(/^run dirty-tracking on model: 1\/1 default done/m);
    expect(r.err).not.toContain(ESC);
    expect(r.err).not.toContain('\r');
  });

  it('list names the five shipped scenarios', () => {
    const r = cli(['list']);
    expect(r.code).toBe(0);
    for (const s of ['confidential-boot', 'pci-scan', 'gmem-lifetimes', 'memfd-private', 'dirty-tracking']) {
      expect(r.out).toContain(s);
    }
  });

  it('run --trace writes a trace that replay reproduces on the model, with progress', () => {
    const trace = join(dir, 'boot.json');
    expect(cli(['run', 'dirty-tracking', '--trace', trace]).code).toBe(0);
    expect(JSON.parse(readFileSync(trace, 'utf8'))).toMatchObject({ format: 'guestmem-trace', version: 1 });
    const r = cli(['replay', trace], { GUESTMEM_PROGRESS_INTERVAL_MS: '0' });
    expect(r.code, r.out + r.err).toBe(0);
    expect(r.out).toMatch(/^(\d+) calls replayed identically on model\n$/);
    const calls = Number(/^(\d+)/.exec(r.out)?.[1]);
    expect(r.err).toContain(`replay on model: ${calls}/${calls}`);
    expect(r.err).not.toContain(ESC);
  });

  it('run --trace-events writes a Chrome trace-event file (KVM_RUN, faults, conversions, invalidations)', () => {
    const file = join(dir, 'boot.trace-events.json');
    const r = cli(['run', '--trace-events', file, '--json']);
    expect(r.code, r.err).toBe(0);
    const rep = JSON.parse(r.out) as { runs: { exits: Record<string, number> }[] };
    const te = JSON.parse(readFileSync(file, 'utf8')) as TraceEventFile;
    expect(checkTraceEventFile(te)).toEqual([]);
    expect(te.metadata).toMatchObject({ command: 'run', scenario: 'confidential-boot', backend: 'model' });
    const names = new Set(te.traceEvents.map((e) => e.name));
    for (const n of [
      'KVM_RUN',
      'kvm_page_fault',
      'convert to private',
      'kvm_mmu_invalidate',
      'kvm_hypercall',
    ]) {
      expect(names).toContain(n);
    }
    const runs = te.traceEvents.filter((e) => e.name === 'KVM_RUN').length;
    const exits = Object.values(rep.runs[0]?.exits ?? {}).reduce((a, b) => a + b, 0);
    expect(runs).toBe(exits);
  });

  it('replay --trace-events writes the replay as a timeline', () => {
    const trace = join(dir, 'mf.json');
    expect(cli(['run', 'memfd-private', '--trace', trace]).code).toBe(0);
    const file = join(dir, 'mf.trace-events.json');
    const r = cli(['replay', trace, '--trace-events', file]);
    expect(r.code, r.out + r.err).toBe(0);
    const te = JSON.parse(readFileSync(file, 'utf8')) as TraceEventFile;
    expect(checkTraceEventFile(te)).toEqual([]);
    const mf = te.traceEvents.filter(
      (e) => e.name === 'KVM_RUN' && e.args?.['exit_reason'] === 'KVM_EXIT_MEMORY_FAULT',
    );
    expect(mf).toHaveLength(5);
  });

  it('inspect shows the memory map and the model counters', () => {
    const r = cli(['inspect', 'memfd-private']);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain('"memoryMap"');
    expect(r.out).toContain('"kvmFaults"');
  });

  it('demo tours the host memory model and leaks nothing', () => {
    const r = cli(['demo']);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain('memfile_notifier: invalidate');
    expect(r.out).toMatch(/leaks \{"frames":0,"fds":0/);
  });

  it('conform runs (a file of) the conformance suite and prints one summary line', () => {
    const r = cli(['conform', '--backend', 'model', 'caps'], { GUESTMEM_PROGRESS_INTERVAL_MS: '0' });
    expect(r.code, r.out + r.err).toBe(0);
    expect(r.out).toMatch(/^conform: PASS — \d+ passed, \d+ skipped, 0 failed in 1 files/m);
    expect(r.err).toMatch(/^conform: 1\/1 test\/conformance\/caps\.test\.ts/m);
    expect(r.err).not.toContain(ESC);
  });

  it.each(['run', 'list', 'replay', 'conform', 'bench', 'inspect', 'demo'])('%s --help', (cmd) => {
    const r = cli([cmd, '--help']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(new RegExp(`^Usage: guestmem ${cmd}`));
  });
});

describe('bad input: one line, no stack, non-zero exit', () => {
  const badYaml = join(dir, 'bad.yaml');
  writeFileSync(
    badYaml,
    'name: bad\ndescription: x\nvmType: nonsense\nmemory: { lowRam: 4MiB }\nguest: [halt]\n',
  );
  const badJson = join(dir, 'bad.json');
  writeFileSync(badJson, '{\n  "name": "bad",\n  "description": "x",\n  "vmType": "default",,\n}\n');
  const badField = join(dir, 'field.json');
  writeFileSync(
    badField,
    '{\n  "name": "f",\n  "description": "x",\n  "vmType": "default",\n  "memory": { "lowRam": "lots" },\n  "guest": ["halt"]\n}\n',
  );
  const twoBad = join(dir, 'two.yaml');
  writeFileSync(twoBad, 'name: two\ndescription: x\nvmType: nonsense\nmemory: { lowRam: 4MiB }\nguest: []\n');
  const badTrace = join(dir, 'bad-trace.json');
  writeFileSync(badTrace, '{"format": "something-else", "version": 1, "calls": []}\n');

  it.each<[string, string[], Record<string, string>, RegExp]>([
    ['an unknown scenario', ['run', 'no-such-scenario'], {}, /no scenario 'no-such-scenario' \(shipped: /],
    ['an unknown scenario (inspect)', ['inspect', 'nope'], {}, /no scenario 'nope'/],
    ['an unknown command', ['frobnicate'], {}, /unknown command 'frobnicate'/],
    ['an unknown option', ['run', '--bogus'], {}, /unknown option '--bogus'/],
    [
      'an unknown backend',
      ['run', '--backend', 'xen'],
      {},
      /'xen' is invalid\. Allowed choices are model, kvm/,
    ],
    ['an unknown backend (replay)', ['replay', badTrace, '--backend', 'qemu'], {}, /'qemu' is invalid/],
    ['a missing scenario file', ['run', '--file', join(dir, 'nope.yaml')], {}, /ENOENT.*nope\.yaml/],
    [
      'malformed YAML: the field, value and line',
      ['run', '--file', badYaml],
      {},
      /bad\.yaml:3:\d+: vmType: .*nonsense/,
    ],
    [
      'malformed JSON: the line',
      ['run', '--file', badJson],
      {},
      /bad\.json:4:\d+: \(top level\): not valid YAML\/JSON/,
    ],
    [
      'a field of the wrong type',
      ['run', '--file', badField],
      {},
      /field\.json:5:\d+: memory\.lowRam: .*"lots"/,
    ],
    ['a name and --file', ['run', 'pci-scan', '--file', badYaml], {}, /a scenario name or --file, not both/],
    ['a file that is not a trace', ['replay', badTrace], {}, /something-else|format/],
    ['a missing trace', ['replay', join(dir, 'none.json')], {}, /ENOENT/],
    ['bench --runs 0', ['bench', '--runs', '0'], {}, /--runs 0: want an integer ≥ 1/],
    [
      'bench --only matching nothing',
      ['bench', '--only', 'zzz'],
      {},
      /no benchmark module matches --only zzz/,
    ],
    ['conform matching no file', ['conform', 'zzz'], {}, /no conformance test file matches zzz/],
    [
      'run --backend kvm without /dev/kvm',
      ['run', '--backend', 'kvm'],
      NO_KVM,
      /backend kvm is unavailable: .*no-such-kvm does not exist/,
    ],
    [
      'replay --backend kvm without /dev/kvm',
      ['replay', badTrace, '--backend', 'kvm'],
      NO_KVM,
      /something-else|format/,
    ],
    [
      'conform --backend kvm without /dev/kvm',
      ['conform', '--backend', 'kvm'],
      NO_KVM,
      /backend kvm is unavailable: .*no-such-kvm does not exist/,
    ],
  ])('%s', (_what, args, env, message) => {
    const r = cli(args, env);
    expect(r.code, r.out + r.err).not.toBe(0);
    const lines = r.err.trim().split('\n');
    expect(lines, r.err).toHaveLength(1);
    expect(lines[0]).toMatch(/^guestmem: /);
    expect(lines[0]).toMatch(message);
    expect(r.err).not.toMatch(/\n\s+at /);
  });

  it('replay --backend kvm of a good trace without /dev/kvm names the device', () => {
    const trace = join(dir, 'dt.json');
    expect(cli(['run', 'dirty-tracking', '--trace', trace]).code).toBe(0);
    const r = cli(['replay', trace, '--backend', 'kvm'], NO_KVM);
    expect(r.code).toBe(1);
    expect(r.err.trim()).toMatch(
      /^guestmem: backend kvm is unavailable: .*no-such-kvm does not exist \(no KVM on this machine\)$/,
    );
  });

  it('a file with several problems gives one line per problem, each with its line', () => {
    const r = cli(['run', '--file', twoBad]);
    expect(r.code).toBe(1);
    const lines = r.err.trim().split('\n');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^guestmem: .*two\.yaml:3:\d+: vmType: .*"nonsense"$/);
    expect(lines[1]).toMatch(/^guestmem: .*two\.yaml:5:\d+: guest: /);
  });

  it('--debug shows the stack on an error', () => {
    const r = cli(['--debug', 'run', 'no-such-scenario']);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/no-such-scenario/);
    expect(r.err).toMatch(/\n\s+at /);
  });
});
