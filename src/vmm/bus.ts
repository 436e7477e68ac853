/**
 * MMIO and port-I/O dispatch: a sorted table of devices by address range, as every VMM has
 * (QEMU's FlatView dispatch, Firecracker's and crosvm's `Bus`). Each access goes to the device
 * whose range holds its first byte, with the offset inside that range.
 *
 * Reads of addresses no device claims return all-ones. VMMs disagree here (peers.md §6: QEMU,
 * Firecracker and crosvm return 0 for unassigned MMIO, Cloud Hypervisor 0xff, v86 0xff); the
 * only spec-defined "nothing here" value is PCI's all-ones, and this machine's unassigned MMIO is
 * all PCI hole, so all-ones it is. Writes to nothing are dropped. Both are counted.
 */

export interface BusDevice {
  readonly name: string;
  /** Returns `len` bytes (1..8, guest byte order) read at `offset` inside the device's range. */
  read(offset: number, len: number): Uint8Array;
  /** `data` (1..8 bytes, guest byte order) written at `offset` inside the device's range. */
  write(offset: number, data: Uint8Array): void;
}

interface Mapping {
  readonly base: number;
  readonly size: number;
  readonly device: BusDevice;
}

export interface BusStats {
  reads: number;
  writes: number;
  unassignedReads: number;
  unassignedWrites: number;
  /** Accesses per device name. */
  readonly byDevice: Record<string, { reads: number; writes: number }>;
}

const hex = (n: number): string => `0x${n.toString(16)}`;

export class BusError extends Error {
  override readonly name = 'BusError';
}

export class Bus {
  private readonly maps: Mapping[] = [];
  readonly stats: BusStats = { reads: 0, writes: 0, unassignedReads: 0, unassignedWrites: 0, byDevice: {} };

  constructor(readonly name: string) {}

  /** Claims [base, base + size) for `device`; overlapping claims are a VMM bug. */
  map(base: number, size: number, device: BusDevice): void {
    if (!Number.isSafeInteger(base) || !Number.isSafeInteger(size) || base < 0 || size <= 0) {
      throw new BusError(`${this.name}: ${device.name} range ${base}+${size} is not a range`);
    }
    for (const m of this.maps) {
      if (base < m.base + m.size && m.base < base + size) {
        throw new BusError(
          `${this.name}: ${device.name} [${hex(base)}, ${hex(base + size)}) overlaps ${m.device.name}`,
        );
      }
    }
    this.maps.push({ base, size, device });
    this.maps.sort((a, b) => a.base - b.base);
    this.stats.byDevice[device.name] ??= { reads: 0, writes: 0 };
  }

  /** The device at `addr` and the offset inside it, or null. Binary search. */
  find(addr: number): { device: BusDevice; offset: number } | null {
    let lo = 0;
    let hi = this.maps.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const m = this.maps[mid] as Mapping;
      if (addr < m.base) hi = mid - 1;
      else if (addr >= m.base + m.size) lo = mid + 1;
      else return { device: m.device, offset: addr - m.base };
    }
    return null;
  }

  read(addr: number, len: number): Uint8Array {
    this.stats.reads++;
    const hit = this.find(addr);
    if (hit === null) {
      this.stats.unassignedReads++;
      return new Uint8Array(len).fill(0xff);
    }
    (this.stats.byDevice[hit.device.name] as { reads: number }).reads++;
    return hit.device.read(hit.offset, len);
  }

  write(addr: number, data: Uint8Array): void {
    this.stats.writes++;
    const hit = this.find(addr);
    if (hit === null) {
      this.stats.unassignedWrites++;
      return;
    }
    (this.stats.byDevice[hit.device.name] as { writes: number }).writes++;
    hit.device.write(hit.offset, data);
  }

  /** The devices in address order (for the memory map). */
  devices(): { name: string; base: number; size: number }[] {
    return this.maps.map((m) => ({ name: m.device.name, base: m.base, size: m.size }));
  }
}

/** Little-endian bytes of the low `len` bytes of `value`. */
export function leBytes(value: number | bigint, len: number): Uint8Array {
  const out = new Uint8Array(len);
  let v = BigInt.asUintN(64, BigInt(value));
  for (let i = 0; i < len; i++) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

/** The little-endian value of `bytes` (up to 8). */
export function leValue(bytes: Uint8Array): bigint {
  let v = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[i] as number);
  return v;
}
