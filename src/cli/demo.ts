import { rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import pino from "pino";
import { AgentRuntime, conversation, type AgentBehaviour, type AgentRuntimeOptions, type TurnResult } from "../index.js";
import { completionSeparator } from "../engines/chat-history.js";
import { integer, parseCommon } from "./args.js";
import { completeSentences, DEMO_STORIES, FOURTH_STORY, REHYDRATION_CUE, type DemoStory } from "./stories.js";
import { formatBytes, formatTable } from "./table.js";

const USAGE = `usage: agentrt demo [options]

Three storytellers (maxAgents 3) each carry a story forward, one sentence of yours at a time; a fourth
evicts the least recently used one to disk; a message brings it back, and the demo checks that it goes
on exactly as an agent that never left memory would. Then the memory report and the timings.

  --model, --engine, --threads, --state-dir (default .state/demo), --context-size (default 512),
  --max-agents (default 3): as for every command (agentrt --help)
  --max-tokens <n>   reply length limit per turn (default 48)
  -v, --verbose      debug logs on stderr
`;

/**
 * A turn keeps the reply's complete sentences: the model stops at a token limit, mid-sentence, and a
 * story goes on better from a full stop. The printed reply is exactly what is recorded.
 */
export const storyteller: AgentBehaviour = {
  name: "storyteller",
  prompt: (agent, text) => conversation.prompt(agent, text),
  record: (agent, text, reply) => conversation.record(agent, text, completeSentences(reply)),
};

/**
 * The seed scenario on a completion model: three agents with distinct roles and maxAgents 3, two turns
 * each, a fourth agent that forces the least recently used one to disk, a message that brings it back
 * (checked against a control runtime where the same agent never leaves memory), then memory and timings.
 */
export async function demoCommand(argv: string[]): Promise<void> {
  const { common, values } = parseCommon(
    argv,
    { stateDir: resolve(".state/demo") },
    {
      "max-tokens": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  );
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  const maxTokens = integer("max-tokens", values["max-tokens"]) ?? 48;
  // Every run tells the stories from the start.
  await rm(common.stateDir, { recursive: true, force: true });
  const out = (text: string) => process.stdout.write(text);
  const options = (stateDir: string, maxAgents: number): AgentRuntimeOptions => ({
    model: common.model,
    ...(common.engine ? { engine: common.engine } : {}),
    stateDir,
    maxAgents,
    contextSize: common.contextSize ?? 512,
    ...(common.threads ? { threads: common.threads } : {}),
    maxTokens,
    behaviour: storyteller,
    logger: pino({ level: common.verbose ? "debug" : "warn" }, pino.destination(2)),
  });

  out(`agentrt demo\n  model:  ${common.model}\n  state:  ${common.stateDir}\n  loading model in the generation worker…\n`);
  const loadStarted = performance.now();
  const runtime = await AgentRuntime.create(options(common.stateDir, common.maxAgents ?? 3));
  const info = runtime.model;
  out(
    `  loaded ${info.name} on ${info.engine} in ${Math.round(performance.now() - loadStarted)} ms ` +
      `(${formatBytes(info.modelBytes)}, context ${info.contextSize}/agent, ${info.threads} threads, chat format ${info.chatFormat})\n\n`,
  );
  out(
    "Each agent tells its own story. Each turn you write the first words of the next sentence and the\n" +
      "agent goes on (greedy decoding; a turn keeps the reply's complete sentences).\n\n",
  );

  runtime.subscribe("agent:passivated", (e) =>
    out(`  ⇣ passivated ${e.id}: ${e.tokens} cached tokens → ${formatBytes(e.bytes)} on disk in ${e.ms.toFixed(1)} ms\n`),
  );
  runtime.subscribe("agent:rehydrated", (e) =>
    out(
      `  ⇡ rehydrated ${e.id}: ${e.tokens} tokens from ${e.source === "state" ? "its KV state file" : "its history, re-evaluated"} in ${e.ms.toFixed(1)} ms\n`,
    ),
  );
  runtime.subscribe("agent:error", (e) => out(`  ! ${e.id ?? "runtime"}: ${e.error.code} ${e.error.message}\n`));

  const results: TurnResult[] = [];
  const talk = async (id: string, text: string): Promise<string> => {
    out(`[${id}] user:  ${text}\n`);
    const kept = await streamSentences(runtime, id, text, (chunk, first) => out((first ? `[${id}] agent: ` : "") + oneLine(chunk)));
    const result = kept.result;
    const t = result.timings;
    out(
      `\n    (${t.evaluatedTokens} new tokens evaluated, ${t.reusedTokens} reused from cache, ${t.generatedTokens} generated, TTFT ${t.ttftMs.toFixed(1)} ms)\n`,
    );
    results.push(result);
    return kept.text;
  };
  const spawn = async (story: DemoStory) => {
    await runtime.spawn({ id: story.id, role: story.role, systemPrompt: story.opening });
    out(`  + spawned ${story.id} (${story.role}): "${story.opening}"\n`);
  };

  let failed = false;
  try {
    out("1. three agents, maxAgents 3\n");
    for (const story of DEMO_STORIES) await spawn(story);

    out("\n2. two turns each\n");
    const told = new Map<string, string[]>();
    for (let turn = 0; turn < 2; turn++) {
      for (const story of DEMO_STORIES) {
        const reply = await talk(story.id, story.cues[turn]!);
        told.set(story.id, [...(told.get(story.id) ?? []), reply]);
      }
    }

    out("\n3. a fourth agent: the least recently used idle agent goes to disk\n");
    await spawn(FOURTH_STORY);
    await talk(FOURTH_STORY.id, FOURTH_STORY.cues[0]!);

    const passivated = (await runtime.list()).agents.find((agent) => agent.status === "passivated");
    const story = DEMO_STORIES.find((s) => s.id === passivated?.id);
    if (passivated && story) {
      out(`\n4. a message to the passivated agent ${story.id}: rehydrated transparently, mid-story\n`);
      const reply = await talk(story.id, REHYDRATION_CUE);
      const cues = [...story.cues.slice(0, 2), REHYDRATION_CUE];
      const replies = [...told.get(story.id)!, reply];
      const control = await tellInControl(options(join(common.stateDir, "control"), 1), story, cues);
      if (control.every((text, i) => text === replies[i])) {
        out(`  ✓ identical: an agent that never left memory (a second runtime, same model) told ${story.id}'s story word for word the same\n`);
      } else {
        failed = true;
        out(
          `  ✗ DIFFERENT from an agent that never left memory:\n${control.map((text, i) => `    turn ${i + 1}: ${text === replies[i] ? "same" : `"${oneLine(text)}"`}`).join("\n")}\n`,
        );
      }

      out(`\n5. ${story.id}'s story so far (opening, your words and its replies; it survived a trip to disk)\n`);
      let whole = story.opening;
      cues.forEach((cue, i) => {
        whole += completionSeparator(whole, cue, false) + cue;
        whole += completionSeparator(whole, replies[i]!, true) + replies[i]!;
      });
      out(wrap(oneLine(whole), "    ") + "\n");
    } else {
      failed = true;
      out("\n4. no agent was passivated: is --max-agents above 3?\n");
    }

    out("\n6. memory\n");
    const memory = await runtime.memory({ agents: [...DEMO_STORIES, FOURTH_STORY].map((story) => story.id) });
    out(
      formatTable(
        memory.agents.map((agent) => ({
          agent: agent.id,
          status: agent.status,
          "cache tokens": agent.cacheTokens,
          "cache bytes": formatBytes(agent.cacheBytes),
          "saved tokens": agent.savedTokens,
          "disk bytes": formatBytes(agent.diskBytes),
        })),
      ) + "\n",
    );
    const t = memory.totals;
    out(
      `  model ${formatBytes(memory.model.bytes)} + KV ${formatBytes(t.cacheBytes)} in memory (${t.cacheTokens} tokens, ` +
        `${formatBytes(memory.model.kvBytesPerToken)}/token); ${t.residentAgents} resident, ${t.passivatedAgents} on disk (${formatBytes(t.diskBytes)})\n`,
    );

    out("\n7. timings\n");
    out(
      formatTable(
        results.map((r) => ({
          agent: r.id,
          turn: r.turnId,
          "prompt tok": r.timings.promptTokens,
          evaluated: r.timings.evaluatedTokens,
          reused: r.timings.reusedTokens,
          generated: r.timings.generatedTokens,
          "ttft ms": r.timings.ttftMs,
          "queue ms": r.timings.queueMs,
          "tok/s": r.timings.tokensPerSecond,
        })),
      ) + "\n",
    );
    out("\n8. close: the resident agents go to disk too\n");
  } finally {
    await runtime.close();
  }
  out(`\nThe agents' records and KV states are in ${common.stateDir} (the next run starts afresh).\n`);
  if (failed) process.exitCode = 1;
}

/**
 * Sends one turn and streams its text sentence by sentence: `emit` gets each piece once the sentence it
 * ends is complete, and the unfinished tail the behaviour drops is never printed.
 */
async function streamSentences(
  runtime: AgentRuntime,
  id: string,
  text: string,
  emit: (piece: string, first: boolean) => void,
): Promise<{ text: string; result: TurnResult }> {
  const turn = runtime.send(id, text);
  let reply = "";
  let printed = 0;
  const flush = (upTo: number) => {
    if (upTo <= printed) return;
    emit(reply.slice(printed, upTo), printed === 0);
    printed = upTo;
  };
  for await (const chunk of turn) {
    reply += chunk;
    // Only sentence ends already followed by whitespace: a later token cannot undo them.
    flush(completeSentences(reply, { final: false }).length);
  }
  const result = await turn.result;
  const kept = completeSentences(result.reply);
  flush(kept.length);
  if (printed === 0) emit("", true);
  return { text: kept, result };
}

/** Tells `story` with `cues` on a runtime of its own where the agent never leaves memory; the kept replies. */
async function tellInControl(options: AgentRuntimeOptions, story: DemoStory, cues: readonly string[]): Promise<string[]> {
  await rm(options.stateDir!, { recursive: true, force: true });
  const control = await AgentRuntime.create(options);
  try {
    await control.spawn({ id: story.id, role: story.role, systemPrompt: story.opening });
    const replies: string[] = [];
    for (const cue of cues) replies.push(completeSentences((await control.ask(story.id, cue)).reply));
    return replies;
  } finally {
    await control.close();
    await rm(options.stateDir!, { recursive: true, force: true });
  }
}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, " ");
}

/** Wraps text at about 100 columns. */
function wrap(text: string, indent: string): string {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(" ")) {
    if (line.length > 0 && line.length + word.length + 1 > 100 - indent.length) {
      lines.push(indent + line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(indent + line);
  return lines.join("\n");
}
