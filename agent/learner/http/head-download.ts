import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { DriftlineError } from '../../../common/errors.js';
import { decodeHead, DEFAULT_HEAD_LIMITS } from '../../../common/federated/head-vector.js';
import type { DenseLayer } from '../../../common/learning/dense-head.js';
import type { FederatedInvitation } from '../../../common/proto/driftline/v1/device_link.js';
import { downloadArtifact } from '../../models/artifact-download.js';
import type { HeadSource } from '../ports.js';

export interface HeadDownloadOptions {
  /** The control plane's artifact server (from enrollment) and the device's credential: the same as for models. */
  artifactBaseUrl: string;
  credential: { username: string; password: string };
  /** Where heads are downloaded (and kept by sha256 while the round may replay). */
  dir: string;
  /** Larger heads are refused before any byte is fetched. */
  maxHeadBytes: number;
  timeoutMs: number;
  /** Heads kept on disk, newest first; older ones are removed. */
  keep?: number;
}

const SHA256 = /^[0-9a-f]{64}$/;
const ARTIFACT_PATH = /^[A-Za-z0-9._/-]{1,512}$/;

/**
 * The round's head from the artifact server, the way models come: streamed with the device
 * credential, resumable, cut off past the announced size, renamed into place only when size and
 * sha256 match; then decoded with the head limits (layers, parameters, finite values).
 */
export class HttpHeadSource implements HeadSource {
  private readonly cached: string[] = [];

  constructor(private readonly options: HeadDownloadOptions) {}

  async fetch(invitation: Readonly<FederatedInvitation>): Promise<DenseLayer[]> {
    const { headSha256: sha256, headSizeBytes: size, headArtifactPath: path } = invitation;
    if (!SHA256.test(sha256)) throw new DriftlineError('FEDERATED_TASK_INVALID', `the invitation's head_sha256 ${JSON.stringify(sha256)} is not a sha256`);
    if (!ARTIFACT_PATH.test(path) || path.split('/').some((seg) => seg === '..' || seg === '.' || seg === '') || !path.endsWith(sha256)) {
      throw new DriftlineError('FEDERATED_TASK_INVALID', `the head's artifact path ${JSON.stringify(path)} is not the content address of ${sha256}`);
    }
    if (!(size > 0) || size > this.options.maxHeadBytes) {
      throw new DriftlineError(
        'LEARNER_BUDGET_EXCEEDED',
        `the head is ${size} bytes; this device takes heads of 1 to ${this.options.maxHeadBytes} bytes (learner.maxHeadBytes)`,
        {
          details: { size, max: this.options.maxHeadBytes },
        },
      );
    }
    await mkdir(this.options.dir, { recursive: true, mode: 0o700 });
    const destination = join(this.options.dir, `${sha256}.head`);
    let bytes: Buffer | undefined;
    try {
      bytes = await readFile(destination);
    } catch {
      bytes = undefined;
    }
    if (!bytes) {
      const base = this.options.artifactBaseUrl.endsWith('/') ? this.options.artifactBaseUrl : `${this.options.artifactBaseUrl}/`;
      await downloadArtifact({
        url: new URL(path, base).toString(),
        username: this.options.credential.username,
        password: this.options.credential.password,
        expectedSha256: sha256,
        expectedBytes: size,
        destination,
        timeoutMs: this.options.timeoutMs,
      });
      bytes = await readFile(destination);
      await this.remember(sha256);
    }
    return decodeHead(bytes, { ...DEFAULT_HEAD_LIMITS, maxParameters: Math.min(DEFAULT_HEAD_LIMITS.maxParameters, Math.floor(this.options.maxHeadBytes / 4)) });
  }

  private async remember(sha256: string): Promise<void> {
    this.cached.push(sha256);
    const keep = this.options.keep ?? 4;
    while (this.cached.length > keep) await rm(join(this.options.dir, `${this.cached.shift()!}.head`), { force: true });
  }
}
