// The machine on the model: layout checks, backing choices, the PCI holes and their fallbacks,
// the buses and devices, the exit loop's handling of what it cannot serve. Every test ends with
// the machine and host torn down and nothing leaked.
import { afterEach, describe, expect, it } from 'vitest';
import { createHost, type HostOptions, type ModelHost } from '../core/host.js';
import { VmHandle } from '../core/kvm/kvm_main.js';
import { KVM_MEMORY_ATTRIBUTE_PRIVATE } from '../core/uapi.js';
import { createRealHost, type RealVcpu, realKvmAvailable } from '../host/index.js';
import { Bus, BusError } from './bus.js';
import { DMA_REG, DMA_STATUS_DONE, DMA_STATUS_ERROR, DmaDevice, dmaRegValue } from './devices.js';
import { GuestBuilder } from './guest.js';
import type { ReadonlyFfProvider } from './holes.js';
import { computeLayout, ecamOffset, LayoutError, MiB, PAGE_SIZE } from './layout.js';
import { Machine, type MachineConfig, MachineError } from './machine.js';

const live: { m: Machine | null; h: ModelHost }[] = [];
afterEach(() => {
  for (const { m, h } of live.splice(0)) {
    m?.dispose();
    h.dispose();
    expect(h.leaks()).toEqual({ frames: 0, fds: 0, vmas: 0, openInvalidations: 0, lockWaiters: 0 });
  }
});

function machine(config: Partial<MachineConfig> = {}, hostOptions: HostOptions = {}): Machine {
  const h = createHost(hostOptions);
  const entry: { m: Machine | null; h: ModelHost } = { m: null, h };
  live.push(entry);
  entry.m = Machine.create(h, {
    vmType: 'default',
    memory: { lowRamBytes: 4 * MiB },
    pci: { holes: 'mmio', ecamBuses: 1 },
    ...config,
  });
  return entry.m;
}

async function runGuest(m: Machine, build: (b: GuestBuilder) => void) {
  const b = new GuestBuilder(m.layout);
  build(b);
  m.loadProgram(b.build());
  return m.run();
}

describe('layout', () => {
  it.each([
    [{ lowRamBytes: MiB, highRamBytes: 0 }, /at least 2 MiB/],
    [{ lowRamBytes: 2 * MiB + 1, highRamBytes: 0 }, /not a multiple of 4096/],
    [{ lowRamBytes: 0xd000_0000, highRamBytes: 0 }, /reaches into the PCI hole starting at 0xc0000000/],
    [{ lowRamBytes: 2 * MiB, highRamBytes: 0, ecamBuses: 0 }, /ecamBuses 0/],
  ])('%j is refused', (o, why) => {
    expect(() => computeLayout(o)).toThrow(LayoutError);
    expect(() => computeLayout(o)).toThrow(why);
  });

  it('a small PC: low RAM, the PCI hole with ECAM and the BARs, high RAM from 4 GiB', () => {
    const l = computeLayout({ lowRamBytes: 8 * MiB, highRamBytes: 4 * MiB });
    expect(l.ecam).toEqual({ gpa: 0xe000_0000, size: 256 * MiB });
    expect(l.highRam).toEqual({ gpa: 2 ** 32, size: 4 * MiB });
    expect(l.lowData).toEqual({ gpa: MiB, size: 7 * MiB });
    expect(ecamOffset(1, 2, 3)).toBe(MiB + 2 * 0x8000 + 3 * PAGE_SIZE);
  });
});

describe('guest RAM backings', () => {
  it("'auto' on a DEFAULT VM picks an in-place guest_memfd (MMAP | INIT_SHARED) the host maps", async () => {
    const m = machine();
    const map = m.memoryMap();
    expect(map.ram).toEqual([
      {
        name: 'low',
        gpa: 0,
        size: 4 * MiB,
        slot: 0,
        slotFlags: ['KVM_MEM_GUEST_MEMFD'],
        shared: 'guest_memfd',
        private: null,
        dirtyLog: false,
      },
    ]);
    const o = await runGuest(m, (b) => b.storeImm(4, 2 * MiB, 0xfeedf00d).halt());
    expect(o.end).toBe('halt');
    expect(m.readShared(2 * MiB, 4)).toEqual(new Uint8Array([0x0d, 0xf0, 0xed, 0xfe]));
  });

  it("'auto' with dirty logging picks a memfd (guest_memfd slots cannot log)", () => {
    const m = machine({ memory: { lowRamBytes: 4 * MiB, dirtyLog: ['low'] } });
    expect(m.memoryMap().ram[0]).toMatchObject({ shared: 'memfd', slotFlags: ['KVM_MEM_LOG_DIRTY_PAGES'] });
  });

  it.each([
    [
      { memory: { lowRamBytes: 4 * MiB, backing: 'guest_memfd' as const, dirtyLog: ['low' as const] } },
      /dirty logging needs memfd/,
    ],
    [{ memory: { lowRamBytes: 4 * MiB, backing: 'private-memfd' as const } }, /needs a sw-protected VM/],
  ])('impossible combinations are refused: %#', (config, why) => {
    const h = createHost();
    live.push({ m: null, h });
    expect(() => Machine.create(h, { vmType: 'default', ...config })).toThrow(MachineError);
    expect(() => Machine.create(h, { vmType: 'default', ...config })).toThrow(why);
  });

  it("a SW_PROTECTED VM gets QEMU's layout: shared memfd + private guest_memfd, hypercall exits enabled", () => {
    const m = machine({ vmType: 'sw-protected', memory: { lowRamBytes: 4 * MiB, highRamBytes: 2 * MiB } });
    expect(m.memoryMap().ram.map((r) => [r.name, r.shared, r.private, r.slotFlags])).toEqual([
      ['low', 'memfd', 'guest_memfd', ['KVM_MEM_GUEST_MEMFD']],
      ['high', 'memfd', 'guest_memfd', ['KVM_MEM_GUEST_MEMFD']],
    ]);
    expect(m.vm instanceof VmHandle && m.vm.kvm.exitHypercallMask).toBe(1 << 12);
  });
});

describe('PCI holes', () => {
  const scan = (b: GuestBuilder) => b.pciScan(2 * MiB, 1).halt();

  it('allones with the extension: no exit for absent functions, no host memory', async () => {
    const m = machine(
      { pci: { holes: 'allones', ecamBuses: 1 } },
      { kvm: { extensions: { allones: true } } },
    );
    expect(m.holeReport).toMatchObject({
      requested: 'allones',
      used: 'allones',
      fallbacks: [],
      hostMemoryBytes: 0,
    });
    expect(m.holeReport.slots.map((s) => [s.gpa - m.layout.ecam.gpa, s.size / PAGE_SIZE])).toEqual([
      [PAGE_SIZE, 7],
      [9 * PAGE_SIZE, 7],
      [17 * PAGE_SIZE, 256 - 17],
    ]);
    expect((await runGuest(m, scan)).end).toBe('halt');
    expect(m.pci.stats).toMatchObject({ presentReads: 3, absentReads: 0 });
    expect(m.exits['KVM_EXIT_MMIO']).toBe(3);
  });

  it('allones without the extension falls back to read-only 0xff slots and says why', async () => {
    const m = machine({ pci: { holes: 'allones', ecamBuses: 1 } });
    expect(m.holeReport.used).toBe('readonly-ff');
    expect(m.holeReport.fallbacks).toEqual([
      'allones: KVM_CAP_GUESTMEM_ALLONES is 0 on this VM (extension not available)',
    ]);
    expect(m.holeReport.hostMemoryBytes).toBe(64 * 1024);
    await runGuest(m, scan);
    expect(m.pci.stats.absentReads).toBe(0);
    expect(m.readShared(2 * MiB + 4 * 255, 4)).toEqual(new Uint8Array([0xff, 0xff, 0xff, 0xff]));
  });

  it('a readonly-ff provider that fails falls back to MMIO exits, answered with all-ones', async () => {
    const failing: ReadonlyFfProvider = () => {
      throw new Error('no VMA budget left');
    };
    const m = machine({ pci: { holes: 'readonly-ff', ecamBuses: 1 }, readonlyFf: failing });
    expect(m.holeReport).toMatchObject({
      used: 'mmio',
      fallbacks: ['readonly-ff: no VMA budget left'],
      slots: [],
    });
    await runGuest(m, scan);
    expect(m.pci.stats).toMatchObject({ presentReads: 3, absentReads: 253 });
    expect(m.exits['KVM_EXIT_MMIO']).toBe(256);
    expect(m.readShared(2 * MiB + 4, 4)).toEqual(new Uint8Array([0xff, 0xff, 0xff, 0xff]));
    // The host bridge's ids, as the guest read them.
    expect(m.readShared(2 * MiB, 4)).toEqual(new Uint8Array([0x86, 0x80, 0xc0, 0x29]));
  });

  it('a write to a hole exits under every strategy and is dropped', async () => {
    for (const holes of ['allones', 'readonly-ff', 'mmio'] as const) {
      const m = machine({ pci: { holes, ecamBuses: 1 } }, { kvm: { extensions: { allones: true } } });
      const absent = m.layout.ecam.gpa + ecamOffset(0, 9, 0);
      const o = await runGuest(m, (b) => b.storeImm(4, absent, 0).cmp(4, absent, 0xffffffff, 1).halt());
      expect(o.end).toBe('halt');
      expect(m.guestReports).toEqual([]);
      expect(m.pci.stats.absentWrites).toBe(1);
    }
  });
});

describe('buses and devices', () => {
  it('unassigned MMIO in the PCI hole reads all-ones; writes are dropped; both counted', async () => {
    const m = machine();
    const o = await runGuest(m, (b) =>
      b.storeImm(4, 0xd000_0000, 5).cmp(4, 0xd000_0000, 0xffffffff, 1).halt(),
    );
    expect(o.end).toBe('halt');
    expect(m.guestReports).toEqual([]);
    expect(m.mmio.stats).toMatchObject({ unassignedReads: 1, unassignedWrites: 1 });
  });

  it('the serial collects what the guest prints; its LSR reads "transmitter empty"', async () => {
    const m = machine();
    await runGuest(m, (b) =>
      b
        .print('héllo\n')
        .cmp(1, m.layout.serialMmio.gpa + 5, 0x60, 1)
        .halt(),
    );
    expect(m.serial.text).toBe('héllo\n');
    expect(m.guestReports).toEqual([]);
    expect(m.exits['KVM_EXIT_MMIO']).toBe(8); // 7 UTF-8 bytes + the LSR read
  });

  it('the bus refuses overlapping devices and dispatches by range', () => {
    const bus = new Bus('test');
    const dev = (name: string) => ({
      name,
      read: (o: number, l: number) => new Uint8Array(l).fill(o),
      write: () => {},
    });
    bus.map(0x1000, 0x100, dev('a'));
    bus.map(0x2000, 0x100, dev('b'));
    expect(() => bus.map(0x10ff, 2, dev('c'))).toThrow(BusError);
    expect(bus.read(0x2005, 1)).toEqual(new Uint8Array([5]));
    expect(bus.find(0x1100)).toBeNull();
    expect(bus.stats.byDevice['b']).toEqual({ reads: 1, writes: 0 });
  });

  it('DMA: done into shared RAM across a page boundary; refused for bad lengths and non-RAM', async () => {
    const m = machine();
    const dst = 2 * MiB + PAGE_SIZE - 8;
    const o = await runGuest(m, (b) =>
      b
        .dma(dst, 16)
        .expectDmaStatus(DMA_STATUS_DONE, 1)
        .dma(dst, 0)
        .expectDmaStatus(DMA_STATUS_ERROR, 2)
        .dma(dst, PAGE_SIZE + 1)
        .expectDmaStatus(DMA_STATUS_ERROR, 3)
        .dma(m.layout.ecam.gpa, 4)
        .expectDmaStatus(DMA_STATUS_ERROR, 4)
        .halt(),
    );
    expect(o.end).toBe('halt');
    expect(m.guestReports).toEqual([]);
    expect(m.readShared(dst, 16)).toEqual(m.dma.payload.subarray(0, 16));
    expect(m.dma.stats).toMatchObject({ transfers: 1, refused: 3, mappingsCreated: 2 });
    expect(m.dma.lastError).toMatch(/not guest RAM \(PCIe ECAM/);
    expect(dmaRegValue(m.dma, DMA_REG.ERRORS)).toBe(3);
  });

  it('why the DMA device listens: a device that keeps a stale mapping writes freed memory back to life', () => {
    const m = machine({ vmType: 'sw-protected' });
    const low = m.region('low');
    const buf = 2 * MiB;
    const stale = new DmaDevice({ host: m.host, translate: (g) => m.translateShared(g) });
    const mmioDma = (d: DmaDevice, len: number): void => {
      const dst = new Uint8Array(8);
      new DataView(dst.buffer).setUint32(0, buf, true);
      d.write(DMA_REG.DST, dst);
      d.write(DMA_REG.LEN, new Uint8Array([len, 0, 0, 0]));
      d.write(DMA_REG.CMD, new Uint8Array([1, 0, 0, 0]));
    };
    mmioDma(stale, 16); // caches the mapping
    mmioDma(m.dma, 16); // the machine's device: also cached, but it listens
    const before = m.allocatedBytes(low.shared);
    expect(m.conversions.convert({ gpa: buf, size: PAGE_SIZE, toPrivate: true, source: 'vmm' }).ok).toBe(
      true,
    );
    expect(m.allocatedBytes(low.shared)).toBe(before - PAGE_SIZE); // discarded
    mmioDma(m.dma, 16);
    expect(dmaRegValue(m.dma, DMA_REG.STATUS)).toBe(DMA_STATUS_ERROR);
    expect(m.allocatedBytes(low.shared)).toBe(before - PAGE_SIZE);
    mmioDma(stale, 16);
    expect(dmaRegValue(stale, DMA_REG.STATUS)).toBe(DMA_STATUS_DONE); // wrote through its stale mapping
    expect(m.allocatedBytes(low.shared)).toBe(before); // …and allocated the discarded page again
  });
});

describe('the exit loop', () => {
  it('a memory fault the VMM cannot convert ends the run with the record', async () => {
    const m = machine({
      vmType: 'sw-protected',
      pci: { holes: 'readonly-ff', ecamBuses: 1 },
    });
    // Behind the VMM's back, a hole page is made private: the guest's read is a private access to
    // a slot with no guest_memfd (row 7a), and no RAM region the VMM owns covers it.
    const absent = m.layout.ecam.gpa + ecamOffset(0, 4, 0);
    m.vm.setMemoryAttributes({ address: absent, size: PAGE_SIZE, attributes: KVM_MEMORY_ATTRIBUTE_PRIVATE });
    const o = await runGuest(m, (b) => b.load(4, 'r8', absent).halt());
    expect(o).toMatchObject({ end: 'memory-fault', errno: 'EFAULT', memoryFault: { gpa: absent, flags: 8 } });
    expect(o.detail).toMatch(/is not inside one RAM region the VMM owns \(.* is PCIe ECAM/);
    expect(m.runStats.memoryFaultExits).toBe(1);
  });

  it('the sync handler runs at each sync point, and the guest resumes after it (async too)', async () => {
    const m = machine();
    const tags: number[] = [];
    const b = new GuestBuilder(m.layout);
    b.sync(1)
      .cmp(1, 2 * MiB, 0x42, 9)
      .sync(2)
      .halt();
    m.loadProgram(b.build());
    const o = await m.run({
      sync: async (tag) => {
        tags.push(tag);
        await Promise.resolve();
        if (tag === 1) m.writeShared(2 * MiB, new Uint8Array([0x42]));
      },
    });
    expect(o.end).toBe('halt');
    expect(tags).toEqual([1, 2]);
    expect(m.guestReports).toEqual([]);
    expect(m.exits).toEqual({ KVM_EXIT_IO: 2, KVM_EXIT_HLT: 1 });
  });

  it('a guest that never halts is stopped at the exit limit', async () => {
    const m = machine();
    const b = new GuestBuilder(m.layout);
    b.loop('r8', 1000, (l) => l.sync(1)).halt();
    m.loadProgram(b.build());
    const o = await m.run({}, { maxExits: 10 });
    expect(o).toMatchObject({ end: 'limit', detail: 'stopped after 10 exits' });
  });

  it('dispose is idempotent and tolerates backings the scenario already closed', () => {
    const m = machine({ memory: { lowRamBytes: 4 * MiB, highRamBytes: 2 * MiB, backing: 'memfd' } });
    m.closeBacking('high', 'shared');
    m.closeVcpu();
    m.dispose();
    m.dispose();
  });
});

const kvm = realKvmAvailable();
describe.skipIf(!kvm.ok)(`on /dev/kvm${kvm.ok ? '' : ` (skipped: ${kvm.reason})`}`, () => {
  it('the machine runs a guest: serial, DMA, an MMIO hole scan, memory through the shared mapping', async () => {
    const h = createRealHost();
    try {
      const m = Machine.create(h, {
        vmType: 'default',
        memory: { lowRamBytes: 4 * MiB },
        pci: { holes: 'mmio', ecamBuses: 1 },
      });
      try {
        expect(m.memoryMap().ram[0]?.shared).toBe('guest_memfd'); // MMAP | INIT_SHARED is offered
        const o = await runGuest(m, (b) =>
          b
            .print('ok\n')
            .dma(2 * MiB, 8)
            .expectDmaStatus(DMA_STATUS_DONE, 1)
            .pciScan(3 * MiB, 1)
            .halt(),
        );
        expect(o.end).toBe('halt');
        expect(m.guestReports).toEqual([]);
        expect(m.serial.text).toBe('ok\n');
        expect(m.readShared(2 * MiB, 8)).toEqual(m.dma.payload.subarray(0, 8));
        expect(m.pci.stats).toMatchObject({ presentReads: 3, absentReads: 253 });
      } finally {
        m.dispose();
      }
    } finally {
      h.dispose();
    }
  });

  it('a guest stuck in the kernel (a VMCALL that never exits, host-deviations #2) ends as an error at the run watchdog', async () => {
    const h = createRealHost();
    try {
      const m = Machine.create(h, {
        vmType: 'default',
        memory: { lowRamBytes: 2 * MiB },
        pci: { holes: 'mmio', ecamBuses: 1 },
      });
      try {
        (m.vcpu as RealVcpu).runTimeoutMs = 300; // a RealHost's VMs make RealVcpus
        const b = new GuestBuilder(m.layout);
        b.hypercall(12, [0, 1, 0], 'r15').halt();
        m.loadProgram(b.build());
        const o = await m.run();
        // Hardware-assisted KVM answers the VMCALL (-KVM_ENOSYS: no hypercall exit on DEFAULT VMs) and halts.
        expect(['halt', 'error']).toContain(o.end);
        if (o.end !== 'halt') {
          expect(o).toMatchObject({ end: 'error', errno: 'EINTR', exitReasonName: 'KVM_EXIT_INTR' });
          expect(o.detail).toMatch(/run watchdog/);
        }
      } finally {
        m.dispose();
      }
    } finally {
      h.dispose();
    }
  });
});
