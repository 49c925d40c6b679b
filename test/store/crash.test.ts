/**
 * SIGKILL at random moments while a child process appends turns, commits caches and compacts (every few
 * appends): after each kill, every acknowledged turn is in the store, in order, nothing durable
 * disappeared, the saved cache each agent names is on disk, and a new process takes the lock at once.
 */
import { access, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DirectoryStore } from "../../src/store/directory-store.js";
import { startFixture } from "../helpers/child.js";

const FIXTURES = new URL("./fixtures/", import.meta.url);

const KILLS = Number(process.env.AGENTRT_STORE_CRASH_KILLS ?? 12);
const SEED = Number(process.env.AGENTRT_STORE_CRASH_SEED ?? 7);
const AGENTS = 3;

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "agentrt-store-crash-"));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe("store crash harness", () => {
  it(`survives ${KILLS} SIGKILLs during appends, cache commits and compactions`, { timeout: 300_000 }, async () => {
    const acked = new Map<string, number>(); // highest acknowledged turn per agent
    const durable = new Map<string, number>(); // turns seen in the store after the previous kill
    let acks = 0;
    let compactions = 0;
    for (let kill = 0; kill < KILLS; kill++) {
      const child = startFixture("append-child.ts", [root, String(AGENTS), String(SEED + kill)], FIXTURES);
      await child.next("ready");
      // Let it run a random while, then kill it mid-whatever.
      await new Promise((resolve) => setTimeout(resolve, 30 + ((SEED * 7919 + kill * 104729) % 400)));
      child.process.kill("SIGKILL");
      await child.exited;
      for (const line of child.lines) {
        if (line.ev !== "ack") continue;
        acks++;
        acked.set(String(line.id), Math.max(acked.get(String(line.id)) ?? -1, Number(line.n)));
        compactions = Math.max(compactions, Number(line.compactions));
      }
      const store = new DirectoryStore(root);
      for (let i = 0; i < AGENTS; i++) {
        const id = `crash/${i}`;
        const record = await store.read(id);
        expect(record, `kill ${kill}: ${id} exists`).toBeDefined();
        const history = record!.history;
        const turns = history.length / 2;
        expect(Number.isInteger(turns), `kill ${kill}: ${id} holds whole turns`).toBe(true);
        history.forEach((message, index) => {
          const n = Math.floor(index / 2);
          if (index % 2 === 0) expect(message.content.startsWith(`${id} #${n} `), `kill ${kill}: ${id} message ${index}`).toBe(true);
          else expect(message.content).toBe(`reply #${n}`);
        });
        expect(turns, `kill ${kill}: every acknowledged turn of ${id} is stored (seed ${SEED + kill})`).toBeGreaterThan(acked.get(id) ?? -1);
        expect(turns, `kill ${kill}: nothing durable of ${id} disappeared`).toBeGreaterThanOrEqual(durable.get(id) ?? 0);
        durable.set(id, turns);
        if (record!.kv) await access(join(root, "agents", encodeURIComponent(id), record!.kv.file));
      }
    }
    console.log(`[figures] store crash: ${KILLS} kills, ${acks} acknowledged appends checked, ${compactions} compactions in the longest-lived child`);
    expect(acks, "the children acknowledged turns").toBeGreaterThan(KILLS);
    expect(compactions, "compactions ran").toBeGreaterThan(0);
    // The last child was SIGKILLed holding the lock: it is free at once.
    await (await DirectoryStore.open(root)).dispose();
  });
});
