/**
 * Drops the module into a NanoClaw-shaped tree, as the install skill does in a checkout: the
 * provider files copied unchanged beside the restatement of NanoClaw's interface (test/nanoclaw/),
 * under node_modules/.nanoclaw-tree/ (ignored). The tests load the provider from there, so its
 * imports (`./types.js`, `./provider-registry.js`, `./provider-container-registry.js`) resolve
 * the way they do in NanoClaw.
 */
import fs from 'node:fs';
import path from 'node:path';

const HERE = path.resolve(import.meta.dir, '..');
const TREE = path.join(HERE, 'node_modules/.nanoclaw-tree');

const FILES: [string, string][] = [
  ['test/nanoclaw/container/agent-runner/src/providers/types.ts', 'container/agent-runner/src/providers/types.ts'],
  ['test/nanoclaw/container/agent-runner/src/providers/provider-registry.ts', 'container/agent-runner/src/providers/provider-registry.ts'],
  ['container/agent-runner/src/providers/codex-sidecar.ts', 'container/agent-runner/src/providers/codex-sidecar.ts'],
  ['test/nanoclaw/src/providers/provider-container-registry.ts', 'src/providers/provider-container-registry.ts'],
  ['src/providers/codex-sidecar.ts', 'src/providers/codex-sidecar.ts'],
];

/** Builds the tree; returns its root. */
export function buildTree(): string {
  for (const [from, to] of FILES) {
    const dst = path.join(TREE, to);
    fs.mkdirSync(path.dirname(dst), { recursive: true });
    fs.copyFileSync(path.join(HERE, from), dst);
  }
  // The barrels, each with the skill's one line.
  fs.writeFileSync(path.join(TREE, 'container/agent-runner/src/providers/index.ts'), "import './codex-sidecar.js';\n");
  fs.writeFileSync(path.join(TREE, 'src/providers/index.ts'), "import './codex-sidecar.js';\n");
  return TREE;
}

const root = buildTree();
/** NanoClaw's container side: the barrel, the registry and the provider module. */
await import(path.join(root, 'container/agent-runner/src/providers/index.ts'));
export const container = {
  registry: await import(path.join(root, 'container/agent-runner/src/providers/provider-registry.ts')),
  provider: await import(path.join(root, 'container/agent-runner/src/providers/codex-sidecar.ts')),
};
/** NanoClaw's host side. */
await import(path.join(root, 'src/providers/index.ts'));
export const host = {
  registry: await import(path.join(root, 'src/providers/provider-container-registry.ts')),
  provider: await import(path.join(root, 'src/providers/codex-sidecar.ts')),
};
