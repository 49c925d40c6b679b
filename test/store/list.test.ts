import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DirectoryStore } from "../../src/store/directory-store.js";
import { populateStore, populationId, populationRecord } from "./populate.js";

let root: string;
const ids: string[] = [];
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "agentrt-list-"));
  const store = new DirectoryStore(root, { fsync: false });
  await populateStore(store, { count: 1500, prefix: "support/", turns: 1 });
  await populateStore(store, { count: 1000, prefix: "sales/", turns: 1 });
  for (let n = 0; n < 1500; n++) ids.push(populationId("support/", n, 1500));
  for (let n = 0; n < 1000; n++) ids.push(populationId("sales/", n, 1000));
  ids.sort();
  // Things in agents/ that are not agents: a stray file with a valid id's name, a foreign folder name.
  await writeFile(join(root, "agents", "stray"), "x");
  await mkdir(join(root, "agents", "Not An Id"));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

async function pageThrough(store: DirectoryStore, options: { prefix?: string; limit?: number }): Promise<{ ids: string[]; pages: number }> {
  const seen: string[] = [];
  let pages = 0;
  for (let after: string | undefined; ;) {
    const page = await store.list({ ...options, after });
    pages++;
    seen.push(...page.ids);
    if (page.next === undefined) break;
    expect(page.next).toBe(page.ids[page.ids.length - 1]);
    after = page.next;
  }
  return { ids: seen, pages };
}

describe("DirectoryStore list and count", () => {
  it("pages through 2 500 agents in lexicographic order, each exactly once, without reading records", async () => {
    const store = new DirectoryStore(root);
    const { ids: seen, pages } = await pageThrough(store, { limit: 1000 });
    expect(seen).toEqual(ids);
    expect(pages).toBe(3);
    expect((await store.list()).ids).toEqual(ids.slice(0, 100)); // default limit 100
    expect(await store.count()).toBe(2500);
  });

  it("filters by prefix, and 'after' resumes inside the prefix", async () => {
    const store = new DirectoryStore(root);
    const sales = await pageThrough(store, { prefix: "sales/", limit: 333 });
    expect(sales.ids).toEqual(ids.filter((id) => id.startsWith("sales/")));
    expect(sales.pages).toBe(4);
    const page = await store.list({ prefix: "support/", after: "support/0999", limit: 3 });
    expect(page).toEqual({ ids: ["support/1000", "support/1001", "support/1002"], next: "support/1002" });
    expect(await store.list({ prefix: "support/", after: "support/1499" })).toEqual({ ids: [] });
    expect(await store.list({ prefix: "nobody/" })).toEqual({ ids: [] });
    // An 'after' before the prefix starts at the prefix; one past it yields nothing.
    expect((await store.list({ prefix: "support/", after: "a", limit: 1 })).ids).toEqual(["support/0000"]);
    expect((await store.list({ prefix: "sales/", after: "zzz" })).ids).toEqual([]);
  });

  it("the last page has no 'next' even when it is full", async () => {
    const store = new DirectoryStore(root);
    const page = await store.list({ prefix: "sales/", after: "sales/899", limit: 100 });
    expect(page.ids).toHaveLength(100);
    expect(page.next).toBeUndefined();
  });

  it("refuses bad options with errors naming them", async () => {
    const store = new DirectoryStore(root);
    await expect(store.list({ limit: 0 })).rejects.toThrow(/limit/);
    await expect(store.list({ limit: 1001 })).rejects.toThrow(RangeError);
    await expect(store.list({ limit: 1.5 })).rejects.toThrow(RangeError);
    await expect(store.list({ prefix: 3 as never })).rejects.toThrow(TypeError);
  });

  it("writes and removals through the store keep list, count and has up to date", async () => {
    const store = new DirectoryStore(root, { fsync: false });
    expect(await store.count()).toBe(2500);
    await store.write(populationRecord("sales/new", 1));
    expect(await store.count()).toBe(2501);
    expect(await store.has("sales/new")).toBe(true);
    expect((await store.list({ prefix: "sales/n" })).ids).toEqual(["sales/new"]);
    await store.write(populationRecord("sales/new", 2)); // a rewrite is not a new agent
    expect(await store.count()).toBe(2501);
    // Listed in order among the others once the sorted index exists.
    await store.write(populationRecord("sales/0500x", 1));
    expect((await store.list({ prefix: "sales/", after: "sales/049", limit: 3 })).ids).toEqual(["sales/050", "sales/0500x", "sales/051"]);
    await store.remove("sales/0500x");
    expect((await store.list({ prefix: "sales/", after: "sales/049", limit: 3 })).ids).toEqual(["sales/050", "sales/051", "sales/052"]);
    await store.remove("sales/new");
    expect(await store.count()).toBe(2500);
    expect(await store.has("sales/new")).toBe(false);
    expect((await store.list({ prefix: "sales/n" })).ids).toEqual([]);
  });
});

describe("folder names", () => {
  it("the index's id rule agrees with validateAgentId", async () => {
    const { validateAgentId, agentIdToKey } = await import("../../src/agent-id.js");
    const { folderToAgentId } = await import("../../src/store/agent-index.js");
    const samples = [
      "a",
      "support/42",
      "a.b-c_d",
      "0",
      "a/b/c/d/e/f/g/h",
      "a/b/c/d/e/f/g/h/i",
      "x".repeat(64),
      "x".repeat(65),
      `${"x".repeat(64)}/${"y".repeat(63)}`,
      `${"x".repeat(64)}/${"y".repeat(64)}`,
      "",
      ".",
      "..",
      "a/",
      "/a",
      "a//b",
      "A",
      "a b",
      "-a",
      "_a",
      ".a",
      "a/.b",
      "a\u0000",
      "ａ",
      "а",
      "a\u200b",
      "%",
      "a%2",
      "support%2F42",
      "sup/port%2f1",
    ];
    for (const id of samples) {
      let valid = true;
      try {
        validateAgentId(id);
      } catch {
        valid = false;
      }
      const key = (() => {
        try {
          return agentIdToKey(id);
        } catch {
          return id;
        }
      })();
      expect(folderToAgentId(key), JSON.stringify(id)).toBe(valid ? id : undefined);
    }
    expect(folderToAgentId("%E0%A4%A")).toBeUndefined(); // a malformed escape is not an agent
  });
});
