/**
 * Host tier benchmark: what `hostCacheBytes` (deferred commits) buys on the way out and back in, against
 * the store alone and against re-evaluating the history, interleaved in one run. It drives the generation
 * worker (`RemoteEngine`), `DirectoryStore` and `HostTier` directly: the code paths the supervisor takes.
 *
 * Passivation (until the agent's slot is free):
 * - `deferred`: the engine saves into the store's staged file and the tier queues its commit (the
 *   commit is awaited after the repetition, outside the timing, so it never overlaps a measurement);
 * - `to disk`: the engine saves into the store's staging file, commit (fsync, XXH3, rename, folder
 *   fsync), then `setKv` (journal append + fdatasync): what a passivation costs without the tier.
 * Rehydration (opening a sequence until the cache holds the history):
 * - `staged`: the engine loads the state not yet committed (a rehydration soon after a passivation);
 * - `tmpfs`: the same file copied to /dev/shm (the RAM file system the tier could have used instead);
 * - `from disk`: the store that committed the file (same inode and times: no re-hash);
 * - `after restart`: a fresh store (full XXH3 check), and the same with the sha256 check older files
 *   carry (`…, sha256`);
 * - `re-prefill`: a fresh sequence evaluates the whole history.
 *
 *   npm run bench:tier
 *   npm run bench:tier -- --preset smollm2-135m --engine llama.cpp --engine mlx
 */
import { existsSync } from "node:fs";
import { copyFile, mkdtemp, open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { formatTable } from "../src/cli/table.js";
import type { EngineName } from "../src/engines/engine.js";
import { sha256File } from "../src/store/checksum.js";
import { DirectoryStore } from "../src/store/directory-store.js";
import { RECORD_FORMAT_VERSION, type KvDescriptor } from "../src/store/state-store.js";
import { HostTier } from "../src/supervisor/host-tier.js";
import { RemoteEngine } from "../src/worker/remote-engine.js";
import {
  buildHistories,
  CORES,
  DEFAULT_THREADS,
  engineOption,
  interleave,
  intOption,
  listOption,
  median,
  MODEL_OPTIONS,
  pinMlxThreads,
  plotName,
  progress,
  resolveModel,
  writeResult,
} from "./lib.js";
import { barChart } from "./plot.js";

const { values } = parseArgs({
  options: {
    ...MODEL_OPTIONS,
    engine: { type: "string", multiple: true },
    lengths: { type: "string" },
  },
});
const choice = await resolveModel(values);
const threads = intOption("threads", values.threads, DEFAULT_THREADS);
const reps = intOption("reps", values.reps, 7);
const lengths = listOption("lengths", values.lengths, [256, 2048]);
const engines = engineOption(values.engine);
if (engines.includes("mlx")) pinMlxThreads(threads);
const never = new AbortController().signal;

interface Row {
  engine: EngineName;
  tokens: number;
  stateMB: number;
  passivateRamMs: number;
  passivateDiskMs: number;
  rehydrateRamMs: number;
  rehydrateTmpfsMs: number;
  rehydrateDiskMs: number;
  rehydrateRestartMs: number;
  rehydrateRestartSha256Ms: number;
  reprefillMs: number;
  /** Reading the state file into a buffer allocated beforehand (the raw read). */
  plainReadMs: number;
  /** Median of per-repetition ratios. */
  ratios: Record<string, number>;
}

async function plainRead(path: string, into: Uint8Array): Promise<number> {
  const started = performance.now();
  const handle = await open(path, "r");
  try {
    for (let offset = 0; offset < into.length;) {
      const { bytesRead } = await handle.read(into, offset, Math.min(8 << 20, into.length - offset), offset);
      if (bytesRead === 0) break;
      offset += bytesRead;
    }
  } finally {
    await handle.close();
  }
  return performance.now() - started;
}

const histories = await buildHistories(choice.path, lengths);
const rows: Row[] = [];
const root = await mkdtemp(join(tmpdir(), "agentrt-bench-tier-"));
try {
  for (const engineName of engines) {
    const contextSize = Math.max(...lengths) + 256;
    progress(`loading ${choice.label} on ${engineName} (${threads} threads, context ${contextSize})…`);
    const engine = await RemoteEngine.start({ engine: engineName, model: choice.path, contextSize, sequences: 4, threads });
    const stateDir = join(root, engineName);
    const store = await DirectoryStore.open(stateDir);
    const tier = new HostTier({
      maxBytes: 1 << 30,
      store,
      now: Date.now,
      onDurable: () => {},
      onWriteFailed: (_id, error) => progress(`background write failed: ${String(error)}`),
    });
    const extension = engine.info.stateFileExtension;
    const { fingerprint } = engine.info;
    try {
      for (const target of lengths) {
        const messages = histories.get(target)!;
        await store.write({
          formatVersion: RECORD_FORMAT_VERSION,
          id: "agent",
          role: "bench",
          systemPrompt: "bench",
          sampling: {},
          history: [],
          createdAt: 0,
          updatedAt: 0,
        });
        await engine.openSequence("agent");
        const tokens = (await engine.prefill("agent", messages, never)).cacheTokens;
        progress(`${engineName}: ${tokens} tokens in the cache, ${reps} repetitions`);

        // One durable state (for the disk variants) and one in RAM, refreshed by each passivation.
        const describe = (committed: Awaited<ReturnType<Awaited<ReturnType<DirectoryStore["stageKv"]>>["commit"]>>): KvDescriptor => ({
          ...committed,
          tokens,
          fingerprint,
          engine: engineName,
          historyLength: messages.length,
        });
        const first = await store.stageKv("agent", extension);
        await engine.saveState("agent", first.path);
        let kv = describe(await first.commit());
        await store.setKv("agent", kv, Date.now());
        /** Deferred passivation: the engine's save, then the tier takes it (its commit runs in the background). */
        const toRam = async (beforeAdd?: (path: string) => Promise<void>) => {
          const started = performance.now();
          const staged = await store.stageKv("agent", extension);
          const saved = await engine.saveState("agent", staged.path);
          let ms = performance.now() - started;
          // A load of the staged file before its commit (as `take` hands it out), timed apart.
          await beforeAdd?.(staged.path);
          const adding = performance.now();
          await tier.add({ staged, id: "agent", bytes: saved.bytes, tokens, fingerprint, engine: engineName, historyLength: messages.length });
          await tier.fit();
          ms += performance.now() - adding;
          return ms;
        };
        await toRam();
        await tier.flush();
        const readBuffer = new Uint8Array(kv.bytes);
        // The same state on a RAM file system, for the comparison that decided where staged states live.
        const shmPath = join(existsSync("/dev/shm") ? "/dev/shm" : root, `agentrt-bench-tier-${process.pid}${extension}`);
        await copyFile(join(stateDir, "agents", "agent", kv.file), shmPath);
        const stagedMs: number[] = [];

        const load = async (path: () => Promise<string>) => {
          await engine.openSequence("load");
          const started = performance.now();
          await engine.loadState("load", await path());
          const ms = performance.now() - started;
          await engine.closeSequence("load");
          return ms;
        };
        const samples = await interleave(reps, {
          passivateRam: async () => {
            const ms = await toRam(async (path) => void stagedMs.push(await load(async () => path)));
            await tier.flush(); // the background commit, outside the timing
            return ms;
          },
          rehydrateTmpfs: () => load(async () => shmPath),
          passivateDisk: async () => {
            const started = performance.now();
            const staged = await store.stageKv("agent", extension);
            await engine.saveState("agent", staged.path);
            kv = describe(await staged.commit());
            await store.setKv("agent", kv, Date.now());
            return performance.now() - started;
          },
          rehydrateDisk: () => load(() => store.openKv("agent", kv)),
          rehydrateRestart: () => load(() => new DirectoryStore(stateDir).openKv("agent", kv)),
          rehydrateRestartSha256: async () => {
            // The same file as an older agentrt described it (sha256 only): the check before XXH3.
            const legacy: KvDescriptor = { ...kv, checksum: undefined, sha256: await sha256File(join(stateDir, "agents", "agent", kv.file)) };
            return load(() => new DirectoryStore(stateDir).openKv("agent", legacy));
          },
          reprefill: async () => {
            await engine.openSequence("fresh");
            const started = performance.now();
            await engine.prefill("fresh", messages, never);
            const ms = performance.now() - started;
            await engine.closeSequence("fresh");
            return ms;
          },
          plainRead: () => plainRead(join(stateDir, "agents", "agent", kv.file), readBuffer),
        });
        await engine.closeSequence("agent");
        await rm(shmPath, { force: true });
        (samples as Record<string, number[]>).rehydrateRam = stagedMs;
        const ratio = (a: number[], b: number[]) => median(a.map((ms, i) => ms / b[i]!));
        rows.push({
          engine: engineName,
          tokens,
          stateMB: kv.bytes / 1e6,
          passivateRamMs: median(samples.passivateRam),
          passivateDiskMs: median(samples.passivateDisk),
          rehydrateRamMs: median(stagedMs),
          rehydrateTmpfsMs: median(samples.rehydrateTmpfs),
          rehydrateDiskMs: median(samples.rehydrateDisk),
          rehydrateRestartMs: median(samples.rehydrateRestart),
          rehydrateRestartSha256Ms: median(samples.rehydrateRestartSha256),
          reprefillMs: median(samples.reprefill),
          plainReadMs: median(samples.plainRead),
          ratios: {
            passivateRamVsDisk: ratio(samples.passivateRam, samples.passivateDisk),
            ramVsReprefill: ratio(stagedMs, samples.reprefill),
            diskVsReprefill: ratio(samples.rehydrateDisk, samples.reprefill),
            restartVsReprefill: ratio(samples.rehydrateRestart, samples.reprefill),
            ramVsRestart: ratio(stagedMs, samples.rehydrateRestart),
            /** The target: a state read after a restart against a raw read (throughput, so inverted). */
            restartReadRatio: ratio(samples.plainRead, samples.rehydrateRestart),
            restartSha256ReadRatio: ratio(samples.plainRead, samples.rehydrateRestartSha256),
          },
        });
      }
    } finally {
      await tier.dispose();
      await store.dispose();
      await engine.dispose();
    }
  }
} finally {
  await rm(root, { recursive: true, force: true });
}

const pct = (v: number) => `${(v * 100).toFixed(1)} %`;
console.log(`tier: ${choice.label}, ${threads} threads, ${CORES} cores, median of ${reps} (ratios: medians of per-repetition ratios)`);
console.log(
  formatTable(
    rows.map((r) => ({
      engine: r.engine,
      tokens: r.tokens,
      "state MB": r.stateMB,
      "passivate deferred ms": r.passivateRamMs,
      "passivate disk ms": r.passivateDiskMs,
      "deferred/disk": pct(r.ratios.passivateRamVsDisk!),
      "rehydrate staged ms": r.rehydrateRamMs,
      "tmpfs ms": r.rehydrateTmpfsMs,
      "disk ms": r.rehydrateDiskMs,
      "restart ms": r.rehydrateRestartMs,
      "restart sha256 ms": r.rehydrateRestartSha256Ms,
      "re-prefill ms": r.reprefillMs,
      "staged/pre": pct(r.ratios.ramVsReprefill!),
      "disk/pre": pct(r.ratios.diskVsReprefill!),
      "restart/pre": pct(r.ratios.restartVsReprefill!),
      "plain read ms": r.plainReadMs,
      "restart read ratio": pct(r.ratios.restartReadRatio!),
      "(sha256": pct(r.ratios.restartSha256ReadRatio!),
    })),
  ),
);
const path = await writeResult("tier.json", { model: choice.path, label: choice.label, threads, cores: CORES, reps, rows });
const plot = await barChart(
  plotName("tier", choice.label, engines),
  rows.flatMap((r) => [
    { group: `${r.engine} ${r.tokens} tok`, series: "staged (not yet committed)", value: r.rehydrateRamMs },
    { group: `${r.engine} ${r.tokens} tok`, series: "tmpfs", value: r.rehydrateTmpfsMs },
    { group: `${r.engine} ${r.tokens} tok`, series: "disk (same process)", value: r.rehydrateDiskMs },
    { group: `${r.engine} ${r.tokens} tok`, series: "disk after restart", value: r.rehydrateRestartMs },
    { group: `${r.engine} ${r.tokens} tok`, series: "re-prefill", value: r.reprefillMs },
  ]),
  { title: `Rehydration: staged vs committed vs after restart vs re-prefill (${choice.label})`, xTitle: "", yTitle: "ms (median)" },
);
progress(`wrote ${path} and ${plot}`);
