/**
 * The generation worker: one thread that owns the model and the inference context and runs every
 * evaluation for every agent. It only speaks the protocol in ./protocol.ts.
 */
import { parentPort } from "node:worker_threads";
import { runWorkerLoop } from "./worker-loop.js";

if (!parentPort) throw new Error("generation-worker must run in a worker thread");
runWorkerLoop(parentPort);
