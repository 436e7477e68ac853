/**
 * The vitest reporter of `guestmem conform`: progress per test file (src/cli/progress.ts: a bar
 * on a terminal, quiet lines otherwise), then one summary line, and one line per failed test
 * with its first error line. Loaded by vitest from its path (`--reporter=<this file>`).
 */
import { relative } from 'node:path';
import type { Reporter, SerializedError, TestModule, TestSpecification } from 'vitest/node';
import { Progress } from './progress.js';

export default class ConformReporter implements Reporter {
  private progress: Progress | null = null;
  private files = 0;
  private done = 0;
  private readonly t0 = performance.now();

  onTestRunStart(specifications: ReadonlyArray<TestSpecification>): void {
    this.files = specifications.length;
    this.progress = new Progress('conform', this.files);
    this.progress.update(0, '', this.files);
  }

  onTestModuleEnd(testModule: TestModule): void {
    this.done++;
    this.progress?.update(this.done, relative(process.cwd(), testModule.moduleId), this.files);
  }

  onTestRunEnd(
    testModules: ReadonlyArray<TestModule>,
    unhandledErrors: ReadonlyArray<SerializedError>,
  ): void {
    const counts = { passed: 0, failed: 0, skipped: 0 };
    const failures: string[] = [];
    for (const m of testModules) {
      const file = relative(process.cwd(), m.moduleId);
      for (const e of m.errors()) failures.push(`  ✗ ${file}: ${firstLine(e.message)}`);
      for (const t of m.children.allTests()) {
        const r = t.result();
        if (r.state === 'passed') counts.passed++;
        else if (r.state === 'failed') {
          counts.failed++;
          failures.push(`  ✗ ${file} > ${t.fullName}: ${firstLine(r.errors?.[0]?.message ?? 'failed')}`);
        } else counts.skipped++;
      }
    }
    for (const e of unhandledErrors) failures.push(`  ✗ unhandled: ${firstLine(e.message)}`);
    const secs = ((performance.now() - this.t0) / 1000).toFixed(1);
    const ok = counts.failed === 0 && failures.length === 0;
    this.progress?.done();
    process.stdout.write(
      `conform: ${ok ? 'PASS' : 'FAIL'} — ${counts.passed} passed, ${counts.skipped} skipped, ${counts.failed} failed in ${testModules.length} files (${secs} s)\n`,
    );
    for (const f of failures) process.stdout.write(`${f}\n`);
  }
}

function firstLine(s: string): string {
  return s.split('\n')[0] ?? s;
}
