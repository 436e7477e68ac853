/**
 * gmem-lifetimes: seed 002's two guest_memfd lifetime designs (docs/gmem-lifetimes.md) under the
 * two teardown orders users hit, on a DEFAULT VM whose high RAM is an in-place guest_memfd
 * (MMAP | INIT_SHARED):
 *
 * | variant | upstream 'file-pins-vm' | seed 002's 'slot-pins-file' |
 * |---|---|---|
 * | guest_memfd closed first (mid-run) | the binding breaks: the guest's next access is KVM_EXIT_MEMORY_FAULT / EFAULT | the slot holds the file: the guest reads its data |
 * | VM fd closed first (after the run) | the open guest_memfd keeps the VM alive; closing it destroys the VM | the VM is destroyed at once; the fd stays usable as plain memory |
 *
 * The VM's destruction is visible only in the model's introspection, so this scenario runs on
 * the model only.
 */

import type { GmemLifetime } from '../../core/kvm/guest_memfd.js';
import { VmHandle } from '../../core/kvm/kvm_main.js';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE } from '../../core/uapi.js';
import { MiB, PAGE_SIZE } from '../layout.js';
import { defineScenario, type ScenarioContext, type ScenarioVariant } from '../scenario.js';
import { unwrapRecorded } from '../trace.js';

const PATTERN = 0x600d_f00d;
const DESIGNS: readonly GmemLifetime[] = ['file-pins-vm', 'slot-pins-file'];
const ORDERS = ['gmem-closed-first', 'vm-closed-first'] as const;

function parse(variant: string): { design: GmemLifetime; order: (typeof ORDERS)[number] } {
  const design = DESIGNS.find((d) => variant.startsWith(d)) ?? 'file-pins-vm';
  const order = ORDERS.find((o) => variant.endsWith(o)) ?? 'gmem-closed-first';
  return { design, order };
}

const variants: ScenarioVariant[] = DESIGNS.flatMap((design) =>
  ORDERS.map((order) => ({
    name: `${design}-${order}`,
    description: `guest_memfd lifetime '${design}', ${order.replaceAll('-', ' ')}`,
    host: { gmemLifetime: design },
  })),
);

function destroyed(ctx: ScenarioContext): boolean | null {
  const vm = unwrapRecorded(ctx.machine.vm);
  return vm instanceof VmHandle ? vm.kvm.destroyed : null;
}

export const gmemLifetimes = defineScenario({
  name: 'gmem-lifetimes',
  description:
    "seed 002: 'the file pins the VM' (upstream) vs 'memslots pin the file', with the guest_memfd or the VM fd closed first",
  vmType: 'default',
  memory: { lowRamBytes: 2 * MiB, highRamBytes: 2 * MiB, backing: 'memfd', highBacking: 'guest_memfd' },
  pci: { holes: 'mmio', ecamBuses: 1 },
  variants,
  modelOnly: {
    reason:
      "gmem-lifetimes compares seed 002's two designs, and the alternative exists only in the model; the VM's destruction is not observable on the real kernel",
  },
  expectOutcome: (v) => (v === 'file-pins-vm-gmem-closed-first' ? 'memory-fault' : 'halt'),
  guest: (b) => {
    const high = b.layout.highRam.gpa;
    b.storeImm(4, high, PATTERN).sync(1).cmp(4, high, PATTERN, 0x40).sync(2).halt();
  },
  on: {
    sync: (tag, ctx) => {
      const { order } = parse(ctx.variant);
      if (tag === 1 && order === 'gmem-closed-first') {
        // The VMM drops its view and its fd: only the memslot still names the file.
        ctx.machine.closeBacking('high', 'shared');
        ctx.note('closedGmemMidRun', true);
      }
    },
  },
  check: (ctx) => {
    const { design, order } = parse(ctx.variant);
    const m = ctx.machine;
    const o = ctx.outcome;
    if (order === 'gmem-closed-first') {
      if (design === 'file-pins-vm') {
        ctx.check(
          'the broken binding ends the run with KVM_EXIT_MEMORY_FAULT / EFAULT (GM-17, row 7b)',
          o?.end === 'memory-fault' && o.errno === 'EFAULT' && o.memoryFault?.gpa === ctx.layout.highRam.gpa,
          o?.detail ?? 'no outcome',
        );
      } else {
        ctx.check('the memslot kept the file: the guest read its data', o?.end === 'halt', o?.detail ?? '');
      }
      m.closeVcpu();
      m.closeVm();
      ctx.expectEqual('closing the VM fd last destroys the VM', destroyed(ctx), true);
      return;
    }
    // VM fd closed first (the guest_memfd still open).
    const gfd = m.region('high').shared.fd;
    m.closeVcpu();
    m.closeVm();
    const afterVmClose = destroyed(ctx);
    ctx.note('destroyedAfterVmClose', afterVmClose);
    ctx.expectEqual(
      design === 'file-pins-vm'
        ? 'the open guest_memfd keeps the VM alive (the file pins the VM)'
        : 'nothing pins the VM: it is destroyed at once',
      afterVmClose,
      design !== 'file-pins-vm',
    );
    let punch = 'fallocate(PUNCH_HOLE) succeeded';
    try {
      ctx.host.fallocate(gfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, PAGE_SIZE);
    } catch (e) {
      punch = e instanceof Error ? e.message : String(e);
    }
    ctx.expectEqual(
      'the guest_memfd fd keeps working after the VM fd is closed',
      punch,
      'fallocate(PUNCH_HOLE) succeeded',
    );
    m.closeBacking('high', 'shared');
    ctx.expectEqual('closing the guest_memfd leaves the VM destroyed', destroyed(ctx), true);
  },
});
