#!/usr/bin/env node
import { AgentRuntimeError } from "../src/errors.js";

const USAGE = `usage: agentrt <command> [options]

commands:
  demo     storytelling agents on the default model: passivation, rehydration, memory, timings
  serve    serve agents over HTTP (agent API, OpenAI-compatible /v1/chat/completions); serve --help
  drain    hand a cluster node's agents over to the other nodes (rolling restarts); drain --help

common options:
  --model <path|hf:uri|folder>   model (default $AGENTRT_MODEL, else stories260K.gguf found in
                                 ../shared/models/ beside the repository, ./models/ or ../shared/models/)
  --engine llama.cpp|mlx         engine (default: from the model)
  --state-dir <dir>              agent state folder
  --threads <n>                  engine threads (default: cores − 1, at least 1)
  --context-size <n>             tokens per agent
  --max-agents <n>               resident agents
  -v, --verbose                  debug logs on stderr
`;

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  switch (command) {
    case "demo": {
      const { demoCommand } = await import("../src/cli/demo.js");
      return demoCommand(rest);
    }
    case "serve": {
      const { serveCommand } = await import("../src/cli/serve.js");
      return serveCommand(rest);
    }
    case "drain": {
      const { drainCommand } = await import("../src/cli/drain.js");
      return drainCommand(rest);
    }
    default:
      process.stdout.write(USAGE);
      if (command !== undefined && command !== "help" && command !== "--help") process.exitCode = 2;
  }
}

main(process.argv.slice(2)).catch((error: unknown) => {
  const code = error instanceof AgentRuntimeError ? ` [${error.code}]` : "";
  process.stderr.write(`agentrt: ${(error as Error).message ?? String(error)}${code}\n`);
  process.exitCode = 1;
});
