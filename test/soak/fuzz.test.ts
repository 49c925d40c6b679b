// The API fuzzer with more inputs and seeds (AGENTRT_FUZZ_INPUTS, AGENTRT_FUZZ_SEEDS, AGENTRT_FUZZ_SEED).
process.env.AGENTRT_FUZZ_INPUTS ??= "20000";
process.env.AGENTRT_FUZZ_SEEDS ??= "5";
await import("../robustness/fuzz.test.js");
