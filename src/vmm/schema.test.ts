// Declarative scenarios (YAML and JSON): valid ones run like defineScenario's; invalid ones are
// refused with errors that name the field, the value found, and its line and column.
import { describe, expect, it } from 'vitest';
import { runScenario } from './index.js';
import { parseScenario, ScenarioValidationError, type ValidationIssue } from './schema.js';

const HELLO = `# a small scenario: serial output, a DMA transfer into RAM, a VMM action at a sync point
name: hello-dma
description: the DMA device writes into guest RAM and the guest checks it
vmType: default
memory:
  lowRam: 4MiB
  backing: memfd
pci: { holes: mmio, ecamBuses: 1 }
guest:
  - print: "hi\\n"
  - dma: { dst: lowData, len: 16, expectStatus: done, tag: 1 }
  - cmp: { size: 4, at: lowData, expect: 0x463f3831, tag: 2 }
  - storeImm: { size: 4, at: "lowData+0x1000", imm: 0x1234 }
  - sync: 7
  - cmp: { size: 1, at: "lowData+0x2000", expect: 0x5a, tag: 3 }
  - mov: { dst: r9, imm: "lowData+0x3000" }
  - loop:
      counter: r8
      count: 3
      body:
        - storeImm: { size: 1, at: { base: r9 }, imm: 0x61 }
        - add: { dst: r9, imm: 1 }
  - halt
on:
  sync:
    7:
      - expectShared: { gpa: "lowData+0x1000", data: { hex: "34120000" } }
      - writeShared: { gpa: "lowData+0x2000", data: { fill: { byte: 0x5a, len: 4 } } }
check:
  - serial: "hi\\n"
  - shared: { gpa: "lowData+0x3000", data: { text: "aaa" } }
  - exits: { reason: KVM_EXIT_IO, equals: 1 }
  - dma: { transfers: 1, refused: 0 }
  - holesUsed: mmio
`;

function issuesOf(text: string, source = 'bad.yaml'): readonly ValidationIssue[] {
  try {
    parseScenario(text, source);
  } catch (e) {
    expect(e).toBeInstanceOf(ScenarioValidationError);
    return (e as ScenarioValidationError).issues;
  }
  throw new Error('the scenario was accepted');
}

describe('valid scenarios run', () => {
  it('YAML: ops, symbols with offsets, loops, sync actions and checks', async () => {
    const s = parseScenario(HELLO, 'hello.yaml');
    expect(s.name).toBe('hello-dma');
    const r = await runScenario(s, { backend: 'model' });
    const failed = r.runs.flatMap((x) =>
      x.checks.filter((c) => !c.pass).map((c) => `${c.name}: ${c.detail}`),
    );
    expect(r.status, failed.join('\n')).toBe('pass');
    expect(r.runs[0]?.checks.map((c) => c.name)).toContain(
      'check[1]: shared memory holds the expected bytes',
    );
  });

  it('JSON works the same way', async () => {
    const json = JSON.stringify({
      name: 'json-one',
      description: 'from JSON',
      vmType: 'default',
      memory: { lowRam: '2MiB' },
      guest: [{ storeImm: { size: 4, at: '0x100000', imm: 5 } }, 'halt'],
      check: [{ shared: { gpa: 0x100000, data: { hex: '05000000' } } }],
    });
    const r = await runScenario(parseScenario(json, 'one.json'), { backend: 'model' });
    expect(r.status).toBe('pass');
  });

  it('a declarative check that does not hold fails the scenario', async () => {
    const s = parseScenario(HELLO.replace('serial: "hi\\n"', 'serial: "bye\\n"'), 'hello.yaml');
    const r = await runScenario(s, { backend: 'model' });
    expect(r.status).toBe('fail');
    const serial = r.runs[0]?.checks.find((c) => c.name === 'check[0]: serial output');
    expect(serial).toMatchObject({ pass: false, detail: 'actual "hi\\n", expected "bye\\n"' });
  });
});

describe('errors name the field, the value and the line', () => {
  it('a bad value deep in a guest op', () => {
    const text = HELLO.replace('len: 16', 'len: -16');
    const [issue, ...rest] = issuesOf(text);
    expect(rest).toEqual([]);
    expect(issue).toMatchObject({ path: 'guest[1].dma.len', value: '-16', line: 11 });
    expect(issue?.message).toMatch(/in \[1, 4294967295\]/);
  });

  it('an unknown op names the known ones, on its line', () => {
    const text = HELLO.replace('  - sync: 7', '  - snyc: 7');
    const [issue] = issuesOf(text);
    expect(issue).toMatchObject({ path: 'guest[4].snyc', value: '7', line: 14, column: 11 });
    expect(issue?.message).toMatch(/unknown a guest op 'snyc' \(known: print, mov/);
  });

  it('an unknown field is reported at the field', () => {
    const text = HELLO.replace('  backing: memfd', '  backing: memfd\n  bakcing: memfd');
    const [issue] = issuesOf(text);
    expect(issue).toMatchObject({ path: 'memory.bakcing', value: '"memfd"', line: 8 });
    expect(issue?.message).toBe('unknown field');
  });

  it('a missing field is named, with the line of its parent', () => {
    const text = HELLO.replace('vmType: default\n', '');
    const [issue] = issuesOf(text);
    // The top-level mapping starts on line 2, after the comment.
    expect(issue).toMatchObject({ path: 'vmType', value: 'missing', line: 2 });
    expect(issue?.message).toMatch(/expected one of "default"\|"sw-protected"|Invalid option/);
  });

  it('several problems are all reported, and the message lists them with file:line:column', () => {
    const text = HELLO.replace('lowRam: 4MiB', 'lowRam: 1KiB').replace('holes: mmio', 'holes: nope');
    let err: ScenarioValidationError | null = null;
    try {
      parseScenario(text, 'two.yaml');
    } catch (e) {
      err = e as ScenarioValidationError;
    }
    expect(err?.issues.map((i) => i.path)).toEqual(['memory.lowRam', 'pci.holes']);
    expect(err?.message).toMatch(
      /^two\.yaml: 2 problems\n {2}two\.yaml:6:11: memory\.lowRam: expected a value in \[2097152/,
    );
    expect(err?.message).toMatch(/two\.yaml:8:15: pci\.holes: .*got "nope"/);
  });

  it('inside a loop body the path goes through body[i]', () => {
    const text = HELLO.replace('imm: 0x61', 'imm: nope');
    const [issue] = issuesOf(text);
    expect(issue).toMatchObject({ path: 'guest[7].loop.body[0].storeImm.imm', value: '"nope"', line: 21 });
  });

  it('an address naming no place in the machine', () => {
    const [issue] = issuesOf(HELLO.replace('dst: lowData,', 'dst: lowDtaa,'));
    expect(issue).toMatchObject({ path: 'guest[1].dma.dst', value: '"lowDtaa"', line: 11 });
    expect(issue?.message).toMatch(/lowRam\|lowData\|highRam/);
  });

  it('a sync handler keyed by something other than a tag number', () => {
    const [issue] = issuesOf(HELLO.replace('    7:\n', '    seven:\n'));
    expect(issue).toMatchObject({
      path: 'on.sync.seven',
      value: '"seven"',
      message: 'bad key: expected a sync tag number',
    });
  });

  it('JSON errors carry lines too', () => {
    const json =
      '{\n  "name": "Bad Name",\n  "description": "x",\n  "vmType": "default",\n  "memory": {"lowRam": 2097152},\n  "guest": ["halt"]\n}';
    const [issue] = issuesOf(json, 'bad.json');
    expect(issue).toMatchObject({ path: 'name', value: '"Bad Name"', line: 2, column: 11 });
    expect(issue?.message).toBe('expected a kebab-case name');
  });

  it('a syntax error is reported with its position', () => {
    const [issue] = issuesOf('name: x\nguest: [halt\n', 'broken.yaml');
    expect(issue?.message).toMatch(/not valid YAML\/JSON/);
    expect(issue?.line).toBeGreaterThanOrEqual(2);
  });

  it('a duplicated key is a syntax error', () => {
    const [issue] = issuesOf(HELLO.replace('vmType: default', 'vmType: default\nvmType: sw-protected'));
    expect(issue?.message).toMatch(/DUPLICATE_KEY/);
    expect(issue?.line).toBe(5);
  });
});
