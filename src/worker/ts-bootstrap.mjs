// Lets the worker run from TypeScript sources (tests, `tsx`): registers tsx in the worker thread, then
// loads the real entry. Built packages load the compiled .js worker directly and never use this file.
import { workerData } from "node:worker_threads";
import { register } from "tsx/esm/api";

register();
await import(workerData.entry);
