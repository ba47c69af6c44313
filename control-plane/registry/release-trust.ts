import { desiredModelsOf } from '../../common/device-protocol/model-set.js';
import type { DesiredState } from '../../common/proto/driftline/v1/device_link.js';
import type { Clock } from '../../common/clock.js';
import { DriftlineError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import type { ModelVersion } from '../../common/proto/driftline/v1/models.js';
import { readKeyFile, readRootChain } from '../../common/trust/key-files.js';
import type { TrustWarning } from '../../common/trust/root.js';
import type { ControlPlaneConfig } from '../config.js';
import type { ReleaseRepository } from './ports.js';
import { ReleaseSigner } from './release-signing.js';
import { ReleaseStore } from './release-store.js';

/**
 * Builds the release store from configuration: the root chain from `trust.root`, and the
 * online rollback key only when the operator opted in with `trust.rollbackKey`. Without a
 * root, releases are unsigned and the control plane says so loudly.
 */
export function openReleaseStore(deps: {
  releases: ReleaseRepository;
  registry: { resolve(name: string, version: number): Promise<ModelVersion> };
  clock: Clock;
  logger: Logger;
  trust: ControlPlaneConfig['trust'];
}): ReleaseStore {
  const { trust, logger } = deps;
  const rootChain = trust.root ? readRootChain(trust.root) : [];
  if (rootChain.length === 0) {
    logger.warn(
      'no trust root configured (serve --trust-root): devices enrolled now accept unsigned models; run `driftline keys init` and restart with --trust-root',
    );
  }
  const rollbackSigner = trust.rollbackKey ? readKeyFile(trust.rollbackKey, process.env[trust.rollbackKeyPassphraseEnv]) : undefined;
  const store = new ReleaseStore({ releases: deps.releases, clock: deps.clock, logger, rootChain, registry: deps.registry, rollbackSigner });
  const root = store.rootVersion();
  if (root)
    logger.info({ rootVersion: root.version, expiresAtMs: root.expiresAtMs, onlineRollbackSigning: Boolean(rollbackSigner) }, 'signed releases enabled');
  return store;
}

/**
 * The release signer the retraining loop calls: with the automation key when the operator
 * opted in with `trust.automationKey` (encrypted at rest: its passphrase in
 * `$trust.automationKeyPassphraseEnv`, required), otherwise one that records drafts and reports
 * awaiting-signature. A key the root does not delegate is said at start, and its canaries wait.
 */
export function openReleaseSigner(deps: {
  releases: ReleaseStore;
  registry: { resolve(name: string, version: number): Promise<ModelVersion> };
  clock: Clock;
  logger: Logger;
  trust: ControlPlaneConfig['trust'];
}): ReleaseSigner {
  const { trust, logger, releases } = deps;
  let automationSigner;
  if (trust.automationKey) {
    const passphrase = process.env[trust.automationKeyPassphraseEnv];
    if (!passphrase)
      throw new DriftlineError('KEY_PASSPHRASE_INVALID', `the automation key ${trust.automationKey} is encrypted: set $${trust.automationKeyPassphraseEnv}`);
    automationSigner = readKeyFile(trust.automationKey, passphrase);
    const scope = releases.automationScope(automationSigner.keyId);
    if (!releases.trusted) logger.warn('an automation key without a trust root signs nothing (serve --trust-root)');
    else if (!scope)
      logger.warn(
        { keyId: automationSigner.keyId },
        'the root does not delegate this automation key (or revoked it): released candidates wait for driftline models sign',
      );
    else logger.info({ keyId: automationSigner.keyId, scope }, 'online canary signing enabled (automation key)');
  }
  return new ReleaseSigner({ releases, registry: deps.registry, clock: deps.clock, logger, ...(automationSigner ? { automationSigner } : {}) });
}

/**
 * The trust warnings `serve` keeps current: the root expiring within `trust.expiryWarning`
 * (or expired), and releases in devices' desired states signed by a key the root revokes.
 * Evaluated at start (each one logged) and every `trust.checkInterval`, since the expiry comes
 * closer while serve runs; /healthz reads the last result instead of scanning the fleet.
 */
export async function watchTrust(deps: {
  releases: Pick<ReleaseStore, 'trustWarnings'>;
  fleet: { list(): Promise<Array<{ desired?: DesiredState | undefined }>> };
  config: Pick<ControlPlaneConfig['trust'], 'expiryWarning' | 'checkInterval'>;
  logger: Logger;
}): Promise<{ current(): TrustWarning[]; stop(): void }> {
  let warnings: TrustWarning[] = [];
  const evaluate = async (): Promise<void> => {
    try {
      const deployed = (await deps.fleet.list()).flatMap((d) => desiredModelsOf(d.desired).map((m) => ({ name: m.name, version: m.version })));
      const next = await deps.releases.trustWarnings(deployed, deps.config.expiryWarning);
      const known = new Set(warnings.map((w) => w.message));
      for (const w of next) if (!known.has(w.message)) deps.logger.warn({ code: w.code, ...w.details }, w.message);
      warnings = next;
    } catch (err) {
      deps.logger.warn({ err }, 'trust check failed');
    }
  };
  await evaluate();
  const timer = setInterval(() => void evaluate(), deps.config.checkInterval);
  timer.unref();
  return { current: () => warnings, stop: () => clearInterval(timer) };
}
