/**
 * The /dev/kvm fd and VM fds of the real kernel (virt/kvm/kvm_main.c `kvm_dev_ioctl`,
 * `kvm_vm_ioctl`; virt/kvm/guest_memfd.c `kvm_gmem_create`), behind the `Kvm` and `Vm` interfaces.
 *
 * Every ioctl goes to the kernel, which decides every errno in its own order; the binding adds
 * only what it must know to keep Node alive and to answer questions the kernel has no ioctl for:
 * - the memslots each VM holds (after each successful KVM_SET_USER_MEMORY_REGION[2], the same
 *   create/move/flags-only/delete transition the kernel made, MR-12..MR-14), for gpa → hva
 *   translation in `setProgram` and so that no hva range a guest can write through is ever
 *   handed back to Node's allocator (see AddressSpace: hidden reservations);
 * - the flags of each guest_memfd it creates (files.ts), so host reads never SIGBUS;
 * - whether each object is still open: an fd number is reused by the next open, so a method on a
 *   closed object throws EBADF instead of reaching whatever file now has that number.
 *
 * The seed extensions (`privateFd`/`privateOffset`, KVM_MEM_PRIVATE_MEMFD, KVM_MEM_ALLONES) do not
 * exist in the real kernel: their struct fields are refused with EINVAL naming the extension, and
 * their flag bits reach the kernel, which rejects them (MR-4). All-ones holes are emulated by the
 * VMM instead (allones.ts).
 */

import type {
  ClearDirtyLog,
  CreateGuestMemfd,
  DirtyLog,
  EnableCap,
  Kvm,
  MemoryAttributes,
  UserspaceMemoryRegion,
  UserspaceMemoryRegion2,
  Vm,
} from '../core/api.js';
import { KvmError } from '../core/errno.js';
import {
  encodeStruct,
  KVM_CHECK_EXTENSION,
  KVM_CLEAR_DIRTY_LOG,
  KVM_CREATE_GUEST_MEMFD,
  KVM_CREATE_VCPU,
  KVM_CREATE_VM,
  KVM_ENABLE_CAP,
  KVM_GET_API_VERSION,
  KVM_GET_DIRTY_LOG,
  KVM_GET_VCPU_MMAP_SIZE,
  KVM_SET_MEMORY_ATTRIBUTES,
  KVM_SET_USER_MEMORY_REGION,
  KVM_SET_USER_MEMORY_REGION2,
  kvm_clear_dirty_log,
  kvm_create_guest_memfd,
  kvm_dirty_log,
  kvm_enable_cap,
  kvm_memory_attributes,
  kvm_userspace_memory_region,
  kvm_userspace_memory_region2,
  MAP_SHARED,
  PROT_READ,
  PROT_WRITE,
} from '../core/uapi.js';
import { PAGE_SIZE } from '../core/units.js';
import type { AddressSpace } from './address_space.js';
import { fileKey, recordGuestMemfd } from './files.js';
import type { Sys } from './sys.js';
import { RealVcpu } from './vcpu.js';

const hex = (n: number): string => `0x${n.toString(16)}`;

/** What the KVM objects need from the host that owns them. Implemented by `RealHost`. */
export interface HostContext {
  readonly sys: Sys;
  readonly space: AddressSpace;
  /** Lowest address Node (or anyone without CAP_SYS_RAWIO) can map: /proc/sys/vm/mmap_min_addr. */
  readonly mmapMinAddr: number;
  /** The `runTimeoutMs` new vCPUs start with (vcpu.ts, watchdog.ts). */
  readonly runTimeoutMs: number;
  /** Registers an fd the host now owns (closed by `dispose`). */
  adoptFd(fd: number, kind: FdKind, owner?: { close(): 0 }): void;
  /** Forgets an fd that its owner closed. */
  forgetFd(fd: number): void;
  /** hva ranges of every memslot a guest can still reach (VM fd or a vCPU open). */
  liveSlotRanges(): [number, number][];
  /**
   * A scratch pointer for `length` bytes that ends exactly at an unreadable guard page: the
   * kernel reading or writing more than `length` bytes there fails with EFAULT, just as it would
   * at the end of a too-small user buffer. `fill` receives a view of the bytes to initialise.
   */
  scratch(length: number, fill?: (bytes: Uint8Array) => void): { addr: bigint; view: () => Uint8Array };
}

/** What an fd the host owns refers to; decides the order `dispose` closes it in. */
export type FdKind = 'kvm' | 'vm' | 'vcpu' | 'gmem' | 'file';

/** What a vCPU needs from its VM. */
export interface VmContext {
  readonly host: HostContext;
  checkExtension(cap: number): number;
  /** Writes guest memory at `gpa` through the memslots' userspace_addr (EFAULT if unbacked). */
  writeGuest(gpa: number, bytes: Uint8Array, call: string): void;
  vcpuClosed(vcpu: RealVcpu): void;
}

/** The binding's record of one memslot, as the kernel holds it. */
export interface TrackedSlot {
  /** The full `slot` value: as_id << 16 | id. */
  readonly slot: number;
  flags: number;
  guestPhysAddr: number;
  readonly memorySize: number;
  readonly userspaceAddr: number;
  readonly guestMemfd: number;
  readonly guestMemfdOffset: number;
}

function ebadf(what: string, call: string): never {
  throw new KvmError('EBADF', `${what} is closed`, { call });
}

/** The /dev/kvm fd. */
export class RealKvm implements Kvm {
  private open = true;
  private mmapSize = 0;

  constructor(
    private readonly host: HostContext,
    readonly fd: number,
  ) {}

  private live(call: string): void {
    if (!this.open) ebadf(`/dev/kvm fd ${this.fd}`, call);
  }

  getApiVersion(): number {
    this.live('KVM_GET_API_VERSION');
    return this.host.sys.ioctlValue(this.fd, KVM_GET_API_VERSION, 0, 'KVM_GET_API_VERSION');
  }

  checkExtension(cap: number): number {
    this.live('KVM_CHECK_EXTENSION');
    return this.host.sys.ioctlValue(this.fd, KVM_CHECK_EXTENSION, cap, 'KVM_CHECK_EXTENSION');
  }

  getVcpuMmapSize(): number {
    this.live('KVM_GET_VCPU_MMAP_SIZE');
    return this.host.sys.ioctlValue(this.fd, KVM_GET_VCPU_MMAP_SIZE, 0, 'KVM_GET_VCPU_MMAP_SIZE');
  }

  createVm(type = 0): RealVm {
    this.live('KVM_CREATE_VM');
    if (this.mmapSize === 0) this.mmapSize = this.getVcpuMmapSize();
    const fd = this.host.sys.ioctlValue(this.fd, KVM_CREATE_VM, type, 'KVM_CREATE_VM', () => `type ${type}`);
    const vm = new RealVm(this.host, fd, type, this.mmapSize);
    this.host.adoptFd(fd, 'vm', vm);
    return vm;
  }

  /** Closes /dev/kvm. VMs created from it stay alive (each holds its own reference in the kernel). */
  close(): 0 {
    this.live('close');
    this.open = false;
    this.host.sys.close(this.fd);
    this.host.forgetFd(this.fd);
    return 0;
  }
}

/** A VM fd; see the file comment. */
export class RealVm implements Vm, VmContext {
  private fdOpen = true;
  /** Memslots by full slot value (as_id << 16 | id). */
  private readonly slots = new Map<number, TrackedSlot>();
  readonly vcpus = new Set<RealVcpu>();

  constructor(
    readonly host: HostContext,
    readonly fd: number,
    readonly type: number,
    private readonly vcpuMmapSize: number,
  ) {}

  private live(call: string): void {
    if (!this.fdOpen) ebadf(`vm fd ${this.fd}`, call);
  }

  /** A guest can still run or be reached through an ioctl: the VM fd or a vCPU fd is open. */
  get reachable(): boolean {
    return this.fdOpen || this.vcpus.size > 0;
  }

  /** True until `close()`. */
  get isOpen(): boolean {
    return this.fdOpen;
  }

  /** The memslots the kernel holds for this VM (copies). */
  memslots(): TrackedSlot[] {
    return [...this.slots.values()].map((s) => ({ ...s }));
  }

  checkExtension(cap: number): number {
    this.live('KVM_CHECK_EXTENSION');
    return this.host.sys.ioctlValue(this.fd, KVM_CHECK_EXTENSION, cap, 'KVM_CHECK_EXTENSION');
  }

  enableCap(cap: EnableCap): 0 {
    this.live('KVM_ENABLE_CAP');
    const buf = encodeStruct(kvm_enable_cap, { cap: cap.cap, flags: cap.flags ?? 0, args: cap.args ?? [] });
    this.host.sys.ioctl(
      this.fd,
      KVM_ENABLE_CAP,
      buf,
      'KVM_ENABLE_CAP',
      () => `cap ${cap.cap}, flags ${cap.flags ?? 0}, args [${(cap.args ?? []).join(', ')}]`,
    );
    return 0;
  }

  setUserMemoryRegion(region: UserspaceMemoryRegion): 0 {
    return this.setRegion(region, false);
  }

  setUserMemoryRegion2(region: UserspaceMemoryRegion2): 0 {
    return this.setRegion(region, true);
  }

  private setRegion(region: UserspaceMemoryRegion2, v2: boolean): 0 {
    const call = v2 ? 'KVM_SET_USER_MEMORY_REGION2' : 'KVM_SET_USER_MEMORY_REGION';
    this.live(call);
    if (region.privateFd !== undefined || region.privateOffset !== undefined) {
      throw new KvmError(
        'EINVAL',
        `privateFd/privateOffset belong to the KVM_MEM_PRIVATE_MEMFD extension (seeds 000/001), which the real kernel does not have`,
        { call },
      );
    }
    const value = {
      slot: region.slot,
      flags: region.flags,
      guestPhysAddr: region.guestPhysAddr,
      memorySize: region.memorySize,
      userspaceAddr: region.userspaceAddr,
      guestMemfdOffset: v2 ? (region.guestMemfdOffset ?? 0) : 0,
      guestMemfd: v2 ? (region.guestMemfd ?? 0) : 0,
    };
    const buf = v2
      ? encodeStruct(kvm_userspace_memory_region2, value)
      : encodeStruct(kvm_userspace_memory_region, value);
    const detail = () =>
      `slot ${value.slot}, flags ${hex(value.flags)}, guest_phys_addr ${hex(value.guestPhysAddr)}, memory_size ${hex(value.memorySize)}, ` +
      `userspace_addr ${hex(value.userspaceAddr)}` +
      (v2 ? `, guest_memfd ${value.guestMemfd}, guest_memfd_offset ${hex(value.guestMemfdOffset)}` : '');
    this.host.sys.ioctl(
      this.fd,
      v2 ? KVM_SET_USER_MEMORY_REGION2 : KVM_SET_USER_MEMORY_REGION,
      buf,
      call,
      detail,
    );

    // The kernel accepted it: apply the same transition to the record (MR-12, MR-14).
    const key = region.slot >>> 0;
    const old = this.slots.get(key);
    if (region.memorySize === 0) {
      if (old !== undefined) {
        this.slots.delete(key);
        this.releaseSlotRange(old);
      }
      return 0;
    }
    if (old !== undefined) {
      old.guestPhysAddr = region.guestPhysAddr;
      old.flags = region.flags;
      return 0;
    }
    const slot: TrackedSlot = {
      slot: key,
      flags: region.flags,
      guestPhysAddr: region.guestPhysAddr,
      memorySize: region.memorySize,
      userspaceAddr: region.userspaceAddr,
      guestMemfd: value.guestMemfd,
      guestMemfdOffset: value.guestMemfdOffset,
    };
    this.slots.set(key, slot);
    // A guest writes through [userspace_addr, +size): that range must never become Node's.
    try {
      this.host.space.reserveForSlot(
        slot.userspaceAddr,
        slot.userspaceAddr + slot.memorySize,
        this.host.mmapMinAddr,
      );
    } catch (e) {
      this.slots.delete(key);
      this.deleteSlotInKernel(key);
      const why = e instanceof Error ? e.message : String(e);
      throw new KvmError(
        'EFAULT',
        `userspace_addr range [${hex(slot.userspaceAddr)}, ${hex(slot.userspaceAddr + slot.memorySize)}) reaches memory ` +
          `this host did not map, so a guest could write into Node's own memory; the binding undid the slot (${why})`,
        { call },
      );
    }
    return 0;
  }

  private deleteSlotInKernel(slot: number): void {
    const buf = encodeStruct(kvm_userspace_memory_region, {
      slot,
      flags: 0,
      guestPhysAddr: 0,
      memorySize: 0,
      userspaceAddr: 0,
    });
    this.host.sys.ioctl(
      this.fd,
      KVM_SET_USER_MEMORY_REGION,
      buf,
      'KVM_SET_USER_MEMORY_REGION',
      () => `delete slot ${slot}`,
    );
  }

  /** Drops hidden reservations under a deleted slot that no other live slot needs. */
  private releaseSlotRange(old: TrackedSlot): void {
    const start = old.userspaceAddr;
    const end = start + old.memorySize;
    const hidden = this.host.space.hiddenIn(start, end);
    if (hidden.length > 0) this.host.space.releaseHidden([{ start, end }], this.host.liveSlotRanges());
  }

  /** hva ranges of this VM's memslots. */
  slotRanges(): [number, number][] {
    return [...this.slots.values()].map((s) => [s.userspaceAddr, s.userspaceAddr + s.memorySize]);
  }

  createGuestMemfd(args: CreateGuestMemfd): number {
    const call = 'KVM_CREATE_GUEST_MEMFD';
    this.live(call);
    const flags = args.flags ?? 0;
    const buf = encodeStruct(kvm_create_guest_memfd, { size: args.size, flags });
    const fd = this.host.sys.ioctl(
      this.fd,
      KVM_CREATE_GUEST_MEMFD,
      buf,
      call,
      () => `size ${args.size}, flags ${hex(flags)}`,
    );
    recordGuestMemfd(fileKey(this.host.sys.fstat(fd)), { size: args.size, flags });
    this.host.adoptFd(fd, 'gmem');
    return fd;
  }

  setMemoryAttributes(attrs: MemoryAttributes): 0 {
    const call = 'KVM_SET_MEMORY_ATTRIBUTES';
    this.live(call);
    const buf = encodeStruct(kvm_memory_attributes, {
      address: attrs.address,
      size: attrs.size,
      attributes: attrs.attributes,
      flags: attrs.flags ?? 0,
    });
    this.host.sys.ioctl(
      this.fd,
      KVM_SET_MEMORY_ATTRIBUTES,
      buf,
      call,
      () =>
        `address ${hex(attrs.address)}, size ${hex(attrs.size)}, attributes ${hex(attrs.attributes)}, flags ${attrs.flags ?? 0}`,
    );
    return 0;
  }

  /**
   * KVM_GET_DIRTY_LOG into `log.dirtyBitmap`. The kernel writes ALIGN(npages, 64) / 8 bytes; the
   * bitmap is passed through a scratch buffer that ends at a guard page right after
   * `dirtyBitmap.byteLength` bytes, so a too-small bitmap fails with EFAULT at the kernel's own
   * point in its order of checks (DL-3), exactly like a too-small user buffer.
   */
  getDirtyLog(log: DirtyLog): 0 {
    const call = 'KVM_GET_DIRTY_LOG';
    this.live(call);
    const len = log.dirtyBitmap.byteLength;
    const s = this.host.scratch(len);
    const buf = encodeStruct(kvm_dirty_log, { slot: log.slot, dirtyBitmap: s.addr });
    this.host.sys.ioctl(
      this.fd,
      KVM_GET_DIRTY_LOG,
      buf,
      call,
      () => `slot ${log.slot}, bitmap of ${len} bytes`,
    );
    log.dirtyBitmap.set(s.view());
    return 0;
  }

  /** KVM_CLEAR_DIRTY_LOG from `log.dirtyBitmap` (same guard-page scratch as `getDirtyLog`). */
  clearDirtyLog(log: ClearDirtyLog): 0 {
    const call = 'KVM_CLEAR_DIRTY_LOG';
    this.live(call);
    const len = log.dirtyBitmap.byteLength;
    const s = this.host.scratch(len, (bytes) => bytes.set(log.dirtyBitmap));
    const buf = encodeStruct(kvm_clear_dirty_log, {
      slot: log.slot,
      numPages: log.numPages,
      firstPage: log.firstPage,
      dirtyBitmap: s.addr,
    });
    this.host.sys.ioctl(
      this.fd,
      KVM_CLEAR_DIRTY_LOG,
      buf,
      call,
      () =>
        `slot ${log.slot}, first_page ${log.firstPage}, num_pages ${log.numPages}, bitmap of ${len} bytes`,
    );
    return 0;
  }

  createVcpu(id: number): RealVcpu {
    const call = 'KVM_CREATE_VCPU';
    this.live(call);
    const fd = this.host.sys.ioctlValue(this.fd, KVM_CREATE_VCPU, id, call, () => `id ${id}`);
    let addr: number;
    try {
      addr = this.host.space.mapInternal(
        this.vcpuMmapSize,
        PROT_READ | PROT_WRITE,
        MAP_SHARED,
        fd,
        `kvm_run of vcpu ${id}`,
      );
    } catch (e) {
      this.host.sys.close(fd);
      throw e;
    }
    const vcpu = new RealVcpu(this, fd, id, addr, this.vcpuMmapSize);
    this.vcpus.add(vcpu);
    this.host.adoptFd(fd, 'vcpu', vcpu);
    return vcpu;
  }

  vcpuClosed(vcpu: RealVcpu): void {
    this.vcpus.delete(vcpu);
    if (!this.reachable) this.becameUnreachable();
  }

  /** No guest of this VM can run any more: its memslots no longer pin hva ranges. */
  private becameUnreachable(): void {
    const ranges = this.slotRanges().map(([start, end]) => ({ start, end }));
    this.host.space.releaseHidden(ranges, this.host.liveSlotRanges());
  }

  /** Deletes every memslot (for dispose, before guest memory is unmapped). Errors are ignored. */
  deleteAllSlots(): void {
    if (!this.fdOpen) return;
    for (const key of [...this.slots.keys()]) {
      try {
        this.deleteSlotInKernel(key);
      } catch {
        // The VM is going away; the kernel frees the slot with it.
      }
      this.slots.delete(key);
    }
  }

  writeGuest(gpa: number, bytes: Uint8Array, call: string): void {
    let done = 0;
    while (done < bytes.byteLength) {
      const at = gpa + done;
      const slot = this.slotFor(at);
      if (slot === undefined) {
        throw new KvmError('EFAULT', `no memslot (address space 0) covers gpa ${hex(at)}`, { call });
      }
      const n = Math.min(bytes.byteLength - done, slot.guestPhysAddr + slot.memorySize - at);
      this.host.space.write(slot.userspaceAddr + (at - slot.guestPhysAddr), bytes.subarray(done, done + n));
      done += n;
    }
  }

  /** The address-space-0 memslot containing `gpa`. */
  private slotFor(gpa: number): TrackedSlot | undefined {
    for (const s of this.slots.values()) {
      if (s.slot >>> 16 !== 0) continue;
      if (gpa >= s.guestPhysAddr && gpa < s.guestPhysAddr + s.memorySize) return s;
    }
    return undefined;
  }

  close(): 0 {
    this.live('close');
    this.fdOpen = false;
    this.host.sys.close(this.fd);
    this.host.forgetFd(this.fd);
    if (!this.reachable) this.becameUnreachable();
    return 0;
  }
}

/** Page-aligned length of a memslot's dirty bitmap in bytes (DL-1): ALIGN(npages, 64) / 8. */
export function dirtyBitmapBytes(memorySize: number): number {
  return Math.ceil(memorySize / PAGE_SIZE / 64) * 8;
}
