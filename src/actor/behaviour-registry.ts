import { AgentRuntimeError } from "../errors.js";
import type { AgentBehaviour } from "./behaviour.js";
import { conversation } from "./behaviours/conversation.js";
import { summarizing } from "./behaviours/summarizing.js";

const NAME = /^[a-z0-9][a-z0-9_-]{0,63}$/;

/** The behaviours shipped with agentrt, always registered. */
export const BUILT_IN_BEHAVIOURS: readonly AgentBehaviour[] = [conversation, summarizing];

/** Checks a behaviour's shape, so a malformed one fails where it is given rather than mid-turn. */
export function checkBehaviour(behaviour: unknown): AgentBehaviour {
  const b = behaviour as Partial<AgentBehaviour> | null;
  if (typeof b !== "object" || b === null || typeof b.prompt !== "function" || typeof b.record !== "function") {
    throw new TypeError("behaviour must be an object with a name and prompt() and record() functions");
  }
  if (typeof b.name !== "string" || !NAME.test(b.name)) {
    throw new TypeError(`behaviour.name must be 1-64 of [a-z0-9_-], got ${JSON.stringify(b.name)}`);
  }
  if (b.context !== undefined && typeof b.context !== "function") throw new TypeError("behaviour.context must be a function");
  if (b.fold !== undefined && typeof b.fold !== "function") throw new TypeError("behaviour.fold must be a function");
  return b as AgentBehaviour;
}

/** Behaviours by name: what a stored agent's `behaviour` field is resolved through on restore. */
export class BehaviourRegistry {
  readonly #byName = new Map<string, AgentBehaviour>();

  constructor(behaviours: readonly AgentBehaviour[] = []) {
    for (const behaviour of [...BUILT_IN_BEHAVIOURS, ...behaviours]) this.register(behaviour);
  }

  /** Adds `behaviour`; a different behaviour already under its name is a TypeError. */
  register(behaviour: AgentBehaviour): void {
    const checked = checkBehaviour(behaviour);
    const existing = this.#byName.get(checked.name);
    if (existing && existing !== checked) throw new TypeError(`A different behaviour is already registered as ${JSON.stringify(checked.name)}`);
    this.#byName.set(checked.name, checked);
  }

  /** The behaviour registered as `name`; ERR_BEHAVIOUR_NOT_FOUND otherwise. */
  resolve(name: string): AgentBehaviour {
    const behaviour = this.#byName.get(name);
    if (!behaviour) {
      throw new AgentRuntimeError(
        "ERR_BEHAVIOUR_NOT_FOUND",
        `No behaviour is registered as ${JSON.stringify(name)} (known: ${this.names().join(", ")})`,
        {
          details: { behaviour: name },
        },
      );
    }
    return behaviour;
  }

  /** A name or an object (registered on first use) as a behaviour. */
  lookup(spec: string | AgentBehaviour): AgentBehaviour {
    if (typeof spec === "string") return this.resolve(spec);
    this.register(spec);
    return spec;
  }

  names(): string[] {
    return [...this.#byName.keys()].sort();
  }
}
