import { defineConfig } from 'vitest/config';

// Under CI (CI=true) Vitest also writes its JSON report, from which .ci/run prints the
// plain "N passed, N failed" line.
const ci = process.env['CI'] === 'true' || process.env['CI'] === '1';

export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    setupFiles: ['./test/setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 60_000,
    pool: 'forks',
    reporters: ci ? ['default', ['json', { outputFile: '.ci/vitest-report.json' }]] : ['default'],
  },
});
