/**
 * Host-side contribution of the `codex-sidecar` provider: what every container of a group whose
 * provider is `codex-sidecar` gets in its environment.
 *
 * Read from the host's environment, else from `.env` in NanoClaw's working directory:
 *   CODEX_SIDECAR_URL          the sidecar as the host reaches it, e.g. http://localhost:8080 or
 *                              http://codex.agents.svc:8080 (required)
 *   CODEX_SIDECAR_SECRET_FILE  the sidecar's HS256 key file (its --jwt-secret-file; in Kubernetes
 *                              the CodexAgent's JWT Secret). Absent: no token (a sidecar with
 *                              --insecure-no-auth on the same host)
 *   CODEX_SIDECAR_TOKEN_TTL    token lifetime in seconds (default 86400)
 *   CODEX_SIDECAR_AUDIENCE     `aud` claim, when the sidecar has --jwt-audience
 *   CODEX_SIDECAR_MODEL        passed on as the model when the group sets none
 *
 * Per spawn it passes to the container:
 *   CODEX_SIDECAR_URL    with `localhost`/`127.0.0.1`/`::1` replaced by `host.docker.internal`
 *                        (NanoClaw maps that name to the Docker host on Linux)
 *   CODEX_SIDECAR_TOKEN  a fresh HS256 JWT with `sub` = the agent group id: the sidecar scopes
 *                        sessions by `sub`, so a group owns its sessions and gets 404 for another's
 *   NO_PROXY, no_proxy   the host's lists plus the sidecar's host, so that the container's HTTPS
 *                        proxy (OneCLI) is not in the way
 * The secret never leaves the host; only the signed token does.
 */
import { createHmac } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import { registerProviderContainerConfig } from './provider-container-registry.js';

const KEYS = [
  'CODEX_SIDECAR_URL',
  'CODEX_SIDECAR_SECRET_FILE',
  'CODEX_SIDECAR_TOKEN_TTL',
  'CODEX_SIDECAR_AUDIENCE',
  'CODEX_SIDECAR_MODEL',
] as const;

const DEFAULT_TTL_S = 86_400;

/** Our keys from `.env` in `dir` (KEY=VALUE lines; quotes around a value are removed). */
function readDotEnv(dir: string): Record<string, string> {
  let text: string;
  try {
    text = fs.readFileSync(path.join(dir, '.env'), 'utf8');
  } catch {
    return {};
  }
  const out: Record<string, string> = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    const eq = line.indexOf('=');
    if (!line || line.startsWith('#') || eq < 0) continue;
    const key = line.slice(0, eq).trim();
    if (!(KEYS as readonly string[]).includes(key)) continue;
    let value = line.slice(eq + 1).trim();
    if (value.length >= 2 && (value[0] === '"' || value[0] === "'") && value.endsWith(value[0])) value = value.slice(1, -1);
    out[key] = value;
  }
  return out;
}

const b64url = (b: Buffer | string) => Buffer.from(b).toString('base64url');

/**
 * An HS256 JWT for `sub`, valid `ttlS` seconds, signed with `secret` (the sidecar's key file
 * bytes with trailing newlines removed, as the sidecar reads it; at least 32 bytes).
 */
export function mintToken(secret: Buffer, sub: string, ttlS: number, audience?: string): string {
  const now = Math.floor(Date.now() / 1000);
  const claims: Record<string, unknown> = { sub, iat: now, nbf: now - 30, exp: now + ttlS };
  if (audience) claims.aud = audience;
  const signing = `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify(claims))}`;
  return `${signing}.${b64url(createHmac('sha256', secret).update(signing).digest())}`;
}

/** The key file's bytes as the sidecar uses them: every trailing `\n`/`\r` removed. */
export function readSecret(file: string): Buffer {
  let bytes = fs.readFileSync(file);
  let end = bytes.length;
  while (end > 0 && (bytes[end - 1] === 0x0a || bytes[end - 1] === 0x0d)) end--;
  bytes = bytes.subarray(0, end);
  if (bytes.length < 32) throw new Error(`codex-sidecar: ${file} holds ${bytes.length} bytes; the sidecar needs an HS256 key of at least 32`);
  return bytes;
}

/** `url` with a loopback host replaced by `host.docker.internal` (the container's Docker host). */
export function containerUrl(url: string): string {
  const u = new URL(url);
  if (['localhost', '127.0.0.1', '[::1]', '::1'].includes(u.hostname)) u.hostname = 'host.docker.internal';
  return u.toString().replace(/\/$/, '');
}

/** `list` (comma-separated) with `hosts` added once each. */
function withNoProxy(list: string | undefined, hosts: string[]): string {
  const items = (list ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  for (const h of hosts) if (!items.includes(h)) items.push(h);
  return items.join(',');
}

/** The contribution for one spawn (exported for tests). */
export function codexSidecarContainerConfig(ctx: { agentGroupId: string; hostEnv: NodeJS.ProcessEnv }): { env: Record<string, string> } {
  const file = readDotEnv(process.cwd());
  const get = (k: (typeof KEYS)[number]) => ctx.hostEnv[k] || file[k] || undefined;
  const url = get('CODEX_SIDECAR_URL');
  if (!url) throw new Error('codex-sidecar: set CODEX_SIDECAR_URL (in .env or the environment) to the sidecar URL');
  const inContainer = containerUrl(url);
  const host = new URL(inContainer).hostname;
  const env: Record<string, string> = { CODEX_SIDECAR_URL: inContainer };
  const secretFile = get('CODEX_SIDECAR_SECRET_FILE');
  if (secretFile) {
    const ttl = Number(get('CODEX_SIDECAR_TOKEN_TTL') ?? DEFAULT_TTL_S);
    if (!Number.isInteger(ttl) || ttl <= 0) throw new Error('codex-sidecar: CODEX_SIDECAR_TOKEN_TTL must be a positive number of seconds');
    env.CODEX_SIDECAR_TOKEN = mintToken(readSecret(secretFile), ctx.agentGroupId, ttl, get('CODEX_SIDECAR_AUDIENCE'));
  }
  const model = get('CODEX_SIDECAR_MODEL');
  if (model) env.CODEX_SIDECAR_MODEL = model;
  env.NO_PROXY = withNoProxy(ctx.hostEnv.NO_PROXY ?? ctx.hostEnv.no_proxy, [host]);
  env.no_proxy = env.NO_PROXY;
  return { env };
}

registerProviderContainerConfig('codex-sidecar', (ctx) => codexSidecarContainerConfig(ctx));
