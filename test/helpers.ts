/**
 * Test helpers: hosts that are checked for leaks, and errno assertions.
 *
 * `trackedHost()` returns a model host that `expectNoLeaks()` disposes and checks: after
 * everything was closed, no frame, fd, mapping, open invalidation bracket or page-lock waiter
 * may remain (the VS Code "leaked disposable" idea applied to kernel objects).
 */
import { expect } from 'vitest';
import { HostFault, KvmError } from '../src/core/errno.js';
import { createHost, type HostOptions, type ModelHost } from '../src/core/host.js';

const live: ModelHost[] = [];

export function trackedHost(options: HostOptions = {}): ModelHost {
  const h = createHost(options);
  live.push(h);
  return h;
}

/** Disposes every host made by trackedHost() and asserts nothing leaked. */
export function expectNoLeaks(): void {
  while (live.length > 0) {
    const h = live.pop() as ModelHost;
    h.dispose();
    expect(h.leaks()).toEqual({ frames: 0, fds: 0, vmas: 0, openInvalidations: 0, lockWaiters: 0 });
  }
}

/** Asserts that fn throws a KvmError with the given errno (and rule, if given). */
export function expectErrno(fn: () => unknown, code: string, rule?: string): KvmError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught, `expected ${code}${rule ? ` (${rule})` : ''} but the call succeeded`).toBeInstanceOf(
    KvmError,
  );
  const err = caught as KvmError;
  expect(err.code, err.message).toBe(code);
  if (rule !== undefined) expect(err.rule ?? err.message, err.message).toContain(rule);
  return err;
}

export const PAGE = 4096;
export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

/** The HostFault (SIGSEGV/SIGBUS) that fn raises; fails the test if it raises none. */
export function hostFaultOf(fn: () => unknown): HostFault {
  try {
    fn();
  } catch (e) {
    if (e instanceof HostFault) return e;
    throw e;
  }
  throw new Error('expected a HostFault');
}
