// Vitest settings for the conformance run: the whole suite lives in one file whose tests
// run sequentially, so one worker is enough (the machine has 2 cores, and the server under
// test needs the other one).
import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: [`conformance.test.mjs`],
    watch: false,
    pool: `forks`,
    maxWorkers: 1,
    fileParallelism: false,
    testTimeout: 30_000,
    hookTimeout: 30_000,
    teardownTimeout: 10_000,
  },
})
