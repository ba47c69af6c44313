import type { Database, Statement } from 'better-sqlite3';
import { z } from 'zod';
import type { Clock } from '../../common/clock.js';
import { DriftlineError } from '../../common/errors.js';
import { assertModelName } from '../../common/ids.js';
import { readModelSignature } from '../../common/onnx/signature.js';
import type { Model, ModelVersion, TensorSpec, UploadModelHeader } from '../../common/proto/driftline/v1/models.js';
import { applyMigrations } from '../store/sqlite/database.js';
import type { ArtifactStore } from './artifact-store.js';

const MIGRATIONS = [
  `CREATE TABLE model_versions (
     name TEXT NOT NULL,
     version INTEGER NOT NULL,
     sha256 TEXT NOT NULL,
     size_bytes INTEGER NOT NULL,
     opset INTEGER NOT NULL,
     inputs TEXT NOT NULL,
     outputs TEXT NOT NULL,
     description TEXT NOT NULL,
     metadata TEXT NOT NULL,
     created_at_ms INTEGER NOT NULL,
     PRIMARY KEY (name, version)
   );`,
  // The version an amendment corrects (same bytes, new metadata); 0 for an upload.
  `ALTER TABLE model_versions ADD COLUMN amends_version INTEGER NOT NULL DEFAULT 0;`,
];

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

interface VersionRow {
  name: string;
  version: number;
  sha256: string;
  size_bytes: number;
  opset: number;
  inputs: string;
  outputs: string;
  description: string;
  metadata: string;
  created_at_ms: number;
  amends_version: number;
}

export interface ModelRegistryOptions {
  db: Database;
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
  private readonly db: Database;
  private readonly artifacts: ArtifactStore;
  private readonly clock: Clock;
  private readonly maxModelBytes: number;
  private readonly selectLatest: Statement<[string], VersionRow>;
  private readonly selectVersion: Statement<[string, number], VersionRow>;
  private readonly insertNext: (row: Omit<VersionRow, 'version'>) => VersionRow;

  constructor(options: ModelRegistryOptions) {
    ({ db: this.db, artifacts: this.artifacts, clock: this.clock, maxModelBytes: this.maxModelBytes } = options);
    applyMigrations(this.db, 'registry', MIGRATIONS);
    this.selectLatest = this.db.prepare('SELECT * FROM model_versions WHERE name = ? ORDER BY version DESC LIMIT 1');
    this.selectVersion = this.db.prepare('SELECT * FROM model_versions WHERE name = ? AND version = ?');
    const insert = this.db.prepare(
      `INSERT INTO model_versions (name, version, sha256, size_bytes, opset, inputs, outputs, description, metadata, created_at_ms, amends_version)
       VALUES (@name, @version, @sha256, @size_bytes, @opset, @inputs, @outputs, @description, @metadata, @created_at_ms, @amends_version)`,
    );
    this.insertNext = this.db.transaction((row: Omit<VersionRow, 'version'>) => {
      const full = { ...row, version: (this.selectLatest.get(row.name)?.version ?? 0) + 1 };
      insert.run(full);
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
        throw new DriftlineError('MODEL_CHECKSUM_MISMATCH', 'uploaded bytes do not match the declared sha256', { details: { declared: declaredSha, actual: sha256 } });
      }
      const signature = readModelSignature(await writer.readBack());

      const latest = this.selectLatest.get(name);
      if (latest?.sha256 === sha256) return toModelVersion(latest);

      const { created } = await writer.commit();
      try {
        return toModelVersion(
          this.insertNext({
            name,
            sha256,
            size_bytes: sizeBytes,
            opset: signature.opset,
            inputs: JSON.stringify(signature.inputs),
            outputs: JSON.stringify(signature.outputs),
            description,
            metadata: JSON.stringify(metadata),
            created_at_ms: this.clock.now(),
            amends_version: 0,
          }),
        );
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
  amend(name: string, version: number, amendment: ModelAmendment): ModelVersion {
    assertModelName(name);
    const parsed = amendSchema.safeParse({ version, ...amendment });
    if (!parsed.success) {
      throw new DriftlineError('REQUEST_INVALID', `invalid amendment: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
    }
    const source = this.selectVersion.get(name, version);
    if (!source) throw notFound(name, version);
    const before = JSON.parse(source.metadata) as Record<string, string>;
    const metadata = { ...before, ...parsed.data.metadata };
    const description = parsed.data.description || source.description;
    if (Object.keys(metadata).length > 64) throw new DriftlineError('REQUEST_INVALID', 'invalid amendment: metadata: at most 64 metadata entries');
    if (description === source.description && Object.entries(parsed.data.metadata).every(([k, v]) => before[k] === v)) {
      throw new DriftlineError('MODEL_UNCHANGED', `the amendment changes nothing in ${name} v${version}`, { details: { name, version } });
    }
    const { sha256, size_bytes, opset, inputs, outputs } = source;
    try {
      return toModelVersion(
        this.insertNext({ name, sha256, size_bytes, opset, inputs, outputs, description, metadata: JSON.stringify(metadata), created_at_ms: this.clock.now(), amends_version: version }),
      );
    } catch (err) {
      throw new DriftlineError('STORE_FAILED', `cannot record the amendment of ${name} v${version}`, { cause: err });
    }
  }

  /** The latest version of every model, by name. */
  listLatest(): ModelVersion[] {
    return (
      this.db
        .prepare('SELECT * FROM model_versions m WHERE version = (SELECT max(version) FROM model_versions WHERE name = m.name) ORDER BY name')
        .all() as VersionRow[]
    ).map(toModelVersion);
  }

  get(name: string): Model {
    const rows = this.db.prepare('SELECT * FROM model_versions WHERE name = ? ORDER BY version').all(assertModelName(name)) as VersionRow[];
    if (rows.length === 0) throw notFound(name);
    return { name, versions: rows.map(toModelVersion) };
  }

  /** One version of a model; version 0 means the latest. */
  resolve(name: string, version: number): ModelVersion {
    assertModelName(name);
    const row =
      version === 0
        ? this.selectLatest.get(name)
        : this.selectVersion.get(name, version);
    if (!row) throw notFound(name, version);
    return toModelVersion(row);
  }
}

function toModelVersion(row: VersionRow): ModelVersion {
  return {
    name: row.name,
    version: row.version,
    sha256: row.sha256,
    sizeBytes: row.size_bytes,
    createdAtMs: row.created_at_ms,
    opset: row.opset,
    inputs: JSON.parse(row.inputs) as TensorSpec[],
    outputs: JSON.parse(row.outputs) as TensorSpec[],
    description: row.description,
    metadata: JSON.parse(row.metadata) as Record<string, string>,
    amendsVersion: row.amends_version,
  };
}

const tooLarge = (size: number, limit: number): DriftlineError =>
  new DriftlineError('PAYLOAD_TOO_LARGE', `model of ${size} bytes exceeds the limit of ${limit} bytes`, { details: { size, limit } });

const incomplete = (message: string, declared: number, received: number): DriftlineError =>
  new DriftlineError('UPLOAD_INCOMPLETE', message, { details: { declared, received } });

const notFound = (name: string, version?: number): DriftlineError =>
  new DriftlineError('MODEL_NOT_FOUND', version ? `model ${name} has no version ${version}` : `no model named ${name}`, { details: { name, version } });
