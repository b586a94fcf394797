/**
 * NanoClaw provider `codex-sidecar`: runs the group's agent on a codex-sidecar (codex-operator's
 * pool of the real `codex app-server` behind a JWT HTTP poll-loop API) instead of inside the
 * container. Installed by the skill `add-codex-sidecar`.
 *
 * Settings (the container's environment; the host side, src/providers/codex-sidecar.ts, sets them):
 *   CODEX_SIDECAR_URL      base URL of the sidecar, e.g. http://host.docker.internal:8080 (required)
 *   CODEX_SIDECAR_TOKEN    bearer JWT whose `sub` is the agent group (absent: a sidecar started
 *                          with --insecure-no-auth)
 *   CODEX_SIDECAR_MODEL    model when the runner gives none (optional)
 *   CODEX_SIDECAR_SPOOL    directory for pushed messages not yet accepted by the sidecar
 *                          (default: <cwd>/.codex-sidecar)
 *
 * Mapping onto the sidecar's API:
 * - A query opens (or, from its continuation, reopens) one sidecar session: `POST /v1/sessions`
 *   with the runner's instructions, model and effort; a reopened session gets them with `PATCH`
 *   (the runner rebuilds its instructions at every container start).
 * - The continuation is `codex-sidecar:v1:<session id>:<event cursor>`. The cursor is the seq of
 *   the last sidecar event whose reply the runner has been handed; a fresh `init` with the
 *   advanced cursor follows every `result`. A runner that restarts re-reads events after the
 *   cursor, so a turn that ended while no runner was polling is delivered to the next query.
 * - The prompt and every `push()` are sent in order, one at a time, each with an idempotency key,
 *   retried through 429, 5xx, timeouts and network errors (a sidecar restart) until the sidecar
 *   accepts them (its 202 means the message is on disk). Until then they are also kept in a spool
 *   file, replayed by the next query after a container restart; the key makes replays harmless.
 * - Events are long-polled (`GET .../events?after=<cursor>&wait=25`); every sidecar event yields
 *   `activity` (nothing is yielded while the session is idle). A completed or interrupted turn
 *   yields one `result` with the turn's final text unchanged. A turn the sidecar lost
 *   (`turn_lost`, `sidecar_stopping`, `codex_exited`) is sent again, up to 3 times, after the
 *   messages pushed since; any other failed turn of this query is thrown (the runner tells the
 *   user; the session and the continuation stay).
 * - `end()`: the query finishes once every pushed message has been accepted and its turn has a
 *   result. `abort()`: `POST .../interrupt`; the query finishes with that turn's result.
 * - Errors thrown from `events`: `CodexSidecarStaleSession` (the continuation names a session the
 *   sidecar does not hold for this token: deleted, another group's, state wiped; or it is not a
 *   codex-sidecar continuation): `isSessionInvalid` is true for exactly these. Anything else
 *   (401, 400, a failed turn) is a `CodexSidecarError`.
 * - Every request has a hard timeout and its own connection (node:http with no agent): long-lived
 *   containers see pooled sockets hang.
 *
 * The sidecar runs codex with its own sandbox and approval settings (its --sandbox and
 * --approval-policy); MCP servers run where the sidecar runs (its `mcpServers` setting), not in the
 * container, and the agent cannot read the container's files (/workspace/attachments...).
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';

import { registerProvider } from './provider-registry.js';
import type { AgentProvider, AgentQuery, ProviderEvent, ProviderOptions, QueryInput } from './types.js';

/** Seconds a long-poll waits on the sidecar. */
const POLL_WAIT_S = 25;
/** Hard limit of a long-poll request (its wait plus a margin), in ms. */
const POLL_TIMEOUT_MS = (POLL_WAIT_S + 15) * 1000;
/** Hard limit of every other request, in ms. */
const REQUEST_TIMEOUT_MS = 15_000;
/** Session creation waits for codex to start a thread (the sidecar allows it up to 120 s). */
const CREATE_TIMEOUT_MS = 150_000;
/** Retry backoff bounds, in ms. */
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 5_000;
/** How often a turn the sidecar lost is sent again. */
const MAX_RESENDS = 3;
/** After `abort()`, how long the query waits for the interrupted turn's result, in ms. */
const ABORT_GRACE_MS = 15_000;
/** The sidecar refuses longer instructions (bytes). */
const MAX_INSTRUCTIONS_BYTES = 512 * 1024;
/** Failed-turn codes whose messages never got an answer: sent again. */
const RESEND_CODES = new Set(['turn_lost', 'sidecar_stopping', 'codex_exited']);
const CONTINUATION_PREFIX = 'codex-sidecar:v1:';

/** An error from the sidecar or this provider that is not a stale session. */
export class CodexSidecarError extends Error {
  /** The sidecar's error code (`invalid_token`, `turn_failed`, ...), when there is one. */
  readonly code: string | undefined;
  constructor(message: string, code?: string) {
    super(message);
    this.name = 'CodexSidecarError';
    this.code = code;
  }
}

/** The continuation cannot be used: the runner should clear it and start a new session. */
export class CodexSidecarStaleSession extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CodexSidecarStaleSession';
  }
}

/** A parsed continuation. */
export interface Continuation {
  sessionId: string;
  cursor: number;
}

/** `codex-sidecar:v1:<session id>:<cursor>`. */
export function encodeContinuation(c: Continuation): string {
  return `${CONTINUATION_PREFIX}${c.sessionId}:${c.cursor}`;
}

/** The session and cursor of a continuation, or null when it is not one of ours. */
export function parseContinuation(s: string): Continuation | null {
  if (!s.startsWith(CONTINUATION_PREFIX)) return null;
  const rest = s.slice(CONTINUATION_PREFIX.length);
  const colon = rest.lastIndexOf(':');
  if (colon <= 0) return null;
  const sessionId = rest.slice(0, colon);
  const cursor = Number(rest.slice(colon + 1));
  if (!/^[A-Za-z0-9._-]{1,128}$/.test(sessionId) || !Number.isSafeInteger(cursor) || cursor < 0) return null;
  return { sessionId, cursor };
}

interface HttpAnswer {
  status: number;
  body: any;
}

/** Why a request did not get an answer (retried). */
class TransportError extends Error {}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** A small client: one connection per request, a hard timeout on each. */
class SidecarClient {
  private readonly base: URL;
  constructor(
    baseUrl: string,
    private readonly token: string | undefined,
  ) {
    this.base = new URL(baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`);
  }

  /** One request; resolves with any HTTP answer, rejects with a TransportError. */
  request(method: string, route: string, body: unknown, timeoutMs: number): Promise<HttpAnswer> {
    const url = new URL(route.replace(/^\//, ''), this.base);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: Record<string, string | number> = { accept: 'application/json' };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    if (payload) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = payload.length;
    }
    const lib = url.protocol === 'https:' ? https : http;
    return new Promise<HttpAnswer>((resolve, reject) => {
      let settled = false;
      const finish = (err: Error | null, answer?: HttpAnswer) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) reject(err instanceof TransportError ? err : new TransportError(err.message));
        else resolve(answer!);
      };
      const req = lib.request(url, { method, headers, agent: false }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', (e) => finish(e));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: any = null;
          try {
            parsed = text ? JSON.parse(text) : null;
          } catch {
            parsed = { raw: text.slice(0, 200) };
          }
          finish(null, { status: res.statusCode ?? 0, body: parsed });
        });
      });
      const timer = setTimeout(() => {
        finish(new TransportError(`${method} ${url.pathname}: no answer within ${timeoutMs} ms`));
        req.destroy();
      }, timeoutMs);
      req.on('error', (e) => finish(e));
      if (payload) req.write(payload);
      req.end();
    });
  }
}

/** Whether an answer (or its absence) is worth retrying: network errors, timeouts, 429, 5xx. */
function retryable(a: HttpAnswer | TransportError): boolean {
  return a instanceof TransportError || a.status === 429 || a.status >= 500;
}

function errorOf(a: HttpAnswer): { code: string | undefined; message: string } {
  const e = a.body?.error;
  return { code: e?.code, message: e?.message ?? `HTTP ${a.status}` };
}

/** A pushed message: its text and its idempotency key. */
interface Outgoing {
  sessionId: string;
  key: string;
  text: string;
}

/**
 * Messages not yet accepted by the sidecar, on disk (JSON lines), so that a container restart
 * loses none; the next query of this provider sends them first.
 */
class Spool {
  private readonly file: string | null;
  constructor(dir: string | null) {
    this.file = dir ? path.join(dir, 'outbox.jsonl') : null;
    if (dir) {
      try {
        fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
      } catch {
        this.file = null;
      }
    }
  }
  load(): Outgoing[] {
    if (!this.file) return [];
    try {
      return fs
        .readFileSync(this.file, 'utf8')
        .split('\n')
        .filter((l) => l.trim())
        .flatMap((l) => {
          try {
            const o = JSON.parse(l);
            return typeof o.sessionId === 'string' && typeof o.key === 'string' && typeof o.text === 'string' ? [o] : [];
          } catch {
            return [];
          }
        });
    } catch {
      return [];
    }
  }
  /** Rewrites the spool with exactly these messages (temp file + rename). */
  store(items: Outgoing[]): void {
    if (!this.file) return;
    try {
      const tmp = `${this.file}.tmp`;
      fs.writeFileSync(tmp, items.map((i) => JSON.stringify(i) + '\n').join(''), { mode: 0o600 });
      fs.renameSync(tmp, this.file);
    } catch (e) {
      log(`cannot write the spool ${this.file}: ${(e as Error).message}`);
    }
  }
}

function log(msg: string): void {
  console.error(`[codex-sidecar] ${msg}`);
}

/** CLAUDE.md and CLAUDE.local.md of the group folder, `@path` lines inlined, then the runner's. */
export function composeInstructions(cwd: string, runnerInstructions: string | undefined): string | undefined {
  const seen = new Set<string>();
  const read = (file: string, depth: number): string => {
    const abs = path.resolve(file);
    if (seen.has(abs) || depth > 3) return '';
    seen.add(abs);
    let text: string;
    try {
      text = fs.readFileSync(abs, 'utf8');
    } catch {
      return '';
    }
    return text
      .split('\n')
      .map((line) => {
        const m = /^\s*@(\S+)\s*$/.exec(line);
        if (!m) return line;
        const target = m[1].startsWith('~/') ? path.join(process.env.HOME ?? '/', m[1].slice(2)) : path.resolve(path.dirname(abs), m[1]);
        return read(target, depth + 1) || line;
      })
      .join('\n');
  };
  const parts = [read(path.join(cwd, 'CLAUDE.md'), 0), read(path.join(cwd, 'CLAUDE.local.md'), 0), runnerInstructions ?? '']
    .map((p) => p.trim())
    .filter(Boolean);
  if (parts.length === 0) return undefined;
  let all = parts.join('\n\n');
  if (Buffer.byteLength(all) > MAX_INSTRUCTIONS_BYTES) {
    // Keep the runner's part (it carries the delivery rules) and cut the files before it.
    const tail = runnerInstructions?.trim() ?? '';
    const room = MAX_INSTRUCTIONS_BYTES - Buffer.byteLength(tail) - 200;
    const head = Buffer.from(parts.slice(0, tail ? -1 : undefined).join('\n\n')).subarray(0, Math.max(0, room));
    all = `${head.toString('utf8')}\n[... truncated to fit the sidecar's limit ...]\n\n${tail}`;
    log('instructions over 512 KiB were truncated');
  }
  return all;
}

/** The `codex-sidecar` provider. */
export class CodexSidecarProvider implements AgentProvider {
  readonly supportsNativeSlashCommands = false;
  private readonly client: SidecarClient;
  private readonly model: string | undefined;
  private readonly effort: string | undefined;
  private readonly spoolDir: string | undefined;
  /** What this provider last sent as settings, per session: PATCHed again only when changed. */
  private readonly applied = new Map<string, string>();

  constructor(options: ProviderOptions = {}) {
    const env = { ...process.env, ...(options.env ?? {}) };
    const url = env.CODEX_SIDECAR_URL;
    if (!url) throw new CodexSidecarError('CODEX_SIDECAR_URL is not set: the host side of the codex-sidecar provider sets it');
    this.client = new SidecarClient(url, env.CODEX_SIDECAR_TOKEN || undefined);
    this.model = options.model || env.CODEX_SIDECAR_MODEL || undefined;
    this.effort = options.effort || undefined;
    this.spoolDir = env.CODEX_SIDECAR_SPOOL || undefined;
    addNoProxy(new URL(url).hostname);
  }

  query(input: QueryInput): AgentQuery {
    return new SidecarQuery(this, input);
  }

  isSessionInvalid(err: unknown): boolean {
    return err instanceof CodexSidecarStaleSession || (err instanceof Error && err.name === 'CodexSidecarStaleSession');
  }

  /** @internal */
  get http(): SidecarClient {
    return this.client;
  }
  /** @internal */
  settingsFor(cwd: string, input: QueryInput): { instructions?: string; model?: string; effort?: string } {
    const s: { instructions?: string; model?: string; effort?: string } = {};
    const instructions = composeInstructions(cwd, input.systemContext?.instructions);
    if (instructions) s.instructions = instructions;
    if (this.model) s.model = this.model;
    if (this.effort) s.effort = this.effort;
    return s;
  }
  /** @internal */
  alreadyApplied(sessionId: string, settings: object): boolean {
    const key = JSON.stringify(settings);
    if (this.applied.get(sessionId) === key) return true;
    this.applied.set(sessionId, key);
    return false;
  }
  /** @internal */
  forget(sessionId: string): void {
    this.applied.delete(sessionId);
  }
  /** @internal */
  spoolFor(cwd: string): Spool {
    return new Spool(this.spoolDir ?? path.join(cwd, '.codex-sidecar'));
  }
}

/** Adds `host` to NO_PROXY/no_proxy of this process (the container's HTTPS proxy must not see it). */
function addNoProxy(host: string): void {
  for (const name of ['NO_PROXY', 'no_proxy']) {
    const list = (process.env[name] ?? '').split(',').map((s) => s.trim()).filter(Boolean);
    if (!list.includes(host)) process.env[name] = [...list, host].join(',');
  }
}

/** A queue of events the generator hands to the runner. */
class EventQueue {
  private readonly items: ProviderEvent[] = [];
  private failure: Error | null = null;
  private closed = false;
  private wake: (() => void) | null = null;
  put(e: ProviderEvent): void {
    this.items.push(e);
    this.notify();
  }
  fail(e: Error): void {
    if (!this.failure && !this.closed) this.failure = e;
    this.notify();
  }
  close(): void {
    this.closed = true;
    this.notify();
  }
  private notify(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }
  /** Yields the events in order; then throws the failure, or returns once closed. */
  async *drain(onStop: () => void): AsyncGenerator<ProviderEvent> {
    try {
      while (true) {
        if (this.items.length > 0) {
          yield this.items.shift()!;
          continue;
        }
        if (this.failure) throw this.failure;
        if (this.closed) return;
        await new Promise<void>((resolve) => (this.wake = resolve));
      }
    } finally {
      onStop();
    }
  }
}

/** A message this query got accepted: its text, key and how often it was sent again. */
interface Accepted {
  text: string;
  key: string;
  resends: number;
}

class SidecarQuery implements AgentQuery {
  readonly events: AsyncIterable<ProviderEvent>;
  private readonly out = new EventQueue();
  /** Messages to send, in order; the first is in flight. Mirrored in the spool. */
  private readonly outbox: (Outgoing & { resends: number })[] = [];
  /** push() calls made before the session is known. */
  private readonly early: string[] = [];
  private readonly spool: Spool;
  private sessionId = '';
  /** The continuation's cursor: the seq of the last result handed to the runner. */
  private cursor = 0;
  /** The seq of the last event read. */
  private read = 0;
  private stopped = false;
  /** Set by `halt()`: nothing more is sent, polled or written. */
  private halted = false;
  private ending = false;
  private aborted = false;
  private abortDeadline = 0;
  private wakeSender: (() => void) | null = null;
  private wakePoller: (() => void) | null = null;
  /** Messages this query got accepted, by sidecar message id. */
  private readonly mine = new Map<string, Accepted>();
  /** Ids of accepted messages whose turn has not ended yet. */
  private readonly open = new Set<string>();
  /** Ids whose turn has ended (a 202 can arrive after its turn started). */
  private readonly ended = new Set<string>();
  /** The running turn's message ids, and the error event seen for it. */
  private turnIds: string[] = [];
  private turnError: { code: string; message: string; retryable: boolean } | null = null;
  private keySeq = 0;
  private readonly keyBase = randomUUID();

  constructor(
    private readonly provider: CodexSidecarProvider,
    private readonly input: QueryInput,
  ) {
    this.spool = provider.spoolFor(input.cwd);
    // The runner stopping its iteration (or dying) ends the polling; what was pushed is still sent.
    this.events = this.out.drain(() => {
      this.stopped = true;
      this.kickPoller();
    });
    void this.run();
  }

  push(message: string): void {
    if (!this.sessionId) {
      this.early.push(message);
      return;
    }
    this.add(message, 0);
    this.kickSender();
  }

  end(): void {
    this.ending = true;
    this.kickPoller();
  }

  abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    this.abortDeadline = Date.now() + ABORT_GRACE_MS;
    void this.interrupt();
    this.kickPoller();
    setTimeout(() => this.kickPoller(), ABORT_GRACE_MS + 50).unref?.();
  }

  /**
   * Stops every loop of this query at once, as if the container died (for tests of the runner's
   * restarts): the spool keeps what was not sent; nothing else is written.
   */
  halt(): void {
    this.halted = true;
    this.stopped = true;
    this.out.close();
    this.kickSender();
    this.kickPoller();
  }

  private add(text: string, resends: number, key?: string): void {
    this.outbox.push({ sessionId: this.sessionId, key: key ?? `nc:${this.keyBase}:${++this.keySeq}`, text, resends });
    this.spool.store(this.outbox);
  }

  private kickSender(): void {
    const w = this.wakeSender;
    this.wakeSender = null;
    w?.();
  }

  private kickPoller(): void {
    const w = this.wakePoller;
    this.wakePoller = null;
    w?.();
  }

  private async interrupt(): Promise<void> {
    for (let i = 0; i < 5 && this.sessionId; i++) {
      try {
        const a = await this.provider.http.request('POST', `/v1/sessions/${this.sessionId}/interrupt`, undefined, REQUEST_TIMEOUT_MS);
        if (!retryable(a)) return;
      } catch {
        /* retried below */
      }
      await sleep(BACKOFF_MIN_MS * (i + 1));
    }
  }

  /**
   * Sends a request until it gets an answer that is not worth retrying. `forever`: keep trying
   * (a message, an event poll: the sidecar may be restarting); otherwise give up after about 20 s.
   */
  private async persist(method: string, route: string, body: unknown, timeoutMs: number, forever: boolean): Promise<HttpAnswer> {
    let backoff = BACKOFF_MIN_MS;
    for (let attempt = 0; ; attempt++) {
      if (this.halted) throw new CodexSidecarError('codex-sidecar: the query was halted', 'halted');
      let a: HttpAnswer | TransportError;
      try {
        a = await this.provider.http.request(method, route, body, timeoutMs);
      } catch (e) {
        a = e instanceof TransportError ? e : new TransportError(String(e));
      }
      if (!retryable(a)) return a as HttpAnswer;
      if (!forever && attempt >= 8) {
        const why = a instanceof TransportError ? a.message : `HTTP ${(a as HttpAnswer).status}`;
        throw new CodexSidecarError(`codex-sidecar unreachable: ${method} ${route.split('?')[0]}: ${why}`, 'unreachable');
      }
      await sleep(backoff);
      backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    }
  }

  private fail(e: Error): void {
    this.stopped = true;
    this.out.fail(e);
  }

  private async run(): Promise<void> {
    try {
      await this.openSession();
      this.out.put({ type: 'init', continuation: this.continuation() });
      // Messages an earlier container took from the runner but never got to the sidecar go first.
      for (const o of this.spool.load()) this.outbox.push({ ...o, resends: 0 });
      this.add(this.input.prompt, 0);
      for (const m of this.early.splice(0)) this.add(m, 0);
      void this.sender().catch((e) => {
        if (!this.halted) this.fail(e instanceof Error ? e : new CodexSidecarError(String(e)));
      });
      await this.poller();
    } catch (e) {
      this.fail(e instanceof Error ? e : new CodexSidecarError(String(e)));
    }
  }

  private continuation(): string {
    return encodeContinuation({ sessionId: this.sessionId, cursor: this.cursor });
  }

  /** Opens the session: a new one, or the continuation's, given the current settings. */
  private async openSession(): Promise<void> {
    const settings = this.provider.settingsFor(this.input.cwd, this.input);
    if (this.input.continuation) {
      const c = parseContinuation(this.input.continuation);
      if (!c) {
        throw new CodexSidecarStaleSession(`codex-sidecar: the stored continuation is not a codex-sidecar session (${this.input.continuation.slice(0, 60)})`);
      }
      this.sessionId = c.sessionId;
      this.cursor = c.cursor;
      this.read = c.cursor;
      if (this.provider.alreadyApplied(c.sessionId, settings)) {
        this.check(await this.persist('GET', `/v1/sessions/${c.sessionId}`, undefined, REQUEST_TIMEOUT_MS, false), 'open the session');
        return;
      }
      const patch = { instructions: settings.instructions ?? null, model: settings.model ?? null, effort: settings.effort ?? null };
      const a = await this.persist('PATCH', `/v1/sessions/${c.sessionId}`, patch, REQUEST_TIMEOUT_MS, false);
      if (a.status !== 200) this.provider.forget(c.sessionId);
      this.check(a, 'update the session');
      return;
    }
    const id = `nc-${randomUUID()}`;
    const a = await this.persist('POST', '/v1/sessions', { id, ...settings }, CREATE_TIMEOUT_MS, false);
    this.check(a, 'create a session');
    this.sessionId = id;
    this.cursor = 0;
    this.read = 0;
    this.provider.alreadyApplied(id, settings);
  }

  /** Throws for an answer that is not 2xx: a 404 is a stale session, anything else an error. */
  private check(a: HttpAnswer, what: string): void {
    if (a.status >= 200 && a.status < 300) return;
    const { code, message } = errorOf(a);
    if (a.status === 404) {
      throw new CodexSidecarStaleSession(`codex-sidecar session ${this.sessionId || '(new)'} not found (${code ?? 404}: ${message}); the next message starts a new session`);
    }
    throw new CodexSidecarError(`codex-sidecar: cannot ${what}: ${code ?? a.status}: ${message}`, code);
  }

  /** Sends the outbox in order, one message at a time, each until the sidecar accepts it. */
  private async sender(): Promise<void> {
    while (!this.halted) {
      const next = this.outbox[0];
      if (!next) {
        this.kickPoller();
        await new Promise<void>((resolve) => (this.wakeSender = resolve));
        continue;
      }
      const a = await this.persist('POST', `/v1/sessions/${next.sessionId}/messages`, { text: next.text, idempotency_key: next.key }, REQUEST_TIMEOUT_MS, true);
      if (this.halted) return;
      if (a.status === 401 || a.status === 403) {
        // The token, not the message: keep it spooled for the next container (a new token).
        const { code, message } = errorOf(a);
        this.fail(new CodexSidecarError(`codex-sidecar refused the token: ${code ?? a.status}: ${message}`, code));
        return;
      }
      this.outbox.shift();
      this.spool.store(this.outbox);
      if (a.status >= 200 && a.status < 300) {
        const id = String(a.body?.message_id ?? '');
        if (next.sessionId === this.sessionId && id) {
          this.mine.set(id, { text: next.text, key: next.key, resends: next.resends });
          // A duplicate (a spooled message an earlier container had sent) may have had its
          // turn already: end() does not wait for it; its result is still delivered if it comes.
          if (!this.ended.has(id) && a.body?.duplicate !== true) this.open.add(id);
        }
      } else {
        const { code, message } = errorOf(a);
        log(`a message was refused by the sidecar (${a.status} ${code}: ${message})`);
        if (next.sessionId === this.sessionId && !this.stopped) {
          this.fail(
            a.status === 404
              ? new CodexSidecarStaleSession(`codex-sidecar session ${this.sessionId} not found (${message}); the next message starts a new session`)
              : new CodexSidecarError(`codex-sidecar refused a message: ${code ?? a.status}: ${message}`, code),
          );
        }
      }
      this.kickPoller();
    }
  }

  /** Whether `end()` can finish: nothing left to send, every accepted message answered. */
  private drained(): boolean {
    return this.outbox.length === 0 && this.open.size === 0;
  }

  /**
   * Long-polls events and turns them into provider events. `end()`, `abort()` and the sender
   * wake it while a poll is in flight, so that a query that can finish does so at once.
   */
  private async poller(): Promise<void> {
    let inflight: Promise<HttpAnswer> | null = null;
    while (!this.stopped) {
      const abortDone = this.aborted && ((this.turnIds.length === 0 && this.drained()) || Date.now() > this.abortDeadline);
      if ((this.ending && this.drained()) || abortDone) {
        this.stopped = true;
        this.out.close();
        return;
      }
      if (!inflight) {
        inflight = this.persist('GET', `/v1/sessions/${this.sessionId}/events?after=${this.read}&wait=${POLL_WAIT_S}`, undefined, POLL_TIMEOUT_MS, true);
        inflight.catch(() => undefined); // awaited below, or abandoned when the query finishes
      }
      const woken = new Promise<null>((resolve) => (this.wakePoller = () => resolve(null)));
      const a = await Promise.race([inflight, woken]);
      if (a === null) continue;
      inflight = null;
      if (this.stopped) return;
      this.check(a, 'read events');
      const events: any[] = Array.isArray(a.body?.events) ? a.body.events : [];
      for (const ev of events) {
        const seq = Number(ev?.seq);
        if (this.stopped || !Number.isSafeInteger(seq) || seq <= this.read) continue;
        this.read = seq;
        this.onEvent(ev, seq);
      }
    }
  }

  private onEvent(ev: any, seq: number): void {
    this.out.put({ type: 'activity' });
    switch (ev.type) {
      case 'turn_started':
        this.turnIds = Array.isArray(ev.message_ids) ? ev.message_ids.map(String) : [];
        this.turnError = null;
        if (this.aborted) void this.interrupt();
        break;
      case 'progress':
        this.out.put({ type: 'progress', message: String(ev.message ?? '') });
        break;
      case 'init':
        if (seq > 1) this.out.put({ type: 'progress', message: `codex thread ${ev.thread_id} (${ev.resumed ? 'resumed' : 'new'})` });
        break;
      case 'error':
        if (this.turnIds.length > 0) {
          this.turnError = { code: String(ev.code ?? 'error'), message: String(ev.message ?? ''), retryable: !!ev.retryable };
        } else {
          this.out.put({ type: 'error', message: String(ev.message ?? ''), retryable: !!ev.retryable, classification: String(ev.code ?? 'error') });
        }
        break;
      case 'result':
        this.onResult(ev, seq);
        break;
    }
    // Only a result moves the cursor that a restarted runner resumes from (see the module docs):
    // the events of a turn still running are read again, its result is not lost.
  }

  private onResult(ev: any, seq: number): void {
    const ids = this.turnIds;
    const err = this.turnError;
    this.turnIds = [];
    this.turnError = null;
    for (const id of ids) {
      this.open.delete(id);
      this.ended.add(id);
    }
    const ours = ids.filter((id) => this.mine.has(id));
    this.cursor = seq;
    const status = String(ev.status ?? 'failed');
    if (status === 'completed' || status === 'interrupted') {
      if (status === 'interrupted') {
        this.out.put({ type: 'progress', message: 'turn interrupted' });
        if (this.aborted) this.abortDeadline = 0;
      }
      this.out.put({ type: 'result', text: typeof ev.text === 'string' && ev.text.length > 0 ? ev.text : null });
      this.out.put({ type: 'init', continuation: this.continuation() });
      return;
    }
    const code = err?.code ?? 'turn_failed';
    const message = err?.message || 'the turn failed';
    this.out.put({ type: 'init', continuation: this.continuation() });
    if (ours.length === 0) {
      // A turn of messages this query did not send (an earlier container's): report it, go on.
      this.out.put({ type: 'error', message, retryable: err?.retryable ?? false, classification: code });
      return;
    }
    if (RESEND_CODES.has(code) && ours.every((id) => this.mine.get(id)!.resends < MAX_RESENDS)) {
      this.out.put({ type: 'progress', message: `codex-sidecar lost a turn (${code}); sending its ${ours.length} message(s) again` });
      for (const id of ours) {
        const m = this.mine.get(id)!;
        this.mine.delete(id);
        this.add(m.text, m.resends + 1, `${m.key}:r${m.resends + 1}`);
      }
      this.kickSender();
      return;
    }
    this.out.put({ type: 'error', message, retryable: err?.retryable ?? false, classification: code });
    this.fail(new CodexSidecarError(`codex-sidecar: the turn failed (${code}): ${message}`, code));
  }
}

registerProvider('codex-sidecar', (opts) => new CodexSidecarProvider(opts));
