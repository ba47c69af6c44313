import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Builds dist/ (the compiled CLI and agent entry points the process tests run) when it is stale.
    globalSetup: ['test/global-setup.ts'],
    // Integration tests start real brokers, SQLite files and child processes; two cores.
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
