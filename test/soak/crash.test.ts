// The crash harness with more kills (AGENTRT_CRASH_KILLS, default here 100; AGENTRT_CRASH_SEED).
process.env.AGENTRT_CRASH_KILLS ??= "100";
await import("../robustness/crash.test.js");
