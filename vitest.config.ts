import { configDefaults, defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // The long runs: `npm run test:soak` (vitest.soak.config.ts); short versions run here.
    exclude: [...configDefaults.exclude, "test/soak/**"],
    // Real-model tests share 2 cores with a worker thread each: run files one at a time.
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
