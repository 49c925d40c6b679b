/**
 * Resource faults: a full or read-only state dir, injected filesystem errors at every step of a save,
 * and the generation worker dying mid-turn, mid-passivation and mid-rehydration. A failed save never
 * loses the agent (it stays resident and answering, the error is reported); a dead worker fails only
 * the requests in flight, with ERR_WORKER_CRASHED, and the runtime continues on a new one.
 */
import { readdir, truncate, unlink, writeFile } from "node:fs/promises";
import { statfs } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { AgentRuntime, DirectoryStore, isAgentRuntimeError } from "../../src/index.js";
import type { SavedState } from "../../src/engines/engine.js";
import { crashableWorker, FakeEngine } from "../../src/testing/index.js";
import {
  collect,
  fakeRuntime,
  fsError,
  gate,
  HookedStore,
  kindOf,
  mountTmpfs,
  REAL,
  realRuntime,
  rejection,
  storedUserMessages,
  useScratch,
} from "./helpers.js";
import { agentDir } from "./state-files.js";

const scratch = useScratch("resource-faults");

function errnoOf(error: unknown): unknown {
  return isAgentRuntimeError(error) ? error.details?.errno : undefined;
}

/** Leftover staging or temp files in an agent's folder (none may survive a successful save). */
async function leftovers(stateDir: string, id: string): Promise<string[]> {
  return (await readdir(agentDir(stateDir, id))).filter((name) => name.includes(".tmp") || name.startsWith("staging-"));
}

type Fault = { point: "stage" | "commit" | "record"; code: "ENOSPC" | "EROFS" | "EACCES" | "EIO" };
const POINTS: Fault["point"][] = ["stage", "commit", "record"];
const CODES: Fault["code"][] = ["ENOSPC", "EROFS", "EACCES", "EIO"];

describe("injected filesystem errors during passivation (every step × errno)", () => {
  it.each(POINTS.flatMap((point) => CODES.map((code) => ({ point, code }))))(
    "$code at $point: the admitting turn fails with ERR_STATE_WRITE_FAILED, the victim stays resident and answering",
    async ({ point, code }) => {
      const stateDir = scratch.stateDir();
      let armed = false;
      const store = new HookedStore(new DirectoryStore(stateDir), {
        beforeStage: () => {
          if (armed && point === "stage") throw fsError(code, "mkdir");
        },
        beforeCommit: () => {
          if (armed && point === "commit") throw fsError(code, "fsync");
        },
        beforeSetKv: () => {
          // Only the passivation's commit; turns still save.
          if (armed && point === "record") throw fsError(code, "rename");
        },
      });
      const { runtime } = await fakeRuntime(stateDir, { store, maxAgents: 1 });
      scratch.track(runtime);
      const errors = collect(runtime, "agent:error");
      await runtime.spawn({ id: "a", systemPrompt: "sys a" });
      await runtime.ask("a", "a1");
      await runtime.spawn({ id: "b", systemPrompt: "sys b" });
      await runtime.ask("b", "b1");
      expect((await runtime.get("b")).status).toBe("resident");

      armed = true;
      const started = Date.now();
      const refused = await rejection(runtime.ask("a", "a2"));
      expect(Date.now() - started, "the admitting turn must fail, not retry forever").toBeLessThan(2000);
      expect(kindOf(refused)).toBe("ERR_STATE_WRITE_FAILED");
      expect(errnoOf(refused)).toBe(code);
      expect(errors.map((e) => [e.id, e.error.code])).toEqual([["b", "ERR_STATE_WRITE_FAILED"]]);
      expect((await runtime.get("b")).status).toBe("resident");
      expect((await runtime.get("a")).status).toBe("passivated");
      expect((await runtime.ask("b", "b2")).reply).toMatch(/^r/);
      expect(await leftovers(stateDir, "b")).toEqual([]);

      armed = false;
      expect((await runtime.ask("a", "a3")).reply).toMatch(/^r/);
      expect((await runtime.get("b")).status).toBe("passivated");
      await runtime.close();
      expect(await storedUserMessages(stateDir, "a")).toEqual(["a1", "a3"]);
      expect(await storedUserMessages(stateDir, "b")).toEqual(["b1", "b2"]);
      expect(await leftovers(stateDir, "b")).toEqual([]);
    },
  );

  it.each(CODES)("%s on a turn's journal append: the turn is refused (not acknowledged), the history unchanged, the next turn fine", async (code) => {
    const stateDir = scratch.stateDir();
    let armed = false;
    const store = new HookedStore(new DirectoryStore(stateDir), {
      beforeAppend: () => {
        if (armed) throw fsError(code, "open");
      },
    });
    const { runtime } = await fakeRuntime(stateDir, { store });
    scratch.track(runtime);
    await runtime.spawn({ id: "a", systemPrompt: "sys" });
    await runtime.ask("a", "one");
    armed = true;
    const refused = await rejection(runtime.ask("a", "lost"));
    expect(kindOf(refused)).toBe("ERR_STATE_WRITE_FAILED");
    expect(errnoOf(refused)).toBe(code);
    expect(await runtime.get("a")).toMatchObject({ status: "resident", turns: 1 });
    armed = false;
    await runtime.ask("a", "two");
    expect(await storedUserMessages(stateDir, "a")).toEqual(["one", "two"]);
  });

  it("an engine that reports more bytes than reached the disk (a short write) fails the passivation", async () => {
    /** Simulates a silently short write: llama.cpp's last buffered block is lost when the disk fills. */
    class ShortWriteEngine extends FakeEngine {
      short = false;
      override async saveState(key: string, path: string): Promise<SavedState> {
        const saved = await super.saveState(key, path);
        if (this.short) await truncate(path, Math.max(0, saved.bytes - 10));
        return saved;
      }
    }
    const stateDir = scratch.stateDir();
    const engine = new ShortWriteEngine({ sequences: 1 });
    const runtime = await AgentRuntime.create({ stateDir, maxAgents: 1, engineFactory: async () => engine });
    scratch.track(runtime);
    await runtime.spawn({ id: "a", systemPrompt: "sys a" });
    await runtime.ask("a", "a1");
    engine.short = true;
    expect(kindOf(await rejection(runtime.passivate("a")))).toBe("ERR_STATE_WRITE_FAILED");
    expect((await runtime.get("a")).status).toBe("resident");
    expect((await new DirectoryStore(stateDir).read("a"))!.kv).toBeUndefined();
    engine.short = false;
    await runtime.passivate("a");
    expect((await runtime.get("a")).status).toBe("passivated");
  });
});

/** Fills a filesystem until `leaveBytes` remain free. */
async function fill(dir: string, leaveBytes: number): Promise<void> {
  const { bavail, bsize } = await statfs(dir);
  const free = bavail * bsize;
  await writeFile(join(dir, "filler"), Buffer.alloc(Math.max(0, free - leaveBytes)));
}

describe("a real disk that fills up or turns read-only (tmpfs; injected errors where this machine cannot mount)", () => {
  it("passivation fails safely, agents stay resident and answering, nothing acknowledged is lost", async () => {
    const tmpfs = await mountTmpfs(2048);
    const mode = tmpfs ? "tmpfs" : "injected";
    console.log(
      `[figures] disk faults: ${mode === "tmpfs" ? "real 2 MiB tmpfs (ENOSPC, then remounted read-only: EROFS)" : "injected ENOSPC/EROFS (this machine cannot mount)"}`,
    );
    const stateDir = tmpfs ? join(tmpfs.path, "state") : scratch.stateDir();
    let injected: "full" | "read-only" | undefined;
    const store = new HookedStore(new DirectoryStore(stateDir), {
      beforeStage: () => {
        if (injected) throw fsError(injected === "full" ? "ENOSPC" : "EROFS", "open");
      },
      beforeWrite: () => {
        if (injected === "read-only") throw fsError("EROFS", "open");
      },
      beforeAppend: () => {
        if (injected === "read-only") throw fsError("EROFS", "open");
      },
      beforeSetKv: () => {
        if (injected === "read-only") throw fsError("EROFS", "open");
      },
    });
    const disk = {
      full: async () => (tmpfs ? fill(tmpfs.path, 12 * 1024) : void (injected = "full")),
      readOnly: () => (tmpfs ? tmpfs.remount("ro") : void (injected = "read-only")),
      restore: async () => {
        if (!tmpfs) return void (injected = undefined);
        tmpfs.remount("rw");
        await unlink(join(tmpfs.path, "filler")).catch(() => {});
      },
    };
    try {
      const runtime = await realRuntime(stateDir, { store, maxAgents: 1 });
      scratch.track(runtime);
      const errors = collect(runtime, "agent:error");
      await runtime.spawn({ id: "a", systemPrompt: "You dream of robots." });
      await runtime.ask("a", "Once upon a time");
      await runtime.spawn({ id: "b", systemPrompt: "You dream of the sea." }); // passivates a
      await runtime.ask("b", "The waves");

      // Full: b's KV file (tens of KB) cannot be written, its record (one page) can.
      await disk.full();
      const refused = await rejection(runtime.ask("a", "Tell me more"));
      expect(kindOf(refused)).toBe("ERR_STATE_WRITE_FAILED");
      // llama.cpp reports a failed write without its errno (it only logs it); the store's own writes carry it.
      if (mode === "injected") expect(errnoOf(refused)).toBe("ENOSPC");
      console.log(`[figures] disk full: ${(refused as Error).message}`);
      expect((await runtime.get("b")).status).toBe("resident");
      expect((await runtime.ask("b", "The tide")).reply.length).toBeGreaterThan(0);
      expect(errors.some((e) => e.id === "b" && e.error.code === "ERR_STATE_WRITE_FAILED")).toBe(true);
      expect(await leftovers(stateDir, "b")).toEqual([]);
      await disk.restore();
      expect((await runtime.ask("a", "Tell me more")).reply.length).toBeGreaterThan(0);
      expect((await runtime.get("b")).status).toBe("passivated");

      // Read-only: nothing can be made durable, so turns are refused; the caches stay in memory.
      disk.readOnly();
      const notDurable = await rejection(runtime.ask("a", "And then?"));
      expect(kindOf(notDurable)).toBe("ERR_STATE_WRITE_FAILED");
      expect(errnoOf(notDurable)).toBe("EROFS");
      expect(await runtime.get("a")).toMatchObject({ status: "resident", turns: 2 });
      const blocked = await rejection(runtime.ask("b", "The shore"));
      expect(kindOf(blocked)).toBe("ERR_STATE_WRITE_FAILED");
      expect((await runtime.get("a")).status).toBe("resident");
      await disk.restore();
      expect((await runtime.ask("a", "And then?")).reply.length).toBeGreaterThan(0);
      expect((await runtime.ask("b", "The shore")).reply.length).toBeGreaterThan(0);
      await runtime.close();

      expect(await storedUserMessages(stateDir, "a")).toEqual(["Once upon a time", "Tell me more", "And then?"]);
      expect(await storedUserMessages(stateDir, "b")).toEqual(["The waves", "The tide", "The shore"]);
      for (const id of ["a", "b"]) expect(await leftovers(stateDir, id)).toEqual([]);
    } finally {
      await tmpfs?.unmount();
    }
  });
});

describe("the generation worker crashing (real worker thread)", () => {
  it("mid-turn, mid-passivation and mid-rehydration: in-flight requests fail with ERR_WORKER_CRASHED; a new worker takes over", async () => {
    const stateDir = scratch.stateDir();
    let crashAt: "stage" | "open" | undefined;
    const crashed = gate();
    const store = new HookedStore(new DirectoryStore(stateDir), {
      beforeStage: async () => {
        if (crashAt !== "stage") return;
        crashAt = undefined;
        await worker.crash();
      },
      beforeOpenKv: async () => {
        if (crashAt !== "open") return;
        crashAt = undefined;
        await worker.crash();
      },
    });
    const worker = crashableWorker({ model: REAL.model, contextSize: 1024, threads: REAL.threads, sequences: 2 });
    const runtime = await realRuntime(stateDir, { store, maxAgents: 2, contextSize: 1024, engineFactory: worker.factory });
    scratch.track(runtime);
    const restarts = collect(runtime, "worker:restarted");
    runtime.subscribe("worker:restarted", () => crashed.open());
    await runtime.spawn({ id: "a", systemPrompt: "You dream of robots." });
    await runtime.spawn({ id: "b", systemPrompt: "You dream of the sea." });
    await runtime.ask("a", "Once upon a time");
    await runtime.ask("b", "The waves");

    // 1. Mid-turn: both agents generating long replies.
    const long = [runtime.ask("a", "And then", { maxTokens: 400 }), runtime.ask("b", "And then", { maxTokens: 400 })];
    await new Promise((resolve) => setTimeout(resolve, 20));
    await worker.crash();
    for (const outcome of await Promise.allSettled(long)) {
      // A turn may have finished (and been acknowledged) before the crash; otherwise it is refused with the code.
      if (outcome.status === "rejected") expect(kindOf(outcome.reason)).toBe("ERR_WORKER_CRASHED");
    }
    const acknowledgedMidTurn = (await Promise.allSettled(long)).filter((o) => o.status === "fulfilled").length;
    expect((await runtime.list()).agents.map((a) => a.status)).toEqual(["passivated", "passivated"]);
    expect((await runtime.ask("a", "Hello again")).reply.length).toBeGreaterThan(0);
    expect(restarts).toHaveLength(1);

    // 2. Mid-passivation: a needs a slot back; the worker dies while b's cache is being saved.
    await runtime.ask("b", "Hello again");
    await runtime.spawn({ id: "c", systemPrompt: "You dream of stars." }); // passivates a, the least recently used
    expect((await runtime.get("a")).status).toBe("passivated");
    crashAt = "stage";
    const admitting = await rejection(runtime.ask("a", "Shine"));
    expect(kindOf(admitting)).toBe("ERR_WORKER_CRASHED");
    expect(
      (await runtime.list()).agents.filter((a) => a.status !== "passivated"),
      "the dead worker's agents are not resident",
    ).toEqual([]);
    expect((await runtime.ask("a", "Shine")).reply.length).toBeGreaterThan(0);
    expect((await runtime.memory()).totals.residentAgents).toBeLessThanOrEqual(2);
    expect(restarts).toHaveLength(2);

    // 3. Mid-rehydration: the worker dies while a's saved cache is about to be loaded.
    await runtime.passivate("a");
    crashAt = "open";
    expect(kindOf(await rejection(runtime.ask("a", "Wake up")))).toBe("ERR_WORKER_CRASHED");
    const rehydrated = collect(runtime, "agent:rehydrated");
    expect((await runtime.ask("a", "Wake up")).reply.length).toBeGreaterThan(0);
    expect(rehydrated.at(-1)).toMatchObject({ id: "a", source: "state" });
    expect(restarts).toHaveLength(3);
    await crashed.promise;

    await runtime.close();
    const turnsA = await storedUserMessages(stateDir, "a");
    expect(turnsA.filter((t) => t !== "And then")).toEqual(["Once upon a time", "Hello again", "Shine", "Wake up"]);
    expect(turnsA.filter((t) => t === "And then").length + (await storedUserMessages(stateDir, "b")).filter((t) => t === "And then").length).toBe(
      acknowledgedMidTurn,
    );
    expect(await storedUserMessages(stateDir, "c")).toEqual([]);
  });
});
