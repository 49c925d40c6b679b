import { connect } from "@nats-io/transport-node";
import { parseArgs } from "node:util";
import { RpcClient } from "../cluster/rpc-client.js";

const USAGE = `usage: agentrt drain --cluster <urls> --node <name> [--cluster-prefix <name>]

Asks a running cluster node to hand every agent it owns over to the other nodes: each is passivated
into the cluster's store (its cache uploaded), its lease released, and its next message answered by
another node. The node keeps serving (forwarding) and takes no new agents; stop it when this returns.
`;

/** `agentrt drain`: drains one node of a cluster over NATS; resolves when the node reports it done. */
export async function drainCommand(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      cluster: { type: "string" },
      node: { type: "string" },
      "cluster-prefix": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  if (!values.cluster || !values.node) throw new TypeError(`--cluster and --node are required\n${USAGE}`);
  const nc = await connect({ servers: values.cluster.split(",").map((url) => url.trim()), name: "agentrt-drain" });
  const client = new RpcClient(nc, { ...(values["cluster-prefix"] ? { prefix: values["cluster-prefix"] } : {}) });
  try {
    const started = Date.now();
    process.stdout.write(`agentrt: draining node ${values.node}…\n`);
    await client.call(values.node, "drain", {}, { timeoutMs: 30 * 60_000 });
    process.stdout.write(`agentrt: node ${values.node} drained in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  } finally {
    await client.close();
    await nc.close();
  }
}
