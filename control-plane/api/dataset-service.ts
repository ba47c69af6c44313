import type { ServerWritableStream } from '@grpc/grpc-js';
import { z } from 'zod';
import { DriftlineError } from '../../common/errors.js';
import { assertModelName, parseSelector } from '../../common/ids.js';
import type { Dataset, DatasetChunk, DatasetServiceServer, ExportDatasetRequest } from '../../common/proto/driftline/v1/datasets.js';
import type { DatasetRecord } from '../datasets/ports.js';
import type { DatasetApi } from './ports.js';
import { rechunk } from './byte-chunks.js';
import { serverStreaming, unary, validate, type RpcContext } from './rpc.js';

const DEFAULT_LIST_LIMIT = 100;
const MAX_LIST_LIMIT = 1000;
/** Export chunks: well under grpc-js's 4 MiB message limit. */
export const EXPORT_CHUNK_BYTES = 256 * 1024;

const datasetId = z.string().regex(/^[0-9a-f]{64}$/, 'must be a dataset id (64 lowercase hex)');
const model = z.string().min(1).max(128);

const createRequest = z
  .object({
    model,
    version: z.number().int().nonnegative(),
    selector: z.string().max(1024),
    sinceMsAgo: z.number().int().nonnegative(),
    labelledOnly: z.boolean(),
    replayParentId: z.union([z.literal(''), datasetId]),
    replayParent: z.boolean(),
  })
  .refine((r) => !(r.replayParent && r.replayParentId !== ''), {
    path: ['replayParent'],
    message: 'name a parent dataset or ask for the lineage one, not both',
  });
const getRequest = z.object({ id: datasetId });
const listRequest = z.object({
  model: z.string().max(128),
  limit: z.number().int().min(0).max(MAX_LIST_LIMIT),
  pageToken: z.string().regex(/^\d{0,16}$/, 'must be a next_page_token from a previous page'),
});
const statsRequest = z.object({ model: z.string().max(128) });
const rawCaptureRequest = z.object({ model, rawCapture: z.boolean() });

export const toDatasetMessage = (record: DatasetRecord): Dataset => ({
  id: record.id,
  model: record.model,
  sha256: record.sha256,
  sizeBytes: record.sizeBytes,
  rows: record.rows,
  createdAtMs: record.createdAtMs,
  manifestJson: JSON.stringify(record.manifest),
});

/** DatasetService: viewers read, operators create and switch raw capture. */
export function datasetService(
  deps: { datasets?: DatasetApi | undefined; registry: { get(name: string): Promise<unknown> } },
  ctx: RpcContext,
): DatasetServiceServer {
  const api = (): DatasetApi => {
    if (!deps.datasets) throw new DriftlineError('NOT_IMPLEMENTED', 'datasets are not served by this control plane');
    return deps.datasets;
  };
  return {
    createDataset: unary(ctx, 'CreateDataset', 'operator', async (req) => {
      const r = validate(createRequest, req);
      assertModelName(r.model);
      if (r.selector !== '') parseSelector(r.selector);
      const record = await api().datasets.create({
        model: r.model,
        version: r.version,
        selector: r.selector,
        sinceMsAgo: r.sinceMsAgo,
        labelledOnly: r.labelledOnly,
        replayParentId: r.replayParentId,
        replayParent: r.replayParent,
      });
      ctx.logger.info({ dataset: record.id, model: record.model, rows: record.rows }, 'dataset created');
      return toDatasetMessage(record);
    }),
    getDataset: unary(ctx, 'GetDataset', 'viewer', async (req) => toDatasetMessage(await api().datasets.get(validate(getRequest, req).id))),
    listDatasets: unary(ctx, 'ListDatasets', 'viewer', async (req) => {
      const r = validate(listRequest, req);
      const page = await api().datasets.list({ model: r.model || undefined, limit: r.limit || DEFAULT_LIST_LIMIT, after: r.pageToken || undefined });
      return { datasets: page.datasets.map(toDatasetMessage), nextPageToken: page.next ?? '' };
    }),
    exportDataset: serverStreaming(ctx, 'ExportDataset', 'viewer', async (call: ServerWritableStream<ExportDatasetRequest, DatasetChunk>) => {
      const { record, stream } = await api().datasets.openTar(validate(getRequest, call.request).id);
      let first = true;
      try {
        for await (const data of rechunk(stream, EXPORT_CHUNK_BYTES)) {
          if (call.cancelled) return;
          const chunk: DatasetChunk = first ? { sizeBytes: record.sizeBytes, sha256: record.sha256, data } : { sizeBytes: 0, sha256: '', data };
          first = false;
          // Backpressure: a slow client holds the file stream, not the server's memory.
          if (!call.write(chunk)) await new Promise<void>((resolve) => call.once('drain', resolve));
        }
      } finally {
        stream.destroy();
      }
      call.end();
    }),
    getSampleStats: unary(ctx, 'GetSampleStats', 'viewer', async (req) => {
      const r = validate(statsRequest, req);
      if (r.model) await deps.registry.get(r.model);
      return api().samples.stats(r.model);
    }),
    setRawCapture: unary(ctx, 'SetRawCapture', 'operator', async (req, caller) => {
      const r = validate(rawCaptureRequest, req);
      await deps.registry.get(r.model);
      const policy = await api().samples.setRawCapture(r.model, r.rawCapture, api().clock.now());
      ctx.logger.info({ model: r.model, rawCapture: r.rawCapture, token: caller?.id }, 'raw capture policy set');
      return policy;
    }),
  };
}
