/**
 * The numeric ABI: KVM's uAPI (include/uapi/linux/kvm.h, arch/x86/include/uapi/asm/kvm.h,
 * include/uapi/linux/kvm_para.h) and the host calls a VMM makes around it (mman.h, falloc.h,
 * memfd.h, fcntl.h), with the kernel's names and exact values as listed in
 * `kvm-semantics.md` §1 (computed there from the v7.3-rc7 headers on x86-64).
 *
 * Struct layouts are described once, as field tables with byte offsets; `encodeStruct` and
 * `decodeStruct` turn them into bytes for the real-kernel binding, and tests pin every offset
 * and size against §1.2.
 *
 * Extensions that upstream does not have (seed 004's ALLONES, seeds 000/001's memfd-paired
 * private slots) are listed in `EXTENSIONS` at the bottom, on bits and numbers upstream has
 * never used.
 */

// ---------------------------------------------------------------------------------------------
// ioctl numbers (KVMIO = 0xAE). _IOC(dir, type, nr, size) = dir<<30 | size<<16 | type<<8 | nr.

export const KVMIO = 0xae;
const IOC_NONE = 0;
const IOC_WRITE = 1;
const IOC_READ = 2;
/** _IOC as the kernel computes it; the result is a non-negative number below 2^32. */
export function ioc(dir: number, type: number, nr: number, size: number): number {
  return dir * 2 ** 30 + size * 2 ** 16 + type * 2 ** 8 + nr;
}
export const _IO = (nr: number): number => ioc(IOC_NONE, KVMIO, nr, 0);
export const _IOR = (nr: number, size: number): number => ioc(IOC_READ, KVMIO, nr, size);
export const _IOW = (nr: number, size: number): number => ioc(IOC_WRITE, KVMIO, nr, size);
export const _IOWR = (nr: number, size: number): number => ioc(IOC_READ | IOC_WRITE, KVMIO, nr, size);

export const KVM_GET_API_VERSION = 0x0000ae00;
export const KVM_CREATE_VM = 0x0000ae01;
export const KVM_CHECK_EXTENSION = 0x0000ae03;
export const KVM_GET_VCPU_MMAP_SIZE = 0x0000ae04;
export const KVM_CREATE_VCPU = 0x0000ae41;
export const KVM_GET_DIRTY_LOG = 0x4010ae42;
export const KVM_SET_USER_MEMORY_REGION = 0x4020ae46;
export const KVM_SET_TSS_ADDR = 0x0000ae47;
export const KVM_SET_USER_MEMORY_REGION2 = 0x40a0ae49;
export const KVM_RUN = 0x0000ae80;
export const KVM_GET_REGS = 0x8090ae81;
export const KVM_SET_REGS = 0x4090ae82;
export const KVM_GET_SREGS = 0x8138ae83;
export const KVM_SET_SREGS = 0x4138ae84;
export const KVM_ENABLE_CAP = 0x4068aea3;
export const KVM_CLEAR_DIRTY_LOG = 0xc018aec0;
export const KVM_RESET_DIRTY_RINGS = 0x0000aec7;
export const KVM_SET_MEMORY_ATTRIBUTES = 0x4020aed2;
export const KVM_CREATE_GUEST_MEMFD = 0xc040aed4;
export const KVM_PRE_FAULT_MEMORY = 0xc040aed5;

export const KVM_API_VERSION = 12;
/** x86: kvm_run page, PIO data page, coalesced-MMIO ring page. */
export const KVM_VCPU_MMAP_SIZE = 3 * 4096;
export const KVM_PIO_PAGE_OFFSET = 1;
export const KVM_COALESCED_MMIO_PAGE_OFFSET = 2;
export const KVM_DIRTY_LOG_PAGE_OFFSET = 64;

// ---------------------------------------------------------------------------------------------
// Memslot flags (§1.3)

export const KVM_MEM_LOG_DIRTY_PAGES = 1 << 0;
export const KVM_MEM_READONLY = 1 << 1;
export const KVM_MEM_GUEST_MEMFD = 1 << 2;
/** KVM-internal memslot flags, never accepted from userspace (any bit ≥ 3 is rejected). */
export const KVM_MEMSLOT_INVALID = 1 << 16;
export const KVM_MEMSLOT_GMEM_ONLY = 1 << 17;

export const KVM_USER_MEM_SLOTS = 32764;
/** SHRT_MAX: slot ids at or above this are rejected by the as_id/id check (MR-9). */
export const KVM_MEM_SLOTS_NUM = 32767;
/** 2^31 − 1 pages (MR-11). */
export const KVM_MEM_MAX_NR_PAGES = 2 ** 31 - 1;
/** Address spaces: 2 with SMM for VMs without private memory, 1 for private-mem VMs (GEN-4). */
export const KVM_MAX_NR_ADDRESS_SPACES = 2;

// guest_memfd flags
export const GUEST_MEMFD_FLAG_MMAP = 1 << 0;
export const GUEST_MEMFD_FLAG_INIT_SHARED = 1 << 1;

// Memory attributes and memory-fault exit flags
export const KVM_MEMORY_ATTRIBUTE_PRIVATE = 1 << 3;
export const KVM_MEMORY_EXIT_FLAG_PRIVATE = 1 << 3;

// ---------------------------------------------------------------------------------------------
// Exit reasons (kvm_run.exit_reason)

export const KVM_EXIT_UNKNOWN = 0;
export const KVM_EXIT_EXCEPTION = 1;
export const KVM_EXIT_IO = 2;
export const KVM_EXIT_HYPERCALL = 3;
export const KVM_EXIT_DEBUG = 4;
export const KVM_EXIT_HLT = 5;
export const KVM_EXIT_MMIO = 6;
export const KVM_EXIT_IRQ_WINDOW_OPEN = 7;
export const KVM_EXIT_SHUTDOWN = 8;
export const KVM_EXIT_FAIL_ENTRY = 9;
export const KVM_EXIT_INTR = 10;
export const KVM_EXIT_INTERNAL_ERROR = 17;
export const KVM_EXIT_DIRTY_RING_FULL = 31;
export const KVM_EXIT_MEMORY_FAULT = 39;
export const KVM_EXIT_TDX = 40;
export const KVM_EXIT_ARM_SEA = 41;
export const KVM_EXIT_ARM_LDST64B = 42;
export const KVM_EXIT_SNP_REQ_CERTS = 43;

/** Exit reason number → kernel name, for reports and traces. */
export const EXIT_REASON_NAMES: Readonly<Record<number, string>> = {
  [KVM_EXIT_UNKNOWN]: 'KVM_EXIT_UNKNOWN',
  [KVM_EXIT_EXCEPTION]: 'KVM_EXIT_EXCEPTION',
  [KVM_EXIT_IO]: 'KVM_EXIT_IO',
  [KVM_EXIT_HYPERCALL]: 'KVM_EXIT_HYPERCALL',
  [KVM_EXIT_DEBUG]: 'KVM_EXIT_DEBUG',
  [KVM_EXIT_HLT]: 'KVM_EXIT_HLT',
  [KVM_EXIT_MMIO]: 'KVM_EXIT_MMIO',
  [KVM_EXIT_IRQ_WINDOW_OPEN]: 'KVM_EXIT_IRQ_WINDOW_OPEN',
  [KVM_EXIT_SHUTDOWN]: 'KVM_EXIT_SHUTDOWN',
  [KVM_EXIT_FAIL_ENTRY]: 'KVM_EXIT_FAIL_ENTRY',
  [KVM_EXIT_INTR]: 'KVM_EXIT_INTR',
  [KVM_EXIT_INTERNAL_ERROR]: 'KVM_EXIT_INTERNAL_ERROR',
  [KVM_EXIT_DIRTY_RING_FULL]: 'KVM_EXIT_DIRTY_RING_FULL',
  [KVM_EXIT_MEMORY_FAULT]: 'KVM_EXIT_MEMORY_FAULT',
  [KVM_EXIT_TDX]: 'KVM_EXIT_TDX',
  [KVM_EXIT_ARM_SEA]: 'KVM_EXIT_ARM_SEA',
  [KVM_EXIT_ARM_LDST64B]: 'KVM_EXIT_ARM_LDST64B',
  [KVM_EXIT_SNP_REQ_CERTS]: 'KVM_EXIT_SNP_REQ_CERTS',
};

export const KVM_EXIT_IO_IN = 0;
export const KVM_EXIT_IO_OUT = 1;

// kvm_run.internal.suberror
export const KVM_INTERNAL_ERROR_EMULATION = 1;
export const KVM_INTERNAL_ERROR_SIMUL_EX = 2;
export const KVM_INTERNAL_ERROR_DELIVERY_EV = 3;
export const KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4;

// ---------------------------------------------------------------------------------------------
// VM types (arch/x86/include/uapi/asm/kvm.h)

export const KVM_X86_DEFAULT_VM = 0;
export const KVM_X86_SW_PROTECTED_VM = 1;
export const KVM_X86_SEV_VM = 2;
export const KVM_X86_SEV_ES_VM = 3;
export const KVM_X86_SNP_VM = 4;
export const KVM_X86_TDX_VM = 5;

// Dirty log
export const KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1 << 0;
export const KVM_DIRTY_LOG_INITIALLY_SET = 1 << 1;
export const KVM_DIRTY_LOG_MANUAL_CAPS = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET;

// Quirks (KVM_CAP_DISABLE_QUIRKS2)
export const KVM_X86_QUIRK_LINT0_REENABLED = 1 << 0;
export const KVM_X86_QUIRK_CD_NW_CLEARED = 1 << 1;
export const KVM_X86_QUIRK_LAPIC_MMIO_HOLE = 1 << 2;
export const KVM_X86_QUIRK_OUT_7E_INC_RIP = 1 << 3;
export const KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT = 1 << 4;
export const KVM_X86_QUIRK_FIX_HYPERCALL_INSN = 1 << 5;
export const KVM_X86_QUIRK_MWAIT_NEVER_UD_FAULTS = 1 << 6;
export const KVM_X86_QUIRK_SLOT_ZAP_ALL = 1 << 7;
export const KVM_X86_QUIRK_STUFF_FEATURE_MSRS = 1 << 8;
export const KVM_X86_QUIRK_IGNORE_GUEST_PAT = 1 << 9;
/** The quirk mask KVM_CAP_DISABLE_QUIRKS2 reports (all x86 quirks of v7.3-rc7's list above). */
export const KVM_X86_VALID_QUIRKS = (1 << 10) - 1;

// Hypercalls (kvm_para.h)
export const KVM_HC_MAP_GPA_RANGE = 12;
export const KVM_MAP_GPA_RANGE_PAGE_SZ_4K = 0;
export const KVM_MAP_GPA_RANGE_PAGE_SZ_2M = 1;
export const KVM_MAP_GPA_RANGE_PAGE_SZ_1G = 2;
export const KVM_MAP_GPA_RANGE_ENCRYPTED = 1 << 4;
export const KVM_MAP_GPA_RANGE_DECRYPTED = 0;
export const KVM_EXIT_HYPERCALL_LONG_MODE = 1 << 0;
/** Returned to the guest in RAX, negated. */
export const KVM_ENOSYS = 1000;
export const KVM_EINVAL = 22;
export const KVM_EPERM = 1;

// ---------------------------------------------------------------------------------------------
// Capabilities (§1.4)

export const KVM_CAP_USER_MEMORY = 3;
export const KVM_CAP_NR_VCPUS = 9;
export const KVM_CAP_NR_MEMSLOTS = 10;
export const KVM_CAP_SYNC_MMU = 16;
export const KVM_CAP_DESTROY_MEMORY_REGION_WORKS = 21;
export const KVM_CAP_JOIN_MEMORY_REGIONS_WORKS = 30;
export const KVM_CAP_MAX_VCPUS = 66;
export const KVM_CAP_READONLY_MEM = 81;
export const KVM_CAP_CHECK_EXTENSION_VM = 105;
export const KVM_CAP_MULTI_ADDRESS_SPACE = 118;
export const KVM_CAP_IMMEDIATE_EXIT = 136;
export const KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168;
export const KVM_CAP_DIRTY_LOG_RING = 192;
export const KVM_CAP_EXIT_HYPERCALL = 201;
export const KVM_CAP_DISABLE_QUIRKS2 = 213;
export const KVM_CAP_USER_MEMORY2 = 231;
export const KVM_CAP_MEMORY_FAULT_INFO = 232;
export const KVM_CAP_MEMORY_ATTRIBUTES = 233;
export const KVM_CAP_GUEST_MEMFD = 234;
export const KVM_CAP_VM_TYPES = 235;
export const KVM_CAP_PRE_FAULT_MEMORY = 236;
export const KVM_CAP_GUEST_MEMFD_FLAGS = 244;

export const CAP_NAMES: Readonly<Record<number, string>> = {
  [KVM_CAP_USER_MEMORY]: 'KVM_CAP_USER_MEMORY',
  [KVM_CAP_NR_VCPUS]: 'KVM_CAP_NR_VCPUS',
  [KVM_CAP_NR_MEMSLOTS]: 'KVM_CAP_NR_MEMSLOTS',
  [KVM_CAP_SYNC_MMU]: 'KVM_CAP_SYNC_MMU',
  [KVM_CAP_DESTROY_MEMORY_REGION_WORKS]: 'KVM_CAP_DESTROY_MEMORY_REGION_WORKS',
  [KVM_CAP_JOIN_MEMORY_REGIONS_WORKS]: 'KVM_CAP_JOIN_MEMORY_REGIONS_WORKS',
  [KVM_CAP_MAX_VCPUS]: 'KVM_CAP_MAX_VCPUS',
  [KVM_CAP_READONLY_MEM]: 'KVM_CAP_READONLY_MEM',
  [KVM_CAP_CHECK_EXTENSION_VM]: 'KVM_CAP_CHECK_EXTENSION_VM',
  [KVM_CAP_MULTI_ADDRESS_SPACE]: 'KVM_CAP_MULTI_ADDRESS_SPACE',
  [KVM_CAP_IMMEDIATE_EXIT]: 'KVM_CAP_IMMEDIATE_EXIT',
  [KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2]: 'KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2',
  [KVM_CAP_DIRTY_LOG_RING]: 'KVM_CAP_DIRTY_LOG_RING',
  [KVM_CAP_EXIT_HYPERCALL]: 'KVM_CAP_EXIT_HYPERCALL',
  [KVM_CAP_DISABLE_QUIRKS2]: 'KVM_CAP_DISABLE_QUIRKS2',
  [KVM_CAP_USER_MEMORY2]: 'KVM_CAP_USER_MEMORY2',
  [KVM_CAP_MEMORY_FAULT_INFO]: 'KVM_CAP_MEMORY_FAULT_INFO',
  [KVM_CAP_MEMORY_ATTRIBUTES]: 'KVM_CAP_MEMORY_ATTRIBUTES',
  [KVM_CAP_GUEST_MEMFD]: 'KVM_CAP_GUEST_MEMFD',
  [KVM_CAP_VM_TYPES]: 'KVM_CAP_VM_TYPES',
  [KVM_CAP_PRE_FAULT_MEMORY]: 'KVM_CAP_PRE_FAULT_MEMORY',
  [KVM_CAP_GUEST_MEMFD_FLAGS]: 'KVM_CAP_GUEST_MEMFD_FLAGS',
};

// ---------------------------------------------------------------------------------------------
// Host-side constants a VMM uses around KVM (asm-generic/mman-common.h, linux/falloc.h,
// linux/memfd.h, asm-generic/fcntl.h) — x86-64 values.

export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const PROT_EXEC = 4;

export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_SHARED_VALIDATE = 0x03;
export const MAP_TYPE = 0x0f;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MAP_POPULATE = 0x8000;
export const MAP_FIXED_NOREPLACE = 0x100000;

export const MADV_NORMAL = 0;
export const MADV_RANDOM = 1;
export const MADV_SEQUENTIAL = 2;
export const MADV_WILLNEED = 3;
export const MADV_DONTNEED = 4;
export const MADV_FREE = 8;
export const MADV_REMOVE = 9;
export const MADV_HUGEPAGE = 14;
export const MADV_NOHUGEPAGE = 15;
export const MADV_POPULATE_READ = 22;
export const MADV_POPULATE_WRITE = 23;
export const MADV_COLLAPSE = 25;
export const MADV_HWPOISON = 100;

export const FALLOC_FL_ALLOCATE_RANGE = 0x00;
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_NO_HIDE_STALE = 0x04;
export const FALLOC_FL_COLLAPSE_RANGE = 0x08;
export const FALLOC_FL_ZERO_RANGE = 0x10;
export const FALLOC_FL_INSERT_RANGE = 0x20;
export const FALLOC_FL_UNSHARE_RANGE = 0x40;
export const FALLOC_FL_WRITE_ZEROES = 0x80;
/** Every mode bit vfs_fallocate knows (fs/open.c FALLOC_FL_SUPPORTED_MASK). */
export const FALLOC_FL_SUPPORTED_MASK =
  FALLOC_FL_KEEP_SIZE |
  FALLOC_FL_PUNCH_HOLE |
  FALLOC_FL_COLLAPSE_RANGE |
  FALLOC_FL_ZERO_RANGE |
  FALLOC_FL_INSERT_RANGE |
  FALLOC_FL_UNSHARE_RANGE |
  FALLOC_FL_WRITE_ZEROES;

export const MFD_CLOEXEC = 0x0001;
export const MFD_ALLOW_SEALING = 0x0002;
export const MFD_HUGETLB = 0x0004;
export const MFD_NOEXEC_SEAL = 0x0008;
export const MFD_EXEC = 0x0010;
export const MFD_HUGE_SHIFT = 26;
export const MFD_HUGE_MASK = 0x3f;
export const MFD_HUGE_2MB = 21 * 2 ** MFD_HUGE_SHIFT;
export const MFD_HUGE_1GB = 30 * 2 ** MFD_HUGE_SHIFT;
/** memfd_create's name limit (NAME_MAX − strlen("memfd:")). */
export const MFD_NAME_MAX_LEN = 249;

export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const O_CLOEXEC = 0o2000000;
export const O_LARGEFILE = 0o100000;

export const S_IFREG = 0o100000;
export const S_IFCHR = 0o020000;

/** fs/inode.c MAX_LFS_FILESIZE on 64-bit: LLONG_MAX (the s_maxbytes of shmem and guest_memfd). */
export const MAX_LFS_FILESIZE = 2 ** 63 - 1;

// ---------------------------------------------------------------------------------------------
// Struct layouts (§1.2). Every struct is little-endian with natural alignment.

export type FieldType = 'u8' | 'u16' | 'u32' | 'u64';
export interface Field {
  readonly name: string;
  readonly offset: number;
  readonly type: FieldType;
  /** Array length for fixed arrays (`pad2[14]`, `args[4]`); absent for scalars. */
  readonly count?: number;
}
export interface StructLayout {
  readonly name: string;
  readonly size: number;
  readonly fields: readonly Field[];
}

export const kvm_userspace_memory_region: StructLayout = {
  name: 'kvm_userspace_memory_region',
  size: 32,
  fields: [
    { name: 'slot', offset: 0, type: 'u32' },
    { name: 'flags', offset: 4, type: 'u32' },
    { name: 'guestPhysAddr', offset: 8, type: 'u64' },
    { name: 'memorySize', offset: 16, type: 'u64' },
    { name: 'userspaceAddr', offset: 24, type: 'u64' },
  ],
};

export const kvm_userspace_memory_region2: StructLayout = {
  name: 'kvm_userspace_memory_region2',
  size: 160,
  fields: [
    ...kvm_userspace_memory_region.fields,
    { name: 'guestMemfdOffset', offset: 32, type: 'u64' },
    { name: 'guestMemfd', offset: 40, type: 'u32' },
    { name: 'pad1', offset: 44, type: 'u32' },
    { name: 'pad2', offset: 48, type: 'u64', count: 14 },
  ],
};

export const kvm_create_guest_memfd: StructLayout = {
  name: 'kvm_create_guest_memfd',
  size: 64,
  fields: [
    { name: 'size', offset: 0, type: 'u64' },
    { name: 'flags', offset: 8, type: 'u64' },
    { name: 'reserved', offset: 16, type: 'u64', count: 6 },
  ],
};

export const kvm_memory_attributes: StructLayout = {
  name: 'kvm_memory_attributes',
  size: 32,
  fields: [
    { name: 'address', offset: 0, type: 'u64' },
    { name: 'size', offset: 8, type: 'u64' },
    { name: 'attributes', offset: 16, type: 'u64' },
    { name: 'flags', offset: 24, type: 'u64' },
  ],
};

export const kvm_pre_fault_memory: StructLayout = {
  name: 'kvm_pre_fault_memory',
  size: 64,
  fields: [
    { name: 'gpa', offset: 0, type: 'u64' },
    { name: 'size', offset: 8, type: 'u64' },
    { name: 'flags', offset: 16, type: 'u64' },
    { name: 'padding', offset: 24, type: 'u64', count: 5 },
  ],
};

export const kvm_dirty_log: StructLayout = {
  name: 'kvm_dirty_log',
  size: 16,
  fields: [
    { name: 'slot', offset: 0, type: 'u32' },
    { name: 'padding1', offset: 4, type: 'u32' },
    { name: 'dirtyBitmap', offset: 8, type: 'u64' },
  ],
};

export const kvm_clear_dirty_log: StructLayout = {
  name: 'kvm_clear_dirty_log',
  size: 24,
  fields: [
    { name: 'slot', offset: 0, type: 'u32' },
    { name: 'numPages', offset: 4, type: 'u32' },
    { name: 'firstPage', offset: 8, type: 'u64' },
    { name: 'dirtyBitmap', offset: 16, type: 'u64' },
  ],
};

export const kvm_enable_cap: StructLayout = {
  name: 'kvm_enable_cap',
  size: 104,
  fields: [
    { name: 'cap', offset: 0, type: 'u32' },
    { name: 'flags', offset: 4, type: 'u32' },
    { name: 'args', offset: 8, type: 'u64', count: 4 },
    { name: 'pad', offset: 40, type: 'u8', count: 64 },
  ],
};

/** The parts of x86 `struct kvm_run` this project reads and writes (size 2352). */
export const KVM_RUN_SIZE = 2352;
export const kvm_run: StructLayout = {
  name: 'kvm_run',
  size: KVM_RUN_SIZE,
  fields: [
    { name: 'requestInterruptWindow', offset: 0, type: 'u8' },
    { name: 'immediateExit', offset: 1, type: 'u8' },
    { name: 'exitReason', offset: 8, type: 'u32' },
    { name: 'readyForInterruptInjection', offset: 12, type: 'u8' },
    { name: 'ifFlag', offset: 13, type: 'u8' },
    { name: 'flags', offset: 14, type: 'u16' },
    { name: 'cr8', offset: 16, type: 'u64' },
    { name: 'apicBase', offset: 24, type: 'u64' },
    { name: 'kvmValidRegs', offset: 288, type: 'u64' },
    { name: 'kvmDirtyRegs', offset: 296, type: 'u64' },
  ],
};
/** Offsets inside kvm_run of the exit-union members (from the start of kvm_run). */
export const KVM_RUN_OFFSETS = {
  exitUnion: 32,
  io: { direction: 32, size: 33, port: 34, count: 36, dataOffset: 40 },
  mmio: { physAddr: 32, data: 40, len: 48, isWrite: 52 },
  hypercall: { nr: 32, args: 40, ret: 88, flags: 96 },
  memoryFault: { flags: 32, gpa: 40, size: 48 },
  internal: { suberror: 32, ndata: 36, data: 40 },
  failEntry: { hardwareEntryFailureReason: 32, cpu: 40 },
} as const;

export const ALL_STRUCTS: readonly StructLayout[] = [
  kvm_userspace_memory_region,
  kvm_userspace_memory_region2,
  kvm_create_guest_memfd,
  kvm_memory_attributes,
  kvm_pre_fault_memory,
  kvm_dirty_log,
  kvm_clear_dirty_log,
  kvm_enable_cap,
];

const FIELD_BYTES: Record<FieldType, number> = { u8: 1, u16: 2, u32: 4, u64: 8 };

/** A struct value: scalars are numbers (or bigints for u64 values above 2^53), arrays are arrays. */
export type StructValue = Record<string, number | bigint | readonly (number | bigint)[]>;

function writeField(dv: DataView, type: FieldType, off: number, v: number | bigint, what: string): void {
  if (type === 'u64') {
    const b = typeof v === 'bigint' ? v : BigInt(v);
    // Negative numbers are two's complement, as C would convert them (e.g. fd -1 in a u64).
    dv.setBigUint64(off, BigInt.asUintN(64, b), true);
    return;
  }
  if (typeof v === 'bigint' || !Number.isInteger(v))
    throw new TypeError(`${what}: ${String(v)} is not an integer`);
  const bits = FIELD_BYTES[type] * 8;
  const u = Number(BigInt.asUintN(bits, BigInt(v)));
  if (type === 'u8') dv.setUint8(off, u);
  else if (type === 'u16') dv.setUint16(off, u, true);
  else dv.setUint32(off, u, true);
}

/** Lay out `value` as the kernel struct `layout`; fields not given are zero. */
export function encodeStruct(layout: StructLayout, value: Readonly<Partial<StructValue>>): Uint8Array {
  const bytes = new Uint8Array(layout.size);
  const dv = new DataView(bytes.buffer);
  for (const f of layout.fields) {
    const v = value[f.name];
    if (v === undefined) continue;
    const what = `${layout.name}.${f.name}`;
    if (f.count === undefined) {
      if (typeof v === 'object') throw new TypeError(`${what} is a scalar`);
      writeField(dv, f.type, f.offset, v, what);
    } else {
      if (typeof v !== 'object') throw new TypeError(`${what} is an array of ${f.count}`);
      if (v.length > f.count) throw new TypeError(`${what} has ${v.length} elements, at most ${f.count}`);
      v.forEach((e, i) => {
        writeField(dv, f.type, f.offset + i * FIELD_BYTES[f.type], e, `${what}[${i}]`);
      });
    }
  }
  return bytes;
}

function readField(dv: DataView, type: FieldType, off: number): number | bigint {
  switch (type) {
    case 'u8':
      return dv.getUint8(off);
    case 'u16':
      return dv.getUint16(off, true);
    case 'u32':
      return dv.getUint32(off, true);
    case 'u64': {
      const v = dv.getBigUint64(off, true);
      return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
    }
  }
}

/** Read the kernel struct `layout` from `bytes`; u64 values above 2^53 come back as bigint. */
export function decodeStruct(layout: StructLayout, bytes: Uint8Array): StructValue {
  if (bytes.byteLength < layout.size) {
    throw new TypeError(`${layout.name} needs ${layout.size} bytes, got ${bytes.byteLength}`);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, layout.size);
  const out: StructValue = {};
  for (const f of layout.fields) {
    if (f.count === undefined) out[f.name] = readField(dv, f.type, f.offset);
    else {
      const arr: (number | bigint)[] = [];
      for (let i = 0; i < f.count; i++) arr.push(readField(dv, f.type, f.offset + i * FIELD_BYTES[f.type]));
      out[f.name] = arr;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Extensions: seed mechanisms upstream never merged (architecture §3). Off unless enabled; with
// them off, every number below is rejected exactly as upstream rejects an unknown flag or cap.
// Bits and numbers are chosen where upstream has nothing: memslot flag bits 3..15 are unused by
// v7.3-rc7 (bit 2 is KVM_MEM_GUEST_MEMFD, bits 16+ are KVM-internal), and capability numbers
// from 0x10000 up are far above upstream's last (244) and the RFC's 183.

/** seed 004: a slot whose reads return 0xff from one shared read-only page. RFC used bit 2. */
export const KVM_MEM_ALLONES = 1 << 8;
/** seeds 000/001: a slot paired with an ordinary memfd for private memory (KVM_MEM_PRIVATE). */
export const KVM_MEM_PRIVATE_MEMFD = 1 << 9;
/** KVM_CHECK_EXTENSION / KVM_ENABLE_CAP number that reports and enables ALLONES. */
export const KVM_CAP_GUESTMEM_ALLONES = 0x10000 + 183;
/** KVM_CHECK_EXTENSION / KVM_ENABLE_CAP number for memfd-paired private slots. */
export const KVM_CAP_GUESTMEM_PRIVATE_MEMFD = 0x10000 + 1;

export const EXTENSIONS = [
  {
    name: 'KVM_MEM_ALLONES',
    seed: '004',
    memslotFlag: KVM_MEM_ALLONES,
    cap: KVM_CAP_GUESTMEM_ALLONES,
    what: 'one read-only page of 0xff shared by every hole slot of every VM',
  },
  {
    name: 'KVM_MEM_PRIVATE_MEMFD',
    seed: '000/001/003',
    memslotFlag: KVM_MEM_PRIVATE_MEMFD,
    cap: KVM_CAP_GUESTMEM_PRIVATE_MEMFD,
    what: 'private memory from an ordinary memfd through memfile_notifier (privateFd/privateOffset)',
  },
] as const;
