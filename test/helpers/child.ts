/** Starts a TypeScript fixture in a child process and reads its JSON lines (store, runtime and cluster tests). */
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export interface Child {
  process: ChildProcessWithoutNullStreams;
  /** Resolves the next line whose `ev` is one of `events` (rejects when the child exits first). */
  next(...events: string[]): Promise<Record<string, unknown>>;
  lines: Record<string, unknown>[];
  exited: Promise<number | null>;
  /** What the child wrote to stderr so far. */
  stderr(): string;
}

/** Runs `name` from the fixtures folder `base` (e.g. `new URL("./fixtures/", import.meta.url)`). */
export function startFixture(name: string, args: string[], base: URL): Child {
  const path = fileURLToPath(new URL(name, base));
  const child = spawn(process.execPath, ["--import", "tsx", path, ...args], { stdio: ["pipe", "pipe", "pipe"] });
  const lines: Record<string, unknown>[] = [];
  const waiters: Array<{ events: string[]; resolve: (line: Record<string, unknown>) => void; reject: (error: Error) => void }> = [];
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
  let read = 0;
  const deliver = (): void => {
    for (let i = 0; i < waiters.length; i++) {
      const waiter = waiters[i]!;
      const index = lines.findIndex((line, at) => at >= read && waiter.events.includes(String(line.ev)));
      if (index !== -1) {
        read = index + 1;
        waiters.splice(i--, 1);
        waiter.resolve(lines[index]!);
      }
    }
  };
  createInterface({ input: child.stdout }).on("line", (line) => {
    try {
      lines.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      lines.push({ ev: "garbage", line });
    }
    deliver();
  });
  const exited = new Promise<number | null>((resolve) =>
    child.on("exit", (code) => {
      // Lines already read are delivered first; anyone still waiting hears why the child is gone.
      setImmediate(() => {
        for (const waiter of waiters.splice(0)) waiter.reject(new Error(`${name} exited (${code}) first; stderr: ${stderr.slice(-2000)}`));
        resolve(code);
      });
    }),
  );
  return {
    process: child,
    lines,
    exited,
    stderr: () => stderr,
    next: (...events) =>
      new Promise((resolve, reject) => {
        waiters.push({ events, resolve, reject });
        deliver();
      }),
  };
}
