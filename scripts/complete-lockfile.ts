/**
 * Completes package-lock.json with the platform-specific optional packages that the package
 * registry this project's machines reach does not carry (it mirrors the Linux builds only).
 *
 * npm records an optional dependency it cannot resolve by leaving it out of the lockfile, and
 * `npm ci` then refuses the lockfile as out of sync with package.json. The entries added here
 * carry the version and the platform fields, and no `resolved`/`integrity`: npm never fetches
 * them, because their os/cpu/libc do not match any machine the project runs on.
 *
 * Run after any `npm install`: `npx tsx scripts/complete-lockfile.ts` (idempotent). `--check`
 * exits 1 if an entry is missing (the lint step runs it).
 */
import { readFileSync, writeFileSync } from 'node:fs';

interface LockPackage {
  version?: string;
  dev?: boolean;
  optional?: boolean;
  optionalDependencies?: Record<string, string>;
  os?: string[];
  cpu?: string[];
  libc?: string[];
}

/** Platform fields of a platform package, from its name (…-<os>-<cpu>[-musl]). */
function platformOf(name: string): Pick<LockPackage, 'os' | 'cpu' | 'libc'> | null {
  const m =
    /-(android|darwin|linux|win32|freebsd|openbsd)-(arm64|x64|ia32|arm|riscv64|loong64)(-musl)?$/.exec(name);
  if (!m) return null;
  const [, os, cpu, musl] = m as unknown as [string, string, string, string | undefined];
  return { os: [os], cpu: [cpu], ...(os === 'linux' ? { libc: [musl ? 'musl' : 'glibc'] } : {}) };
}

const path = new URL('../package-lock.json', import.meta.url);
const lock = JSON.parse(readFileSync(path, 'utf8')) as { packages: Record<string, LockPackage> };
const missing: string[] = [];
for (const [key, pkg] of Object.entries(lock.packages)) {
  for (const [dep, version] of Object.entries(pkg.optionalDependencies ?? {})) {
    const depKey = `node_modules/${dep}`;
    if (lock.packages[depKey]) continue;
    const platform = platformOf(dep);
    if (!platform) continue; // not a platform build: a real omission, leave it to npm
    missing.push(dep);
    lock.packages[depKey] = {
      version,
      ...(pkg.dev ? { dev: true } : {}),
      optional: true,
      ...platform,
    };
    void key;
  }
}
if (process.argv.includes('--check')) {
  if (missing.length > 0) {
    console.error(
      `package-lock.json lacks platform packages: ${missing.join(', ')} (run npx tsx scripts/complete-lockfile.ts)`,
    );
    process.exit(1);
  }
  console.log('lockfile: complete');
} else {
  const sorted: Record<string, LockPackage> = {};
  for (const k of Object.keys(lock.packages).sort((a, b) =>
    a === '' ? -1 : b === '' ? 1 : a.localeCompare(b),
  )) {
    sorted[k] = lock.packages[k] as LockPackage;
  }
  lock.packages = sorted;
  writeFileSync(path, `${JSON.stringify(lock, null, 2)}\n`);
  console.log(missing.length > 0 ? `added ${missing.length}: ${missing.join(', ')}` : 'lockfile: complete');
}
