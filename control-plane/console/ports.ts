import type { Clock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';
import type { DriftEventFeed } from '../api/ports.js';
import type { DriftHistoryQueries } from '../drift/ports.js';
import type { FleetStore } from '../fleet/fleet-store.js';
import type { OperatorTokenStore } from '../fleet/operator-tokens.js';
import type { ModelRegistry } from '../registry/model-registry.js';
import type { ReleaseStore } from '../registry/release-store.js';
import type { RolloutEngine } from '../rollout/engine.js';
import type { TrainingEngine } from '../training/engine.js';
import type { SafeHtml } from './html.js';
import type { ConsoleSession } from './sessions.js';

/**
 * What the console reads and acts on: the same core objects the gRPC services call
 * (control-plane/api/*.ts), called directly, never over the API.
 */
export interface ConsoleDeps {
  fleet: Pick<FleetStore, 'page' | 'summary' | 'get'>;
  tokens: Pick<OperatorTokenStore, 'authenticate' | 'list'>;
  registry: Pick<ModelRegistry, 'listLatest' | 'get'>;
  /** Signature status per version; without it every version shows as unsigned. */
  releases?: Pick<ReleaseStore, 'statuses'> | undefined;
  rollouts: Pick<RolloutEngine, 'list' | 'get' | 'audit' | 'versionCounts' | 'command' | 'subscribe'>;
  drift?: DriftHistoryQueries | undefined;
  driftEvents?: Pick<DriftEventFeed, 'list'> | undefined;
  training?: Pick<TrainingEngine, 'list' | 'get' | 'logs' | 'audit' | 'watch'> | undefined;
  /** Pages a later domain adds (federated tasks, issue 15): in the navigation, behind the same sign-in. */
  extraPages?: readonly ConsolePage[];
  config: ConsoleConfig;
  clock: Clock;
  logger: Logger;
}

export interface ConsoleConfig {
  /** A device seen within this window is online (the control plane's onlineWindow). */
  onlineWindowMs: number;
  sessionTtlMs: number;
  idleTimeoutMs: number;
  maxFailedLogins: number;
  loginWindowMs: number;
  secureCookie: boolean;
  /** How often an open rollout stream re-reads its rollout (device counts move between transitions). */
  watchIntervalMs: number;
}

/**
 * The extension point for pages of domains that land later: a path under /ui (exact match, or
 * a prefix ending in "/"), a navigation title, and a renderer reading its own core objects.
 * Reading only: actions need the console's CSRF-checked POST routes, added here with them.
 */
export interface ConsolePage {
  path: string;
  title: string;
  render(request: { session: ConsoleSession; url: URL }): Promise<SafeHtml>;
}
