// Hostile state files with every single bit of a record and a KV file flipped (AGENTRT_FLIP_STRIDE=1).
process.env.AGENTRT_FLIP_STRIDE ??= "1";
await import("../robustness/hostile-state.test.js");
