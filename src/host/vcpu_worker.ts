/**
 * Running a vCPU in a worker thread, and kicking it out of a guest that never exits
 * (realkvm-notes §6.5).
 *
 * A synchronous KVM_RUN blocks its thread until the guest exits; on the main thread a spinning
 * guest would hang the event loop forever. So the worker issues KVM_RUN (its own koffi binding,
 * the same vCPU fd — fds are per process) while the main thread stays responsive, and `kick()`
 * stops it the way QEMU does: set `kvm_run.immediate_exit = 1` (a run not yet entered returns at
 * once) and send SIGUSR2 to the worker thread with tgkill (a run in progress returns -1/EINTR with
 * exit_reason KVM_EXIT_INTR). SIGUSR2 needs a handler, or it kills the process: `process.on`
 * installs libuv's, which is enough. SIGUSR1 is Node's inspector signal and is not used.
 *
 * The worker touches no mapped memory: it only issues the ioctl and stores the result in a
 * SharedArrayBuffer. The main thread writes the RUN-3 sentinel before and decodes kvm_run after
 * (`RealVcpu.beginRun`/`finishRun`), so exits read the same as from `vcpu.run()`. While the worker
 * is inside KVM_RUN, other ioctls on that vCPU are refused with EBUSY (the kernel would block
 * them on the vCPU mutex, i.e. block the main thread), and `vcpu.close()` kicks and waits.
 *
 * The worker's runs are watched by the process's run watchdog (watchdog.ts) like `vcpu.run()`:
 * the worker holds its own watchdog slot (its tid), arms it with the vCPU's `runTimeoutMs` right
 * before KVM_RUN and disarms it right after, so a run that outlasts its budget ends with EINTR
 * and `watchdog: true`. The watchdog only signals; it never sets `immediate_exit`, so it cannot
 * leave a kick behind for the next run, and a `kick()` (which does set it) is reported as a plain
 * EINTR unless the watchdog had also fired.
 */

import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import type { RunResult, Vcpu } from '../core/api.js';
import { KvmError } from '../core/errno.js';
import { KVM_RUN } from '../core/uapi.js';
import { getSys, SIGUSR2 } from './sys.js';
import { RealVcpu, type RunnerHandle } from './vcpu.js';
import { claimWorkerSlot, installKickHandler, WORKER_GUARD_SOURCE, watchdogBlock } from './watchdog.js';

/** A vCPU running in a worker thread. */
export interface VcpuWorker {
  /** The worker thread's kernel thread id (the tgkill target). */
  readonly tid: number;
  /** Issues one KVM_RUN in the worker; resolves with the exit, decoded as `vcpu.run()` does. */
  run(): Promise<RunResult>;
  /** True while a `run()` is in progress. */
  readonly running: boolean;
  /** Interrupts the current run (or the next one, if none is in progress): immediate_exit + SIGUSR2. */
  kick(): void;
  /** Interrupts any run, waits for it, and ends the worker thread. */
  stop(): Promise<void>;
}

// The worker's whole program. It is plain JavaScript evaluated in the worker (no TypeScript
// loader is available there), and needs only koffi, the vCPU fd and the watchdog's block.
// A run message is { slot, budget }: the worker's watchdog slot and the budget in ms (0: none).
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const koffi = require(workerData.koffiPath);
const libc = koffi.load('libc.so.6');
const ioctl = libc.func('int ioctl(int fd, unsigned long req, unsigned long arg)');
const syscall = libc.func('long syscall(long nr)');
const state = new Int32Array(workerData.state);
${WORKER_GUARD_SOURCE}
parentPort.on('message', (m) => {
  if (typeof m !== 'object' || m === null || typeof m.slot !== 'number') return;
  const watched = m.slot >= 0 && m.budget > 0;
  if (watched) wdArm(m.slot, m.budget);
  const r = ioctl(workerData.fd, workerData.request, 0);
  const res = r < 0 ? -koffi.errno() : r;
  const fired = watched && wdDisarm(m.slot);
  Atomics.store(state, 2, fired ? 1 : 0);
  Atomics.store(state, 1, res);
  Atomics.store(state, 0, 0);
  Atomics.notify(state, 0);
  parentPort.postMessage('done');
});
parentPort.postMessage({ tid: Number(syscall(186)) });
`;

/**
 * state[0]: 1 while a run is requested or in progress; state[1]: its result (ret or -errno);
 * state[2]: 1 if the run watchdog signalled the worker during that run.
 */
const BUSY = 0;
const RESULT = 1;
const WATCHDOG_FIRED = 2;
/** How long `stop`/`vcpu.close()` wait for a kicked run to end before giving up. */
const STOP_TIMEOUT_MS = 5000;
const REKICK_MS = 50;

/**
 * Starts a worker thread that runs `vcpu` (a vCPU of `createRealHost()`). Resolves once the
 * worker is ready and its thread id is known.
 */
export async function startVcpuWorker(vcpu: Vcpu): Promise<VcpuWorker> {
  if (!(vcpu instanceof RealVcpu)) throw new TypeError('startVcpuWorker needs a vCPU of createRealHost()');
  if (!vcpu.isOpen) throw new KvmError('EBADF', `vcpu ${vcpu.id} is closed`, { call: 'startVcpuWorker' });
  installKickHandler();
  const sys = getSys();
  const state = new Int32Array(new SharedArrayBuffer(12));
  const koffiPath = createRequire(import.meta.url).resolve('koffi');
  const worker = new Worker(WORKER_SOURCE, {
    eval: true,
    workerData: { koffiPath, fd: vcpu.fd, request: KVM_RUN, state: state.buffer, wd: watchdogBlock() },
  });
  worker.unref();
  const tid = await new Promise<number>((resolve, reject) => {
    const onMessage = (m: unknown) => {
      if (typeof m === 'object' && m !== null && typeof (m as { tid?: unknown }).tid === 'number') {
        worker.off('error', reject);
        resolve((m as { tid: number }).tid);
      }
    };
    worker.once('message', onMessage);
    worker.once('error', reject);
  });

  let pending: { resolve: (r: RunResult) => void; reject: (e: unknown) => void } | null = null;
  let kicked = false;
  let ended = false;

  const busy = () => Atomics.load(state, BUSY) === 1;
  // Decodes the finished run (once) and resolves the pending run().
  const settle = () => {
    if (pending === null || busy()) return;
    const p = pending;
    pending = null;
    worker.unref();
    try {
      const result = vcpu.finishRun(Atomics.load(state, RESULT), Atomics.load(state, WATCHDOG_FIRED) === 1);
      if (kicked) {
        kicked = false;
        if (vcpu.isOpen) vcpu.kvmRun.immediateExit = 0;
      }
      p.resolve(result);
    } catch (e) {
      p.reject(e);
    }
  };
  const kick = () => {
    if (ended || !vcpu.isOpen) return;
    kicked = true;
    vcpu.kvmRun.immediateExit = 1;
    sys.tgkill(sys.getpid(), tid, SIGUSR2);
  };
  const stopSync = () => {
    const deadline = Date.now() + STOP_TIMEOUT_MS;
    while (busy()) {
      kick();
      Atomics.wait(state, BUSY, 1, REKICK_MS);
      if (Date.now() > deadline && busy()) {
        throw new KvmError(
          'EBUSY',
          `vcpu ${vcpu.id} did not leave KVM_RUN within ${STOP_TIMEOUT_MS} ms of a kick`,
          {
            call: 'KVM_RUN',
          },
        );
      }
    }
    settle();
  };
  const handle: RunnerHandle = { busy, stopSync };
  let wdSlot: ReturnType<typeof claimWorkerSlot>;
  try {
    vcpu.setRunner(handle);
    try {
      wdSlot = claimWorkerSlot(tid);
    } catch (e) {
      vcpu.setRunner(null);
      throw e;
    }
  } catch (e) {
    await worker.terminate();
    throw e;
  }
  // The slot is free again once the thread is gone (stop(), or a crash).
  worker.on('exit', () => wdSlot.release());
  worker.on('message', (m) => {
    if (m === 'done') settle();
  });
  worker.on('error', (e) => {
    ended = true;
    pending?.reject(e);
    pending = null;
  });

  return {
    tid,
    get running() {
      return busy();
    },
    run(): Promise<RunResult> {
      try {
        if (ended) throw new KvmError('EBADF', 'the vCPU worker was stopped', { call: 'KVM_RUN' });
        vcpu.beginRun(); // refuses (EBUSY) while a run is in progress, EBADF once closed
      } catch (e) {
        return Promise.reject(e);
      }
      const budget = vcpu.runTimeoutMs;
      Atomics.store(state, BUSY, 1);
      // An idle worker must not keep Node alive, a running one must (someone awaits its exit).
      worker.ref();
      return new Promise<RunResult>((resolve, reject) => {
        pending = { resolve, reject };
        worker.postMessage({ slot: wdSlot.slot, budget: budget === Number.POSITIVE_INFINITY ? 0 : budget });
      });
    },
    kick,
    async stop(): Promise<void> {
      if (ended) return;
      stopSync();
      ended = true;
      vcpu.setRunner(null);
      await worker.terminate();
    },
  };
}
