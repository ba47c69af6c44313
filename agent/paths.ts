import { join } from 'node:path';

/**
 * The agent's data folder, laid out in one place: everything the agent keeps on disk is named
 * here, so the layout is decided once (and a backup, a migration or a test finds it here).
 */
export interface AgentPaths {
  readonly dataDir: string;
  /** The enrolled identity and its credential (0600). */
  readonly identity: string;
  /** The telemetry buffer and the agent's key-value state (SQLite, WAL beside it). */
  readonly buffer: string;
  /** Downloaded and active models, by sha256. */
  readonly models: string;
  /** The pinned root metadata of signed releases. */
  readonly trustRoot: string;
  /** The on-device learner's labelled samples, cached embeddings and sent reports (SQLite, apart from the buffer). */
  readonly learner: string;
  /** Federated heads downloaded for rounds, by sha256. */
  readonly learnerHeads: string;
}

export function agentPaths(dataDir: string): AgentPaths {
  return Object.freeze({
    dataDir,
    identity: join(dataDir, 'identity.json'),
    buffer: join(dataDir, 'buffer.db'),
    models: join(dataDir, 'models'),
    trustRoot: join(dataDir, 'trust', 'root.json'),
    learner: join(dataDir, 'learner.db'),
    learnerHeads: join(dataDir, 'learner-heads'),
  });
}
