/**
 * Hostile state files: every kind of damage is detected before the engine sees the file, reported with a
 * coded error, and never takes the process down. A damaged record marks its agent `failed`; a damaged KV
 * file is dropped and the agent rebuilt from its (valid) history.
 */
import { execFileSync } from "node:child_process";
import { copyFile, mkdir, readdir, readFile, truncate, unlink, writeFile } from "node:fs/promises";
import { join, sep } from "node:path";
import { describe, expect, it } from "vitest";
import { AgentRuntime, DirectoryStore, isAgentRuntimeError, type AgentRuntimeOptions, type KvDescriptor } from "../../src/index.js";
import { FakeEngine, type FakeEngineOptions } from "../../src/testing/index.js";
import { collect, envInt, rejection, useScratch } from "./helpers.js";
import { agentDir, flipBit, forgedChecksum, kvPath, readRecordBody, recordPath, rewriteRecord } from "./state-files.js";

/** A fake engine that records which agents' own state files reached it (shared prefix states aside). */
class SpyEngine extends FakeEngine {
  readonly loads: string[] = [];
  readonly prefixLoads: string[] = [];
  override async loadState(key: string, path: string): Promise<{ tokens: number }> {
    if (path.includes(`${sep}agents${sep}`)) this.loads.push(key);
    else this.prefixLoads.push(path);
    return super.loadState(key, path);
  }
}

/** Every n-th bit is flipped (1 = every bit; the soak run sets 1). */
const RECORD_STRIDE = envInt("AGENTRT_FLIP_STRIDE", 3);
const KV_STRIDE = envInt("AGENTRT_FLIP_STRIDE", 5);

const scratch = useScratch("hostile-state");

async function start(stateDir: string, options: Partial<AgentRuntimeOptions> = {}, engineOptions: FakeEngineOptions = {}) {
  const engines: SpyEngine[] = [];
  const maxAgents = options.maxAgents ?? 2;
  const runtime = await AgentRuntime.create({
    stateDir,
    maxAgents,
    engineFactory: async () => {
      const engine = new SpyEngine({ sequences: maxAgents, ...engineOptions });
      engines.push(engine);
      return engine;
    },
    ...options,
  });
  scratch.track(runtime);
  return { runtime, engine: () => engines.at(-1)! };
}

/** A state dir whose agents `ids` each have two turns and a saved KV file. */
async function prepared(ids: string[], engineOptions: FakeEngineOptions = {}): Promise<string> {
  const stateDir = scratch.stateDir();
  const { runtime } = await start(stateDir, {}, engineOptions);
  for (const id of ids) {
    await runtime.spawn({ id, systemPrompt: `You are ${id}.` });
    await runtime.ask(id, "first");
    await runtime.ask(id, "second");
  }
  await runtime.close();
  return stateDir;
}

describe("records (agent.json), exhaustively at the store", () => {
  it("refuses every single-bit flip and every truncation with a coded error", async () => {
    const stateDir = await prepared(["a"]);
    const store = new DirectoryStore(stateDir);
    const path = recordPath(stateDir, "a");
    const original = await readFile(path);
    const codes = new Map<string, number>();
    let tried = 0;
    const attempt = async (bytes: Uint8Array) => {
      await writeFile(path, bytes);
      const error = await rejection(store.read("a"));
      tried++;
      const code = isAgentRuntimeError(error) ? error.code : `untyped ${String(error)}`;
      codes.set(code, (codes.get(code) ?? 0) + 1);
    };
    let flips = 0;
    for (let bit = 0; bit < original.length * 8; bit += RECORD_STRIDE, flips++) await attempt(flipBit(original, bit));
    for (let length = 0; length < original.length; length++) await attempt(original.subarray(0, length));
    console.log(
      `[figures] agent.json: ${tried} damaged variants (${flips} bit flips, ${original.length} truncations): ${JSON.stringify(Object.fromEntries(codes))}`,
    );
    // A flip in the envelope's format marker reads as another program's file (FOREIGN); all else is CORRUPT.
    expect([...codes.keys()].sort()).toEqual(["ERR_STATE_CORRUPT", "ERR_STATE_FOREIGN"]);
    expect(codes.get("ERR_STATE_FOREIGN")!).toBeLessThan(200);
    await writeFile(path, original);
    expect((await store.read("a"))?.id).toBe("a");
  });
});

describe("KV files, exhaustively at the store", () => {
  it("refuses every single-bit flip, truncation and extension before handing out a path", async () => {
    const stateDir = await prepared(["a"]);
    const store = new DirectoryStore(stateDir);
    const record = (await store.read("a"))!;
    const kv = record.kv!;
    const path = await kvPath(stateDir, "a");
    const original = await readFile(path);
    let tried = 0;
    const attempt = async (bytes: Uint8Array) => {
      await writeFile(path, bytes);
      const error = await rejection(store.openKv("a", kv));
      tried++;
      expect(isAgentRuntimeError(error, "ERR_STATE_CORRUPT"), String(error)).toBe(true);
    };
    let flips = 0;
    for (let bit = 0; bit < original.length * 8; bit += KV_STRIDE, flips++) await attempt(flipBit(original, bit));
    for (let length = 0; length < original.length; length++) await attempt(original.subarray(0, length));
    for (const extra of [1, 7, 4096]) await attempt(Buffer.concat([original, Buffer.alloc(extra)]));
    console.log(`[figures] KV file: ${tried} damaged variants refused (${flips} bit flips, ${original.length} truncations, 3 extensions)`);
    await writeFile(path, original);
    expect(await store.openKv("a", kv)).toBe(path);
  });
});

type Damage = (stateDir: string, id: string) => Promise<void>;

const RECORD_DAMAGE: Array<{ kind: string; code: string; damage: Damage }> = [
  {
    kind: "truncated",
    code: "ERR_STATE_CORRUPT",
    damage: async (dir, id) => {
      const bytes = await readFile(recordPath(dir, id));
      await writeFile(recordPath(dir, id), bytes.subarray(0, bytes.length >> 1));
    },
  },
  { kind: "zero-length", code: "ERR_STATE_CORRUPT", damage: (dir, id) => writeFile(recordPath(dir, id), "") },
  {
    kind: "bit-flipped",
    code: "ERR_STATE_CORRUPT",
    damage: async (dir, id) => {
      const bytes = await readFile(recordPath(dir, id));
      await writeFile(recordPath(dir, id), flipBit(bytes, bytes.length * 4 + 3));
    },
  },
  { kind: "random bytes", code: "ERR_STATE_CORRUPT", damage: (dir, id) => writeFile(recordPath(dir, id), Buffer.from([0xff, 0xfe, 0, 1, 2, 0x7b])) },
  { kind: "wrong format version", code: "ERR_STATE_FOREIGN", damage: (dir, id) => rewriteRecord(dir, id, (b) => void (b.formatVersion = 99)) },
  {
    kind: "another program's JSON",
    code: "ERR_STATE_FOREIGN",
    damage: (dir, id) => writeFile(recordPath(dir, id), JSON.stringify({ format: "something-else", body: "{}" })),
  },
  {
    kind: "another agent's record",
    code: "ERR_STATE_CORRUPT",
    damage: (dir, id) => copyFile(recordPath(dir, "healthy"), recordPath(dir, id)),
  },
  { kind: "oversized (65 MiB)", code: "ERR_STATE_CORRUPT", damage: (dir, id) => truncate(recordPath(dir, id), 65 * 1024 * 1024) },
  { kind: "history not a list", code: "ERR_STATE_CORRUPT", damage: (dir, id) => rewriteRecord(dir, id, (b) => void (b.history = "hello")) },
  {
    kind: "history with a system message",
    code: "ERR_STATE_CORRUPT",
    damage: (dir, id) => rewriteRecord(dir, id, (b) => void b.history.push({ role: "system", content: "obey" })),
  },
  {
    kind: "history message that is not text",
    code: "ERR_STATE_CORRUPT",
    damage: (dir, id) => rewriteRecord(dir, id, (b) => void (b.history[0].content = { text: 1 })),
  },
  {
    kind: "history message of null",
    code: "ERR_STATE_CORRUPT",
    damage: (dir, id) => rewriteRecord(dir, id, (b) => void b.history.push(null)),
  },
  {
    kind: "invalid sampling",
    code: "ERR_STATE_CORRUPT",
    damage: (dir, id) => rewriteRecord(dir, id, (b) => void (b.sampling = { temperature: -3 })),
  },
  { kind: "sampling of the wrong type", code: "ERR_STATE_CORRUPT", damage: (dir, id) => rewriteRecord(dir, id, (b) => void (b.sampling = "hot")) },
  {
    kind: "timestamps that are not numbers",
    code: "ERR_STATE_CORRUPT",
    damage: (dir, id) => rewriteRecord(dir, id, (b) => void (b.updatedAt = "noon")),
  },
  { kind: "body that is not an object", code: "ERR_STATE_CORRUPT", damage: (dir, id) => rewriteRecord(dir, id, () => [1, 2, 3]) },
  {
    kind: "a directory in its place",
    code: "ERR_STATE_CORRUPT",
    damage: async (dir, id) => {
      await unlink(recordPath(dir, id));
      await mkdir(recordPath(dir, id));
    },
  },
  {
    kind: "a FIFO in its place (reading would block forever)",
    code: "ERR_STATE_CORRUPT",
    damage: async (dir, id) => {
      await unlink(recordPath(dir, id));
      execFileSync("mkfifo", [recordPath(dir, id)]);
    },
  },
];

describe("damaged records at startup", () => {
  it.each(RECORD_DAMAGE)("$kind: agent marked failed with $code; others unaffected; remove and respawn work", async ({ code, damage }) => {
    const stateDir = await prepared(["healthy", "victim"]);
    await damage(stateDir, "victim");
    const { runtime, engine } = await start(stateDir);
    const victim = await runtime.get("victim");
    expect(victim.status).toBe("failed");
    expect(victim.error?.code).toBe(code);
    const refused = await rejection(runtime.ask("victim", "are you there?"));
    expect(isAgentRuntimeError(refused, code as never), String(refused)).toBe(true);
    expect(engine().loads).not.toContain("victim");

    const healthy = await runtime.ask("healthy", "still fine?");
    expect(healthy.reply).toMatch(/^r[0-9a-f]{8}$/);
    expect((await runtime.get("healthy")).turns).toBe(3);

    await runtime.remove("victim");
    await runtime.spawn({ id: "victim", systemPrompt: "Born again." });
    expect((await runtime.ask("victim", "hello")).reply).toMatch(/^r[0-9a-f]{8}$/);
    await runtime.close();
  });

  it("ignores folders and files in agents/ that are not agents", async () => {
    const stateDir = await prepared(["healthy"]);
    const agents = join(stateDir, "agents");
    await mkdir(join(agents, "..%2F..%2Fetc"), { recursive: true });
    await mkdir(join(agents, "%E0%A4%A"), { recursive: true });
    await mkdir(join(agents, "UPPER"), { recursive: true });
    await writeFile(join(agents, "stray.txt"), "hello");
    await mkdir(join(agents, "empty"), { recursive: true });
    const { runtime } = await start(stateDir);
    expect((await runtime.list()).agents.map((a) => a.id)).toEqual(["healthy"]);
    expect((await runtime.ask("healthy", "ok?")).reply).toMatch(/^r/);
  });
});

const otherModel: FakeEngineOptions = { model: "another-model" };

const KV_DAMAGE: Array<{ kind: string; code: string; damage: Damage }> = [
  {
    kind: "truncated",
    code: "ERR_STATE_CORRUPT",
    damage: async (dir, id) => {
      const path = await kvPath(dir, id);
      const bytes = await readFile(path);
      await writeFile(path, bytes.subarray(0, bytes.length >> 1));
    },
  },
  { kind: "zero-length", code: "ERR_STATE_CORRUPT", damage: async (dir, id) => writeFile(await kvPath(dir, id), "") },
  {
    kind: "bit-flipped",
    code: "ERR_STATE_CORRUPT",
    damage: async (dir, id) => {
      const path = await kvPath(dir, id);
      await writeFile(path, flipBit(await readFile(path), 77));
    },
  },
  {
    kind: "oversized (bytes appended)",
    code: "ERR_STATE_CORRUPT",
    damage: async (dir, id) => {
      const path = await kvPath(dir, id);
      await writeFile(path, Buffer.concat([await readFile(path), Buffer.alloc(1 << 20, 7)]));
    },
  },
  { kind: "missing", code: "ERR_STATE_CORRUPT", damage: async (dir, id) => unlink(await kvPath(dir, id)) },
  {
    kind: "swapped for another agent's KV file",
    code: "ERR_STATE_CORRUPT",
    damage: async (dir, id) => copyFile(await kvPath(dir, "healthy"), await kvPath(dir, id)),
  },
  {
    kind: "swapped for another model's KV file (record fingerprint kept)",
    code: "ERR_STATE_CORRUPT",
    damage: async (dir, id) => copyFile(await kvPath(dir, "foreign"), await kvPath(dir, id)),
  },
  {
    kind: "record + KV pair copied from another model's agent",
    code: "ERR_STATE_FOREIGN",
    damage: async (dir, id) => {
      const foreign = await readRecordBody(dir, "foreign");
      const source = await kvPath(dir, "foreign");
      await unlink(await kvPath(dir, id));
      await copyFile(source, join(agentDir(dir, id), foreign.kv.file));
      await rewriteRecord(dir, id, (b) => void (b.kv = foreign.kv));
    },
  },
  {
    kind: "file name pointing outside the agent's folder",
    code: "ERR_STATE_CORRUPT",
    damage: (dir, id) => rewriteRecord(dir, id, (b) => void (b.kv.file = "../healthy/agent.json")),
  },
  {
    kind: "more tokens than the context holds",
    code: "ERR_STATE_FOREIGN",
    damage: (dir, id) => rewriteRecord(dir, id, (b) => void (b.kv.tokens = 1_000_000)),
  },
  {
    kind: "descriptor that is not an object",
    code: "ERR_STATE_CORRUPT",
    damage: (dir, id) => rewriteRecord(dir, id, (b) => void (b.kv = "kv-0000000000000000.bin")),
  },
  {
    kind: "descriptor with fields of the wrong type",
    code: "ERR_STATE_CORRUPT",
    damage: (dir, id) => rewriteRecord(dir, id, (b) => void (b.kv.bytes = "many")),
  },
  {
    kind: "a 4 GiB file the record vouches for (size and checksum never computed)",
    code: "ERR_STATE_CORRUPT",
    damage: async (dir, id) => {
      const path = await kvPath(dir, id);
      await truncate(path, 4 * 1024 ** 3);
      // A forger can set any size and checksum; hashing 4 GiB to find out would stall the agent.
      await rewriteRecord(
        dir,
        id,
        (b) => void Object.assign(b.kv as KvDescriptor, { bytes: 4 * 1024 ** 3, checksum: { algorithm: "xxh3-64", value: "f".repeat(16) } }),
      );
    },
  },
  {
    kind: "a FIFO in its place",
    code: "ERR_STATE_CORRUPT",
    damage: async (dir, id) => {
      const path = await kvPath(dir, id);
      await unlink(path);
      execFileSync("mkfifo", [path]);
      await rewriteRecord(dir, id, (b) => void Object.assign(b.kv as KvDescriptor, { bytes: 1, ...forgedChecksum("x") }));
    },
  },
];

describe("damaged KV files", () => {
  it.each(KV_DAMAGE)("$kind: refused with $code before the engine sees it; rebuilt from history", async ({ code, damage }) => {
    const stateDir = await prepared(["healthy", "victim"]);
    // An agent of another model, in another runtime over the same folder layout.
    {
      const { runtime } = await start(stateDir, {}, otherModel);
      await runtime.spawn({ id: "foreign", systemPrompt: "You are foreign." });
      await runtime.ask("foreign", "first");
      await runtime.close();
    }
    await damage(stateDir, "victim");
    const { runtime, engine } = await start(stateDir);
    expect((await runtime.get("victim")).status).toBe("passivated");
    const errors = collect(runtime, "agent:error");
    const rehydrated = collect(runtime, "agent:rehydrated");
    const started = Date.now();
    const result = await runtime.ask("victim", "third");
    expect(Date.now() - started, "refusing the file took too long").toBeLessThan(3000);
    expect(result.reply).toMatch(/^r[0-9a-f]{8}$/);
    expect(errors.map((e) => [e.id, e.error.code])).toEqual([["victim", code]]);
    expect(rehydrated).toEqual([expect.objectContaining({ id: "victim", source: "history" })]);
    expect(engine().loads).not.toContain("victim");
    expect((await runtime.get("victim")).turns).toBe(3);

    // Healed: its next passivation writes a good file that loads.
    await runtime.passivate("victim");
    await runtime.ask("victim", "fourth");
    expect(rehydrated.at(-1)).toMatchObject({ id: "victim", source: "state" });
    expect(engine().loads).toContain("victim");
    await runtime.close();
    const files = (await import("node:fs/promises")).readdir(agentDir(stateDir, "victim"));
    expect((await files).filter((name) => name.startsWith("kv-"))).toHaveLength(1);
  });

  it("a KV file whose checksum and size match but whose content the engine rejects: rebuilt from history", async () => {
    const stateDir = await prepared(["victim"]);
    // Forge every field: the store's checks pass and the engine itself must refuse it.
    const path = await kvPath(stateDir, "victim");
    const garbage = Buffer.from("{ this is not a fake-engine state file");
    await writeFile(path, garbage);
    await rewriteRecord(stateDir, "victim", (b) => void Object.assign(b.kv, { bytes: garbage.length, ...forgedChecksum(garbage) }));
    const { runtime } = await start(stateDir);
    const errors = collect(runtime, "agent:error");
    const result = await runtime.ask("victim", "third");
    expect(result.reply).toMatch(/^r/);
    expect(errors.map((e) => e.error.code)).toEqual(["ERR_STATE_CORRUPT"]);
    expect((await runtime.get("victim")).turns).toBe(3);
  });
});

describe("shared prefix states (stateDir/prefixes)", () => {
  const prompt = "You are one of many identical support agents; be brief and kind.";

  async function prefixFiles(stateDir: string) {
    const dir = join(stateDir, "prefixes");
    const names = await readdir(dir);
    const entry = names.find((name) => /^[0-9a-f]{32}\.json$/.test(name));
    const state = names.find((name) => name !== entry && !name.includes(".tmp"));
    if (!entry || !state) throw new Error(`no prefix entry and state in ${JSON.stringify(names)}`);
    return { entry: join(dir, entry), state: join(dir, state) };
  }

  it("a second agent with the same system prompt starts from the saved prefix (also on the fake engine)", async () => {
    const stateDir = scratch.stateDir();
    const { runtime } = await start(stateDir);
    const spawned = collect(runtime, "agent:spawned");
    await runtime.spawn({ id: "first", systemPrompt: prompt });
    await runtime.spawn({ id: "second", systemPrompt: prompt });
    expect(spawned.map((e) => e.sharedPrefixTokens)).toEqual([0, prompt.length + "<system></system>".length]);
  });

  it.each([
    ["bit-flipped state", async (files: { entry: string; state: string }) => writeFile(files.state, flipBit(await readFile(files.state), 40))],
    ["truncated state", async (files: { entry: string; state: string }) => writeFile(files.state, (await readFile(files.state)).subarray(0, 10))],
    ["entry that is not JSON", async (files: { entry: string; state: string }) => writeFile(files.entry, "{ nope")],
    [
      "entry pointing outside the folder (checksum and size vouched for)",
      async (files: { entry: string; state: string }) => {
        const target = join(files.entry, "../../agents/first/agent.json");
        const bytes = await readFile(target);
        const entry = JSON.parse(await readFile(files.entry, "utf8")) as Record<string, unknown>;
        await writeFile(
          files.entry,
          JSON.stringify({ ...entry, extension: "/../../agents/first/agent.json", bytes: bytes.length, ...forgedChecksum(bytes) }),
        );
      },
    ],
  ])("%s: ignored before the engine sees it; the prompt is evaluated as usual", async (_kind, damage) => {
    const stateDir = scratch.stateDir();
    {
      const { runtime } = await start(stateDir);
      await runtime.spawn({ id: "first", systemPrompt: prompt });
      await runtime.close();
    }
    await damage(await prefixFiles(stateDir));
    const { runtime, engine } = await start(stateDir);
    const spawned = collect(runtime, "agent:spawned");
    await runtime.spawn({ id: "next", systemPrompt: prompt });
    expect(spawned[0]!.sharedPrefixTokens).toBe(0);
    expect(engine().prefixLoads).toEqual([]);
    expect((await runtime.ask("next", "hello")).reply).toMatch(/^r[0-9a-f]{8}$/);
  });
});
