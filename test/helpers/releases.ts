import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { buildReleaseManifest } from '../../cli/releases/manifest-builder.js';
import { sha256Hex } from '../../common/hashing.js';
import { DesiredState } from '../../common/proto/driftline/v1/device_link.js';
import { canonicalJson } from '../../common/trust/canonical.js';
import { encodeEnvelope, signEnvelope } from '../../common/trust/dsse.js';
import { generateKey, signerFromPem, type Signer } from '../../common/trust/keys.js';
import { MANIFEST_PAYLOAD_TYPE, type ReleaseManifest, type ReleaseManifestInput } from '../../common/trust/manifest.js';
import { signRootBytes, type RootMetadata } from '../../common/trust/root.js';

export type Key = ReturnType<typeof generateKey> & { signer: Signer };
export const newKey = (): Key => {
  const k = generateKey();
  return { ...k, signer: signerFromPem(k.privateKeyPem) };
};

/** A root, its signing keys and helpers to make later versions. */
export interface TestTrust {
  rootKeys: Key[];
  release: Key;
  rollback: Key;
  v1: Buffer;
  metadata(version: number, changes?: Partial<RootMetadata>): RootMetadata;
}

export function testTrust(nowMs: number, lifetimeMs = 86_400_000): TestTrust {
  const rootKeys = [newKey(), newKey(), newKey()];
  const release = newKey();
  const rollback = newKey();
  const metadata = (version: number, changes: Partial<RootMetadata> = {}): RootMetadata => ({
    type: 'driftline-root',
    version,
    expiresAtMs: nowMs + lifetimeMs,
    threshold: 2,
    rootKeys: Object.fromEntries(rootKeys.map((k) => [k.keyId, k.publicKey])),
    releaseKeys: { [release.keyId]: release.publicKey },
    rollbackKeys: { [rollback.keyId]: rollback.publicKey },
    automationKeys: {},
    revokedKeys: [],
    ...changes,
  });
  return {
    rootKeys,
    release,
    rollback,
    v1: signRootBytes(
      metadata(1),
      rootKeys.slice(0, 2).map((k) => k.signer),
    ),
    metadata,
  };
}

export interface TestRelease {
  bytes: Uint8Array;
  sha256: string;
  manifest: ReleaseManifest;
  envelope: Buffer;
}

export async function makeRelease(
  name: string,
  version: number,
  bytes: Uint8Array,
  signer: Signer,
  changes: Partial<ReleaseManifestInput> = {},
): Promise<TestRelease> {
  const built = await buildReleaseManifest({ bytes, name, version, createdAtMs: 1, goldenVectors: 2 });
  const manifest = { ...built, ...changes } as ReleaseManifest;
  return { bytes, sha256: sha256Hex(bytes), manifest, envelope: signRaw(manifest, signer) };
}

/** Signs any payload as a manifest, without schema checks (to craft hostile ones). */
export const signRaw = (payload: unknown, signer: Signer): Buffer =>
  encodeEnvelope(signEnvelope(MANIFEST_PAYLOAD_TYPE, Buffer.from(canonicalJson(payload)), [signer]));

export function desiredFor(
  revision: number,
  release: TestRelease,
  extra: { rootChain?: Buffer[]; rollback?: Buffer; artifactPath?: string; envelope?: Buffer; sha256?: string; sizeBytes?: number } = {},
): DesiredState {
  const sha256 = extra.sha256 ?? release.sha256;
  return DesiredState.fromPartial({
    revision,
    model: {
      name: release.manifest.name,
      version: release.manifest.version,
      sha256,
      sizeBytes: extra.sizeBytes ?? release.bytes.length,
      artifactPath: extra.artifactPath ?? `artifacts/sha256/${sha256}`,
      envelope: extra.envelope ?? release.envelope,
    },
    rootChain: extra.rootChain ?? [],
    rollback: extra.rollback ?? Buffer.alloc(0),
  });
}

export type Behaviour = 'normal' | 'endless' | 'stall' | 'pad' | 'cut-half' | 'ignore-range';

/**
 * A small artifact server: content-addressed files with Range support, and per-sha hostile
 * behaviours (stream forever, stall after a few bytes, pad past the end, cut off halfway).
 */
export class ArtifactTestServer {
  readonly files = new Map<string, Uint8Array>();
  readonly behaviour = new Map<string, Behaviour>();
  readonly ranges: string[] = [];
  private server!: Server;
  url = '';

  async start(): Promise<void> {
    this.server = createServer((req, res) => this.handle(req, res));
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/`;
  }

  serve(sha256: string, bytes: Uint8Array, behaviour: Behaviour = 'normal'): void {
    this.files.set(sha256, bytes);
    this.behaviour.set(sha256, behaviour);
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const sha = /^\/artifacts\/sha256\/([0-9a-f]{64})$/.exec(req.url ?? '')?.[1];
    const bytes = sha ? this.files.get(sha) : undefined;
    if (!sha || !bytes) {
      res.writeHead(404).end();
      return;
    }
    const behaviour = this.behaviour.get(sha) ?? 'normal';
    if (req.headers.range) this.ranges.push(req.headers.range);
    if (behaviour === 'endless') {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const chunk = Buffer.alloc(64 * 1024, 7);
      const pump = (): void => {
        while (res.write(chunk)) {
          /* keep writing until the socket pushes back */
        }
        res.once('drain', pump);
      };
      res.on('close', () => res.removeAllListeners('drain'));
      pump();
      return;
    }
    if (behaviour === 'stall') {
      res.writeHead(200, { 'content-length': String(bytes.length) });
      res.write(bytes.subarray(0, 10));
      return;
    }
    if (behaviour === 'pad') {
      res.writeHead(200);
      res.end(Buffer.concat([bytes, Buffer.alloc(4096, 1)]));
      return;
    }
    if (behaviour === 'cut-half') {
      this.behaviour.set(sha, 'normal');
      const half = Math.floor(bytes.length / 2);
      res.writeHead(200, { 'content-length': String(bytes.length) });
      res.write(bytes.subarray(0, half), () => res.destroy());
      return;
    }
    const range = behaviour === 'normal' ? /^bytes=(\d+)-$/.exec(req.headers.range ?? '') : null;
    if (range) {
      const start = Number(range[1]);
      res.writeHead(206, { 'content-range': `bytes ${start}-${bytes.length - 1}/${bytes.length}`, 'content-length': String(bytes.length - start) });
      res.end(bytes.subarray(start));
      return;
    }
    res.writeHead(200, { 'content-length': String(bytes.length) });
    res.end(bytes);
  }
}
