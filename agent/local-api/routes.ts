import type { IncomingMessage, ServerResponse } from 'node:http';
import { randomUUID } from 'node:crypto';
import type { Registry } from 'prom-client';
import { systemClock, type Clock } from '../../common/clock.js';
import { asDriftlineError, DriftlineError } from '../../common/errors.js';
import { readBody, parseJsonBody, type BodyLimit } from '../../common/http/body.js';
import { httpDate } from '../../common/http/date.js';
import { httpStatusOf, sendJson } from '../../common/http/json.js';
import type { Logger } from '../../common/logger.js';
import type { LabelRecord } from '../../common/proto/driftline/v1/device_link.js';
import type { ActiveModelInfo, InferenceService } from '../inference/engine.js';
import { BINARY_HEADER } from './binary-tensors.js';
import { BODY_LIMIT_SETTING, defaultBodyLimits, MIN_BODY_BYTES, type BodyLimits } from './body-limit.js';
import { FeedbackLedger, parseFeedback } from './feedback.js';
import { inferResponse, modelMetadata, parseInferRequest, parseModelRoute, serverMetadata } from './inference-protocol.js';

/** One model in POST /v2/repository/index (the Open Inference Protocol's model repository extension). */
export interface RepositoryEntry {
  name: string;
  version: string;
  /** READY: serving; LOADING: being installed; UNAVAILABLE: refused (reason says why); UNLOADING: being removed. */
  state: 'READY' | 'LOADING' | 'UNAVAILABLE' | 'UNLOADING';
  reason: string;
}

/**
 * The repository index of a device's set: each model of the desired set with its state (a refused
 * one UNAVAILABLE with its code as the reason), then any model still served that the set no longer lists.
 */
export function repositoryIndex(
  entries: ReadonlyArray<{
    name: string;
    version: number;
    desiredVersion: number;
    state: 'serving' | 'loading' | 'refused';
    error?: { code: string; message: string } | undefined;
  }>,
  served: ReadonlyArray<{ name: string; version: number }>,
): RepositoryEntry[] {
  const listed = entries.map((entry): RepositoryEntry => ({
    name: entry.name,
    version: String(entry.state === 'serving' ? entry.version : entry.desiredVersion),
    state: entry.state === 'serving' ? 'READY' : entry.state === 'loading' ? 'LOADING' : 'UNAVAILABLE',
    reason: entry.error ? `${entry.error.code}: ${entry.error.message}` : '',
  }));
  // A model still served while the set removes it.
  const names = new Set(listed.map((e) => e.name));
  for (const m of served) if (!names.has(m.name)) listed.push({ name: m.name, version: String(m.version), state: 'UNLOADING', reason: '' });
  return listed;
}

export interface LocalApiRouteOptions {
  engine: InferenceService;
  /** The models of the device's set with their state; without it, the models the engine serves, all READY. */
  repository?: () => RepositoryEntry[];
  health: () => { ok: boolean; details: Record<string, unknown> };
  metrics: Registry;
  logger: Logger;
  /** Overrides the body limits derived from the active model (localApi.maxBodyBytes). */
  maxBodyBytes?: number;
  /** The profile's inference memory budget: bounds the derived limit of a model with dynamic input dimensions. */
  memoryBudgetBytes?: number;
  /** Deadline for each inference request; none when absent. */
  inferTimeoutMs?: number;
  /**
   * Labels posted to .../feedback for remembered answers; without it there is no feedback route.
   * record() resolves once the label is durable: the 202 waits for it.
   */
  feedback?: { memory: number; record(label: LabelRecord): void | Promise<void>; clock?: Clock };
  /** The time of each response's Date header; the feedback clock, else the system's. */
  clock?: Clock;
}

export interface LocalApiRoutes {
  handle(req: IncomingMessage, res: ServerResponse): Promise<void>;
  /** Answers what handle threw: the error's code in a JSON body, under the status of its kind. */
  onError(err: unknown, req: IncomingMessage, res: ServerResponse): void;
}

/** What a refused body's 413 says the limit is. */
const BODY_LIMIT_REASON = "the model's largest input";

/** The local API's routes: health, metrics, model metadata, inference and feedback. */
export function localApiRoutes(options: LocalApiRouteOptions): LocalApiRoutes {
  const { logger } = options;
  // Derived once per loaded model (a swap brings a new info object).
  const limitsFor = new WeakMap<ActiveModelInfo, BodyLimits>();
  const bodyLimits = (model: ActiveModelInfo): BodyLimits => {
    if (options.maxBodyBytes !== undefined) return { json: options.maxBodyBytes, binary: options.maxBodyBytes };
    let limits = limitsFor.get(model);
    if (!limits) limitsFor.set(model, (limits = defaultBodyLimits(model.inputs, options.memoryBudgetBytes)));
    return limits;
  };
  const limit = (maxBytes: number): BodyLimit => ({ maxBytes, setting: BODY_LIMIT_SETTING, reason: BODY_LIMIT_REASON });
  const feedbackLimit = limit(options.maxBodyBytes ?? MIN_BODY_BYTES);
  const ledger = options.feedback ? new FeedbackLedger(options.feedback.memory, options.feedback.clock ?? systemClock) : undefined;
  const clock = options.clock ?? options.feedback?.clock ?? systemClock;

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    // The Date header from the clock's UTC fields (common/http/date.ts says why not Node's).
    res.sendDate = false;
    res.setHeader('date', httpDate(clock.now()));
    const path = (req.url ?? '/').split('?', 1)[0];
    const method = req.method ?? 'GET';
    if (method === 'GET') {
      if (path === '/v2/health/live') return sendJson(res, 200, { live: true });
      if (path === '/v2/health/ready') {
        const ready = options.engine.active() !== undefined;
        return sendJson(res, ready ? 200 : 503, { ready });
      }
      if (path === '/v2') return sendJson(res, 200, serverMetadata());
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
    if (method === 'POST' && path === '/v2/repository/index') return repositoryIndex(req, res);
    const route = parseModelRoute(path!);
    if (route) {
      const { name, version, action } = route;
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

  /** The body may be empty or {"ready": true} (only the models ready to serve). */
  async function repositoryIndex(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const raw = await readBody(req, feedbackLimit);
    const body = raw.length === 0 ? {} : parseJsonBody(raw);
    if (typeof body !== 'object' || body === null || Array.isArray(body))
      throw new DriftlineError('REQUEST_INVALID', 'the repository index request is a JSON object');
    const ready = (body as { ready?: unknown }).ready;
    if (ready !== undefined && typeof ready !== 'boolean') throw new DriftlineError('REQUEST_INVALID', 'ready is true or false');
    const entries =
      options.repository?.() ?? options.engine.models().map((m): RepositoryEntry => ({ name: m.name, version: String(m.version), state: 'READY', reason: '' }));
    sendJson(res, 200, ready ? entries.filter((e) => e.state === 'READY') : entries);
  }

  function activeModel(name: string, version: number | undefined): ActiveModelInfo {
    const active = options.engine.model(name);
    if (!active && options.engine.models().length === 0) throw new DriftlineError('MODEL_NOT_LOADED', 'no model is loaded yet');
    if (!active || (version !== undefined && version !== active.version)) {
      throw new DriftlineError('MODEL_NOT_FOUND', `model ${name}${version === undefined ? '' : ` version ${version}`} is not served here`);
    }
    return active;
  }

  async function infer(req: IncomingMessage, res: ServerResponse, name: string, version: number | undefined): Promise<void> {
    // Routed before the body is read: a request for no model here costs no buffering.
    const limits = bodyLimits(activeModel(name, version));
    const binaryHeader = req.headers[BINARY_HEADER];
    // The raw tensor bytes start after the JSON header: aligned there, they are decoded as views on the body.
    const raw = await readBody(
      req,
      binaryHeader === undefined
        ? limit(limits.json)
        : { ...limit(limits.binary), alignOffset: typeof binaryHeader === 'string' ? Number(binaryHeader) : undefined },
    );
    const { request, inputs } = parseInferRequest(raw, binaryHeader);
    // A client that hangs up stops waiting for its result.
    const abandoned = new AbortController();
    res.once('close', () => {
      if (!res.writableFinished) abandoned.abort();
    });
    // Known before the inference: a captured sample carries it, so its label can find it.
    const id = request.id ?? randomUUID();
    const result = await options.engine.infer(name, inputs, {
      version,
      outputs: request.outputs?.map((o) => o.name),
      timeoutMs: options.inferTimeoutMs,
      signal: abandoned.signal,
      requestId: id,
    });
    ledger?.remember(id, result);
    const response = inferResponse(request, result, id);
    if (response.kind === 'json') return sendJson(res, 200, response.body);
    const { header, parts } = response;
    const length = parts.reduce((n, p) => n + p.length, header.length);
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': length, [BINARY_HEADER]: header.length });
    res.write(header);
    for (const part of parts) res.write(part);
    res.end();
  }

  /** Labels for earlier answers, by response id: 202 once committed to the buffer (the telemetry goes up later). */
  async function feedback(req: IncomingMessage, res: ServerResponse, ledger: FeedbackLedger, name: string, version: number | undefined): Promise<void> {
    const items = parseFeedback(parseJsonBody(await readBody(req, feedbackLimit)));
    const labels = ledger.label(items, { model: name, version });
    // Acknowledged only once recorded (committed to the buffer): a 202 is never lost to a crash.
    await Promise.all(labels.map((label) => options.feedback?.record(label)));
    sendJson(res, 202, {
      accepted: labels.length,
      items: labels.map((l) => ({
        id: l.requestId,
        model_name: l.model,
        model_version: String(l.version),
        predicted: l.predicted,
        label: l.label,
        correct: l.correct,
      })),
    });
  }

  function onError(err: unknown, req: IncomingMessage, res: ServerResponse): void {
    const error = asDriftlineError(err);
    const status = httpStatusOf(error);
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

  return { handle, onError };
}
