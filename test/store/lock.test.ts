import { access, mkdtemp, readFile, rm, symlink } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { DirectoryStore } from "../../src/store/directory-store.js";
import { lockAddress, StateLock } from "../../src/store/state-lock.js";
import { startFixture, type Child } from "../helpers/child.js";

const FIXTURES = new URL("./fixtures/", import.meta.url);

let root: string;
const children: Child[] = [];
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "agentrt-lock-"));
});
afterEach(async () => {
  for (const child of children.splice(0)) child.process.kill("SIGKILL");
  await rm(root, { recursive: true, force: true });
});

function holder(dir: string, platform?: string): Child {
  const child = startFixture("lock-holder.ts", platform ? [dir, platform] : [dir], FIXTURES);
  children.push(child);
  return child;
}

describe("one writer per state directory", () => {
  it("a second store in the same process gets ERR_STATE_LOCKED naming this process; open() is idempotent", async () => {
    await using first = await DirectoryStore.open(root);
    await first.open();
    const second = new DirectoryStore(root);
    await expect(second.open()).rejects.toMatchObject({
      code: "ERR_STATE_LOCKED",
      details: { pid: process.pid, host: hostname() },
      message: expect.stringContaining(`process ${process.pid}`),
    });
    // The LOCK file says who holds it, for humans.
    expect(JSON.parse(await readFile(join(root, "LOCK"), "utf8"))).toMatchObject({ pid: process.pid });
    await first.dispose();
    await second.open();
    await second.dispose();
  });

  it("dispose() waits for the appends in flight before it lets another writer in", async () => {
    const store = await DirectoryStore.open(root);
    await store.write({ formatVersion: 2, id: "a", role: "r", systemPrompt: "s", sampling: {}, history: [], createdAt: 1, updatedAt: 1 });
    let done = 0;
    const appends = Array.from({ length: 20 }, (_, n) =>
      store.appendTurn("a", { messages: [{ role: "user", content: `m${n}` }], updatedAt: 2 + n }).then(() => done++),
    );
    await store.dispose();
    expect(done, "appends finished when dispose() resolved").toBe(20);
    await Promise.all(appends);
    const next = await DirectoryStore.open(root);
    expect((await next.read("a"))?.history).toHaveLength(20);
    await next.dispose();
  });

  it("a store in another process gets ERR_STATE_LOCKED with our pid, and we get it with theirs", async () => {
    const store = await DirectoryStore.open(root);
    const refused = await holder(root).next("locked", "refused");
    expect(refused).toMatchObject({ ev: "refused", code: "ERR_STATE_LOCKED", details: { pid: process.pid } });
    await store.dispose();

    const child = holder(root);
    const locked = await child.next("locked", "refused");
    expect(locked).toMatchObject({ ev: "locked", pid: child.process.pid });
    await expect(new DirectoryStore(root).open()).rejects.toMatchObject({ code: "ERR_STATE_LOCKED", details: { pid: child.process.pid } });
    // Released on dispose: the child says "quit", and the directory is ours.
    child.process.stdin.write("quit\n");
    await child.next("released");
    await (await DirectoryStore.open(root)).dispose();
  });

  it("after the holder is SIGKILLed, a new store opens at once without any cleanup", async () => {
    const child = holder(root);
    await child.next("locked");
    await expect(new DirectoryStore(root).open()).rejects.toMatchObject({ code: "ERR_STATE_LOCKED" });
    child.process.kill("SIGKILL");
    await child.exited;
    // The stale LOCK file is still there (informational only): it does not matter.
    expect(JSON.parse(await readFile(join(root, "LOCK"), "utf8")).pid).toBe(child.process.pid);
    const store = await DirectoryStore.open(root);
    expect(JSON.parse(await readFile(join(root, "LOCK"), "utf8")).pid).toBe(process.pid);
    await store.dispose();
  });

  it("the lock follows the directory, not the spelling of its path", async () => {
    await using _store = await DirectoryStore.open(root);
    const alias = join(root, "alias");
    await symlink(root, alias);
    await expect(new DirectoryStore(alias).open()).rejects.toMatchObject({ code: "ERR_STATE_LOCKED" });
    await using other = await DirectoryStore.open(join(root, "elsewhere"));
    expect(other.location).toContain("elsewhere");
  });

  it("the socket-file kind (macOS, BSD): a live holder refuses, a SIGKILLed holder's leftover file is replaced", async () => {
    const child = holder(root, "darwin");
    await child.next("locked");
    expect(await access(join(root, ".lock.sock")).then(() => true)).toBe(true);
    await expect(StateLock.acquire(root, "darwin")).rejects.toMatchObject({ code: "ERR_STATE_LOCKED", details: { pid: child.process.pid } });
    child.process.kill("SIGKILL");
    await child.exited;
    // The socket file outlived its process; nobody answers on it any more.
    expect(await access(join(root, ".lock.sock")).then(() => true)).toBe(true);
    const lock = await StateLock.acquire(root, "darwin");
    expect(lock.holder.pid).toBe(process.pid);
    const refused = await holder(root, "darwin").next("locked", "refused");
    expect(refused).toMatchObject({ ev: "refused", code: "ERR_STATE_LOCKED", details: { pid: process.pid } });
    await lock.release();
    await (await StateLock.acquire(root, "darwin")).release();
  });

  it("a second mount of the same directory names the same lock (bind mount where this machine allows one)", async () => {
    const { execFileSync } = await import("node:child_process");
    const { mkdir } = await import("node:fs/promises");
    const real = join(root, "real");
    const mounted = join(root, "mounted");
    await mkdir(real);
    await mkdir(mounted);
    let bound = false;
    try {
      execFileSync("mount", ["--bind", real, mounted], { stdio: "ignore" });
      bound = true;
    } catch {
      console.log("[figures] lock: bind mounts not permitted here; checked the address rule only");
    }
    try {
      if (bound) {
        await using _store = await DirectoryStore.open(real);
        await expect(new DirectoryStore(mounted).open()).rejects.toMatchObject({ code: "ERR_STATE_LOCKED", details: { pid: process.pid } });
      }
      // The address depends on the directory's identity, not on the path it was reached by.
      expect(lockAddress("/one/path", "64769:1234", "linux")).toBe(lockAddress("/another/path", "64769:1234", "linux"));
      expect(lockAddress("/one/path", "64769:1234", "linux")).not.toBe(lockAddress("/one/path", "64769:1235", "linux"));
    } finally {
      if (bound) execFileSync("umount", [mounted]);
    }
  });
});
