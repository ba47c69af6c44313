import { createHash, randomBytes } from 'node:crypto';
import type { Clock } from '../../common/clock.js';
import { DriftlineError, asDriftlineError, type ErrorCode } from '../../common/errors.js';
import { decodeHead, encodeHead, flattenHead, headLength, unflattenHead, type LayerShape } from '../../common/federated/head-vector.js';
import type { Logger } from '../../common/logger.js';
import { FederatedInvitation_Kind, FederatedReport, type FederatedInvitation } from '../../common/proto/driftline/v1/device_link.js';
import type { StartFederatedTaskRequest } from '../../common/proto/driftline/v1/federated.js';
import type { EvaluationReport } from '../training/evaluation.js';
import type {
  BaseHeads,
  FederatedAlgorithms,
  FederatedEvaluationCounts,
  FederatedFleet,
  FederatedInvitations,
  FederatedRelease,
  FederatedTaskRepository,
  FederatedTaskTransaction,
  HeadArtifacts,
  RoundPrivacy,
} from './ports.js';
import { DEFAULT_FEDERATED_LIMITS, parseFederatedSpec, type FederatedLimits } from './task-spec.js';
import {
  cancel as cancelTask,
  countDuplicate,
  countLate,
  createTask,
  currentRound,
  failTask,
  invitedPerRound,
  isEnded,
  placeTrainReport,
  recordAggregation,
  recordEvaluation,
  recordOutcome,
  recordTrainReport,
  roundsLeft,
  selectDevices,
  startRound,
  startTaskEvaluation,
  tick as tickTask,
  topUpAsync,
  type EvaluationTally,
  type Effect,
  type FederatedTask,
  type Transition,
} from './task-state-machine.js';

export interface FederatedActor {
  actor: string;
  clientRequestId: string;
}

export interface FederatedEngineOptions {
  repository: FederatedTaskRepository;
  fleet: FederatedFleet;
  invitations: FederatedInvitations;
  heads: HeadArtifacts;
  baseHeads: BaseHeads;
  algorithms: FederatedAlgorithms;
  /** Judge, register, release; absent: a task that trained ends succeeded with its head stored as an artifact and no version. */
  release?: FederatedRelease | undefined;
  limits?: Partial<FederatedLimits>;
  clock: Clock;
  logger: Logger;
  newId?: () => string;
  /** Standard normal draws for the DP noise (default: crypto-seeded Box–Muller). */
  gaussian?: () => number;
}

export type FederatedListener = (task: FederatedTask) => void;

/** Slack for the report's own fields around the update's bytes, before anything is decoded. */
const REPORT_ENVELOPE_BYTES = 64 * 1024;

/**
 * Runs federated tasks: turns API calls, device answers and driver ticks into state-machine
 * transitions, persists each with what it recorded (answers, kept updates) in one transaction,
 * then carries out its effects: invitations on the device link, aggregation of a closed round,
 * judging. Everything is serialized, so an answer, a tick and a cancel never interleave.
 * Effects that are state (a round aggregating, a task releasing) are redone from the store by
 * resume() after a restart.
 */
export class FederatedEngine {
  private queue: Promise<unknown> = Promise.resolve();
  private readonly listeners = new Set<FederatedListener>();
  private readonly newId: () => string;
  private readonly limits: FederatedLimits;
  private readonly gaussian: () => number;
  private readonly headSizes = new Map<string, number>();

  constructor(private readonly options: FederatedEngineOptions) {
    this.newId = options.newId ?? (() => `fl_${randomBytes(6).toString('hex')}`);
    this.limits = { ...DEFAULT_FEDERATED_LIMITS, ...options.limits };
    this.gaussian = options.gaussian ?? cryptoGaussian();
  }

  onChange(listener: FederatedListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Starts a task (idempotent by client_request_id); its first round is invited before this returns. */
  start(request: StartFederatedTaskRequest, by: FederatedActor): Promise<FederatedTask> {
    return this.serialized(async () => {
      const { repository, algorithms, baseHeads, heads, clock } = this.options;
      const spec = parseFederatedSpec(request, this.limits);
      algorithms.validate(spec);
      const fingerprint = JSON.stringify(spec);
      if (by.clientRequestId) {
        const stored = await repository.findRequest(by.clientRequestId);
        if (stored) {
          if (stored.fingerprint !== fingerprint)
            throw new DriftlineError('REQUEST_ID_REUSED', `client_request_id ${by.clientRequestId} was used for another request`, {
              details: { taskId: stored.taskId },
            });
          return this.require(stored.taskId);
        }
      }
      const layers = await baseHeads.headOf(spec.model, spec.baseVersion);
      const stored = await heads.put(encodeHead(layers));
      this.headSizes.set(stored.sha256, stored.sizeBytes);
      const length = headLength(layers);
      let task = createTask({ id: this.newId(), spec, baseHeadSha256: stored.sha256, createdBy: by.actor, nowMs: clock.now() });
      const privacy = algorithms.privacy(spec, 1);
      task = { ...task, strategyState: algorithms.strategy(spec.strategy).initialState(length), privacyState: privacy?.initialState() ?? {} };
      await repository.transaction(async (tx) => {
        await tx.insert(task);
        if (by.clientRequestId) await tx.saveRequest({ clientRequestId: by.clientRequestId, fingerprint, taskId: task.id }, clock.now());
      });
      this.options.logger.info(
        { task: task.id, model: spec.model, base: spec.baseVersion, mode: spec.mode, rounds: spec.rounds, by: by.actor },
        'federated task started',
      );
      return this.advance(task);
    });
  }

  get(id: string): Promise<FederatedTask> {
    return this.require(id);
  }

  /** Newest first; the page token is the last task's (created, id). */
  async list(options: { model?: string; state?: string; pageSize?: number; pageToken?: string }): Promise<{ tasks: FederatedTask[]; nextPageToken: string }> {
    const limit = Math.min(Math.max(options.pageSize || 50, 1), 1000);
    let before: { createdAtMs: number; id: string } | undefined;
    if (options.pageToken) {
      const m = /^(\d+):(.+)$/.exec(Buffer.from(options.pageToken, 'base64url').toString('utf8'));
      if (!m) throw new DriftlineError('FEDERATED_TASK_INVALID', 'page_token: not a token this server handed out', { details: { field: 'page_token' } });
      before = { createdAtMs: Number(m[1]), id: m[2]! };
    }
    const tasks = await this.options.repository.list({
      model: options.model ?? '',
      state: options.state ?? '',
      limit: limit + 1,
      ...(before ? { before } : {}),
    });
    const page = tasks.slice(0, limit);
    const last = page[page.length - 1];
    const nextPageToken = tasks.length > limit && last ? Buffer.from(`${last.createdAtMs}:${last.id}`).toString('base64url') : '';
    return { tasks: page, nextPageToken };
  }

  /** Cancelled at once; devices still working are told to stop. An ended task is refused (FEDERATED_STATE_INVALID). */
  cancel(id: string, reason: string): Promise<FederatedTask> {
    return this.serialized(async () => {
      const task = await this.require(id);
      if (isEnded(task.state))
        throw new DriftlineError('FEDERATED_STATE_INVALID', `federated task ${id} already ${task.state}`, { details: { state: task.state } });
      return this.apply(cancelTask(task, reason, this.options.clock.now()));
    });
  }

  /** The driver's tick: deadlines, and any step left undone (after a restart: a round whose deadline passed while down closes now). */
  tick(): Promise<void> {
    return this.serialized(async () => {
      for (const task of await this.options.repository.active()) {
        try {
          const ticked = await this.apply(tickTask(task, this.options.clock.now()));
          await this.advance(ticked);
        } catch (err) {
          this.options.logger.error({ err, task: task.id }, 'federated task tick failed');
        }
      }
    });
  }

  /** Waits for the work queued so far (tests). */
  idle(): Promise<void> {
    return this.serialized(async () => undefined);
  }

  /**
   * A device's FederatedReport (up/federated). Refusals of the report as a whole (not decodable,
   * not invited, too large) throw with their code, for the ingest refusal counts; refusals of the
   * update are counted in the round's summary by code.
   */
  handleReport(deviceId: string, payload: Uint8Array): Promise<void> {
    if (payload.length > this.limits.maxUpdateBytes + REPORT_ENVELOPE_BYTES) {
      return Promise.reject(
        new DriftlineError(
          'FEDERATED_UPDATE_TOO_LARGE',
          `a federated report of ${payload.length} bytes is above federated.maxUpdateBytes (${this.limits.maxUpdateBytes})`,
        ),
      );
    }
    let report: FederatedReport;
    try {
      report = FederatedReport.decode(payload);
    } catch (err) {
      return Promise.reject(new DriftlineError('FEDERATED_UPDATE_SHAPE', 'not a FederatedReport message', { cause: err }));
    }
    return this.serialized(async () => {
      const found = await this.options.repository.get(report.taskId);
      if (!found) throw new DriftlineError('FEDERATED_UPDATE_UNEXPECTED', `no federated task ${report.taskId.slice(0, 64)}`);
      // Deadlines first: an answer after its round's deadline is late even before the driver's tick closed the round.
      const task = await this.apply(tickTask(found, this.options.clock.now()));
      if (report.kind === FederatedInvitation_Kind.KIND_TRAIN) await this.onTrainReport(task, deviceId, report);
      else if (report.kind === FederatedInvitation_Kind.KIND_EVALUATE) await this.onEvaluateReport(task, deviceId, report);
      else throw new DriftlineError('FEDERATED_UPDATE_UNEXPECTED', `a federated report of kind ${report.kind} answers nothing`);
    });
  }

  private async onTrainReport(task: FederatedTask, deviceId: string, report: FederatedReport): Promise<void> {
    const { repository, clock, algorithms } = this.options;
    const now = clock.now();
    const place = placeTrainReport(task, report.round, deviceId);
    if (!place.use && place.code === 'FEDERATED_UPDATE_UNEXPECTED')
      throw new DriftlineError('FEDERATED_UPDATE_UNEXPECTED', `device ${deviceId} was not invited to round ${report.round} of ${task.id}`);
    let outcome: Parameters<typeof recordTrainReport>[3] | undefined;
    let delta: Float32Array | undefined;
    let staleness = 0;
    if (place.use) {
      if (report.errorCode) outcome = { kind: 'declined', code: report.errorCode };
      else {
        try {
          const length = await this.headLengthOf(task);
          staleness = task.spec.mode === 'async' ? task.headVersion - report.headVersion : 0;
          if (task.spec.mode === 'sync' && report.headSha256 !== currentRound(task)!.headSha256)
            throw new DriftlineError('FEDERATED_UPDATE_STALE', `the update was trained from head ${report.headSha256.slice(0, 12)}, not the round's`);
          if (staleness < 0) throw new DriftlineError('FEDERATED_UPDATE_UNEXPECTED', `head version ${report.headVersion} was never issued`);
          if (staleness > task.spec.maxStaleness)
            throw new DriftlineError('FEDERATED_UPDATE_STALE', `the update is ${staleness} head versions old (max_staleness ${task.spec.maxStaleness})`);
          if (!Number.isFinite(report.trainLoss) || !Number.isSafeInteger(report.sampleCount) || report.sampleCount < 1)
            throw new DriftlineError('FEDERATED_UPDATE_SHAPE', 'the report needs a finite train_loss and a sample_count of 1 or more');
          delta = algorithms.validateUpdate(report.update, {
            headLength: length,
            maxUpdateNorm: task.spec.maxUpdateNorm,
            maxBytes: this.limits.maxUpdateBytes,
            encoding: task.spec.updateCompression,
          }).delta;
          outcome = { kind: 'accepted', samples: report.sampleCount, loss: report.trainLoss };
        } catch (err) {
          const e = asDriftlineError(err);
          if (!e.code.startsWith('FEDERATED_')) throw err;
          outcome = { kind: 'refused', code: e.code };
        }
      }
    }
    const transition = await repository.transaction(async (tx): Promise<Transition> => {
      const fresh = await tx.recordReport({ taskId: task.id, round: report.round, deviceId, kind: 'train' }, now);
      if (!fresh || !place.use || !outcome) {
        const counted = !fresh ? countDuplicate(task, place.round ?? report.round, now) : countLate(task, place.round ?? report.round, now);
        await tx.update(counted);
        return { task: counted, effects: [] };
      }
      if (delta && outcome.kind === 'accepted') {
        await tx.saveUpdate({ taskId: task.id, round: place.round, deviceId, sampleCount: report.sampleCount, trainLoss: report.trainLoss, staleness, delta });
      }
      const recorded = recordTrainReport(task, place.round, deviceId, outcome, now);
      await tx.update(recorded.task);
      return recorded;
    });
    this.emit(transition.task);
    if (outcome?.kind === 'refused')
      this.options.logger.info({ task: task.id, device: deviceId, round: report.round, code: outcome.code }, 'federated update refused');
    await this.run(transition.task, transition.effects);
    let next = transition.task;
    if (next.spec.mode === 'async' && next.state === 'running' && currentRound(next)?.state === 'training') {
      next = await this.apply(topUpAsync(next, await this.candidates(next), now));
    }
    await this.advance(next);
  }

  private async onEvaluateReport(task: FederatedTask, deviceId: string, report: FederatedReport): Promise<void> {
    const { repository, clock } = this.options;
    const now = clock.now();
    const answer = {
      headSha256: report.headSha256,
      declined:
        report.errorCode !== '' ||
        !(report.evalSamples >= 0 && Number.isFinite(report.evalLoss) && report.evalCorrect <= report.evalSamples && report.evalCorrect >= 0),
      samples: report.evalSamples,
      correct: report.evalCorrect,
      loss: report.evalLoss,
      perClassSupport: report.perClassSupport.slice(0, 10_000),
      perClassCorrect: report.perClassCorrect.slice(0, 10_000),
    };
    const transition = await repository.transaction(async (tx): Promise<Transition> => {
      const fresh = await tx.recordReport({ taskId: task.id, round: report.round, deviceId, kind: `evaluate:${report.headSha256.slice(0, 64)}` }, now);
      if (!fresh) {
        const counted = report.round > 0 ? countDuplicate(task, report.round, now) : task;
        await tx.update(counted);
        return { task: counted, effects: [] };
      }
      const recorded = recordEvaluation(task, report.round, deviceId, answer, now);
      await tx.update(recorded.task);
      return recorded;
    });
    this.emit(transition.task);
    await this.run(transition.task, transition.effects);
    await this.advance(transition.task);
  }

  /** Watches a task: now, then after every change, until it ends or the signal aborts. */
  async *watch(id: string, options: { signal?: AbortSignal; pollIntervalMs?: number } = {}): AsyncGenerator<FederatedTask> {
    let last = await this.require(id);
    yield last;
    let wake: (() => void) | undefined;
    const off = this.onChange((t) => {
      if (t.id === id) wake?.();
    });
    const onAbort = (): void => wake?.();
    options.signal?.addEventListener('abort', onAbort);
    try {
      while (!isEnded(last.state) && !options.signal?.aborted) {
        await new Promise<void>((resolve) => {
          wake = resolve;
          // Another replica may change the task: re-read it now and then without an event.
          const timer = setTimeout(resolve, options.pollIntervalMs ?? 1000);
          timer.unref();
        });
        wake = undefined;
        if (options.signal?.aborted) return;
        const now = await this.require(id);
        if (now.updatedAtMs !== last.updatedAtMs || now.state !== last.state || JSON.stringify(now) !== JSON.stringify(last)) {
          last = now;
          yield now;
        }
      }
    } finally {
      off();
      options.signal?.removeEventListener('abort', onAbort);
    }
  }

  // ---- stepping ----

  /** Does the next step a task's stored state calls for: a round to start, aggregate or follow, an evaluation to start, a verdict. */
  private async advance(task: FederatedTask): Promise<FederatedTask> {
    const { clock } = this.options;
    for (let guard = 0; guard < 8 && !isEnded(task.state); guard++) {
      const round = currentRound(task);
      let next: FederatedTask;
      if (task.state === 'pending') next = await this.apply(startRound(task, await this.candidates(task), clock.now()));
      else if (task.state === 'running' && round?.state === 'aggregating') next = await this.aggregate(task, round.round);
      else if (task.state === 'running' && (round === undefined || round.state === 'done')) {
        const privacy = this.privacyOf(task, await this.samplingRate(task));
        const spent = privacy?.wouldExceedBudget(task.privacyState, await this.samplingRate(task)) ?? false;
        if (roundsLeft(task) && !spent) next = await this.apply(startRound(task, await this.candidates(task), clock.now()));
        else {
          const devices = selectDevices(task.id, 0, await this.candidates(task), invitedPerRound(task.spec));
          const reason = spent
            ? `privacy budget spent (ε ${task.epsilon.toFixed(3)} of ${task.spec.privacy.targetEpsilon} at δ ${task.spec.privacy.delta})`
            : '';
          next = await this.apply(startTaskEvaluation(task, devices, clock.now(), reason));
        }
      } else if (task.state === 'releasing') next = await this.judge(task);
      else return task;
      if (next === task) return task;
      task = next;
    }
    return task;
  }

  /** Aggregates a closed round's kept updates, streaming them from the store, into the next head. */
  private async aggregate(task: FederatedTask, roundNumber: number): Promise<FederatedTask> {
    const { repository, algorithms, heads, clock } = this.options;
    const now = clock.now();
    try {
      const layers = decodeHead(await heads.get(task.headSha256));
      const shapes: LayerShape[] = layers.map(({ inputs, outputs }) => ({ inputs, outputs }));
      const global = flattenHead(layers);
      const strategy = algorithms.strategy(task.spec.strategy);
      const samplingRate = await this.samplingRate(task);
      const privacy = this.privacyOf(task, samplingRate);
      const aggregators = new Set<string>();
      let aggregated: Float32Array;
      let privacyState = task.privacyState;
      let clippingNorm = task.spec.privacy.clippingNorm;
      if (privacy) {
        // DP-FedAvg: clip each update, sum unweighted, noise the sum over the fixed clients_per_round.
        clippingNorm = privacy.clippingNorm(privacyState);
        const sum = new Float32Array(global.length);
        let count = 0;
        let clipped = 0;
        for await (const u of repository.updates(task.id, roundNumber)) {
          const c = privacy.clip(u.delta, privacyState);
          for (let i = 0; i < sum.length; i++) sum[i]! += c.delta[i]!;
          count++;
          if (c.clipped) clipped++;
          aggregators.add(u.deviceId);
        }
        aggregated = privacy.privatize(sum, task.spec.clientsPerRound, privacyState, this.gaussian);
        privacyState = privacy.afterRound(privacyState, { aggregated: count, clipped, samplingRate }, this.gaussian);
      } else {
        const bound = task.spec.privacy.clippingNorm;
        const clip = (delta: Float32Array): Float32Array => (bound > 0 ? clipToNorm(delta, bound) : delta);
        if (task.spec.mode === 'async') {
          const buffer = algorithms.asyncBuffer(strategy, global.length, { bufferSize: task.spec.asyncBufferSize, maxStaleness: task.spec.maxStaleness });
          for await (const u of repository.updates(task.id, roundNumber)) {
            buffer.add({ deviceId: u.deviceId, sampleCount: u.sampleCount, delta: clip(u.delta), staleness: u.staleness });
            aggregators.add(u.deviceId);
          }
          aggregated = buffer.flush().delta;
        } else {
          const aggregator = strategy.createAggregator(global.length);
          for await (const u of repository.updates(task.id, roundNumber)) {
            aggregator.add({ deviceId: u.deviceId, sampleCount: u.sampleCount, delta: clip(u.delta), staleness: u.staleness });
            aggregators.add(u.deviceId);
          }
          aggregated = aggregator.finish();
        }
      }
      const applied = strategy.apply(global, aggregated, task.strategyState);
      if (!applied.global.every(Number.isFinite))
        throw new DriftlineError('FEDERATED_UPDATE_NOT_FINITE', `round ${roundNumber} aggregated to a head with non-finite values`);
      const stored = await heads.put(encodeHead(unflattenHead(applied.global, shapes)));
      this.headSizes.set(stored.sha256, stored.sizeBytes);
      const spent = privacy?.spent(privacyState) ?? { epsilon: 0, delta: 0 };
      const evaluators = task.spec.mode === 'sync' ? [...aggregators].sort() : [];
      const transition = recordAggregation(
        task,
        roundNumber,
        { headSha256: stored.sha256, strategyState: applied.state, privacyState, clippingNorm, epsilon: spent.epsilon, delta: spent.delta },
        evaluators,
        now,
      );
      return await this.apply(transition, (tx) => tx.dropUpdates(task.id, roundNumber));
    } catch (err) {
      const e = asDriftlineError(err);
      this.options.logger.error({ err, task: task.id, round: roundNumber }, 'federated round aggregation failed');
      const code = (e.code.startsWith('FEDERATED_') ? e.code : 'INTERNAL') as ErrorCode;
      return this.apply(failTask(task, code, `round ${roundNumber}: ${e.message}`, now), (tx) => tx.dropUpdates(task.id, roundNumber));
    }
  }

  /** The federated evaluation is in: judge, register and release through the release port. */
  private async judge(task: FederatedTask): Promise<FederatedTask> {
    const { release, clock, heads, logger } = this.options;
    const now = clock.now();
    const trained = task.rounds.some((r) => r.state === 'done');
    if (!trained)
      return this.save(
        recordOutcome(task, { report: null, version: 0, release: null, state: 'failed', errorCode: 'FEDERATED_NO_QUORUM', reason: 'no round aggregated' }, now),
      );
    if (!release) {
      // No release port wired: the head is kept as an artifact (head_sha256) and no version is made.
      return this.save(
        recordOutcome(
          task,
          {
            report: null,
            version: 0,
            release: null,
            state: 'succeeded',
            reason: `head ${task.headSha256.slice(0, 12)} stored; no release path is wired, no version made`,
          },
          now,
        ),
      );
    }
    const phase = task.evaluation;
    const counts = (sha: string): FederatedEvaluationCounts => toCounts(phase?.heads.find((h) => h.sha256 === sha));
    try {
      const report: EvaluationReport = await release.judge({
        taskId: task.id,
        model: task.spec.model,
        baseVersion: task.spec.baseVersion,
        gates: task.spec.gates,
        candidate: counts(task.headSha256),
        parent: counts(task.baseHeadSha256),
        nowMs: now,
      });
      if (report.verdict !== 'pass')
        return this.save(recordOutcome(task, { report, version: 0, release: null, state: 'rejected', reason: report.reason }, clock.now()));
      const layers = decodeHead(await heads.get(task.headSha256));
      const strategy = task.spec.strategy.name;
      const { version } = await release.register({
        model: task.spec.model,
        baseVersion: task.spec.baseVersion,
        headSha256: task.headSha256,
        layers,
        lineage: {
          taskId: task.id,
          rounds: task.rounds.filter((r) => r.state === 'done').length,
          clientsPerRound: task.spec.clientsPerRound,
          strategy,
          mode: task.spec.mode,
          epsilon: task.epsilon,
          delta: task.delta,
        },
        evaluation: report,
      });
      let released = null;
      if (task.spec.release) {
        const r = await release.release({ taskId: task.id, model: task.spec.model, version, cohortSelector: task.spec.cohortSelector });
        released = { ...r, updatedAtMs: clock.now() };
      }
      logger.info({ task: task.id, version }, 'federated task made a version');
      return this.save(recordOutcome(task, { report, version, release: released, state: 'succeeded', reason: task.reason }, clock.now()));
    } catch (err) {
      const e = asDriftlineError(err);
      logger.error({ err, task: task.id }, 'federated release failed');
      return this.save(
        recordOutcome(task, { report: task.report, version: 0, release: null, state: 'failed', errorCode: e.code, reason: e.message }, clock.now()),
      );
    }
  }

  // ---- effects ----

  private async run(task: FederatedTask, effects: readonly Effect[]): Promise<void> {
    for (const effect of effects) {
      if (effect.kind === 'invite' && effect.purpose === 'train')
        await this.invite(task, effect.round, effect.deviceIds, FederatedInvitation_Kind.KIND_TRAIN, [task.headSha256]);
      else if (effect.kind === 'invite' && effect.purpose === 'evaluate')
        await this.invite(task, effect.round, effect.deviceIds, FederatedInvitation_Kind.KIND_EVALUATE, effect.heads);
      else if (effect.kind === 'cancel') await this.invite(task, effect.round, effect.deviceIds, FederatedInvitation_Kind.KIND_CANCEL, ['']);
      // 'aggregate' and 'judge' are states (round aggregating, task releasing): advance() does them, also after a restart.
    }
  }

  private async invite(
    task: FederatedTask,
    round: number,
    deviceIds: readonly string[],
    kind: FederatedInvitation_Kind,
    shas: readonly string[],
  ): Promise<void> {
    const { invitations, heads, clock, logger } = this.options;
    const now = clock.now();
    const r = task.rounds.find((x) => x.round === round);
    const deadlineMs =
      kind === FederatedInvitation_Kind.KIND_EVALUATE ? (round === 0 ? task.evaluation?.deadlineMs : r?.evaluation?.deadlineMs) : r?.deadlineMs;
    for (const sha of shas) {
      const size = sha ? await this.headSizeOf(sha) : 0;
      for (const deviceId of deviceIds) {
        const invitation: FederatedInvitation = {
          taskId: task.id,
          round,
          kind,
          model: task.spec.model,
          version: task.spec.baseVersion,
          headSha256: sha,
          headSizeBytes: size,
          headArtifactPath: sha ? heads.pathOf(sha) : '',
          localEpochs: task.spec.localEpochs,
          batchSize: task.spec.batchSize,
          learningRate: task.spec.learningRate,
          proximalMu: task.spec.strategy.proximalMu,
          updateCompression: task.spec.updateCompression,
          clippingNorm: task.spec.privacy.mode === 'none' ? task.spec.privacy.clippingNorm : 0,
          issuedAtMs: now,
          deadlineMs: deadlineMs ?? now + task.spec.roundDeadlineMs,
          headVersion: task.headVersion,
          seed: seedOf(task.id, round, deviceId),
        };
        // A device not connected misses it: the round counts it as dropped at its deadline. Not awaited: a
        // report's handling runs inside the broker's delivery of it, and waiting there for our own publish
        // to be delivered stalls the broker (MQTT keepalives time out) until the publish times out.
        void invitations
          .send(deviceId, invitation)
          .catch((err: unknown) => logger.warn({ err, task: task.id, device: deviceId }, 'federated invitation not sent'));
      }
    }
  }

  // ---- helpers ----

  private async apply(transition: Transition, extra?: (tx: FederatedTaskTransaction) => Promise<void>): Promise<FederatedTask> {
    const { task, effects } = transition;
    await this.options.repository.transaction(async (tx) => {
      await tx.update(task);
      await extra?.(tx);
    });
    this.emit(task);
    await this.run(task, effects);
    return task;
  }

  private save(task: FederatedTask): Promise<FederatedTask> {
    return this.apply({ task, effects: [] });
  }

  private emit(task: FederatedTask): void {
    for (const l of this.listeners) l(task);
  }

  private async candidates(task: FederatedTask) {
    return this.options.fleet.candidates(task.spec.model, task.spec.baseVersion, task.spec.cohortSelector);
  }

  private async samplingRate(task: FederatedTask): Promise<number> {
    const eligible = (await this.candidates(task)).length;
    return eligible === 0 ? 1 : Math.min(1, invitedPerRound(task.spec) / eligible);
  }

  private privacyOf(task: FederatedTask, samplingRate: number): RoundPrivacy | undefined {
    return task.spec.privacy.mode === 'central-gaussian' ? this.options.algorithms.privacy(task.spec, samplingRate) : undefined;
  }

  private async headLengthOf(task: FederatedTask): Promise<number> {
    return headLength(decodeHead(await this.options.heads.get(task.headSha256)));
  }

  private async headSizeOf(sha: string): Promise<number> {
    let size = this.headSizes.get(sha);
    if (size === undefined) {
      size = (await this.options.heads.get(sha)).length;
      this.headSizes.set(sha, size);
    }
    return size;
  }

  private async require(id: string): Promise<FederatedTask> {
    const task = await this.options.repository.get(id);
    if (!task) throw new DriftlineError('FEDERATED_TASK_NOT_FOUND', `no federated task ${id}`);
    return task;
  }

  private serialized<T>(work: () => Promise<T>): Promise<T> {
    const run = this.queue.then(work);
    this.queue = run.catch(() => undefined);
    return run;
  }
}

function toCounts(tally: EvaluationTally | undefined): FederatedEvaluationCounts {
  if (!tally) return { devices: 0, samples: 0, correct: 0, loss: 0, perClassSupport: [], perClassCorrect: [] };
  return {
    devices: tally.devices,
    samples: tally.samples,
    correct: tally.correct,
    loss: tally.samples > 0 ? tally.lossSum / tally.samples : 0,
    perClassSupport: [...tally.perClassSupport],
    perClassCorrect: [...tally.perClassCorrect],
  };
}

/** The L2 clip of an update outside DP (privacy.clipping_norm > 0 with mode none). */
function clipToNorm(delta: Float32Array, bound: number): Float32Array {
  let sq = 0;
  for (let i = 0; i < delta.length; i++) sq += delta[i]! * delta[i]!;
  const norm = Math.sqrt(sq);
  if (norm <= bound) return delta;
  const scale = bound / norm;
  const out = new Float32Array(delta.length);
  for (let i = 0; i < delta.length; i++) out[i] = delta[i]! * scale;
  return out;
}

/** A device's shuffling seed for a round: reproducible, different per device and round. */
function seedOf(taskId: string, round: number, deviceId: string): number {
  return createHash('sha256').update(`${taskId}\0${round}\0${deviceId}`).digest().readUInt32BE(0);
}

/** Standard normal draws from crypto randomness (Box–Muller). */
function cryptoGaussian(): () => number {
  return () => {
    const b = randomBytes(8);
    const u1 = (b.readUInt32BE(0) + 1) / 4294967297;
    const u2 = b.readUInt32BE(4) / 4294967296;
    return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  };
}
