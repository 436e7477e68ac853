/**
 * The guest-physical layout of the VMM's small x86 machine, laid out like a small PC (q35-ish):
 *
 *   [0, lowRamBytes)                 low RAM (slot 0); code at 0x1000, page tables at 0x10000,
 *                                    [0, 1 MiB) is the boot area the guest never converts
 *   [pciHoleStart, 4 GiB)            the 32-bit PCI hole: no RAM
 *     [ecamBase, +buses × 1 MiB)     PCIe ECAM (MMCONFIG): bus << 20 | dev << 15 | fn << 12
 *     0xFEB0_0000                    BAR0 of the serial (a 16550 THR/LSR, memory-mapped)
 *     0xFEB0_1000                    BAR0 of the DMA device
 *   [4 GiB, 4 GiB + highRamBytes)    high RAM (slot 1)
 *
 * Everything here is plain numbers computed once per machine; nothing touches a backend.
 */

import type { ProgramLayout } from '../core/api.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const PAGE_SIZE = 4096;
export const FOUR_GIB = 4 * GiB;

/** Start of the 32-bit PCI hole (3 GiB, like a q35 machine with ≥ 3 GiB of RAM). */
export const DEFAULT_PCI_HOLE_START = 0xc000_0000;
/** PCIe ECAM base (inside the PCI hole). */
export const DEFAULT_ECAM_BASE = 0xe000_0000;
/** Bytes of ECAM per bus: 32 devices × 8 functions × 4 KiB. */
export const ECAM_BUS_BYTES = MiB;
/** Memory-mapped device registers (BAR0 of each PCI function), one page each. */
export const SERIAL_MMIO_BASE = 0xfeb0_0000;
export const DMA_MMIO_BASE = 0xfeb0_1000;
export const DEVICE_MMIO_BYTES = PAGE_SIZE;

/** Where guest programs and their page tables live (inside the boot area). */
export const CODE_GPA = 0x1000;
export const PAGE_TABLE_GPA = 0x10000;
/** A page of the boot area for the guest's own scratch values (hypercall results, …). */
export const GUEST_SCRATCH_GPA = 0x80000;
/** Bytes at the bottom of low RAM the guest keeps shared: code, page tables, scratch. */
export const BOOT_AREA_BYTES = MiB;

export const PROGRAM_LAYOUT: ProgramLayout = { codeGpa: CODE_GPA, pageTableGpa: PAGE_TABLE_GPA };

/** A half-open guest-physical range [gpa, gpa + size). */
export interface GpaRange {
  readonly gpa: number;
  readonly size: number;
}

/** The addresses of one machine. */
export interface MachineLayout {
  readonly lowRam: GpaRange;
  /** Empty (size 0) when the machine has no high RAM. */
  readonly highRam: GpaRange;
  readonly pciHole: GpaRange;
  readonly ecam: GpaRange;
  readonly ecamBuses: number;
  readonly serialMmio: GpaRange;
  readonly dmaMmio: GpaRange;
  /** Low RAM above the boot area: what a guest may accept as private. */
  readonly lowData: GpaRange;
  readonly scratchGpa: number;
  readonly program: ProgramLayout;
}

export interface LayoutOptions {
  readonly lowRamBytes: number;
  readonly highRamBytes: number;
  readonly pciHoleStart?: number;
  readonly ecamBase?: number;
  /** Buses covered by ECAM: 1..256 (default 256 = 256 MiB of config space). */
  readonly ecamBuses?: number;
}

export class LayoutError extends Error {
  override readonly name = 'LayoutError';
}

function pageAligned(n: number): boolean {
  return Number.isSafeInteger(n) && n >= 0 && n % PAGE_SIZE === 0;
}

const hex = (n: number): string => `0x${n.toString(16)}`;

/** Computes and checks a machine's layout; throws `LayoutError` naming the offending value. */
export function computeLayout(o: LayoutOptions): MachineLayout {
  const pciHoleStart = o.pciHoleStart ?? DEFAULT_PCI_HOLE_START;
  const ecamBase = o.ecamBase ?? DEFAULT_ECAM_BASE;
  const ecamBuses = o.ecamBuses ?? 256;
  if (!pageAligned(o.lowRamBytes) || o.lowRamBytes < 2 * MiB) {
    throw new LayoutError(`lowRamBytes ${o.lowRamBytes} is not a multiple of 4096 of at least 2 MiB`);
  }
  if (!pageAligned(o.highRamBytes)) {
    throw new LayoutError(`highRamBytes ${o.highRamBytes} is not a multiple of 4096`);
  }
  if (!pageAligned(pciHoleStart) || o.lowRamBytes > pciHoleStart) {
    throw new LayoutError(
      `lowRamBytes ${hex(o.lowRamBytes)} reaches into the PCI hole starting at ${hex(pciHoleStart)}`,
    );
  }
  if (!Number.isInteger(ecamBuses) || ecamBuses < 1 || ecamBuses > 256) {
    throw new LayoutError(`ecamBuses ${ecamBuses} is not in [1, 256]`);
  }
  const ecamSize = ecamBuses * ECAM_BUS_BYTES;
  if (!Number.isSafeInteger(ecamBase) || ecamBase % ecamSize !== 0) {
    throw new LayoutError(`ecamBase ${hex(ecamBase)} is not aligned to the ECAM size ${hex(ecamSize)}`);
  }
  if (ecamBase < pciHoleStart || ecamBase + ecamSize > SERIAL_MMIO_BASE) {
    throw new LayoutError(
      `ECAM [${hex(ecamBase)}, ${hex(ecamBase + ecamSize)}) is not inside the PCI hole below the device BARs`,
    );
  }
  return {
    lowRam: { gpa: 0, size: o.lowRamBytes },
    highRam: { gpa: FOUR_GIB, size: o.highRamBytes },
    pciHole: { gpa: pciHoleStart, size: FOUR_GIB - pciHoleStart },
    ecam: { gpa: ecamBase, size: ecamSize },
    ecamBuses,
    serialMmio: { gpa: SERIAL_MMIO_BASE, size: DEVICE_MMIO_BYTES },
    dmaMmio: { gpa: DMA_MMIO_BASE, size: DEVICE_MMIO_BYTES },
    lowData: { gpa: BOOT_AREA_BYTES, size: o.lowRamBytes - BOOT_AREA_BYTES },
    scratchGpa: GUEST_SCRATCH_GPA,
    program: PROGRAM_LAYOUT,
  };
}

/** ECAM offset of a PCI function (bus, device, function). */
export function ecamOffset(bus: number, dev: number, fn: number): number {
  return bus * ECAM_BUS_BYTES + dev * 0x8000 + fn * PAGE_SIZE;
}

/** "bb:dd.f" for a PCI function. */
export function bdfName(bus: number, dev: number, fn: number): string {
  const h2 = (n: number): string => n.toString(16).padStart(2, '0');
  return `${h2(bus)}:${h2(dev)}.${fn}`;
}

/** Whether [a.gpa, a.gpa + a.size) lies entirely inside b. */
export function rangeWithin(a: GpaRange, b: GpaRange): boolean {
  return a.gpa >= b.gpa && a.gpa + a.size <= b.gpa + b.size;
}

/** Whether two ranges share at least one byte. */
export function rangesOverlap(a: GpaRange, b: GpaRange): boolean {
  return a.gpa < b.gpa + b.size && b.gpa < a.gpa + a.size;
}
