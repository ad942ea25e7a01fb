import { defineConfig } from 'vitest/config';

// The Node half of `npm test`; the Chromium half is test/browser/run.mjs.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    environment: 'node',
    // Two cores shared with other engineers: one worker process is enough.
    pool: 'forks',
    poolOptions: { forks: { singleFork: true } },
    testTimeout: 30_000,
    hookTimeout: 30_000,
  },
});
