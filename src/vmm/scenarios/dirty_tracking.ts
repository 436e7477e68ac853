/**
 * dirty-tracking: KVM's dirty log (KVM_MEM_LOG_DIRTY_PAGES, KVM_GET_DIRTY_LOG, kvm-semantics
 * §2.7) while the guest writes, round by round, as a migrating VMM reads it. Each round's log
 * must name exactly the pages the guest wrote since the last read (DL-3: reading clears it);
 * reads do not dirty pages; and writes the VMM makes through its own mapping are not in KVM's log
 * at all (why VMMs keep their own bitmap for device writes, peers.md §2.2).
 */

import { MiB, PAGE_SIZE } from '../layout.js';
import { defineScenario } from '../scenario.js';
import { dirtyPages } from './common.js';

/** Pages the guest writes in each round (the round's sync tag is its index + 1). */
const ROUNDS: readonly (readonly number[])[] = [
  [0, 1, 5],
  [1, 7, 100, 101, 102, 103],
  [],
  [200, 201, 202, 203, 204, 205, 206, 207],
  [],
];
/** The page the VMM writes (through its mapping) during round 5. */
const VMM_PAGE = 300;

export const dirtyTracking = defineScenario({
  name: 'dirty-tracking',
  description:
    'dirty logging of high RAM while the guest writes in rounds: each KVM_GET_DIRTY_LOG names exactly the pages written since the last one',
  vmType: 'default',
  memory: { lowRamBytes: 2 * MiB, highRamBytes: 2 * MiB, backing: 'memfd', dirtyLog: ['high'] },
  pci: { holes: 'mmio', ecamBuses: 1 },
  guest: (b) => {
    const h = b.layout.highRam.gpa;
    const page = (p: number): number => h + p * PAGE_SIZE;
    // Round 1: single stores.
    for (const p of ROUNDS[0] ?? []) b.storeImm(4, page(p) + 8, p + 1);
    b.sync(1);
    // Round 2: a store to a page already logged once, another, and a 16 KiB fill.
    b.storeImm(4, page(1), 0x11)
      .storeImm(4, page(7), 0x77)
      .fill(page(100), 4 * PAGE_SIZE, 0xab);
    b.sync(2);
    // Round 3: reads only.
    b.load(8, 'r8', page(0)).load(8, 'r8', page(5));
    b.sync(3);
    // Round 4: a loop writing 8 consecutive pages.
    b.mov('r9', page(200)).loop('r8', 8, (l) =>
      l.storeImm(8, { base: 'r9', disp: 0 }, 0x77).add('r9', PAGE_SIZE),
    );
    b.sync(4);
    // Round 5: the guest writes nothing; the VMM writes a page itself.
    b.sync(5);
    b.halt();
  },
  on: {
    sync: (tag, ctx) => {
      const m = ctx.machine;
      const high = m.region('high');
      if (tag === 5) m.writeShared(high.range.gpa + VMM_PAGE * PAGE_SIZE, new Uint8Array([1]));
      // DL-1: the bitmap is ALIGN(npages, 64) / 8 bytes.
      const bitmap = new Uint8Array(Math.ceil(high.range.size / PAGE_SIZE / 64) * 8);
      m.vm.getDirtyLog({ slot: high.slot, dirtyBitmap: bitmap });
      const pages = dirtyPages(bitmap);
      ctx.note(`round${tag}`, pages);
      ctx.expectEqual(`round ${tag}: the dirty log names exactly the pages written`, pages, [
        ...(ROUNDS[tag - 1] ?? []),
      ]);
    },
  },
  check: (ctx) => {
    ctx.expectEqual('five rounds were logged', Object.keys(ctx.notes).length, ROUNDS.length);
    ctx.check(
      "the VMM's own write reached guest memory (and was not in KVM's log)",
      ctx.machine.readShared(ctx.layout.highRam.gpa + VMM_PAGE * PAGE_SIZE, 1)[0] === 1,
    );
  },
});
