import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import type { Clock } from '../../common/clock.js';
import { DriftlineError } from '../../common/errors.js';
import { readSnapshotFiles, type DatasetManifest } from '../../common/datasets/snapshot-layout.js';
import { untarSnapshot } from '../../common/datasets/snapshot-tar.js';
import { rowCountOf, SnapshotBuilder, type ReplayedParent } from './snapshot-builder.js';
import type { DatasetPage, DatasetRecord, DatasetRepository, DeviceSelection, ModelLineage, RawCapturePolicies, SampleSource, SnapshotBlobs } from './ports.js';

export interface DatasetServiceOptions {
  samples: SampleSource;
  policies: RawCapturePolicies;
  repository: DatasetRepository;
  blobs: SnapshotBlobs;
  devices: DeviceSelection;
  lineage: ModelLineage;
  clock: Clock;
  /** Rows a snapshot may hold, replayed parent rows included (datasets.maxRows). */
  maxRows: number;
}

export interface CreateDatasetQuery {
  model: string;
  /** 0 or absent: every version. */
  version?: number | undefined;
  /** Device label selector; empty: every device. */
  selector?: string | undefined;
  /** Only samples captured this many milliseconds before now; 0 or absent: all kept. */
  sinceMsAgo?: number | undefined;
  labelledOnly?: boolean | undefined;
  /** Replay this snapshot's training split. */
  replayParentId?: string | undefined;
  /** Replay the training split of the snapshot the parent version (`version`, or the latest) was trained on. */
  replayParent?: boolean | undefined;
}

/** What a training worker needs of a dataset: where its tar is (by content) and what it holds. */
export interface DatasetHandle {
  id: string;
  sha256: string;
  sizeBytes: number;
  manifest: DatasetManifest;
}

/**
 * Immutable, content-addressed snapshots of the captured samples. create() selects samples
 * (model, version, device selector, since, labelled only), splits them by a hash of their id,
 * replays a parent snapshot's training split when asked, and stores the manifest and the tar
 * (content-addressed by sha256). The same content gives the same id, and is stored once.
 */
export class DatasetService {
  constructor(private readonly options: DatasetServiceOptions) {}

  async create(query: CreateDatasetQuery): Promise<DatasetRecord> {
    const { samples, policies, repository, blobs, devices, lineage, clock, maxRows } = this.options;
    const { model } = query;
    const versions = await lineage.versionsOf(model);
    const version = query.version ?? 0;
    if (version !== 0 && !versions.includes(version)) throw new DriftlineError('MODEL_NOT_FOUND', `${model} has no version ${version}`);
    if (!(await policies.rawCaptureOf(model)).rawCapture) {
      throw new DriftlineError(
        'DATASET_RAW_CAPTURE_OFF',
        `${model} is marked "no raw capture": its samples never leave the devices, so no dataset is made of them; train it with federated learning`,
        { details: { model } },
      );
    }
    const parent = await this.replayedParent(query, versions);
    const selector = query.selector ?? '';
    const chosenDevices = selector === '' ? undefined : await devices.deviceIds(selector);
    const now = clock.now();
    const sinceMsAgo = query.sinceMsAgo ?? 0;
    let rows = parent?.train.ids.length ?? 0;
    let samplesSelected = 0;
    const tooLarge = (): DriftlineError =>
      new DriftlineError(
        'DATASET_TOO_LARGE',
        `the snapshot would hold more than ${maxRows} rows (datasets.maxRows): narrow it with --version, --selector or --since`,
        {
          details: { limit: maxRows, setting: 'datasets.maxRows' },
        },
      );
    if (rows > maxRows) throw tooLarge();
    const labelledOnly = query.labelledOnly ?? false;
    const builder = new SnapshotBuilder({ model, parent, query: { version, selector, sinceMsAgo, labelledOnly }, createdAtMs: now });
    for await (const page of samples.scan({ model, version, sinceMs: sinceMsAgo > 0 ? now - sinceMsAgo : 0, labelledOnly })) {
      for (const sample of page) {
        if (chosenDevices && !chosenDevices.has(sample.deviceId)) continue;
        rows += rowCountOf(sample.shape);
        // Refused as soon as it is known: the rows past the bound are never read.
        if (rows > maxRows) throw tooLarge();
        samplesSelected++;
        builder.add(sample);
      }
    }
    if (samplesSelected === 0 && !parent) {
      throw new DriftlineError('DATASET_EMPTY', `no captured sample of ${model} matches (version, selector, since, labelled only)`, { details: { model } });
    }
    const built = builder.finish();
    const existing = await repository.get(built.manifest.id);
    if (existing) return existing;
    const { sha256, size } = await blobs.put(built.tar);
    const rowsTotal = built.manifest.splits.train.rows + built.manifest.splits.validation.rows + built.manifest.splits.test.rows;
    return repository.insertIfAbsent({ id: built.manifest.id, model, sha256, sizeBytes: size, rows: rowsTotal, createdAtMs: now, manifest: built.manifest });
  }

  private async replayedParent(query: CreateDatasetQuery, versions: readonly number[]): Promise<ReplayedParent | undefined> {
    let parentId = query.replayParentId || undefined;
    if (!parentId && query.replayParent) {
      const version = query.version || versions.at(-1);
      parentId = version === undefined ? undefined : await this.options.lineage.trainingDatasetOf(query.model, version);
      if (!parentId)
        throw new DriftlineError('DATASET_PARENT_NOT_FOUND', `the lineage of ${query.model} v${version ?? '?'} names no training dataset to replay`, {
          details: { model: query.model, version },
        });
    }
    if (!parentId) return undefined;
    const record = await this.options.repository.get(parentId);
    if (!record || record.model !== query.model) {
      throw new DriftlineError('DATASET_PARENT_NOT_FOUND', `no dataset ${parentId} of ${query.model} is kept to replay`, { details: { id: parentId } });
    }
    const { manifest, splits } = readSnapshotFiles(untarSnapshot(await this.tarBytes(record), record.sizeBytes), `dataset ${record.id}`);
    return { manifest, train: splits.train };
  }

  async get(id: string): Promise<DatasetRecord> {
    const record = await this.options.repository.get(id);
    if (!record) throw new DriftlineError('DATASET_NOT_FOUND', `no dataset ${id}`, { details: { id } });
    return record;
  }

  /** For the training side: a dataset's content address and manifest (DATASET_NOT_FOUND when unknown). */
  async getDataset(id: string): Promise<DatasetHandle> {
    const { sha256, sizeBytes, manifest } = await this.get(id);
    return { id, sha256, sizeBytes, manifest };
  }

  /** The dataset whose tar has this sha256 (a worker downloads by content hash); undefined when none. */
  getDatasetBySha256(sha256: string): Promise<DatasetRecord | undefined> {
    return this.options.repository.getBySha256(sha256);
  }

  list(filter: { model?: string | undefined; limit: number; after?: string | undefined }): Promise<DatasetPage> {
    return this.options.repository.list(filter);
  }

  /** Streams a dataset's tar (its sha256 and size are the record's). */
  async openTar(id: string): Promise<{ record: DatasetRecord; stream: Readable }> {
    const record = await this.get(id);
    return { record, stream: this.options.blobs.read(record.sha256) };
  }

  /** A dataset's whole tar, verified against its sha256 (DATASET_INVALID when the stored bytes differ). */
  async readTar(id: string): Promise<Buffer> {
    return this.tarBytes(await this.get(id));
  }

  private async tarBytes(record: DatasetRecord): Promise<Buffer> {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of this.options.blobs.read(record.sha256)) {
      size += (chunk as Buffer).length;
      if (size > record.sizeBytes) break;
      chunks.push(chunk as Buffer);
    }
    const bytes = Buffer.concat(chunks);
    if (bytes.length !== record.sizeBytes || createHash('sha256').update(bytes).digest('hex') !== record.sha256) {
      throw new DriftlineError('DATASET_INVALID', `the stored tar of dataset ${record.id} does not match its sha256`, { details: { id: record.id } });
    }
    return bytes;
  }
}
