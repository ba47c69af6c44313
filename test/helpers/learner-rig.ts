import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { silentLogger } from '../../common/logger.js';
import { FederatedInvitation_Kind, type FederatedInvitation, type SampleTensor } from '../../common/proto/driftline/v1/device_link.js';
import { startArtifactServer, type ArtifactServer } from '../../control-plane/registry/artifact-http.js';
import { ArtifactStore, artifactPath } from '../../control-plane/registry/artifact-store.js';

/**
 * The control plane's artifact server, real, on an OS-chosen port, serving heads a test stores
 * to one device (its id and secret), the way the rounds engine makes a head downloadable for
 * the devices it invites.
 */
export interface HeadServer {
  readonly url: string;
  store(bytes: Uint8Array): Promise<{ sha256: string; size: number; path: string }>;
  /** Downloads the server answered, by status. */
  readonly downloads: number;
  close(): Promise<void>;
}

export async function startHeadServer(device: { id: string; secret: string }, root?: string): Promise<HeadServer> {
  const dir = root ?? mkdtempSync(join(tmpdir(), 'driftline-heads-'));
  const artifacts = new ArtifactStore(join(dir, 'artifacts'));
  const granted = new Set<string>();
  let downloads = 0;
  const server: ArtifactServer = await startArtifactServer({
    host: '127.0.0.1',
    port: 0,
    artifacts: {
      sizeOf: (sha) => artifacts.sizeOf(sha),
      read: (sha, range) => {
        downloads++;
        return artifacts.read(sha, range);
      },
    },
    verifyDeviceCredential: (id, secret) => (id === device.id && secret === device.secret ? 'ok' : 'bad_secret'),
    mayDownload: (_id, sha) => granted.has(sha),
    authenticateOperator: () => false,
    metrics: new Registry(),
    health: () => ({ ok: true, details: {} }),
    logger: silentLogger(),
  });
  return {
    url: server.url,
    get downloads() {
      return downloads;
    },
    async store(bytes) {
      const writer = await artifacts.createWriter();
      await writer.write(bytes);
      const { sha256, size } = await writer.commit();
      granted.add(sha256);
      return { sha256, size, path: artifactPath(sha256) };
    },
    async close() {
      await server.close(0);
      if (!root) rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A one-row FP32 input as the agent keeps it (little-endian bytes). */
export function featuresInput(values: ArrayLike<number>, name = 'features'): SampleTensor[] {
  const data = Float32Array.from(values);
  return [{ name, datatype: 'FP32', shape: [1, data.length], data: Buffer.from(data.buffer) }];
}

/** A KIND_TRAIN invitation for the head stored at `head`, with the round's settings overridable. */
export function trainInvitation(head: { sha256: string; size: number; path: string }, overrides: Partial<FederatedInvitation> = {}): FederatedInvitation {
  return {
    taskId: 'task-1',
    round: 1,
    kind: FederatedInvitation_Kind.KIND_TRAIN,
    model: 'vibration',
    version: 1,
    headSha256: head.sha256,
    headSizeBytes: head.size,
    headArtifactPath: head.path,
    localEpochs: 2,
    batchSize: 16,
    learningRate: 0.05,
    proximalMu: 0,
    updateCompression: 'float32',
    clippingNorm: 0,
    issuedAtMs: 0,
    deadlineMs: 0,
    headVersion: 1,
    seed: 7,
    ...overrides,
  };
}
