import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect, createServer as createNetServer, type Server as NetServer } from 'node:net';
import { lstat, unlink } from 'node:fs/promises';
import { randomUUID } from 'node:crypto';
import type { Registry } from 'prom-client';
import { z } from 'zod';
import { systemClock, type Clock } from '../../common/clock.js';
import { asDriftlineError, DriftlineError, type ErrorKind, listenFailed } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import type { LabelRecord } from '../../common/proto/driftline/v1/device_link.js';
import { DRIFTLINE_VERSION } from '../../common/version.js';
import { datatypeOf, toJsonValues } from '../inference/datatypes.js';
import type { ActiveModelInfo, InferenceService, InferInput, InferOutput } from '../inference/engine.js';
import type { TensorSpec } from '../inference/model-runtime.js';
import { BINARY_HEADER, decodeBinaryTensor, encodeBinaryTensor } from './binary-tensors.js';
import { BODY_LIMIT_SETTING, defaultBodyLimits, MIN_BODY_BYTES, type BodyLimits } from './body-limit.js';
import { FeedbackLedger, parseFeedback } from './feedback.js';
import { httpDate } from './http-date.js';
import { parseRequestJson } from './request-json.js';

const DEFAULT_SHUTDOWN_GRACE_MS = 5_000;
const SERVER_NAME = 'driftline-agent';

export interface LocalApiOptions {
  engine: InferenceService;
  health: () => { ok: boolean; details: Record<string, unknown> };
  metrics: Registry;
  logger: Logger;
  host?: string;
  port?: number;
  /** Listen on this unix socket instead of TCP. */
  socketPath?: string;
  /** Overrides the body limits derived from the active model (localApi.maxBodyBytes). */
  maxBodyBytes?: number;
  /** The profile's inference memory budget: bounds the derived limit of a model with dynamic input dimensions. */
  memoryBudgetBytes?: number;
  /** Deadline for each inference request; none when absent. */
  inferTimeoutMs?: number;
  /** How long close() lets requests in flight finish before cutting connections. */
  shutdownGraceMs?: number;
  /** Labels posted to .../feedback for remembered answers; without it there is no feedback route. */
  feedback?: { memory: number; record(label: LabelRecord): void; clock?: Clock };
  /** The time of each response's Date header; the feedback clock, else the system's. */
  clock?: Clock;
}

export interface LocalApi {
  /** http://host:port, or unix:<path> for a unix socket. */
  url: string;
  /** 0 on a unix socket. */
  port: number;
  /** Stops accepting and lets requests in flight finish for up to graceMs (shutdownGraceMs when absent), then cuts them. */
  close(graceMs?: number): Promise<void>;
}

/** The one place an error kind becomes an HTTP status. */
const STATUS_BY_KIND: Record<ErrorKind, number> = {
  invalid: 400,
  unauthenticated: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  exhausted: 429,
  unavailable: 503,
  deadline: 504,
  internal: 500,
};

function statusOf(error: DriftlineError): number {
  return error.code === 'PAYLOAD_TOO_LARGE' ? 413 : STATUS_BY_KIND[error.kind];
}

const binaryDataSize = z.number().int().nonnegative();

const InferRequestSchema = z.object({
  id: z.string().optional(),
  parameters: z.object({ binary_data_output: z.boolean().optional() }).loose().optional(),
  inputs: z
    .array(
      z
        .object({
          name: z.string(),
          shape: z.array(z.number()),
          datatype: z.string(),
          parameters: z.object({ binary_data_size: binaryDataSize.optional() }).loose().optional(),
          // Elements are checked once, by the engine, against the model's datatype; numeric data arrives as one Float32Array (FP32) or Float64Array.
          data: z.custom<unknown[] | Float32Array | Float64Array>((v) => Array.isArray(v) || v instanceof Float32Array || v instanceof Float64Array, 'expected an array').optional(),
        })
        .refine((i) => (i.data === undefined) !== (i.parameters?.binary_data_size === undefined), {
          message: 'give either data or parameters.binary_data_size (with the bytes after the JSON header)',
        }),
    )
    .min(1),
  outputs: z.array(z.object({ name: z.string(), parameters: z.object({ binary_data: z.boolean().optional() }).loose().optional() })).optional(),
});
type InferRequest = z.infer<typeof InferRequestSchema>;

const MODEL_ROUTE = /^\/v2\/models\/([^/]+)(?:\/versions\/([^/]+))?(\/ready|\/infer|\/feedback)?$/;

/**
 * The device's inference API for applications, in the shape of the Open Inference
 * Protocol v2 (KServe) over HTTP/JSON, on loopback or a unix socket only.
 */
export async function startLocalApi(options: LocalApiOptions): Promise<LocalApi> {
  const { logger } = options;
  // Derived once per loaded model (a swap brings a new info object).
  let limitsFor: { model: ActiveModelInfo; limits: BodyLimits } | undefined;
  const bodyLimits = (model: ActiveModelInfo): BodyLimits => {
    if (options.maxBodyBytes !== undefined) return { json: options.maxBodyBytes, binary: options.maxBodyBytes };
    if (limitsFor?.model !== model) limitsFor = { model, limits: defaultBodyLimits(model.inputs, options.memoryBudgetBytes) };
    return limitsFor.limits;
  };
  const feedbackLimit = options.maxBodyBytes ?? MIN_BODY_BYTES;
  const ledger = options.feedback ? new FeedbackLedger(options.feedback.memory, options.feedback.clock ?? systemClock) : undefined;

  const clock = options.clock ?? options.feedback?.clock ?? systemClock;
  const server = createServer((req, res) => {
    // The Date header from the clock's UTC fields (http-date.ts says why not Node's).
    res.sendDate = false;
    res.setHeader('date', httpDate(clock.now()));
    handle(req, res).catch((err: unknown) => sendError(req, res, asDriftlineError(err)));
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?', 1)[0];
    const method = req.method ?? 'GET';
    if (method === 'GET') {
      if (path === '/v2/health/live') return sendJson(res, 200, { live: true });
      if (path === '/v2/health/ready') {
        const ready = options.engine.active() !== undefined;
        return sendJson(res, ready ? 200 : 503, { ready });
      }
      if (path === '/v2') return sendJson(res, 200, { name: SERVER_NAME, version: DRIFTLINE_VERSION, extensions: ['binary_tensor_data'] });
      if (path === '/healthz') {
        const health = options.health();
        return sendJson(res, health.ok ? 200 : 503, health);
      }
      if (path === '/metrics') {
        const text = await options.metrics.metrics();
        res.writeHead(200, { 'content-type': options.metrics.contentType, 'content-length': Buffer.byteLength(text) });
        res.end(text);
        return;
      }
    }
    const route = MODEL_ROUTE.exec(path);
    if (route) {
      const name = decodeSegment(route[1]);
      const version = route[2] === undefined ? undefined : parseVersion(decodeSegment(route[2]));
      const action = route[3];
      if (method === 'GET' && action === undefined) return sendJson(res, 200, modelMetadata(activeModel(name, version)));
      if (method === 'GET' && action === '/ready') {
        activeModel(name, version);
        return sendJson(res, 200, { name, ready: true });
      }
      if (method === 'POST' && action === '/infer') return infer(req, res, name, version);
      if (method === 'POST' && action === '/feedback' && ledger) return feedback(req, res, ledger, name, version);
    }
    throw new DriftlineError('ROUTE_NOT_FOUND', `no route for ${method} ${path}`);
  }

  function activeModel(name: string, version: number | undefined): ActiveModelInfo {
    const active = options.engine.active();
    if (!active) throw new DriftlineError('MODEL_NOT_LOADED', 'no model is loaded yet');
    if (active.name !== name || (version !== undefined && version !== active.version)) {
      throw new DriftlineError('MODEL_NOT_FOUND', `model ${name}${version === undefined ? '' : ` version ${version}`} is not served here`);
    }
    return active;
  }

  async function infer(req: IncomingMessage, res: ServerResponse, name: string, version: number | undefined): Promise<void> {
    // Routed before the body is read: a request for no model here costs no buffering.
    const limits = bodyLimits(activeModel(name, version));
    const binaryHeader = req.headers[BINARY_HEADER];
    const raw = await readBody(req, binaryHeader === undefined ? limits.json : limits.binary);
    const { json, binary } = splitBody(raw, binaryHeader);
    const parsed = InferRequestSchema.safeParse(json);
    if (!parsed.success) throw new DriftlineError('REQUEST_INVALID', `inference request is invalid: ${z.prettifyError(parsed.error)}`, { details: { issues: parsed.error.issues } });
    const request = parsed.data;
    // A client that hangs up stops waiting for its result.
    const abandoned = new AbortController();
    res.once('close', () => {
      if (!res.writableFinished) abandoned.abort();
    });
    const result = await options.engine.infer(name, toInputs(request, binary), {
      version,
      outputs: request.outputs?.map((o) => o.name),
      timeoutMs: options.inferTimeoutMs,
      signal: abandoned.signal,
    });
    const header = { model_name: result.model, model_version: String(result.version), id: request.id ?? randomUUID() };
    ledger?.remember(header.id, result);
    const binaryOut = new Set(
      result.outputs.filter((o) => request.outputs?.find((r) => r.name === o.name)?.parameters?.binary_data ?? request.parameters?.binary_data_output === true).map((o) => o.name),
    );
    if (binaryOut.size === 0) {
      sendJson(res, 200, { ...header, outputs: result.outputs.map(jsonOutput) });
      return;
    }
    // Open Inference Protocol binary extension: JSON header, then each binary output's bytes in order.
    const parts: Uint8Array[] = [];
    const outputs = result.outputs.map((o) => {
      if (!binaryOut.has(o.name)) return jsonOutput(o);
      const bytes = encodeBinaryTensor(o.data);
      parts.push(bytes);
      return { name: o.name, shape: o.shape, datatype: o.datatype, parameters: { binary_data_size: bytes.length } };
    });
    const text = Buffer.from(JSON.stringify({ ...header, outputs }));
    const length = parts.reduce((n, p) => n + p.length, text.length);
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': length, [BINARY_HEADER]: text.length });
    res.write(text);
    for (const part of parts) res.write(part);
    res.end();
  }

  /** Labels for earlier answers, by response id: 202 once recorded (the telemetry goes up later). */
  async function feedback(req: IncomingMessage, res: ServerResponse, ledger: FeedbackLedger, name: string, version: number | undefined): Promise<void> {
    const items = parseFeedback(parseJson(await readBody(req, feedbackLimit)));
    const labels = ledger.label(items, { model: name, version });
    for (const label of labels) options.feedback?.record(label);
    sendJson(res, 202, { accepted: labels.length, items: labels.map((l) => ({ id: l.requestId, model_name: l.model, model_version: String(l.version), predicted: l.predicted, label: l.label, correct: l.correct })) });
  }

  function sendError(req: IncomingMessage, res: ServerResponse, error: DriftlineError): void {
    const status = statusOf(error);
    if (status >= 500) logger.warn({ err: error, code: error.code }, 'local API request failed');
    else logger.debug({ code: error.code, message: error.message }, 'local API request refused');
    if (res.headersSent) {
      res.destroy(error);
      return;
    }
    // Node would otherwise read the rest of a refused body to reuse the connection; an endless one never ends.
    const unread = error.code === 'PAYLOAD_TOO_LARGE' || !req.complete;
    const body: Record<string, unknown> = { error: error.message, code: error.code };
    if (error.code === 'PAYLOAD_TOO_LARGE') Object.assign(body, error.details);
    sendJson(res, status, body, unread);
  }

  const address = await listen(server, options);
  logger.info({ url: address.url }, 'local inference API listening');
  let closing: Promise<void> | undefined;
  return {
    ...address,
    close(graceMs) {
      closing ??= shutdown(server, graceMs ?? options.shutdownGraceMs ?? DEFAULT_SHUTDOWN_GRACE_MS);
      return closing;
    },
  };
}

function modelMetadata(model: ActiveModelInfo): Record<string, unknown> {
  return {
    name: model.name,
    versions: [String(model.version)],
    platform: 'onnxruntime',
    inputs: model.inputs.map(tensorMetadata),
    outputs: model.outputs.map(tensorMetadata),
    provider: model.provider,
    provider_fallbacks: model.fallbacks,
    max_batch_size: model.maxBatch,
    batching: model.batching,
    sha256: model.sha256,
  };
}

function tensorMetadata(spec: TensorSpec): { name: string; datatype: string; shape: number[] } {
  return { name: spec.name, datatype: datatypeOf(spec.type) ?? spec.type, shape: spec.shape };
}

function decodeSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch (err) {
    throw new DriftlineError('REQUEST_INVALID', `path segment ${JSON.stringify(segment)} is not valid percent-encoding`, { cause: err });
  }
}

function parseVersion(text: string): number {
  const version = Number(text);
  if (!Number.isSafeInteger(version) || version < 1) throw new DriftlineError('REQUEST_INVALID', `model version ${JSON.stringify(text)} is not a positive integer`);
  return version;
}

function jsonOutput(o: InferOutput): Record<string, unknown> {
  return { name: o.name, shape: o.shape, datatype: o.datatype, data: toJsonValues(o.datatype, o.data) };
}

/** The JSON part of a body, and with the binary extension the bytes after it. */
function splitBody(body: Buffer, headerLength: string | string[] | undefined): { json: unknown; binary: Buffer } {
  if (headerLength === undefined) return { json: parseRequestJson(body), binary: Buffer.alloc(0) };
  const length = Number(headerLength);
  if (typeof headerLength !== 'string' || !Number.isSafeInteger(length) || length < 0 || length > body.length) {
    throw new DriftlineError('REQUEST_INVALID', `${BINARY_HEADER} is ${JSON.stringify(headerLength)}; expected the JSON header's byte length, at most the body's ${body.length} bytes`);
  }
  return { json: parseJson(body.subarray(0, length)), binary: body.subarray(length) };
}

/** Inputs with JSON data, or cut in order from the binary part by their binary_data_size. */
function toInputs(request: InferRequest, binary: Buffer): InferInput[] {
  let offset = 0;
  const inputs = request.inputs.map((i): InferInput => {
    const size = i.parameters?.binary_data_size;
    if (size === undefined) return { name: i.name, datatype: i.datatype, shape: i.shape, data: flatten(i.data ?? []) };
    if (offset + size > binary.length) {
      throw new DriftlineError('INFERENCE_INPUT_INVALID', `input ${i.name} declares ${size} binary bytes but only ${binary.length - offset} follow the JSON header`, { details: { input: i.name } });
    }
    const data = decodeBinaryTensor(i.name, i.datatype, binary.subarray(offset, offset + size));
    offset += size;
    return { name: i.name, datatype: i.datatype, shape: i.shape, data };
  });
  if (offset !== binary.length) {
    throw new DriftlineError('REQUEST_INVALID', `${binary.length - offset} bytes after the inputs' binary data belong to no input`);
  }
  return inputs;
}

/** The protocol allows nested row-major arrays; the engine takes flat ones (numeric data is flat already). */
function flatten(data: unknown[] | Float32Array | Float64Array): ArrayLike<unknown> {
  return Array.isArray(data) && data.length > 0 && Array.isArray(data[0]) ? data.flat(Infinity) : data;
}

/**
 * Reads at most maxBytes. Past that it answers 413 straight away: the rest of the body is
 * discarded as it arrives, never buffered, and the connection closes after the response.
 * With a content-length (the usual case) the body goes into one buffer of that size, each
 * chunk copied once; without one (chunked), chunks are joined at the end.
 */
function readBody(req: IncomingMessage, maxBytes: number): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const tooLarge = () =>
      new DriftlineError('PAYLOAD_TOO_LARGE', `request body exceeds ${maxBytes} bytes (the model's largest input; set ${BODY_LIMIT_SETTING} to change it)`, {
        details: { limit_bytes: maxBytes, setting: BODY_LIMIT_SETTING },
      });
    const declared = req.headers['content-length'] === undefined ? undefined : Number(req.headers['content-length']);
    if (declared !== undefined && declared > maxBytes) {
      req.resume();
      reject(tooLarge());
      return;
    }
    // Node's parser has checked content-length is a number and never delivers more than it says.
    const whole = declared === undefined ? undefined : Buffer.allocUnsafe(declared);
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      if (size + chunk.length > maxBytes || (whole && size + chunk.length > whole.length)) {
        // Left flowing without a listener, the remainder is dropped rather than buffered.
        req.off('data', onData);
        chunks.length = 0;
        reject(tooLarge());
        return;
      }
      if (whole) chunk.copy(whole, size);
      else chunks.push(chunk);
      size += chunk.length;
    };
    req.on('data', onData);
    req.once('end', () => {
      if (!whole) resolve(Buffer.concat(chunks, size));
      else if (size === whole.length) resolve(whole);
      else reject(new DriftlineError('REQUEST_INVALID', `request body ended after ${size} of its ${whole.length} bytes`));
    });
    req.once('error', (err) => reject(new DriftlineError('REQUEST_INVALID', `request body could not be read: ${err.message}`, { cause: err })));
  });
}

function parseJson(body: Buffer): unknown {
  try {
    return JSON.parse(body.toString('utf8'));
  } catch (err) {
    throw new DriftlineError('REQUEST_INVALID', `request body is not valid JSON: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown, closeConnection = false): void {
  const text = JSON.stringify(body);
  const headers: Record<string, string | number> = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) };
  if (closeConnection) headers.connection = 'close';
  res.writeHead(status, headers);
  res.end(text);
}

async function listen(server: Server, options: LocalApiOptions): Promise<{ url: string; port: number }> {
  if (options.socketPath !== undefined) {
    const socketPath = options.socketPath;
    try {
      await listenOn(server, socketPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || !(await isStaleSocket(socketPath))) throw cannotListen(socketPath, err);
      await unlink(socketPath);
      await listenOn(server, socketPath).catch((retryErr: unknown) => {
        throw cannotListen(socketPath, retryErr);
      });
    }
    return { url: `unix:${socketPath}`, port: 0 };
  }
  const host = options.host ?? '127.0.0.1';
  const port = options.port ?? 0;
  await listenOn(server, { host, port }).catch((err: unknown) => {
    throw cannotListen(`${host}:${port}`, err);
  });
  const address = server.address();
  if (address === null || typeof address === 'string') throw new DriftlineError('INTERNAL', 'the local API has no TCP address');
  const urlHost = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return { url: `http://${urlHost}:${address.port}`, port: address.port };
}

function cannotListen(where: string, err: unknown): DriftlineError {
  return listenFailed('local-api', where, err);
}

/**
 * Binds the local API's TCP address for a moment and lets it go: run before enrollment, a port
 * that is taken fails the start before a one-time enrollment token is spent. (A unix socket is
 * checked when the API starts: a stale one is removed then.)
 */
export async function checkLocalApiPort(options: { host?: string | undefined; port?: number | undefined; socketPath?: string | undefined }): Promise<void> {
  if (options.socketPath !== undefined || !options.port) return;
  const host = options.host ?? '127.0.0.1';
  const probe = createNetServer();
  await listenOn(probe, { host, port: options.port }).catch((err: unknown) => {
    throw cannotListen(`${host}:${options.port}`, err);
  });
  await new Promise<void>((resolve) => probe.close(() => resolve()));
}

function listenOn(server: Server | NetServer, target: string | { host: string; port: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    const done = () => {
      server.off('error', reject);
      resolve();
    };
    if (typeof target === 'string') server.listen(target, done);
    else server.listen(target.port, target.host, done);
  });
}

/** A socket file nobody answers on is left over from a process that was killed; anything else is not ours to remove. */
async function isStaleSocket(path: string): Promise<boolean> {
  if (!(await lstat(path)).isSocket()) return false;
  return new Promise((resolve) => {
    const socket = connect(path);
    socket.once('connect', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', () => resolve(true));
  });
}

/** Stops accepting, lets requests in flight finish for up to graceMs, then cuts what is left. */
function shutdown(server: Server, graceMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const force = setTimeout(() => server.closeAllConnections(), graceMs);
    server.close((err) => {
      clearTimeout(force);
      if (err) reject(err);
      else resolve();
    });
    server.closeIdleConnections();
  });
}
