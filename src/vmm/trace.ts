/**
 * Record and replay (architecture §7): a `Host` wrapper that writes every call on the host, its
 * /dev/kvm fds, VMs and vCPUs — method, arguments, result or errno, guest programs as their IR,
 * run exits, and digests of memory the caller asks for — into a versioned JSON trace, and a
 * replayer that drives another `Host` (the other backend) through the same calls and reports the
 * first call whose outcome differs. That is how the model and the kernel are compared on real
 * workloads. The format is documented in docs/trace-format.md.
 *
 * Values that only mean something inside one process are recorded as symbolic handles so that a
 * trace maps across backends: fds (`{"$fd":"g1"}`), KVM objects (`{"$obj":"vm1"}`), host
 * addresses (`{"$hva":"m2","off":4096}`, relative to the mapping an mmap returned) and inode
 * numbers (`{"$ino":"i1"}`). Handles are numbered in the order the calls create them, so a
 * replay that behaves the same allocates the same names.
 *
 * The wrapper records; it never changes what the inner host does, except that `run()` first
 * reads the shared `kvm_run` fields the VMM may have written (MMIO read data, immediate_exit,
 * hypercall.ret) into the call's arguments, so a replay can write them back before its own run.
 */

import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import type {
  ClearDirtyLog,
  CreateGuestMemfd,
  DirtyLog,
  EnableCap,
  Host,
  Kvm as KvmApi,
  KvmRunShared,
  MemoryAttributes,
  PreFaultMemory,
  ProgramLayout,
  Regs,
  RunResult,
  Stat,
  UserspaceMemoryRegion,
  UserspaceMemoryRegion2,
  Vcpu as VcpuApi,
  Vm as VmApi,
} from '../core/api.js';
import { HostFault, KvmError } from '../core/errno.js';
import type { Op, Program } from '../core/vcpu/program.js';
import type { Backend, HostRequest } from './backends.js';

export const TRACE_FORMAT = 'guestmem-trace';
export const TRACE_VERSION = 1;

/** A JSON value. */
export type Json = null | boolean | number | string | readonly Json[] | { readonly [k: string]: Json };

/** What a call did: returned a value, failed with an errno, faulted, or threw something else. */
export type TraceOutcome =
  | { readonly ok: Json }
  | { readonly errno: string; readonly rule?: string }
  | { readonly fault: 'SIGSEGV' | 'SIGBUS' }
  | { readonly threw: string; readonly message: string };

/** One recorded call. */
export interface TraceCall {
  /** Position in `calls`. */
  readonly i: number;
  /** The object called: `host`, or a handle (`kvm1`, `vm1`, `vcpu1`). */
  readonly on: string;
  readonly method: string;
  readonly args: readonly Json[];
  readonly out: TraceOutcome;
  /** What the call wrote into its arguments (pread's buffer, the dirty bitmap, a pre-fault range). */
  readonly after?: Json;
}

/** A trace (docs/trace-format.md). */
export interface Trace {
  readonly format: typeof TRACE_FORMAT;
  readonly version: typeof TRACE_VERSION;
  /** The backend it was recorded on. */
  readonly backend: 'model' | 'kvm';
  /** Free-form description (scenario name, seed, …); never compared. */
  readonly meta?: { readonly [k: string]: Json };
  readonly calls: readonly TraceCall[];
}

// ---- digests ------------------------------------------------------------------------------------

/** FNV-1a, 64-bit, over `bytes`, as `fnv1a64:<16 hex digits>` (computed in 32-bit halves). */
export function digest(bytes: Uint8Array): string {
  let lo = 0x84222325;
  let hi = 0xcbf29ce4;
  for (let i = 0; i < bytes.length; i++) {
    lo = (lo ^ (bytes[i] as number)) >>> 0;
    // h * 0x100000001b3 = h * 0x1b3 + (h << 40), modulo 2^64.
    const l = lo * 0x1b3;
    hi = (hi * 0x1b3 + ((lo << 8) >>> 0) + Math.floor(l / 0x1_0000_0000)) >>> 0;
    lo = l >>> 0;
  }
  return `fnv1a64:${hi.toString(16).padStart(8, '0')}${lo.toString(16).padStart(8, '0')}`;
}

const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
const unhex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'hex'));
/** Byte strings up to this length are recorded in full; longer ones as a digest. */
const INLINE_BYTES = 256;

/** Bytes a call produced: in full up to INLINE_BYTES, else as a digest. */
function bytesValue(b: Uint8Array): Json {
  return b.length <= INLINE_BYTES ? { $bytes: hex(b) } : { $digest: digest(b), len: b.length };
}

/** Bytes a call consumed: always replayable — a run of one byte value compactly, else in full. */
function inputBytes(b: Uint8Array): Json {
  const first = b[0];
  if (b.length > 16 && first !== undefined && b.every((x) => x === first))
    return { $fill: first, len: b.length };
  return { $bytes: hex(b) };
}

// ---- normalised results -------------------------------------------------------------------------

/**
 * A KVM_RUN result as the trace records it: exit reason by name; MMIO data only for writes (the
 * data of a read exit is whatever kvm_run held before, and differs between backends); the
 * memory-fault record only when this run wrote it (RUN-3).
 */
export function normalizeRun(r: RunResult): Json {
  const out: Record<string, Json> = { ret: r.ret, exit: r.exitReasonName };
  if (r.errno !== undefined) out['errno'] = r.errno;
  if (r.mmio) {
    out['mmio'] = {
      physAddr: r.mmio.physAddr,
      len: r.mmio.len,
      isWrite: r.mmio.isWrite,
      ...(r.mmio.isWrite ? { data: hex(r.mmio.data.subarray(0, r.mmio.len)) } : {}),
    };
  }
  if (r.io) {
    out['io'] = {
      direction: r.io.direction,
      size: r.io.size,
      port: r.io.port,
      count: r.io.count,
      data: hex(r.io.data.subarray(0, r.io.size * r.io.count)),
    };
  }
  if (r.memoryFaultValid === true && r.memoryFault) {
    out['memoryFault'] = { flags: r.memoryFault.flags, gpa: r.memoryFault.gpa, size: r.memoryFault.size };
  }
  if (r.hypercall) {
    out['hypercall'] = { nr: r.hypercall.nr, args: [...r.hypercall.args], flags: r.hypercall.flags };
  }
  if (r.internal) out['internal'] = { suberror: r.internal.suberror };
  return out;
}

/**
 * The registers a guest program defines on both backends: r8..r15 (the IR's registers) and rbx
 * (the value the last `cmp` loaded). rip, rflags and the compiled code's scratch registers differ
 * by construction between the interpreter and x86 code, so they are recorded but not compared.
 */
export const PORTABLE_REGS = ['rbx', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15'] as const;

function encodeRegs(regs: Regs): Json {
  const out: Record<string, Json> = {};
  for (const [k, v] of Object.entries(regs)) out[k] = { $big: (v as bigint).toString() };
  return out;
}

// ---- generic value codec ------------------------------------------------------------------------

/** Encodes plain data (program IR, structs): bigints and byte arrays get tagged objects. */
function encodePlain(v: unknown): Json {
  if (v === null || typeof v === 'boolean' || typeof v === 'number' || typeof v === 'string') return v;
  if (typeof v === 'bigint') return { $big: v.toString() };
  if (v instanceof Uint8Array) return inputBytes(v);
  if (Array.isArray(v)) return v.map((x) => (x === undefined ? null : encodePlain(x)));
  if (typeof v === 'object') {
    const out: Record<string, Json> = {};
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
      if (x !== undefined) out[k] = encodePlain(x);
    }
    return out;
  }
  throw new TypeError(`cannot record a value of type ${typeof v}`);
}

function isObj(v: Json): v is { readonly [k: string]: Json } {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

// ---- the recorder -------------------------------------------------------------------------------

interface KnownMap {
  readonly sym: string;
  readonly start: number;
  readonly length: number;
}

interface SlotRecord {
  gpa: number;
  readonly size: number;
  readonly hva: number;
  flags: number;
}

type Kind = 'kvm' | 'vm' | 'vcpu';

/** The recording state shared by a host wrapper and the objects it hands out. */
class Recorder {
  readonly calls: TraceCall[] = [];
  private readonly counters = new Map<string, number>();
  private readonly fdSym = new Map<number, string>();
  private readonly symFd = new Map<string, number>();
  private readonly maps: KnownMap[] = [];
  private readonly mapBySym = new Map<string, KnownMap>();
  private readonly inos = new Map<number, string>();
  readonly objects = new Map<string, RecKvm | RecVm | RecVcpu>();
  /** Memslots per VM handle, as the kernel holds them after each successful call. */
  readonly slots = new Map<string, Map<number, SlotRecord>>();

  next(prefix: string): string {
    const n = (this.counters.get(prefix) ?? 0) + 1;
    this.counters.set(prefix, n);
    return `${prefix}${n}`;
  }

  // fds
  newFd(fd: number, prefix: 'f' | 'g'): Json {
    const sym = this.next(prefix);
    this.bindFd(fd, sym);
    return { $fd: sym };
  }
  bindFd(fd: number, sym: string): void {
    this.fdSym.set(fd, sym);
    this.symFd.set(sym, fd);
  }
  dropFd(fd: number): void {
    const sym = this.fdSym.get(fd);
    if (sym !== undefined) this.symFd.delete(sym);
    this.fdSym.delete(fd);
  }
  fd(fd: number): Json {
    const sym = this.fdSym.get(fd);
    return sym === undefined ? fd : { $fd: sym };
  }
  fdKind(fd: number): string | undefined {
    return this.fdSym.get(fd)?.replace(/[0-9]+$/, '');
  }
  fdOf(sym: string): number {
    const fd = this.symFd.get(sym);
    if (fd === undefined) throw new ReplayError(`fd handle ${sym} is not open in this replay`);
    return fd;
  }

  // host addresses
  newMap(start: number, length: number): Json {
    const m: KnownMap = { sym: this.next('m'), start, length };
    this.maps.push(m);
    this.mapBySym.set(m.sym, m);
    return { $hva: m.sym, off: 0 };
  }
  /** `addr` relative to the newest mapping containing it, else to one it ends (an end pointer). */
  hva(addr: number): Json {
    for (let i = this.maps.length - 1; i >= 0; i--) {
      const m = this.maps[i] as KnownMap;
      if (addr >= m.start && addr < m.start + m.length) return { $hva: m.sym, off: addr - m.start };
    }
    for (let i = this.maps.length - 1; i >= 0; i--) {
      const m = this.maps[i] as KnownMap;
      if (addr === m.start + m.length) return { $hva: m.sym, off: m.length };
    }
    return addr;
  }
  hvaOf(sym: string, off: number): number {
    const m = this.mapBySym.get(sym);
    if (m === undefined) throw new ReplayError(`mapping handle ${sym} was never created in this replay`);
    return m.start + off;
  }

  ino(ino: number): Json {
    let sym = this.inos.get(ino);
    if (sym === undefined) {
      sym = this.next('i');
      this.inos.set(ino, sym);
    }
    return { $ino: sym };
  }

  newObject<T extends RecKvm | RecVm | RecVcpu>(kind: Kind, make: (sym: string) => T): T {
    const sym = this.next(kind);
    const obj = make(sym);
    this.objects.set(sym, obj);
    this.bindFd(obj.fd, sym);
    if (kind === 'vm') this.slots.set(sym, new Map());
    return obj;
  }

  /** Records one call; rethrows what `fn` threw after recording it. */
  call<T>(
    on: string,
    method: string,
    args: readonly Json[],
    fn: () => T,
    encode: (v: T) => Json,
    after?: () => Json,
  ): T {
    const i = this.calls.length;
    let value: T;
    try {
      value = fn();
    } catch (e) {
      const rec: TraceCall = { i, on, method, args, out: outcomeOfError(e) };
      this.calls.push(after ? { ...rec, after: after() } : rec);
      throw e;
    }
    const rec: TraceCall = { i, on, method, args, out: { ok: encode(value) } };
    this.calls.push(after ? { ...rec, after: after() } : rec);
    return value;
  }

  /** Records `close()` of a KVM object (vcpu, vm, kvm) and forgets its fd's handle. */
  closeObject(sym: string, inner: { readonly fd: number; close(): 0 }): 0 {
    return this.call(
      sym,
      'close',
      [],
      () => {
        const fd = inner.fd;
        const ret = inner.close();
        this.dropFd(fd);
        return ret;
      },
      num,
    );
  }

  /** Applies a successful KVM_SET_USER_MEMORY_REGION[2] to the slot record (MR-12..MR-14). */
  applySlot(vm: string, r: UserspaceMemoryRegion): void {
    const slots = this.slots.get(vm);
    if (slots === undefined) return;
    const key = r.slot >>> 0;
    const old = slots.get(key);
    if (r.memorySize === 0) {
      slots.delete(key);
    } else if (old !== undefined) {
      old.gpa = r.guestPhysAddr;
      old.flags = r.flags;
    } else {
      slots.set(key, { gpa: r.guestPhysAddr, size: r.memorySize, hva: r.userspaceAddr, flags: r.flags });
    }
  }

  /** The host address of `gpa` in address space 0 of `vm`, with the bytes left in its slot. */
  translate(vm: string, gpa: number): [number, number] | null {
    for (const [key, s] of this.slots.get(vm) ?? []) {
      if (key >>> 16 !== 0) continue;
      if (gpa >= s.gpa && gpa < s.gpa + s.size) return [s.hva + (gpa - s.gpa), s.gpa + s.size - gpa];
    }
    return null;
  }
}

function outcomeOfError(e: unknown): TraceOutcome {
  if (e instanceof KvmError)
    return e.rule === undefined ? { errno: e.code } : { errno: e.code, rule: e.rule };
  if (e instanceof HostFault) return { fault: e.signal };
  if (e instanceof Error) return { threw: e.name, message: e.message };
  return { threw: typeof e, message: String(e) };
}

/** Thrown when a trace cannot be replayed (a handle that the replay never created). */
export class ReplayError extends Error {
  override readonly name = 'ReplayError';
}

const num = (v: number): Json => v;
const zero = (): Json => 0;

function encodeStat(r: Recorder, st: Stat): Json {
  return { mode: st.mode, ino: r.ino(st.ino), size: st.size, blocks: st.blocks, blksize: st.blksize };
}

function encodeRegion(r: Recorder, region: UserspaceMemoryRegion2): Json {
  const out: Record<string, Json> = {
    slot: region.slot,
    flags: region.flags,
    guestPhysAddr: region.guestPhysAddr,
    memorySize: region.memorySize,
    userspaceAddr: r.hva(region.userspaceAddr),
  };
  if (region.guestMemfdOffset !== undefined) out['guestMemfdOffset'] = region.guestMemfdOffset;
  if (region.guestMemfd !== undefined) out['guestMemfd'] = r.fd(region.guestMemfd);
  if (region.privateFd !== undefined) out['privateFd'] = r.fd(region.privateFd);
  if (region.privateOffset !== undefined) out['privateOffset'] = region.privateOffset;
  return out;
}

/**
 * The shared kvm_run fields a VMM writes before KVM_RUN, as the run call's argument. MMIO data is
 * recorded only after an MMIO read exit and hypercall.ret only after a hypercall exit: those are
 * the runs that consume them (RO-3, HC-4); at other times the bytes belong to the exit union's
 * other members and differ between backends.
 */
function runInput(k: KvmRunShared, last: RunResult | null): Json {
  const input: Record<string, Json> = { immediateExit: k.immediateExit };
  if (last?.ret === 0 && last.mmio !== undefined && !last.mmio.isWrite)
    input['mmioData'] = hex(k.mmio.data.subarray(0, 8));
  if (last?.ret === 0 && last.hypercall !== undefined) input['hypercallRet'] = k.hypercall.ret;
  return input;
}

/** A VM handed out by a recording host: a `Vm` plus a recorded guest-memory digest. */
export interface RecordingVm extends VmApi {
  /** The handle this VM has in the trace (`vm1`). */
  readonly sym: string;
  createVcpu(id: number): VcpuApi & { readonly sym: string };
  /**
   * Not an ioctl: a digest of `len` bytes of guest memory at `gpa`, read through the memslots'
   * userspace_addr (address space 0) as the recorder tracked them. Recorded, so a replay compares it.
   */
  digest(gpa: number, len: number): string;
}

/** The /dev/kvm fd handed out by a recording host. */
export interface RecordingKvm extends KvmApi {
  readonly sym: string;
  createVm(type?: number): RecordingVm;
}

/** A vCPU that records. */
class RecVcpu implements VcpuApi {
  constructor(
    private readonly r: Recorder,
    readonly sym: string,
    readonly inner: VcpuApi,
  ) {}
  get fd(): number {
    return this.inner.fd;
  }
  get id(): number {
    return this.inner.id;
  }
  get kvmRun(): KvmRunShared {
    return this.inner.kvmRun;
  }
  /** The previous run's result: which kvm_run fields the next run consumes. */
  private last: RunResult | null = null;
  run(): RunResult {
    return this.r.call(
      this.sym,
      'run',
      [runInput(this.inner.kvmRun, this.last)],
      () => {
        this.last = null;
        this.last = this.inner.run();
        return this.last;
      },
      normalizeRun,
    );
  }
  getRegs(): Regs {
    return this.r.call(this.sym, 'getRegs', [], () => this.inner.getRegs(), encodeRegs);
  }
  setRegs(regs: Partial<Regs>): 0 {
    return this.r.call(this.sym, 'setRegs', [encodePlain(regs)], () => this.inner.setRegs(regs), num);
  }
  preFaultMemory(range: PreFaultMemory): 0 {
    return this.r.call(
      this.sym,
      'preFaultMemory',
      [encodePlain(range)],
      () => this.inner.preFaultMemory(range),
      num,
      () => ({ gpa: range.gpa, size: range.size }),
    );
  }
  setProgram(program: Program, layout?: ProgramLayout): void {
    const args = layout === undefined ? [encodePlain(program)] : [encodePlain(program), encodePlain(layout)];
    this.r.call(
      this.sym,
      'setProgram',
      args,
      () => this.inner.setProgram(program, layout),
      () => null,
    );
  }
  close(): 0 {
    return this.r.closeObject(this.sym, this.inner);
  }
}

/** A VM that records. */
class RecVm implements RecordingVm {
  constructor(
    private readonly r: Recorder,
    readonly sym: string,
    readonly inner: VmApi,
  ) {}
  get fd(): number {
    return this.inner.fd;
  }
  get type(): number {
    return this.inner.type;
  }
  checkExtension(cap: number): number {
    return this.r.call(this.sym, 'checkExtension', [cap], () => this.inner.checkExtension(cap), num);
  }
  enableCap(cap: EnableCap): 0 {
    return this.r.call(this.sym, 'enableCap', [encodePlain(cap)], () => this.inner.enableCap(cap), num);
  }
  setUserMemoryRegion(region: UserspaceMemoryRegion): 0 {
    return this.r.call(
      this.sym,
      'setUserMemoryRegion',
      [encodeRegion(this.r, region)],
      () => {
        const ret = this.inner.setUserMemoryRegion(region);
        this.r.applySlot(this.sym, region);
        return ret;
      },
      num,
    );
  }
  setUserMemoryRegion2(region: UserspaceMemoryRegion2): 0 {
    return this.r.call(
      this.sym,
      'setUserMemoryRegion2',
      [encodeRegion(this.r, region)],
      () => {
        const ret = this.inner.setUserMemoryRegion2(region);
        this.r.applySlot(this.sym, region);
        return ret;
      },
      num,
    );
  }
  createGuestMemfd(args: CreateGuestMemfd): number {
    return this.r.call(
      this.sym,
      'createGuestMemfd',
      [encodePlain(args)],
      () => this.inner.createGuestMemfd(args),
      (fd) => this.r.newFd(fd, 'g'),
    );
  }
  setMemoryAttributes(attrs: MemoryAttributes): 0 {
    return this.r.call(
      this.sym,
      'setMemoryAttributes',
      [encodePlain(attrs)],
      () => this.inner.setMemoryAttributes(attrs),
      num,
    );
  }
  getDirtyLog(log: DirtyLog): 0 {
    return this.r.call(
      this.sym,
      'getDirtyLog',
      [{ slot: log.slot, dirtyBitmap: { $buf: log.dirtyBitmap.length } }],
      () => this.inner.getDirtyLog(log),
      num,
      () => bytesValue(log.dirtyBitmap),
    );
  }
  clearDirtyLog(log: ClearDirtyLog): 0 {
    return this.r.call(
      this.sym,
      'clearDirtyLog',
      [encodePlain(log)],
      () => this.inner.clearDirtyLog(log),
      num,
    );
  }
  createVcpu(id: number): RecVcpu {
    return this.r.call(
      this.sym,
      'createVcpu',
      [id],
      () => {
        const inner = this.inner.createVcpu(id);
        return this.r.newObject('vcpu', (sym) => new RecVcpu(this.r, sym, inner));
      },
      (v) => ({ $obj: v.sym }),
    );
  }
  close(): 0 {
    return this.r.closeObject(this.sym, this.inner);
  }
  digest(gpa: number, len: number): string {
    return this.r.call(
      this.sym,
      'digest',
      [gpa, len],
      () => {
        const bytes = new Uint8Array(len);
        let done = 0;
        while (done < len) {
          const t = this.r.translate(this.sym, gpa + done);
          if (t === null) throw new ReplayError(`no memslot covers gpa 0x${(gpa + done).toString(16)}`);
          const n = Math.min(len - done, t[1]);
          bytes.set(this.host().readMemory(t[0], n), done);
          done += n;
        }
        return digest(bytes);
      },
      (d) => d,
    );
  }
  /** Set by the host wrapper: the host whose memory `digest` reads. */
  host: () => Host = () => {
    throw new ReplayError('this VM has no host');
  };
}

/** A /dev/kvm fd that records. */
class RecKvm implements RecordingKvm {
  constructor(
    private readonly r: Recorder,
    readonly sym: string,
    readonly inner: KvmApi,
    private readonly host: Host,
  ) {}
  get fd(): number {
    return this.inner.fd;
  }
  getApiVersion(): number {
    return this.r.call(this.sym, 'getApiVersion', [], () => this.inner.getApiVersion(), num);
  }
  checkExtension(cap: number): number {
    return this.r.call(this.sym, 'checkExtension', [cap], () => this.inner.checkExtension(cap), num);
  }
  getVcpuMmapSize(): number {
    return this.r.call(this.sym, 'getVcpuMmapSize', [], () => this.inner.getVcpuMmapSize(), num);
  }
  createVm(type?: number): RecVm {
    return this.r.call(
      this.sym,
      'createVm',
      type === undefined ? [] : [type],
      () => {
        const inner = this.inner.createVm(type);
        const vm = this.r.newObject('vm', (sym) => new RecVm(this.r, sym, inner));
        vm.host = () => this.host;
        return vm;
      },
      (v) => ({ $obj: v.sym }),
    );
  }
  close(): 0 {
    return this.r.closeObject(this.sym, this.inner);
  }
}

/** A `Host` that records every call into a trace; `trace()` returns it. */
export class RecordingHost implements Host {
  private readonly r = new Recorder();

  constructor(readonly inner: Host) {
    recorders.set(this, this.r);
  }

  get backend(): 'model' | 'kvm' {
    return this.inner.backend;
  }

  /** The trace so far (a snapshot). */
  trace(meta?: { readonly [k: string]: Json }): Trace {
    const t: Trace = {
      format: TRACE_FORMAT,
      version: TRACE_VERSION,
      backend: this.inner.backend,
      calls: [...this.r.calls],
    };
    return meta === undefined ? t : { ...t, meta };
  }

  openKvm(): RecordingKvm {
    return this.r.call(
      'host',
      'openKvm',
      [],
      () => {
        const inner = this.inner.openKvm();
        return this.r.newObject('kvm', (sym) => new RecKvm(this.r, sym, inner, this.inner));
      },
      (k) => ({ $obj: k.sym }),
    );
  }
  dispose(): void {
    this.r.call(
      'host',
      'dispose',
      [],
      () => this.inner.dispose(),
      () => null,
    );
  }
  memfdCreate(name: string, flags?: number): number {
    return this.r.call(
      'host',
      'memfdCreate',
      flags === undefined ? [name] : [name, flags],
      () => this.inner.memfdCreate(name, flags),
      (fd) => this.r.newFd(fd, 'f'),
    );
  }
  ftruncate(fd: number, length: number): 0 {
    return this.r.call(
      'host',
      'ftruncate',
      [this.r.fd(fd), length],
      () => this.inner.ftruncate(fd, length),
      num,
    );
  }
  fallocate(fd: number, mode: number, offset: number, len: number): 0 {
    return this.r.call(
      'host',
      'fallocate',
      [this.r.fd(fd), mode, offset, len],
      () => this.inner.fallocate(fd, mode, offset, len),
      num,
    );
  }
  pread(fd: number, buf: Uint8Array, count: number, offset: number): number {
    return this.r.call(
      'host',
      'pread',
      [this.r.fd(fd), { $buf: buf.length }, count, offset],
      () => this.inner.pread(fd, buf, count, offset),
      num,
      () => bytesValue(buf),
    );
  }
  pwrite(fd: number, buf: Uint8Array, count: number, offset: number): number {
    return this.r.call(
      'host',
      'pwrite',
      [this.r.fd(fd), inputBytes(buf), count, offset],
      () => this.inner.pwrite(fd, buf, count, offset),
      num,
    );
  }
  fstat(fd: number): Stat {
    return this.r.call(
      'host',
      'fstat',
      [this.r.fd(fd)],
      () => this.inner.fstat(fd),
      (st) => encodeStat(this.r, st),
    );
  }
  close(fd: number): 0 {
    return this.r.call(
      'host',
      'close',
      [this.r.fd(fd)],
      () => {
        const ret = this.inner.close(fd);
        this.r.dropFd(fd);
        return ret;
      },
      zero,
    );
  }
  dup(fd: number): number {
    const kind = this.r.fdKind(fd) === 'g' ? 'g' : 'f';
    return this.r.call(
      'host',
      'dup',
      [this.r.fd(fd)],
      () => this.inner.dup(fd),
      (nfd) => this.r.newFd(nfd, kind),
    );
  }
  mmap(addr: number, length: number, prot: number, flags: number, fd: number, offset: number): number {
    return this.r.call(
      'host',
      'mmap',
      [this.r.hva(addr), length, prot, flags, this.r.fd(fd), offset],
      () => this.inner.mmap(addr, length, prot, flags, fd, offset),
      (hva) => this.r.newMap(hva, length),
    );
  }
  munmap(addr: number, length: number): 0 {
    return this.r.call(
      'host',
      'munmap',
      [this.r.hva(addr), length],
      () => this.inner.munmap(addr, length),
      num,
    );
  }
  mprotect(addr: number, length: number, prot: number): 0 {
    return this.r.call(
      'host',
      'mprotect',
      [this.r.hva(addr), length, prot],
      () => this.inner.mprotect(addr, length, prot),
      num,
    );
  }
  madvise(addr: number, length: number, advice: number): 0 {
    return this.r.call(
      'host',
      'madvise',
      [this.r.hva(addr), length, advice],
      () => this.inner.madvise(addr, length, advice),
      num,
    );
  }
  readMemory(hva: number, length: number): Uint8Array {
    return this.r.call(
      'host',
      'readMemory',
      [this.r.hva(hva), length],
      () => this.inner.readMemory(hva, length),
      bytesValue,
    );
  }
  writeMemory(hva: number, bytes: Uint8Array): void {
    this.r.call(
      'host',
      'writeMemory',
      [this.r.hva(hva), inputBytes(bytes)],
      () => this.inner.writeMemory(hva, bytes),
      () => null,
    );
  }
  /** Not a system call: a recorded digest of `length` bytes of this process's memory at `hva`. */
  digest(hva: number, length: number): string {
    return this.r.call(
      'host',
      'digest',
      [this.r.hva(hva), length],
      () => digest(this.inner.readMemory(hva, length)),
      (d) => d,
    );
  }
}

/** The recorder of each recording host (module-private, for `replay`). */
const recorders = new WeakMap<RecordingHost, Recorder>();

/** Wraps `inner` so that every call on it and on the objects it returns is recorded. */
export function recordingHost(inner: Host): RecordingHost {
  return new RecordingHost(inner);
}

// ---- files ----------------------------------------------------------------------------------------

/** The trace as JSON text (one call per line, so diffs of traces stay readable). */
export function traceToJson(trace: Trace): string {
  const head = { format: trace.format, version: trace.version, backend: trace.backend };
  const meta = trace.meta === undefined ? '' : `  "meta": ${JSON.stringify(trace.meta)},\n`;
  const calls = trace.calls.map((c) => `    ${JSON.stringify(c)}`).join(',\n');
  const h = JSON.stringify(head);
  return `{\n  ${h.slice(1, -1).replace(/,"/g, ', "')},\n${meta}  "calls": [\n${calls}\n  ]\n}\n`;
}

/** Parses and validates a trace (format, version, call shape); throws TypeError naming the problem. */
export function traceFromJson(text: string): Trace {
  const v = JSON.parse(text) as Json;
  if (!isObj(v)) throw new TypeError('a trace is a JSON object');
  if (v['format'] !== TRACE_FORMAT)
    throw new TypeError(`format is ${String(v['format'])}, not ${TRACE_FORMAT}`);
  if (v['version'] !== TRACE_VERSION) {
    throw new TypeError(
      `version ${String(v['version'])} is not supported (this reader reads ${TRACE_VERSION})`,
    );
  }
  const backend = v['backend'];
  if (backend !== 'model' && backend !== 'kvm') throw new TypeError(`backend ${String(backend)} is unknown`);
  const calls = v['calls'];
  if (!Array.isArray(calls)) throw new TypeError('calls is not an array');
  (calls as readonly Json[]).forEach((c, i) => {
    if (
      !isObj(c) ||
      c['i'] !== i ||
      typeof c['on'] !== 'string' ||
      typeof c['method'] !== 'string' ||
      !Array.isArray(c['args']) ||
      !isObj(c['out'] ?? null)
    ) {
      throw new TypeError(`calls[${i}] is not a call record`);
    }
  });
  const meta = v['meta'];
  const t: Trace = { format: TRACE_FORMAT, version: TRACE_VERSION, backend, calls: calls as TraceCall[] };
  return isObj(meta ?? null) ? { ...t, meta: meta as { readonly [k: string]: Json } } : t;
}

/** One host made by a `recordingBackend`, and what it was asked to be. */
export interface Recording {
  readonly host: RecordingHost;
  readonly request: HostRequest;
}

/**
 * `inner`, with every host it makes wrapped in `recordingHost` (one recording per scenario run);
 * read-only 0xff slots go through the recorded `Host` (holes.ts `genericReadonlyFf`).
 * `traceOf` gives a recording's trace with the host's options in `meta.hostRequest`, so that a
 * replay (`hostRequestOf`) asks its backend for the same kind of host.
 */
export function recordingBackend(inner: Backend): {
  readonly backend: Backend;
  readonly recordings: Recording[];
} {
  const recordings: Recording[] = [];
  const backend: Backend = {
    ...inner,
    create(req) {
      const made = inner.create(req);
      const host = recordingHost(made.host);
      recordings.push({ host, request: req });
      // Not the backend's own read-only 0xff slots (src/host/allones.ts maps with mmapRepeated,
      // outside the interface a trace records): the machine makes them through the recorded host.
      return { host, model: made.model };
    },
  };
  return { backend, recordings };
}

/** A recording's trace, with its host request in `meta.hostRequest`. */
export function traceOf(r: Recording, meta: { readonly [k: string]: Json } = {}): Trace {
  return r.host.trace({ ...meta, hostRequest: JSON.parse(JSON.stringify(r.request)) as Json });
}

/** The host options a trace was recorded with (`meta.hostRequest`; none: the default host). */
export function hostRequestOf(trace: Trace): HostRequest {
  const r = trace.meta?.['hostRequest'];
  if (r === undefined || r === null) return {};
  if (typeof r !== 'object' || Array.isArray(r))
    throw new ReplayError("the trace's meta.hostRequest is not an object");
  return r as HostRequest; // written by traceOf from a HostRequest; a backend ignores what it lacks
}

/**
 * The object a recording wrapper stands for (itself if it is none): what introspection of the
 * model (reports, scenarios that watch a VM's destruction) must look at under `--trace`.
 */
export function unwrapRecorded<T extends object>(x: T): T {
  let o: object = x;
  while (o instanceof RecVm || o instanceof RecVcpu || o instanceof RecKvm) o = o.inner;
  return o as T; // a wrapper stands for an object of the same interface
}

export function writeTrace(path: string, trace: Trace): void {
  writeFileSync(path, traceToJson(trace));
}

export function readTrace(path: string): Trace {
  return traceFromJson(readFileSync(path, 'utf8'));
}

// ---- replay ---------------------------------------------------------------------------------------

/** The first call whose outcome differs. */
export interface Divergence {
  readonly ok: false;
  /** Index of the call in the trace. */
  readonly index: number;
  readonly expected: { readonly out: TraceOutcome; readonly after?: Json };
  readonly actual: { readonly out: TraceOutcome; readonly after?: Json };
  /** The call as recorded. */
  readonly call: TraceCall;
}

export type ReplayResult =
  | { readonly ok: true; readonly tolerated: readonly { readonly index: number; readonly why: string }[] }
  | Divergence;

export interface ReplayOptions {
  /**
   * Called for each call whose outcome differs: a string (the reason, e.g. a documented host
   * deviation) lets the replay go on; null stops it there.
   */
  readonly tolerate?: (expected: TraceCall, actual: TraceCall) => string | null;
  /** Called after each call is replayed: `done` of `total` calls (progress display). */
  readonly onCall?: (done: number, total: number) => void;
}

function decode(r: Recorder, v: Json): unknown {
  if (v === null || typeof v !== 'object') return v;
  if (Array.isArray(v)) return v.map((x) => decode(r, x));
  const o = v as { readonly [k: string]: Json };
  if (typeof o['$big'] === 'string') return BigInt(o['$big']);
  if (typeof o['$bytes'] === 'string') return unhex(o['$bytes']);
  if (typeof o['$buf'] === 'number') return new Uint8Array(o['$buf']);
  if (typeof o['$fill'] === 'number') return new Uint8Array(Number(o['len'] ?? 0)).fill(o['$fill']);
  if (typeof o['$fd'] === 'string') return r.fdOf(o['$fd']);
  if (typeof o['$hva'] === 'string') return r.hvaOf(o['$hva'], Number(o['off'] ?? 0));
  if (typeof o['$obj'] === 'string') return objectOf(r, o['$obj']);
  if (typeof o['$digest'] === 'string')
    throw new ReplayError('a digested byte string cannot be replayed as input');
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(o)) out[k] = decode(r, x);
  return out;
}

function objectOf(r: Recorder, sym: string): RecKvm | RecVm | RecVcpu {
  const o = r.objects.get(sym);
  if (o === undefined) throw new ReplayError(`object handle ${sym} was never created in this replay`);
  return o;
}

/** JSON equality (key order ignored). */
export function jsonEqual(a: Json | undefined, b: Json | undefined): boolean {
  if (a === b) return true;
  if (a === null || b === null || a === undefined || b === undefined) return false;
  if (typeof a !== 'object' || typeof b !== 'object') return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    const bb = b as readonly Json[];
    return a.length === bb.length && a.every((x, i) => jsonEqual(x, bb[i]));
  }
  const ao = a as { readonly [k: string]: Json };
  const bo = b as { readonly [k: string]: Json };
  const ak = Object.keys(ao);
  if (ak.length !== Object.keys(bo).length) return false;
  return ak.every((k) => k in bo && jsonEqual(ao[k], bo[k]));
}

/** What of a result is compared: errno without rule/message, portable registers only. */
function comparable(c: TraceCall): Json {
  const out = c.out;
  let o: Json;
  if ('errno' in out) o = { errno: out.errno };
  else if ('threw' in out) o = { threw: out.threw };
  else if ('fault' in out) o = { fault: out.fault };
  else if (c.method === 'getRegs' && isObj(out.ok)) {
    const regs = out.ok;
    const picked: Record<string, Json> = {};
    for (const k of PORTABLE_REGS) picked[k] = regs[k] ?? null;
    o = { ok: picked };
  } else o = { ok: out.ok };
  return c.after === undefined ? o : { o, after: c.after };
}

/** Whether two recordings of the same call had the same outcome (see `comparable`). */
export function sameOutcome(expected: TraceCall, actual: TraceCall): boolean {
  return jsonEqual(comparable(expected), comparable(actual));
}

function hasHypercall(ops: readonly Op[]): boolean {
  return ops.some((op) => op.op === 'hypercall' || (op.op === 'loop' && hasHypercall(op.body)));
}

/**
 * Replays `trace` on `host` (through a recording wrapper) and compares every call's outcome with
 * the recorded one. Returns `{ ok: true }` or the first divergence (calls after it are not run).
 * The host is left as the trace leaves it; dispose it afterwards.
 *
 * A guest program with a hypercall is not run on a PVM host (docs/host-deviations.md #2: VMCALL
 * never exits there, so KVM_RUN would not return): that call diverges with `ReplayRefused`.
 */
export function replay(trace: Trace, host: Host, options: ReplayOptions = {}): ReplayResult {
  const rec = recordingHost(host);
  const r = recorders.get(rec) as Recorder; // set by the constructor
  const tolerated: { index: number; why: string }[] = [];
  const pvm = host.backend === 'kvm' && existsSync('/sys/module/kvm_pvm');
  for (const call of trace.calls) {
    const before = r.calls.length;
    let refused: string | null = null;
    let issueError = 'the call was not issued';
    try {
      const target: object = call.on === 'host' ? rec : objectOf(r, call.on);
      const args = call.args.map((a) => decode(r, a));
      if (call.method === 'setProgram' && pvm && hasHypercall((args[0] as Program).ops)) {
        refused = 'a hypercall op on PVM would spin in KVM_RUN (docs/host-deviations.md #2)';
      } else if (call.method === 'run') {
        const input = call.args[0];
        const vcpu = target as RecVcpu;
        if (isObj(input ?? null)) {
          const inp = input as { readonly [k: string]: Json };
          vcpu.kvmRun.immediateExit = Number(inp['immediateExit'] ?? 0);
          if (typeof inp['mmioData'] === 'string')
            vcpu.kvmRun.mmio.data.set(unhex(inp['mmioData']).subarray(0, 8));
          if (typeof inp['hypercallRet'] === 'number') vcpu.kvmRun.hypercall.ret = inp['hypercallRet'];
        }
        vcpu.run();
      } else {
        const fn = (target as Record<string, unknown>)[call.method];
        if (typeof fn !== 'function') throw new ReplayError(`${call.on} has no method ${call.method}`);
        (fn as (...a: unknown[]) => unknown).apply(target, args);
      }
    } catch (e) {
      // The wrapper recorded the outcome — unless the call could not be issued at all.
      if (r.calls.length === before) issueError = e instanceof Error ? e.message : String(e);
    }
    let actual: TraceCall;
    if (refused !== null) {
      actual = {
        i: call.i,
        on: call.on,
        method: call.method,
        args: call.args,
        out: { threw: 'ReplayRefused', message: refused },
      };
    } else if (r.calls.length === before) {
      actual = {
        i: call.i,
        on: call.on,
        method: call.method,
        args: call.args,
        out: { threw: 'ReplayError', message: issueError },
      };
    } else {
      actual = r.calls[r.calls.length - 1] as TraceCall;
    }
    if (!sameOutcome(call, actual)) {
      const why = refused === null ? (options.tolerate?.(call, actual) ?? null) : null;
      if (why === null) {
        return {
          ok: false,
          index: call.i,
          expected: call.after === undefined ? { out: call.out } : { out: call.out, after: call.after },
          actual: actual.after === undefined ? { out: actual.out } : { out: actual.out, after: actual.after },
          call,
        };
      }
      tolerated.push({ index: call.i, why });
    }
    options.onCall?.(call.i + 1, trace.calls.length);
  }
  return { ok: true, tolerated };
}

// ---- documented host deviations -------------------------------------------------------------------

/**
 * If the difference between a call recorded on the model (`expected`) and the same call on the
 * real kernel (`actual`) is one that docs/host-deviations.md documents for this machine's KVM,
 * returns its description ("#7 GB-5: …"); otherwise null. Only differences a trace can show
 * unambiguously are recognised.
 */
export function documentedDeviation(expected: TraceCall, actual: TraceCall): string | null {
  const e = expected.out;
  const a = actual.out;
  const errnoE = 'errno' in e ? e.errno : null;
  const errnoA = 'errno' in a ? a.errno : null;
  const m = expected.method;
  if (
    m === 'setUserMemoryRegion2' &&
    errnoE === 'EEXIST' &&
    'rule' in e &&
    e.rule === 'GB-5' &&
    errnoA === 'EINVAL'
  ) {
    return '#7 GB-5: an overlapping guest_memfd binding is EINVAL on this kernel, EEXIST upstream';
  }
  if (m === 'fstat' && 'ok' in e && 'ok' in a && isObj(e.ok) && isObj(a.ok)) {
    const fd = expected.args[0];
    const gmem =
      isObj(fd ?? null) &&
      typeof (fd as { $fd?: Json }).$fd === 'string' &&
      String((fd as { $fd: string }).$fd).startsWith('g');
    if (gmem && a.ok['blocks'] === 0 && jsonEqual({ ...e.ok, blocks: 0 }, a.ok)) {
      return '#9 GM-3: guest_memfd st_blocks stays 0 on this kernel';
    }
  }
  if (m === 'checkExtension' && 'ok' in e && 'ok' in a) {
    const cap = expected.args[0];
    const known: Record<number, [string, Json]> = {
      233: ['#3 §1.4: KVM_CAP_MEMORY_ATTRIBUTES is 0 on this kernel', 0],
      235: ['#4 §1.4: KVM_CAP_VM_TYPES is 1 (DEFAULT only) on this kernel', 1],
      118: ['#5 MR-9: KVM_CAP_MULTI_ADDRESS_SPACE is 0 on this kernel', 0],
      236: ['#6 PF-2: KVM_CAP_PRE_FAULT_MEMORY is 0 on this kernel (shadow paging)', 0],
    };
    const k = typeof cap === 'number' ? known[cap] : undefined;
    if (k !== undefined && jsonEqual(a.ok, k[1])) return k[0];
  }
  if (m === 'setMemoryAttributes' && errnoA === 'ENOTTY') {
    return '#3 MA-0: KVM_SET_MEMORY_ATTRIBUTES is ENOTTY on this kernel';
  }
  if (m === 'createVm' && errnoA === 'EINVAL' && 'ok' in e) {
    return '#4 GEN-3: only KVM_X86_DEFAULT_VM exists on this kernel';
  }
  if ((m === 'setUserMemoryRegion' || m === 'setUserMemoryRegion2') && errnoA === 'EINVAL') {
    const region = expected.args[0];
    if (isObj(region ?? null) && typeof (region as { slot?: Json }).slot === 'number') {
      const slot = (region as { slot: number }).slot;
      if (slot >>> 16 === 1 && errnoE !== 'EINVAL') {
        return '#5 MR-9: address space 1 does not exist on this kernel';
      }
    }
  }
  if (m === 'preFaultMemory' && errnoA === 'EOPNOTSUPP') {
    return '#6 PF-2: KVM_PRE_FAULT_MEMORY is EOPNOTSUPP on this kernel (shadow paging)';
  }
  if ('threw' in a && a.threw === 'ReplayRefused') return `#2 HC-3: ${a.message}`;
  if (m === 'run' && 'ok' in a && isObj(a.ok) && 'ok' in e && isObj(e.ok)) {
    const eo = e.ok;
    const ao = a.ok;
    if (
      eo['ret'] === -1 &&
      eo['errno'] === 'EFAULT' &&
      eo['memoryFault'] === undefined &&
      ao['exit'] === 'KVM_EXIT_MMIO'
    ) {
      return '#1 RO-4: an access the host VMA does not allow exits as MMIO on this kernel';
    }
    const input = expected.args[0];
    if (
      isObj(input ?? null) &&
      (input as { immediateExit?: Json }).immediateExit === 1 &&
      eo['errno'] === 'EINTR' &&
      ao['errno'] === 'EINTR' &&
      eo['exit'] === 'KVM_EXIT_INTR'
    ) {
      return '#8 RUN-3: with immediate_exit, KVM_RUN does not write exit_reason on this kernel';
    }
  }
  return null;
}
