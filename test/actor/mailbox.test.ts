import { describe, expect, it } from "vitest";
import { Mailbox } from "../../src/actor/mailbox.js";
import { isAgentRuntimeError } from "../../src/errors.js";

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe("Mailbox", () => {
  it("runs tasks one at a time, in the order posted", async () => {
    const mailbox = new Mailbox(10);
    const log: string[] = [];
    let running = 0;
    let maxRunning = 0;
    const task = (name: string) => async () => {
      running++;
      maxRunning = Math.max(maxRunning, running);
      log.push(`start ${name}`);
      await tick();
      log.push(`end ${name}`);
      running--;
      return name;
    };
    const results = await Promise.all(["a", "b", "c"].map((name) => mailbox.post(task(name))));
    expect(results).toEqual(["a", "b", "c"]);
    expect(maxRunning).toBe(1);
    expect(log).toEqual(["start a", "end a", "start b", "end b", "start c", "end c"]);
  });

  it("keeps going after a task fails", async () => {
    const mailbox = new Mailbox(4);
    const failed = mailbox.post(async () => {
      throw new Error("boom");
    });
    const next = mailbox.post(async () => "next");
    await expect(failed).rejects.toThrow("boom");
    await expect(next).resolves.toBe("next");
  });

  it("rejects posts beyond its capacity with ERR_MAILBOX_FULL", async () => {
    const mailbox = new Mailbox(2);
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const running = mailbox.post(() => gate); // running: not counted
    const waiting = [mailbox.post(async () => 1), mailbox.post(async () => 2)];
    const overflow = mailbox.post(async () => 3);
    await expect(overflow).rejects.toSatisfy((error) => isAgentRuntimeError(error, "ERR_MAILBOX_FULL"));
    expect(mailbox.pending).toBe(2);
    release();
    await running;
    await expect(Promise.all(waiting)).resolves.toEqual([1, 2]);
  });

  it("drain resolves when the queue is empty; rejectPending fails waiting tasks only", async () => {
    const mailbox = new Mailbox(4);
    let release!: () => void;
    const running = mailbox.post(() => new Promise<string>((resolve) => (release = () => resolve("ran"))));
    const waiting = mailbox.post(async () => "never");
    mailbox.rejectPending(new Error("closed"));
    await expect(waiting).rejects.toThrow("closed");
    const drained = mailbox.drain();
    release();
    await expect(running).resolves.toBe("ran");
    await drained;
    expect(mailbox.busy).toBe(false);
  });

  it("validates its capacity", () => {
    expect(() => new Mailbox(0)).toThrow(RangeError);
  });
});
