/**
 * The machine's devices, as small as they can be while still exercising the memory paths:
 *
 * - `SerialDevice`: the transmit side of a 16550 UART, memory-mapped at its PCI BAR0 (THR at +0,
 *   LSR at +5 always "transmitter empty"). Guest output is collected as text. It is
 *   memory-mapped rather than at COM1's ports because guest programs (core/vcpu/program.ts) can
 *   only emit port I/O to the sync and report ports; every byte is one MMIO exit.
 * - `PciConfigSpace`: PCIe ECAM (MMCONFIG) config space. Present functions answer with their
 *   header; absent functions read all-ones, the "no device" value of the PCI spec. Only the ECAM
 *   pages of present functions ever reach this device when the holes are served in the kernel.
 * - `DmaDevice`: copies its payload into guest memory at a guest-supplied address, through the
 *   host mapping of shared RAM (the bounce buffer of a confidential guest). It caches its
 *   gpa → hva translations, as vhost and VFIO do, and registers with the RamDiscardManager so it
 *   drops them when its buffer goes private; a DMA to private memory is refused (an IOMMU fault).
 */

import type { Host } from '../core/api.js';
import { type BusDevice, leValue } from './bus.js';
import { bdfName, ecamOffset, type GpaRange, PAGE_SIZE } from './layout.js';
import type { RamDiscardListener } from './ram.js';

const hex = (n: number): string => `0x${n.toString(16)}`;

// ---- serial ---------------------------------------------------------------------------------

export const SERIAL_THR = 0;
export const SERIAL_LSR = 5;
/** LSR: THR empty | transmitter empty. */
const LSR_IDLE = 0x60;
const MAX_SERIAL_BYTES = 1 << 20;

export class SerialDevice implements BusDevice {
  readonly name = 'serial';
  private readonly bytes: number[] = [];
  readonly stats = { bytes: 0, dropped: 0 };

  read(offset: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    if (offset === SERIAL_LSR) out[0] = LSR_IDLE;
    return out;
  }

  write(offset: number, data: Uint8Array): void {
    if (offset !== SERIAL_THR) return;
    this.stats.bytes++;
    if (this.bytes.length < MAX_SERIAL_BYTES) this.bytes.push(data[0] ?? 0);
    else this.stats.dropped++;
  }

  /** What the guest wrote, decoded as UTF-8. */
  get text(): string {
    return new TextDecoder().decode(new Uint8Array(this.bytes));
  }
}

// ---- PCI config space -----------------------------------------------------------------------

/** A PCI function this machine has. */
export interface PciFunctionDef {
  readonly name: string;
  readonly bus: number;
  readonly dev: number;
  readonly fn: number;
  readonly vendorId: number;
  readonly deviceId: number;
  /** 24-bit class code: class << 16 | subclass << 8 | prog-if. */
  readonly classCode: number;
  /** A 32-bit memory BAR0, if any. */
  readonly bar0?: GpaRange;
}

/** The default devices: real ids of the QEMU devices they stand for. */
export function defaultPciFunctions(serial: GpaRange, dma: GpaRange): PciFunctionDef[] {
  return [
    // Intel 82G33/G31/P35/P31 DRAM controller: q35's host bridge.
    { name: 'host-bridge', bus: 0, dev: 0, fn: 0, vendorId: 0x8086, deviceId: 0x29c0, classCode: 0x060000 },
    // Red Hat, QEMU PCI 16550A adapter (pci-serial).
    {
      name: 'serial',
      bus: 0,
      dev: 1,
      fn: 0,
      vendorId: 0x1b36,
      deviceId: 0x0002,
      classCode: 0x070002,
      bar0: serial,
    },
    // Red Hat, QEMU PCI test device (pci-testdev), standing in for a DMA engine.
    {
      name: 'dma',
      bus: 0,
      dev: 2,
      fn: 0,
      vendorId: 0x1b36,
      deviceId: 0x0005,
      classCode: 0x00ff00,
      bar0: dma,
    },
  ];
}

/** The config dword the scan reads at offset 0: device id << 16 | vendor id. */
export function pciIdDword(f: PciFunctionDef): number {
  return f.deviceId * 0x10000 + f.vendorId;
}

const CFG_COMMAND = 0x04;
const CFG_BAR0 = 0x10;

export class PciConfigSpace implements BusDevice {
  readonly name = 'pci-ecam';
  /** ECAM page index → config space (4 KiB). */
  private readonly present = new Map<number, { def: PciFunctionDef; cfg: Uint8Array }>();
  readonly stats = { presentReads: 0, absentReads: 0, presentWrites: 0, absentWrites: 0 };

  constructor(
    readonly functions: readonly PciFunctionDef[],
    readonly buses: number,
  ) {
    for (const f of functions) {
      if (f.bus >= buses || f.dev > 31 || f.fn > 7) {
        throw new RangeError(`PCI function ${f.name} at ${bdfName(f.bus, f.dev, f.fn)} is outside ECAM`);
      }
      const cfg = new Uint8Array(PAGE_SIZE);
      const dv = new DataView(cfg.buffer);
      dv.setUint16(0x00, f.vendorId, true);
      dv.setUint16(0x02, f.deviceId, true);
      dv.setUint16(CFG_COMMAND, f.bar0 ? 0x0002 : 0, true); // memory space enabled
      dv.setUint8(0x09, f.classCode & 0xff);
      dv.setUint8(0x0a, (f.classCode >> 8) & 0xff);
      dv.setUint8(0x0b, (f.classCode >> 16) & 0xff);
      dv.setUint8(0x0e, 0x00); // header type 0, single function
      if (f.bar0) dv.setUint32(CFG_BAR0, f.bar0.gpa >>> 0, true);
      this.present.set(ecamOffset(f.bus, f.dev, f.fn) / PAGE_SIZE, { def: f, cfg });
    }
  }

  /** ECAM byte ranges (relative to the ECAM base) of the present functions, in order. */
  presentPages(): GpaRange[] {
    return [...this.present.keys()]
      .sort((a, b) => a - b)
      .map((p) => ({ gpa: p * PAGE_SIZE, size: PAGE_SIZE }));
  }

  /** The function at ECAM offset `offset`, if present. */
  functionAt(offset: number): PciFunctionDef | null {
    return this.present.get(Math.floor(offset / PAGE_SIZE))?.def ?? null;
  }

  read(offset: number, len: number): Uint8Array {
    const f = this.present.get(Math.floor(offset / PAGE_SIZE));
    if (f === undefined) {
      this.stats.absentReads++;
      return new Uint8Array(len).fill(0xff);
    }
    this.stats.presentReads++;
    const reg = offset % PAGE_SIZE;
    return f.cfg.slice(reg, Math.min(reg + len, PAGE_SIZE));
  }

  write(offset: number, data: Uint8Array): void {
    const f = this.present.get(Math.floor(offset / PAGE_SIZE));
    if (f === undefined) {
      this.stats.absentWrites++;
      return;
    }
    this.stats.presentWrites++;
    const reg = offset % PAGE_SIZE;
    const dv = new DataView(f.cfg.buffer);
    if (reg === CFG_COMMAND && data.length >= 2) {
      dv.setUint16(CFG_COMMAND, Number(leValue(data.subarray(0, 2))), true);
    } else if (reg === CFG_BAR0 && data.length >= 4 && f.def.bar0) {
      // BAR sizing: the writable bits are those above the BAR's size.
      const mask = (~(f.def.bar0.size - 1) >>> 0) & 0xfffffff0;
      dv.setUint32(CFG_BAR0, (Number(leValue(data.subarray(0, 4))) & mask) >>> 0, true);
    }
    // Everything else in the header is read-only here.
  }
}

// ---- DMA ------------------------------------------------------------------------------------

/** Register offsets in the DMA device's BAR0. */
export const DMA_REG = {
  /** u64: guest physical destination. */
  DST: 0x00,
  /** u32: bytes to copy (≤ payload length). */
  LEN: 0x08,
  /** u32: write 1 to start the copy (synchronous). */
  CMD: 0x0c,
  /** u32: 0 idle, 1 done, 2 error. */
  STATUS: 0x10,
  /** u32: transfers completed. */
  DONE: 0x14,
  /** u32: transfers refused. */
  ERRORS: 0x18,
} as const;
export const DMA_CMD_START = 1;
export const DMA_STATUS_IDLE = 0;
export const DMA_STATUS_DONE = 1;
export const DMA_STATUS_ERROR = 2;

/** How the DMA device reaches guest memory: the machine's shared-RAM translation. */
export interface DmaMemory {
  readonly host: Host;
  /** hva of the shared page at `gpa` (page-aligned), or why it cannot be used for DMA. */
  translate(gpa: number): number | { readonly error: string };
}

/** The default payload: 4 KiB of a recognisable pattern (byte i = (7i + 0x31) mod 256). */
export function defaultDmaPayload(bytes = PAGE_SIZE): Uint8Array {
  const p = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i++) p[i] = (7 * i + 0x31) & 0xff;
  return p;
}

export class DmaDevice implements BusDevice, RamDiscardListener {
  readonly name = 'dma';
  private readonly regs = new Uint8Array(0x20);
  private readonly regsDv = new DataView(this.regs.buffer);
  /** gfn → hva: the cached mappings (vhost's memory table / the IOMMU's entries). */
  private readonly mappings = new Map<number, number>();
  payload: Uint8Array = defaultDmaPayload();
  readonly stats = {
    transfers: 0,
    refused: 0,
    bytesWritten: 0,
    mappingsCreated: 0,
    mappingsDropped: 0,
    discardCalls: 0,
    populateCalls: 0,
  };
  /** Why the last transfer was refused. */
  lastError = '';

  constructor(private readonly mem: DmaMemory) {}

  /** Number of cached gfn → hva mappings. */
  get cachedMappings(): number {
    return this.mappings.size;
  }

  read(offset: number, len: number): Uint8Array {
    if (offset < 0 || offset + len > this.regs.length) return new Uint8Array(len);
    return this.regs.slice(offset, offset + len);
  }

  write(offset: number, data: Uint8Array): void {
    if (offset < 0 || offset + data.length > this.regs.length) return;
    if (offset === DMA_REG.CMD) {
      if ((data[0] ?? 0) === DMA_CMD_START) this.start();
      return;
    }
    if (offset >= DMA_REG.STATUS) return; // read-only
    this.regs.set(data, offset);
  }

  /** Runs one transfer: payload → guest [DST, DST + LEN), all or nothing. */
  private start(): void {
    const dst = Number(this.regsDv.getBigUint64(DMA_REG.DST, true));
    const len = this.regsDv.getUint32(DMA_REG.LEN, true);
    const refuse = (why: string): void => {
      this.lastError = why;
      this.stats.refused++;
      this.regsDv.setUint32(DMA_REG.STATUS, DMA_STATUS_ERROR, true);
      this.regsDv.setUint32(DMA_REG.ERRORS, this.stats.refused, true);
    };
    if (len === 0 || len > this.payload.length) {
      refuse(`length ${len} is not in [1, ${this.payload.length}]`);
      return;
    }
    // Translate every page first (a failed DMA writes nothing).
    const pieces: { hva: number; from: number; n: number }[] = [];
    for (let at = dst; at < dst + len; ) {
      const gfn = Math.floor(at / PAGE_SIZE);
      let hva = this.mappings.get(gfn);
      if (hva === undefined) {
        const t = this.mem.translate(gfn * PAGE_SIZE);
        if (typeof t !== 'number') {
          refuse(`gpa ${hex(at)}: ${t.error}`);
          return;
        }
        hva = t;
        this.mappings.set(gfn, hva);
        this.stats.mappingsCreated++;
      }
      const n = Math.min(dst + len - at, (gfn + 1) * PAGE_SIZE - at);
      pieces.push({ hva: hva + (at - gfn * PAGE_SIZE), from: at - dst, n });
      at += n;
    }
    for (const p of pieces) this.mem.host.writeMemory(p.hva, this.payload.subarray(p.from, p.from + p.n));
    this.stats.transfers++;
    this.stats.bytesWritten += len;
    this.regsDv.setUint32(DMA_REG.STATUS, DMA_STATUS_DONE, true);
    this.regsDv.setUint32(DMA_REG.DONE, this.stats.transfers, true);
  }

  onDiscard(gpa: number, size: number): void {
    this.stats.discardCalls++;
    const first = gpa / PAGE_SIZE;
    const end = first + size / PAGE_SIZE;
    if (this.mappings.size < end - first) {
      for (const gfn of [...this.mappings.keys()]) {
        if (gfn >= first && gfn < end && this.mappings.delete(gfn)) this.stats.mappingsDropped++;
      }
    } else {
      for (let g = first; g < end; g++) if (this.mappings.delete(g)) this.stats.mappingsDropped++;
    }
  }

  onPopulate(_gpa: number, _size: number): void {
    // Mappings are created lazily at the next transfer.
    this.stats.populateCalls++;
  }
}

/** The u32 a guest reads back from a DMA register (for checks). */
export function dmaRegValue(dev: DmaDevice, reg: number): number {
  return Number(leValue(dev.read(reg, 4)));
}
