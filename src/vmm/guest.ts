/**
 * `GuestBuilder`: the guest-program builder of core/vcpu/program.ts with the machine's devices
 * and hypercalls as one-line helpers. Everything compiles to the same small instruction set, so
 * a scenario's guest runs on the model's interpreter and as x86-64 on /dev/kvm alike.
 *
 * Register use: helpers clobber r12..r15 (r15 receives hypercall results); `pciScan` also uses
 * r8..r11. Guest programs that keep values across helpers should use r8..r11 outside scans.
 */

import { KVM_HC_MAP_GPA_RANGE, KVM_MAP_GPA_RANGE_ENCRYPTED } from '../core/uapi.js';
import { ProgramBuilder, type Reg } from '../core/vcpu/program.js';
import { DMA_CMD_START, DMA_REG, SERIAL_THR } from './devices.js';
import { ecamOffset, type MachineLayout, PAGE_SIZE } from './layout.js';

/** Page-size hint of KVM_HC_MAP_GPA_RANGE (attrs bits 0..3). */
export type MapPageSize = '4k' | '2m' | '1g';
const PAGE_SZ: Record<MapPageSize, number> = { '4k': 0, '2m': 1, '1g': 2 };

/** -KVM_EINVAL as the u64 the guest receives in RAX. */
export const HC_EINVAL_U64 = 2n ** 64n - 22n;

export class GuestBuilder extends ProgramBuilder {
  constructor(readonly layout: MachineLayout) {
    super();
  }

  /** Writes `text` (UTF-8) to the serial, one byte per MMIO write. */
  print(text: string): this {
    for (const byte of new TextEncoder().encode(text)) {
      this.storeImm(1, this.layout.serialMmio.gpa + SERIAL_THR, byte);
    }
    return this;
  }

  /**
   * KVM_HC_MAP_GPA_RANGE for [gpa, gpa + size): to private (ENCRYPTED) or shared. The result
   * (0, or -KVM_EINVAL as a u64) lands in `ret` (default r15).
   */
  mapGpaRange(
    gpa: number,
    size: number,
    to: 'private' | 'shared',
    opts: { readonly pageSize?: MapPageSize; readonly ret?: Reg } = {},
  ): this {
    const attrs = PAGE_SZ[opts.pageSize ?? '4k'] + (to === 'private' ? KVM_MAP_GPA_RANGE_ENCRYPTED : 0);
    return this.hypercall(
      KVM_HC_MAP_GPA_RANGE,
      [gpa, Math.floor(size / PAGE_SIZE), attrs],
      opts.ret ?? 'r15',
    );
  }

  /**
   * Checks a 64-bit register against `expect` by storing it to the guest scratch page and
   * comparing: a mismatch reports `tag` (OUT to the report port, the value in rbx).
   */
  expectReg(reg: Reg, expect: bigint | number, tag: number): this {
    return this.store(8, this.layout.scratchGpa, reg).cmp(8, this.layout.scratchGpa, expect, tag);
  }

  /** mapGpaRange, then a check that the VMM answered `expect` (0 or HC_EINVAL_U64). */
  convertExpect(
    gpa: number,
    size: number,
    to: 'private' | 'shared',
    expect: bigint | number,
    tag: number,
    pageSize: MapPageSize = '4k',
  ): this {
    return this.mapGpaRange(gpa, size, to, { pageSize, ret: 'r15' }).expectReg('r15', expect, tag);
  }

  /** Programs the DMA device: copy `len` bytes of its payload to `dst`, and start. */
  dma(dst: number, len: number): this {
    const base = this.layout.dmaMmio.gpa;
    return this.mov('r14', dst)
      .store(8, base + DMA_REG.DST, 'r14')
      .storeImm(4, base + DMA_REG.LEN, len)
      .storeImm(4, base + DMA_REG.CMD, DMA_CMD_START);
  }

  /** Checks the DMA device's STATUS register (1 done, 2 error); reports `tag` otherwise. */
  expectDmaStatus(status: number, tag: number): this {
    return this.cmp(4, this.layout.dmaMmio.gpa + DMA_REG.STATUS, status, tag);
  }

  /**
   * Reads the first config dword (device << 16 | vendor) of every function of buses
   * [0, buses) through ECAM and stores them, 4 bytes each, at `out` (bus, device, function
   * order: 256 × 4 bytes per bus). Uses r8..r11.
   */
  pciScan(out: number, buses: number): this {
    const functions = buses * 32 * 8;
    return this.mov('r9', this.layout.ecam.gpa + ecamOffset(0, 0, 0))
      .mov('r10', out)
      .loop('r8', functions, (b) =>
        b
          .load(4, 'r11', { base: 'r9', disp: 0 })
          .store(4, { base: 'r10', disp: 0 }, 'r11')
          .add('r9', PAGE_SIZE)
          .add('r10', 4),
      );
  }
}
