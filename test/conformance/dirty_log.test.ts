// Conformance: dirty logging (kvm-semantics §2.7) on every backend — the bitmap layout (DL-1), what
// marks a page dirty (DL-2), KVM_GET_DIRTY_LOG with and without manual protection (DL-3, DL-4),
// KVM_CLEAR_DIRTY_LOG's checks and effect (DL-5), and logging toggled by a FLAGS_ONLY update (MR-24).
import { describe, expect, it } from 'vitest';
import {
  KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
  KVM_DIRTY_LOG_INITIALLY_SET,
  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
  KVM_MEM_LOG_DIRTY_PAGES,
} from '../../src/core/uapi.js';
import { type ProgramBuilder, program, SYNC_PORT } from '../../src/core/vcpu/program.js';
import {
  anon,
  backends,
  backendTitle,
  errnoOf,
  guestVm,
  MiB,
  outOf,
  PAGE,
  runVcpu,
  useHosts,
} from './backends.js';

const SLOT = 1;
const GPA = 2 * MiB;
const PAGES = 80; // ALIGN(80, 64) / 8 = 16 bytes of bitmap (DL-1)
const BITMAP = 16;

/** Guest: store to each page in `pages` (and read `reads`), then sync(tag). */
function touch(
  b: ProgramBuilder,
  pages: readonly number[],
  tag: number,
  reads: readonly number[] = [],
): ProgramBuilder {
  for (const p of reads) b.load(4, 'r15', GPA + p * PAGE);
  for (const p of pages) b.storeImm(4, GPA + p * PAGE + 8, p + 1);
  return b.sync(tag);
}

function dirtyPages(bitmap: Uint8Array): number[] {
  const out: number[] = [];
  for (let i = 0; i < bitmap.length * 8; i++) if (((bitmap[i >> 3] ?? 0) >> (i & 7)) & 1) out.push(i);
  return out;
}

for (const b of backends) {
  describe.skipIf(!b.available.ok)(backendTitle(b, 'dirty logging (§2.7)'), () => {
    const make = useHosts(b);

    function setup(flags = KVM_MEM_LOG_DIRTY_PAGES) {
      const host = make();
      const g = guestVm(host);
      const mem = anon(host, PAGES * PAGE);
      const region = { slot: SLOT, flags, guestPhysAddr: GPA, memorySize: PAGES * PAGE, userspaceAddr: mem };
      g.vm.setUserMemoryRegion(region);
      return { ...g, mem, region };
    }
    const log = (vm: ReturnType<typeof setup>['vm']): number[] => {
      const bitmap = new Uint8Array(BITMAP);
      vm.getDirtyLog({ slot: SLOT, dirtyBitmap: bitmap });
      return dirtyPages(bitmap);
    };

    it('DL-1, DL-2, DL-3: guest writes are logged per page (reads are not); GET_DIRTY_LOG returns and clears them', () => {
      const { vm, vcpu, host, mem } = setup();
      vcpu.setProgram(program((p) => touch(touch(p, [1, 3, 70], 1, [5, 6]), [3], 2).halt()));
      expect(log(vm), 'a fresh log is clean').toEqual([]);
      expect(outOf(runVcpu(vcpu))).toEqual([SYNC_PORT, 1]);
      expect(log(vm)).toEqual([1, 3, 70]);
      expect([...host.readMemory(mem + 70 * PAGE + 8, 1)]).toEqual([71]);
      expect(log(vm), 'DL-3: the read cleared it').toEqual([]);
      host.writeMemory(mem + 9 * PAGE, new Uint8Array([1])); // DL-2: a host write is not a guest write
      expect(outOf(runVcpu(vcpu))).toEqual([SYNC_PORT, 2]);
      expect(log(vm), 'DL-3: write-protected again after the read').toEqual([3]);
    });

    it('DL-3: ENOENT for a slot without logging or without a slot; EINVAL for slot id ≥ 32764; EFAULT for a bitmap too small', () => {
      const { vm } = setup();
      const big = new Uint8Array(64);
      expect(
        errnoOf(() => vm.getDirtyLog({ slot: 0, dirtyBitmap: big })),
        'no logging',
      ).toBe('ENOENT');
      expect(
        errnoOf(() => vm.getDirtyLog({ slot: 7, dirtyBitmap: big })),
        'no slot',
      ).toBe('ENOENT');
      expect(
        errnoOf(() => vm.getDirtyLog({ slot: 32764, dirtyBitmap: big })),
        'slot id',
      ).toBe('EINVAL');
      expect(errnoOf(() => vm.getDirtyLog({ slot: SLOT, dirtyBitmap: new Uint8Array(BITMAP - 1) }))).toBe(
        'EFAULT',
      );
      expect(
        errnoOf(() => vm.getDirtyLog({ slot: 0, dirtyBitmap: new Uint8Array(0) })),
        'ENOENT first',
      ).toBe('ENOENT');
    });

    it('DL-4: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 rejects flags ≠ 0, unknown bits and INITIALLY_SET without ENABLE (EINVAL)', () => {
      const { vm } = setup();
      const cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2;
      expect(
        errnoOf(() => vm.enableCap({ cap, flags: 1, args: [KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE] })),
      ).toBe('EINVAL');
      expect(errnoOf(() => vm.enableCap({ cap, args: [KVM_DIRTY_LOG_INITIALLY_SET] }))).toBe('EINVAL');
      expect(errnoOf(() => vm.enableCap({ cap, args: [4] }))).toBe('EINVAL');
      expect(
        errnoOf(() =>
          vm.enableCap({ cap, args: [KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET] }),
        ),
      ).toBe('OK');
      expect(
        errnoOf(() => vm.enableCap({ cap, args: [0] })),
        '0 disables',
      ).toBe('OK');
    });

    it('DL-4, DL-5: with manual protection the log stays until KVM_CLEAR_DIRTY_LOG clears the chosen pages', () => {
      const { vm, vcpu } = setup();
      vm.enableCap({ cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, args: [KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE] });
      vcpu.setProgram(program((p) => touch(touch(p, [2, 5, 64], 1), [5], 2).halt()));
      expect(outOf(runVcpu(vcpu))).toEqual([SYNC_PORT, 1]);
      expect(log(vm)).toEqual([2, 5, 64]);
      expect(log(vm), 'not cleared by GET').toEqual([2, 5, 64]);
      const clear = new Uint8Array(BITMAP);
      clear[0] = (1 << 5) | (1 << 3); // page 3 was never dirty: ignored
      vm.clearDirtyLog({ slot: SLOT, firstPage: 0, numPages: PAGES, dirtyBitmap: clear });
      expect(log(vm)).toEqual([2, 64]);
      expect(outOf(runVcpu(vcpu))).toEqual([SYNC_PORT, 2]);
      expect(log(vm), 'page 5 re-armed and written again').toEqual([2, 5, 64]);
    });

    it('DL-4: with INITIALLY_SET, a bitmap allocated afterwards starts all-ones', () => {
      const host = make();
      const { vm } = guestVm(host);
      vm.enableCap({
        cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        args: [KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET],
      });
      const mem = anon(host, PAGES * PAGE);
      vm.setUserMemoryRegion({
        slot: SLOT,
        flags: KVM_MEM_LOG_DIRTY_PAGES,
        guestPhysAddr: GPA,
        memorySize: PAGES * PAGE,
        userspaceAddr: mem,
      });
      expect(log(vm)).toEqual([...Array(PAGES).keys()]);
    });

    it('DL-5: first_page % 64 is EINVAL before the slot lookup; ENOENT, range checks (EINVAL) and EFAULT after it', () => {
      const { vm } = setup();
      const bm = new Uint8Array(BITMAP);
      const clear = (slot: number, firstPage: number, numPages: number, dirtyBitmap = bm) =>
        errnoOf(() => vm.clearDirtyLog({ slot, firstPage, numPages, dirtyBitmap }));
      expect(clear(9, 1, 1), 'first_page 1, no slot').toBe('EINVAL');
      expect(clear(9, 0, 1), 'no slot').toBe('ENOENT');
      expect(clear(0, 0, 1), 'slot without logging').toBe('ENOENT');
      expect(clear(32764, 0, 1), 'slot id').toBe('EINVAL');
      expect(clear(SLOT, 128, 1), 'first_page > npages').toBe('EINVAL');
      expect(clear(SLOT, 64, 17), 'num_pages > npages − first_page').toBe('EINVAL');
      expect(clear(SLOT, 0, 10), 'num_pages < rest and % 64 ≠ 0').toBe('EINVAL');
      expect(clear(SLOT, 64, 16), 'the tail').toBe('OK');
      expect(clear(SLOT, 0, 64), 'a multiple of 64').toBe('OK');
      expect(clear(SLOT, 0, PAGES, new Uint8Array(8)), 'bitmap shorter than num_pages').toBe('EFAULT');
    });

    it('MR-24: a FLAGS_ONLY update turns logging on (writes afterwards are logged) and off (ENOENT)', () => {
      const { vm, vcpu, region } = setup(0);
      vcpu.setProgram(program((p) => touch(touch(p, [4], 1), [6, 7], 2).halt()));
      expect(outOf(runVcpu(vcpu))).toEqual([SYNC_PORT, 1]);
      expect(
        errnoOf(() => log(vm)),
        'no logging yet',
      ).toBe('ENOENT');
      vm.setUserMemoryRegion({ ...region, flags: KVM_MEM_LOG_DIRTY_PAGES });
      expect(log(vm), 'earlier writes are not in a new bitmap').toEqual([]);
      expect(outOf(runVcpu(vcpu))).toEqual([SYNC_PORT, 2]);
      expect(log(vm)).toEqual([6, 7]);
      vm.setUserMemoryRegion({ ...region, flags: 0 });
      expect(errnoOf(() => log(vm))).toBe('ENOENT');
    });
  });
}
