/**
 * A chat wrapper's stop triggers, split the way a decode loop checks them: token ids (special tokens, checked on
 * each sampled id) and texts (checked on the decoded reply, see text-stream.ts). Shared by the llama.cpp engine's
 * decode loop and the MLX engine's GGUF front end, so both stop on the same triggers.
 */
import type { LlamaModel, LlamaText } from "node-llama-cpp";

type LlamaCppModule = typeof import("node-llama-cpp");

export interface SplitStopTriggers {
  tokens: number[];
  strings: string[];
}

/**
 * Splits `triggers` into ids and texts. A trigger mixing special tokens and text over several tokens is matched
 * as text only when every part is text (no template node-llama-cpp resolves for our models produces another kind).
 */
export function splitStopTriggers(
  triggers: readonly LlamaText[],
  model: LlamaModel,
  classes: Pick<LlamaCppModule, "SpecialToken" | "SpecialTokensText">,
): SplitStopTriggers {
  const { SpecialToken, SpecialTokensText } = classes;
  const tokens: number[] = [];
  const strings: string[] = [];
  for (const trigger of triggers) {
    const values = trigger.values;
    if (values.length === 1 && values[0] instanceof SpecialToken) {
      const id = model.tokenize(values[0].value as "EOS", "builtin")[0];
      if (id !== undefined) tokens.push(Number(id));
      continue;
    }
    if (values.length === 1 && values[0] instanceof SpecialTokensText) {
      const ids = model.tokenize(values[0].value, true);
      // One token whose plain-text detokenization differs from the trigger is a control token: stop on its id.
      if (ids.length === 1 && model.detokenize(ids, false) !== values[0].value) {
        tokens.push(Number(ids[0]));
        continue;
      }
      strings.push(values[0].value);
      continue;
    }
    if (values.every((v) => typeof v === "string" || v instanceof SpecialTokensText)) {
      const text = values.map((v) => (typeof v === "string" ? v : (v as InstanceType<typeof SpecialTokensText>).value)).join("");
      if (text.length > 0) strings.push(text);
    }
  }
  return { tokens, strings: [...new Set(strings)] };
}
