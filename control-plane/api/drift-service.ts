import { z } from 'zod';
import { DriftlineError } from '../../common/errors.js';
import type { DriftServiceServer } from '../../common/proto/driftline/v1/drift.js';
import { matchesDriftFilter, type DriftEventFilter, type DriftEventRecord } from '../drift/drift-watcher.js';
import type { ApiDeps, DriftEventFeed } from './ports.js';
import { serverStreaming, unary, validate, type RpcContext } from './rpc.js';

const statusRequest = z.object({ model: z.string().min(1).max(128), version: z.number().int().nonnegative(), sinceMs: z.number().int().nonnegative() });

/** Events a List answers, and a Watch replays, when the request names no limit. */
export const DEFAULT_DRIFT_EVENT_LIMIT = 1000;
const MAX_DRIFT_EVENT_LIMIT = 10_000;

const eventsRequest = z
  .object({
    model: z.string().max(128),
    version: z.number().int().nonnegative(),
    cohort: z.string().max(128).optional(),
    sinceMs: z.number().int().nonnegative(),
    afterId: z.number().int().nonnegative(),
    limit: z.number().int().min(0).max(MAX_DRIFT_EVENT_LIMIT),
  })
  .refine((r) => r.version === 0 || r.model !== '', { message: 'a version filter needs a model', path: ['version'] });

export function driftService(deps: ApiDeps, ctx: RpcContext): DriftServiceServer {
  /** Validates an events request and returns its filter and limit, or refuses it. */
  const eventsQuery = async (req: unknown): Promise<{ feed: DriftEventFeed; filter: DriftEventFilter; limit: number }> => {
    const r = validate(eventsRequest, req);
    if (!deps.driftEvents) throw new DriftlineError('NOT_IMPLEMENTED', 'drift events are not served by this control plane');
    // An unknown model is refused with MODEL_NOT_FOUND, as GetDriftStatus does, rather than answered with nothing.
    if (r.model) await deps.registry.get(r.model);
    return {
      feed: deps.driftEvents,
      filter: { model: r.model, version: r.version, cohort: r.cohort, sinceMs: r.sinceMs, afterId: r.afterId },
      limit: r.limit || DEFAULT_DRIFT_EVENT_LIMIT,
    };
  };

  return {
    getDriftStatus: unary(ctx, 'GetDriftStatus', 'viewer', async (req) => {
      validate(statusRequest, req);
      if (!deps.drift) throw new DriftlineError('NOT_IMPLEMENTED', 'drift status is not served by this control plane');
      // Refuses an unknown model with MODEL_NOT_FOUND rather than an empty answer.
      await deps.registry.get(req.model);
      return { statuses: await deps.drift.status(req) };
    }),
    listDriftEvents: unary(ctx, 'ListDriftEvents', 'viewer', async (req) => {
      const { feed, filter, limit } = await eventsQuery(req);
      return { events: await feed.list(filter, limit) };
    }),
    watchDriftEvents: serverStreaming(ctx, 'WatchDriftEvents', 'viewer', async (call) => {
      const { feed, filter, limit } = await eventsQuery(call.request);
      // Subscribed before the replay is read, so no event falls between them. Live events that
      // arrive while the replay is read wait until it is sent (their ids are above what it read
      // so far, and sending one first would skip the replay past the rest); an id check keeps
      // a live event from repeating one replayed.
      let lastId = filter.afterId ?? 0;
      const send = (event: DriftEventRecord): void => {
        if (event.id <= lastId || !matchesDriftFilter(event, filter)) return;
        lastId = event.id;
        call.write(event);
      };
      let held: DriftEventRecord[] | undefined = [];
      const receive = (event: DriftEventRecord): void => {
        if (held) held.push(event);
        else send(event);
      };
      // The control plane's shutdown ends the stream, so it never holds up the gRPC server's drain.
      const unsubscribe = feed.subscribe(receive, () => call.end());
      call.on('cancelled', unsubscribe);
      call.on('close', unsubscribe);
      // The replay sends every matching event after after_id, reading `limit` at a time.
      let page: DriftEventRecord[];
      do {
        page = await feed.list({ ...filter, afterId: lastId }, limit);
        for (const event of page) send(event);
      } while (page.length === limit);
      const waiting = held;
      held = undefined;
      for (const event of waiting) send(event);
    }),
  };
}
