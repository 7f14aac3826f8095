import { defineConfig } from 'vitest/config';

// `npm run test:e2e`: the example app in a real browser (Debian's chromium). `npm test` never runs these.
export default defineConfig({
  test: {
    include: ['test/e2e/**/*.e2e.ts'],
    pool: 'forks',
    testTimeout: 90_000,
    hookTimeout: 30_000,
  },
});
