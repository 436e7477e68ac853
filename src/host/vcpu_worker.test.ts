// A vCPU in a worker thread (realkvm-notes §6.5): a spinning guest is stopped by a kick
// (immediate_exit + tgkill SIGUSR2) within a bounded time, KVM_RUN returns EINTR with
// KVM_EXIT_INTR, the main thread stays responsive meanwhile, and the vCPU can be resumed.
import { afterEach, describe, expect, it } from 'vitest';
import {
  KVM_CAP_EXIT_HYPERCALL,
  KVM_EXIT_HYPERCALL,
  KVM_EXIT_INTR,
  KVM_EXIT_IO,
  KVM_HC_MAP_GPA_RANGE,
} from '../core/uapi.js';
import { program } from '../core/vcpu/program.js';
import {
  createRealHost,
  type RealHost,
  realKvmAvailable,
  startVcpuWorker,
  type VcpuWorker,
} from './index.js';
import { createOneVcpuGuest } from './kvm_util.js';

const kvm = realKvmAvailable();
const hosts: RealHost[] = [];
const workers: VcpuWorker[] = [];
afterEach(async () => {
  for (const w of workers.splice(0)) await w.stop();
  for (const h of hosts.splice(0)) h.dispose();
});

function guest() {
  const h = createRealHost();
  hosts.push(h);
  return { ...createOneVcpuGuest(h), host: h };
}
async function worker(...args: Parameters<typeof startVcpuWorker>): Promise<VcpuWorker> {
  const w = await startVcpuWorker(...args);
  workers.push(w);
  return w;
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function errOf(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return undefined;
}

/** A guest that spins for about half an hour at PVM's ~2 M instructions/s, then syncs. */
const spinner = program((b) =>
  b
    .mov('r9', 0)
    .loop('r8', 2 ** 31 - 1, (l) => l.add('r9', 1))
    .sync(1),
);

describe.skipIf(!kvm.ok)(`a vCPU in a worker thread${kvm.ok ? '' : ` — skipped: ${kvm.reason}`}`, () => {
  it('a kick stops a spinning guest within a bounded time: KVM_RUN returns EINTR with KVM_EXIT_INTR', async () => {
    const { vcpu } = guest();
    vcpu.setProgram(spinner);
    const w = await worker(vcpu);
    expect(w.tid).toBeGreaterThan(0);
    expect(w.tid).not.toBe(process.pid);
    const started = performance.now();
    const run = w.run();
    let ticks = 0;
    const timer = setInterval(() => ticks++, 10);
    await sleep(200);
    expect(w.running).toBe(true);
    // The main thread kept running while the guest spun.
    expect(ticks).toBeGreaterThan(5);
    // A vCPU ioctl now would block this thread on the vCPU mutex: refused instead.
    expect(errOf(() => vcpu.getRegs())).toMatchObject({ code: 'EBUSY' });
    const kicked = performance.now();
    w.kick();
    const r = await run;
    clearInterval(timer);
    const stopped = performance.now();
    expect(r).toMatchObject({
      ret: -1,
      errno: 'EINTR',
      exitReason: KVM_EXIT_INTR,
      exitReasonName: 'KVM_EXIT_INTR',
    });
    expect(stopped - kicked).toBeLessThan(1000);
    expect(stopped - started).toBeGreaterThanOrEqual(200);
    // The kick is consumed: immediate_exit is clear and the guest made progress it keeps.
    expect(vcpu.kvmRun.immediateExit).toBe(0);
    const progress = vcpu.getRegs().r9;
    expect(progress).toBeGreaterThan(0n);
    const again = w.run();
    await sleep(50);
    w.kick();
    expect(await again).toMatchObject({ ret: -1, errno: 'EINTR', exitReason: KVM_EXIT_INTR });
    expect(vcpu.getRegs().r9).toBeGreaterThan(progress);
  });

  it('a guest that exits by itself is decoded like vcpu.run(); a kick between runs stops the next one at once', async () => {
    const { vcpu } = guest();
    vcpu.setProgram(program((b) => b.sync(5).sync(6)));
    const w = await worker(vcpu);
    await expect(startVcpuWorker(vcpu)).rejects.toMatchObject({ code: 'EBUSY' }); // one worker per vCPU
    const r = await w.run();
    expect(r).toMatchObject({
      ret: 0,
      exitReason: KVM_EXIT_IO,
      io: { port: 0xe0, data: new Uint8Array([5, 0, 0, 0]) },
    });
    w.kick();
    const next = await w.run();
    expect(next).toMatchObject({ ret: -1, errno: 'EINTR' });
    expect(await w.run()).toMatchObject({
      ret: 0,
      exitReason: KVM_EXIT_IO,
      io: { data: new Uint8Array([6, 0, 0, 0]) },
    });
  });

  it('closing a vCPU that is inside KVM_RUN in a worker kicks it and waits; the pending run settles with EINTR', async () => {
    const { vcpu } = guest();
    vcpu.setProgram(spinner);
    const w = await worker(vcpu);
    const run = w.run();
    await sleep(50);
    vcpu.close();
    expect(await run).toMatchObject({ ret: -1, errno: 'EINTR' });
    await expect(w.run()).rejects.toMatchObject({ code: 'EBADF' });
  });

  it('HC-3: VMCALL with KVM_HC_MAP_GPA_RANGE exits as KVM_EXIT_HYPERCALL — or, on PVM, never retires', async () => {
    const { vm, vcpu } = guest();
    vm.enableCap({ cap: KVM_CAP_EXIT_HYPERCALL, args: [2 ** KVM_HC_MAP_GPA_RANGE] });
    vcpu.setProgram(program((b) => b.hypercall(KVM_HC_MAP_GPA_RANGE, [0x10_0000, 2, 0x10], 'r10').sync(1)));
    const w = await worker(vcpu);
    const run = w.run();
    const t = setTimeout(() => w.kick(), 500);
    const r = await run;
    clearTimeout(t);
    if (r.ret === 0) {
      expect(r).toMatchObject({ exitReason: KVM_EXIT_HYPERCALL, hypercall: { nr: KVM_HC_MAP_GPA_RANGE } });
      expect(r.hypercall?.args.slice(0, 3)).toEqual([0x10_0000, 2, 0x10]);
    } else {
      // PVM deviation: the guest re-executes VMCALL forever (rax still holds nr, rip stays on it).
      expect(r).toMatchObject({ errno: 'EINTR', exitReason: KVM_EXIT_INTR });
      const regs = vcpu.getRegs();
      expect(regs.rax).toBe(BigInt(KVM_HC_MAP_GPA_RANGE));
      expect(regs.r10).toBe(0n);
    }
  });
});
