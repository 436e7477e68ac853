/**
 * confidential-boot: the life of a confidential guest's memory, on a KVM_X86_SW_PROTECTED_VM
 * whose RAM is guest_memfd (private) plus a memfd (shared), QEMU's layout.
 *
 * The guest accepts its memory (KVM_HC_MAP_GPA_RANGE → private), keeps a secret in it, shares a
 * bounce buffer, has the DMA device write into it, scans PCI through the holes into it, takes the
 * buffer back (the DMA device must drop its mapping, the VMM discards the shared pages), asks for
 * three conversions the VMM must refuse with -KVM_EINVAL, and finally releases high RAM to shared
 * — the VMM punches the guest_memfd, freeing the private memory.
 */

import { HC_EINVAL_U64 } from '../guest.js';
import { MiB, PAGE_SIZE } from '../layout.js';
import { residentBytes } from '../report.js';
import { defineScenario } from '../scenario.js';
import { expectedScanTable, readU32s, tableDiff, u64At } from './common.js';

const SECRET = 2 * MiB;
const PRIVATE_COPY = SECRET + 0x10000;
const BOUNCE = 3 * MiB;
const BOUNCE_BYTES = 4 * PAGE_SIZE;
const SCAN_OUT = BOUNCE + PAGE_SIZE;
const SCAN_BUSES = 1;
const HIGH_TOUCH = 64 * 1024;

export const confidentialBoot = defineScenario({
  name: 'confidential-boot',
  description:
    'a SW_PROTECTED guest on guest_memfd accepts its memory, shares a bounce buffer for DMA, scans PCI through the holes, unshares it and frees memory; the VMM converts in QEMU order',
  vmType: 'sw-protected',
  memory: { lowRamBytes: 8 * MiB, highRamBytes: 4 * MiB, backing: 'guest_memfd' },
  pci: { holes: 'allones' },
  host: { extensions: { allones: true } },
  guest: (b) => {
    const l = b.layout;
    const payload = (offset: number): bigint => {
      const p = new Uint8Array(8);
      for (let i = 0; i < 8; i++) p[i] = (7 * (offset + i) + 0x31) & 0xff;
      return u64At(p, 0);
    };
    b.print('boot\n');
    // Accept: all RAM above the boot area becomes private.
    b.convertExpect(l.lowData.gpa, l.lowData.size, 'private', 0, 0x10);
    b.convertExpect(l.highRam.gpa, l.highRam.size, 'private', 0, 0x11);
    b.fill(SECRET, PAGE_SIZE, 0x5a).cmp(8, SECRET, 0x5a5a5a5a5a5a5a5an, 0x12);
    b.sync(1);
    // Share a bounce buffer; the device DMAs into it; the guest copies the data into private memory.
    b.convertExpect(BOUNCE, BOUNCE_BYTES, 'shared', 0, 0x13);
    b.dma(BOUNCE, PAGE_SIZE).expectDmaStatus(1, 0x20);
    b.cmp(8, BOUNCE, payload(0), 0x21);
    b.copy(PRIVATE_COPY, BOUNCE, PAGE_SIZE).cmp(
      8,
      PRIVATE_COPY + PAGE_SIZE - 8,
      payload(PAGE_SIZE - 8),
      0x22,
    );
    // PCI enumeration through ECAM, results in the shared buffer for the VMM to see.
    b.pciScan(SCAN_OUT, SCAN_BUSES);
    b.sync(2);
    // Done with I/O: the buffer goes back to private; a DMA into it must now be refused.
    b.convertExpect(BOUNCE, BOUNCE_BYTES, 'private', 0, 0x14);
    b.dma(BOUNCE, PAGE_SIZE).expectDmaStatus(2, 0x23);
    // Conversions the VMM refuses: not RAM, unaligned for its page size, spanning RAM's end.
    b.convertExpect(l.ecam.gpa, PAGE_SIZE, 'private', HC_EINVAL_U64, 0x30);
    b.convertExpect(SECRET + PAGE_SIZE, 2 * MiB, 'private', HC_EINVAL_U64, 0x31, '2m');
    b.convertExpect(l.lowRam.size - PAGE_SIZE, 2 * PAGE_SIZE, 'shared', HC_EINVAL_U64, 0x32);
    // Use some high RAM privately, then give all of it back: the VMM punches the guest_memfd.
    b.fill(l.highRam.gpa, HIGH_TOUCH, 0x77).cmp(1, l.highRam.gpa + HIGH_TOUCH - 1, 0x77, 0x15);
    b.sync(3);
    b.convertExpect(l.highRam.gpa, l.highRam.size, 'shared', 0, 0x16);
    b.cmp(8, l.highRam.gpa, 0, 0x17); // shared again: the shared side was discarded at accept
    b.print('done\n').halt();
  },
  on: {
    sync: (tag, ctx) => {
      const m = ctx.machine;
      const low = m.region('low');
      const high = m.region('high');
      if (tag === 1) {
        const seen = m.readShared(SECRET, PAGE_SIZE);
        ctx.check(
          'the host cannot see private data through the shared mapping',
          seen.every((x) => x === 0),
          `first bytes seen: ${[...seen.subarray(0, 4)].join(',')}`,
        );
        ctx.note('lowSharedBytesAfterAccept', m.allocatedBytes(low.shared));
        ctx.check(
          'accepting discarded the shared side of the accepted range',
          m.allocatedBytes(low.shared) <= 1 * MiB,
          `low shared memfd holds ${m.allocatedBytes(low.shared)} bytes`,
        );
      } else if (tag === 2) {
        const payload = m.dma.payload;
        const landed = m.readShared(BOUNCE, PAGE_SIZE);
        ctx.check(
          'the DMA device wrote its payload into the shared bounce buffer',
          landed.every((x, i) => x === payload[i]),
        );
        ctx.expectEqual('the DMA device caches one mapping', m.dma.cachedMappings, 1);
        const table = readU32s(m, SCAN_OUT, SCAN_BUSES * 256);
        const diff = tableDiff(table, expectedScanTable(m.pci.functions, SCAN_BUSES));
        ctx.check('the PCI scan found the devices, all-ones elsewhere', diff.length === 0, diff.join('; '));
      } else if (tag === 3) {
        // guest_memfd's st_blocks stays 0 (upstream): only the model can count its pages.
        const p = high.private;
        ctx.note('highPrivateBytesBeforeRelease', p === null ? null : residentBytes(ctx.model, p.fd));
      }
    },
  },
  check: (ctx) => {
    const m = ctx.machine;
    const l = ctx.layout;
    ctx.expectEqual('serial output', ctx.serial, 'boot\ndone\n');
    const c = m.conversions.stats;
    ctx.expectEqual('conversions to private (low, high, bounce back)', c.toPrivate, 3);
    ctx.expectEqual('conversions to shared (bounce, high release)', c.toShared, 2);
    ctx.expectEqual('refused conversions (-KVM_EINVAL)', c.failed, 3);
    ctx.expectEqual('DMA transfers done / refused', [m.dma.stats.transfers, m.dma.stats.refused], [1, 1]);
    ctx.check(
      'the DMA device dropped its mapping when the buffer went private',
      m.dma.stats.mappingsDropped === 1 && m.dma.cachedMappings === 0,
      `dropped ${m.dma.stats.mappingsDropped}, cached ${m.dma.cachedMappings}`,
    );
    ctx.expectEqual(
      'shared pages of the bounce buffer were discarded when it went private',
      m.allocatedBytes(m.region('low').shared),
      ctx.notes['lowSharedBytesAfterAccept'] ?? -1,
    );
    ctx.expectEqual(
      'private ranges at the end',
      m.discard.privateRanges().map((r) => ({ gpa: r.gpa, size: r.size })),
      [{ gpa: l.lowData.gpa, size: l.lowData.size }],
    );
    const highPriv = m.region('high').private;
    if (ctx.model !== null && highPriv !== null) {
      ctx.expectEqual(
        'the guest used 64 KiB of private high RAM',
        ctx.notes['highPrivateBytesBeforeRelease'] ?? -1,
        HIGH_TOUCH,
      );
      ctx.expectEqual('releasing high RAM punched its guest_memfd', residentBytes(ctx.model, highPriv.fd), 0);
    }
    const holes = m.holeReport;
    if (holes.used !== 'mmio') {
      ctx.expectEqual('absent PCI functions were answered without exits', m.pci.stats.absentReads, 0);
    }
    ctx.expectEqual('hypercall exits (8 conversions asked)', m.runStats.hypercallExits, 8);
  },
});
