// guest_memfd on the real kernel (kvm-semantics.md §2.2): creation flags and sizes (GM-1..GM-3),
// immutability and missing read/write (GM-4, GM-5), mmap rules (GM-6, GM-7), and fallocate with
// hole punching (GM-11..GM-16), including what the host and the guest read after a punch.
import { afterEach, describe, expect, it } from 'vitest';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  GUEST_MEMFD_FLAG_INIT_SHARED,
  GUEST_MEMFD_FLAG_MMAP,
  KVM_CAP_GUEST_MEMFD_FLAGS,
  KVM_EXIT_IO,
  MAP_PRIVATE,
  MAP_SHARED,
  PROT_READ,
  PROT_WRITE,
  S_IFREG,
} from '../core/uapi.js';
import { program } from '../core/vcpu/program.js';
import { createRealHost, type RealHost, realKvmAvailable } from './index.js';
import { createOneVcpuGuest, runSkippingIntr } from './kvm_util.js';

const PAGE = 4096;
const RW = PROT_READ | PROT_WRITE;
const SHARED_FLAGS = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;
const kvm = realKvmAvailable();
const hosts: RealHost[] = [];
function host(): RealHost {
  const h = createRealHost();
  hosts.push(h);
  return h;
}
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

describe.skipIf(!kvm.ok)(`guest_memfd on /dev/kvm${kvm.ok ? '' : ` — skipped: ${kvm.reason}`}`, () => {
  it('GM-1: every single flag bit is accepted iff it is in the VM’s KVM_CAP_GUEST_MEMFD_FLAGS, else EINVAL', () => {
    const h = host();
    const vm = h.openKvm().createVm(0);
    const supported = vm.checkExtension(KVM_CAP_GUEST_MEMFD_FLAGS);
    for (let bit = 0; bit < 64; bit++) {
      const flags = 2 ** bit;
      if (bit < 31 && (supported & flags) !== 0) {
        h.close(vm.createGuestMemfd({ size: PAGE, flags }));
      } else {
        expect(
          errOf(() => vm.createGuestMemfd({ size: PAGE, flags })),
          `bit ${bit}`,
        ).toMatchObject({ code: 'EINVAL' });
      }
    }
  });

  it('GM-2: sizes that are 0, negative as loff_t, or not page-aligned are EINVAL', () => {
    const vm = host().openKvm().createVm(0);
    for (const size of [0, 1, 100, PAGE - 1, PAGE + 1, 2 ** 63]) {
      expect(
        errOf(() => vm.createGuestMemfd({ size, flags: SHARED_FLAGS })),
        `size ${size}`,
      ).toMatchObject({ code: 'EINVAL' });
    }
  });

  it('GM-3: fstat reports a regular file of the requested size, blksize 4096, a fresh inode per file', () => {
    const h = host();
    const vm = h.openKvm().createVm(0);
    const a = vm.createGuestMemfd({ size: PAGE, flags: 0 });
    const b = vm.createGuestMemfd({ size: 2 * PAGE, flags: 0 });
    const sa = h.fstat(a);
    const sb = h.fstat(b);
    expect(sa.mode & 0o170000).toBe(S_IFREG);
    expect([sa.size, sb.size]).toEqual([PAGE, 2 * PAGE]);
    expect(sa.blksize).toBe(4096);
    expect(sa.ino).not.toBe(sb.ino);
  });

  it('GM-4/GM-5: ftruncate is EINVAL; pread and pwrite fail', () => {
    const h = host();
    const vm = h.openKvm().createVm(0);
    const g = vm.createGuestMemfd({ size: PAGE, flags: SHARED_FLAGS });
    expect(errOf(() => h.ftruncate(g, 2 * PAGE))).toMatchObject({ code: 'EINVAL' });
    expect(h.fstat(g).size).toBe(PAGE);
    expect(errOf(() => h.pread(g, new Uint8Array(8), 8, 0))).toHaveProperty('code');
    expect(errOf(() => h.pwrite(g, new Uint8Array(8), 8, 0))).toHaveProperty('code');
  });

  it('GM-6/GM-7: mmap needs GUEST_MEMFD_FLAG_MMAP (else ENODEV) and MAP_SHARED (else EINVAL)', () => {
    const h = host();
    const vm = h.openKvm().createVm(0);
    const plain = vm.createGuestMemfd({ size: PAGE, flags: 0 });
    expect(errOf(() => h.mmap(0, PAGE, RW, MAP_SHARED, plain, 0))).toMatchObject({
      code: 'ENODEV',
      call: 'mmap',
    });
    const mappable = vm.createGuestMemfd({ size: PAGE, flags: SHARED_FLAGS });
    expect(errOf(() => h.mmap(0, PAGE, RW, MAP_PRIVATE, mappable, 0))).toMatchObject({ code: 'EINVAL' });
    expect(h.mmap(0, PAGE, RW, MAP_SHARED, mappable, 0)).toBeGreaterThan(0);
  });

  it('GM-11..GM-15: fallocate checks (VFS first, then guest_memfd)', () => {
    const h = host();
    const vm = h.openKvm().createVm(0);
    const g = vm.createGuestMemfd({ size: 4 * PAGE, flags: SHARED_FLAGS });
    const KEEP = FALLOC_FL_KEEP_SIZE;
    const PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    const cases: [string, number, number, number, string][] = [
      ['GM-11 len 0', KEEP, 0, 0, 'EINVAL'],
      ['GM-11 offset < 0', KEEP, -PAGE, PAGE, 'EINVAL'],
      ['GM-12 allocate without KEEP_SIZE', 0, 0, PAGE, 'EOPNOTSUPP'],
      ['GM-12 ZERO_RANGE', FALLOC_FL_ZERO_RANGE | KEEP, 0, PAGE, 'EOPNOTSUPP'],
      ['GM-13 offset + len overflows', KEEP, PAGE, 2 ** 63 - PAGE, 'EFBIG'],
      ['GM-14 unaligned offset', KEEP, 512, PAGE, 'EINVAL'],
      ['GM-14 unaligned len', PUNCH, 0, 100, 'EINVAL'],
      ['GM-15 allocate past EOF', KEEP, 3 * PAGE, 2 * PAGE, 'EINVAL'],
    ];
    for (const [name, mode, off, len, code] of cases) {
      expect(
        errOf(() => h.fallocate(g, mode, off, len)),
        name,
      ).toMatchObject({ code, call: 'fallocate' });
    }
    h.fallocate(g, KEEP, 0, 2 * PAGE);
    // guest_memfd does not account i_blocks (it is not shmem): st_blocks stays 0 after allocation.
    expect(h.fstat(g).blocks).toBe(0);
    // GM-16: punching anywhere, even entirely past EOF, succeeds.
    h.fallocate(g, PUNCH, 8 * PAGE, PAGE);
    h.fallocate(g, PUNCH, 0, 2 * PAGE);
    expect(h.fstat(g).size).toBe(4 * PAGE);
  });

  it('GM-16: a punched page reads as zeros from the host mapping and from the guest, with no memslot update', () => {
    const h = host();
    const { vm, vcpu, ramHva, ramFd } = createOneVcpuGuest(h, { backing: 'gmem' });
    expect(vm.memslots()[0]?.guestMemfd).toBe(ramFd);
    const data = 0x9000;
    h.writeMemory(ramHva + data, new Uint8Array([1, 2, 3, 4]));
    h.writeMemory(ramHva + data + PAGE, new Uint8Array([5, 6, 7, 8]));
    vcpu.setProgram(
      program((b) =>
        b
          .load(4, 'r9', data)
          .sync(1)
          .load(4, 'r10', data)
          .load(4, 'r11', data + PAGE)
          .sync(2),
      ),
    );
    expect(runSkippingIntr(vcpu).exitReason).toBe(KVM_EXIT_IO);
    expect(vcpu.getRegs().r9).toBe(0x04030201n);
    h.fallocate(ramFd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, data, PAGE);
    expect([...h.readMemory(ramHva + data, 4)]).toEqual([0, 0, 0, 0]);
    expect(runSkippingIntr(vcpu).exitReason).toBe(KVM_EXIT_IO);
    const regs = vcpu.getRegs();
    expect(regs.r10).toBe(0n);
    expect(regs.r11).toBe(0x08070605n);
  });
});
