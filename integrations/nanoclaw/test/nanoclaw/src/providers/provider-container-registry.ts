// Restatement of NanoClaw's host-side provider container-config registry (see ../../README.md).

export interface VolumeMount {
  hostPath: string;
  containerPath: string;
  readonly: boolean;
}

/** What the host knows when it spawns a container. */
export interface ProviderContainerContext {
  sessionDir: string;
  agentGroupId: string;
  hostEnv: NodeJS.ProcessEnv;
}

/** What a provider adds to the container's `docker run`. */
export interface ProviderContainerContribution {
  mounts?: VolumeMount[];
  env?: Record<string, string>;
}

export type ProviderContainerConfigFn = (ctx: ProviderContainerContext) => ProviderContainerContribution;

const fns = new Map<string, ProviderContainerConfigFn>();

/** Registers the host-side contribution of provider `name`; a name can be registered once. */
export function registerProviderContainerConfig(name: string, fn: ProviderContainerConfigFn): void {
  if (fns.has(name)) throw new Error(`Provider container config already registered: ${name}`);
  fns.set(name, fn);
}

/** The contribution function of `name`, if any. */
export function getProviderContainerConfig(name: string): ProviderContainerConfigFn | undefined {
  return fns.get(name);
}
