// Restatement of NanoClaw's container-side provider registry (see ../../../../README.md).
import type { AgentProvider, ProviderOptions } from './types.js';

export type ProviderFactory = (options: ProviderOptions) => AgentProvider;

const factories = new Map<string, ProviderFactory>();

/** Registers a provider under `name`; a name can be registered once. */
export function registerProvider(name: string, factory: ProviderFactory): void {
  if (factories.has(name)) throw new Error(`Provider already registered: ${name}`);
  factories.set(name, factory);
}

/** Builds the provider registered as `name`. */
export function createProvider(name: string, options: ProviderOptions): AgentProvider {
  const factory = factories.get(name);
  if (!factory) throw new Error(`Unknown provider: ${name}`);
  return factory(options);
}

/** Every registered name. */
export function listProviderNames(): string[] {
  return [...factories.keys()];
}
