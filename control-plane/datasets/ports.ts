import type { Readable } from 'node:stream';
import type { DatasetManifest } from '../../common/datasets/snapshot-layout.js';

/** One captured sample as the datasets core reads it: the first input tensor as FP32, its label when one came. */
export interface SampleRow {
  /** Stable across snapshots: `<device>/<boot>/<seq>`, the record's identity (splitOf hashes it). */
  id: string;
  deviceId: string;
  version: number;
  inputName: string;
  /** The captured input's shape, batch dimension first (a source may hand out one array per distinct shape). */
  shape: readonly number[];
  /**
   * The input's elements as little-endian FP32 bytes, 4 × elementCount(shape) of them (as the
   * store holds them: the snapshot copies them once, straight to where they go).
   */
  input: Uint8Array;
  /** Class count the model answered with (the first output's last dimension); 0 when unknown. */
  classes: number;
  /** The label joined from the application's feedback; undefined while none came. */
  label: number | undefined;
}

export interface SampleQuery {
  model: string;
  /** 0: every version. */
  version: number;
  /** Only samples captured at or after this (control-plane clock); 0: all kept. */
  sinceMs: number;
  labelledOnly: boolean;
}

/** Where captured samples are read from (the SQLite sample store). */
export interface SampleSource {
  /** Matching samples, oldest first, a page at a time (the rows of a page are the caller's until it asks for the next). */
  scan(query: SampleQuery): AsyncIterable<SampleRow[]>;
}

/** The per-model "raw capture" switch: off means samples are refused at ingest and datasets are refused. */
export interface RawCapturePolicy {
  model: string;
  rawCapture: boolean;
  updatedAtMs: number;
}

export interface RawCapturePolicies {
  rawCaptureOf(model: string): Promise<RawCapturePolicy>;
  setRawCapture(model: string, rawCapture: boolean, atMs: number): Promise<RawCapturePolicy>;
}

/** A stored snapshot: its manifest and the content address of its tar. */
export interface DatasetRecord {
  id: string;
  model: string;
  /** sha256 and size of the snapshot's tar in the blob store. */
  sha256: string;
  sizeBytes: number;
  rows: number;
  createdAtMs: number;
  manifest: DatasetManifest;
}

export interface DatasetPage {
  datasets: DatasetRecord[];
  /** Pass back as `after` for the next page; undefined on the last one. */
  next: string | undefined;
}

/** Where snapshot manifests are kept (control-plane/store/sqlite/dataset-repository.ts). */
export interface DatasetRepository {
  get(id: string): Promise<DatasetRecord | undefined>;
  getBySha256(sha256: string): Promise<DatasetRecord | undefined>;
  /** Stores the record unless a snapshot with its id exists; resolves to what is stored (the first one wins). */
  insertIfAbsent(record: DatasetRecord): Promise<DatasetRecord>;
  /** Newest first. */
  list(filter: { model?: string | undefined; limit: number; after?: string | undefined }): Promise<DatasetPage>;
}

/** Content-addressed bytes (the snapshots' tars), like the model artifacts. */
export interface SnapshotBlobs {
  /** Stores the concatenation of `chunks` under its sha256. */
  put(chunks: readonly Uint8Array[]): Promise<{ sha256: string; size: number }>;
  /** Streams the bytes stored under sha256. */
  read(sha256: string): Readable;
}

/** Devices whose labels match a selector (control-plane/fleet). */
export interface DeviceSelection {
  deviceIds(selector: string): Promise<ReadonlySet<string>>;
}

/** What the registry knows that datasets need: whether the model exists, its latest version, and the dataset a version was trained on. */
export interface ModelLineage {
  /** The model's versions, oldest first; MODEL_NOT_FOUND when there is no such model. */
  versionsOf(model: string): Promise<number[]>;
  /** The id of the snapshot the version was trained on, as its lineage records it; undefined when none. */
  trainingDatasetOf(model: string, version: number): Promise<string | undefined>;
}
