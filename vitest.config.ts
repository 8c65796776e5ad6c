import { defineConfig } from 'vitest/config';

// Two suites: `unit` needs nothing outside the project (quick start: `npm test`);
// `realdata` reads ../shared/data (CI: `npm run test:realdata`).
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/**/*.test.ts'],
          exclude: ['test/realdata/**'],
          testTimeout: 60_000,
          hookTimeout: 60_000,
          pool: 'forks',
        },
      },
      {
        test: {
          name: 'realdata',
          include: ['test/realdata/**/*.test.ts'],
          testTimeout: 300_000,
          hookTimeout: 120_000,
          pool: 'forks',
        },
      },
    ],
  },
});
