// Restatement of NanoClaw's container-side provider interface (see ../../../../README.md).

/** A provider the agent runner drives. */
export interface AgentProvider {
  /** Whether slash commands are passed to the provider as raw text. */
  readonly supportsNativeSlashCommands: boolean;
  /** Starts a query: a prompt, then pushed follow-ups, streaming events back. */
  query(input: QueryInput): AgentQuery;
  /** Whether an error thrown from `events` means the stored continuation is unusable. */
  isSessionInvalid(err: unknown): boolean;
}

/** What a provider's factory is given. */
export interface ProviderOptions {
  assistantName?: string;
  mcpServers?: Record<string, McpServerConfig>;
  env?: Record<string, string | undefined>;
  additionalDirectories?: string[];
  model?: string;
  effort?: string;
}

/** One query. */
export interface QueryInput {
  prompt: string;
  continuation?: string;
  cwd: string;
  systemContext?: { instructions?: string };
}

/** An MCP server the runner would start (stdio). */
export interface McpServerConfig {
  command: string;
  args: string[];
  env: Record<string, string>;
}

/** A running query. */
export interface AgentQuery {
  push(message: string): void;
  end(): void;
  events: AsyncIterable<ProviderEvent>;
  abort(): void;
}

/** What a query yields. */
export type ProviderEvent =
  | { type: 'init'; continuation: string }
  | { type: 'result'; text: string | null }
  | { type: 'error'; message: string; retryable: boolean; classification?: string }
  | { type: 'progress'; message: string }
  | { type: 'activity' };
