/**
 * pci-scan: the three ways of serving PCI holes side by side (seed 004; peers.md §1 finding 1).
 * The guest enumerates every function of two buses through ECAM and writes to an absent one;
 * each variant serves the holes differently. All three must find the same devices and read
 * all-ones elsewhere; they differ in exits taken and host memory used, which the report shows.
 */

import { ecamOffset, MiB } from '../layout.js';
import type { RunReport } from '../report.js';
import { defineScenario } from '../scenario.js';
import { expectedScanTable, readU32s, tableDiff, tableDigest } from './common.js';

const SCAN_OUT = 2 * MiB;
const BUSES = 2;
/** An absent function (00:05.0) the guest writes to and reads back. */
const ABSENT = ecamOffset(0, 5, 0);

export const pciScan = defineScenario({
  name: 'pci-scan',
  description:
    'PCI enumeration through ECAM with the holes served by KVM_MEM_ALLONES slots, read-only 0xff slots, or MMIO exits, side by side',
  vmType: 'default',
  memory: { lowRamBytes: 4 * MiB, backing: 'memfd' },
  variants: [
    {
      name: 'allones',
      description: 'KVM_MEM_ALLONES slots (seed 004 extension), falling back when the backend lacks it',
      pci: { holes: 'allones' },
      host: { extensions: { allones: true } },
    },
    {
      name: 'readonly-ff',
      description: 'KVM_MEM_READONLY slots over repeated 0xff memory',
      pci: { holes: 'readonly-ff' },
    },
    { name: 'mmio', description: 'no slots: every hole read exits to the VMM', pci: { holes: 'mmio' } },
  ],
  guest: (b) => {
    const ecam = b.layout.ecam.gpa;
    b.pciScan(SCAN_OUT, BUSES);
    // A write to an absent function exits (the slots are read-only) and is dropped.
    b.storeImm(4, ecam + ABSENT, 0x12345678).cmp(4, ecam + ABSENT, 0xffffffff, 0x50);
    b.sync(1).halt();
  },
  on: {
    sync: (_tag, ctx) => {
      const m = ctx.machine;
      const table = readU32s(m, SCAN_OUT, BUSES * 256);
      const diff = tableDiff(table, expectedScanTable(m.pci.functions, BUSES));
      ctx.check('the scan found the 3 devices and all-ones elsewhere', diff.length === 0, diff.join('; '));
      ctx.note('scanDigest', tableDigest(table));
    },
  },
  check: (ctx) => {
    const m = ctx.machine;
    const h = m.holeReport;
    ctx.note('holesUsed', h.used);
    ctx.note('fallbacks', [...h.fallbacks]);
    const expectUsed =
      ctx.variant === 'allones' ? (h.fallbacks.length === 0 ? 'allones' : 'readonly-ff') : ctx.variant;
    ctx.expectEqual('strategy used', h.used, expectUsed);
    const functions = BUSES * 256;
    const present = m.pci.functions.filter((f) => f.bus < BUSES).length;
    ctx.expectEqual('present-function config reads (always exits)', m.pci.stats.presentReads, present);
    ctx.expectEqual(
      'absent-function reads that exited',
      m.pci.stats.absentReads,
      h.used === 'mmio' ? functions - present + 1 : 0,
    );
    ctx.expectEqual('absent-function writes (exit under every strategy)', m.pci.stats.absentWrites, 1);
    ctx.expectEqual(
      'host memory of the hole slots is zero unless readonly-ff',
      h.hostMemoryBytes > 0,
      h.used === 'readonly-ff',
    );
    ctx.note('mmioExits', m.exits['KVM_EXIT_MMIO'] ?? 0);
  },
  compare: (runs: readonly RunReport[], c) => {
    const digests = runs.map((r) => r.notes['scanDigest']);
    c.check(
      'every strategy found the same table',
      digests.every((d) => d === digests[0]),
      JSON.stringify(digests),
    );
    const exits = (name: string): number => runs.find((r) => r.variant === name)?.exits['KVM_EXIT_MMIO'] ?? 0;
    c.check(
      'MMIO exits for holes cost one exit per absent function read',
      exits('mmio') > exits('readonly-ff') && exits('readonly-ff') >= exits('allones'),
      `allones ${exits('allones')}, readonly-ff ${exits('readonly-ff')}, mmio ${exits('mmio')}`,
    );
  },
});
