/**
 * A generation worker that can be crashed from the main thread, as a native fault would end it: the
 * test side posts on a BroadcastChannel named in workerData, and the thread exits with that code.
 */
import { BroadcastChannel, parentPort, workerData } from "node:worker_threads";
import { AgentRuntimeError } from "../errors.js";
import { runWorkerLoop } from "../worker/worker-loop.js";

if (!parentPort) throw new Error("crashable-worker must run in a worker thread");
const parent = parentPort;
/** Once crashing, nothing more is answered: pending requests end as the thread's exit rejects them. */
let crashing = false;
const loop = runWorkerLoop({
  postMessage: (message) => {
    if (!crashing) parent.postMessage(message);
  },
  on: (event, listener) => parent.on(event, listener),
});
const channel = new BroadcastChannel(String((workerData as { crashChannel?: string }).crashChannel));
channel.unref();
channel.onmessage = (event) => {
  const { exitCode } = (event as { data: { exitCode: number } }).data;
  crashing = true;
  // Running evaluations stop first: one still inside the addon while the thread exits ends the process.
  void loop.stopRunning(new AgentRuntimeError("ERR_WORKER_CRASHED")).then(() => process.exit(exitCode));
};
