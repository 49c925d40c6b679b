import { copyFile, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { DirectoryStore } from "../../src/store/directory-store.js";
import { encodeEntry, FRAME_HEADER_BYTES } from "../../src/store/journal.js";
import type { AgentRecord, KvDescriptor } from "../../src/store/state-store.js";
import { populationRecord } from "./populate.js";

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "agentrt-journal-"));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const agentDir = (id: string): string => join(root, "agents", encodeURIComponent(id));
const journalPath = (id: string): string => join(agentDir(id), "journal");
const recordPath = (id: string): string => join(agentDir(id), "agent.json");

const turn = (n: number) => ({
  messages: [
    { role: "user" as const, content: `message ${n}` },
    { role: "assistant" as const, content: `reply ${n}` },
  ],
  updatedAt: 2_000_000 + n,
});

/** A store that never compacts unless told to (so the journal's contents are under the test's control). */
const noCompaction = { compaction: { minBytes: Number.MAX_SAFE_INTEGER } };

async function spawnWithTurns(store: DirectoryStore, id: string, turns: number): Promise<AgentRecord> {
  const record = populationRecord(id, 0);
  await store.write(record);
  for (let n = 0; n < turns; n++) await store.appendTurn(id, turn(n));
  return record;
}

function expectedHistory(turns: number): AgentRecord["history"] {
  return Array.from({ length: turns }, (_, n) => turn(n).messages).flat();
}

/** Byte offsets where each journal frame starts, and the file's length. */
async function frameOffsets(id: string): Promise<{ starts: number[]; length: number }> {
  const bytes = await readFile(journalPath(id));
  const starts: number[] = [];
  for (let at = 0; at < bytes.length; at += FRAME_HEADER_BYTES + bytes.readUInt32BE(at + 4)) starts.push(at);
  return { starts, length: bytes.length };
}

describe("journal: appends and reads", () => {
  it("an appended turn is in the history read back by a new store object (a restart)", async () => {
    const store = new DirectoryStore(root, noCompaction);
    await spawnWithTurns(store, "a", 3);
    const record = await new DirectoryStore(root).read("a");
    expect(record?.history).toEqual(expectedHistory(3));
    expect(record?.updatedAt).toBe(turn(2).updatedAt);
    expect(store.stats.recordWrites).toBe(1);
    expect(store.stats.appends).toBe(3);
  });

  it("bytes written per turn do not grow with the history (no compaction)", async () => {
    const store = new DirectoryStore(root, noCompaction);
    await spawnWithTurns(store, "a", 0);
    const sizes: number[] = [];
    for (let n = 0; n < 300; n++) {
      const before = store.stats.bytesWritten;
      await store.appendTurn("a", turn(n % 10)); // same message sizes throughout
      sizes.push(store.stats.bytesWritten - before);
    }
    // Only the sequence number's digits change (1 → 300).
    expect(Math.max(...sizes) - Math.min(...sizes)).toBeLessThanOrEqual(2);
    expect((await store.read("a"))!.history).toHaveLength(600);
  });

  it("amortised bytes per turn stay flat with compaction on (default policy)", async () => {
    const store = new DirectoryStore(root, { compaction: { minBytes: 4096 } });
    await spawnWithTurns(store, "a", 0);
    const perTurn = async (turns: number): Promise<number> => {
      const before = store.stats.bytesWritten;
      for (let n = 0; n < turns; n++) await store.appendTurn("a", turn(n % 10));
      return (store.stats.bytesWritten - before) / turns;
    };
    const early = await perTurn(100); // history 0 → 200 messages
    await perTurn(400);
    const late = await perTurn(100); // history 1000 → 1200 messages
    expect(store.stats.compactions).toBeGreaterThan(3);
    // Proportional compaction bounds the amortised cost by ~3× the entry size, whatever the history.
    const entry = encodeEntry({ t: "turn", id: "a", gen: 1, seq: 1, at: 0, ...turn(0) }).length;
    expect(late).toBeLessThan(4 * entry);
    expect(late / early).toBeLessThan(2);
    expect((await new DirectoryStore(root).read("a"))!.history).toHaveLength(1200);
  });

  it("setKv commits a cache descriptor without rewriting the history, and sweeps the old cache file", async () => {
    const store = new DirectoryStore(root, noCompaction);
    await spawnWithTurns(store, "a", 50);
    const kvs: KvDescriptor[] = [];
    for (let n = 0; n < 2; n++) {
      const staged = await store.stageKv("a", ".bin");
      await writeFile(staged.path, Buffer.alloc(1000, n + 1));
      const committed = await staged.commit();
      kvs.push({ ...committed, tokens: 10, fingerprint: "f".repeat(64), engine: "llama.cpp", historyLength: 100 });
      const before = store.stats.bytesWritten;
      await store.setKv("a", kvs[n], 3_000_000 + n);
      expect(store.stats.bytesWritten - before).toBeLessThan(1000); // one small entry, not a 100-message record
    }
    const files = await readdir(agentDir("a"));
    expect(files.sort()).toEqual(["agent.json", "journal", kvs[1]!.file].sort());
    const record = await new DirectoryStore(root).read("a");
    expect(record?.kv).toEqual(kvs[1]);
    expect(record?.updatedAt).toBe(3_000_001);
    expect(record?.history).toHaveLength(100);
    await store.setKv("a", undefined, 3_000_002);
    expect((await new DirectoryStore(root).read("a"))?.kv).toBeUndefined();
  });

  it("compaction folds the journal into the record and empties the journal", async () => {
    const store = new DirectoryStore(root, { compaction: { minBytes: 1024, ratio: 0.5 } });
    await spawnWithTurns(store, "a", 40);
    expect(store.stats.compactions).toBeGreaterThan(0);
    expect((await stat(journalPath("a"))).size).toBeLessThan(1024 + 200);
    expect((await new DirectoryStore(root).read("a"))?.history).toEqual(expectedHistory(40));
  });

  it("write() replaces the record and supersedes the journal (a rewritten conversation)", async () => {
    const store = new DirectoryStore(root, noCompaction);
    const record = await spawnWithTurns(store, "a", 5);
    await store.write({ ...record, history: [{ role: "user", content: "fresh start" }], updatedAt: 9 });
    await store.appendTurn("a", turn(7));
    const read = await new DirectoryStore(root).read("a");
    expect(read?.history).toEqual([{ role: "user", content: "fresh start" }, ...turn(7).messages]);
  });

  it("history pages count from the newest message, oldest first within a page", async () => {
    const store = new DirectoryStore(root, noCompaction);
    await spawnWithTurns(store, "a", 10); // 20 messages
    const all = expectedHistory(10);
    expect(await store.history("a", { limit: 5 })).toEqual({ messages: all.slice(15, 20), start: 15, total: 20 });
    expect(await store.history("a", { before: 15, limit: 5 })).toEqual({ messages: all.slice(10, 15), start: 10, total: 20 });
    expect(await store.history("a", { before: 3, limit: 5 })).toEqual({ messages: all.slice(0, 3), start: 0, total: 20 });
    expect(await store.history("a", { before: 99 })).toEqual({ messages: all, start: 0, total: 20 });
    await expect(store.history("a", { limit: 0 })).rejects.toThrow(RangeError);
    await expect(store.history("a", { before: -1 })).rejects.toThrow(RangeError);
    await expect(store.history("nobody")).rejects.toMatchObject({ code: "ERR_AGENT_NOT_FOUND" });
  });

  it("appendTurn to an agent with no record is ERR_AGENT_NOT_FOUND; invalid messages are a TypeError", async () => {
    const store = new DirectoryStore(root);
    await expect(store.appendTurn("ghost", turn(0))).rejects.toMatchObject({ code: "ERR_AGENT_NOT_FOUND" });
    await spawnWithTurns(store, "a", 0);
    await expect(store.appendTurn("a", { messages: [{ role: "system", content: "x" }] as never, updatedAt: 1 })).rejects.toThrow(TypeError);
    await expect(store.appendTurn("../x", turn(0))).rejects.toMatchObject({ code: "ERR_INVALID_AGENT_ID" });
  });

  it("write() refuses a record a read would refuse (nothing is written)", async () => {
    const store = new DirectoryStore(root);
    await expect(store.write({ ...populationRecord("a", 0), history: [{ role: "system", content: "x" }] } as never)).rejects.toThrow(TypeError);
    await expect(store.write({ ...populationRecord("a", 0), updatedAt: Number.NaN })).rejects.toThrow(/timestamps/);
    expect(await store.has("a")).toBe(false);
  });

  it("reads a format-1 record (no journal), and its first append rewrites it in the current format", async () => {
    const { createHash } = await import("node:crypto");
    const legacy = { ...populationRecord("old", 2), formatVersion: 1 };
    const body = JSON.stringify(legacy);
    const envelope = { format: "agentrt-agent", sha256: createHash("sha256").update(body).digest("hex"), body };
    const store = new DirectoryStore(root, noCompaction);
    await store.write(populationRecord("other", 0)); // creates agents/
    await rm(agentDir("old"), { recursive: true, force: true });
    await import("node:fs/promises").then((fs) => fs.mkdir(agentDir("old")));
    await writeFile(recordPath("old"), JSON.stringify(envelope));
    const read = await store.read("old");
    expect(read?.history).toHaveLength(4);
    expect(read?.behaviour).toBeUndefined();
    await store.appendTurn("old", turn(0));
    const rewritten = JSON.parse(JSON.parse(await readFile(recordPath("old"), "utf8")).body);
    expect(rewritten.formatVersion).toBe(2);
    expect(rewritten.history).toHaveLength(6);
    expect((await new DirectoryStore(root).read("old"))?.history).toHaveLength(6);
  });
});

describe("journal: concurrency within one store object", () => {
  it("concurrent appends to one agent are all durable, in call order, through compactions", async () => {
    const store = new DirectoryStore(root, { compaction: { minBytes: 512, ratio: 0.2 } });
    await spawnWithTurns(store, "a", 0);
    await Promise.all(Array.from({ length: 60 }, (_, n) => store.appendTurn("a", turn(n))));
    expect(store.stats.compactions).toBeGreaterThan(0);
    expect((await new DirectoryStore(root).read("a"))?.history).toEqual(expectedHistory(60));
  });

  it("reads interleaved with appends and compactions see whole turns only, never fewer than already acknowledged", async () => {
    const store = new DirectoryStore(root, { compaction: { minBytes: 256, ratio: 0.1 } });
    await spawnWithTurns(store, "a", 0);
    let acknowledged = 0;
    const reads: Promise<void>[] = [];
    for (let n = 0; n < 40; n++) {
      const floor = acknowledged;
      reads.push(
        store.read("a").then((record) => {
          expect(record!.history.length % 2).toBe(0);
          expect(record!.history.length / 2).toBeGreaterThanOrEqual(floor);
        }),
      );
      await store.appendTurn("a", turn(n));
      acknowledged = n + 1;
    }
    await Promise.all(reads);
  });
});

describe("journal: damage", () => {
  it("a torn last entry, cut at every byte offset, is dropped; the next append replaces it", async () => {
    const store = new DirectoryStore(root, noCompaction);
    await spawnWithTurns(store, "a", 3);
    const full = await readFile(journalPath("a"));
    const { starts } = await frameOffsets("a");
    const lastStart = starts[2]!;
    const torn: number[] = [];
    for (let cut = lastStart; cut < full.length; cut++) {
      await writeFile(journalPath("a"), full.subarray(0, cut));
      const restarted = new DirectoryStore(root, { ...noCompaction, onTornTail: ({ bytes }) => torn.push(bytes) });
      expect((await restarted.read("a"))?.history, `cut at byte ${cut}`).toEqual(expectedHistory(2));
    }
    expect(torn).toHaveLength(full.length - lastStart - 1); // every cut but the one at the frame boundary
    // Appending after a torn tail truncates it first: the journal stays readable.
    await writeFile(journalPath("a"), full.subarray(0, full.length - 5));
    const restarted = new DirectoryStore(root, noCompaction);
    await restarted.appendTurn("a", turn(2));
    await restarted.appendTurn("a", turn(3));
    expect((await new DirectoryStore(root).read("a"))?.history).toEqual(expectedHistory(4));
  });

  it("a zero-filled tail (a file extended but not written before a crash) is dropped", async () => {
    const store = new DirectoryStore(root, noCompaction);
    await spawnWithTurns(store, "a", 2);
    const full = await readFile(journalPath("a"));
    await writeFile(journalPath("a"), Buffer.concat([full, Buffer.alloc(300)]));
    expect((await new DirectoryStore(root).read("a"))?.history).toEqual(expectedHistory(2));
  });

  it("every bit flip in the last entry drops that entry; in a middle entry it is ERR_STATE_CORRUPT", async () => {
    const store = new DirectoryStore(root, noCompaction);
    await spawnWithTurns(store, "a", 3);
    const full = await readFile(journalPath("a"));
    const { starts } = await frameOffsets("a");
    const check = async (from: number, to: number, expectCorrupt: boolean): Promise<void> => {
      for (let byte = from; byte < to; byte++) {
        for (let bit = 0; bit < 8; bit += 3) {
          const damaged = Buffer.from(full);
          damaged[byte] = damaged[byte]! ^ (1 << bit);
          await writeFile(journalPath("a"), damaged);
          const reading = new DirectoryStore(root).read("a");
          if (expectCorrupt) await expect(reading, `byte ${byte} bit ${bit}`).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
          else expect((await reading)?.history, `byte ${byte} bit ${bit}`).toEqual(expectedHistory(2));
        }
      }
    };
    await check(starts[1]!, starts[2]!, true); // middle entry
    await check(starts[2]!, full.length, false); // last entry
  });

  it("a journal copied from another agent is refused (never replayed onto this one)", async () => {
    const store = new DirectoryStore(root, noCompaction);
    await spawnWithTurns(store, "a", 2);
    await spawnWithTurns(store, "b", 0);
    await copyFile(journalPath("a"), journalPath("b"));
    await expect(new DirectoryStore(root).read("b")).rejects.toMatchObject({
      code: "ERR_STATE_CORRUPT",
      message: expect.stringContaining('belongs to agent "a"'),
    });
    // And no append lands on top of it.
    await expect(new DirectoryStore(root).appendTurn("b", turn(0))).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
  });

  it("a journal of a newer generation than its record (the record replaced by an older copy) is refused", async () => {
    const store = new DirectoryStore(root, noCompaction);
    await spawnWithTurns(store, "a", 1);
    const oldRecord = await readFile(recordPath("a"));
    await store.write({ ...populationRecord("a", 0), history: [{ role: "user", content: "rewritten" }] });
    await store.appendTurn("a", turn(1));
    await writeFile(recordPath("a"), oldRecord);
    await expect(new DirectoryStore(root).read("a")).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
  });

  it("entries out of sequence (one removed from the middle) are ERR_STATE_CORRUPT", async () => {
    const store = new DirectoryStore(root, noCompaction);
    await spawnWithTurns(store, "a", 3);
    const full = await readFile(journalPath("a"));
    const { starts } = await frameOffsets("a");
    await writeFile(journalPath("a"), Buffer.concat([full.subarray(0, starts[1]), full.subarray(starts[2])]));
    await expect(new DirectoryStore(root).read("a")).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
  });

  it("a corrupt compacted record is ERR_STATE_CORRUPT even with an intact journal", async () => {
    const store = new DirectoryStore(root, { compaction: { minBytes: 512, ratio: 0.1 } });
    await spawnWithTurns(store, "a", 20);
    expect(store.stats.compactions).toBeGreaterThan(0);
    const bytes = await readFile(recordPath("a"));
    const damaged = Buffer.from(bytes);
    damaged[Math.floor(bytes.length / 2)] = damaged[Math.floor(bytes.length / 2)]! ^ 4;
    await writeFile(recordPath("a"), damaged);
    await expect(new DirectoryStore(root).read("a")).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
    await expect(new DirectoryStore(root).appendTurn("a", turn(0))).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
  });

  it("a journal that is a FIFO or a folder is refused without blocking", async () => {
    const { execFileSync } = await import("node:child_process");
    const store = new DirectoryStore(root, noCompaction);
    await spawnWithTurns(store, "a", 1);
    await rm(journalPath("a"));
    execFileSync("mkfifo", [journalPath("a")]);
    await expect(new DirectoryStore(root).read("a")).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
    await rm(journalPath("a"));
    await import("node:fs/promises").then((fs) => fs.mkdir(journalPath("a")));
    await expect(new DirectoryStore(root).read("a")).rejects.toMatchObject({ code: "ERR_STATE_CORRUPT" });
    // write() (a reset, or the runtime removing and respawning) still replaces it.
    await new DirectoryStore(root).write(populationRecord("a", 1));
    expect((await new DirectoryStore(root).read("a"))?.history).toHaveLength(2);
  });
});

describe("journal: a crash at each step of a compaction loses no acknowledged turn", () => {
  /**
   * Compaction is: (1) temp record written, (2) renamed over agent.json, (3) journal emptied. Each state a
   * crash can leave is rebuilt from real files and read back, then appended to.
   */
  it("temp file only / new record + old journal / new record + empty journal", async () => {
    const store = new DirectoryStore(root, noCompaction);
    await spawnWithTurns(store, "a", 5);
    const oldRecord = await readFile(recordPath("a"));
    const withFifth = await readFile(journalPath("a"));
    // What a compaction writes: the folded record as the next generation (write() of the folded record).
    await store.write((await store.read("a"))!);
    const newRecord = await readFile(recordPath("a"));
    expect(newRecord.equals(oldRecord)).toBe(false);

    const states: Array<[string, () => Promise<void>]> = [
      [
        "temp record beside the old pair",
        async () => {
          await writeFile(recordPath("a"), oldRecord);
          await writeFile(journalPath("a"), withFifth);
          await writeFile(`${recordPath("a")}.0123456789ab.tmp`, newRecord.subarray(0, 100));
        },
      ],
      [
        "new record, journal not yet emptied",
        async () => {
          await writeFile(recordPath("a"), newRecord);
          await writeFile(journalPath("a"), withFifth);
        },
      ],
      [
        "new record, journal emptied",
        async () => {
          await writeFile(recordPath("a"), newRecord);
          await writeFile(journalPath("a"), "");
        },
      ],
    ];
    for (const [name, leave] of states) {
      await leave();
      const restarted = new DirectoryStore(root, noCompaction);
      expect((await restarted.read("a"))?.history, name).toEqual(expectedHistory(5));
      await restarted.appendTurn("a", turn(5));
      expect((await new DirectoryStore(root).read("a"))?.history, `${name}, then an append`).toEqual(expectedHistory(6));
    }
  });

  it("a damaged journal that a compaction already folded in (not yet emptied) does not fail the agent", async () => {
    const store = new DirectoryStore(root, noCompaction);
    await spawnWithTurns(store, "a", 3);
    const oldJournal = await readFile(journalPath("a"));
    await store.write((await store.read("a"))!); // the compaction's record, generation + 1
    const { starts } = await (async () => {
      await writeFile(journalPath("a"), oldJournal);
      return frameOffsets("a");
    })();
    const damaged = Buffer.from(oldJournal);
    damaged[starts[1]! + 20] = damaged[starts[1]! + 20]! ^ 1;
    await writeFile(journalPath("a"), damaged);
    const restarted = new DirectoryStore(root, noCompaction);
    expect((await restarted.read("a"))?.history).toEqual(expectedHistory(3));
    await restarted.appendTurn("a", turn(3));
    expect((await new DirectoryStore(root).read("a"))?.history).toEqual(expectedHistory(4));
  });

  it("a leftover journal from a removal a crash interrupted is never replayed onto a new agent of that id", async () => {
    const store = new DirectoryStore(root, noCompaction);
    await spawnWithTurns(store, "a", 3);
    await rm(recordPath("a")); // remove() deletes the record first
    expect(await store.read("a")).toBeUndefined();
    await store.write(populationRecord("a", 0)); // spawned again
    expect((await new DirectoryStore(root).read("a"))?.history).toEqual([]);
    await store.appendTurn("a", turn(9));
    expect((await new DirectoryStore(root).read("a"))?.history).toEqual(turn(9).messages);
  });
});
