/**
 * A real 3-server NATS JetStream cluster on loopback, for tests and benchmarks: each server a
 * `nats-server` process with its own ports (chosen free, never 4222), config file and store folder
 * under one temporary directory. Faults come from outside, as in life: `kill(i, "SIGKILL")`,
 * `kill(i, "SIGSTOP")`, `restart(i)`. `stop()` belongs in a `finally`.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";

export interface NatsClusterOptions {
  /** Servers in the cluster. Default 3 (JetStream needs a majority: R3 streams survive one loss). */
  servers?: number;
  /** The `nats-server` binary. Default `$NATS_SERVER` or `nats-server` on the PATH (Debian: /usr/sbin). */
  binary?: string;
  /** How long `start()` waits for JetStream's meta leader, in ms. Default 30 000. */
  readyTimeoutMs?: number;
  /** Largest message a client may publish, in bytes. Default 8 MiB (the server's own default is 1 MiB). */
  maxPayload?: number;
}

interface ServerSlot {
  name: string;
  port: number;
  clusterPort: number;
  config: string;
  log: string;
  /** The `sh` that runs the server and kills it when our end of its stdin closes (see #spawn). */
  process: ChildProcess | undefined;
  /** The nats-server's own pid, for signals. */
  serverPid: number | undefined;
  exited: Promise<void> | undefined;
}

const DEFAULT_BINARY = process.env.NATS_SERVER ?? (process.platform === "linux" ? "/usr/sbin/nats-server" : "nats-server");

/** A free TCP port on 127.0.0.1 other than 4222 (a developer's own NATS server usually listens there). */
async function freePort(taken: Set<number>): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = createServer();
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => {
        const address = server.address();
        server.close(() => resolve(typeof address === "object" && address ? address.port : 0));
      });
    });
    if (port !== 0 && port !== 4222 && !taken.has(port)) {
      taken.add(port);
      return port;
    }
  }
}

export class NatsCluster {
  readonly dir: string;
  readonly #servers: ServerSlot[];
  readonly #binary: string;
  readonly #readyTimeoutMs: number;
  #stopped = false;

  private constructor(dir: string, servers: ServerSlot[], binary: string, readyTimeoutMs: number) {
    this.dir = dir;
    this.#servers = servers;
    this.#binary = binary;
    this.#readyTimeoutMs = readyTimeoutMs;
  }

  /** Starts every server and resolves once JetStream has a meta leader and sees every server. */
  static async start(options: NatsClusterOptions = {}): Promise<NatsCluster> {
    const count = options.servers ?? 3;
    if (!Number.isInteger(count) || count < 1 || count > 9) throw new RangeError(`servers must be an integer from 1 to 9, got ${count}`);
    const dir = await mkdtemp(join(tmpdir(), "agentrt-nats-"));
    const taken = new Set<number>();
    const slots: ServerSlot[] = [];
    for (let i = 0; i < count; i++) {
      slots.push({
        name: `n${i}`,
        port: await freePort(taken),
        clusterPort: await freePort(taken),
        config: "",
        log: "",
        process: undefined,
        serverPid: undefined,
        exited: undefined,
      });
    }
    for (const [i, slot] of slots.entries()) {
      const store = join(dir, slot.name);
      await mkdir(store, { recursive: true });
      const routes = slots.filter((_, j) => j !== i).map((s) => `nats://127.0.0.1:${s.clusterPort}`);
      slot.config = join(dir, `${slot.name}.conf`);
      slot.log = join(dir, `${slot.name}.log`);
      await writeFile(
        slot.config,
        [
          `server_name: ${slot.name}`,
          `listen: "127.0.0.1:${slot.port}"`,
          `max_payload: ${options.maxPayload ?? 8 * 1024 * 1024}`,
          `jetstream { store_dir: ${JSON.stringify(store)} }`,
          count > 1
            ? `cluster { name: agentrt-test, listen: "127.0.0.1:${slot.clusterPort}", routes: [${routes.map((r) => JSON.stringify(r)).join(", ")}] }`
            : "",
          "",
        ].join("\n"),
      );
    }
    const cluster = new NatsCluster(dir, slots, options.binary ?? DEFAULT_BINARY, options.readyTimeoutMs ?? 30_000);
    try {
      for (let i = 0; i < count; i++) await cluster.#spawn(i);
      await cluster.waitReady();
    } catch (error) {
      await cluster.stop();
      throw error;
    }
    return cluster;
  }

  /** Client URLs of every server, for `connect({ servers })`. */
  get urls(): string[] {
    return this.#servers.map((s) => `nats://127.0.0.1:${s.port}`);
  }

  /** Names of the servers (`n0`, `n1`, …), as JetStream reports them in stream placement. */
  get names(): string[] {
    return this.#servers.map((s) => s.name);
  }

  /** Process id of server `i`, or undefined while it is not running. */
  pid(i: number): number | undefined {
    const slot = this.#slot(i);
    return slot.process ? slot.serverPid : undefined;
  }

  #slot(i: number): ServerSlot {
    const slot = this.#servers[i];
    if (!slot) throw new RangeError(`no server ${i} in a cluster of ${this.#servers.length}`);
    return slot;
  }

  /**
   * Starts server `i` under a small `sh` that prints its pid, waits for it, and kills it as soon as our
   * end of the shell's stdin closes — so that servers never outlive a test process that was killed
   * (SIGKILL, a closed pipe) before its `finally` could stop them.
   */
  async #spawn(i: number): Promise<void> {
    const slot = this.#slot(i);
    // fd 3 keeps our pipe: a background job's stdin is otherwise /dev/null in a non-interactive shell.
    const script = 'exec 3<&0; "$0" -c "$1" -l "$2" </dev/null & pid=$!; echo $pid; (cat <&3 >/dev/null; kill -9 $pid 2>/dev/null) & wait $pid';
    const child = spawn("sh", ["-c", script, this.#binary, slot.config, slot.log], { stdio: ["pipe", "pipe", "ignore"] });
    slot.process = child;
    slot.serverPid = undefined;
    slot.exited = new Promise((resolve) => {
      child.once("exit", () => resolve());
      child.once("error", () => resolve());
    });
    child.once("exit", () => {
      // The watcher in the shell still holds the pipe: closing it ends that too.
      child.stdin?.end();
      if (slot.process === child) slot.process = undefined;
    });
    slot.serverPid = await new Promise<number>((resolve, reject) => {
      let text = "";
      child.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
        text += chunk;
        const line = text.split("\n")[0];
        if (text.includes("\n") && /^\d+$/.test(line!)) resolve(Number(line));
      });
      child.once("exit", () => reject(new Error(`nats-server ${slot.name} exited at once (see ${slot.log})`)));
    });
  }

  /**
   * Resolves once JetStream has a meta leader and can place a stream on every running server (R3 with
   * three or more running, else R1): what a test needs before it creates its buckets.
   */
  async waitReady(timeoutMs = this.#readyTimeoutMs): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let lastError: unknown;
    while (Date.now() < deadline) {
      let nc: NatsConnection | undefined;
      try {
        const running = this.urls.filter((_, i) => this.#servers[i]!.process);
        nc = await connect({ servers: running, timeout: 1000, reconnect: false });
        const jsm = await jetstreamManager(nc, { timeout: 2000 });
        await jsm.getAccountInfo(); // answers only once the meta group has a leader
        const probe = `AGENTRT_PROBE_${Math.random().toString(36).slice(2, 10)}`;
        try {
          const si = await jsm.streams.add({
            name: probe,
            subjects: [`agentrt.probe.${probe}`],
            num_replicas: Math.min(3, running.length),
            max_msgs: 1,
          });
          if (si.cluster?.leader || running.length === 1) return;
          lastError = new Error("the probe stream has no leader");
        } finally {
          await jsm.streams.delete(probe).catch(() => {});
        }
      } catch (error) {
        lastError = error;
      } finally {
        await nc?.close().catch(() => {});
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    throw new Error(`the NATS cluster in ${this.dir} was not ready after ${timeoutMs} ms: ${(lastError as Error)?.message ?? String(lastError)}`);
  }

  /** Sends `signal` to server `i` (SIGKILL, SIGSTOP, SIGCONT, SIGTERM). Resolves once a killed server has exited. */
  async kill(i: number, signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const slot = this.#slot(i);
    if (!slot.process || slot.serverPid === undefined) return;
    process.kill(slot.serverPid, signal);
    if (signal === "SIGKILL" || signal === "SIGTERM" || signal === "SIGINT") await slot.exited;
  }

  /** Starts server `i` again on the same ports and store (after `kill`), and waits until the cluster is ready. */
  async restart(i: number, options: { wait?: boolean } = {}): Promise<void> {
    const slot = this.#slot(i);
    if (slot.process && slot.serverPid !== undefined) {
      process.kill(slot.serverPid, "SIGKILL");
      await slot.exited;
    }
    await this.#spawn(i);
    if (options.wait ?? true) await this.waitReady();
  }

  /** Stops every server (SIGCONT first, in case one is stopped) and deletes their stores. Idempotent. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    await Promise.all(
      this.#servers.map(async (slot) => {
        if (!slot.process || slot.serverPid === undefined) return;
        process.kill(slot.serverPid, "SIGCONT");
        process.kill(slot.serverPid, "SIGKILL");
        await slot.exited;
      }),
    );
    await rm(this.dir, { recursive: true, force: true });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}
