/**
 * The `codex-sidecar` provider, driven by a double of NanoClaw's runner (test/runner.ts), against
 * a real sidecar running the real codex on the project's scripted model (test/harness.ts). The
 * provider and its host side are loaded from a NanoClaw-shaped tree (test/tree.ts), registered
 * through the barrels exactly as the install skill wires them.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import fs from 'node:fs';
import path from 'node:path';

import { REPO, SECRET, Model, Sidecar, allEvents, api, missingTools } from './harness';
import { Runner, Store } from './runner';
import { container, host } from './tree';
import type { AgentProvider } from './nanoclaw/container/agent-runner/src/providers/types';

const missing = missingTools();
if (missing.length > 0) {
  console.log(`NOTICE: skipping the NanoClaw provider tests: missing ${missing.join(', ')}`);
}
const suite = missing.length > 0 ? describe.skip : describe;
const T = 120_000;

/** Polls `cond` every 50 ms until true, or fails after `ms` with `what`. */
async function until(cond: () => boolean | Promise<boolean>, what: string, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return;
    await Bun.sleep(50);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

const groupDirs: string[] = [];
afterAll(() => {
  for (const d of groupDirs) fs.rmSync(d, { recursive: true, force: true });
});

/** A group folder with a CLAUDE.md that imports another file (the provider composes both). */
function groupDir(name: string): string {
  const dir = path.join(REPO, 'target/e2e-tmp', `nanoclaw-group-${name}-${process.pid}`);
  groupDirs.push(dir);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'CLAUDE.md'), `# Group ${name}\nAlways be kind.\n@rules.md\n`);
  fs.writeFileSync(path.join(dir, 'rules.md'), `Imported rule of group ${name}.\n`);
  return dir;
}

/** The container env the host side gives group `group` for this sidecar. */
function containerEnv(sc: Sidecar, group: string): Record<string, string> {
  const fn = host.registry.getProviderContainerConfig('codex-sidecar');
  if (!fn) throw new Error('the host side did not register codex-sidecar');
  const contribution = fn({
    sessionDir: '/tmp/unused',
    agentGroupId: group,
    hostEnv: { CODEX_SIDECAR_URL: sc.url, CODEX_SIDECAR_SECRET_FILE: sc.secretFile, NO_PROXY: 'corp.example' },
  });
  // The test runs on the Docker host itself: undo the container's host.docker.internal mapping.
  const env = { ...contribution.env! };
  env.CODEX_SIDECAR_URL = sc.url;
  return env;
}

function provider(sc: Sidecar, group: string, extra: Record<string, string> = {}, model?: string, effort?: string): AgentProvider {
  return container.registry.createProvider('codex-sidecar', { env: { ...containerEnv(sc, group), ...extra }, model, effort });
}

function tokenFor(group: string): string {
  return host.provider.mintToken(Buffer.from(SECRET), group, 600);
}

/** The session id inside a continuation. */
function sessionOf(continuation: string | undefined): string {
  const c = continuation ? container.provider.parseContinuation(continuation) : null;
  if (!c) throw new Error(`not a codex-sidecar continuation: ${continuation}`);
  return c.sessionId;
}

const results = (r: Runner) => r.seen.filter((s) => s.event.type === 'result');

test('the host side mints a per-group token, maps localhost and bypasses the proxy', () => {
  // The first test to run on a fresh clone: target/e2e-tmp may not exist yet.
  const root = path.join(REPO, 'target/e2e-tmp');
  fs.mkdirSync(root, { recursive: true });
  const dir = fs.mkdtempSync(path.join(root, 'nanoclaw-host-'));
  const secretFile = path.join(dir, 'secret');
  fs.writeFileSync(secretFile, `${SECRET}\n`);
  const fn = host.registry.getProviderContainerConfig('codex-sidecar')!;
  const { env } = fn({
    sessionDir: dir,
    agentGroupId: 'group-a',
    hostEnv: { CODEX_SIDECAR_URL: 'http://localhost:8080', CODEX_SIDECAR_SECRET_FILE: secretFile, NO_PROXY: 'corp.example' },
  });
  expect(env!.CODEX_SIDECAR_URL).toBe('http://host.docker.internal:8080');
  expect(env!.NO_PROXY).toBe('corp.example,host.docker.internal');
  expect(env!.no_proxy).toBe(env!.NO_PROXY);
  const [, claims] = env!.CODEX_SIDECAR_TOKEN.split('.');
  const c = JSON.parse(Buffer.from(claims, 'base64url').toString());
  expect(c.sub).toBe('group-a');
  expect(c.exp - c.iat).toBe(86_400);
  expect(JSON.stringify(env)).not.toContain(SECRET);
  const remote = fn({ sessionDir: dir, agentGroupId: 'g', hostEnv: { CODEX_SIDECAR_URL: 'http://codex.agents.svc:8080' } }).env!;
  expect(remote.CODEX_SIDECAR_URL).toBe('http://codex.agents.svc:8080');
  expect(remote.CODEX_SIDECAR_TOKEN).toBeUndefined();
  expect(remote.NO_PROXY).toBe('codex.agents.svc');
  fs.rmSync(dir, { recursive: true, force: true });
});

suite('codex-sidecar provider against the real sidecar', () => {
  let model: Model;
  let sc: Sidecar;

  beforeAll(async () => {
    model = await Model.start();
    sc = await Sidecar.start(model);
  });
  afterAll(async () => {
    await sc?.stop();
    model?.stop();
  });

  test(
    'first reply: init first, activity per event, the final text unchanged, instructions reach codex, nothing while idle',
    async () => {
      const store = new Store();
      const cwd = groupDir('first');
      const r = new Runner({ provider: provider(sc, 'group-first', {}, undefined, 'low'), store, cwd, instructions: 'Runner rule: wrap replies in <message to="user">.' });
      store.send('hello there');
      await until(() => store.outbound.length >= 1, 'the first reply');
      expect(r.seen[0].event.type).toBe('init');
      const firstResult = r.seen.findIndex((s) => s.event.type === 'result');
      expect(r.seen.slice(0, firstResult).some((s) => s.event.type === 'activity')).toBe(true);
      const session = sessionOf(store.continuation);
      const events = await allEvents(sc.url, tokenFor('group-first'), session);
      const sidecarResult = events.find((e) => e.type === 'result');
      expect(store.outbound[0]).toBe(sidecarResult.text);
      expect(store.outbound[0]).toStartWith('echo: <messages>');
      expect(store.outbound[0]).toContain('hello there');
      // one activity per sidecar event up to the result
      const activities = r.seen.slice(0, firstResult).filter((s) => s.event.type === 'activity').length;
      expect(activities).toBe(events.findIndex((e) => e.type === 'result') + 1);
      // the composed instructions (CLAUDE.md, its @import, the runner's) and the effort reached the model
      const body = model.lastTurnBody();
      expect(body).toContain('Always be kind.');
      expect(body).toContain('Imported rule of group first.');
      expect(body).toContain('Runner rule: wrap replies');
      // the continuation after the result points past it
      expect(container.provider.parseContinuation(store.continuation!).cursor).toBe(sidecarResult.seq);
      // idle: no events at all
      const n = r.seen.length;
      await Bun.sleep(3000);
      expect(r.seen.length).toBe(n);
      r.kill();
    },
    T,
  );

  test(
    'messages pushed mid-turn are answered in the same query',
    async () => {
      const store = new Store();
      const r = new Runner({ provider: provider(sc, 'group-push'), store, cwd: groupDir('push') });
      store.send('first [[delay_ms=500]]');
      await until(() => r.seen.some((s) => s.event.type === 'activity'), 'the first turn to run');
      store.send('second');
      await Bun.sleep(600);
      store.send('third');
      await until(() => store.outbound.some((t) => t.includes('third')), 'the reply to the pushed messages');
      expect(r.queries).toBe(1);
      expect(store.outbound[0]).toContain('first');
      expect(store.outbound.some((t) => t.includes('second'))).toBe(true);
      expect(store.completed.size).toBe(3);
      r.kill();
    },
    T,
  );

  test(
    'end() drains: the query finishes only once every pushed message has its reply',
    async () => {
      const store = new Store();
      const r = new Runner({ provider: provider(sc, 'group-end'), store, cwd: groupDir('end') });
      store.send('opening [[delay_ms=400]]');
      await until(() => r.seen.some((s) => s.event.type === 'activity'), 'the first turn to run');
      store.send('pushed before the command');
      await until(() => store.completed.size >= 1 && store.pending.length === 0, 'the push');
      store.send('/compact');
      await until(() => r.query === null && store.completed.size === 3, 'the query to end', 60_000);
      const endedAt = Date.now();
      expect(store.outbound.some((t) => t.includes('pushed before the command'))).toBe(true);
      expect(results(r).length).toBe(2);
      // it ended with the last reply, not when a long-poll ran out
      expect(endedAt - results(r)[1].at).toBeLessThan(3_000);
      r.kill();
    },
    T,
  );

  test(
    'abort() interrupts the running turn: status interrupted, the query ends',
    async () => {
      const store = new Store();
      const r = new Runner({ provider: provider(sc, 'group-abort'), store, cwd: groupDir('abort') });
      store.send('a long one [[delay_ms=3000]]');
      await until(() => r.seen.filter((s) => s.event.type === 'activity').length >= 3, 'the turn to run');
      const t0 = Date.now();
      r.query!.abort();
      await until(() => r.query === null, 'the aborted query to end', 20_000);
      const took = Date.now() - t0;
      const events = await allEvents(sc.url, tokenFor('group-abort'), sessionOf(store.continuation));
      expect(took).toBeLessThan(10_000);
      expect(events.filter((e) => e.type === 'result').map((e) => e.status)).toEqual(['interrupted']);
      expect(r.seen.some((s) => s.event.type === 'progress' && s.event.message === 'turn interrupted')).toBe(true);
      expect(results(r).length).toBe(1);
      r.kill();
    },
    T,
  );

  test(
    'a stale continuation is thrown, recognised and cleared; the next message starts afresh',
    async () => {
      for (const stale of ['codex-sidecar:v1:nc-not-on-this-sidecar:7', '4b1c5e0e-claude-session-id']) {
        const store = new Store();
        store.continuation = stale;
        const p = provider(sc, 'group-stale');
        const r = new Runner({ provider: p, store, cwd: groupDir('stale') });
        store.send('hi');
        await until(() => r.thrown.length === 1, 'the stale session error');
        expect(p.isSessionInvalid(r.thrown[0])).toBe(true);
        expect(store.outbound[0]).toStartWith('Error: codex-sidecar');
        expect(store.continuation).toBeUndefined();
        expect(p.isSessionInvalid(new Error('connection refused'))).toBe(false);
        store.send('again');
        await until(() => store.outbound.some((t) => t.includes('again')), 'a reply in a new session');
        expect(sessionOf(store.continuation)).not.toBe('nc-not-on-this-sidecar');
        r.kill();
      }
    },
    T,
  );

  test(
    'a token the sidecar refuses is thrown as an error naming why, not as a stale session',
    async () => {
      const store = new Store();
      const bad = host.provider.mintToken(Buffer.from('another-secret-0123456789abcdef-0123456789'), 'group-bad', 600);
      const p = provider(sc, 'group-bad', { CODEX_SIDECAR_TOKEN: bad });
      const r = new Runner({ provider: p, store, cwd: groupDir('bad') });
      store.send('hello?');
      await until(() => r.thrown.length === 1, 'the 401');
      expect(p.isSessionInvalid(r.thrown[0])).toBe(false);
      expect(store.outbound[0]).toContain('invalid_signature');
      r.kill();
    },
    T,
  );

  test(
    'a failed turn is thrown to the runner as an error, not as a stale session; the session goes on',
    async () => {
      const store = new Store();
      const p = provider(sc, 'group-fail');
      const r = new Runner({ provider: p, store, cwd: groupDir('fail') });
      store.send('this one breaks [[fail=400]]');
      await until(() => r.thrown.length === 1, 'the failed turn', 90_000);
      expect(p.isSessionInvalid(r.thrown[0])).toBe(false);
      expect((r.thrown[0] as Error).name).toBe('CodexSidecarError');
      expect(store.outbound[0]).toStartWith('Error: codex-sidecar: the turn failed');
      expect(r.seen.some((s) => s.event.type === 'error')).toBe(true);
      expect(results(r).length).toBe(0);
      const continuation = store.continuation;
      expect(continuation).toBeDefined();
      store.send('and this one works');
      await until(() => store.outbound.some((t) => t.includes('and this one works')), 'the next reply');
      expect(sessionOf(store.continuation)).toBe(sessionOf(continuation));
      expect(store.outbound.filter((t) => t.includes('breaks')).length).toBe(0);
      r.kill();
    },
    T,
  );

  test(
    'a runner restarted between a push and its reply still gets that reply, once',
    async () => {
      const store = new Store();
      const cwd = groupDir('restart');
      const a = new Runner({ provider: provider(sc, 'group-restart'), store, cwd });
      store.send('one');
      await until(() => store.outbound.length === 1, 'the first reply');
      store.send('two [[delay_ms=300]]');
      const session = sessionOf(store.continuation);
      const token = tokenFor('group-restart');
      await until(async () => (await allEvents(sc.url, token, session)).some((e) => e.type === 'turn_started' && e.message_ids.length > 0 && e.message_ids[0] !== 'msg_1'), 'the pushed message to reach the sidecar');
      a.kill();
      // its turn ends while no runner polls
      await until(async () => (await allEvents(sc.url, token, session)).filter((e) => e.type === 'result').length === 2, 'the pushed turn to end');
      expect(store.outbound.length).toBe(1);
      const b = new Runner({ provider: provider(sc, 'group-restart'), store, cwd });
      store.send('three');
      await until(() => store.outbound.some((t) => t.includes('three')), 'the reply to the next message');
      expect(store.outbound.filter((t) => t.includes('two')).length).toBe(1);
      expect(store.outbound.map((t) => (t.includes('one') ? 1 : t.includes('two') ? 2 : t.includes('three') ? 3 : 0))).toEqual([1, 2, 3]);
      expect(sessionOf(store.continuation)).toBe(session);
      b.kill();
    },
    T,
  );

  test(
    'a session deleted on the sidecar ends the query at once; the next message starts a new session',
    async () => {
      const store = new Store();
      const p = provider(sc, 'group-deleted');
      const r = new Runner({ provider: p, store, cwd: groupDir('deleted') });
      store.send('hello');
      await until(() => store.outbound.length === 1, 'the first reply');
      const session = sessionOf(store.continuation);
      await Bun.sleep(500); // the provider is in a long-poll now
      const t0 = Date.now();
      expect((await api(sc.url, tokenFor('group-deleted'), 'DELETE', `/v1/sessions/${session}`)).status).toBe(204);
      await until(() => r.thrown.length === 1, 'the query to see the delete', 10_000);
      expect(Date.now() - t0).toBeLessThan(5_000);
      expect(p.isSessionInvalid(r.thrown[0])).toBe(true);
      expect(store.continuation).toBeUndefined();
      store.send('after the delete');
      await until(() => store.outbound.some((t) => t.includes('after the delete')), 'a reply in a new session');
      expect(sessionOf(store.continuation)).not.toBe(session);
      r.kill();
    },
    T,
  );

  test(
    "another group's token gets 404 for a group's session",
    async () => {
      const store = new Store();
      const r = new Runner({ provider: provider(sc, 'group-owner'), store, cwd: groupDir('owner') });
      store.send('mine');
      await until(() => store.outbound.length === 1, 'the first reply');
      r.kill();
      const session = sessionOf(store.continuation);
      const other = tokenFor('group-other');
      for (const [method, route] of [
        ['GET', `/v1/sessions/${session}`],
        ['GET', `/v1/sessions/${session}/events?after=0`],
        ['POST', `/v1/sessions/${session}/messages`],
        ['PATCH', `/v1/sessions/${session}`],
      ] as const) {
        const a = await api(sc.url, other, method, route, method === 'GET' ? undefined : method === 'PATCH' ? { model: 'x' } : { text: 'x' });
        expect([route, a.status, a.body?.error?.code]).toEqual([route, 404, 'session_not_found']);
      }
      // a runner of the other group handed that continuation treats it as stale
      const theirs = new Store();
      theirs.continuation = store.continuation;
      const p = provider(sc, 'group-other');
      const o = new Runner({ provider: p, store: theirs, cwd: groupDir('other') });
      theirs.send('let me in');
      await until(() => o.thrown.length === 1, 'the 404');
      expect(p.isSessionInvalid(o.thrown[0])).toBe(true);
      o.kill();
      // and the owner's session did not get that message
      const events = await allEvents(sc.url, tokenFor('group-owner'), session);
      expect(JSON.stringify(events)).not.toContain('let me in');
    },
    T,
  );

  test(
    'model and effort changes and new instructions reach the same session at the next container start',
    async () => {
      const store = new Store();
      const cwd = groupDir('settings');
      const a = new Runner({ provider: provider(sc, 'group-settings'), store, cwd, instructions: 'Version one of the rules.' });
      store.send('first');
      await until(() => store.outbound.length === 1, 'the first reply');
      a.kill();
      const b = new Runner({ provider: provider(sc, 'group-settings', {}, 'scripted-next', 'high'), store, cwd, instructions: `Version two of the rules. ${'x'.repeat(100 * 1024)}` });
      store.send('second');
      await until(() => store.outbound.length === 2, 'the second reply');
      const body = model.lastTurnBody();
      expect(body).toContain('Version two of the rules.');
      expect(body).toContain('"model":"scripted-next"');
      expect(body).toContain('"effort":"high"');
      b.kill();
    },
    T,
  );
});

suite('codex-sidecar provider across a sidecar kill -9', () => {
  let model: Model;
  let sc: Sidecar;
  beforeAll(async () => {
    model = await Model.start();
    sc = await Sidecar.start(model);
  });
  afterAll(async () => {
    await sc?.stop();
    model?.stop();
  });

  test(
    'the sidecar killed mid-query and restarted: no pushed message lost, no reply duplicated',
    async () => {
      const store = new Store();
      const r = new Runner({ provider: provider(sc, 'group-kill'), store, cwd: groupDir('kill') });
      store.send('one');
      await until(() => store.outbound.length === 1, 'the first reply');
      store.send('slow [[delay_ms=1500]]');
      const session = sessionOf(store.continuation);
      const token = tokenFor('group-kill');
      await until(async () => (await allEvents(sc.url, token, session)).filter((e) => e.type === 'turn_started').length === 2, 'the slow turn to start');
      await sc.kill9();
      store.send('sent while the sidecar is down');
      await until(() => store.pending.length === 0, 'the push');
      await Bun.sleep(1500);
      await sc.restart();
      await until(
        () => store.outbound.some((t) => t.includes('slow')) && store.outbound.some((t) => t.includes('sent while the sidecar is down')),
        'replies to both messages',
        90_000,
      );
      await Bun.sleep(2000);
      const count = (s: string) => store.outbound.filter((t) => t.includes(s)).length;
      expect([count('one'), count('slow'), count('sent while the sidecar is down')]).toEqual([1, 1, 1]);
      expect(r.thrown).toEqual([]);
      const events = await allEvents(sc.url, token, session);
      expect(events.some((e) => e.type === 'error' && e.code === 'turn_lost')).toBe(true);
      r.kill();
    },
    T,
  );

  test(
    'a message pushed while the sidecar is down survives a runner restart too',
    async () => {
      const store = new Store();
      const cwd = groupDir('spool');
      const a = new Runner({ provider: provider(sc, 'group-spool'), store, cwd });
      store.send('one');
      await until(() => store.outbound.length === 1, 'the first reply');
      await sc.kill9();
      store.send('pushed into the void');
      await until(() => store.pending.length === 0, 'the push (marked completed at once)');
      await Bun.sleep(300);
      a.kill();
      await sc.restart();
      const b = new Runner({ provider: provider(sc, 'group-spool'), store, cwd });
      store.send('after both restarts');
      await until(
        () => store.outbound.some((t) => t.includes('pushed into the void')) && store.outbound.some((t) => t.includes('after both restarts')),
        'replies to both',
        90_000,
      );
      await Bun.sleep(1000);
      expect(store.outbound.filter((t) => t.includes('pushed into the void')).length).toBe(1);
      b.kill();
    },
    T,
  );
});
