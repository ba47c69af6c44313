import { z } from 'zod';
import type { Clock } from '../../common/clock.js';
import { DriftlineError } from '../../common/errors.js';
import { assertModelName } from '../../common/ids.js';
import { readModelSignature } from '../../common/onnx/signature.js';
import type { Model, ModelVersion, UploadModelHeader } from '../../common/proto/driftline/v1/models.js';
import type { ArtifactStore } from './artifact-store.js';
import type { ModelVersionRepository, StoredModelVersion } from './ports.js';

/** What an upload header may carry besides the name (checked with assertModelName for its own code). */
const headerSchema = z.object({
  sizeBytes: z.number().int().positive(),
  sha256: z.string().regex(/^[0-9a-fA-F]{64}$/, 'expected a hex sha256'),
  description: z.string().max(4096),
  metadata: z.record(z.string().min(1).max(128), z.string().max(4096)).refine((m) => Object.keys(m).length <= 64, 'at most 64 metadata entries'),
});

/** What an amendment may change: the description and metadata entries, within the upload's bounds. */
const amendSchema = z.object({
  version: z.number().int().min(1, 'name the version to amend (1 or more)'),
  description: headerSchema.shape.description,
  metadata: headerSchema.shape.metadata,
});

export interface ModelAmendment {
  /** Empty keeps the amended version's description. */
  description: string;
  /** Entries to set; the amended version's other entries are kept. */
  metadata: Record<string, string>;
}

export interface ModelRegistryOptions {
  versions: ModelVersionRepository;
  artifacts: ArtifactStore;
  clock: Clock;
  maxModelBytes: number;
}

/**
 * Model versions over content-addressed artifacts. Versions are assigned here, per name,
 * in the same transaction that records them; identical bytes are stored once however many
 * names or versions point at them.
 */
export class ModelRegistry {
  private readonly versions: ModelVersionRepository;
  private readonly artifacts: ArtifactStore;
  private readonly clock: Clock;
  private readonly maxModelBytes: number;

  constructor(options: ModelRegistryOptions) {
    ({ versions: this.versions, artifacts: this.artifacts, clock: this.clock, maxModelBytes: this.maxModelBytes } = options);
  }

  /** Records `version` as the next version of its name, read and written in one unit of work. */
  private insertNext(version: Omit<StoredModelVersion, 'version'>): Promise<StoredModelVersion> {
    return this.versions.transaction(async (tx) => {
      const full = { ...version, version: ((await tx.latest(version.name))?.version ?? 0) + 1 };
      await tx.insert(full);
      return full;
    });
  }

  /**
   * Stores an uploaded model: refuses it before reading further once it grows past the
   * declared or the configured size, and records a version only when the bytes are complete,
   * match the declared sha256 and parse as ONNX. Re-pushing the latest bytes of a name
   * returns that version instead of minting a new one.
   */
  async upload(header: UploadModelHeader, chunks: AsyncIterable<Uint8Array>): Promise<ModelVersion> {
    const name = assertModelName(header.name);
    const parsed = headerSchema.safeParse(header);
    if (!parsed.success) {
      throw new DriftlineError('REQUEST_INVALID', `invalid upload header: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
    }
    const { sizeBytes, description, metadata } = parsed.data;
    const declaredSha = parsed.data.sha256.toLowerCase();
    if (sizeBytes > this.maxModelBytes) throw tooLarge(sizeBytes, this.maxModelBytes);

    const writer = await this.artifacts.createWriter();
    try {
      for await (const chunk of chunks) {
        const total = writer.bytesWritten + chunk.length;
        if (total > this.maxModelBytes) throw tooLarge(total, this.maxModelBytes);
        if (total > sizeBytes) throw incomplete(`received more than the declared ${sizeBytes} bytes`, sizeBytes, total);
        await writer.write(chunk);
      }
      if (writer.bytesWritten !== sizeBytes) throw incomplete(`received ${writer.bytesWritten} of ${sizeBytes} bytes`, sizeBytes, writer.bytesWritten);
      const sha256 = writer.digest();
      if (sha256 !== declaredSha) {
        throw new DriftlineError('MODEL_CHECKSUM_MISMATCH', 'uploaded bytes do not match the declared sha256', {
          details: { declared: declaredSha, actual: sha256 },
        });
      }
      const signature = readModelSignature(await writer.readBack());

      const latest = await this.versions.latest(name);
      if (latest?.sha256 === sha256) return latest;

      const { created } = await writer.commit();
      try {
        return await this.insertNext({
          name,
          sha256,
          sizeBytes,
          opset: signature.opset,
          inputs: signature.inputs,
          outputs: signature.outputs,
          description,
          metadata,
          createdAtMs: this.clock.now(),
          amendsVersion: 0,
        });
      } catch (err) {
        if (created) await this.artifacts.remove(sha256);
        throw new DriftlineError('STORE_FAILED', `cannot record model ${name}`, { cause: err });
      }
    } finally {
      await writer.abort();
    }
  }

  /**
   * A new version of `name` with the bytes of `version` and corrected metadata: a version
   * never changes once recorded (a signed release describes exactly it, and devices may run
   * it), so a wrong reference or description is corrected by the next version, which records
   * the one it amends. The artifact is content addressed, so nothing is stored twice.
   * Refused (MODEL_UNCHANGED) when the amendment would change nothing.
   */
  async amend(name: string, version: number, amendment: ModelAmendment): Promise<ModelVersion> {
    assertModelName(name);
    const parsed = amendSchema.safeParse({ version, ...amendment });
    if (!parsed.success) {
      throw new DriftlineError('REQUEST_INVALID', `invalid amendment: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
    }
    const source = await this.versions.version(name, version);
    if (!source) throw notFound(name, version);
    const before = source.metadata;
    const metadata = { ...before, ...parsed.data.metadata };
    const description = parsed.data.description || source.description;
    if (Object.keys(metadata).length > 64) throw new DriftlineError('REQUEST_INVALID', 'invalid amendment: metadata: at most 64 metadata entries');
    if (description === source.description && Object.entries(parsed.data.metadata).every(([k, v]) => before[k] === v)) {
      throw new DriftlineError('MODEL_UNCHANGED', `the amendment changes nothing in ${name} v${version}`, { details: { name, version } });
    }
    const { sha256, sizeBytes, opset, inputs, outputs } = source;
    try {
      return await this.insertNext({
        name,
        sha256,
        sizeBytes,
        opset,
        inputs,
        outputs,
        description,
        metadata,
        createdAtMs: this.clock.now(),
        amendsVersion: version,
      });
    } catch (err) {
      throw new DriftlineError('STORE_FAILED', `cannot record the amendment of ${name} v${version}`, { cause: err });
    }
  }

  /** The latest version of every model, by name. */
  listLatest(): Promise<ModelVersion[]> {
    return this.versions.latestOfEach();
  }

  async get(name: string): Promise<Model> {
    const versions = await this.versions.versions(assertModelName(name));
    if (versions.length === 0) throw notFound(name);
    return { name, versions };
  }

  /** One version of a model; version 0 means the latest. */
  async resolve(name: string, version: number): Promise<ModelVersion> {
    assertModelName(name);
    const found = version === 0 ? await this.versions.latest(name) : await this.versions.version(name, version);
    if (!found) throw notFound(name, version);
    return found;
  }
}

const tooLarge = (size: number, limit: number): DriftlineError =>
  new DriftlineError('PAYLOAD_TOO_LARGE', `model of ${size} bytes exceeds the limit of ${limit} bytes`, { details: { size, limit } });

const incomplete = (message: string, declared: number, received: number): DriftlineError =>
  new DriftlineError('UPLOAD_INCOMPLETE', message, { details: { declared, received } });

const notFound = (name: string, version?: number): DriftlineError =>
  new DriftlineError('MODEL_NOT_FOUND', version ? `model ${name} has no version ${version}` : `no model named ${name}`, { details: { name, version } });
