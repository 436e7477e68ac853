/**
 * The Chrome trace-event writer (`guestmem run --trace-events FILE`): what a run did, on a
 * timeline that Perfetto (ui.perfetto.dev → "Open trace file") and chrome://tracing open. The
 * format — the JSON object form of the Trace Event Format — is documented in
 * docs/trace-format.md ("Chrome trace events").
 *
 * Two sources feed it:
 *
 * - what the VMM sees, on either backend: every call on the host, /dev/kvm, VMs and vCPUs, as a
 *   complete event (`ph: "X"`) — `KVM_RUN` on the vCPU's thread with the exit reason, the other
 *   ioctls and syscalls on the VMM thread — through a wrapper around the `Host` (`wrapHost`);
 *   conversions as nested spans in QEMU's order (conversion.ts); sync-point handlers;
 * - what only the model sees: the model tracepoints of src/core/tracepoints.ts (page faults,
 *   hypercalls, invalidation brackets and zaps, mmu/memfile notifier calls, memslot updates),
 *   attached while the recorder runs. On the real kernel these stay silent: the kernel's own
 *   tracefs has them, and is not read here.
 *
 * One process (pid) per host a run creates (a scenario variant, a replay), with a "VMM" thread, a
 * "kernel" thread (invalidations, notifiers, memslot updates) and one thread per vCPU. Timestamps
 * are `performance.now()` since the recorder was created, in µs with ns resolution. Events are
 * appended in the order they begin (a complete event is appended when it starts and given its
 * duration when it ends), so the timestamps of each thread never decrease in the file.
 */

import type { Host, Vcpu, Vm } from '../core/api.js';
import { HostFault, KvmError } from '../core/errno.js';
import { attachProbe, type TraceArgs } from '../core/tracepoints.js';

/** One trace event (the fields this writer uses). */
export interface TraceEvent {
  readonly name: string;
  readonly cat?: string;
  readonly ph: 'B' | 'E' | 'X' | 'i' | 'M';
  readonly ts: number;
  dur?: number;
  readonly pid: number;
  readonly tid: number;
  /** Instant events: scoped to the thread. */
  readonly s?: 't';
  args?: Record<string, number | string | boolean>;
}

/** The file: `{ traceEvents, displayTimeUnit, metadata }`. */
export interface TraceEventFile {
  readonly traceEvents: readonly TraceEvent[];
  readonly displayTimeUnit: 'ns';
  readonly metadata: Readonly<Record<string, string | number | boolean>>;
}

/** Thread ids within each process. */
export const VMM_TID = 1;
export const KERNEL_TID = 2;
/** vCPU n runs on thread VCPU_TID_BASE + n. */
export const VCPU_TID_BASE = 100;

/** Where the VMM's spans go (conversion.ts, scenario.ts); the recorder implements it. */
export interface SpanSink {
  begin(tid: number, name: string, cat: string, args?: TraceEvent['args']): void;
  end(tid: number, args?: TraceEvent['args']): void;
  instant(tid: number, name: string, cat: string, args?: TraceEvent['args']): void;
}

/** Kernel names of the interface's methods (src/core/api.ts). */
const CALL_NAMES: Readonly<Record<string, string>> = {
  openKvm: 'open /dev/kvm',
  getApiVersion: 'KVM_GET_API_VERSION',
  checkExtension: 'KVM_CHECK_EXTENSION',
  getVcpuMmapSize: 'KVM_GET_VCPU_MMAP_SIZE',
  createVm: 'KVM_CREATE_VM',
  enableCap: 'KVM_ENABLE_CAP',
  setUserMemoryRegion: 'KVM_SET_USER_MEMORY_REGION',
  setUserMemoryRegion2: 'KVM_SET_USER_MEMORY_REGION2',
  createGuestMemfd: 'KVM_CREATE_GUEST_MEMFD',
  setMemoryAttributes: 'KVM_SET_MEMORY_ATTRIBUTES',
  getDirtyLog: 'KVM_GET_DIRTY_LOG',
  clearDirtyLog: 'KVM_CLEAR_DIRTY_LOG',
  createVcpu: 'KVM_CREATE_VCPU',
  run: 'KVM_RUN',
  getRegs: 'KVM_GET_REGS',
  setRegs: 'KVM_SET_REGS',
  preFaultMemory: 'KVM_PRE_FAULT_MEMORY',
  memfdCreate: 'memfd_create',
};

/** Calls that are not worth a span each (bulk memory access by the VMM's devices). */
const UNTRACED = new Set(['readMemory', 'writeMemory', 'digest', 'trace']);

/** A call's arguments, flattened to a few JSON-safe fields. */
function summarizeArgs(args: readonly unknown[]): Record<string, number | string | boolean> {
  const out: Record<string, number | string | boolean> = {};
  args.forEach((a, i) => {
    if (typeof a === 'number' || typeof a === 'string' || typeof a === 'boolean') out[`arg${i}`] = a;
    else if (typeof a === 'bigint') out[`arg${i}`] = a.toString();
    else if (a instanceof Uint8Array) out[`arg${i}.length`] = a.length;
    else if (a !== null && typeof a === 'object' && !Array.isArray(a)) {
      for (const [k, v] of Object.entries(a)) {
        if (typeof v === 'number' || typeof v === 'string' || typeof v === 'boolean') out[k] = v;
      }
    }
  });
  return out;
}

/** Keys of tracepoint args that name the vCPU (they choose the thread, so are not repeated). */
const VCPU_KEY = 'vcpuId';

/**
 * Records trace events. Create one per output file, `start()` it (attaches the model
 * tracepoints), give each host to `beginProcess` + `wrapHost`, `stop()`, then `toJson()`.
 */
export class TraceEventRecorder implements SpanSink {
  private readonly events: TraceEvent[] = [];
  private readonly t0 = performance.now();
  private pid = 0;
  private nextPid = 1;
  private readonly namedThreads = new Set<string>();
  /** Open B events per `pid:tid`, innermost last (to close them if a run is cut short). */
  private readonly open = new Map<string, string[]>();
  /** Zaps inside each open kvm_mmu_invalidate bracket, innermost last. */
  private readonly invalidations: { zapped: number; start: number; end: number }[] = [];
  private detach: (() => void) | null = null;

  constructor(private readonly metadata: Record<string, string | number | boolean> = {}) {}

  /** µs since the recorder was created, rounded to ns. */
  now(): number {
    return Math.round((performance.now() - this.t0) * 1e6) / 1e3;
  }

  /** Attaches to every model tracepoint (see src/core/tracepoints.ts). */
  start(): void {
    this.detach ??= attachProbe((name, args) => this.onTracepoint(name, args));
  }

  /** Detaches from the tracepoints and closes whatever is still open. */
  stop(): void {
    this.detach?.();
    this.detach = null;
    this.endProcess();
  }

  /** Starts a new process (a host) named `name`; later events go to it. Returns its pid. */
  beginProcess(name: string): number {
    this.endProcess();
    this.pid = this.nextPid++;
    this.meta('process_name', 0, { name });
    this.meta('process_sort_index', 0, { sort_index: this.pid });
    this.nameThread(VMM_TID, 'VMM', 0);
    this.nameThread(KERNEL_TID, 'kernel (model tracepoints)', 1);
    return this.pid;
  }

  /** Closes the current process's open spans (marked `unterminated`). */
  endProcess(): void {
    if (this.pid === 0) return;
    for (const [key, stack] of this.open) {
      const [pid, tid] = key.split(':').map(Number) as [number, number];
      if (pid !== this.pid) continue;
      while (stack.length > 0) {
        stack.pop();
        this.events.push({ name: '', ph: 'E', ts: this.now(), pid, tid, args: { unterminated: true } });
      }
    }
    this.invalidations.length = 0;
    this.pid = 0;
  }

  private meta(name: string, tid: number, args: TraceEvent['args']): void {
    this.events.push({ name, ph: 'M', ts: 0, pid: this.pid, tid, ...(args ? { args } : {}) });
  }

  private nameThread(tid: number, name: string, sortIndex: number): void {
    const key = `${this.pid}:${tid}`;
    if (this.namedThreads.has(key)) return;
    this.namedThreads.add(key);
    this.meta('thread_name', tid, { name });
    this.meta('thread_sort_index', tid, { sort_index: sortIndex });
  }

  /** The thread of vCPU `id` (named on first use). */
  vcpuTid(id: number): number {
    const tid = VCPU_TID_BASE + id;
    this.nameThread(tid, `vCPU ${id}`, 10 + id);
    return tid;
  }

  begin(tid: number, name: string, cat: string, args?: TraceEvent['args']): void {
    if (this.pid === 0) return;
    const key = `${this.pid}:${tid}`;
    const stack = this.open.get(key) ?? [];
    stack.push(name);
    this.open.set(key, stack);
    this.events.push({ name, cat, ph: 'B', ts: this.now(), pid: this.pid, tid, ...(args ? { args } : {}) });
  }

  end(tid: number, args?: TraceEvent['args']): void {
    if (this.pid === 0) return;
    const name = this.open.get(`${this.pid}:${tid}`)?.pop();
    if (name === undefined) return; // begun in an earlier process, already closed
    this.events.push({ name, ph: 'E', ts: this.now(), pid: this.pid, tid, ...(args ? { args } : {}) });
  }

  instant(tid: number, name: string, cat: string, args?: TraceEvent['args']): void {
    if (this.pid === 0) return;
    this.events.push({
      name,
      cat,
      ph: 'i',
      s: 't',
      ts: this.now(),
      pid: this.pid,
      tid,
      ...(args ? { args } : {}),
    });
  }

  /** Runs `f` as a complete event (`X`); `after` adds arguments from its result. */
  complete<T>(
    tid: number,
    name: string,
    cat: string,
    args: TraceEvent['args'],
    f: () => T,
    after?: (r: T) => TraceEvent['args'],
  ): T {
    if (this.pid === 0) return f();
    const ev: TraceEvent = {
      name,
      cat,
      ph: 'X',
      ts: this.now(),
      dur: 0,
      pid: this.pid,
      tid,
      args: { ...args },
    };
    this.events.push(ev);
    try {
      const r = f();
      if (after) Object.assign(ev.args as object, after(r));
      return r;
    } catch (e) {
      (ev.args as Record<string, string>)['error'] =
        e instanceof KvmError
          ? e.code
          : e instanceof HostFault
            ? e.signal
            : e instanceof Error
              ? e.name
              : 'thrown';
      throw e;
    } finally {
      ev.dur = Math.max(0, this.now() - ev.ts);
    }
  }

  private onTracepoint(name: string, args: TraceArgs): void {
    if (this.pid === 0) return;
    const rest: Record<string, number | string | boolean> = {};
    for (const [k, v] of Object.entries(args)) if (k !== VCPU_KEY) rest[k] = v;
    const vcpu = args[VCPU_KEY];
    switch (name) {
      case 'kvm_page_fault':
      case 'kvm_hypercall':
        this.instant(typeof vcpu === 'number' ? this.vcpuTid(vcpu) : KERNEL_TID, name, 'kvm', rest);
        return;
      case 'kvm_mmu_invalidate_begin':
        this.invalidations.push({ zapped: 0, start: -1, end: -1 });
        this.begin(KERNEL_TID, 'kvm_mmu_invalidate', 'kvm,invalidate', rest);
        return;
      case 'kvm_unmap_gfn_range': {
        const inv = this.invalidations[this.invalidations.length - 1];
        if (inv !== undefined) {
          inv.zapped += Number(args['zapped'] ?? 0);
          const s = Number(args['start'] ?? 0);
          const e = Number(args['end'] ?? 0);
          inv.start = inv.start < 0 ? s : Math.min(inv.start, s);
          inv.end = Math.max(inv.end, e);
        }
        this.instant(KERNEL_TID, name, 'kvm,invalidate', rest);
        return;
      }
      case 'kvm_mmu_invalidate_end': {
        const inv = this.invalidations.pop();
        this.end(KERNEL_TID, {
          ...rest,
          ...(inv ? { sptesZapped: inv.zapped, gfnStart: inv.start, gfnEnd: inv.end } : {}),
        });
        return;
      }
      case 'mmu_notifier_invalidate_range_start':
        this.begin(KERNEL_TID, 'mmu_notifier_invalidate_range', 'mm,notifier', rest);
        return;
      case 'mmu_notifier_invalidate_range_end':
        this.end(KERNEL_TID, rest);
        return;
      default:
        this.instant(KERNEL_TID, name, name.startsWith('memfile') ? 'mm,notifier' : 'kvm', rest);
    }
  }

  /**
   * `host`, with every call on it and on the objects it creates recorded as a complete event.
   * The wrapper changes nothing the host does.
   */
  wrapHost(host: Host): Host {
    return this.wrap(host, 'host', VMM_TID);
  }

  private wrap<T extends object>(target: T, kind: 'host' | 'kvm' | 'vm' | 'vcpu', tid: number): T {
    return new Proxy(target, {
      get: (t, prop) => {
        const v = Reflect.get(t, prop, t) as unknown;
        if (typeof v !== 'function' || typeof prop !== 'string' || UNTRACED.has(prop)) {
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
        }
        const fn = v as (...a: unknown[]) => unknown;
        const name = CALL_NAMES[prop] ?? prop;
        const cat = name.startsWith('KVM_') ? 'ioctl' : 'syscall';
        return (...args: unknown[]): unknown => {
          if (prop === 'run' && kind === 'vcpu') {
            return this.complete(tid, name, 'ioctl', {}, () => fn.apply(t, args), runArgs);
          }
          const r = this.complete(tid, name, cat, summarizeArgs(args), () => fn.apply(t, args), resultArgs);
          if (r !== null && typeof r === 'object') {
            if (prop === 'openKvm') return this.wrap(r, 'kvm', VMM_TID);
            if (prop === 'createVm') return this.wrap(r as Vm, 'vm', VMM_TID);
            if (prop === 'createVcpu') return this.wrap(r as Vcpu, 'vcpu', this.vcpuTid(Number(args[0])));
          }
          return r;
        };
      },
    });
  }

  /** The events so far. */
  get traceEvents(): readonly TraceEvent[] {
    return this.events;
  }

  /** The file's object. */
  toFile(): TraceEventFile {
    return {
      traceEvents: this.events,
      displayTimeUnit: 'ns',
      metadata: {
        generator: 'guestmem',
        clock: 'performance.now() since the recorder was created, µs',
        kernelEvents: 'model tracepoints (src/core/tracepoints.ts); none on the real /dev/kvm',
        ...this.metadata,
      },
    };
  }

  /** The file's text: one event per line. */
  toJson(): string {
    const lines = this.events.map((e) => JSON.stringify(e));
    const meta = this.toFile().metadata;
    return `{"displayTimeUnit":"ns","metadata":${JSON.stringify(meta)},"traceEvents":[\n${lines.join(',\n')}\n]}\n`;
  }
}

function runArgs(r: unknown): Record<string, number | string | boolean> {
  const x = r as { ret?: number; exitReasonName?: string; errno?: string };
  return {
    exit_reason: x.exitReasonName ?? '?',
    ret: x.ret ?? 0,
    ...(x.errno === undefined ? {} : { errno: x.errno }),
  };
}

function resultArgs(r: unknown): Record<string, number | string | boolean> {
  return typeof r === 'number' ? { ret: r } : {};
}

/**
 * What is wrong with a trace-event file (empty if nothing): the top-level shape; each event's
 * fields; `X` durations ≥ 0; every `B` closed by an `E` on its thread (and no `E` without one);
 * every pid and tid named by `M` metadata; timestamps that never decrease on a thread.
 */
export function checkTraceEventFile(file: unknown): string[] {
  const problems: string[] = [];
  const f = file as Partial<TraceEventFile> | null;
  if (f === null || typeof f !== 'object' || !Array.isArray(f.traceEvents)) return ['no traceEvents array'];
  if (f.displayTimeUnit !== 'ns') problems.push(`displayTimeUnit is ${String(f.displayTimeUnit)}, not ns`);
  if (f.metadata === null || typeof f.metadata !== 'object') problems.push('no metadata object');
  const processNames = new Set<number>();
  const threadNames = new Set<string>();
  const used = new Set<string>();
  const open = new Map<string, string[]>();
  const lastTs = new Map<string, number>();
  f.traceEvents.forEach((e, i) => {
    const at = `event ${i} (${String(e?.name)})`;
    if (typeof e?.name !== 'string' || !['B', 'E', 'X', 'i', 'M'].includes(e.ph)) {
      problems.push(`${at}: bad name or ph ${String(e?.ph)}`);
      return;
    }
    if (!Number.isInteger(e.pid) || !Number.isInteger(e.tid) || typeof e.ts !== 'number' || e.ts < 0) {
      problems.push(`${at}: bad pid/tid/ts`);
      return;
    }
    const key = `${e.pid}:${e.tid}`;
    if (e.ph === 'M') {
      if (e.name === 'process_name') processNames.add(e.pid);
      if (e.name === 'thread_name') threadNames.add(key);
      return;
    }
    used.add(key);
    const last = lastTs.get(key) ?? -1;
    if (e.ts < last) problems.push(`${at}: ts ${e.ts} before the thread's previous event at ${last}`);
    lastTs.set(key, e.ts);
    if (e.ph === 'X' && !(typeof e.dur === 'number' && e.dur >= 0)) problems.push(`${at}: X without dur ≥ 0`);
    if (e.ph === 'B') open.set(key, [...(open.get(key) ?? []), e.name]);
    if (e.ph === 'E') {
      const stack = open.get(key) ?? [];
      const top = stack.pop();
      if (top === undefined) problems.push(`${at}: E without an open B on ${key}`);
      else if (e.name !== '' && e.name !== top) problems.push(`${at}: E closes '${top}'`);
      open.set(key, stack);
    }
  });
  for (const [key, stack] of open) {
    for (const name of stack) problems.push(`B '${name}' on ${key} has no E`);
  }
  for (const key of used) {
    const pid = Number(key.split(':')[0]);
    if (!processNames.has(pid)) problems.push(`pid ${pid} has no process_name`);
    if (!threadNames.has(key)) problems.push(`thread ${key} has no thread_name`);
  }
  return problems;
}
