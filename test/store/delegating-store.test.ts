import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, expect, it } from "vitest";
import { DelegatingStore } from "../../src/store/delegating-store.js";
import { DirectoryStore } from "../../src/store/directory-store.js";
import type { AgentRecord } from "../../src/store/state-store.js";
import { populationRecord } from "./populate.js";

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "agentrt-delegating-"));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

it("a wrapper overrides what it watches and forwards the rest (open, list, appendTurn, history, dispose)", async () => {
  const written: string[] = [];
  class Watching extends DelegatingStore {
    override async write(record: AgentRecord): Promise<void> {
      written.push(record.id);
      await super.write(record);
    }
  }
  const store = new Watching(new DirectoryStore(root));
  await store.open();
  await expect(new DirectoryStore(root).open()).rejects.toMatchObject({ code: "ERR_STATE_LOCKED" });
  await store.write(populationRecord("a", 1));
  await store.appendTurn("a", { messages: [{ role: "user", content: "more" }], updatedAt: 5 });
  expect(written).toEqual(["a"]);
  expect(store.location).toBe(root);
  expect(await store.list()).toEqual({ ids: ["a"] });
  expect(await store.count()).toBe(1);
  expect((await store.history("a", { limit: 1 })).messages).toEqual([{ role: "user", content: "more" }]);
  await store.dispose();
  await (await DirectoryStore.open(root)).dispose();
});
