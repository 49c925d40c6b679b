/**
 * One writer per state directory, with a lock the kernel releases when the holder dies.
 *
 * Node has no flock(2). What it has is listening sockets, and a listening address is exclusive and dies
 * with its process:
 *
 * - Linux: an *abstract* Unix socket, `\0agentrt-lock-<sha256 of the directory's device and inode>`. It
 *   has no file, so a SIGKILLed holder leaves nothing behind: the name is free the moment the process is
 *   gone. Device and inode rather than the path: a symlink or a second bind mount of the same directory
 *   names the same lock.
 * - Windows: a named pipe of the same name (also released by the kernel).
 * - Elsewhere (macOS, BSD): a socket file (`<dir>/.lock.sock`, or under /tmp when that path is too long
 *   for sun_path). A socket file outlives its process, so a refused bind is followed by a connect: a
 *   live holder answers; a dead one's file refuses the connection and is replaced. (Two processes that
 *   find the same dead file at the same instant can both replace it: a narrow race after a crash that
 *   the Linux and Windows kinds do not have.)
 *
 * The holder answers every connection with `{ pid, host, since, location }`, which is how a second
 * process names it in ERR_STATE_LOCKED. The server is unref'd: holding the lock never keeps a process alive.
 * A `LOCK` file in the directory repeats the holder for humans (informational: never read to decide).
 *
 * Limits (documented in docs/robustness.md): abstract sockets are per network namespace, so two
 * containers with their own network namespaces sharing one volume do not see each other's lock; and
 * none of this works across machines (NFS). Run one writer per state directory there by deployment.
 */
import { createHash } from "node:crypto";
import { mkdir, realpath, stat, unlink, writeFile } from "node:fs/promises";
import { createConnection, createServer, type Server } from "node:net";
import { hostname } from "node:os";
import { join } from "node:path";
import { AgentRuntimeError } from "../errors.js";

/** Who holds a state directory. */
export interface LockHolder {
  pid: number;
  host: string;
  /** Milliseconds since the epoch when it took the lock. */
  since: number;
  location: string;
}

const LOCK_INFO_FILE = "LOCK";

/** The address to listen on for the directory `realDir` (whose device and inode are `identity`), per platform. */
export function lockAddress(realDir: string, identity: string, platform: NodeJS.Platform = process.platform): string {
  const digest = createHash("sha256").update(identity).digest("hex");
  if (platform === "linux") return `\0agentrt-lock-${digest}`;
  if (platform === "win32") return `\\\\?\\pipe\\agentrt-lock-${digest}`;
  const beside = join(realDir, ".lock.sock");
  // sun_path holds 104 bytes on macOS/BSD.
  return Buffer.byteLength(beside) < 100 ? beside : join("/tmp", `agentrt-lock-${digest.slice(0, 32)}.sock`);
}

const usesSocketFile = (address: string): boolean => !address.startsWith("\0") && !address.startsWith("\\\\");

function listen(server: Server, address: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: Error): void => {
      server.off("listening", onListening);
      reject(error);
    };
    const onListening = (): void => {
      server.off("error", onError);
      resolve();
    };
    server.once("error", onError);
    server.once("listening", onListening);
    server.listen(address);
  });
}

/** Asks the holder who it is; undefined when nobody answers (a dead holder's socket file, or a race). */
function askHolder(address: string, timeoutMs = 2000): Promise<LockHolder | undefined> {
  return new Promise((resolve) => {
    const socket = createConnection(address);
    let text = "";
    const done = (holder: LockHolder | undefined): void => {
      socket.destroy();
      resolve(holder);
    };
    socket.setTimeout(timeoutMs, () => done(undefined));
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      text += chunk;
      if (text.length > 4096) done(undefined);
    });
    socket.on("end", () => {
      try {
        const holder = JSON.parse(text) as LockHolder;
        done(typeof holder?.pid === "number" ? holder : { pid: -1, host: "unknown", since: 0, location: "unknown" });
      } catch {
        // Something listens on our name but does not speak this protocol: still a holder.
        done({ pid: -1, host: "unknown", since: 0, location: "unknown" });
      }
    });
    socket.on("error", () => done(undefined));
  });
}

/** An exclusive claim on a directory, held until {@link StateLock.release} or the process's death. */
export class StateLock {
  readonly holder: LockHolder;
  readonly #server: Server;
  readonly #dir: string;

  private constructor(server: Server, dir: string, holder: LockHolder) {
    this.#server = server;
    this.#dir = dir;
    this.holder = holder;
  }

  /**
   * Takes the lock on `dir` (created if missing) or throws ERR_STATE_LOCKED naming the holder.
   * `platform` picks the kind of address (tests run the socket-file kind on Linux with it).
   */
  static async acquire(dir: string, platform: NodeJS.Platform = process.platform): Promise<StateLock> {
    await mkdir(dir, { recursive: true });
    const real = await realpath(dir);
    const info = await stat(real, { bigint: true });
    const address = lockAddress(real, `${info.dev}:${info.ino}`, platform);
    const holder: LockHolder = { pid: process.pid, host: hostname(), since: Date.now(), location: real };
    const answer = JSON.stringify(holder);
    // A few rounds: the holder may die between our refused listen and our question.
    for (let attempt = 0; attempt < 5; attempt++) {
      const server = createServer((socket) => {
        socket.unref();
        socket.on("error", () => {});
        socket.end(answer);
      });
      try {
        await listen(server, address);
        server.unref();
        await writeFile(join(real, LOCK_INFO_FILE), `${answer}\n`).catch(() => {});
        return new StateLock(server, real, holder);
      } catch (error) {
        server.close();
        if ((error as NodeJS.ErrnoException).code !== "EADDRINUSE") throw error;
      }
      const other = await askHolder(address);
      if (other) {
        throw new AgentRuntimeError(
          "ERR_STATE_LOCKED",
          `The state directory ${real} is in use by process ${other.pid} on ${other.host} (since ${new Date(other.since).toISOString()})`,
          { details: { location: real, pid: other.pid, host: other.host, since: other.since } },
        );
      }
      // Nobody answered: a socket file left by a dead holder (abstract names vanish with their process).
      if (usesSocketFile(address)) await unlink(address).catch(() => {});
    }
    throw new AgentRuntimeError("ERR_STATE_LOCKED", `Could not take the lock on the state directory ${real}`, { details: { location: real } });
  }

  /** Releases the lock. Idempotent. */
  async release(): Promise<void> {
    if (!this.#server.listening) return;
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    // (libuv unlinks a socket file when its server closes; unlinking it here could remove a successor's.)
    await unlink(join(this.#dir, LOCK_INFO_FILE)).catch(() => {});
  }
}
