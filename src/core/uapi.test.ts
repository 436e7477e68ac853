import { describe, expect, it } from 'vitest';
import * as U from './uapi.js';

describe('uapi: ioctl numbers (kvm-semantics §1.1)', () => {
  it.each([
    ['KVM_GET_DIRTY_LOG', U.KVM_GET_DIRTY_LOG, U._IOW(0x42, 16)],
    ['KVM_SET_USER_MEMORY_REGION', U.KVM_SET_USER_MEMORY_REGION, U._IOW(0x46, 32)],
    ['KVM_SET_USER_MEMORY_REGION2', U.KVM_SET_USER_MEMORY_REGION2, U._IOW(0x49, 160)],
    ['KVM_ENABLE_CAP', U.KVM_ENABLE_CAP, U._IOW(0xa3, 104)],
    ['KVM_CLEAR_DIRTY_LOG', U.KVM_CLEAR_DIRTY_LOG, U._IOWR(0xc0, 24)],
    ['KVM_SET_MEMORY_ATTRIBUTES', U.KVM_SET_MEMORY_ATTRIBUTES, U._IOW(0xd2, 32)],
    ['KVM_CREATE_GUEST_MEMFD', U.KVM_CREATE_GUEST_MEMFD, U._IOWR(0xd4, 64)],
    ['KVM_PRE_FAULT_MEMORY', U.KVM_PRE_FAULT_MEMORY, U._IOWR(0xd5, 64)],
    ['KVM_GET_REGS', U.KVM_GET_REGS, U._IOR(0x81, 144)],
    ['KVM_SET_SREGS', U.KVM_SET_SREGS, U._IOW(0x84, 312)],
    ['KVM_RUN', U.KVM_RUN, U._IO(0x80)],
    ['KVM_CREATE_VM', U.KVM_CREATE_VM, U._IO(0x01)],
  ])('%s = _IOC(...) = 0x%s', (_name, value, computed) => {
    expect(value).toBe(computed);
  });

  it('matches the table of §1.1 exactly', () => {
    expect([
      U.KVM_GET_API_VERSION,
      U.KVM_CREATE_VM,
      U.KVM_CHECK_EXTENSION,
      U.KVM_GET_VCPU_MMAP_SIZE,
      U.KVM_CREATE_VCPU,
      U.KVM_GET_DIRTY_LOG,
      U.KVM_SET_USER_MEMORY_REGION,
      U.KVM_SET_USER_MEMORY_REGION2,
      U.KVM_RUN,
      U.KVM_ENABLE_CAP,
      U.KVM_CLEAR_DIRTY_LOG,
      U.KVM_RESET_DIRTY_RINGS,
      U.KVM_SET_MEMORY_ATTRIBUTES,
      U.KVM_CREATE_GUEST_MEMFD,
      U.KVM_PRE_FAULT_MEMORY,
    ]).toEqual([
      0xae00, 0xae01, 0xae03, 0xae04, 0xae41, 0x4010ae42, 0x4020ae46, 0x40a0ae49, 0xae80, 0x4068aea3,
      0xc018aec0, 0xaec7, 0x4020aed2, 0xc040aed4, 0xc040aed5,
    ]);
  });
});

describe('uapi: struct layouts (§1.2)', () => {
  const offsets = (l: U.StructLayout) => Object.fromEntries(l.fields.map((f) => [f.name, f.offset]));

  it('kvm_userspace_memory_region2: 160 bytes, v1 fields coincide', () => {
    expect(U.kvm_userspace_memory_region.size).toBe(32);
    expect(U.kvm_userspace_memory_region2.size).toBe(160);
    expect(offsets(U.kvm_userspace_memory_region2)).toMatchObject({
      slot: 0,
      flags: 4,
      guestPhysAddr: 8,
      memorySize: 16,
      userspaceAddr: 24,
      guestMemfdOffset: 32,
      guestMemfd: 40,
      pad1: 44,
      pad2: 48,
    });
  });

  it.each([
    [U.kvm_create_guest_memfd, 64, { size: 0, flags: 8, reserved: 16 }],
    [U.kvm_memory_attributes, 32, { address: 0, size: 8, attributes: 16, flags: 24 }],
    [U.kvm_pre_fault_memory, 64, { gpa: 0, size: 8, flags: 16, padding: 24 }],
    [U.kvm_dirty_log, 16, { slot: 0, dirtyBitmap: 8 }],
    [U.kvm_clear_dirty_log, 24, { slot: 0, numPages: 4, firstPage: 8, dirtyBitmap: 16 }],
    [U.kvm_enable_cap, 104, { cap: 0, flags: 4, args: 8, pad: 40 }],
  ])('$name', (layout, size, fields) => {
    expect(layout.size).toBe(size);
    expect(offsets(layout)).toMatchObject(fields);
    // The last field ends exactly at the struct's end (no hidden tail).
    const last = layout.fields[layout.fields.length - 1] as U.Field;
    const width = { u8: 1, u16: 2, u32: 4, u64: 8 }[last.type] * (last.count ?? 1);
    expect(last.offset + width).toBe(size);
  });

  it('kvm_run offsets of the exit union members (§1.2)', () => {
    expect(U.KVM_RUN_SIZE).toBe(2352);
    expect(U.KVM_RUN_OFFSETS.mmio).toEqual({ physAddr: 32, data: 40, len: 48, isWrite: 52 });
    expect(U.KVM_RUN_OFFSETS.hypercall).toEqual({ nr: 32, args: 40, ret: 88, flags: 96 });
    expect(U.KVM_RUN_OFFSETS.memoryFault).toEqual({ flags: 32, gpa: 40, size: 48 });
    expect(offsets(U.kvm_run)).toMatchObject({ immediateExit: 1, exitReason: 8 });
  });

  it('encodes and decodes little-endian, with u32 -1 as 0xffffffff and u64 above 2^53 as bigint', () => {
    const bytes = U.encodeStruct(U.kvm_userspace_memory_region2, {
      slot: 0x10005,
      flags: U.KVM_MEM_GUEST_MEMFD,
      guestPhysAddr: 0xc0000000,
      memorySize: 0x200000,
      userspaceAddr: 0,
      guestMemfdOffset: 2n ** 63n - 4096n,
      guestMemfd: -1,
    });
    expect(bytes.length).toBe(160);
    expect([...bytes.subarray(0, 4)]).toEqual([5, 0, 1, 0]);
    const back = U.decodeStruct(U.kvm_userspace_memory_region2, bytes);
    expect(back).toMatchObject({
      slot: 0x10005,
      flags: 4,
      guestPhysAddr: 0xc0000000,
      memorySize: 0x200000,
      guestMemfdOffset: 2n ** 63n - 4096n,
      guestMemfd: 0xffffffff,
    });
    expect(() => U.encodeStruct(U.kvm_dirty_log, { slot: 1.5 })).toThrow(TypeError);
  });
});

describe('uapi: flags, caps, extensions (§1.3, §1.4, architecture §3)', () => {
  it('has the kernel values', () => {
    expect([U.KVM_MEM_LOG_DIRTY_PAGES, U.KVM_MEM_READONLY, U.KVM_MEM_GUEST_MEMFD]).toEqual([1, 2, 4]);
    expect([U.GUEST_MEMFD_FLAG_MMAP, U.GUEST_MEMFD_FLAG_INIT_SHARED]).toEqual([1, 2]);
    expect([U.KVM_MEMORY_ATTRIBUTE_PRIVATE, U.KVM_MEMORY_EXIT_FLAG_PRIVATE]).toEqual([8, 8]);
    expect([U.KVM_EXIT_IO, U.KVM_EXIT_HYPERCALL, U.KVM_EXIT_MMIO, U.KVM_EXIT_MEMORY_FAULT]).toEqual([
      2, 3, 6, 39,
    ]);
    expect([U.KVM_EXIT_SHUTDOWN, U.KVM_EXIT_INTR, U.KVM_EXIT_INTERNAL_ERROR]).toEqual([8, 10, 17]);
    expect(U.KVM_X86_QUIRK_SLOT_ZAP_ALL).toBe(128);
    expect([U.KVM_CAP_USER_MEMORY2, U.KVM_CAP_GUEST_MEMFD, U.KVM_CAP_GUEST_MEMFD_FLAGS]).toEqual([
      231, 234, 244,
    ]);
    expect(U.KVM_USER_MEM_SLOTS).toBe(32764);
    expect(U.MFD_HUGE_2MB).toBe(21 << 26);
  });

  it('extension flags and caps stay clear of upstream (never bit 2, never cap 183, not internal bits)', () => {
    for (const ext of U.EXTENSIONS) {
      expect(ext.memslotFlag & (U.KVM_MEM_LOG_DIRTY_PAGES | U.KVM_MEM_READONLY | U.KVM_MEM_GUEST_MEMFD)).toBe(
        0,
      );
      expect(ext.memslotFlag).toBeLessThan(U.KVM_MEMSLOT_INVALID);
      expect(ext.cap).not.toBe(183);
      expect(Object.keys(U.CAP_NAMES).map(Number)).not.toContain(ext.cap);
    }
    expect(U.EXTENSIONS[0].memslotFlag).not.toBe(U.EXTENSIONS[1].memslotFlag);
  });
});
