import { AgentRuntime } from "./src/index.ts";
import { mkdtempSync } from "node:fs";
const rt = await AgentRuntime.create({ model: "../shared/models/aidreams260K.gguf", stateDir: mkdtempSync("/tmp/exp-"), maxAgents: 3, contextSize: 512, threads: 1, maxTokens: 24 });
await rt.spawn({ id: "a", systemPrompt: "You are a dreamer." });
for (const u of ["Once upon a time", "I dream of", "In my dream, the city", "The machine remembers", "Tell me a dream.", "Dream:", "data streams of knowledge", "Weighted landscape"]) {
  const r = await rt.sendConversation("a", [{ role: "user", content: u }]).result;
  console.log(JSON.stringify(u), "→", JSON.stringify(r.reply));
}
await rt.close();
