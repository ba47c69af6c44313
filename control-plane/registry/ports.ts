import type { ModelVersion } from '../../common/proto/driftline/v1/models.js';
import type { Release } from '../../common/proto/driftline/v1/releases.js';

/**
 * The registry's async ports: model versions and their signed releases. Adapters live in
 * control-plane/store/ (SQLite today, PostgreSQL later); the registry's rules (version
 * assignment, what an upload or an amendment must be, which manifest a version accepts) stay in
 * this folder and reach storage only through these. An artifact's bytes are not here: they are
 * content-addressed files behind ArtifactStore. The trust root is not stored either: it is read
 * from the operator's files at start (release-trust.ts).
 */

/** A model version as stored, field for field the wire's ModelVersion. */
export type StoredModelVersion = ModelVersion;

/** Reads of model versions; inside or outside a unit of work. */
export interface ModelVersionReads {
  /** The highest version of `name`. */
  latest(name: string): Promise<StoredModelVersion | undefined>;
  version(name: string, version: number): Promise<StoredModelVersion | undefined>;
  /** Every version of `name`, oldest first. */
  versions(name: string): Promise<StoredModelVersion[]>;
  /** The latest version of every model, by name. */
  latestOfEach(): Promise<StoredModelVersion[]>;
}

/** One unit of work: its writes commit together when the work resolves, none of them when it throws. */
export interface ModelVersionTransaction extends ModelVersionReads {
  /** Records a version; refuses one whose (name, version) is already recorded. */
  insert(version: StoredModelVersion): Promise<void>;
}

/**
 * Where model versions are kept. Versions are written only in a unit of work, and the registry
 * assigns them there (the latest of the name, plus one): a store must run such units of work so
 * that two of them never read the same latest version of a name (SQLite: one writer at a time;
 * PostgreSQL: a lock per name or serializable isolation).
 */
export interface ModelVersionRepository extends ModelVersionReads {
  transaction<T>(work: (tx: ModelVersionTransaction) => Promise<T>): Promise<T>;
}

/** A signed release as stored, field for field the wire's Release (the DSSE envelope as published). */
export type StoredRelease = Release;

/**
 * The unsigned manifest proposed for a version that awaits a signature (`driftline models sign`
 * signs exactly it, offline): recorded by the release signer for a candidate the retraining loop
 * released. `manifest` is its canonical JSON, without an audience.
 */
export interface StoredReleaseDraft {
  name: string;
  version: number;
  manifest: Buffer;
  recordedAtMs: number;
  /** Why it was not signed online (no automation key configured, the model outside its scope, ...). */
  reason: string;
}

/** Reads of signed releases; inside or outside a unit of work. */
export interface ReleaseReads {
  release(name: string, version: number): Promise<StoredRelease | undefined>;
  /** The signed release of the highest signed version of `name`. */
  latestRelease(name: string): Promise<StoredRelease | undefined>;
  draft(name: string, version: number): Promise<StoredReleaseDraft | undefined>;
}

/** One unit of work: its writes commit together when the work resolves, none of them when it throws. */
export interface ReleaseTransaction extends ReleaseReads {
  /** Records a release; refuses one whose (name, version) is already signed. */
  insert(release: StoredRelease): Promise<void>;
  /** Replaces the release of a signed version (a canary promoted by a release key's signature); refuses a version not signed yet. */
  replace(release: StoredRelease): Promise<void>;
  /** Records (or replaces) the draft of a version. */
  putDraft(draft: StoredReleaseDraft): Promise<void>;
}

/**
 * Where signed releases are kept. A release is written only in a unit of work that first reads
 * whether its version is signed already, so two publishes of one version never both insert.
 */
export interface ReleaseRepository extends ReleaseReads {
  transaction<T>(work: (tx: ReleaseTransaction) => Promise<T>): Promise<T>;
}

/** What a signed rollback directive allows: `deviceIds` (empty: any device) back to `toVersion` of `model`, for `ttlMs`. */
export interface RollbackDirectiveRequest {
  model: string;
  toVersion: number;
  deviceIds: readonly string[];
  reason: string;
  ttlMs: number;
  id: string;
}
