import { describe, expect, it } from "vitest";
import { ResidentSlots } from "../../src/supervisor/resident-slots.js";

interface FakeAgent {
  id: string;
  pins: number;
  lastUsed: number;
}

function setup(maxAgents: number) {
  const passivated: string[] = [];
  let fail = false;
  const supervisor = new ResidentSlots<FakeAgent>({
    maxAgents,
    passivate: async (agent) => {
      if (fail) throw new Error("disk full");
      passivated.push(agent.id);
    },
  });
  return { supervisor, passivated, setFail: (value: boolean) => (fail = value) };
}

const agent = (id: string, lastUsed: number, pins = 0): FakeAgent => ({ id, lastUsed, pins });

describe("ResidentSlots (the supervisor's LRU)", () => {
  it("admits up to maxAgents without passivating", async () => {
    const { supervisor, passivated } = setup(2);
    expect(await supervisor.admit(agent("a", 1))).toBe(true);
    expect(await supervisor.admit(agent("b", 2))).toBe(true);
    expect(passivated).toEqual([]);
    expect(supervisor.residents.map((a) => a.id)).toEqual(["a", "b"]);
  });

  it("reports an already resident agent as not newly admitted", async () => {
    const { supervisor } = setup(2);
    const a = agent("a", 1);
    await supervisor.admit(a);
    expect(await supervisor.admit(a)).toBe(false);
  });

  it("passivates the least recently used idle agent, never a busy one", async () => {
    const { supervisor, passivated } = setup(3);
    const oldestButBusy = agent("oldest-busy", 1, 1);
    const older = agent("older", 2);
    const newer = agent("newer", 3);
    for (const a of [oldestButBusy, older, newer]) await supervisor.admit(a);
    expect(supervisor.chooseVictim()?.id).toBe("older");
    await supervisor.admit(agent("fourth", 4));
    expect(passivated).toEqual(["older"]);
    expect(supervisor.residents.map((a) => a.id).sort()).toEqual(["fourth", "newer", "oldest-busy"]);
  });

  it("waits while every resident is busy, then takes the first to go idle", async () => {
    const { supervisor, passivated } = setup(1);
    const busy = agent("busy", 1, 1);
    await supervisor.admit(busy);
    let admitted = false;
    const waiting = supervisor.admit(agent("next", 2)).then(() => (admitted = true));
    await new Promise((resolve) => setImmediate(resolve));
    expect(admitted).toBe(false);
    expect(passivated).toEqual([]);
    busy.pins = 0;
    supervisor.notify();
    await waiting;
    expect(passivated).toEqual(["busy"]);
  });

  it("an aborted wait rejects with the signal's reason", async () => {
    const { supervisor } = setup(1);
    await supervisor.admit(agent("busy", 1, 1));
    const controller = new AbortController();
    const waiting = supervisor.admit(agent("next", 2), controller.signal);
    controller.abort(new Error("gave up"));
    await expect(waiting).rejects.toThrow("gave up");
  });

  it("a failed passivation keeps the victim resident and fails the admission", async () => {
    const { supervisor, setFail } = setup(1);
    const victim = agent("victim", 1);
    await supervisor.admit(victim);
    setFail(true);
    await expect(supervisor.admit(agent("next", 2))).rejects.toThrow("disk full");
    expect(supervisor.residents).toEqual([victim]);
  });

  it("validates maxAgents", () => {
    expect(() => setup(0)).toThrow(RangeError);
  });
});
