import type {
  AgentRecord,
  HistoryOptions,
  HistoryPage,
  KvDescriptor,
  ListOptions,
  StagedKv,
  StateStore,
  StoredAgentPage,
  TurnAppend,
} from "./state-store.js";

/**
 * A {@link StateStore} that forwards every call to another: extend it and override what you watch or
 * change (fault injection, timing, logging), so that a wrapper keeps compiling as the interface grows.
 */
export class DelegatingStore implements StateStore {
  constructor(readonly inner: StateStore) {}

  get location(): string {
    return this.inner.location;
  }
  open(): Promise<void> {
    return this.inner.open();
  }
  list(options?: ListOptions): Promise<StoredAgentPage> {
    return this.inner.list(options);
  }
  count(): Promise<number> {
    return this.inner.count();
  }
  has(id: string): Promise<boolean> {
    return this.inner.has(id);
  }
  read(id: string): Promise<AgentRecord | undefined> {
    return this.inner.read(id);
  }
  write(record: AgentRecord): Promise<void> {
    return this.inner.write(record);
  }
  appendTurn(id: string, turn: TurnAppend): Promise<void> {
    return this.inner.appendTurn(id, turn);
  }
  setKv(id: string, kv: KvDescriptor | undefined, updatedAt: number): Promise<void> {
    return this.inner.setKv(id, kv, updatedAt);
  }
  history(id: string, options?: HistoryOptions): Promise<HistoryPage> {
    return this.inner.history(id, options);
  }
  stageKv(id: string, extension?: string): Promise<StagedKv> {
    return this.inner.stageKv(id, extension);
  }
  openKv(id: string, kv: KvDescriptor): Promise<string> {
    return this.inner.openKv(id, kv);
  }
  remove(id: string): Promise<void> {
    return this.inner.remove(id);
  }
  bytesOnDisk(id: string): Promise<number> {
    return this.inner.bytesOnDisk(id);
  }
  dispose(): Promise<void> {
    return this.inner.dispose();
  }
}
