import { defineConfig } from "vitest/config";

/** `npm run test:soak`: the long robustness runs, sized by AGENTRT_* environment variables. */
export default defineConfig({
  test: {
    include: ["test/soak/**/*.test.ts"],
    fileParallelism: false,
    testTimeout: 3_600_000,
    hookTimeout: 120_000,
  },
});
