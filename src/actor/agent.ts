import type { Logger } from "pino";
import type { AgentBehaviour } from "./behaviour.js";
import type { ChatMessage, SamplingOptions } from "../engines/engine.js";
import type { AgentRuntimeError } from "../errors.js";
import type { AgentRecord, KvDescriptor } from "../store/state-store.js";
import { RECORD_FORMAT_VERSION } from "../store/state-store.js";
import type { TurnTimings } from "../events.js";
import { Mailbox } from "./mailbox.js";

/** Where an agent is. `failed` agents have a record that cannot be read; they answer with its error. */
export type AgentStatus =
  | { state: "resident" }
  | { state: "passivating" }
  | { state: "passivated" }
  | { state: "rehydrating" }
  | { state: "failed"; error: AgentRuntimeError };

/** A read-only snapshot of an agent, as returned by `get` and `list`. */
export interface AgentInfo {
  id: string;
  role: string;
  behaviour: string;
  status: AgentStatus["state"];
  systemPrompt: string;
  sampling: SamplingOptions;
  /** Messages in the history (user + assistant). */
  historyLength: number;
  turns: number;
  /** Messages waiting in the mailbox (not counting the one running). */
  queued: number;
  busy: boolean;
  createdAt: number;
  lastUsed: number;
  lastTurn?: TurnTimings | undefined;
  error?: { code: string; message: string } | undefined;
}

/** The runtime's side of an actor: identity, history, mailbox, residency bookkeeping. */
export class Agent {
  readonly id: string;
  readonly role: string;
  readonly systemPrompt: string;
  readonly sampling: SamplingOptions;
  readonly behaviour: AgentBehaviour;
  readonly mailbox: Mailbox;
  readonly log: Logger;
  readonly createdAt: number;
  history: ChatMessage[];
  status: AgentStatus;
  kv: KvDescriptor | undefined;
  pins = 0;
  lastUsed: number;
  lastTurn: TurnTimings | undefined;
  /** How the last load from history went: tokens served by the shared prompt cache, tokens evaluated. */
  lastLoad = { sharedPrefixTokens: 0, evaluatedTokens: 0 };
  /** Set once removed: queued work must not bring it back. */
  removed = false;

  constructor(init: {
    id: string;
    role: string;
    systemPrompt: string;
    sampling: SamplingOptions;
    behaviour: AgentBehaviour;
    history: ChatMessage[];
    status: AgentStatus;
    kv?: KvDescriptor | undefined;
    createdAt: number;
    lastUsed: number;
    mailboxCapacity: number;
    log: Logger;
  }) {
    this.id = init.id;
    this.role = init.role;
    this.systemPrompt = init.systemPrompt;
    this.sampling = init.sampling;
    this.behaviour = init.behaviour;
    this.history = init.history;
    this.status = init.status;
    this.kv = init.kv;
    this.createdAt = init.createdAt;
    this.lastUsed = init.lastUsed;
    this.mailbox = new Mailbox(init.mailboxCapacity);
    this.log = init.log;
  }

  get turns(): number {
    return this.history.filter((message) => message.role === "user").length;
  }

  toRecord(now: number): AgentRecord {
    return {
      formatVersion: RECORD_FORMAT_VERSION,
      id: this.id,
      role: this.role,
      systemPrompt: this.systemPrompt,
      sampling: this.sampling,
      history: this.history,
      createdAt: this.createdAt,
      updatedAt: now,
      kv: this.kv,
    };
  }

  info(): AgentInfo {
    return {
      id: this.id,
      role: this.role,
      behaviour: this.behaviour.name,
      status: this.status.state,
      systemPrompt: this.systemPrompt,
      sampling: this.sampling,
      historyLength: this.history.length,
      turns: this.turns,
      queued: this.mailbox.pending,
      busy: this.mailbox.busy,
      createdAt: this.createdAt,
      lastUsed: this.lastUsed,
      lastTurn: this.lastTurn,
      ...(this.status.state === "failed"
        ? { error: { code: this.status.error.code, message: this.status.error.message } }
        : {}),
    };
  }
}
