// Dirty logging on the real kernel (kvm-semantics.md §2.7): guest writes show up in
// KVM_GET_DIRTY_LOG, which clears them without manual protection (DL-3); with
// MANUAL_DIRTY_LOG_PROTECT2 the log stays until KVM_CLEAR_DIRTY_LOG (DL-4, DL-5); a bitmap too
// small for the slot is EFAULT at the kernel's own point in its checks.
import { afterEach, describe, expect, it } from 'vitest';
import {
  KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
  KVM_EXIT_IO,
  KVM_MEM_LOG_DIRTY_PAGES,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  PROT_READ,
  PROT_WRITE,
} from '../core/uapi.js';
import { type ProgramBuilder, program } from '../core/vcpu/program.js';
import { createRealHost, type RealHost, realKvmAvailable } from './index.js';
import { dirtyBitmapBytes } from './kvm_main.js';
import { createOneVcpuGuest, runSkippingIntr } from './kvm_util.js';

const PAGE = 4096;
const MiB = 1024 * 1024;
const SLOT = 1;
const PAGES = 80; // 80 pages: the bitmap is ALIGN(80, 64) / 8 = 16 bytes
const kvm = realKvmAvailable();
const hosts: RealHost[] = [];
afterEach(() => {
  for (const h of hosts.splice(0)) h.dispose();
});

function errOf(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return undefined;
}

function setup() {
  const h = createRealHost();
  hosts.push(h);
  const g = createOneVcpuGuest(h);
  const mem = h.mmap(0, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  g.vm.setUserMemoryRegion({
    slot: SLOT,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: MiB,
    memorySize: PAGES * PAGE,
    userspaceAddr: mem,
  });
  return { ...g, host: h, mem };
}

/** Guest program: store to each page in `pages`, then sync(tag). */
const touch = (b: ProgramBuilder, pages: readonly number[], tag: number): ProgramBuilder => {
  for (const p of pages) b.storeImm(4, MiB + p * PAGE + 8, p + 1);
  return b.sync(tag);
};

function dirtyPages(bitmap: Uint8Array): number[] {
  const out: number[] = [];
  for (let i = 0; i < bitmap.length * 8; i++) if (((bitmap[i >> 3] ?? 0) >> (i & 7)) & 1) out.push(i);
  return out;
}

describe.skipIf(!kvm.ok)(`dirty logging on /dev/kvm${kvm.ok ? '' : ` — skipped: ${kvm.reason}`}`, () => {
  it('DL-1..DL-3: guest writes are logged per page; GET_DIRTY_LOG returns and clears them', () => {
    const { vm, vcpu, host, mem } = setup();
    vcpu.setProgram(program((b) => touch(touch(b, [1, 3, 70], 1), [3], 2)));
    const bitmap = new Uint8Array(dirtyBitmapBytes(PAGES * PAGE));
    expect(bitmap.length).toBe(16);
    vm.getDirtyLog({ slot: SLOT, dirtyBitmap: bitmap }); // start from a clean log
    expect(runSkippingIntr(vcpu).exitReason).toBe(KVM_EXIT_IO);
    vm.getDirtyLog({ slot: SLOT, dirtyBitmap: bitmap });
    expect(dirtyPages(bitmap)).toEqual([1, 3, 70]);
    expect([...host.readMemory(mem + 70 * PAGE + 8, 1)]).toEqual([71]);
    vm.getDirtyLog({ slot: SLOT, dirtyBitmap: bitmap });
    expect(dirtyPages(bitmap)).toEqual([]);
    expect(runSkippingIntr(vcpu).exitReason).toBe(KVM_EXIT_IO);
    vm.getDirtyLog({ slot: SLOT, dirtyBitmap: bitmap });
    expect(dirtyPages(bitmap)).toEqual([3]);
  });

  it('DL-3: ENOENT for a slot without logging, EINVAL for a slot id ≥ 32764, EFAULT for a bitmap too small', () => {
    const { vm } = setup();
    expect(errOf(() => vm.getDirtyLog({ slot: 0, dirtyBitmap: new Uint8Array(64) }))).toMatchObject({
      code: 'ENOENT',
    });
    expect(errOf(() => vm.getDirtyLog({ slot: 32764, dirtyBitmap: new Uint8Array(64) }))).toMatchObject({
      code: 'EINVAL',
    });
    expect(errOf(() => vm.getDirtyLog({ slot: SLOT, dirtyBitmap: new Uint8Array(15) }))).toMatchObject({
      code: 'EFAULT',
      call: 'KVM_GET_DIRTY_LOG',
    });
    // The order holds for a too-small bitmap too: a slot without logging is still ENOENT.
    expect(errOf(() => vm.getDirtyLog({ slot: 0, dirtyBitmap: new Uint8Array(0) }))).toMatchObject({
      code: 'ENOENT',
    });
  });

  it('DL-4/DL-5: with manual protection the log persists until KVM_CLEAR_DIRTY_LOG clears chosen pages', () => {
    const { vm, vcpu } = setup();
    vm.enableCap({ cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, args: [KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE] });
    const bitmap = new Uint8Array(16);
    vm.getDirtyLog({ slot: SLOT, dirtyBitmap: bitmap });
    vm.clearDirtyLog({ slot: SLOT, firstPage: 0, numPages: PAGES, dirtyBitmap: bitmap });
    vcpu.setProgram(program((b) => touch(b, [2, 5, 64], 1)));
    expect(runSkippingIntr(vcpu).exitReason).toBe(KVM_EXIT_IO);
    vm.getDirtyLog({ slot: SLOT, dirtyBitmap: bitmap });
    expect(dirtyPages(bitmap)).toEqual([2, 5, 64]);
    vm.getDirtyLog({ slot: SLOT, dirtyBitmap: bitmap });
    expect(dirtyPages(bitmap)).toEqual([2, 5, 64]);
    const clear = new Uint8Array(16);
    clear[0] = 1 << 5;
    vm.clearDirtyLog({ slot: SLOT, firstPage: 0, numPages: PAGES, dirtyBitmap: clear });
    vm.getDirtyLog({ slot: SLOT, dirtyBitmap: bitmap });
    expect(dirtyPages(bitmap)).toEqual([2, 64]);
    // DL-5: first_page not a multiple of 64 is EINVAL; a bitmap shorter than num_pages needs is EFAULT.
    expect(
      errOf(() => vm.clearDirtyLog({ slot: SLOT, firstPage: 1, numPages: 1, dirtyBitmap: clear })),
    ).toMatchObject({
      code: 'EINVAL',
    });
    expect(
      errOf(() =>
        vm.clearDirtyLog({ slot: SLOT, firstPage: 0, numPages: PAGES, dirtyBitmap: new Uint8Array(8) }),
      ),
    ).toMatchObject({
      code: 'EFAULT',
    });
  });
});
