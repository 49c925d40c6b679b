import { describe, expect, it } from "vitest";
import { SpecialToken, type ChatHistoryItem } from "node-llama-cpp";
import { completionChatWrapper, completionSeparator, completionText, toChatHistory } from "../../src/engines/chat-history.js";
import type { ChatMessage } from "../../src/engines/engine.js";

/** The prompt format of models without a chat template, as text (BOS written as <s>). */
async function render(messages: ChatMessage[], open = true) {
  const wrapper = await completionChatWrapper();
  const history: ChatHistoryItem[] = toChatHistory(messages, open);
  const state = wrapper.generateContextState({ chatHistory: history });
  const text = state.contextText.values.map((value) => (value instanceof SpecialToken ? `<${value.value}>` : String(value))).join("");
  return {
    text,
    stops: state.stopGenerationTriggers.map((trigger) =>
      trigger.values.map((v) => (v instanceof SpecialToken ? `<${v.value}>` : String(v))).join(""),
    ),
  };
}

describe("completion format (models without a chat template)", () => {
  const story: ChatMessage[] = [
    { role: "system", content: "Once upon a time, there was a little dragon named Spark." },
    { role: "user", content: "One day," },
    { role: "assistant", content: "Spark found a big red box." },
    { role: "user", content: "Then" },
  ];

  it("renders the conversation as one running text after BOS, with no chat markup", async () => {
    const { text } = await render(story);
    expect(text).toBe("<BOS>Once upon a time, there was a little dragon named Spark. One day, Spark found a big red box. Then");
  });

  it("ends where the model continues the last user text, so each turn's prompt extends the previous one", async () => {
    const first = await render(story.slice(0, 2));
    const second = await render(story);
    expect(first.text.endsWith("One day,")).toBe(true);
    expect(second.text.startsWith(first.text)).toBe(true);
  });

  it("attaches a reply that starts with punctuation or closes a quote to the text it continues", async () => {
    const comma = await render([
      { role: "user", content: "Once upon a time" },
      { role: "assistant", content: ", there was a cat." },
      { role: "user", content: "The end." },
    ]);
    expect(comma.text).toBe("<BOS>Once upon a time, there was a cat. The end.");
    expect(completionSeparator('She said, "Hello', '" and smiled.', true)).toBe("");
    expect(completionSeparator("She said,", '"Hello."', true)).toBe(" ");
    expect(completionSeparator("Tom", "'s dog ran.", true)).toBe("");
    // User text after a reply is a new sentence: always one space, none when either side has whitespace.
    expect(completionSeparator("It was fun.", ", said Tom", false)).toBe(" ");
    expect(completionSeparator("It was fun.\n", "The next day", false)).toBe("");
  });

  it("renders the same text for mlx-community folders without a template (completionText)", async () => {
    const conversations: ChatMessage[][] = [
      story,
      story.slice(0, 2),
      [
        { role: "user", content: "Once upon a time" },
        { role: "assistant", content: ", there was a cat." },
        { role: "user", content: "The end." },
      ],
      [
        { role: "system", content: 'Tom said, "Hi' },
        { role: "user", content: "there" },
        { role: "assistant", content: '" and ran.' },
        { role: "user", content: "\nThen" },
      ],
    ];
    for (const messages of conversations) expect("<BOS>" + completionText(messages)).toBe((await render(messages)).text);
  });

  it("stops at EOS and at BOS (where a base model starts a new document)", async () => {
    const { stops } = await render(story);
    expect(stops).toEqual(["<EOS>", "<BOS>"]);
  });
});
