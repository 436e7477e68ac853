// realKvmAvailable() and its reasons: tests elsewhere skip with the reason in their title, so
// the reasons must be specific (a missing device, a device that is not KVM).
import { describe, expect, it } from 'vitest';
import { probeKvm, realKvmAvailable } from './probe.js';
import { trySys } from './sys.js';

const sys = trySys();
const noSys = 'error' in sys ? sys.error : '';

describe.skipIf(noSys !== '')(`realKvmAvailable${noSys ? ` — skipped: ${noSys}` : ''}`, () => {
  it('a missing device is reported as such', () => {
    expect(probeKvm('/dev/no-such-kvm')).toEqual({
      ok: false,
      reason: '/dev/no-such-kvm does not exist (no KVM on this machine)',
    });
  });

  it('a device that is not KVM fails the API-version ioctl with ENOTTY, named in the reason', () => {
    const p = probeKvm('/dev/null');
    expect(p.ok).toBe(false);
    expect(p.ok ? '' : p.reason).toMatch(/KVM_GET_API_VERSION.*ENOTTY/);
  });

  it('the cached answer for /dev/kvm agrees with a fresh probe', () => {
    expect(realKvmAvailable()).toEqual(probeKvm('/dev/kvm'));
  });
});
