import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Clock } from '../../common/clock.js';
import { asDriftlineError, DriftlineError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import type { ExampleInputs } from '../../common/onnx/example-inputs.js';
import { DesiredState } from '../../common/proto/driftline/v1/device_link.js';
import { verifyRelease, type ReleaseManifest } from '../../common/trust/manifest.js';
import type { TrustedRoot } from '../../common/trust/root.js';
import { verifyRollbackDirective } from '../../common/trust/rollback.js';
import { downloadArtifact } from './artifact-download.js';

export interface ModelRef {
  name: string;
  version: number;
  sha256: string;
}

/** The part of the inference engine the manager drives: loads beside the running model, then swaps. */
export interface ModelHost {
  /**
   * examples: inputs the model is known to run on, for its warm-up. admitted: a restart restores
   * a model that was serving (the engine does not check it against the memory budget again).
   */
  load(model: ModelRef & { path: string; examples?: ExampleInputs; admitted?: boolean }): Promise<unknown>;
  /** Stops serving a model by name (the desired state removed it); the set coordinator calls it. */
  unload?(name: string): Promise<unknown>;
}

/** Example values above this many per tensor are not kept in the persisted state: a restart warms up on zeros of the same shape. */
const PERSISTED_EXAMPLE_VALUES = 4096;

/** Where the manager remembers what is active across restarts (the agent's SQLite agent_state). */
export interface ModelStateStore {
  getState(key: string): string | undefined;
  setState(key: string, value: string): void;
}

/** The device's pinned root (agent/trust/pinned-root.ts). */
export interface TrustAnchor {
  current(): TrustedRoot | undefined;
  /** Verifies and persists newer root versions; all or nothing. */
  advance(chain: readonly Uint8Array[], clock: Clock): TrustedRoot;
}

/** What the device offers, checked against a release's constraints. */
export interface DeviceTraits {
  deviceId: string;
  /** 'x86_64' | 'arm64' */
  arch: string;
  providers: readonly string[];
  /** Memory models may use (the firmware profile's budget). */
  memoryBytes: number;
  /** Facts a release may require by name (profile name, accelerator kind). */
  flags?: readonly string[];
}

/** Install states, persisted before each step so a restart knows where it stopped. */
export type InstallState = 'downloading' | 'verifying' | 'staged' | 'activating';

export interface ModelManagerOptions {
  modelsDir: string;
  host: ModelHost;
  state: ModelStateStore;
  artifactBaseUrl: string;
  credential: { username: string; password: string };
  downloadTimeoutMs: number;
  maxModelBytes: number;
  /** Restarts in which an interrupted activation is tried again before it is refused (config models.activationRetries). */
  activationRetries: number;
  logger: Logger;
  clock: Clock;
  /** The pinned root; without one (a device enrolled without a trust root) unsigned releases are accepted. */
  trust?: TrustAnchor;
  device?: DeviceTraits;
  /** Runs a release's golden vectors on the downloaded file, beside the running model. */
  selfTest?: (path: string, golden: ReleaseManifest['golden']) => Promise<void>;
  /** Called after every change worth reporting (activated, failed). */
  onChange(event: { kind: 'model.activated' | 'model.failed' | 'model.rolled_back'; model: ModelRef; error?: DriftlineError }): void;
  /** Test hook: called right after each state is persisted (the kill -9 tests stop the process here). */
  onStep?: (step: InstallState | 'activated') => void;
  /**
   * The agent_state key of this manager's record: 'models.manager' (and the keys of before) for
   * an agent of one model; one key per model of a set (agent/models/model-set.ts).
   */
  stateKey?: string;
  /** Files other managers in the same folder still need (sha256s): garbage collection keeps them. */
  retainedFiles?: () => Iterable<string>;
}

export interface Installed extends ModelRef {
  sizeBytes: number;
  revision: number;
  /** The release's warm-up inputs, so a restart warms the model up the way its activation did. */
  examples?: ExampleInputs;
}

export interface Install {
  state: InstallState;
  /** DesiredState as proto JSON (bytes in base64). */
  desired: unknown;
  /** Restarts that found this install's activation interrupted (absent: none). */
  interruptedActivations?: number;
}

/** Everything in one agent_state value, so each transition is one atomic write. */
export interface Persisted {
  active?: Installed;
  /** Kept on disk for instant local rollback. */
  previous?: Installed;
  /** Highest version ever activated, per model name (anti-rollback). */
  highest: Record<string, number>;
  appliedRevision: number;
  install?: Install;
}

/** The key of an agent that served one model (before sets); agent/models/model-set.ts migrates it. */
export const STATE_KEY = 'models.manager';
const LEGACY_ACTIVE_KEY = 'models.active';
const LEGACY_REVISION_KEY = 'models.desired_revision';
const ARTIFACT_PATH = /^[A-Za-z0-9][A-Za-z0-9._/-]*$/;

/**
 * Brings the device to its desired model, crash-safely:
 *   signed desired state -> root chain walked from the pinned root -> release verified
 *   (signature, release key or a scoped automation key, expiry, audience) -> matches the desired state -> anti-rollback (or a
 *   signed rollback directive) -> compatible with the device -> download (resumable, capped
 *   at the signed size, sha256) -> golden-vector self-test beside the running model ->
 *   swap -> one atomic write of the new active record.
 * Desired states are applied one at a time, newest wins. A refusal at any step leaves the
 * running model, the files it needs and the pinned root untouched, and is reported.
 */
export class ModelManager {
  private persisted: Persisted;
  private lastError: DriftlineError | undefined;
  private queue: Promise<void> = Promise.resolve();
  private latestDesired: DesiredState | undefined;

  private readonly stateKey: string;

  constructor(private readonly options: ModelManagerOptions) {
    mkdirSync(options.modelsDir, { recursive: true });
    this.stateKey = options.stateKey ?? STATE_KEY;
    this.persisted = this.read();
  }

  /** Whether an install is in flight or queued (persisted, or waiting its turn). */
  get busy(): boolean {
    return this.persisted.install !== undefined || this.latestDesired !== undefined;
  }

  /** The model files this manager needs: active, previous and the one being installed. */
  filesInUse(): string[] {
    const p = this.persisted;
    const pending = p.install ? DesiredState.fromJSON(p.install.desired).model?.sha256 : undefined;
    return [p.active?.sha256, p.previous?.sha256, pending].filter((sha): sha is string => !!sha);
  }

  /**
   * The desired state no longer lists this model: it stops being served and its files may go;
   * the highest version ever activated stays (anti-rollback holds if it comes back).
   * Queued behind an install in flight, which it then undoes.
   */
  remove(revision: number): Promise<void> {
    this.latestDesired = undefined;
    this.queue = this.queue.then(async () => {
      const had = this.persisted.active;
      this.write({
        ...this.persisted,
        active: undefined,
        previous: undefined,
        install: undefined,
        appliedRevision: Math.max(this.persisted.appliedRevision, revision),
      });
      this.lastError = undefined;
      if (had) await this.options.host.unload?.(had.name);
      this.collectGarbage();
      if (had) this.options.logger.info({ model: had.name, version: had.version }, 'model removed by the desired state');
    });
    return this.queue;
  }

  get desiredRevision(): number {
    return this.persisted.appliedRevision;
  }

  get error(): DriftlineError | undefined {
    return this.lastError;
  }

  /** The active and previous versions and the install in progress, as persisted. */
  snapshot(): Readonly<Persisted> {
    return structuredClone(this.persisted);
  }

  /**
   * After a restart: loads the active model after re-checking its file (falling back to the
   * previous one when the active file is gone or damaged), then finishes what was in flight:
   * a download or a staged release resumes; an activation that was interrupted is tried
   * again up to activationRetries times (the process may have died of something else: a
   * kill -9, a power cut), then rolled back (the old model stays active) and reported, so a
   * model that kills the process while loading cannot put the device into a crash loop.
   */
  async restore(): Promise<void> {
    const p = this.persisted;
    if (p.active && !(await this.fileIsIntact(p.active))) {
      this.options.logger.warn({ model: p.active }, 'active model file is missing or damaged; falling back to the previous model');
      const fallback = p.previous && (await this.fileIsIntact(p.previous)) ? p.previous : undefined;
      this.write({ ...p, active: fallback, previous: undefined });
    }
    const active = this.persisted.active;
    if (active) {
      await this.options.host.load({
        name: active.name,
        version: active.version,
        sha256: active.sha256,
        path: this.pathFor(active.sha256),
        ...(active.examples ? { examples: active.examples } : {}),
        admitted: true,
      });
      this.options.logger.info({ model: active.name, version: active.version }, 'restored active model');
    }
    const install = this.persisted.install;
    if (!install) return this.collectGarbage();
    const desired = DesiredState.fromJSON(install.desired);
    const interrupted = (install.interruptedActivations ?? 0) + (install.state === 'activating' ? 1 : 0);
    if (install.state === 'activating' && interrupted <= this.options.activationRetries) {
      this.options.logger.warn(
        { model: refOf(desired), attempt: interrupted, of: this.options.activationRetries },
        'the model activation was interrupted; trying it again',
      );
      this.write({ ...this.persisted, install: { ...install, interruptedActivations: interrupted } });
      return this.apply(desired, { resume: true });
    }
    if (install.state === 'activating') {
      const ref = refOf(desired);
      const error = new DriftlineError(
        'RELEASE_ACTIVATION_INTERRUPTED',
        `activation of ${ref.name} v${ref.version} was interrupted; the previous model stays active`,
      );
      this.write({ ...this.persisted, install: undefined, appliedRevision: Math.max(this.persisted.appliedRevision, desired.revision) });
      this.fail(ref, error);
      this.collectGarbage();
      return;
    }
    this.options.logger.info({ state: install.state, revision: desired.revision }, 'resuming the interrupted model install');
    await this.apply(desired, { resume: true });
  }

  /**
   * Queues a desired state; replays, older revisions and one already in progress are
   * ignored. A refused revision is remembered as applied (the device reports it with the
   * error), so the same bad release is not retried until a new revision arrives; a failed
   * download is forgotten so the control plane's resend retries it.
   */
  apply(desired: DesiredState, { resume = false }: { resume?: boolean } = {}): Promise<void> {
    if (!resume && desired.revision <= this.persisted.appliedRevision) return this.queue;
    if (this.latestDesired && desired.revision <= this.latestDesired.revision) return this.queue;
    this.latestDesired = desired;
    this.queue = this.queue.then(async () => {
      if (this.latestDesired !== desired) return;
      try {
        await this.reconcile(desired);
      } finally {
        if (this.latestDesired === desired) this.latestDesired = undefined;
      }
    });
    return this.queue;
  }

  private async reconcile(desired: DesiredState): Promise<void> {
    const model = desired.model;
    if (!model) return this.markApplied(desired.revision);
    const ref = refOf(desired);
    try {
      const checked = this.check(desired);
      const active = this.persisted.active;
      if (active && active.sha256 === ref.sha256 && active.name === ref.name && active.version === ref.version) {
        this.write({ ...this.persisted, install: undefined });
        return this.markApplied(desired.revision);
      }
      const path = this.pathFor(ref.sha256);
      this.step('downloading', desired);
      if (!existsSync(path)) {
        await downloadArtifact({
          url: new URL(model.artifactPath, withSlash(this.options.artifactBaseUrl)).toString(),
          ...this.options.credential,
          expectedSha256: ref.sha256,
          expectedBytes: model.sizeBytes,
          destination: path,
          timeoutMs: this.options.downloadTimeoutMs,
        });
      }
      this.step('verifying', desired);
      if (!(await this.fileIsIntact({ ...ref, sizeBytes: model.sizeBytes }))) {
        rmSync(path, { force: true });
        throw new DriftlineError('MODEL_CHECKSUM_MISMATCH', `the stored file of ${ref.name} v${ref.version} does not match its sha256`);
      }
      if (checked.manifest) await this.options.selfTest?.(path, checked.manifest.golden);
      this.step('staged', desired);
      this.step('activating', desired);
      const examples = checked.manifest ? warmUpExamples(checked.manifest) : undefined;
      await this.options.host.load({ ...ref, path, ...(examples ? { examples } : {}) });
      const previous = this.persisted.active;
      const highest = { ...this.persisted.highest, [ref.name]: Math.max(this.persisted.highest[ref.name] ?? 0, ref.version) };
      this.write({
        active: { ...ref, sizeBytes: model.sizeBytes, revision: desired.revision, ...(examples ? { examples: persistable(examples) } : {}) },
        previous: previous && previous.sha256 !== ref.sha256 ? previous : this.persisted.previous,
        highest,
        appliedRevision: Math.max(this.persisted.appliedRevision, desired.revision),
        install: undefined,
      });
      this.options.onStep?.('activated');
      this.lastError = undefined;
      this.collectGarbage();
      this.options.logger.info({ model: ref.name, version: ref.version, rollback: checked.rollback }, 'model activated');
      this.options.onChange({ kind: checked.rollback ? 'model.rolled_back' : 'model.activated', model: ref });
    } catch (err) {
      const error = asDriftlineError(err, 'MODEL_INVALID');
      // Transient failures are retried on the next resend; refusals are final for this revision.
      const transient = error.code === 'DOWNLOAD_FAILED' || error.code === 'DOWNLOAD_TIMEOUT' || error.code === 'SHUTTING_DOWN';
      // A transient failure keeps its install record (and the .part file), so a restart resumes it too.
      if (!transient) this.write({ ...this.persisted, install: undefined, appliedRevision: Math.max(this.persisted.appliedRevision, desired.revision) });
      this.fail(ref, error);
    }
  }

  /**
   * Every check that needs no download: trust chain, signature, consistency with the desired
   * state, anti-rollback and compatibility. Throws the refusal's code.
   */
  private check(desired: DesiredState): { manifest?: ReleaseManifest; rollback: boolean } {
    const model = desired.model!;
    const { trust, clock, device } = this.options;
    if (
      !ARTIFACT_PATH.test(model.artifactPath) ||
      model.artifactPath.split('/').some((seg) => seg === '..' || seg === '.') ||
      !model.artifactPath.endsWith(model.sha256)
    ) {
      throw new DriftlineError('RELEASE_MISMATCH', `artifact path ${JSON.stringify(model.artifactPath)} is not the content address of ${model.sha256}`);
    }
    if (model.sizeBytes > this.options.maxModelBytes) {
      throw new DriftlineError('PAYLOAD_TOO_LARGE', `model of ${model.sizeBytes} bytes exceeds the device limit of ${this.options.maxModelBytes}`);
    }
    const pinned = trust?.current();
    if (!pinned) {
      if (!/^[a-z0-9][a-z0-9._-]{0,63}$/.test(model.name) || !/^[0-9a-f]{64}$/.test(model.sha256)) {
        throw new DriftlineError('RELEASE_INVALID', 'invalid model name or sha256 in the desired state');
      }
      return { rollback: false };
    }
    if (model.envelope.length === 0)
      throw new DriftlineError('RELEASE_UNSIGNED', `${model.name} v${model.version} is not signed and this device has a pinned root`);
    const root = trust!.advance(desired.rootChain, clock);
    // With this device's id: a canary (a release naming an audience) is refused by every device it does not name.
    const { manifest } = verifyRelease(model.envelope, root.metadata, clock, { deviceId: device?.deviceId });
    if (
      manifest.name !== model.name ||
      manifest.version !== model.version ||
      manifest.artifact.sha256 !== model.sha256 ||
      manifest.artifact.sizeBytes !== model.sizeBytes
    ) {
      throw new DriftlineError('RELEASE_MISMATCH', `the signed manifest (${manifest.name} v${manifest.version}) does not describe the desired artifact`, {
        details: { signed: { name: manifest.name, version: manifest.version, sha256: manifest.artifact.sha256, sizeBytes: manifest.artifact.sizeBytes } },
      });
    }
    const active = this.persisted.active;
    const isActive = active?.name === manifest.name && active.version === manifest.version && active.sha256 === manifest.artifact.sha256;
    const highest = this.persisted.highest[manifest.name] ?? 0;
    let rollback = false;
    if (manifest.version <= highest && !isActive) {
      if (desired.rollback.length === 0) {
        throw new DriftlineError('RELEASE_VERSION_REFUSED', `${manifest.name} v${manifest.version} is not newer than v${highest}, the highest ever activated`, {
          details: { offered: manifest.version, highest },
        });
      }
      verifyRollbackDirective(desired.rollback, root.metadata, clock, {
        deviceId: device?.deviceId ?? '',
        model: manifest.name,
        version: manifest.version,
        sha256: manifest.artifact.sha256,
      });
      rollback = true;
    }
    if (device) {
      const c = manifest.constraints;
      const incompatible: string[] = [];
      if (c.arch.length > 0 && !c.arch.includes(device.arch)) incompatible.push(`arch ${device.arch} not in [${c.arch.join(', ')}]`);
      if (c.providers.length > 0 && !c.providers.some((p) => device.providers.includes(p)))
        incompatible.push(`none of the providers [${c.providers.join(', ')}]`);
      if (c.minMemoryBytes > device.memoryBytes) incompatible.push(`needs ${c.minMemoryBytes} bytes of memory`);
      const missing = c.flags.filter((f) => !(device.flags ?? []).includes(f));
      if (missing.length > 0) incompatible.push(`lacks ${missing.join(', ')}`);
      if (incompatible.length > 0)
        throw new DriftlineError('RELEASE_INCOMPATIBLE', `${manifest.name} v${manifest.version} does not fit this device: ${incompatible.join('; ')}`);
    }
    return { manifest, rollback };
  }

  private step(state: InstallState, desired: DesiredState): void {
    // The count of interrupted activations stays with the same revision's install across its steps.
    const current = this.persisted.install;
    const interruptedActivations = current && DesiredState.fromJSON(current.desired).revision === desired.revision ? current.interruptedActivations : undefined;
    this.write({ ...this.persisted, install: { state, desired: DesiredState.toJSON(desired), ...(interruptedActivations ? { interruptedActivations } : {}) } });
    this.options.onStep?.(state);
  }

  private fail(ref: ModelRef, error: DriftlineError): void {
    this.lastError = error;
    this.options.logger.error({ model: ref, code: error.code, err: error.message }, 'model update refused; the running model stays');
    this.options.onChange({ kind: 'model.failed', model: ref, error });
  }

  private markApplied(revision: number): void {
    this.write({ ...this.persisted, appliedRevision: Math.max(this.persisted.appliedRevision, revision) });
  }

  private read(): Persisted {
    if (this.stateKey !== STATE_KEY) {
      const stored = this.options.state.getState(this.stateKey);
      return stored ? (JSON.parse(stored) as Persisted) : { highest: {}, appliedRevision: 0 };
    }
    return readSingleModelState(this.options.state) ?? { highest: {}, appliedRevision: 0 };
  }

  private write(next: Persisted): void {
    this.options.state.setState(this.stateKey, JSON.stringify(next));
    this.persisted = next;
  }

  private async fileIsIntact(model: ModelRef & { sizeBytes: number }): Promise<boolean> {
    const path = this.pathFor(model.sha256);
    if (!existsSync(path)) return false;
    const hash = createHash('sha256');
    for await (const chunk of createReadStream(path) as AsyncIterable<Buffer>) hash.update(chunk);
    return hash.digest('hex') === model.sha256;
  }

  /** Keeps the active and previous model files and a partial download of the release in flight. */
  private collectGarbage(): void {
    const p = this.persisted;
    const keep = new Set([p.active?.sha256, p.previous?.sha256].filter(Boolean).map((sha) => `${sha}.onnx`));
    const pending = p.install ? (DesiredState.fromJSON(p.install.desired).model?.sha256 ?? '') : '';
    const others = [...(this.options.retainedFiles?.() ?? [])];
    for (const file of readdirSync(this.options.modelsDir)) {
      if (keep.has(file) || (pending && file.startsWith(pending)) || others.some((sha) => file.startsWith(sha))) continue;
      if (file.endsWith('.onnx') || file.endsWith('.onnx.part')) rmSync(join(this.options.modelsDir, file), { force: true });
    }
  }

  private pathFor(sha256: string): string {
    if (!/^[0-9a-f]{64}$/.test(sha256)) throw new DriftlineError('RELEASE_INVALID', 'invalid sha256');
    return join(this.options.modelsDir, `${sha256}.onnx`);
  }
}

/**
 * The record of an agent that served one model: the 'models.manager' key, or the two keys of
 * agents from before signed releases. undefined when the agent never had one.
 */
export function readSingleModelState(state: ModelStateStore): Persisted | undefined {
  const stored = state.getState(STATE_KEY);
  if (stored) return JSON.parse(stored) as Persisted;
  // Agents from before signed releases kept two keys.
  const legacy = state.getState(LEGACY_ACTIVE_KEY);
  const revision = state.getState(LEGACY_REVISION_KEY);
  if (!legacy && revision === undefined) return undefined;
  const active = legacy ? (JSON.parse(legacy) as Installed) : undefined;
  return {
    active: active ? { ...active, sizeBytes: active.sizeBytes ?? 0 } : undefined,
    highest: active ? { [active.name]: active.version } : {},
    appliedRevision: Number(revision ?? 0),
  };
}

const refOf = (desired: DesiredState): ModelRef => ({
  name: desired.model?.name ?? '',
  version: desired.model?.version ?? 0,
  sha256: desired.model?.sha256 ?? '',
});

const withSlash = (url: string): string => (url.endsWith('/') ? url : `${url}/`);

/** A release's example inputs, else its golden vectors' inputs (they ran when it was signed); none: the engine tries sizes. */
function warmUpExamples(manifest: ReleaseManifest): ExampleInputs | undefined {
  if (manifest.examples) return manifest.examples;
  if (manifest.golden.vectors.length === 0) return undefined;
  return manifest.golden.vectors.slice(0, 1).map((v) => v.inputs);
}

function persistable(examples: ExampleInputs): ExampleInputs {
  return examples.map((example) =>
    Object.fromEntries(
      Object.entries(example).map(([name, t]) => [name, t.data !== undefined && t.data.length > PERSISTED_EXAMPLE_VALUES ? { type: t.type, dims: t.dims } : t]),
    ),
  );
}
