import { defineConfig } from 'vitest/config';

// `npm run test:faults`: the hostile-input corpus against the real binary (test/faults/). CI runs it
// after `npm test`; it takes about a minute or two.
export default defineConfig({
  test: {
    include: ['test/faults/**/*.faults.ts'],
    pool: 'forks',
    testTimeout: 240_000,
    hookTimeout: 30_000,
  },
});
