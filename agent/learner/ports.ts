/**
 * The learner's small ports: where labelled samples live, how a backbone turns them into
 * embeddings, where a round's head comes from and where its answer goes. The learner itself
 * (./learner.ts) is pure logic over these; the adapters live in ./sqlite/, ./onnxruntime/ and
 * ./http/.
 */
import type { DenseLayer } from '../../common/learning/dense-head.js';
import type { FederatedInvitation, FederatedReport, SampleTensor } from '../../common/proto/driftline/v1/device_link.js';

/** One locally kept, labelled sample: the raw inputs of a one-row request and the label fed back for it. */
export interface LocalSample {
  /** The request's response id (what feedback names); unique per device. */
  id: string;
  model: string;
  version: number;
  inputs: SampleTensor[];
  label: number;
}

export type SampleSplit = 'train' | 'held-out';

export interface SampleStoreStats {
  rows: number;
  labelled: number;
  bytes: number;
  /** Rows pushed out by the budget since the store was opened. */
  evicted: number;
}

/**
 * The device's labelled samples, kept with a budget (oldest out first), apart from the
 * telemetry buffer: uploading or dropping telemetry never removes them.
 */
export interface SampleStore {
  /** Keeps a request's inputs (unlabelled until its feedback comes); false when it was not kept (too large, a duplicate id). */
  add(sample: Omit<LocalSample, 'label'>): boolean;
  /** Joins a feedback label to the sample of that request; false when no such sample is kept. */
  label(id: string, model: string, label: number): boolean;
  /** Labelled samples of a model in one split, oldest first, at most `limit`. */
  labelled(model: string, split: SampleSplit, limit: number): LocalSample[];
  /** How many labelled samples of a model one split holds. */
  count(model: string, split: SampleSplit): number;
  stats(): SampleStoreStats;
}

/** Embeddings by (model sha256, sample id), bounded by the adapter. */
export interface EmbeddingCache {
  get(modelSha256: string, sampleId: string): Float32Array | undefined;
  put(modelSha256: string, sampleId: string, embedding: Float32Array): void;
}

/** A served model's frozen backbone, opened for one head depth. */
export interface Backbone {
  readonly modelSha256: string;
  /** The head the model holds itself, found by the graph (its layers' shapes must match the round's head). */
  readonly head: readonly DenseLayer[];
  /** Features the head takes (the embedding's length). */
  readonly features: number;
  /** The embedding of one sample's inputs (the head's input for that row). */
  embed(inputs: readonly SampleTensor[]): Promise<Float32Array>;
  close(): Promise<void>;
}

export interface BackboneSource {
  /**
   * Opens the backbone of the model version the device serves, with the last `headLayers` dense
   * layers as the head. Throws LEARNER_NO_HEAD when the device does not serve that version or
   * the model has no such head.
   */
  open(model: string, version: number, headLayers: number): Promise<Backbone>;
}

/** The round's starting head: downloaded, checked against the invitation's sha256 and size, decoded. */
export interface HeadSource {
  fetch(invitation: Readonly<FederatedInvitation>): Promise<DenseLayer[]>;
}

/** Answers already sent, so a replayed invitation gets the same answer (bounded by the adapter). */
export interface ReportMemory {
  get(key: string): FederatedReport | undefined;
  put(key: string, report: FederatedReport): void;
}

/** Publishes a report on up/federated; rejects when the uplink is offline. */
export type ReportSink = (report: FederatedReport) => Promise<void>;
