/**
 * Model tracepoints: off (no probe, `enabled` false) until a probe attaches, one object per name,
 * and — attached — the model's sites report what happened: a guest page fault with its gfn,
 * level and outcome; the memslot update; an mmu-notifier bracket around a punch with the
 * kvm_mmu_invalidate bracket (and its zap) nested inside.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { expectNoLeaks } from '../../test/helpers.js';
import { vcpuWith, vmWithRam } from '../../test/kvm_helpers.js';
import {
  attachProbe,
  listTracepoints,
  type TraceArgs,
  tpKvmPageFault,
  tpMmuNotifierInvalidateRangeStart,
  tracepoint,
} from './tracepoints.js';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE } from './uapi.js';
import { program } from './vcpu/program.js';

afterEach(expectNoLeaks);

describe('tracepoints', () => {
  it('are one object per name, off until a probe attaches and off again after it detaches', () => {
    expect(tracepoint('kvm_page_fault')).toBe(tpKvmPageFault);
    expect(listTracepoints()).toEqual(
      expect.arrayContaining([
        'kvm_page_fault',
        'kvm_hypercall',
        'kvm_mmu_invalidate_begin',
        'kvm_mmu_invalidate_end',
        'kvm_unmap_gfn_range',
        'kvm_set_user_memory_region',
        'mmu_notifier_invalidate_range_start',
        'mmu_notifier_invalidate_range_end',
        'memfile_notifier_invalidate',
        'memfile_notifier_fallocate',
      ]),
    );
    expect(tpKvmPageFault.enabled).toBe(false);
    const a: string[] = [];
    const b: string[] = [];
    const detachA = attachProbe((name) => a.push(name), ['kvm_page_fault']);
    const detachB = attachProbe((name) => b.push(name), ['kvm_page_fault']);
    tpKvmPageFault.emit({ gpa: 0 });
    detachA();
    expect(tpKvmPageFault.enabled).toBe(true); // B is still attached
    tpKvmPageFault.emit({ gpa: 0 });
    detachB();
    detachB(); // idempotent
    expect(tpKvmPageFault.enabled).toBe(false);
    expect(tpMmuNotifierInvalidateRangeStart.enabled).toBe(false); // never attached
    expect([a, b]).toEqual([['kvm_page_fault'], ['kvm_page_fault', 'kvm_page_fault']]);
  });

  it('the model reports its page faults, memslot updates and invalidation brackets', () => {
    const seen: [string, TraceArgs][] = [];
    const detach = attachProbe((name, args) => seen.push([name, args]));
    try {
      const t = vmWithRam();
      const v = vcpuWith(
        t,
        program((p) => p.storeImm(8, 0x5000, 1)),
      );
      expect(v.run().exitReasonName).toBe('KVM_EXIT_HLT');
      expect(seen.filter(([n]) => n === 'kvm_set_user_memory_region')).toEqual([
        ['kvm_set_user_memory_region', expect.objectContaining({ slot: 0, gpa: 0, size: 4 * 1024 * 1024 })],
      ]);
      const fault = seen.find(([n, a]) => n === 'kvm_page_fault' && a['gfn'] === 5);
      expect(fault?.[1]).toMatchObject({
        vcpuId: 0,
        gpa: 0x5000,
        write: true,
        private: false,
        ret: 'RET_PF_FIXED',
      });
      expect(typeof fault?.[1]['level']).toBe('number');
      // Punching the page out of the memfd: mmu notifier bracket ⊃ KVM invalidation ⊃ zap.
      seen.length = 0;
      t.host.fallocate(t.ramFd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0x5000, 0x1000);
      const names = seen.map(([n]) => n).filter((n) => !n.startsWith('memfile'));
      expect(names).toEqual([
        'mmu_notifier_invalidate_range_start',
        'kvm_mmu_invalidate_begin',
        'kvm_unmap_gfn_range',
        'kvm_mmu_invalidate_end',
        'mmu_notifier_invalidate_range_end',
      ]);
      expect(seen.find(([n]) => n === 'kvm_unmap_gfn_range')?.[1]).toMatchObject({
        start: 5,
        end: 6,
        zapped: 1,
      });
      v.close();
    } finally {
      detach();
    }
  });
});
