/**
 * Helpers the shipped scenarios share: what a PCI scan must find, and reading tables and dirty
 * bitmaps back from guest memory.
 */

import { leValue } from '../bus.js';
import { type PciFunctionDef, pciIdDword } from '../devices.js';
import type { Machine } from '../machine.js';

/** The dwords a scan of `buses` buses must find, in scan order (absent functions: all-ones). */
export function expectedScanTable(functions: readonly PciFunctionDef[], buses: number): number[] {
  const table: number[] = new Array(buses * 256).fill(0xffffffff);
  for (const f of functions) {
    if (f.bus < buses) table[f.bus * 256 + f.dev * 8 + f.fn] = pciIdDword(f);
  }
  return table;
}

/** `count` little-endian u32s at `gpa`, read through the shared mapping. */
export function readU32s(m: Machine, gpa: number, count: number): number[] {
  const bytes = m.readShared(gpa, count * 4);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return Array.from({ length: count }, (_, i) => dv.getUint32(4 * i, true));
}

/** Where two tables differ (at most `max` entries), as "index: found, expected". */
export function tableDiff(found: readonly number[], expected: readonly number[], max = 4): string[] {
  const out: string[] = [];
  for (let i = 0; i < Math.max(found.length, expected.length) && out.length < max; i++) {
    if (found[i] !== expected[i]) {
      out.push(
        `#${i}: found 0x${(found[i] ?? 0).toString(16)}, expected 0x${(expected[i] ?? 0).toString(16)}`,
      );
    }
  }
  return out;
}

/** The page indices whose bits are set in a KVM dirty bitmap (bit i of byte i/8, LSB first). */
export function dirtyPages(bitmap: Uint8Array): number[] {
  const out: number[] = [];
  bitmap.forEach((byte, i) => {
    for (let b = 0; b < 8; b++) if ((byte >> b) & 1) out.push(i * 8 + b);
  });
  return out;
}

/** The u64 (as bigint) of the first 8 bytes of `bytes` at `offset`, little-endian. */
export function u64At(bytes: Uint8Array, offset: number): bigint {
  return leValue(bytes.subarray(offset, offset + 8));
}

/** A small, stable digest of a u32 table (for comparing runs in reports). */
export function tableDigest(table: readonly number[]): string {
  let h = 0x811c9dc5;
  for (const v of table) {
    for (let s = 0; s < 32; s += 8) h = Math.imul(h ^ ((v >>> s) & 0xff), 0x01000193) >>> 0;
  }
  return `fnv1a:${h.toString(16).padStart(8, '0')}`;
}
