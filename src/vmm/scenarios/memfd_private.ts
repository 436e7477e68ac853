/**
 * memfd-private: the pre-guest_memfd design of seeds 000/001/003 — private memory from an
 * ordinary memfd paired with the memslot (extension KVM_MEM_PRIVATE_MEMFD), and seed 003's
 * presence rule for faults:
 *
 * - a private access to a page absent from the private memfd exits (KVM_EXIT_MEMORY_FAULT,
 *   flags PRIVATE) and the VMM allocates it — lazy acceptance: the VMM marked a range private
 *   at boot without allocating it;
 * - converting a page to shared punches it from the private memfd, which KVM hears through
 *   memfile_notifier and zaps (seed 001);
 * - a shared access to a page *present* in the private memfd exits (flags 0): the VMM discards
 *   the private copy and the guest then reads the shared page.
 */

import { FALLOC_FL_KEEP_SIZE } from '../../core/uapi.js';
import { MiB, PAGE_SIZE } from '../layout.js';
import { modelCounters } from '../report.js';
import { defineScenario } from '../scenario.js';

const LAZY = 2 * MiB;
const LAZY_BYTES = 64 * 1024;
const TOUCHED = 4 * PAGE_SIZE;
/** A shared page the VMM plants a stale private copy of (seed 003's shared-present row). */
const PRESENT = LAZY + 0x80000;

export const memfdPrivate = defineScenario({
  name: 'memfd-private',
  description:
    'seeds 000/001/003: private memory from a paired memfd (KVM_MEM_PRIVATE_MEMFD), lazy acceptance by memory-fault exits, memfile_notifier invalidations, and the presence rule',
  vmType: 'sw-protected',
  memory: { lowRamBytes: 4 * MiB, backing: 'private-memfd' },
  pci: { holes: 'mmio', ecamBuses: 1 },
  host: { extensions: { privateMemfd: true } },
  setup: (ctx) => {
    // Lazy acceptance: private, but nothing allocated — each first touch exits to the VMM.
    const r = ctx.machine.conversions.convert({
      gpa: LAZY,
      size: LAZY_BYTES,
      toPrivate: true,
      source: 'vmm',
      populatePrivate: false,
    });
    ctx.check('the VMM marks the lazy range private', r.ok, r.ok ? '' : r.reason);
  },
  guest: (b) => {
    b.fill(LAZY, TOUCHED, 0x3c).cmp(8, LAZY + TOUCHED - 8, 0x3c3c3c3c3c3c3c3cn, 0x60);
    b.sync(1);
    b.convertExpect(LAZY, PAGE_SIZE, 'shared', 0, 0x61);
    b.sync(2);
    b.cmp(1, LAZY, 0x99, 0x62).cmp(1, PRESENT, 0x42, 0x63);
    b.sync(3).halt();
  },
  on: {
    sync: (tag, ctx) => {
      const m = ctx.machine;
      const low = m.region('low');
      const priv = low.private;
      if (priv === null) return;
      if (tag === 1) {
        ctx.expectEqual('one memory-fault exit per page first touched', m.runStats.memoryFaultExits, 4);
        ctx.expectEqual('the private memfd holds exactly the touched pages', m.allocatedBytes(priv), TOUCHED);
        const seen = m.readShared(LAZY, TOUCHED);
        ctx.check(
          'the host cannot see private data through the shared mapping',
          seen.every((x) => x === 0),
        );
      } else if (tag === 2) {
        ctx.expectEqual(
          'converting a page to shared punched it from the private memfd',
          m.allocatedBytes(priv),
          TOUCHED - PAGE_SIZE,
        );
        m.writeShared(LAZY, new Uint8Array([0x99]));
        // A stale private copy of a shared page, planted behind KVM's back.
        m.writeShared(PRESENT, new Uint8Array([0x42]));
        ctx.host.fallocate(priv.fd, FALLOC_FL_KEEP_SIZE, PRESENT - low.range.gpa + priv.offset, PAGE_SIZE);
      } else if (tag === 3) {
        ctx.expectEqual(
          'the shared access to a present private page exited once',
          m.runStats.memoryFaultExits,
          5,
        );
        ctx.expectEqual(
          'and the VMM discarded the private copy',
          m.allocatedBytes(priv),
          TOUCHED - PAGE_SIZE,
        );
      }
    },
  },
  check: (ctx) => {
    const m = ctx.machine;
    const c = m.conversions.stats;
    ctx.expectEqual('conversions by source', { ...c.bySource }, { 'memory-fault': 5, hypercall: 1, vmm: 1 });
    ctx.expectEqual('refused conversions', c.failed, 0);
    ctx.expectEqual('private pages allocated by the VMM (4 lazy faults)', c.privatePopulatedBytes, TOUCHED);
    ctx.expectEqual('KVM_EXIT_MEMORY_FAULT exits', m.exits['KVM_EXIT_MEMORY_FAULT'] ?? 0, 5);
    const p = modelCounters(m, ctx.model)?.memfilePairing ?? null;
    if (p !== null) {
      ctx.expectEqual(
        'memfile_notifier events KVM received: 5 allocations (4 lazy + 1 planted), 2 punches',
        { fallocates: p.fallocates, invalidates: p.invalidates },
        { fallocates: 5, invalidates: 2 },
      );
      ctx.check(
        'private pages were mapped with the page locked (get_lock_pfn)',
        p.lockedFaults >= 4,
        `${p.lockedFaults}`,
      );
    }
  },
});
