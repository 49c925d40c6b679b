/**
 * Tokenization and chat formatting for mlx-community folders: tokenizer.json + tokenizer_config.json through
 * @huggingface/tokenizers, the chat template through @huggingface/jinja, rendered the way transformers'
 * `apply_chat_template` (and so mlx-lm) does: the template gets `messages`, `add_generation_prompt` and the special
 * token strings, and the text is tokenized without adding special tokens (the template writes them).
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { AgentRuntimeError } from "../../errors.js";
import { COMPLETION_FORMAT, completionText } from "../chat-history.js";
import type { ChatMessage } from "../engine.js";
import type { ChatFrontend, RenderedPrompt } from "./chat.js";
import type { HfConfig } from "./hf-source.js";

type TokenizerInstance = import("@huggingface/tokenizers").Tokenizer;
type TemplateInstance = import("@huggingface/jinja").Template;

/** Loads the mlx-community folder chat front end (see the file comment). */
export function loadHfChat(folder: string, config: HfConfig): Promise<ChatFrontend> {
  return HfChat.load(folder, config);
}

class HfChat implements ChatFrontend {
  readonly formatName: string;
  readonly vocabSize: number;
  readonly #tokenizer: TokenizerInstance;
  readonly #template: TemplateInstance | undefined;
  readonly #special: Record<string, string>;
  readonly #stopTokens: ReadonlySet<number>;

  static async load(folder: string, config: HfConfig): Promise<HfChat> {
    const invalid = (message: string, cause?: unknown) => new AgentRuntimeError("ERR_MODEL_INVALID", `${folder}: ${message}`, cause ? { cause } : {});
    const readJson = async (name: string, required: boolean): Promise<Record<string, unknown> | undefined> => {
      try {
        return JSON.parse(await readFile(join(folder, name), "utf8")) as Record<string, unknown>;
      } catch (error) {
        if (!required && (error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
        throw invalid(`cannot read ${name}: ${(error as Error).message}`, error);
      }
    };
    const tokenizerJson = (await readJson("tokenizer.json", true))!;
    const tokenizerConfig = (await readJson("tokenizer_config.json", false)) ?? {};
    const generationConfig = await readJson("generation_config.json", false);
    const [{ Tokenizer }, { Template }] = await Promise.all([import("@huggingface/tokenizers"), import("@huggingface/jinja")]);
    let tokenizer: TokenizerInstance;
    try {
      tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig);
    } catch (error) {
      throw invalid(`tokenizer.json is not usable: ${(error as Error).message}`, error);
    }
    let source = pickTemplate(tokenizerConfig["chat_template"]);
    if (source === undefined) {
      try {
        source = await readFile(join(folder, "chat_template.jinja"), "utf8");
      } catch {
        source = undefined;
      }
    }
    // Without a template the folder gets the completion format, as a GGUF without one does.
    let template: TemplateInstance | undefined;
    try {
      template = source === undefined ? undefined : new Template(source);
    } catch (error) {
      throw invalid(`the chat template does not parse: ${(error as Error).message}`, error);
    }
    const special: Record<string, string> = {};
    for (const name of ["bos_token", "eos_token", "unk_token", "pad_token"]) {
      const value = tokenString(tokenizerConfig[name]);
      if (value !== undefined) special[name] = value;
    }
    const stopTokens = new Set<number>();
    for (const id of [config.eos_token_id, generationConfig?.["eos_token_id"]].flat()) {
      if (typeof id === "number") stopTokens.add(id);
    }
    if (special["eos_token"] !== undefined) {
      const id = tokenizer.token_to_id(special["eos_token"]);
      if (id !== undefined) stopTokens.add(id);
    }
    if (template === undefined && special["bos_token"] !== undefined) {
      // The completion format ends a reply where a base model starts a new document.
      const id = tokenizer.token_to_id(special["bos_token"]);
      if (id !== undefined) stopTokens.add(id);
    }
    return new HfChat(tokenizer, template, special, stopTokens, template ? templateName(tokenizerConfig) : COMPLETION_FORMAT, config.vocab_size ?? 0);
  }

  private constructor(
    tokenizer: TokenizerInstance,
    template: TemplateInstance | undefined,
    special: Record<string, string>,
    stopTokens: ReadonlySet<number>,
    formatName: string,
    vocabSize: number,
  ) {
    this.#tokenizer = tokenizer;
    this.#template = template;
    this.#special = special;
    this.#stopTokens = stopTokens;
    this.formatName = formatName;
    this.vocabSize = vocabSize;
  }

  render(messages: readonly ChatMessage[]): RenderedPrompt {
    let text: string;
    try {
      text = !this.#template
        ? (this.#special["bos_token"] ?? "") + completionText(messages)
        : this.#template.render({
            messages: messages.map((m) => ({ role: m.role, content: m.content })),
            add_generation_prompt: messages.at(-1)?.role === "user",
            ...this.#special,
          });
    } catch (error) {
      throw new AgentRuntimeError("ERR_ENGINE_FAILED", `The chat template failed to render: ${(error as Error).message}`, { cause: error });
    }
    const tokens = this.#tokenizer.encode(text, { add_special_tokens: false }).ids;
    return { tokens, stopTokens: this.#stopTokens, stopStrings: [] };
  }

  decode(tokens: readonly number[]): string {
    return this.#tokenizer.decode([...tokens], { skip_special_tokens: true });
  }

  async dispose(): Promise<void> {}
}

function pickTemplate(value: unknown): string | undefined {
  if (typeof value === "string" && value.length > 0) return value;
  // Some tokenizer configs list named templates: [{name: "default", template: "..."}, …].
  if (Array.isArray(value)) {
    const named = value as { name?: string; template?: string }[];
    return (named.find((t) => t.name === "default") ?? named[0])?.template;
  }
  return undefined;
}

function tokenString(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (value && typeof value === "object" && typeof (value as { content?: unknown }).content === "string") {
    return (value as { content: string }).content;
  }
  return undefined;
}

function templateName(tokenizerConfig: Record<string, unknown>): string {
  const cls = tokenizerConfig["tokenizer_class"];
  return typeof cls === "string" ? `jinja:${cls}` : "jinja";
}
