/**
 * Errors, the way the kernel reports them.
 *
 * - `KvmError`: a system call or ioctl returned -1. It carries the errno name and number
 *   (x86-64 values, `kvm-semantics.md` §1.5), the call that failed, the rule ID that decided it,
 *   and a message that names the offending value ("memory_size 4097 is not a multiple of 4096
 *   (MR-5)"). Both backends throw it, so callers match on `err.code` alone.
 * - `HostFault`: the process touched memory it may not (SIGSEGV) or whose backing is gone
 *   (SIGBUS). In the kernel that is a signal; in the model it is a typed error, never a crash.
 * - `kvmWarn`: the model's WARN_ON_ONCE. A broken invariant is a bug; under test
 *   (`setStrictInvariants(true)`, done by test/setup.ts) it throws, otherwise it is recorded.
 */

export const ERRNO = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ENOTTY: 25,
  EFBIG: 27,
  ENOSPC: 28,
  ESPIPE: 29,
  ENOSYS: 38,
  EOPNOTSUPP: 95,
  EHWPOISON: 133,
} as const;

export type ErrnoName = keyof typeof ERRNO;

const BY_NUMBER = new Map<number, ErrnoName>();
for (const [name, num] of Object.entries(ERRNO)) {
  if (!BY_NUMBER.has(num)) BY_NUMBER.set(num, name as ErrnoName);
}

/** The errno name for a number (e.g. from the real kernel), or `E<num>` if unknown to us. */
export function errnoName(num: number): ErrnoName | `E${number}` {
  return BY_NUMBER.get(num) ?? `E${num}`;
}

export interface KvmErrorInit {
  /** The call that failed: an ioctl name (`KVM_SET_USER_MEMORY_REGION2`) or a libc name (`mmap`). */
  readonly call: string;
  /** The rule of kvm-semantics.md that decided the errno (`MR-5`), if one did. */
  readonly rule?: string;
}

/** A call returned -1 with `errno` = `code`. */
export class KvmError extends Error {
  override readonly name = 'KvmError';
  readonly code: ErrnoName | `E${number}`;
  readonly errno: number;
  readonly call: string;
  readonly rule: string | undefined;
  /** The message without the call prefix: what was wrong, and the rule. */
  readonly detail: string;

  constructor(code: ErrnoName | `E${number}`, detail: string, init: KvmErrorInit) {
    const rule = init.rule;
    const ruleText = rule !== undefined && !detail.includes(`(${rule})`) ? ` (${rule})` : '';
    super(`${init.call}: ${code}: ${detail}${ruleText}`);
    this.code = code;
    this.errno = code.startsWith('E') && code in ERRNO ? ERRNO[code as ErrnoName] : Number(code.slice(1));
    this.call = init.call;
    this.rule = rule;
    this.detail = detail + ruleText;
  }
}

/** Throw a KvmError: `fail('EINVAL', 'memory_size 4097 is not a multiple of 4096', call, 'MR-5')`. */
export function fail(code: ErrnoName, detail: string, call: string, rule?: string): never {
  throw new KvmError(code, detail, rule === undefined ? { call } : { call, rule });
}

export type HostSignal = 'SIGSEGV' | 'SIGBUS';
/** si_code of the signal, as the kernel would deliver it. */
export type HostSignalCode = 'SEGV_MAPERR' | 'SEGV_ACCERR' | 'BUS_ADRERR' | 'BUS_MCEERR_AR';

/** The process touched memory it may not: the model's SIGSEGV/SIGBUS. */
export class HostFault extends Error {
  override readonly name = 'HostFault';
  constructor(
    readonly signal: HostSignal,
    readonly sigCode: HostSignalCode,
    /** The faulting host virtual address. */
    readonly address: number,
    detail: string,
  ) {
    super(`${signal} (${sigCode}) at hva 0x${address.toString(16)}: ${detail}`);
  }
}

let strictInvariants = false;
const warned = new Set<string>();
const warnings: string[] = [];

/** Make `kvmWarn` throw (tests) or only record (default). */
export function setStrictInvariants(on: boolean): void {
  strictInvariants = on;
}

/** Warnings recorded so far (non-strict mode). */
export function recordedWarnings(): readonly string[] {
  return warnings;
}

/** A broken invariant: the model's WARN_ON_ONCE. Throws under test, records once otherwise. */
export class InvariantError extends Error {
  override readonly name = 'InvariantError';
}

export function kvmWarn(message: string): void {
  if (strictInvariants) throw new InvariantError(message);
  if (!warned.has(message)) {
    warned.add(message);
    warnings.push(message);
  }
}

/** `assert(cond, msg)` for preconditions (the model's lockdep_assert_held / BUG_ON). */
export function assertInvariant(cond: boolean, message: string): asserts cond {
  if (!cond) {
    kvmWarn(message);
    if (!strictInvariants) throw new InvariantError(message);
  }
}
