// The scenario runner: what makes a run fail or skip, variants, and a host factory of one's own.
import { describe, expect, it } from 'vitest';
import {
  type Backend,
  defineScenario,
  MiB,
  modelBackend,
  runScenario,
  type Scenario,
  ScenarioError,
} from './index.js';

const base = {
  description: 'a test scenario',
  vmType: 'default',
  memory: { lowRamBytes: 2 * MiB },
  pci: { holes: 'mmio', ecamBuses: 1 },
} as const;

describe('defineScenario', () => {
  it.each([
    [{ name: 'Not Kebab' }, /not kebab-case/],
    [{ name: 'ok', variants: [{ name: 'a' }, { name: 'a' }] }, /variant 'a' is defined twice/],
  ])('refuses %j', (extra, why) => {
    expect(() => defineScenario({ ...base, guest: (b) => b.halt(), ...extra })).toThrow(ScenarioError);
    expect(() => defineScenario({ ...base, guest: (b) => b.halt(), ...extra })).toThrow(why);
  });
});

describe('runs and their status', () => {
  it('passes when the guest halts, its own checks hold and the scenario checks hold', async () => {
    const s = defineScenario({
      ...base,
      name: 'ok',
      guest: (b) => b.print('x').halt(),
      check: (ctx) => {
        ctx.expectEqual('serial', ctx.serial, 'x');
      },
    });
    const r = await runScenario(s);
    expect(r).toMatchObject({ scenario: 'ok', backend: 'model', status: 'pass' });
    expect(r.runs[0]?.checks.map((c) => [c.name, c.pass])).toEqual([
      ['the run ends: halt', true],
      ["the guest's own checks passed (no report-port exits)", true],
      ['serial', true],
      ['host teardown leaves nothing (model)', true],
    ]);
  });

  it('fails when a guest cmp finds another value, naming the tag and the value', async () => {
    const s = defineScenario({
      ...base,
      name: 'cmp',
      guest: (b) => b.storeImm(4, MiB, 3).cmp(4, MiB, 4, 0x77).halt(),
    });
    const r = await runScenario(s);
    expect(r.status).toBe('fail');
    expect(r.runs[0]?.guestReports).toEqual([{ tag: 0x77, value: '0x3' }]);
    expect(r.runs[0]?.checks.find((c) => !c.pass)?.detail).toBe('tag 119 found 0x3');
  });

  it('fails when a check throws, or a sync handler throws (the run ends as an error)', async () => {
    const s = defineScenario({
      ...base,
      name: 'throws',
      guest: (b) => b.sync(1).halt(),
      on: {
        sync: () => {
          throw new Error('handler broke');
        },
      },
      check: () => {
        throw new Error('check broke');
      },
    });
    const r = await runScenario(s);
    expect(r.status).toBe('fail');
    expect(r.runs[0]?.outcome).toMatchObject({
      end: 'error',
      detail: 'the VMM failed: Error: handler broke',
    });
    expect(r.runs[0]?.checks.find((c) => c.name === 'the scenario check ran')?.detail).toBe(
      'Error: check broke',
    );
  });

  it('a machine that cannot be built fails the run, saying why', async () => {
    const s = defineScenario({
      ...base,
      name: 'bad-machine',
      memory: { lowRamBytes: MiB },
      guest: (b) => b.halt(),
    });
    const r = await runScenario(s);
    expect(r.status).toBe('fail');
    expect(r.runs[0]?.checks[0]).toMatchObject({ name: 'machine setup', pass: false });
    expect(r.runs[0]?.checks[0]?.detail).toMatch(/LayoutError: lowRamBytes 1048576/);
  });

  it('variants run on fresh machines; `variants` selects some; compare sees them all', async () => {
    const seen: string[] = [];
    const s: Scenario = defineScenario({
      ...base,
      name: 'vars',
      variants: [
        { name: 'small', memory: { lowRamBytes: 2 * MiB } },
        { name: 'large', memory: { lowRamBytes: 8 * MiB } },
      ],
      guest: (b) => b.halt(),
      check: (ctx) => {
        seen.push(`${ctx.variant}:${ctx.layout.lowRam.size / MiB}`);
      },
      compare: (runs, c) => {
        c.check('both ran', runs.length === 2, runs.map((r) => r.variant).join());
      },
    });
    const all = await runScenario(s);
    expect(seen).toEqual(['small:2', 'large:8']);
    expect(all.checks).toEqual([{ name: 'both ran', pass: true, detail: 'small,large' }]);
    const one = await runScenario(s, { variants: ['large'] });
    expect(one.runs.map((r) => r.variant)).toEqual(['large']);
    expect(one.checks).toEqual([]); // compare needs every variant
  });

  it('a model-only scenario is skipped elsewhere, with its reason; a backend can refuse a request', async () => {
    const elsewhere: Backend = { ...modelBackend, name: 'kvm' };
    const s = defineScenario({
      ...base,
      name: 'mo',
      modelOnly: { reason: 'looks inside the model' },
      guest: (b) => b.halt(),
    });
    const r = await runScenario(s, { hostFactory: elsewhere });
    expect(r).toMatchObject({ status: 'skipped', skipReason: 'looks inside the model', backend: 'kvm' });
    const picky: Backend = {
      ...modelBackend,
      unsupported: (req) => (req.gmemLifetime ? 'no choice of lifetime here' : null),
    };
    const t = defineScenario({
      ...base,
      name: 'gl',
      host: { gmemLifetime: 'slot-pins-file' },
      guest: (b) => b.halt(),
    });
    expect(await runScenario(t, { hostFactory: picky })).toMatchObject({
      status: 'skipped',
      skipReason: 'no choice of lifetime here',
    });
  });

  it("a host factory of one's own is used for every run (e.g. to record calls)", async () => {
    const calls: string[] = [];
    const recording: Backend = {
      ...modelBackend,
      create(req) {
        const bh = modelBackend.create(req);
        const host = bh.host;
        return {
          ...bh,
          host: new Proxy(host, {
            get(target, prop, receiver) {
              const v = Reflect.get(target, prop, receiver);
              if (typeof v !== 'function') return v;
              return (...args: unknown[]) => {
                calls.push(String(prop));
                return Reflect.apply(v, target, args);
              };
            },
          }),
        };
      },
    };
    const s = defineScenario({ ...base, name: 'rec', guest: (b) => b.halt() });
    const r = await runScenario(s, { hostFactory: recording });
    expect(r.status).toBe('pass');
    expect(calls).toContain('mmap'); // the host maps guest RAM
    expect(calls).toContain('openKvm');
    expect(calls[calls.length - 1]).toBe('dispose');
  });

  it('a SW_PROTECTED scenario on a backend without it is skipped, naming the capability', async () => {
    // The model with a patched /dev/kvm answer: KVM_CAP_VM_TYPES without SW_PROTECTED.
    const noProtected: Backend = {
      ...modelBackend,
      create(req) {
        const bh = modelBackend.create(req);
        const h = bh.host;
        const openKvm = h.openKvm.bind(h);
        h.openKvm = () => {
          const k = openKvm();
          const check = k.checkExtension.bind(k);
          k.checkExtension = (cap: number) => (cap === 235 ? 1 : check(cap));
          return k;
        };
        return bh;
      },
    };
    const s = defineScenario({ ...base, name: 'sp', vmType: 'sw-protected', guest: (b) => b.halt() });
    const r = await runScenario(s, { hostFactory: noProtected });
    expect(r).toMatchObject({
      status: 'skipped',
      skipReason: 'KVM_CAP_VM_TYPES is 0x1: no KVM_X86_SW_PROTECTED_VM (private memory)',
    });
  });
});
