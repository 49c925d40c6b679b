import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { runInNewContext } from "node:vm";
import { afterAll, beforeAll } from "vitest";
import { setFlagsFromString } from "node:v8";
import {
  AgentRuntime,
  DirectoryStore,
  ERROR_CODES,
  isAgentRuntimeError,
  type AgentRecord,
  type AgentRuntimeOptions,
  type ErrorCode,
  type KvDescriptor,
  type StagedKv,
  type StateStore,
  type RuntimeEvents,
  type TurnAppend,
  DelegatingStore,
} from "../../src/index.js";
import { FakeEngine, type FakeEngineOptions } from "../../src/testing/index.js";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

/** The small real model (never copied into the repo). */
export const MODEL_PATH = process.env.AGENTRT_TEST_MODEL ?? resolve(ROOT, "../shared/models/aidreams260K.gguf");
if (!existsSync(MODEL_PATH)) {
  throw new Error(`The test model is missing at ${MODEL_PATH}: expected ../shared/models/ beside the repo (or set AGENTRT_TEST_MODEL)`);
}

/** Real-model settings that keep a turn in the low milliseconds on 2 cores. */
export const REAL = { model: MODEL_PATH, contextSize: 512, threads: 1, maxTokens: 8 } as const;

/** Reads a positive integer size from the environment (soak runs scale up through these). */
export function envInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) throw new RangeError(`${name} must be a non-negative integer, got ${raw}`);
  return value;
}

export async function tempDir(prefix: string): Promise<string> {
  return mkdtemp(join(tmpdir(), `agentrt-${prefix}-`));
}

/** A test file's scratch space: a temp root made before its tests, and removed (its runtimes destroyed) after. */
export interface Scratch {
  /** The temp root (set once the file's tests start). */
  readonly root: string;
  /** A fresh state dir under the root (`name`, or `state-1`, `state-2`, …). */
  stateDir(name?: string): string;
  /** Destroys `runtime` after the file's tests; returns it. */
  track<T extends { destroy(): Promise<void> }>(runtime: T): T;
}

export function useScratch(prefix: string): Scratch {
  let root = "";
  let counter = 0;
  const open: Array<{ destroy(): Promise<void> }> = [];
  beforeAll(async () => {
    root = await tempDir(prefix);
  });
  afterAll(async () => {
    for (const runtime of open) await runtime.destroy();
    await rm(root, { recursive: true, force: true });
  });
  return {
    get root() {
      return root;
    },
    stateDir: (name) => join(root, name ?? `state-${++counter}`),
    track: (runtime) => {
      open.push(runtime);
      return runtime;
    },
  };
}

/** A runtime on a fake engine; `engines` lists every engine it started (the last is the live one). */
export async function fakeRuntime(
  stateDir: string,
  options: Partial<AgentRuntimeOptions> = {},
  engineOptions: FakeEngineOptions = {},
): Promise<{ runtime: AgentRuntime; engines: FakeEngine[] }> {
  const maxAgents = options.maxAgents ?? 2;
  const engines: FakeEngine[] = [];
  const runtime = await AgentRuntime.create({
    stateDir,
    maxAgents,
    engineFactory: async () => {
      const engine = new FakeEngine({ sequences: maxAgents, ...engineOptions });
      engines.push(engine);
      return engine;
    },
    ...options,
  });
  return { runtime, engines };
}

/** Collects the payloads of one runtime event. */
export function collect<E extends keyof RuntimeEvents>(runtime: AgentRuntime, event: E): RuntimeEvents[E][0][] {
  const seen: RuntimeEvents[E][0][] = [];
  runtime.subscribe(event, ((payload: RuntimeEvents[E][0]) => seen.push(payload)) as never);
  return seen;
}

/** The error `promise` rejects with (fails the test when it resolves). */
export async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error("expected a rejection, but the promise resolved");
}

/** The code of an agentrt error, the class name of a TypeError/RangeError, or "untyped: …" for anything else. */
export function kindOf(error: unknown): string {
  if (isAgentRuntimeError(error)) return error.code;
  if (error instanceof RangeError) return "RangeError";
  if (error instanceof TypeError) return "TypeError";
  return `untyped: ${String((error as Error)?.stack ?? error)}`;
}

export function isKnownCode(code: string): code is ErrorCode {
  return code in ERROR_CODES;
}

/** The user messages of a stored agent, oldest first, read back through the store as a restart would. */
export async function storedUserMessages(stateDir: string, id: string): Promise<string[]> {
  const record = await new DirectoryStore(stateDir).read(id);
  return (record?.history ?? []).filter((m) => m.role === "user").map((m) => m.content);
}

/** Every file under `dir`, relative, sorted. */
export async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (sub: string) => {
    for (const entry of await readdir(join(dir, sub), { withFileTypes: true })) {
      const rel = sub ? `${sub}/${entry.name}` : entry.name;
      if (entry.isDirectory()) await walk(rel);
      else out.push(rel);
    }
  };
  await walk("");
  return out.sort();
}

/** `global.gc`, exposed at run time so no test config needs `--expose-gc`. */
export function gcFunction(): () => void {
  setFlagsFromString("--expose-gc");
  return runInNewContext("gc") as () => void;
}

export function rssMiB(): number {
  return Math.round((process.memoryUsage().rss / 1024 / 1024) * 10) / 10;
}

/**
 * A small tmpfs mounted for the test, when this machine allows mounting (root in a privileged
 * container). Returns undefined when it cannot mount; callers then inject the fault instead.
 */
export async function mountTmpfs(sizeKiB: number): Promise<{ path: string; remount(options: string): void; unmount(): Promise<void> } | undefined> {
  // AGENTRT_NO_MOUNT=1 forces the injected path (to test it on a machine that can mount).
  if (process.platform !== "linux" || process.getuid?.() !== 0 || process.env.AGENTRT_NO_MOUNT === "1") return undefined;
  const path = await tempDir("tmpfs");
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", `size=${sizeKiB}k`, "tmpfs", path], { stdio: "pipe" });
  } catch {
    await rm(path, { recursive: true, force: true });
    return undefined;
  }
  return {
    path,
    remount: (options) => execFileSync("mount", ["-o", `remount,${options}`, path], { stdio: "pipe" }),
    unmount: async () => {
      execFileSync("umount", ["-l", path], { stdio: "pipe" });
      await rm(path, { recursive: true, force: true });
    },
  };
}

export async function ensureDir(path: string): Promise<string> {
  await mkdir(path, { recursive: true });
  return path;
}

/** Hooks a {@link HookedStore} awaits before each operation; throw from one to inject a fault. */
export interface StoreHooks {
  beforeWrite?(record: AgentRecord): Promise<void> | void;
  /** Before a turn's journal append. */
  beforeAppend?(id: string, turn: TurnAppend): Promise<void> | void;
  /** Before a passivation commits its KV descriptor. */
  beforeSetKv?(id: string, kv: KvDescriptor | undefined): Promise<void> | void;
  beforeStage?(id: string): Promise<void> | void;
  beforeOpenKv?(id: string): Promise<void> | void;
  beforeCommit?(id: string, path: string): Promise<void> | void;
  beforeRemove?(id: string): Promise<void> | void;
}

/** A StateStore that delegates to another and runs hooks first: the seam for holds and injected faults. */
export class HookedStore extends DelegatingStore {
  hooks: StoreHooks;

  constructor(inner: StateStore, hooks: StoreHooks = {}) {
    super(inner);
    this.hooks = hooks;
  }

  override async write(record: AgentRecord): Promise<void> {
    await this.hooks.beforeWrite?.(record);
    return this.inner.write(record);
  }

  override async appendTurn(id: string, turn: TurnAppend): Promise<void> {
    await this.hooks.beforeAppend?.(id, turn);
    return this.inner.appendTurn(id, turn);
  }

  override async setKv(id: string, kv: KvDescriptor | undefined, updatedAt: number): Promise<void> {
    await this.hooks.beforeSetKv?.(id, kv);
    return this.inner.setKv(id, kv, updatedAt);
  }

  override async stageKv(id: string, extension?: string): Promise<StagedKv> {
    await this.hooks.beforeStage?.(id);
    const staged = await this.inner.stageKv(id, extension);
    return {
      path: staged.path,
      commit: async () => {
        try {
          await this.hooks.beforeCommit?.(id, staged.path);
        } catch (error) {
          await staged.discard();
          throw error;
        }
        return staged.commit();
      },
      discard: () => staged.discard(),
    };
  }

  override async openKv(id: string, kv: KvDescriptor): Promise<string> {
    await this.hooks.beforeOpenKv?.(id);
    return this.inner.openKv(id, kv);
  }

  override async remove(id: string): Promise<void> {
    await this.hooks.beforeRemove?.(id);
    return this.inner.remove(id);
  }
}

/** A promise with its resolve function, for holding an operation until the test lets it go. */
export function gate(): { promise: Promise<void>; open(): void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => (open = resolve));
  return { promise, open };
}

/** An error like the ones node:fs raises, with its errno code. */
export function fsError(code: "ENOSPC" | "EROFS" | "EACCES" | "EIO" | "EDQUOT", syscall = "write"): NodeJS.ErrnoException {
  const error: NodeJS.ErrnoException = new Error(`${code}: injected fault, ${syscall}`);
  error.code = code;
  error.syscall = syscall;
  return error;
}

/** A real-model runtime with the fast settings. */
export async function realRuntime(stateDir: string, options: Partial<AgentRuntimeOptions> = {}): Promise<AgentRuntime> {
  return AgentRuntime.create({ ...REAL, stateDir, maxAgents: 1, ...options });
}
