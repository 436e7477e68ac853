// Conformance: guest programs (architecture §5) give the same exits, registers and memory on every
// backend — loads and stores of each size, fill, copy (a forward byte copy), cmp (a mismatch
// reports its tag with the value in rbx), loop, sync and halt, over RAM, READONLY slots (RO-1) and
// gpas without a memslot (RO-2, RO-3: MMIO exits, split at page boundaries). Each transcript is
// written once below; when both backends run, their transcripts must also be identical.
import { describe, expect, it } from 'vitest';
import type { Host } from '../../src/core/api.js';
import { KVM_EXIT_HLT, KVM_EXIT_IO, KVM_EXIT_MMIO, KVM_MEM_READONLY } from '../../src/core/uapi.js';
import { type Program, program, REPORT_PORT, SYNC_PORT } from '../../src/core/vcpu/program.js';
import { digest } from '../../src/vmm/trace.js';
import { anon, backends, backendTitle, guestVm, MiB, PAGE, runVcpu, useHosts } from './backends.js';

const RAM = 2 * MiB; // slot 1: two pages of RAM, bytes i & 0xff
const RO = 3 * MiB; // slot 2: the same memory, READONLY
const HOLE = 5 * MiB; // no memslot

/** One exit in a compact form: `sync 1`, `report 7 rbx=…`, `mmio W 0x200000/4 44332211`, `mmio R 0x500000/1`, `hlt`. */
type Step = string;

interface Transcript {
  readonly steps: Step[];
  /** Hex of the two pages of slot 1 after the run. */
  readonly ramDigest: string;
  readonly ram: Uint8Array;
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

/**
 * Runs `prog` until HLT (at most 64 exits). Every MMIO read is completed with the bytes
 * 0xa0 + n, 0xa1 + n, … where n counts the reads so far. Records each exit as a `Step`.
 */
function transcript(host: Host, prog: Program): Transcript {
  const { vm, vcpu } = guestVm(host);
  const mem = anon(host, 2 * PAGE);
  host.writeMemory(
    mem,
    new Uint8Array(2 * PAGE).map((_, i) => i & 0xff),
  );
  vm.setUserMemoryRegion({ slot: 1, flags: 0, guestPhysAddr: RAM, memorySize: 2 * PAGE, userspaceAddr: mem });
  vm.setUserMemoryRegion({
    slot: 2,
    flags: KVM_MEM_READONLY,
    guestPhysAddr: RO,
    memorySize: 2 * PAGE,
    userspaceAddr: mem,
  });
  vcpu.setProgram(prog);
  const steps: Step[] = [];
  let reads = 0;
  for (let i = 0; i < 64; i++) {
    const r = runVcpu(vcpu);
    if (r.ret !== 0) {
      steps.push(`ret ${r.ret} ${r.errno ?? ''} ${r.exitReasonName}`);
      break;
    }
    if (r.exitReason === KVM_EXIT_HLT) {
      steps.push('hlt');
      break;
    }
    if (r.exitReason === KVM_EXIT_IO && r.io) {
      const v = new DataView(r.io.data.buffer, r.io.data.byteOffset, 4).getUint32(0, true);
      if (r.io.port === SYNC_PORT) steps.push(`sync ${v}`);
      else if (r.io.port === REPORT_PORT) steps.push(`report ${v} rbx=${vcpu.getRegs().rbx.toString(16)}`);
      else steps.push(`io ${r.io.port} ${v}`);
      continue;
    }
    if (r.exitReason === KVM_EXIT_MMIO && r.mmio) {
      const m = r.mmio;
      const at = `0x${m.physAddr.toString(16)}/${m.len}`;
      if (m.isWrite) steps.push(`mmio W ${at} ${hex(m.data.subarray(0, m.len))}`);
      else {
        steps.push(`mmio R ${at}`);
        vcpu.kvmRun.mmio.data.set([0, 1, 2, 3, 4, 5, 6, 7].map((k) => 0xa0 + reads + k));
        reads++;
      }
      continue;
    }
    steps.push(r.exitReasonName);
    break;
  }
  const regs = vcpu.getRegs();
  steps.push(`regs ${[regs.r8, regs.r9, regs.r10, regs.r11].map((v) => v.toString(16)).join(' ')}`);
  const ram = host.readMemory(mem, 2 * PAGE);
  return { steps, ram, ramDigest: digest(ram) };
}

interface Case {
  readonly name: string;
  readonly prog: Program;
  readonly steps: readonly Step[];
  /** Bytes expected in slot 1 at an offset, after the run. */
  readonly ram?: readonly [number, readonly number[]][];
}

const CASES: readonly Case[] = [
  {
    name: 'arch §5: loads and stores of 1, 2, 4 and 8 bytes in RAM',
    prog: program((p) =>
      p
        .storeImm(1, RAM + 0x100, 0xab)
        .storeImm(2, RAM + 0x102, 0x1234)
        .storeImm(4, RAM + 0x104, 0xdeadbeef)
        .storeImm(8, RAM + 0x108, -2)
        .mov('r12', 0x1122334455667788n)
        .store(8, RAM + 0x110, 'r12')
        .store(2, RAM + 0x118, 'r12')
        .load(8, 'r8', RAM + 0x100)
        .load(4, 'r9', RAM + 0x108)
        .load(2, 'r10', RAM + 0x110)
        .load(1, 'r11', RAM + 0x7)
        .sync(1)
        .halt(),
    ),
    steps: ['sync 1', 'hlt', 'regs deadbeef123401ab fffffffe 7788 7'],
    ram: [
      [
        0x100,
        [0xab, 0x01, 0x34, 0x12, 0xef, 0xbe, 0xad, 0xde, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
      ],
    ],
  },
  {
    name: 'arch §5: fill, copy (a forward byte copy: overlap repeats the pattern), loop, and cmp reporting a mismatch',
    prog: program((p) =>
      p
        .fill(RAM + 0x200, 4, 0x5a)
        .copy(RAM + 0x202, RAM + 0x200, 8)
        .mov('r9', 0)
        .loop('r8', 10, (l) => l.add('r9', 3))
        .cmp(8, RAM + 0x200, 0x5a5a5a5a5a5a5a5an, 7)
        .cmp(1, RAM + 0x20a, 0x5a, 8)
        .cmp(2, RAM + 0x300, 0x0100, 9)
        .sync(2)
        .halt(),
    ),
    steps: ['report 8 rbx=a', 'sync 2', 'hlt', 'regs 0 1e 0 0'],
    ram: [[0x200, [0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x0a, 0x0b]]],
  },
  {
    name: 'RO-1: READONLY writes exit with their data (a page-crossing write in two fragments); reads are RAM',
    prog: program((p) =>
      p
        .load(8, 'r8', RO + 0x10)
        .storeImm(4, RO + PAGE - 2, 0x01020304)
        .storeImm(1, RO + 0x20, 0x99)
        .load(8, 'r9', RO + PAGE - 4)
        .sync(3)
        .halt(),
    ),
    steps: [
      'mmio W 0x300ffe/2 0403',
      'mmio W 0x301000/2 0201',
      'mmio W 0x300020/1 99',
      'sync 3',
      'hlt',
      'regs 1716151413121110 3020100fffefdfc 0 0',
    ],
  },
  {
    name: 'RO-2, RO-3: MMIO reads and writes of each size, completed with the VMM’s data',
    prog: program((p) =>
      p
        .load(1, 'r8', HOLE + 1)
        .load(2, 'r9', HOLE + 2)
        .load(4, 'r10', HOLE + 4)
        .load(8, 'r11', HOLE + 8)
        .storeImm(8, HOLE + 0x40, 0x01020304)
        .sync(4)
        .halt(),
    ),
    steps: [
      'mmio R 0x500001/1',
      'mmio R 0x500002/2',
      'mmio R 0x500004/4',
      'mmio R 0x500008/8',
      'mmio W 0x500040/8 0403020100000000',
      'sync 4',
      'hlt',
      'regs a0 a2a1 a5a4a3a2 aaa9a8a7a6a5a4a3',
    ],
  },
  {
    name: 'RO-2: accesses crossing from RAM into a hole exit only for the hole’s part; a cmp across two hole pages exits twice',
    prog: program((p) =>
      p
        .mov('r12', 0x1122334455667788n)
        .store(8, RAM + 2 * PAGE - 4, 'r12')
        .load(8, 'r8', RAM + 2 * PAGE - 4)
        .cmp(8, HOLE + PAGE - 3, 5, 7)
        .sync(5)
        .halt(),
    ),
    steps: [
      'mmio W 0x202000/4 44332211',
      'mmio R 0x202000/4',
      'mmio R 0x500ffd/3',
      'mmio R 0x501000/5',
      'report 7 rbx=a6a5a4a3a2a3a2a1',
      'sync 5',
      'hlt',
      'regs a3a2a1a055667788 0 0 0',
    ],
    ram: [[2 * PAGE - 4, [0x88, 0x77, 0x66, 0x55]]],
  },
  {
    name: 'RO-2, arch §5: fill and copy over MMIO exit once per byte; a finished program halts on every later run',
    prog: program((p) =>
      p
        .fill(RAM + 2 * PAGE - 1, 3, 0x33)
        .copy(RAM + 0x10, HOLE, 2)
        .sync(6),
    ),
    steps: [
      'mmio W 0x202000/1 33',
      'mmio W 0x202001/1 33',
      'mmio R 0x500000/1',
      'mmio R 0x500001/1',
      'sync 6',
      'hlt',
      'regs 0 0 0 0',
    ],
    ram: [
      [0x10, [0xa0, 0xa1, 0x12]],
      [2 * PAGE - 1, [0x33]],
    ],
  },
];

const results = new Map<string, Map<string, Transcript>>();

for (const b of backends) {
  describe.skipIf(!b.available.ok)(backendTitle(b, 'guest programs (architecture §5, RO-1..RO-3)'), () => {
    const make = useHosts(b);
    for (const c of CASES) {
      it(c.name, () => {
        const t = transcript(make(), c.prog);
        expect(t.steps).toEqual(c.steps);
        for (const [off, bytes] of c.ram ?? []) {
          expect([...t.ram.subarray(off, off + bytes.length)], `ram + 0x${off.toString(16)}`).toEqual(bytes);
        }
        const byBackend = results.get(c.name) ?? new Map<string, Transcript>();
        byBackend.set(b.name, t);
        results.set(c.name, byBackend);
      });
    }
  });
}

const missing = backends.find((b) => !b.available.ok);
describe.skipIf(missing !== undefined)(
  `guest programs: model and real /dev/kvm give identical transcripts${missing && !missing.available.ok ? ` [${missing.label}: ${missing.available.reason}]` : ''}`,
  () => {
    for (const c of CASES) {
      it(c.name, () => {
        const byBackend = results.get(c.name);
        const m = byBackend?.get('model');
        const k = byBackend?.get('kvm');
        expect(m && k, 'both backends ran this case').toBeTruthy();
        expect(k?.steps).toEqual(m?.steps);
        expect(k?.ramDigest, 'slot 1 after the run').toBe(m?.ramDigest);
      });
    }
  },
);
