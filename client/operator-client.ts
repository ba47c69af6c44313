import { createHash } from 'node:crypto';
import { Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  type CallOptions,
  type ChannelCredentials,
  Client,
  type ClientReadableStream,
  type ClientWritableStream,
  credentials,
  Metadata,
  type ServiceError,
} from '@grpc/grpc-js';
import type { UploadCandidateHeader, UploadCandidateRequest, UploadCandidateResponse } from '../common/proto/driftline/v1/learning.js';
import type { ModelVersion, UploadModelHeader, UploadModelRequest } from '../common/proto/driftline/v1/models.js';
import { toOperatorCallError } from './call-error.js';

export { OperatorCallError, refusedWith, toOperatorCallError } from './call-error.js';

/** Chunks of an upload: well under grpc-js's 4 MiB message limit. */
export const UPLOAD_CHUNK_BYTES = 64 * 1024;
const UPLOAD_METHOD = '/driftline.v1.ModelService/UploadModel';
const UPLOAD_CANDIDATE_METHOD = '/driftline.v1.WorkerService/UploadCandidate';
const DEFAULT_TIMEOUT_MS = 30_000;

export interface OperatorClientOptions {
  /** The control plane's gRPC address, host:port. */
  address: string;
  /** Operator token, sent as `authorization: Bearer <token>` on every call; none: calls go out anonymous (enrollment needs none). */
  token?: string | undefined;
  /** TLS: true trusts the system roots; an object adds a CA bundle and (mTLS) a client certificate and key. Off by default. */
  tls?: boolean | { ca?: Buffer | undefined; cert?: Buffer | undefined; key?: Buffer | undefined } | undefined;
  /** Deadline of each unary call (default 30 s). */
  timeoutMs?: number | undefined;
  /** Deadline of a streamed call (an upload, a watch); default none: a watch lasts as long as what it watches. */
  streamTimeoutMs?: number | undefined;
}

/** Where exportDataset writes: a file stream, or a tar extractor (node-tar's Unpack); the caller waits for it to close. */
export interface ByteSink {
  write(chunk: Uint8Array): boolean;
  once(event: 'drain', listener: () => void): unknown;
  end(): unknown;
}

/** One method of a generated service definition (ts-proto's `FooServiceService`). */
interface MethodDefinition {
  path: string;
  requestStream: boolean;
  responseStream: boolean;
  requestSerialize: (value: never) => Buffer;
  responseDeserialize: (value: Buffer) => unknown;
}
type RequestOf<M> = M extends { requestSerialize: (value: infer R) => Buffer } ? R : never;
type ResponseOf<M> = M extends { responseDeserialize: (value: Buffer) => infer R } ? R : never;

/**
 * A service's calls as promises (unary) and async iterables (server streams: breaking out of
 * the loop cancels the call). Client-streaming calls (the model upload) have their own helper.
 * Every failure is an OperatorCallError carrying the control plane's stable code.
 */
export type ServiceStub<S> = {
  [K in keyof S as S[K] extends { requestStream: false } ? K : never]: S[K] extends { responseStream: false }
    ? (request: RequestOf<S[K]>) => Promise<ResponseOf<S[K]>>
    : (request: RequestOf<S[K]>) => AsyncIterable<ResponseOf<S[K]>>;
};

export interface OperatorClient {
  readonly address: string;
  /** Typed calls of one service, e.g. `client.service(DeviceServiceService).listDevices(...)`; the caller imports only the definitions it uses. */
  service<S extends Record<string, MethodDefinition>>(definition: S): ServiceStub<S>;
  /**
   * Streams a model to ModelService.UploadModel: the header, then the chunks. The control plane
   * may answer before the last chunk (a refusal): the answer stops the sending. A chunk source
   * that fails cancels the call and its error is what rejects.
   */
  uploadModel(
    header: UploadModelHeader,
    chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
    options?: { onChunk?: (bytes: number) => void },
  ): Promise<ModelVersion>;
  /**
   * A training worker's candidate to WorkerService.UploadCandidate (a worker token): the header
   * (lease id, size, sha256), then the chunks; refusals stop the sending as uploadModel's do.
   */
  uploadCandidate(
    header: UploadCandidateHeader,
    chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
    options?: { onChunk?: (bytes: number) => void },
  ): Promise<UploadCandidateResponse>;
  /** uploadModel for bytes in memory: size and sha256 computed, sent in UPLOAD_CHUNK_BYTES chunks. */
  uploadModelBytes(
    bytes: Uint8Array,
    header: Pick<UploadModelHeader, 'name'> & Partial<Omit<UploadModelHeader, 'sizeBytes' | 'sha256'>>,
  ): Promise<ModelVersion>;
  /**
   * Streams a dataset snapshot's tar (DatasetService.ExportDataset) into `sink`, verifying its
   * size and sha256 as it goes: DATASET_INVALID when the bytes are not what the first chunk
   * announced. onStart gets the total size, onChunk each chunk's byte count (a progress bar).
   */
  exportDataset(
    id: string,
    sink: ByteSink,
    options?: { onStart?: (sizeBytes: number) => void; onChunk?: (bytes: number) => void },
  ): Promise<{ sha256: string; sizeBytes: number }>;
  close(): void;
}

function channelCredentials(tls: OperatorClientOptions['tls']): ChannelCredentials {
  if (!tls) return credentials.createInsecure();
  if (tls === true) return credentials.createSsl();
  return credentials.createSsl(tls.ca ?? null, tls.key ?? null, tls.cert ?? null);
}

/** A typed operator client for the control plane's gRPC API: one channel, bearer metadata added once, deadlines, errors by stable code. */
export function createOperatorClient(options: OperatorClientOptions): OperatorClient {
  const channel = new Client(options.address, channelCredentials(options.tls));
  const metadata = (): Metadata => {
    const md = new Metadata();
    if (options.token) md.set('authorization', `Bearer ${options.token}`);
    return md;
  };
  const callOptions = (kind: 'unary' | 'stream'): Partial<CallOptions> => {
    const ms = kind === 'unary' ? (options.timeoutMs ?? DEFAULT_TIMEOUT_MS) : options.streamTimeoutMs;
    return ms === undefined ? {} : { deadline: Date.now() + ms };
  };
  const stubs = new Map<object, unknown>();

  const unary = (m: MethodDefinition) => (request: unknown) =>
    new Promise<unknown>((resolve, reject) => {
      channel.makeUnaryRequest(
        m.path,
        m.requestSerialize as (v: unknown) => Buffer,
        m.responseDeserialize,
        request,
        metadata(),
        callOptions('unary'),
        (err, res) => (err ? reject(toOperatorCallError(err, m.path)) : resolve(res)),
      );
    });

  const serverStream = (m: MethodDefinition) =>
    async function* (request: unknown): AsyncGenerator<unknown> {
      const call: ClientReadableStream<unknown> = channel.makeServerStreamRequest(
        m.path,
        m.requestSerialize as (v: unknown) => Buffer,
        m.responseDeserialize,
        request,
        metadata(),
        callOptions('stream'),
      );
      // After a cancel the call still reports CANCELLED; nobody is listening by then.
      call.on('error', () => undefined);
      let ended = false;
      try {
        for await (const message of call) yield message;
        ended = true;
      } catch (err) {
        ended = true;
        throw toOperatorCallError(err, m.path);
      } finally {
        if (!ended) call.cancel();
      }
    };

  /**
   * A client-streaming call: the header message, then one message per chunk. The control plane
   * may answer before the last chunk (a refusal): the answer stops the sending. A chunk source
   * that fails cancels the call and its error is what rejects.
   */
  async function clientStream<Req, Res>(
    path: string,
    serialize: (value: Req) => Buffer,
    deserialize: (bytes: Buffer) => Res,
    header: Req,
    chunkMessage: (chunk: Buffer) => Req,
    chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
    onChunk: ((bytes: number) => void) | undefined,
  ): Promise<Res> {
    let call!: ClientWritableStream<Req>;
    const answer = new Promise<Res>((resolve, reject) => {
      call = channel.makeClientStreamRequest(path, serialize, deserialize, metadata(), callOptions('stream'), (error: ServiceError | null, response?: Res) =>
        error ? reject(toOperatorCallError(error, path)) : resolve(response!),
      );
    });
    async function* messages(): AsyncGenerator<Req> {
      yield header;
      for await (const chunk of chunks) {
        yield chunkMessage(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
        onChunk?.(chunk.byteLength);
      }
    }
    const stop = new AbortController();
    let sourceFailure: unknown;
    // grpc-js types the call as its own ObjectWritable; at run time it is an object-mode Writable.
    const sending = pipeline(Readable.from(messages()), call as unknown as Writable, { signal: stop.signal }).catch((err: unknown) => {
      if (stop.signal.aborted) return;
      sourceFailure = err;
      call.cancel();
    });
    try {
      return await answer;
    } catch (err) {
      throw sourceFailure ?? err;
    } finally {
      stop.abort();
      await sending;
    }
  }

  const client: OperatorClient = {
    address: options.address,
    service<S extends Record<string, MethodDefinition>>(definition: S): ServiceStub<S> {
      let stub = stubs.get(definition) as ServiceStub<S> | undefined;
      if (!stub) {
        const methods: Record<string, unknown> = {};
        for (const [name, m] of Object.entries(definition)) {
          if (m.requestStream) continue;
          methods[name] = m.responseStream ? serverStream(m) : unary(m);
        }
        stub = methods as ServiceStub<S>;
        stubs.set(definition, stub);
      }
      return stub;
    },

    async uploadModel(header, chunks, uploadOptions = {}) {
      const { UploadModelRequest, ModelVersion } = await import('../common/proto/driftline/v1/models.js');
      return clientStream<UploadModelRequest, ModelVersion>(
        UPLOAD_METHOD,
        (value) => Buffer.from(UploadModelRequest.encode(value).finish()),
        (bytes) => ModelVersion.decode(bytes),
        { part: { $case: 'header', value: header } },
        (chunk) => ({ part: { $case: 'chunk', value: chunk } }),
        chunks,
        uploadOptions.onChunk,
      );
    },

    async uploadCandidate(header, chunks, uploadOptions = {}) {
      const { UploadCandidateRequest, UploadCandidateResponse } = await import('../common/proto/driftline/v1/learning.js');
      return clientStream<UploadCandidateRequest, UploadCandidateResponse>(
        UPLOAD_CANDIDATE_METHOD,
        (value) => Buffer.from(UploadCandidateRequest.encode(value).finish()),
        (bytes) => UploadCandidateResponse.decode(bytes),
        { part: { $case: 'header', value: header } },
        (chunk) => ({ part: { $case: 'chunk', value: chunk } }),
        chunks,
        uploadOptions.onChunk,
      );
    },

    uploadModelBytes(bytes, header) {
      const full: UploadModelHeader = {
        description: '',
        metadata: {},
        ...header,
        sizeBytes: bytes.length,
        sha256: createHash('sha256').update(bytes).digest('hex'),
      };
      function* chunks(): Generator<Uint8Array> {
        for (let offset = 0; offset < bytes.length; offset += UPLOAD_CHUNK_BYTES) yield bytes.subarray(offset, offset + UPLOAD_CHUNK_BYTES);
      }
      return client.uploadModel(full, chunks());
    },

    async exportDataset(id, sink, exportOptions = {}) {
      const { DatasetServiceService } = await import('../common/proto/driftline/v1/datasets.js');
      const { DriftlineError } = await import('../common/errors.js');
      const hash = createHash('sha256');
      let announced: { sha256: string; sizeBytes: number } | undefined;
      let received = 0;
      for await (const chunk of client.service(DatasetServiceService).exportDataset({ id })) {
        if (!announced) {
          announced = { sha256: chunk.sha256, sizeBytes: chunk.sizeBytes };
          exportOptions.onStart?.(chunk.sizeBytes);
        }
        received += chunk.data.length;
        if (received > announced.sizeBytes)
          throw new DriftlineError('DATASET_INVALID', `dataset ${id} sent more than the ${announced.sizeBytes} bytes it announced`);
        hash.update(chunk.data);
        if (!sink.write(chunk.data)) await new Promise<void>((resolve) => sink.once('drain', resolve));
        exportOptions.onChunk?.(chunk.data.length);
      }
      sink.end();
      const sha256 = hash.digest('hex');
      if (!announced || received !== announced.sizeBytes || sha256 !== announced.sha256) {
        throw new DriftlineError('DATASET_INVALID', `dataset ${id} arrived as ${received} bytes with sha256 ${sha256}, not as announced`);
      }
      return announced;
    },

    close() {
      channel.close();
    },
  };
  return client;
}
