/**
 * A test double of NanoClaw's agent runner (its poll loop, container/agent-runner/src/poll-loop.ts),
 * written from the description in shared/reference/nanoclaw-provider.md, with an in-memory
 * mailbox instead of NanoClaw's SQLite one:
 *
 * - every `pollMs` (1 s in NanoClaw) it claims the pending inbound messages, formats them as an
 *   XML prompt and calls `provider.query({prompt, continuation, cwd, systemContext})`;
 * - while the query is open, every `activeMs` (500 ms) new messages are `push()`ed and marked
 *   completed at once; a pending slash command makes it call `end()` instead;
 * - every event is a heartbeat; `init` persists the continuation at once (the "store" outlives a
 *   runner, like NanoClaw's session DB); the first `result` completes the initial batch; a
 *   result's text is delivered as the outbound message, unchanged;
 * - an error thrown from the event stream is written to the user as `Error: <message>`, and the
 *   continuation is cleared when `provider.isSessionInvalid(err)`;
 * - `kill()` is a container death: nothing more is handled or persisted, no `end()` is called.
 */
import type { AgentProvider, AgentQuery, ProviderEvent } from './nanoclaw/container/agent-runner/src/providers/types';

/** What survives a runner (NanoClaw's session DB and mailbox). */
export class Store {
  continuation: string | undefined;
  /** Messages waiting: id, text. */
  pending: { id: string; text: string }[] = [];
  processing = new Set<string>();
  completed = new Set<string>();
  /** Outbound messages (result texts and error notices), in order. */
  outbound: string[] = [];
  private n = 0;
  /** A user message arrives. */
  send(text: string): string {
    const id = `in-${++this.n}`;
    this.pending.push({ id, text });
    return id;
  }
}

export interface RunnerOptions {
  provider: AgentProvider;
  store: Store;
  cwd: string;
  instructions?: string;
  pollMs?: number;
  activeMs?: number;
}

/** Formats a batch like NanoClaw does (XML, one element per message). */
export function formatMessages(msgs: { id: string; text: string }[]): string {
  return `<messages>\n${msgs.map((m) => `<message id="${m.id}">${m.text}</message>`).join('\n')}\n</messages>`;
}

export class Runner {
  /** Every event the runner saw, with the time it arrived. */
  readonly seen: { at: number; event: ProviderEvent }[] = [];
  /** Errors thrown from queries, as messages. */
  readonly thrown: unknown[] = [];
  /** The open query, if any. */
  query: AgentQuery | null = null;
  queries = 0;
  private killed = false;
  private readonly loop: Promise<void>;

  constructor(private readonly o: RunnerOptions) {
    this.loop = this.run();
  }

  /** A container death: stop at once, handle and persist nothing more. */
  kill(): void {
    this.killed = true;
    // The provider's loops die with the container (the provider's test hook; see halt()).
    (this.query as unknown as { halt?: () => void } | null)?.halt?.();
  }

  /** Waits for the loop to notice the kill. */
  async stopped(): Promise<void> {
    await this.loop;
  }

  private async run(): Promise<void> {
    const { store } = this.o;
    // Messages claimed by a runner that died are processed again.
    store.processing.clear();
    while (!this.killed) {
      const batch = store.pending.filter((m) => !store.processing.has(m.id) && !store.completed.has(m.id) && !m.text.startsWith('/'));
      const commands = store.pending.filter((m) => m.text.startsWith('/') && !store.completed.has(m.id));
      for (const c of commands) {
        // The runner itself handles /clear; other commands open a query of their own (not modelled).
        if (c.text === '/clear') {
          store.continuation = undefined;
          store.outbound.push('Session cleared.');
        }
        store.completed.add(c.id);
      }
      store.pending = store.pending.filter((m) => !store.completed.has(m.id));
      if (batch.length === 0) {
        await Bun.sleep(this.o.pollMs ?? 1000);
        continue;
      }
      for (const m of batch) store.processing.add(m.id);
      const ids = batch.map((m) => m.id);
      const q = this.o.provider.query({
        prompt: formatMessages(batch),
        continuation: store.continuation,
        cwd: this.o.cwd,
        systemContext: { instructions: this.o.instructions },
      });
      this.query = q;
      this.queries++;
      try {
        await this.process(q, ids);
      } catch (err) {
        if (this.killed) return;
        this.thrown.push(err);
        if (store.continuation && this.o.provider.isSessionInvalid(err)) store.continuation = undefined;
        store.outbound.push(`Error: ${err instanceof Error ? err.message : String(err)}`);
      }
      if (this.killed) return;
      this.query = null;
      for (const id of ids) this.complete(id);
    }
  }

  private complete(id: string): void {
    const { store } = this.o;
    store.processing.delete(id);
    store.completed.add(id);
    store.pending = store.pending.filter((m) => m.id !== id);
  }

  private async process(q: AgentQuery, initial: string[]): Promise<void> {
    const { store } = this.o;
    let done = false;
    let endedForCommand = false;
    const timer = setInterval(() => {
      if (done || endedForCommand || this.killed) return;
      if (store.pending.some((m) => m.text.startsWith('/') && !store.completed.has(m.id))) {
        endedForCommand = true;
        q.end();
        return;
      }
      const fresh = store.pending.filter((m) => !store.processing.has(m.id) && !store.completed.has(m.id));
      if (fresh.length === 0) return;
      q.push(formatMessages(fresh));
      for (const m of fresh) this.complete(m.id);
    }, this.o.activeMs ?? 500);
    try {
      for await (const event of q.events) {
        if (this.killed) return;
        this.seen.push({ at: Date.now(), event });
        if (event.type === 'init') {
          store.continuation = event.continuation;
        } else if (event.type === 'result') {
          for (const id of initial) this.complete(id);
          if (event.text) store.outbound.push(event.text);
        }
      }
    } finally {
      done = true;
      clearInterval(timer);
    }
  }
}
