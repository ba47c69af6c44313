import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { asDriftlineError, DriftlineError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import type { DesiredState } from '../../common/proto/driftline/v1/device_link.js';
import { downloadArtifact } from './artifact-download.js';

export interface ModelRef {
  name: string;
  version: number;
  sha256: string;
}

/** The part of the inference engine the manager drives. */
export interface ModelHost {
  load(model: ModelRef & { path: string }): Promise<unknown>;
}

/** Where the manager remembers what is active across restarts. */
export interface ModelStateStore {
  getState(key: string): string | undefined;
  setState(key: string, value: string): void;
}

export interface ModelManagerOptions {
  modelsDir: string;
  host: ModelHost;
  state: ModelStateStore;
  artifactBaseUrl: string;
  credential: { username: string; password: string };
  downloadTimeoutMs: number;
  maxModelBytes: number;
  logger: Logger;
  /** Called after every change worth reporting (activated, failed). */
  onChange(event: { kind: 'model.activated' | 'model.failed'; model: ModelRef; error?: DriftlineError }): void;
}

interface ActiveRecord extends ModelRef {
  revision: number;
}

const ACTIVE_KEY = 'models.active';
const REVISION_KEY = 'models.desired_revision';

/**
 * Brings the device to its desired model: download (verified), load beside the running
 * model, swap, remember. Desired states are applied one at a time, newest wins, and a
 * failure leaves the running model untouched and is reported.
 */
export class ModelManager {
  private active: ActiveRecord | undefined;
  private appliedRevision: number;
  private lastError: DriftlineError | undefined;
  private queue: Promise<void> = Promise.resolve();
  private latestDesired: DesiredState | undefined;

  constructor(private readonly options: ModelManagerOptions) {
    mkdirSync(options.modelsDir, { recursive: true });
    const stored = options.state.getState(ACTIVE_KEY);
    this.active = stored ? (JSON.parse(stored) as ActiveRecord) : undefined;
    this.appliedRevision = Number(options.state.getState(REVISION_KEY) ?? 0);
  }

  get desiredRevision(): number {
    return this.appliedRevision;
  }

  get error(): DriftlineError | undefined {
    return this.lastError;
  }

  /** Loads the model that was active before the restart, if its file is still there. */
  async restore(): Promise<void> {
    const active = this.active;
    if (!active) return;
    const path = this.pathFor(active.sha256);
    if (!existsSync(path)) {
      this.options.logger.warn({ model: active }, 'previously active model file is missing; waiting for desired state');
      this.active = undefined;
      return;
    }
    await this.options.host.load({ ...active, path });
    this.options.logger.info({ model: active.name, version: active.version }, 'restored active model');
  }

  /**
   * Queues a desired state; replays, older revisions and one already in progress are
   * ignored. A failed revision is forgotten, so the control plane's next resend retries it.
   */
  apply(desired: DesiredState): Promise<void> {
    if (desired.revision <= this.appliedRevision) return this.queue;
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
    const ref: ModelRef = { name: model.name, version: model.version, sha256: model.sha256 };
    if (this.active?.sha256 === model.sha256 && this.active.name === model.name && this.active.version === model.version) {
      return this.markApplied(desired.revision);
    }
    try {
      if (model.sizeBytes > this.options.maxModelBytes) {
        throw new DriftlineError('PAYLOAD_TOO_LARGE', `model of ${model.sizeBytes} bytes exceeds the device limit of ${this.options.maxModelBytes}`);
      }
      const path = this.pathFor(model.sha256);
      if (!existsSync(path)) {
        await downloadArtifact({
          url: new URL(model.artifactPath, withSlash(this.options.artifactBaseUrl)).toString(),
          ...this.options.credential,
          expectedSha256: model.sha256,
          expectedBytes: model.sizeBytes,
          destination: path,
          timeoutMs: this.options.downloadTimeoutMs,
        });
      }
      await this.options.host.load({ ...ref, path });
      this.active = { ...ref, revision: desired.revision };
      this.options.state.setState(ACTIVE_KEY, JSON.stringify(this.active));
      this.lastError = undefined;
      this.markApplied(desired.revision);
      this.options.logger.info({ model: ref.name, version: ref.version }, 'model activated');
      this.options.onChange({ kind: 'model.activated', model: ref });
    } catch (err) {
      const error = asDriftlineError(err, 'MODEL_INVALID');
      this.lastError = error;
      this.options.logger.error({ model: ref, code: error.code, err: error.message }, 'model update failed; the running model stays');
      this.options.onChange({ kind: 'model.failed', model: ref, error });
    }
  }

  private markApplied(revision: number): void {
    this.appliedRevision = revision;
    this.options.state.setState(REVISION_KEY, String(revision));
  }

  private pathFor(sha256: string): string {
    return join(this.options.modelsDir, `${sha256}.onnx`);
  }
}

const withSlash = (url: string): string => (url.endsWith('/') ? url : `${url}/`);
