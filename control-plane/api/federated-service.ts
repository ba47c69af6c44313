import { DriftlineError } from '../../common/errors.js';
import type { FederatedRoundSummary, FederatedServiceServer, FederatedTask as WireTask } from '../../common/proto/driftline/v1/federated.js';
import type { FederatedEngine } from '../federated/engine.js';
import { specToRequest } from '../federated/task-spec.js';
import { TASK_STATES, type FederatedRound, type FederatedTask } from '../federated/task-state-machine.js';
import { reportToWire } from './training-service.js';
import { serverStreaming, streamWatch, unary, type RpcContext } from './rpc.js';

export interface FederatedApiDeps {
  engine: FederatedEngine;
  /** Aborted when the control plane stops: open watch streams end. */
  shutdown?: AbortSignal | undefined;
  watchIntervalMs?: number | undefined;
}

const invalid = (field: string, message: string): DriftlineError =>
  new DriftlineError('FEDERATED_TASK_INVALID', `${field}: ${message}`, { details: { field } });

function taskId(id: string): string {
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(id)) throw invalid('id', 'must name a federated task');
  return id;
}

/** FederatedService: operators start and cancel tasks, viewers read and watch them. */
export function federatedService({ engine, shutdown, watchIntervalMs }: FederatedApiDeps, ctx: RpcContext): FederatedServiceServer {
  return {
    startFederatedTask: unary(ctx, 'StartFederatedTask', 'operator', async (req, caller) => {
      const task = await engine.start(req, { actor: caller?.id ?? 'anonymous', clientRequestId: req.clientRequestId });
      return taskToWire(task);
    }),
    getFederatedTask: unary(ctx, 'GetFederatedTask', 'viewer', async (req) => taskToWire(await engine.get(taskId(req.id)))),
    listFederatedTasks: unary(ctx, 'ListFederatedTasks', 'viewer', async (req) => {
      if (req.state !== '' && !(TASK_STATES as readonly string[]).includes(req.state)) throw invalid('state', `must be one of ${TASK_STATES.join(', ')}`);
      if (req.model.length > 128) throw invalid('model', 'at most 128 characters');
      if (!Number.isInteger(req.pageSize) || req.pageSize < 0 || req.pageSize > 1000) throw invalid('page_size', 'must be from 0 to 1000');
      if (req.pageToken.length > 512) throw invalid('page_token', 'at most 512 characters');
      const page = await engine.list({ model: req.model, state: req.state, pageSize: req.pageSize, pageToken: req.pageToken });
      return { tasks: page.tasks.map(taskToWire), nextPageToken: page.nextPageToken };
    }),
    cancelFederatedTask: unary(ctx, 'CancelFederatedTask', 'operator', async (req, caller) => {
      if (req.reason.length > 2000) throw invalid('reason', 'at most 2000 characters');
      const task = await engine.cancel(taskId(req.id), req.reason);
      ctx.logger.info({ task: task.id, by: caller?.id }, 'federated task cancelled');
      return taskToWire(task);
    }),
    watchFederatedTask: serverStreaming(ctx, 'WatchFederatedTask', 'viewer', async (call) => {
      const id = taskId(call.request.id);
      await engine.get(id);
      await streamWatch(
        call,
        shutdown,
        (signal) => engine.watch(id, { signal, ...(watchIntervalMs ? { pollIntervalMs: watchIntervalMs } : {}) }),
        (task) => ({ task: taskToWire(task) }),
      );
    }),
  };
}

export function taskToWire(task: FederatedTask): WireTask {
  return {
    id: task.id,
    spec: specToRequest(task.spec),
    state: task.state,
    round: task.rounds.length,
    rounds: task.rounds.map(roundToWire),
    epsilon: task.epsilon,
    delta: task.delta,
    evaluation: task.report ? reportToWire(task.report) : undefined,
    resultVersion: task.resultVersion,
    release: task.release ? { ...task.release } : undefined,
    errorCode: task.errorCode,
    reason: task.reason,
    createdAtMs: task.createdAtMs,
    updatedAtMs: task.updatedAtMs,
    headSha256: task.headSha256,
  };
}

function roundToWire(r: FederatedRound): FederatedRoundSummary {
  const tally = r.evaluation?.heads[0];
  const evaluated = tally !== undefined && tally.samples > 0;
  return {
    round: r.round,
    state: r.state,
    invited: r.invited.length,
    reported: r.answered.length,
    aggregated: r.aggregated,
    dropped: r.dropped,
    refused: { ...r.refused },
    duplicates: r.duplicates,
    late: r.late,
    trainLoss: r.samples > 0 ? r.lossSum / r.samples : 0,
    accuracy: evaluated ? tally.correct / tally.samples : -1,
    evalLoss: evaluated ? tally.lossSum / tally.samples : 0,
    evalSamples: tally?.samples ?? 0,
    clippingNorm: r.clippingNorm,
    epsilon: r.epsilon,
    startedAtMs: r.startedAtMs,
    endedAtMs: r.endedAtMs,
    errorCode: r.errorCode,
    reason: r.reason,
  };
}
