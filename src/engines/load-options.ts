import { KV_TYPES, type EngineLoadOptions } from "./engine.js";

/** Checks the options every engine relies on; bad values are TypeError/RangeError naming the option. */
export function validateLoadOptions(options: EngineLoadOptions): void {
  if (typeof options !== "object" || options === null) throw new TypeError("engine options must be an object");
  if (typeof options.model !== "string" || options.model.length === 0) throw new TypeError("model must be a non-empty string");
  const positive = (name: "contextSize" | "sequences" | "threads" | "batchSize", min: number) => {
    const value = options[name];
    if (!Number.isInteger(value) || (value as number) < min) throw new RangeError(`${name} must be an integer >= ${min}, got ${String(value)}`);
  };
  // Two tokens at least: the prompt's last token and the first generated one each need a cache slot.
  positive("contextSize", 2);
  positive("sequences", 1);
  positive("threads", 1);
  if (options.batchSize !== undefined) positive("batchSize", 1);
  if (options.kvBudgetBytes !== undefined && (!Number.isSafeInteger(options.kvBudgetBytes) || options.kvBudgetBytes < 1)) {
    throw new RangeError(`kvBudgetBytes must be a positive integer, got ${String(options.kvBudgetBytes)}`);
  }
  if (options.kvType !== undefined && !KV_TYPES.includes(options.kvType)) {
    throw new RangeError(`kvType must be one of ${KV_TYPES.map((t) => JSON.stringify(t)).join(", ")}, got ${JSON.stringify(options.kvType)}`);
  }
}
