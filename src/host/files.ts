/**
 * What the binding knows about files beyond what `fstat` says: which inodes are guest_memfds and
 * with which flags. The kernel decides whether touching a guest_memfd page is a SIGBUS from the
 * file's flags (GM-8: no `GUEST_MEMFD_FLAG_INIT_SHARED` ⇒ every host fault is a SIGBUS), and that
 * property is not visible through `fstat`, so `Vm.createGuestMemfd` records it here.
 *
 * The table is per process (like the kernel's inodes), shared by every host in it, and keyed by
 * (st_dev, st_ino). A guest_memfd that this table does not know (created by a raw ioctl outside
 * the binding) is treated as not INIT_SHARED: refusing a read is safe, a SIGBUS is not.
 */

import { readlinkSync } from 'node:fs';
import type { RawStat } from './sys.js';

/** What `KVM_CREATE_GUEST_MEMFD` was asked for. */
export interface GuestMemfdInfo {
  readonly size: number;
  readonly flags: number;
}

const guestMemfds = new Map<string, GuestMemfdInfo>();

/** The identity of an inode: st_dev and st_ino. */
export function fileKey(st: Pick<RawStat, 'dev' | 'ino'>): string {
  return `${st.dev}:${st.ino}`;
}

/** Records a guest_memfd just created (inode numbers are reused, so a new entry replaces an old one). */
export function recordGuestMemfd(key: string, info: GuestMemfdInfo): void {
  guestMemfds.set(key, info);
}

/** The link target of a guest_memfd's /proc/self/fd entry (virt/kvm/guest_memfd.c names the inode). */
const GMEM_LINK = 'anon_inode:[kvm-gmem]';

/**
 * Classifies an open fd: a guest_memfd (with its flags, or `unknown` if it was not created through
 * the binding), or an ordinary file. Reads /proc/self/fd, which names guest_memfd inodes.
 */
export function classifyFile(fd: number, key: string): { gmem: GuestMemfdInfo | 'unknown' | undefined } {
  let link: string;
  try {
    link = readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return { gmem: guestMemfds.get(key) ?? undefined };
  }
  if (link !== GMEM_LINK) return { gmem: undefined };
  return { gmem: guestMemfds.get(key) ?? 'unknown' };
}
