/**
 * All-ones holes on the real kernel: seed 004's `KVM_MEM_ALLONES` (never merged upstream,
 * kvm-semantics.md §5.2) emulated by the VMM the way the RFC's reviewers suggested and
 * realkvm-notes §6.4 measured: one memfd chunk filled with 0xff, mapped read-only many times
 * back to back, registered as a `KVM_MEM_READONLY` memslot. Guest reads return 0xff at RAM speed
 * (no exit); guest writes exit as `KVM_EXIT_MMIO` with the data (RO-1), like the RFC's slot.
 *
 * What it costs: one VMA per chunk (the file offset is 0 every time, so the kernel cannot merge
 * them) and `chunk` bytes of RAM. With vm.max_map_count = 65530 a 4 KiB chunk reaches about
 * 255 MiB of holes; 64 KiB chunks reach 1 GiB with 16 Ki VMAs; 2 MiB chunks 2 GiB with 1 Ki.
 * The mapping counts against the binding's VMA budget, which refuses (ENOMEM) what would leave
 * Node fewer than its headroom.
 */

import type { Vm } from '../core/api.js';
import { KvmError } from '../core/errno.js';
import { KVM_MEM_READONLY, MAP_SHARED, MFD_CLOEXEC, PROT_READ, PROT_WRITE } from '../core/uapi.js';
import { PAGE_SIZE } from '../core/units.js';
import type { RealHost } from './real_host.js';

/** Default chunk: 64 KiB (1 GiB of holes for 16 Ki VMAs and 64 KiB of RAM). */
export const DEFAULT_ALLONES_CHUNK = 64 * 1024;
const MAX_CHUNK = 2 * 1024 * 1024;

/** Where and how big the all-ones slot is. */
export interface AllOnesSlotOptions {
  readonly slot: number;
  readonly guestPhysAddr: number;
  /** Bytes; a multiple of 4096. The last chunk may extend past it (it is simply not in the slot). */
  readonly memorySize: number;
  /** Bytes of 0xff per mapping: a power of two from 4 KiB to 2 MiB (default 64 KiB). */
  readonly chunkSize?: number;
}

/** A live all-ones slot. */
export interface AllOnesSlot {
  /** userspace_addr of the slot: the start of the repeated mapping. */
  readonly hva: number;
  readonly slot: number;
  readonly chunkSize: number;
  /** Number of mappings (VMAs) of the 0xff chunk. */
  readonly mappings: number;
  /** Deletes the memslot (if the VM is still open), then unmaps the chunks. */
  dispose(): void;
}

/**
 * Creates a read-only memslot whose every byte reads 0xff, backed by one memfd chunk mapped
 * `ceil(memorySize / chunkSize)` times (see the file comment).
 */
export function createAllOnesSlot(host: RealHost, vm: Vm, options: AllOnesSlotOptions): AllOnesSlot {
  const chunk = options.chunkSize ?? DEFAULT_ALLONES_CHUNK;
  const call = 'createAllOnesSlot';
  if (!Number.isInteger(chunk) || chunk < PAGE_SIZE || chunk > MAX_CHUNK || (chunk & (chunk - 1)) !== 0) {
    throw new KvmError('EINVAL', `chunkSize ${chunk} is not a power of two in [4 KiB, 2 MiB]`, { call });
  }
  const { memorySize } = options;
  if (!Number.isSafeInteger(memorySize) || memorySize <= 0 || memorySize % PAGE_SIZE !== 0) {
    throw new KvmError('EINVAL', `memorySize ${memorySize} is not a positive multiple of ${PAGE_SIZE}`, {
      call,
    });
  }
  const count = Math.ceil(memorySize / chunk);

  // One chunk of 0xff in a memfd, written through a temporary mapping.
  const fd = host.memfdCreate('guestmem-allones', MFD_CLOEXEC);
  let hva: number;
  try {
    host.ftruncate(fd, chunk);
    const tmp = host.mmap(0, chunk, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    host.writeMemory(tmp, new Uint8Array(chunk).fill(0xff));
    host.munmap(tmp, chunk);
    hva = host.mmapRepeated(fd, chunk, count, PROT_READ);
  } finally {
    // The mappings keep the file; the fd is no longer needed.
    host.close(fd);
  }
  const length = chunk * count;
  try {
    vm.setUserMemoryRegion({
      slot: options.slot,
      flags: KVM_MEM_READONLY,
      guestPhysAddr: options.guestPhysAddr,
      memorySize,
      userspaceAddr: hva,
    });
  } catch (e) {
    host.munmap(hva, length);
    throw e;
  }
  let live = true;
  return {
    hva,
    slot: options.slot,
    chunkSize: chunk,
    mappings: count,
    dispose() {
      if (!live) return;
      live = false;
      // The kernel's order: the memslot goes before the memory it points at.
      try {
        vm.setUserMemoryRegion({
          slot: options.slot,
          flags: 0,
          guestPhysAddr: options.guestPhysAddr,
          memorySize: 0,
          userspaceAddr: hva,
        });
      } catch (e) {
        if (!(e instanceof KvmError && e.code === 'EBADF')) throw e;
      } finally {
        host.munmap(hva, length);
      }
    },
  };
}
