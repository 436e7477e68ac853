// Conversion handling in QEMU's order (peers.md §2.1): KVM_SET_MEMORY_ATTRIBUTES, then the
// discard listeners, then the discard of the side no longer used — checked by a recording
// listener that looks at the kernel's state at the moment it is called. Refused conversions
// (unaligned, not the VMM's memory) change nothing and give the guest -KVM_EINVAL.
import { afterEach, describe, expect, it } from 'vitest';
import { createHost, type ModelHost } from '../core/host.js';
import { VmHandle } from '../core/kvm/kvm_main.js';
import { KVM_EINVAL, KVM_MAP_GPA_RANGE_ENCRYPTED } from '../core/uapi.js';
import { ConversionHandler, decodeMapGpaRangeAttrs } from './conversion.js';
import { GuestBuilder, HC_EINVAL_U64 } from './guest.js';
import { MiB, PAGE_SIZE } from './layout.js';
import { Machine, type MachineConfig } from './machine.js';
import { type RamDiscardListener, RamDiscardManager } from './ram.js';
import { residentBytes } from './report.js';

const live: { m: Machine; h: ModelHost }[] = [];
afterEach(() => {
  for (const { m, h } of live.splice(0)) {
    m.dispose();
    h.dispose();
    expect(h.leaks()).toEqual({ frames: 0, fds: 0, vmas: 0, openInvalidations: 0, lockWaiters: 0 });
  }
});

function machine(config: Partial<MachineConfig> = {}): { m: Machine; h: ModelHost } {
  const h = createHost();
  const m = Machine.create(h, {
    vmType: 'sw-protected',
    memory: { lowRamBytes: 4 * MiB, highRamBytes: 2 * MiB, backing: 'guest_memfd' },
    pci: { holes: 'mmio', ecamBuses: 1 },
    ...config,
  });
  live.push({ m, h });
  return { m, h };
}

function kvmOf(m: Machine) {
  if (!(m.vm instanceof VmHandle)) throw new Error('not a model VM');
  return m.vm.kvm;
}

const DATA = 2 * MiB;

describe('the order: attributes → listeners → discard', () => {
  it('going private: listeners see the new attribute and the shared data still there; then it is discarded', () => {
    const { m } = machine();
    const low = m.region('low');
    m.writeShared(DATA, new Uint8Array([0xaa, 0xbb]));
    const seen: string[] = [];
    const recorder: RamDiscardListener = {
      name: 'recorder',
      onDiscard: (gpa, size) => {
        seen.push(`discard ${gpa.toString(16)}+${size.toString(16)}`);
        // (1) already happened: KVM has the range private.
        seen.push(`private=${kvmOf(m).isPrivateGfn(DATA / PAGE_SIZE)}`);
        // (3) has not: the shared page still holds the data, and its blocks are allocated.
        seen.push(`shared=${m.readShared(DATA, 1)[0]?.toString(16)}`);
        seen.push(`sharedBytes=${m.allocatedBytes(low.shared) > 0}`);
      },
      onPopulate: () => seen.push('populate'),
    };
    m.discard.register(recorder);
    const steps: string[] = [];
    m.conversions.onStep = (s) => steps.push(s.step);
    const r = m.conversions.convert({ gpa: DATA, size: 2 * PAGE_SIZE, toPrivate: true, source: 'vmm' });
    expect(r).toEqual({ ok: true, changed: [{ gpa: DATA, size: 2 * PAGE_SIZE }] });
    expect(seen).toEqual(['discard 200000+2000', 'private=true', 'shared=aa', 'sharedBytes=true']);
    expect(steps).toEqual(['attributes', 'listeners', 'discard-shared']);
    // After: the shared side is gone.
    expect(m.readShared(DATA, 2)).toEqual(new Uint8Array([0, 0]));
    expect(m.conversions.stats.sharedDiscardedBytes).toBe(2 * PAGE_SIZE);
  });

  it('going shared: listeners see the attribute cleared and the private page still allocated; then it is punched', async () => {
    const { m, h } = machine();
    const priv = m.region('low').private;
    if (priv === null) throw new Error('no private backing');
    // The guest makes the page private and writes it (allocating it in the guest_memfd).
    const b = new GuestBuilder(m.layout);
    b.convertExpect(DATA, PAGE_SIZE, 'private', 0, 1).fill(DATA, PAGE_SIZE, 0x5c).halt();
    m.loadProgram(b.build());
    expect((await m.run()).end).toBe('halt');
    // guest_memfd's st_blocks stays 0 (upstream): count its pages through the model.
    const gmemBytes = () => residentBytes(h, priv.fd);
    expect(gmemBytes()).toBe(PAGE_SIZE);
    const seen: string[] = [];
    m.discard.register({
      name: 'recorder',
      onDiscard: () => seen.push('discard'),
      onPopulate: (gpa, size) => {
        seen.push(`populate ${gpa.toString(16)}+${size.toString(16)}`);
        seen.push(`private=${kvmOf(m).isPrivateGfn(DATA / PAGE_SIZE)}`);
        seen.push(`gmemBytes=${gmemBytes()}`);
      },
    });
    const steps: string[] = [];
    m.conversions.onStep = (s) => steps.push(s.step);
    expect(m.conversions.convert({ gpa: DATA, size: PAGE_SIZE, toPrivate: false, source: 'vmm' }).ok).toBe(
      true,
    );
    expect(seen).toEqual(['populate 200000+1000', 'private=false', `gmemBytes=${PAGE_SIZE}`]);
    expect(steps).toEqual(['attributes', 'listeners', 'punch-private']);
    expect(gmemBytes()).toBe(0);
  });

  it('MADV_REMOVE discards the shared side through the mapping instead of the fd', () => {
    const { m } = machine({
      memory: { lowRamBytes: 4 * MiB, backing: 'guest_memfd', sharedDiscard: 'madv-remove' },
    });
    m.writeShared(DATA, new Uint8Array([7]));
    const before = m.allocatedBytes(m.region('low').shared);
    expect(m.conversions.convert({ gpa: DATA, size: PAGE_SIZE, toPrivate: true, source: 'vmm' }).ok).toBe(
      true,
    );
    expect(m.allocatedBytes(m.region('low').shared)).toBe(before - PAGE_SIZE);
    expect(m.readShared(DATA, 1)[0]).toBe(0);
  });

  it('a conversion to the state a range already has notifies no listener; a mixture notifies only what changes', () => {
    const { m } = machine();
    const calls: string[] = [];
    m.discard.register({
      name: 'recorder',
      onDiscard: (g, s) => calls.push(`d ${(g - DATA) / PAGE_SIZE}+${s / PAGE_SIZE}`),
      onPopulate: (g, s) => calls.push(`p ${(g - DATA) / PAGE_SIZE}+${s / PAGE_SIZE}`),
    });
    const conv = (page: number, pages: number, toPrivate: boolean) =>
      m.conversions.convert({
        gpa: DATA + page * PAGE_SIZE,
        size: pages * PAGE_SIZE,
        toPrivate,
        source: 'vmm',
      });
    conv(0, 4, false); // already shared
    conv(1, 1, true);
    conv(3, 1, true);
    conv(0, 5, true); // pages 0, 2 and 4 change
    expect(calls).toEqual(['d 1+1', 'd 3+1', 'd 0+1', 'd 2+1', 'd 4+1']);
    expect(m.conversions.stats.pagesChanged).toBe(5);
  });
});

describe('refused conversions change nothing and answer -KVM_EINVAL', () => {
  it.each([
    ['unaligned gpa', { gpa: DATA + 1, size: PAGE_SIZE }, /not aligned to its page size 0x1000/],
    ['unaligned size', { gpa: DATA, size: 100 }, /not aligned/],
    ['empty', { gpa: DATA, size: 0 }, /not a non-empty range/],
    ['the PCI hole / ECAM', { gpa: 0xe000_0000, size: PAGE_SIZE }, /0xe0000000 is PCIe ECAM/],
    ['past the end of low RAM', { gpa: 4 * MiB - PAGE_SIZE, size: 2 * PAGE_SIZE }, /0x400000 is not backed/],
    ['across low and high RAM', { gpa: 4 * MiB - PAGE_SIZE, size: 4 * 2 ** 30 }, /not inside one RAM region/],
    [
      '2 MiB page size, 4 KiB aligned',
      { gpa: DATA + PAGE_SIZE, size: 2 * MiB, alignment: 2 * MiB },
      /page size 0x200000/,
    ],
  ])('%s', (_what, req, why) => {
    const { m } = machine();
    const k = kvmOf(m);
    const listener = {
      name: 'l',
      calls: 0,
      onDiscard() {
        this.calls++;
      },
      onPopulate() {
        this.calls++;
      },
    };
    m.discard.register(listener);
    const attrCalls = k.attributes.stats.calls;
    const r = m.conversions.convert({ ...req, toPrivate: true, source: 'vmm' });
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.errno).toBe('EINVAL');
      expect(r.reason).toMatch(why);
    }
    expect(k.attributes.stats.calls).toBe(attrCalls); // KVM_SET_MEMORY_ATTRIBUTES never called
    expect(listener.calls).toBe(0);
    expect(m.conversions.stats.failed).toBe(1);
  });

  it('memfd-only RAM has no private side: going private is refused', () => {
    const { m } = machine({ memory: { lowRamBytes: 4 * MiB, backing: 'memfd' } });
    const r = m.conversions.convert({ gpa: DATA, size: PAGE_SIZE, toPrivate: true, source: 'vmm' });
    expect(r).toMatchObject({ ok: false, reason: expect.stringMatching(/no private backing/) });
  });

  it('a DEFAULT VM has no private memory at all', () => {
    const { m } = machine({ vmType: 'default', memory: { lowRamBytes: 4 * MiB } });
    const r = m.conversions.convert({ gpa: DATA, size: PAGE_SIZE, toPrivate: false, source: 'vmm' });
    expect(r).toMatchObject({ ok: false, reason: expect.stringMatching(/no private memory/) });
  });

  it('through the guest: KVM_HC_MAP_GPA_RANGE gets -KVM_EINVAL as a u64 in RAX, valid ones 0', async () => {
    const { m } = machine();
    const l = m.layout;
    const b = new GuestBuilder(l);
    b.convertExpect(l.ecam.gpa, PAGE_SIZE, 'private', HC_EINVAL_U64, 1)
      .convertExpect(DATA + PAGE_SIZE, 2 * MiB, 'private', HC_EINVAL_U64, 2, '2m')
      .convertExpect(DATA, 2 * MiB, 'private', 0, 3, '2m')
      .convertExpect(l.lowRam.size - PAGE_SIZE, 2 * PAGE_SIZE, 'shared', HC_EINVAL_U64, 4)
      // Unknown attrs bits (bit 5) are refused too.
      .hypercall(12, [DATA, 1, 32 + KVM_MAP_GPA_RANGE_ENCRYPTED], 'r15')
      .expectReg('r15', HC_EINVAL_U64, 5)
      .halt();
    m.loadProgram(b.build());
    const o = await m.run();
    expect(o.end).toBe('halt');
    expect(m.guestReports).toEqual([]);
    expect(m.runStats.hypercallExits).toBe(5);
    expect(m.conversions.stats).toMatchObject({ toPrivate: 1, failed: 4 });
    expect(m.discard.privateRanges()).toEqual([{ gpa: DATA, size: 2 * MiB }]);
    expect(HC_EINVAL_U64).toBe(2n ** 64n - BigInt(KVM_EINVAL));
  });

  it('a guest expecting success of a refused conversion reports it (the check can fail)', async () => {
    const { m } = machine();
    const b = new GuestBuilder(m.layout);
    b.convertExpect(m.layout.ecam.gpa, PAGE_SIZE, 'private', 0, 9).halt();
    m.loadProgram(b.build());
    await m.run();
    expect(m.guestReports).toEqual([{ tag: 9, value: `0x${HC_EINVAL_U64.toString(16)}` }]);
  });
});

describe('decodeMapGpaRangeAttrs', () => {
  it.each([
    [0, { toPrivate: false, alignment: PAGE_SIZE }],
    [16, { toPrivate: true, alignment: PAGE_SIZE }],
    [17, { toPrivate: true, alignment: 2 * MiB }],
    [2, { toPrivate: false, alignment: 2 ** 30 }],
  ])('attrs %d', (attrs, want) => {
    expect(decodeMapGpaRangeAttrs(attrs)).toEqual(want);
  });
  it.each([3, 15, 32, 2 ** 40, -1])('attrs %d is invalid', (attrs) => {
    expect(decodeMapGpaRangeAttrs(attrs)).toHaveProperty('error');
  });
});

describe('RamDiscardManager', () => {
  it('a listener registered for a section hears only its part, clipped', () => {
    const d = new RamDiscardManager();
    const calls: string[] = [];
    d.register(
      {
        name: 's',
        onDiscard: (g, s) => calls.push(`d ${g}+${s}`),
        onPopulate: (g, s) => calls.push(`p ${g}+${s}`),
      },
      { gpa: 8 * PAGE_SIZE, size: 4 * PAGE_SIZE },
    );
    d.stateChange(0, 10 * PAGE_SIZE, true);
    d.stateChange(0, 2 * PAGE_SIZE, false); // outside the section
    d.stateChange(11 * PAGE_SIZE, 4 * PAGE_SIZE, false);
    expect(calls).toEqual([`d ${8 * PAGE_SIZE}+${2 * PAGE_SIZE}`]);
    expect(d.isPrivate(2 * PAGE_SIZE, 8 * PAGE_SIZE)).toBe(true);
    expect(d.isShared(0, 2 * PAGE_SIZE)).toBe(true);
  });

  it('unregister stops notifications', () => {
    const d = new RamDiscardManager();
    let n = 0;
    const reg = d.register({ name: 'x', onDiscard: () => n++, onPopulate: () => n++ });
    d.stateChange(0, PAGE_SIZE, true);
    reg.unregister();
    d.stateChange(0, PAGE_SIZE, false);
    expect(n).toBe(1);
    expect(d.listenerCount).toBe(0);
  });

  it('the handler refuses before anything when the VM has no private memory', () => {
    const h = createHost();
    const calls: string[] = [];
    const c = new ConversionHandler({
      host: h,
      vm: {
        setMemoryAttributes: () => {
          calls.push('attrs');
          return 0;
        },
      } as unknown as Machine['vm'], // only setMemoryAttributes is reachable, and must not be reached
      hasPrivateMem: false,
      regions: [],
      discard: new RamDiscardManager(),
      sharedDiscard: 'punch-hole',
      describe: () => 'nothing',
    });
    expect(c.convert({ gpa: 0, size: PAGE_SIZE, toPrivate: true, source: 'hypercall' }).ok).toBe(false);
    expect(calls).toEqual([]);
    expect(c.failures[0]?.source).toBe('hypercall');
    h.dispose();
  });
});
