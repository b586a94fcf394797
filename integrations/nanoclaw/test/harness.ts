/**
 * Runs what the provider talks to, for real: the `codex-sidecar` binary (built by cargo) driving
 * the real `codex`, against the project's scripted Responses-API model (`scripted-model`), with a
 * recording proxy in between so that tests can see what codex sent to the model (instructions,
 * model, effort). Tokens are minted by the provider's own host side (src/providers/codex-sidecar.ts).
 *
 * Binaries: CODEX_SIDECAR_BIN (default <repo>/target/debug/codex-sidecar), SCRIPTED_MODEL_BIN
 * (default <repo>/target/debug/scripted-model), CODEX_BIN (default: what sidecar/install-codex.sh
 * prints). `missingTools()` says what is absent, so that the tests can print `NOTICE: skipping`.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

export const REPO = path.resolve(import.meta.dir, '../../..');
export const SECRET = 'nanoclaw-e2e-secret-0123456789abcdef-0123456789';

const sidecarBin = () => process.env.CODEX_SIDECAR_BIN || path.join(REPO, 'target/debug/codex-sidecar');
const modelBin = () => process.env.SCRIPTED_MODEL_BIN || path.join(REPO, 'target/debug/scripted-model');

let codexBinCache: string | null = null;
/** The codex the sidecar runs: CODEX_BIN, else the one sidecar/install-codex.sh picks. */
export function codexBin(): string {
  if (codexBinCache) return codexBinCache;
  if (process.env.CODEX_BIN) return (codexBinCache = process.env.CODEX_BIN);
  const r = spawnSync(path.join(REPO, 'sidecar/install-codex.sh'), { encoding: 'utf8' });
  codexBinCache = r.status === 0 ? r.stdout.trim() : '';
  return codexBinCache;
}

/** Why the tests cannot run here (empty when they can). */
export function missingTools(): string[] {
  const missing: string[] = [];
  if (!fs.existsSync(sidecarBin())) missing.push(`${sidecarBin()} (cargo build -p codex-sidecar)`);
  if (!fs.existsSync(modelBin())) missing.push(`${modelBin()} (cargo build -p codex-e2e --bins)`);
  const codex = codexBin();
  if (!codex || spawnSync(codex, ['--version']).status !== 0) missing.push('codex (sidecar/install-codex.sh needs npm)');
  return missing;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

/** The scripted model behind a proxy that records every `/v1/responses` body. */
export class Model {
  readonly requests: any[] = [];
  private constructor(
    private readonly child: ChildProcess,
    private readonly proxy: ReturnType<typeof Bun.serve>,
    readonly baseUrl: string,
  ) {}

  static async start(): Promise<Model> {
    const child = spawn(modelBin(), ['--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const upstream = await new Promise<string>((resolve, reject) => {
      let buf = '';
      child.stdout!.on('data', (d: Buffer) => {
        buf += d.toString();
        const m = /listening on (http:\/\/\S+)\/v1/.exec(buf);
        if (m) resolve(m[1]);
      });
      child.on('exit', (c) => reject(new Error(`scripted-model exited with ${c}`)));
    });
    const requests: any[] = [];
    const proxy = Bun.serve({
      port: 0,
      hostname: '127.0.0.1',
      idleTimeout: 0,
      async fetch(req) {
        const url = new URL(req.url);
        const body = req.method === 'GET' ? undefined : await req.arrayBuffer();
        if (body && url.pathname.endsWith('/responses')) {
          try {
            requests.push(JSON.parse(new TextDecoder().decode(body)));
          } catch {
            /* not JSON: not recorded */
          }
        }
        const headers = new Headers(req.headers);
        headers.delete('host');
        headers.delete('content-length');
        const r = await fetch(upstream + url.pathname + url.search, { method: req.method, headers, body, decompress: false } as RequestInit);
        const out = new Headers(r.headers);
        out.delete('content-length');
        out.delete('transfer-encoding');
        return new Response(r.body, { status: r.status, headers: out });
      },
    });
    const m = new Model(child, proxy, `http://127.0.0.1:${proxy.port}/v1`);
    (m as any).requests = requests;
    return m;
  }

  /** The newest request body that is a user turn (not a compaction), as JSON text. */
  lastTurnBody(): string {
    for (let i = this.requests.length - 1; i >= 0; i--) {
      const t = JSON.stringify(this.requests[i]);
      if (!t.includes('CONTEXT CHECKPOINT COMPACTION')) return t;
    }
    return '';
  }

  stop(): void {
    this.proxy.stop(true);
    this.child.kill('SIGKILL');
  }
}

/** A running `codex-sidecar serve` on a fixed port (kept across restarts, so URLs stay valid). */
export class Sidecar {
  private child: ChildProcess | null = null;
  readonly url: string;
  readonly secretFile: string;
  readonly stateDir: string;
  private readonly logFile: string;

  private constructor(
    readonly dir: string,
    private readonly port: number,
    private readonly modelUrl: string,
  ) {
    this.url = `http://127.0.0.1:${port}`;
    this.secretFile = path.join(dir, 'jwt-secret');
    this.stateDir = path.join(dir, 'state');
    this.logFile = path.join(dir, 'sidecar.log');
    fs.writeFileSync(this.secretFile, `${SECRET}\n`, { mode: 0o600 });
  }

  static async start(model: Model): Promise<Sidecar> {
    const root = path.join(REPO, 'target/e2e-tmp');
    fs.mkdirSync(root, { recursive: true });
    const dir = fs.mkdtempSync(path.join(root, 'nanoclaw-'));
    const s = new Sidecar(dir, await freePort(), model.baseUrl);
    await s.spawn();
    return s;
  }

  private async spawn(): Promise<void> {
    const log = fs.openSync(this.logFile, 'a');
    const args = [
      'serve',
      '--listen', `127.0.0.1:${this.port}`,
      '--state-dir', this.stateDir,
      '--codex-bin', codexBin(),
      '--jwt-secret-file', this.secretFile,
      '--provider', 'custom',
      '--provider-base-url', this.modelUrl,
      '--model', 'scripted',
    ];
    // A HOME of its own: the login shells codex runs commands in read no profile of the machine's user.
    const home = path.join(this.dir, 'home');
    fs.mkdirSync(home, { recursive: true });
    this.child = spawn(sidecarBin(), args, {
      stdio: ['ignore', log, log],
      env: { ...process.env, HOME: home, RUST_LOG: 'info' },
    });
    fs.closeSync(log);
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      try {
        const r = await fetch(`${this.url}/healthz`);
        if (r.ok) return;
      } catch {
        /* not up yet */
      }
      if (this.child.exitCode !== null) throw new Error(`sidecar exited at start-up:\n${this.log()}`);
      await Bun.sleep(50);
    }
    throw new Error(`sidecar did not answer /healthz within 60 s:\n${this.log()}`);
  }

  /** `kill -9` (its codex children lose their stdin and exit). */
  async kill9(): Promise<void> {
    const c = this.child;
    this.child = null;
    if (!c || c.exitCode !== null) return;
    const exited = new Promise((resolve) => c.once('exit', resolve));
    c.kill('SIGKILL');
    await exited;
  }

  /** Starts again on the same state dir and port. */
  async restart(): Promise<void> {
    await this.kill9();
    await this.spawn();
  }

  log(): string {
    try {
      return fs.readFileSync(this.logFile, 'utf8');
    } catch {
      return '';
    }
  }

  async stop(): Promise<void> {
    const c = this.child;
    this.child = null;
    if (c && c.exitCode === null) {
      const exited = new Promise((resolve) => c.once('exit', resolve));
      c.kill('SIGTERM');
      await Promise.race([exited, Bun.sleep(10_000)]);
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A direct client of the sidecar API (for checks the runner cannot see). */
export async function api(url: string, token: string, method: string, route: string, body?: unknown): Promise<{ status: number; body: any }> {
  const r = await fetch(url + route, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let parsed: any = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = text;
  }
  return { status: r.status, body: parsed };
}

/** Every event of a session, from the sidecar. */
export async function allEvents(url: string, token: string, session: string): Promise<any[]> {
  const out: any[] = [];
  let after = 0;
  while (true) {
    const r = await api(url, token, 'GET', `/v1/sessions/${session}/events?after=${after}&limit=1000`);
    if (r.status !== 200) throw new Error(`events: ${r.status} ${JSON.stringify(r.body)}`);
    if (r.body.events.length === 0) return out;
    out.push(...r.body.events);
    after = r.body.next;
  }
}
