/**
 * Population benchmark, the store's part (issue 11, "Agents that never die"):
 *
 * 1. Durable bytes written per turn against the history's length. Each turn is one `appendTurn`
 *    (journal entry + fdatasync; compaction when the journal has grown to the record's size), against
 *    rewriting the whole record per turn as `write()` does (what the runtime did before the journal).
 *    Target: flat. Bytes are counted by the store (journal frames + record files), so compactions are in.
 * 2. Opening a store of 1 000 / 10 000 / 100 000 agents (generated through the store API, fsync off):
 *    time and heap to open, count, get the first page, page through every id, read one agent and append
 *    a turn. Target for the runtime on top: 100 000 agents start in under 1 s with under 100 MiB heap.
 *
 *   npm run bench:population
 *   npm run bench:population -- --populations 1000,10000 --histories 10,100,1000 --turns 2000 --rewrite-turns 50 --dir /dev/shm
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { formatTable } from "../src/cli/table.js";
import { DirectoryStore } from "../src/store/directory-store.js";
import { populateStore, populationId, populationRecord } from "../test/store/populate.js";
import { CORES, intOption, listOption, median, progress, writeResult } from "./lib.js";

const { values } = parseArgs({
  options: {
    populations: { type: "string" },
    histories: { type: "string" },
    turns: { type: "string" },
    "rewrite-turns": { type: "string" },
    dir: { type: "string" },
  },
});
const populations = listOption("populations", values.populations, [1000, 10_000, 100_000]);
const histories = listOption("histories", values.histories, [10, 100, 1000]);
/** Journal appends per history length: enough for compactions to happen (and be paid for) at every length. */
const turns = intOption("turns", values.turns, 2000);
/** Whole-record rewrites per history length (each writes the whole record: fewer are enough). */
const rewriteTurns = intOption("rewrite-turns", values["rewrite-turns"], 50);
const parent = values.dir ?? tmpdir();

setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;
const heapMiB = (): number => {
  gc();
  gc();
  return process.memoryUsage().heapUsed / 2 ** 20;
};

const turnOf = (n: number) => ({
  messages: [
    { role: "user" as const, content: `Turn ${n}: where is my order? It was due last week and the tracking page says nothing.` },
    { role: "assistant" as const, content: `I am sorry about the delay. Your order left the warehouse yesterday and arrives on Friday.` },
  ],
  updatedAt: 1_700_000_000_000 + n,
});

interface AppendRow {
  historyTurns: number;
  recordBytes: number;
  journalBytesPerTurn: number;
  journalMsPerTurn: number;
  compactions: number;
  rewriteBytesPerTurn: number;
  rewriteMsPerTurn: number;
}

/**
 * Two agents with `history` turns each: `turns` more through the journal on one; `rewriteTurns` more by
 * whole-record rewrites on the other (the history grows the same way on both).
 */
async function appendCost(history: number): Promise<AppendRow> {
  const root = await mkdtemp(join(parent, "agentrt-bench-append-"));
  try {
    const store = new DirectoryStore(root);
    for (const id of ["journal", "rewrite"]) {
      const record = populationRecord(id, 0);
      for (let n = 0; n < history; n++) record.history.push(...turnOf(n).messages);
      await store.write(record);
    }
    const recordBytes = store.stats.bytesWritten / 2;

    const journal = { bytes: store.stats.bytesWritten, compactions: store.stats.compactions };
    const journalMs: number[] = [];
    for (let n = 0; n < turns; n++) {
      const started = performance.now();
      await store.appendTurn("journal", turnOf(history + n));
      journalMs.push(performance.now() - started);
    }
    const journalBytes = store.stats.bytesWritten - journal.bytes;
    const compactions = store.stats.compactions - journal.compactions;

    const current = (await store.read("rewrite"))!;
    const before = store.stats.bytesWritten;
    const rewriteMs: number[] = [];
    for (let n = 0; n < rewriteTurns; n++) {
      current.history.push(...turnOf(history + n).messages);
      const started = performance.now();
      await store.write(current);
      rewriteMs.push(performance.now() - started);
    }
    return {
      historyTurns: history,
      recordBytes,
      journalBytesPerTurn: journalBytes / turns,
      journalMsPerTurn: median(journalMs),
      compactions,
      rewriteBytesPerTurn: (store.stats.bytesWritten - before) / rewriteTurns,
      rewriteMsPerTurn: median(rewriteMs),
    };
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

interface PopulationRow {
  agents: number;
  generateS: number;
  openMs: number;
  countMs: number;
  firstPageMs: number;
  allPagesMs: number;
  readAndTurnMs: number;
  heapMiB: number;
}

async function population(agents: number): Promise<PopulationRow> {
  const root = await mkdtemp(join(parent, "agentrt-bench-population-"));
  try {
    progress(`generating ${agents} agents (10 turns each, fsync off)…`);
    let started = performance.now();
    await populateStore(new DirectoryStore(root, { fsync: false }), { count: agents, turns: 10 });
    const generateS = (performance.now() - started) / 1000;

    const heapBefore = heapMiB();
    started = performance.now();
    const store = await DirectoryStore.open(root);
    const openMs = performance.now() - started;
    started = performance.now();
    const count = await store.count();
    const countMs = performance.now() - started;
    if (count !== agents) throw new Error(`count() says ${count}, expected ${agents}`);
    started = performance.now();
    let page = await store.list({ limit: 100 });
    const firstPageMs = performance.now() - started;
    started = performance.now();
    let seen = page.ids.length;
    while (page.next !== undefined) {
      page = await store.list({ after: page.next, limit: 1000 });
      seen += page.ids.length;
    }
    const allPagesMs = performance.now() - started;
    if (seen !== agents) throw new Error(`paging saw ${seen} ids, expected ${agents}`);
    started = performance.now();
    const id = populationId("agent-", Math.floor(agents / 2), agents);
    await store.read(id);
    await store.appendTurn(id, turnOf(10));
    const readAndTurnMs = performance.now() - started;
    const heap = heapMiB() - heapBefore;
    await store.dispose();
    return { agents, generateS, openMs, countMs, firstPageMs, allPagesMs, readAndTurnMs, heapMiB: heap };
  } finally {
    progress(`removing ${agents} agents…`);
    await rm(root, { recursive: true, force: true });
  }
}

const appendRows: AppendRow[] = [];
for (const history of histories) {
  progress(`appending ${turns} turns to a history of ${history} turns…`);
  appendRows.push(await appendCost(history));
}
const populationRows: PopulationRow[] = [];
for (const agents of populations) populationRows.push(await population(agents));

console.log(
  `population (store): ${CORES} cores, state under ${parent}; per history length ${turns} journal appends, ${rewriteTurns} record rewrites; fsync on; B/turn includes compactions`,
);
console.log(
  formatTable(
    appendRows.map((r) => ({
      "history (turns)": r.historyTurns,
      "record B": r.recordBytes,
      "journal B/turn": Math.round(r.journalBytesPerTurn),
      "journal ms/turn": r.journalMsPerTurn,
      compactions: r.compactions,
      "rewrite B/turn": Math.round(r.rewriteBytesPerTurn),
      "rewrite ms/turn": r.rewriteMsPerTurn,
    })),
  ),
);
console.log();
console.log(
  formatTable(
    populationRows.map((r) => ({
      agents: r.agents,
      "generate s": r.generateS,
      "open ms": r.openMs,
      "count ms": r.countMs,
      "first page ms": r.firstPageMs,
      "all pages ms": r.allPagesMs,
      "read+turn ms": r.readAndTurnMs,
      "heap MiB": r.heapMiB,
    })),
  ),
);
const flat = appendRows.length > 1 ? appendRows[appendRows.length - 1]!.journalBytesPerTurn / appendRows[0]!.journalBytesPerTurn : 1;
const largest = populationRows[populationRows.length - 1];
console.log(
  `\ntargets: bytes per turn flat (largest/smallest history: ${flat.toFixed(2)}×)` +
    (largest
      ? `; ${largest.agents} agents opened + counted + first page in ${(largest.openMs + largest.countMs + largest.firstPageMs).toFixed(0)} ms, ${largest.heapMiB.toFixed(1)} MiB heap (store only)`
      : ""),
);
const path = await writeResult("population.json", {
  date: new Date().toISOString(),
  cores: CORES,
  dir: parent,
  turns,
  rewriteTurns,
  append: appendRows,
  population: populationRows,
});
progress(`wrote ${path}`);
