/**
 * A small x86 machine on a `Host` (architecture §7), using only the interface of
 * src/core/api.ts so it runs on the model and on /dev/kvm alike:
 *
 * - guest RAM laid out like a small PC (layout.ts): low RAM in slot 0, high RAM from 4 GiB in
 *   slot 1, each backed by a memfd, a guest_memfd with MMAP | INIT_SHARED (when the VM offers
 *   it: `KVM_CAP_GUEST_MEMFD_FLAGS`), or — on private-memory VMs — a shared memfd plus a private
 *   guest_memfd (QEMU's layout) or a paired private memfd (the seeds 000/001 extension);
 * - the PCI hole with ECAM, whose absent functions are served by `holes.ts`;
 * - an MMIO bus with the serial, the PCI config space and the DMA device; the sync and report
 *   ports of guest programs on the port-I/O side;
 * - conversion handling in QEMU's order (conversion.ts) for KVM_EXIT_MEMORY_FAULT and
 *   KVM_HC_MAP_GPA_RANGE exits;
 * - one vCPU running a guest program, and the exit loop that serves it (`run`).
 *
 * Ownership: the machine owns its VM, vCPU, memory files and mappings; `dispose()` releases them
 * in the kernel objects' order (vCPU → memslots → mappings → files → VM, realkvm-notes §8), and
 * tolerates what a scenario already closed on purpose.
 */

import type { Host, RunResult, Vcpu, Vm } from '../core/api.js';
import { KvmError } from '../core/errno.js';
import {
  GUEST_MEMFD_FLAG_INIT_SHARED,
  GUEST_MEMFD_FLAG_MMAP,
  KVM_CAP_EXIT_HYPERCALL,
  KVM_CAP_GUEST_MEMFD_FLAGS,
  KVM_CAP_GUESTMEM_PRIVATE_MEMFD,
  KVM_EINVAL,
  KVM_ENOSYS,
  KVM_EXIT_HLT,
  KVM_EXIT_HYPERCALL,
  KVM_EXIT_INTR,
  KVM_EXIT_IO,
  KVM_EXIT_IO_IN,
  KVM_EXIT_MEMORY_FAULT,
  KVM_EXIT_MMIO,
  KVM_HC_MAP_GPA_RANGE,
  KVM_MEM_GUEST_MEMFD,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_PRIVATE_MEMFD,
  KVM_MEMORY_EXIT_FLAG_PRIVATE,
  KVM_X86_DEFAULT_VM,
  KVM_X86_SW_PROTECTED_VM,
  MAP_SHARED,
  MFD_CLOEXEC,
  PROT_READ,
  PROT_WRITE,
} from '../core/uapi.js';
import { type Program, REPORT_PORT, SYNC_PORT } from '../core/vcpu/program.js';
import { Bus, leValue } from './bus.js';
import { ConversionHandler, decodeMapGpaRangeAttrs, type SharedDiscard } from './conversion.js';
import {
  DmaDevice,
  defaultPciFunctions,
  PciConfigSpace,
  type PciFunctionDef,
  SerialDevice,
} from './devices.js';
import {
  genericReadonlyFf,
  type HoleReport,
  type HoleStrategy,
  type Holes,
  type ReadonlyFfProvider,
  setupHoles,
} from './holes.js';
import {
  bdfName,
  computeLayout,
  type GpaRange,
  type MachineLayout,
  PAGE_SIZE,
  rangeWithin,
} from './layout.js';
import {
  type Backing,
  type PrivateBackingKind,
  RamDiscardManager,
  type RamRegion,
  type SharedBackingKind,
} from './ram.js';
import type { SpanSink } from './trace_events.js';

/** The VM types the machine knows. */
export type VmKind = 'default' | 'sw-protected';
/** How a RAM region is backed; 'auto' picks the best the VM offers. */
export type RamBackingChoice = 'auto' | 'memfd' | 'guest_memfd' | 'private-memfd';
export type RegionName = 'low' | 'high';

export interface MemorySpec {
  /** Bytes of RAM at gpa 0 (≥ 2 MiB, below the PCI hole). */
  readonly lowRamBytes: number;
  /** Bytes of RAM from 4 GiB (default 0). */
  readonly highRamBytes?: number;
  readonly backing?: RamBackingChoice;
  /** High RAM's backing when it differs from `backing`. */
  readonly highBacking?: RamBackingChoice;
  /** How the shared side is discarded going private (default 'punch-hole'). */
  readonly sharedDiscard?: SharedDiscard;
  /** Regions whose slot logs dirty pages (KVM_MEM_LOG_DIRTY_PAGES; memfd backing only). */
  readonly dirtyLog?: readonly RegionName[];
}

export interface PciSpec {
  /** How ECAM pages of absent functions are served (default 'allones', falling back). */
  readonly holes?: HoleStrategy;
  /** Buses of ECAM (1..256, default 256). */
  readonly ecamBuses?: number;
}

export interface MachineConfig {
  readonly vmType: VmKind;
  readonly memory: MemorySpec;
  readonly pci?: PciSpec;
  /** Read-only 0xff slots for the 'readonly-ff' hole strategy (the backend's best; default generic). */
  readonly readonlyFf?: ReadonlyFfProvider | undefined;
  /** PCI functions (default: host bridge, serial, DMA device on bus 0). */
  readonly pciFunctions?: readonly PciFunctionDef[];
  /** Where conversions are traced as spans (`--trace-events`). */
  readonly tracer?: SpanSink | undefined;
}

export class MachineError extends Error {
  override readonly name = 'MachineError';
}

/** First memslot id of the hole slots (0 and 1 are RAM). */
export const HOLE_SLOT_BASE = 8;

/** How a run ended. */
export type RunEnd = 'halt' | 'memory-fault' | 'error' | 'limit';
export interface RunOutcome {
  readonly end: RunEnd;
  readonly detail: string;
  readonly exitReasonName?: string;
  readonly errno?: string;
  /** For memory-fault ends: the record. */
  readonly memoryFault?: { readonly gpa: number; readonly size: number; readonly flags: number };
}

/** A cmp in the guest program found another value (OUT to REPORT_PORT). */
export interface GuestReport {
  readonly tag: number;
  /** The value found (rbx), in hex. */
  readonly value: string;
}

export interface RunHandlers {
  /** The guest reached `sync(tag)`; the vCPU continues when this returns (or resolves). */
  sync?(tag: number): void | Promise<void>;
}

export interface RunLimits {
  /** Exits before the run is stopped (default 2 000 000). */
  readonly maxExits?: number;
  /** Wall-clock budget in ms, checked at each exit (default 120 000). */
  readonly timeoutMs?: number;
}

/** The machine's memory map, for reports. */
export interface MemoryMap {
  readonly vmType: VmKind;
  readonly hasPrivateMem: boolean;
  readonly layout: {
    readonly name: string;
    readonly kind: 'ram' | 'pci-hole' | 'ecam' | 'device';
    readonly gpa: number;
    readonly size: number;
  }[];
  readonly ram: {
    readonly name: RegionName;
    readonly gpa: number;
    readonly size: number;
    readonly slot: number;
    readonly slotFlags: string[];
    readonly shared: SharedBackingKind;
    readonly private: PrivateBackingKind | null;
    readonly dirtyLog: boolean;
  }[];
  readonly pci: {
    readonly bdf: string;
    readonly name: string;
    readonly vendorId: number;
    readonly deviceId: number;
  }[];
  readonly holes: HoleReport;
  /** Ranges the guest has made private. */
  readonly privateRanges: readonly GpaRange[];
}

const hex = (n: number): string => `0x${n.toString(16)}`;

function slotFlagNames(flags: number): string[] {
  const out: string[] = [];
  if ((flags & KVM_MEM_LOG_DIRTY_PAGES) !== 0) out.push('KVM_MEM_LOG_DIRTY_PAGES');
  if ((flags & KVM_MEM_GUEST_MEMFD) !== 0) out.push('KVM_MEM_GUEST_MEMFD');
  if ((flags & KVM_MEM_PRIVATE_MEMFD) !== 0) out.push('KVM_MEM_PRIVATE_MEMFD');
  return out;
}

/** The machine; see the file comment. Create with `Machine.create`. */
export class Machine {
  readonly hasPrivateMem: boolean;
  readonly regions: RamRegion[] = [];
  readonly discard = new RamDiscardManager();
  readonly conversions: ConversionHandler;
  readonly mmio = new Bus('mmio');
  readonly pio = new Bus('pio');
  readonly serial = new SerialDevice();
  readonly pci: PciConfigSpace;
  readonly dma: DmaDevice;
  readonly vcpu: Vcpu;
  /** Exits by kernel name (KVM_EXIT_MMIO: 12), including failed KVM_RUNs with a record. */
  readonly exits: Record<string, number> = {};
  readonly guestReports: GuestReport[] = [];
  readonly runStats = { runs: 0, memoryFaultExits: 0, hypercallExits: 0, intrRetries: 0 };
  private holes: Holes | null = null;
  private vcpuOpen = true;
  private vmOpen = true;
  private disposed = false;

  private constructor(
    readonly host: Host,
    readonly vm: Vm,
    readonly config: MachineConfig,
    readonly layout: MachineLayout,
  ) {
    this.hasPrivateMem = config.vmType === 'sw-protected';
    this.pci = new PciConfigSpace(
      config.pciFunctions ?? defaultPciFunctions(layout.serialMmio, layout.dmaMmio),
      layout.ecamBuses,
    );
    this.dma = new DmaDevice({ host, translate: (gpa) => this.translateShared(gpa) });
    this.conversions = new ConversionHandler({
      host,
      vm,
      hasPrivateMem: this.hasPrivateMem,
      regions: this.regions,
      discard: this.discard,
      sharedDiscard: config.memory.sharedDiscard ?? 'punch-hole',
      describe: (gpa) => this.describe(gpa),
      tracer: config.tracer ?? null,
    });
    this.vcpu = vm.createVcpu(0);
  }

  /** Builds the machine on `host`; on failure everything made so far is released. */
  static create(host: Host, config: MachineConfig): Machine {
    const layout = computeLayout({
      lowRamBytes: config.memory.lowRamBytes,
      highRamBytes: config.memory.highRamBytes ?? 0,
      ...(config.pci?.ecamBuses === undefined ? {} : { ecamBuses: config.pci.ecamBuses }),
    });
    const kvm = host.openKvm();
    let vm: Vm;
    try {
      vm = kvm.createVm(config.vmType === 'sw-protected' ? KVM_X86_SW_PROTECTED_VM : KVM_X86_DEFAULT_VM);
    } finally {
      kvm.close(); // the VM holds its own reference
    }
    let m: Machine | null = null;
    try {
      m = new Machine(host, vm, config, layout);
      m.setup();
      return m;
    } catch (e) {
      if (m !== null) m.dispose();
      else vm.close();
      throw e;
    }
  }

  private setup(): void {
    const { vm, layout, config } = this;
    if (this.hasPrivateMem) {
      // HC-1: KVM_HC_MAP_GPA_RANGE exits to the VMM.
      vm.enableCap({ cap: KVM_CAP_EXIT_HYPERCALL, args: [1 << KVM_HC_MAP_GPA_RANGE] });
    }
    const wants = [
      config.memory.backing ?? 'auto',
      config.memory.highBacking ?? config.memory.backing ?? 'auto',
    ];
    if (wants.includes('private-memfd')) {
      if (!this.hasPrivateMem) throw new MachineError("backing 'private-memfd' needs a sw-protected VM");
      vm.enableCap({ cap: KVM_CAP_GUESTMEM_PRIVATE_MEMFD });
    }
    this.addRegion('low', layout.lowRam, 0, config.memory.backing ?? 'auto');
    if (layout.highRam.size > 0) {
      this.addRegion('high', layout.highRam, 1, config.memory.highBacking ?? config.memory.backing ?? 'auto');
    }
    // Devices: ECAM, BARs; the DMA device follows conversions.
    this.mmio.map(layout.ecam.gpa, layout.ecam.size, this.pci);
    this.mmio.map(layout.serialMmio.gpa, layout.serialMmio.size, this.serial);
    this.mmio.map(layout.dmaMmio.gpa, layout.dmaMmio.size, this.dma);
    this.discard.register(this.dma);
    // The holes: ECAM minus the pages of present functions.
    const holes: GpaRange[] = [];
    let at = 0;
    for (const p of this.pci.presentPages()) {
      if (p.gpa > at) holes.push({ gpa: layout.ecam.gpa + at, size: p.gpa - at });
      at = p.gpa + p.size;
    }
    if (at < layout.ecam.size) holes.push({ gpa: layout.ecam.gpa + at, size: layout.ecam.size - at });
    this.holes = setupHoles(
      this.host,
      vm,
      holes,
      HOLE_SLOT_BASE,
      config.pci?.holes ?? 'allones',
      config.readonlyFf ?? genericReadonlyFf,
    );
  }

  /** What guest_memfd flags this VM offers (0 if the cap is unknown). */
  private gmemFlags(): number {
    try {
      return this.vm.checkExtension(KVM_CAP_GUEST_MEMFD_FLAGS);
    } catch {
      return 0;
    }
  }

  private addRegion(name: RegionName, range: GpaRange, slot: number, want: RamBackingChoice): void {
    const { host, vm } = this;
    const dirtyLog = this.config.memory.dirtyLog?.includes(name) ?? false;
    const inPlace = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;
    let choice = want;
    if (choice === 'auto') {
      if (this.hasPrivateMem) choice = 'guest_memfd';
      else choice = !dirtyLog && (this.gmemFlags() & inPlace) === inPlace ? 'guest_memfd' : 'memfd';
    }
    if (dirtyLog && choice !== 'memfd') {
      throw new MachineError(
        `${name} RAM: dirty logging needs memfd backing (guest_memfd slots cannot log, MR-4)`,
      );
    }
    const size = range.size;
    const memfd = <K extends 'memfd' | 'private-memfd'>(kind: K): Backing<K> => {
      const fd = host.memfdCreate(`guestmem-${name}-${kind === 'memfd' ? 'shared' : 'private'}`, MFD_CLOEXEC);
      host.ftruncate(fd, size);
      return { kind, fd, size, offset: 0, hva: 0 };
    };
    let shared: Backing<SharedBackingKind>;
    let priv: Backing<PrivateBackingKind> | null = null;
    let flags = dirtyLog ? KVM_MEM_LOG_DIRTY_PAGES : 0;
    if (choice === 'memfd') {
      shared = memfd('memfd');
    } else if (choice === 'guest_memfd' && !this.hasPrivateMem) {
      // In-place: one guest_memfd is all of the region, mapped by the host (MMAP | INIT_SHARED).
      if ((this.gmemFlags() & inPlace) !== inPlace) {
        throw new MachineError(
          `${name} RAM: KVM_CAP_GUEST_MEMFD_FLAGS is ${hex(this.gmemFlags())}, without MMAP|INIT_SHARED`,
        );
      }
      const fd = vm.createGuestMemfd({ size, flags: inPlace });
      shared = { kind: 'guest_memfd', fd, size, offset: 0, hva: 0 };
      flags |= KVM_MEM_GUEST_MEMFD;
    } else if (choice === 'guest_memfd') {
      shared = memfd('memfd');
      priv = { kind: 'guest_memfd', fd: vm.createGuestMemfd({ size }), size, offset: 0, hva: 0 };
      flags |= KVM_MEM_GUEST_MEMFD;
    } else {
      shared = memfd('memfd');
      priv = memfd('private-memfd');
      flags |= KVM_MEM_PRIVATE_MEMFD;
    }
    const region: RamRegion = { name, range, slot, slotFlags: flags, shared, private: priv, dirtyLog };
    this.regions.push(region); // from here on dispose() releases it
    shared.hva = host.mmap(0, size, PROT_READ | PROT_WRITE, MAP_SHARED, shared.fd, 0);
    vm.setUserMemoryRegion2({
      slot,
      flags,
      guestPhysAddr: range.gpa,
      memorySize: size,
      // On the real kernel faults go through userspace_addr even for gmem slots (host-deviations #11).
      userspaceAddr: shared.hva,
      ...(priv?.kind === 'guest_memfd' || shared.kind === 'guest_memfd'
        ? { guestMemfd: priv?.kind === 'guest_memfd' ? priv.fd : shared.fd, guestMemfdOffset: 0 }
        : {}),
      ...(priv?.kind === 'private-memfd' ? { privateFd: priv.fd, privateOffset: 0 } : {}),
    });
  }

  /** The holes' report (how they were served and what it costs). */
  get holeReport(): HoleReport {
    return (this.holes as Holes).report; // set by setup()
  }

  region(name: RegionName): RamRegion {
    const r = this.regions.find((x) => x.name === name);
    if (r === undefined) throw new MachineError(`the machine has no ${name} RAM`);
    return r;
  }

  /** What lies at `gpa`, in words (for refusals). */
  describe(gpa: number): string {
    const l = this.layout;
    for (const r of this.regions)
      if (gpa >= r.range.gpa && gpa < r.range.gpa + r.range.size) return `${r.name} RAM`;
    const at = (g: GpaRange): boolean => gpa >= g.gpa && gpa < g.gpa + g.size;
    if (at(l.ecam)) return 'PCIe ECAM (config space)';
    if (at(l.serialMmio)) return "the serial's BAR";
    if (at(l.dmaMmio)) return "the DMA device's BAR";
    if (at(l.pciHole)) return 'the PCI hole';
    return 'not backed by anything';
  }

  /** hva of the shared page at `gpa` for device DMA, or why not. */
  translateShared(gpa: number): number | { error: string } {
    const r = this.regions.find((x) => rangeWithin({ gpa, size: PAGE_SIZE }, x.range));
    if (r === undefined) return { error: `not guest RAM (${this.describe(gpa)})` };
    if (!this.discard.isShared(gpa, PAGE_SIZE)) {
      return { error: 'private memory: a device may only reach shared memory' };
    }
    if (r.shared.hva === 0) return { error: `the shared backing of ${r.name} RAM is not mapped` };
    return r.shared.hva + (gpa - r.range.gpa);
  }

  /** Reads guest memory through the host mapping of the shared backing (what the VMM can see). */
  readShared(gpa: number, length: number): Uint8Array {
    const r = this.regions.find((x) => rangeWithin({ gpa, size: length }, x.range));
    if (r === undefined || r.shared.hva === 0) {
      throw new MachineError(`[${hex(gpa)}, ${hex(gpa + length)}) is not mapped shared RAM`);
    }
    return this.host.readMemory(r.shared.hva + (gpa - r.range.gpa), length);
  }

  /** Writes guest memory through the host mapping of the shared backing. */
  writeShared(gpa: number, bytes: Uint8Array): void {
    const r = this.regions.find((x) => rangeWithin({ gpa, size: bytes.length }, x.range));
    if (r === undefined || r.shared.hva === 0) {
      throw new MachineError(`[${hex(gpa)}, ${hex(gpa + bytes.length)}) is not mapped shared RAM`);
    }
    this.host.writeMemory(r.shared.hva + (gpa - r.range.gpa), bytes);
  }

  /** Bytes allocated in a backing file (fstat st_blocks × 512; 0 once closed). */
  allocatedBytes(b: Backing<string>): number {
    if (b.fd < 0) return 0;
    return this.host.fstat(b.fd).blocks * 512;
  }

  memoryMap(): MemoryMap {
    const l = this.layout;
    return {
      vmType: this.config.vmType,
      hasPrivateMem: this.hasPrivateMem,
      layout: [
        ...this.regions.map((r) => ({ name: `${r.name} RAM`, kind: 'ram' as const, ...r.range })),
        { name: 'PCI hole', kind: 'pci-hole' as const, ...l.pciHole },
        { name: 'ECAM', kind: 'ecam' as const, ...l.ecam },
        ...this.mmio
          .devices()
          .filter((d) => d.name !== this.pci.name)
          .map((d) => ({ name: d.name, kind: 'device' as const, gpa: d.base, size: d.size })),
      ].sort((a, b) => a.gpa - b.gpa),
      ram: this.regions.map((r) => ({
        name: r.name,
        gpa: r.range.gpa,
        size: r.range.size,
        slot: r.slot,
        slotFlags: slotFlagNames(r.slotFlags),
        shared: r.shared.kind,
        private: r.private?.kind ?? null,
        dirtyLog: r.dirtyLog,
      })),
      pci: this.pci.functions.map((f) => ({
        bdf: bdfName(f.bus, f.dev, f.fn),
        name: f.name,
        vendorId: f.vendorId,
        deviceId: f.deviceId,
      })),
      holes: this.holeReport,
      privateRanges: this.discard.privateRanges(),
    };
  }

  /** Installs a guest program (code at the layout's code gpa, in low RAM). */
  loadProgram(program: Program): void {
    this.vcpu.setProgram(program, this.layout.program);
  }

  private countExit(name: string): void {
    this.exits[name] = (this.exits[name] ?? 0) + 1;
  }

  /**
   * Runs the vCPU until it halts, fails, or a limit is reached, serving every exit: MMIO and
   * port I/O through the buses, sync points through `handlers.sync`, conversions (memory
   * faults, KVM_HC_MAP_GPA_RANGE) through the conversion handler.
   */
  async run(handlers: RunHandlers = {}, limits: RunLimits = {}): Promise<RunOutcome> {
    const maxExits = limits.maxExits ?? 2_000_000;
    const deadline = performance.now() + (limits.timeoutMs ?? 120_000);
    const vcpu = this.vcpu;
    let lastFault = '';
    let sameFault = 0;
    for (let n = 0; ; n++) {
      if (n >= maxExits) return { end: 'limit', detail: `stopped after ${maxExits} exits` };
      if (performance.now() > deadline) {
        return { end: 'limit', detail: `stopped after ${limits.timeoutMs ?? 120_000} ms` };
      }
      const r: RunResult = vcpu.run();
      this.runStats.runs++;
      if (r.ret === -1) {
        if (r.exitReason === KVM_EXIT_MEMORY_FAULT && r.memoryFaultValid === true && r.memoryFault) {
          this.countExit(r.exitReasonName);
          this.runStats.memoryFaultExits++;
          const f = r.memoryFault;
          const toPrivate = (f.flags & KVM_MEMORY_EXIT_FLAG_PRIVATE) !== 0;
          const key = `${f.gpa}:${f.size}:${f.flags}`;
          sameFault = key === lastFault ? sameFault + 1 : 1;
          lastFault = key;
          const what = `KVM_EXIT_MEMORY_FAULT (${r.errno ?? '?'}) at gpa ${hex(f.gpa)} size ${hex(f.size)} flags ${hex(f.flags)}`;
          if (sameFault > 2) {
            return {
              end: 'memory-fault',
              detail: `${what} persists after conversion`,
              errno: r.errno ?? '',
              memoryFault: f,
            };
          }
          const c = this.conversions.convert({ gpa: f.gpa, size: f.size, toPrivate, source: 'memory-fault' });
          if (!c.ok) {
            return {
              end: 'memory-fault',
              detail: `${what}: ${c.reason}`,
              errno: r.errno ?? '',
              memoryFault: f,
            };
          }
          continue;
        }
        if (r.watchdog === true) {
          // The real backend's run watchdog kicked a KVM_RUN that would not return: a guest
          // spinning in the kernel, e.g. a VMCALL that never exits on PVM (host-deviations #2).
          this.countExit(r.exitReasonName);
          return {
            end: 'error',
            detail: 'KVM_RUN did not return before the run watchdog fired (the guest is stuck in the kernel)',
            errno: r.errno ?? '',
            exitReasonName: r.exitReasonName,
          };
        }
        if (r.errno === 'EINTR' && r.exitReason === KVM_EXIT_INTR && this.runStats.intrRetries < 1000) {
          this.runStats.intrRetries++;
          this.countExit(r.exitReasonName);
          continue;
        }
        return {
          end: 'error',
          detail: `KVM_RUN failed with ${r.errno ?? '?'} (exit_reason ${r.exitReasonName})`,
          errno: r.errno ?? '',
          exitReasonName: r.exitReasonName,
        };
      }
      this.countExit(r.exitReasonName);
      lastFault = '';
      switch (r.exitReason) {
        case KVM_EXIT_HLT:
          return { end: 'halt', detail: 'the guest halted', exitReasonName: r.exitReasonName };
        case KVM_EXIT_MMIO: {
          const m = r.mmio;
          if (m === undefined) break;
          if (m.isWrite) this.mmio.write(m.physAddr, m.data.subarray(0, m.len));
          else vcpu.kvmRun.mmio.data.set(this.mmio.read(m.physAddr, m.len).subarray(0, m.len));
          continue;
        }
        case KVM_EXIT_IO: {
          const io = r.io;
          if (io === undefined) break;
          if (io.direction === KVM_EXIT_IO_IN) {
            vcpu.kvmRun.io.data.set(
              this.pio.read(io.port, io.size * io.count).subarray(0, io.size * io.count),
            );
            continue;
          }
          const value = Number(leValue(io.data.subarray(0, io.size)));
          if (io.port === SYNC_PORT) await handlers.sync?.(value);
          else if (io.port === REPORT_PORT) {
            const rbx = vcpu.getRegs().rbx;
            this.guestReports.push({ tag: value, value: `0x${rbx.toString(16)}` });
          } else this.pio.write(io.port, io.data.subarray(0, io.size * io.count));
          continue;
        }
        case KVM_EXIT_HYPERCALL: {
          const h = r.hypercall;
          if (h === undefined) break;
          this.runStats.hypercallExits++;
          vcpu.kvmRun.hypercall.ret = this.hypercall(h.nr, h.args);
          continue;
        }
      }
      return {
        end: 'error',
        detail: `unexpected exit ${r.exitReasonName}${r.internal ? ` (suberror ${r.internal.suberror})` : ''}`,
        exitReasonName: r.exitReasonName,
      };
    }
  }

  /** Serves a hypercall exit; returns the value for RAX (negative KVM errnos as u64). */
  private hypercall(nr: number, args: readonly number[]): number {
    if (nr !== KVM_HC_MAP_GPA_RANGE) return -KVM_ENOSYS;
    const [gpa = 0, npages = 0, attrs = 0] = args;
    const decoded = decodeMapGpaRangeAttrs(attrs);
    const size = npages * PAGE_SIZE;
    if ('error' in decoded || !Number.isSafeInteger(size)) {
      const reason = 'error' in decoded ? decoded.error : `npages ${npages} is too large`;
      this.conversions.refuse({ gpa, size, toPrivate: false, source: 'hypercall' }, reason);
      return -KVM_EINVAL;
    }
    const c = this.conversions.convert({
      gpa,
      size,
      toPrivate: decoded.toPrivate,
      source: 'hypercall',
      alignment: decoded.alignment,
    });
    return c.ok ? 0 : -KVM_EINVAL;
  }

  // ---- teardown ------------------------------------------------------------------------------

  /** Closes the vCPU fd (its reference on the VM goes with it). */
  closeVcpu(): void {
    if (!this.vcpuOpen) return;
    this.vcpuOpen = false;
    this.vcpu.close();
  }

  /** Closes the VM fd. The VM may live on (vCPU fds, guest_memfds pinning it). */
  closeVm(): void {
    if (!this.vmOpen) return;
    this.vmOpen = false;
    this.vm.close();
  }

  get isVmOpen(): boolean {
    return this.vmOpen;
  }

  /** Unmaps and closes one backing of a region (the memslot stays). */
  closeBacking(name: RegionName, side: 'shared' | 'private'): void {
    const r = this.region(name);
    const b = side === 'shared' ? r.shared : r.private;
    if (b === null) throw new MachineError(`${name} RAM has no private backing`);
    if (b.hva !== 0) {
      this.host.munmap(b.hva, b.size);
      b.hva = 0;
    }
    if (b.fd >= 0) {
      this.host.close(b.fd);
      b.fd = -1;
    }
  }

  /** Releases everything still open, in the kernel objects' order. Idempotent. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    const errors: unknown[] = [];
    const attempt = (f: () => void): void => {
      try {
        f();
      } catch (e) {
        if (!(e instanceof KvmError && e.code === 'EBADF')) errors.push(e);
      }
    };
    attempt(() => this.closeVcpu());
    attempt(() => this.holes?.dispose());
    for (const r of [...this.regions].reverse()) {
      if (this.vmOpen) {
        attempt(() =>
          this.vm.setUserMemoryRegion2({
            slot: r.slot,
            flags: 0,
            guestPhysAddr: r.range.gpa,
            memorySize: 0,
            userspaceAddr: 0,
          }),
        );
      }
      attempt(() => this.closeBacking(r.name, 'shared'));
      if (r.private !== null) attempt(() => this.closeBacking(r.name, 'private'));
    }
    attempt(() => this.closeVm());
    if (errors.length > 0) throw errors[0];
  }
}
