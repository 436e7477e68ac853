/**
 * `guestmem demo`: a short tour of the modelled host memory — what a VMM does with guest RAM
 * before KVM is involved — printing each step and what the kernel did in response.
 *
 * It makes a memfd for "guest RAM", maps it, registers the two kinds of consumers KVM uses
 * (an MMU notifier on the address space, a memfile_notifier on the file, seed 001), then
 * allocates, writes, punches holes, breaks copy-on-write, and closes everything, checking that
 * nothing leaked.
 */
import { createHost } from '../core/host.js';
import { memfileRegisterNotifier, memfileUnregisterNotifier } from '../core/mm/memfile_notifier.js';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  MAP_PRIVATE,
  MAP_SHARED,
  MFD_CLOEXEC,
  PROT_READ,
  PROT_WRITE,
} from '../core/uapi.js';
import type { PgOff } from '../core/units.js';

const MiB = 2 ** 20;
const hex = (n: number): string => `0x${n.toString(16)}`;

export function runHostDemo(log: (line: string) => void = console.log): void {
  const t0 = performance.now();
  const host = createHost({ ramLimitBytes: 256 * MiB });
  const step = (what: string): void => log(`\n• ${what}`);
  const said = (what: string): void => log(`    ${what}`);

  step('memfd_create("guest-ram", MFD_CLOEXEC) and ftruncate to 64 MiB');
  const fd = host.memfdCreate('guest-ram', MFD_CLOEXEC);
  host.ftruncate(fd, 64 * MiB);
  said(`fd ${fd}; fstat: ${JSON.stringify(host.fstat(fd))}`);

  step('mmap it MAP_SHARED (the VMM view of guest RAM) and register the consumers KVM would');
  const hva = host.mmap(0, 64 * MiB, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  said(`mapped at hva ${hex(hva)}`);
  const sub = host.kernel.mm.notifiers.register({
    invalidateRangeStart: (r) =>
      said(`mmu_notifier: invalidate_range_start ${r.event} [${hex(r.start)}, ${hex(r.end)})`),
    invalidateRangeEnd: (r) => said(`mmu_notifier: invalidate_range_end   ${r.event}`),
  });
  const inode = host.kernel.fds.get(fd, 'demo').inode;
  const consumer = {
    fallocate: (s: PgOff, e: PgOff) => said(`memfile_notifier: fallocate pages [${s}, ${e})`),
    invalidate: (s: PgOff, e: PgOff) => said(`memfile_notifier: invalidate pages [${s}, ${e})`),
  };
  const pfnOps = memfileRegisterNotifier(inode, consumer);

  step('fallocate the first 2 MiB (allocating mode)');
  host.fallocate(fd, 0, 0, 2 * MiB);
  said(`blocks now ${host.fstat(fd).blocks} (512-byte units); frames in use ${host.leaks().frames}`);

  step('the VMM writes a boot pattern through its mapping');
  host.writeMemory(hva + 0x1000, new TextEncoder().encode('guestmem boot sector'));
  said(`read back: "${new TextDecoder().decode(host.readMemory(hva + 0x1000, 20))}"`);

  step('KVM-style get_lock_pfn on page 1 (seed 001 pfn ops), then a hole punch over it');
  const got = pfnOps.getLockPfn(1 as PgOff);
  if ('pfn' in got) {
    said(`page 1 → pfn ${got.pfn} (order ${got.order}), locked`);
    host.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 2 * MiB);
    said(`punch returned; page 1 still cached while locked: blocks ${host.fstat(fd).blocks}`);
    pfnOps.putUnlockPfn(got.pfn);
    said(`put_unlock_pfn: the parked truncation ran; blocks ${host.fstat(fd).blocks}`);
  }
  said(`the VMM now reads zeros: ${[...host.readMemory(hva + 0x1000, 4)].join(',')}`);

  step('a private mapping of the same file: copy-on-write on the first write');
  const priv = host.mmap(0, MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  host.writeMemory(hva, new Uint8Array([0x11]));
  said(`private view sees the file: ${host.readMemory(priv, 1)[0]}`);
  host.writeMemory(priv, new Uint8Array([0x22]));
  said(`after its own write: private ${host.readMemory(priv, 1)[0]}, shared ${host.readMemory(hva, 1)[0]}`);

  step('mprotect part of guest RAM read-only, then munmap everything');
  host.mprotect(hva, 2 * MiB, PROT_READ);
  host.munmap(priv, MiB);
  host.munmap(hva, 64 * MiB);

  step('memory map and frames before closing');
  said(
    `mappings: ${host.memoryMap().length}; frames by owner: ${JSON.stringify([...host.kernel.alloc.framesByOwner()])}`,
  );
  memfileUnregisterNotifier(inode, consumer);
  sub.unregister();
  host.close(fd);
  host.dispose();
  const leaks = host.leaks();
  step(`closed everything: leaks ${JSON.stringify(leaks)}`);
  const st = host.kernel.alloc.stats;
  said(`allocator: ${st.allocs} allocations, ${st.frees} frees, ${st.zeroed} frames zeroed on reuse`);
  said(`done in ${(performance.now() - t0).toFixed(1)} ms`);
  if (Object.values(leaks).some((n) => n !== 0)) throw new Error('the demo leaked kernel objects');
}
