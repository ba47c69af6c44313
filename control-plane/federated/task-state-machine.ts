import { createHash } from 'node:crypto';
import type { ErrorCode } from '../../common/errors.js';
import type { FederatedPrivacy, FederatedStrategy } from '../../common/proto/driftline/v1/federated.js';
import type { EvaluationReport } from '../training/evaluation.js';
import type { TrainingRelease } from '../training/job-state-machine.js';

/**
 * A federated task as a pure state machine: every function takes the task and the time and
 * returns the next task and the effects the engine carries out (invite, cancel, aggregate,
 * judge). No timers, no I/O, no numbers crunched: the engine aggregates and tells the machine
 * the outcome; a driver ticks it, tests drive it with a ManualClock.
 *
 *   task:  pending ─► running ─(last round | budget spent)─► evaluating ─► releasing ─► succeeded
 *                       │                                        │                      rejected
 *                       └── no quorum / no clients ─► failed     └── gate fails ─► rejected
 *          any live state ── cancel ─► cancelled
 *
 *   round (sync): selecting ─► training ─(deadline | clients_per_round updates)─► aggregating
 *                   ─► evaluating ─(all answered | deadline)─► done;  training ─(no quorum)─► failed
 *   round (async, FedBuff): training keeps clients_per_round devices busy; every
 *                   async_buffer_size updates aggregate into one round.
 */

export const TASK_STATES = ['pending', 'running', 'evaluating', 'releasing', 'succeeded', 'rejected', 'failed', 'cancelled'] as const;
export type FederatedTaskState = (typeof TASK_STATES)[number];
export const ENDED_TASK_STATES: readonly FederatedTaskState[] = ['succeeded', 'rejected', 'failed', 'cancelled'];
export const isEnded = (state: FederatedTaskState): boolean => ENDED_TASK_STATES.includes(state);

export type RoundState = 'selecting' | 'training' | 'aggregating' | 'evaluating' | 'done' | 'failed';

/** The task's settings, validated (./task-spec.ts). */
export interface FederatedSpec {
  model: string;
  baseVersion: number;
  cohortSelector: string;
  rounds: number;
  clientsPerRound: number;
  minClients: number;
  overSelection: number;
  roundDeadlineMs: number;
  localEpochs: number;
  batchSize: number;
  learningRate: number;
  strategy: FederatedStrategy;
  privacy: FederatedPrivacy;
  mode: 'sync' | 'async';
  asyncBufferSize: number;
  maxStaleness: number;
  updateCompression: string;
  maxUpdateNorm: number;
  /** Normalized evaluation gates ([] judges nothing). */
  gates: string[];
  release: boolean;
}

/** The request as the API took it (what an idempotent replay is compared against). */
export type FederatedRequestSpec = FederatedSpec;

/** Evaluation answers for one head, summed over devices. */
export interface EvaluationTally {
  sha256: string;
  devices: number;
  samples: number;
  correct: number;
  /** Σ loss × samples. */
  lossSum: number;
  perClassSupport: number[];
  perClassCorrect: number[];
}

/** Devices asked to evaluate one or more heads, and what they answered. */
export interface EvaluationPhase {
  invited: string[];
  /** One tally per head asked about (a round: its new head; the task: final, then base). */
  heads: EvaluationTally[];
  /** Answers (accepted or declined) still expected: devices × heads minus those in. */
  pending: number;
  deadlineMs: number;
}

export interface FederatedRound {
  round: number;
  state: RoundState;
  /** The head this round's devices train from. */
  headSha256: string;
  headVersion: number;
  invited: string[];
  /** Devices that answered the training invitation (accepted, refused or declined). */
  answered: string[];
  aggregated: number;
  dropped: number;
  refused: Record<string, number>;
  duplicates: number;
  late: number;
  /** Σ sample count and Σ loss × samples of the aggregated updates. */
  samples: number;
  lossSum: number;
  clippingNorm: number;
  epsilon: number;
  evaluation: EvaluationPhase | null;
  startedAtMs: number;
  deadlineMs: number;
  endedAtMs: number;
  errorCode: string;
  reason: string;
}

export interface FederatedTask {
  id: string;
  spec: FederatedSpec;
  state: FederatedTaskState;
  rounds: FederatedRound[];
  /** The current global head and its version within the task (0: the base head). */
  headSha256: string;
  baseHeadSha256: string;
  headVersion: number;
  /** Strategy and privacy state (JSON), carried round to round. */
  strategyState: Record<string, unknown>;
  privacyState: Record<string, unknown>;
  epsilon: number;
  delta: number;
  /** Async: devices invited and not answered yet (training now); FedBuff keeps clients_per_round of them. */
  outstanding: string[];
  /** The task's federated evaluation (final head vs base head). */
  evaluation: EvaluationPhase | null;
  report: EvaluationReport | null;
  resultVersion: number;
  release: TrainingRelease | null;
  errorCode: string;
  reason: string;
  createdAtMs: number;
  updatedAtMs: number;
  /** Who started it (operator token id). */
  createdBy: string;
}

/** What the engine must do after a transition. */
export type Effect =
  | { kind: 'invite'; purpose: 'train'; round: number; deviceIds: string[] }
  | { kind: 'invite'; purpose: 'evaluate'; round: number; deviceIds: string[]; heads: string[] }
  | { kind: 'cancel'; round: number; deviceIds: string[] }
  /** Close the round's training: aggregate its kept updates into the next head. */
  | { kind: 'aggregate'; round: number }
  /** The federated evaluation is in: judge, register, release. */
  | { kind: 'judge' };

export interface Transition {
  task: FederatedTask;
  effects: Effect[];
}

const same = (task: FederatedTask): Transition => ({ task, effects: [] });

export function createTask(input: { id: string; spec: FederatedSpec; baseHeadSha256: string; createdBy: string; nowMs: number }): FederatedTask {
  return {
    id: input.id,
    spec: input.spec,
    state: 'pending',
    rounds: [],
    headSha256: input.baseHeadSha256,
    baseHeadSha256: input.baseHeadSha256,
    headVersion: 0,
    strategyState: {},
    privacyState: {},
    outstanding: [],
    epsilon: 0,
    delta: 0,
    evaluation: null,
    report: null,
    resultVersion: 0,
    release: null,
    errorCode: '',
    reason: '',
    createdAtMs: input.nowMs,
    updatedAtMs: input.nowMs,
    createdBy: input.createdBy,
  };
}

export interface SelectableDevice {
  deviceId: string;
  online: boolean;
}

/**
 * The devices a round invites: online ones first, each group in a stable hash order of
 * (task, round, device), so a round's cohort is reproducible and different rounds mix the fleet.
 */
export function selectDevices(
  taskId: string,
  round: number,
  devices: readonly SelectableDevice[],
  count: number,
  exclude: ReadonlySet<string> = new Set(),
): string[] {
  const rank = (id: string): string => createHash('sha256').update(`${taskId}\0${round}\0${id}`).digest('hex');
  return devices
    .filter((d) => !exclude.has(d.deviceId))
    .map((d) => ({ id: d.deviceId, online: d.online, rank: rank(d.deviceId) }))
    .sort((a, b) => (a.online === b.online ? (a.rank < b.rank ? -1 : a.rank > b.rank ? 1 : 0) : a.online ? -1 : 1))
    .slice(0, count)
    .map((d) => d.id);
}

/** How many devices a sync round invites: clients_per_round × (1 + over_selection), rounded up. */
export const invitedPerRound = (spec: FederatedSpec): number => Math.ceil(spec.clientsPerRound * (1 + spec.overSelection) - 1e-9);

function newRound(task: FederatedTask, invited: string[], nowMs: number): FederatedRound {
  return {
    round: task.rounds.length + 1,
    state: 'training',
    headSha256: task.headSha256,
    headVersion: task.headVersion,
    invited,
    answered: [],
    aggregated: 0,
    dropped: 0,
    refused: {},
    duplicates: 0,
    late: 0,
    samples: 0,
    lossSum: 0,
    clippingNorm: 0,
    epsilon: 0,
    evaluation: null,
    startedAtMs: nowMs,
    deadlineMs: nowMs + task.spec.roundDeadlineMs,
    endedAtMs: 0,
    errorCode: '',
    reason: '',
  };
}

const withRound = (task: FederatedTask, round: FederatedRound, nowMs: number): FederatedTask => ({
  ...task,
  rounds: task.rounds.map((r) => (r.round === round.round ? round : r)),
  updatedAtMs: nowMs,
});

export const currentRound = (task: FederatedTask): FederatedRound | undefined => task.rounds[task.rounds.length - 1];

function fail(task: FederatedTask, code: ErrorCode, reason: string, nowMs: number): Transition {
  const round = currentRound(task);
  const effects: Effect[] = [];
  let rounds = task.rounds;
  if (round && (round.state === 'training' || round.state === 'evaluating' || round.state === 'aggregating')) {
    const open = round.invited.filter((id) => !round.answered.includes(id));
    if (open.length > 0) effects.push({ kind: 'cancel', round: round.round, deviceIds: open });
    rounds = task.rounds.map((r) => (r === round ? { ...r, state: 'failed', endedAtMs: nowMs, errorCode: code, reason } : r));
  }
  return { task: { ...task, rounds, state: 'failed', errorCode: code, reason, updatedAtMs: nowMs }, effects };
}

/**
 * Starts the next round (sync), or the continuous training of async mode, over the eligible
 * devices. No device at all: the task fails with FEDERATED_NO_CLIENTS.
 */
export function startRound(task: FederatedTask, devices: readonly SelectableDevice[], nowMs: number): Transition {
  if (task.state !== 'pending' && task.state !== 'running') return same(task);
  const number = task.rounds.length + 1;
  const count = task.spec.mode === 'async' ? task.spec.clientsPerRound : invitedPerRound(task.spec);
  // Async keeps devices still training from an earlier aggregation busy: they are not invited twice.
  const busy = task.spec.mode === 'async' ? new Set(asyncBusy(task)) : new Set<string>();
  const invited = selectDevices(task.id, number, devices, Math.max(0, count - busy.size), busy);
  if (invited.length === 0 && busy.size === 0) {
    return fail(
      task,
      'FEDERATED_NO_CLIENTS',
      `no device matching ${JSON.stringify(task.spec.cohortSelector)} serves ${task.spec.model} v${task.spec.baseVersion}`,
      nowMs,
    );
  }
  const round = newRound(task, invited, nowMs);
  const outstanding = task.spec.mode === 'async' ? [...busy, ...invited] : [];
  const next: FederatedTask = { ...task, state: 'running', rounds: [...task.rounds, round], outstanding, updatedAtMs: nowMs };
  return { task: next, effects: invited.length > 0 ? [{ kind: 'invite', purpose: 'train', round: round.round, deviceIds: invited }] : [] };
}

/** Async: devices invited in earlier aggregations that have not answered yet (still training). */
const asyncBusy = (task: FederatedTask): string[] => task.outstanding ?? [];

/**
 * Async: a device answered, so one fewer is training; invite more until clients_per_round are
 * (devices that answered in this round wait for the next one: one answer per device and round).
 */
export function topUpAsync(task: FederatedTask, devices: readonly SelectableDevice[], nowMs: number): Transition {
  const round = currentRound(task);
  if (task.spec.mode !== 'async' || task.state !== 'running' || round?.state !== 'training') return same(task);
  const busy = asyncBusy(task);
  const need = task.spec.clientsPerRound - busy.length;
  if (need <= 0) return same(task);
  const extra = selectDevices(task.id, round.round, devices, need, new Set([...busy, ...round.answered, ...round.invited]));
  if (extra.length === 0) return same(task);
  const next = withRound({ ...task, outstanding: [...busy, ...extra] }, { ...round, invited: [...round.invited, ...extra] }, nowMs);
  return { task: next, effects: [{ kind: 'invite', purpose: 'train', round: round.round, deviceIds: extra }] };
}

/** How a training answer was judged by the engine. */
export type TrainOutcome =
  | { kind: 'accepted'; samples: number; loss: number }
  | { kind: 'refused'; code: string }
  /** The device declined or failed (LEARNER_*): counted as dropped. */
  | { kind: 'declined'; code: string }
  | { kind: 'duplicate' };

/**
 * Where a training answer for `reportRound` from `deviceId` goes: the round it counts in, or
 * why it is not used. Async mode takes answers for any earlier round into the current one.
 */
export function placeTrainReport(
  task: FederatedTask,
  reportRound: number,
  deviceId: string,
): { use: true; round: number } | { use: false; code: ErrorCode; round: number | undefined } {
  const round = task.rounds.find((r) => r.round === reportRound);
  if (!round || !round.invited.includes(deviceId)) return { use: false, code: 'FEDERATED_UPDATE_UNEXPECTED', round: undefined };
  const current = currentRound(task)!;
  if (task.spec.mode === 'async') {
    if (task.state !== 'running' || current.state !== 'training') return { use: false, code: 'FEDERATED_UPDATE_STALE', round: current.round };
    return { use: true, round: current.round };
  }
  if (task.state !== 'running' || round.round !== current.round || round.state !== 'training')
    return { use: false, code: 'FEDERATED_UPDATE_STALE', round: round.round };
  return { use: true, round: round.round };
}

/** Records a training answer in the round it counts in (placeTrainReport's), and closes the round early when it has enough. */
export function recordTrainReport(task: FederatedTask, roundNumber: number, deviceId: string, outcome: TrainOutcome, nowMs: number): Transition {
  const round = task.rounds.find((r) => r.round === roundNumber);
  if (!round) return same(task);
  const next: FederatedRound = { ...round, refused: { ...round.refused } };
  if (outcome.kind === 'duplicate') next.duplicates += 1;
  else {
    if (!next.answered.includes(deviceId)) next.answered = [...next.answered, deviceId];
    // Async: the device answered an earlier invitation; it is part of this round from now.
    if (!next.invited.includes(deviceId)) next.invited = [...next.invited, deviceId];
    if (outcome.kind === 'accepted') {
      next.aggregated += 1;
      next.samples += outcome.samples;
      next.lossSum += outcome.loss * outcome.samples;
    } else if (outcome.kind === 'refused') next.refused[outcome.code] = (next.refused[outcome.code] ?? 0) + 1;
    else next.dropped += 1;
  }
  const outstanding = outcome.kind === 'duplicate' ? task.outstanding : (task.outstanding ?? []).filter((id) => id !== deviceId);
  const updated = withRound({ ...task, outstanding }, next, nowMs);
  return closeIfDue(updated, nowMs);
}

/** Counts an answer that came for a round that no longer takes it (closed, or another task state). */
export function countLate(task: FederatedTask, roundNumber: number, nowMs: number): FederatedTask {
  const round = task.rounds.find((r) => r.round === roundNumber);
  if (!round) return task;
  return withRound(task, { ...round, late: round.late + 1 }, nowMs);
}

export function countDuplicate(task: FederatedTask, roundNumber: number, nowMs: number): FederatedTask {
  const round = task.rounds.find((r) => r.round === roundNumber);
  if (!round) return task;
  return withRound(task, { ...round, duplicates: round.duplicates + 1 }, nowMs);
}

/** Sync: at the deadline, or once clients_per_round updates are in, or every invited device answered. Async: every async_buffer_size updates. */
function closeIfDue(task: FederatedTask, nowMs: number): Transition {
  const round = currentRound(task);
  if (task.state !== 'running' || !round || round.state !== 'training') return same(task);
  const { spec } = task;
  if (spec.mode === 'async') {
    if (round.aggregated >= spec.asyncBufferSize) return toAggregating(task, round, nowMs);
    if (nowMs >= round.deadlineMs) {
      // FedBuff waits for its buffer; a deadline with nothing in it means the fleet went away.
      if (round.aggregated >= Math.max(1, spec.minClients)) return toAggregating(task, round, nowMs);
      return fail(task, 'FEDERATED_NO_QUORUM', `round ${round.round}: ${round.aggregated} update(s) by the deadline, ${spec.minClients} needed`, nowMs);
    }
    return same(task);
  }
  const everyoneAnswered = round.answered.length >= round.invited.length;
  if (round.aggregated >= spec.clientsPerRound || nowMs >= round.deadlineMs || everyoneAnswered) {
    if (round.aggregated < spec.minClients) {
      return fail(
        task,
        'FEDERATED_NO_QUORUM',
        `round ${round.round}: ${round.aggregated} update(s) by the deadline, ${spec.minClients} needed for a quorum`,
        nowMs,
      );
    }
    return toAggregating(task, round, nowMs);
  }
  return same(task);
}

function toAggregating(task: FederatedTask, round: FederatedRound, nowMs: number): Transition {
  // Sync: invited devices that never answered are dropped and told to stop.
  const open = task.spec.mode === 'sync' ? round.invited.filter((id) => !round.answered.includes(id)) : [];
  const next: FederatedRound = { ...round, state: 'aggregating', dropped: round.dropped + open.length };
  const effects: Effect[] = [];
  if (open.length > 0) effects.push({ kind: 'cancel', round: round.round, deviceIds: open });
  effects.push({ kind: 'aggregate', round: round.round });
  return { task: withRound(task, next, nowMs), effects };
}

/**
 * The round's updates are aggregated into the next head: the round evaluates it on the
 * devices that reported (sync), or, async, goes straight on.
 */
export function recordAggregation(
  task: FederatedTask,
  roundNumber: number,
  result: {
    headSha256: string;
    strategyState: Record<string, unknown>;
    privacyState: Record<string, unknown>;
    clippingNorm: number;
    epsilon: number;
    delta: number;
  },
  evaluators: string[],
  nowMs: number,
): Transition {
  const round = task.rounds.find((r) => r.round === roundNumber);
  if (!round || round.state !== 'aggregating') return same(task);
  const headVersion = task.headVersion + 1;
  const base: FederatedTask = {
    ...task,
    headSha256: result.headSha256,
    headVersion,
    strategyState: result.strategyState,
    privacyState: result.privacyState,
    epsilon: result.epsilon,
    delta: result.delta,
  };
  const next: FederatedRound = { ...round, clippingNorm: result.clippingNorm, epsilon: result.epsilon };
  if (evaluators.length === 0) return { task: withRound(base, { ...next, state: 'done', endedAtMs: nowMs }, nowMs), effects: [] };
  next.state = 'evaluating';
  next.evaluation = { invited: evaluators, heads: [emptyTally(result.headSha256)], pending: evaluators.length, deadlineMs: nowMs + task.spec.roundDeadlineMs };
  return {
    task: withRound(base, next, nowMs),
    effects: [{ kind: 'invite', purpose: 'evaluate', round: round.round, deviceIds: evaluators, heads: [result.headSha256] }],
  };
}

export const emptyTally = (sha256: string): EvaluationTally => ({
  sha256,
  devices: 0,
  samples: 0,
  correct: 0,
  lossSum: 0,
  perClassSupport: [],
  perClassCorrect: [],
});

export interface EvaluationAnswer {
  headSha256: string;
  /** Declined (LEARNER_*): counts as answered, adds nothing. */
  declined: boolean;
  samples: number;
  correct: number;
  loss: number;
  perClassSupport: readonly number[];
  perClassCorrect: readonly number[];
}

function addAnswer(phase: EvaluationPhase, answer: EvaluationAnswer): EvaluationPhase | undefined {
  const index = phase.heads.findIndex((h) => h.sha256 === answer.headSha256);
  if (index < 0) return undefined;
  const heads = phase.heads.map((h, i) => {
    if (i !== index || answer.declined) return h;
    const sum = (a: number[], b: readonly number[]): number[] => Array.from({ length: Math.max(a.length, b.length) }, (_, k) => (a[k] ?? 0) + (b[k] ?? 0));
    return {
      ...h,
      devices: h.devices + 1,
      samples: h.samples + answer.samples,
      correct: h.correct + answer.correct,
      lossSum: h.lossSum + answer.loss * answer.samples,
      perClassSupport: sum(h.perClassSupport, answer.perClassSupport),
      perClassCorrect: sum(h.perClassCorrect, answer.perClassCorrect),
    };
  });
  return { ...phase, heads, pending: Math.max(0, phase.pending - 1) };
}

/**
 * An evaluation answer. `roundNumber` 0 is the task's own federated evaluation (final head vs
 * base); otherwise the round's evaluation of its new head. Unknown heads or devices are ignored
 * (the engine counts them); the caller has deduplicated.
 */
export function recordEvaluation(task: FederatedTask, roundNumber: number, deviceId: string, answer: EvaluationAnswer, nowMs: number): Transition {
  if (roundNumber === 0) {
    if (task.state !== 'evaluating' || !task.evaluation || !task.evaluation.invited.includes(deviceId)) return same(task);
    const phase = addAnswer(task.evaluation, answer);
    if (!phase) return same(task);
    return closeTaskEvaluationIfDue({ ...task, evaluation: phase, updatedAtMs: nowMs }, nowMs);
  }
  const round = task.rounds.find((r) => r.round === roundNumber);
  if (!round || round.state !== 'evaluating' || !round.evaluation || !round.evaluation.invited.includes(deviceId)) return same(task);
  const phase = addAnswer(round.evaluation, answer);
  if (!phase) return same(task);
  return closeRoundEvaluationIfDue(withRound(task, { ...round, evaluation: phase }, nowMs), round.round, nowMs);
}

function closeRoundEvaluationIfDue(task: FederatedTask, roundNumber: number, nowMs: number): Transition {
  const round = task.rounds.find((r) => r.round === roundNumber)!;
  const phase = round.evaluation!;
  if (phase.pending > 0 && nowMs < phase.deadlineMs) return same(task);
  return { task: withRound(task, { ...round, state: 'done', endedAtMs: nowMs }, nowMs), effects: [] };
}

function closeTaskEvaluationIfDue(task: FederatedTask, nowMs: number): Transition {
  const phase = task.evaluation!;
  if (phase.pending > 0 && nowMs < phase.deadlineMs) return same(task);
  return { task: { ...task, state: 'releasing', updatedAtMs: nowMs }, effects: [{ kind: 'judge' }] };
}

/** Whether the task trains another round, or goes to its federated evaluation. */
export function roundsLeft(task: FederatedTask): boolean {
  return task.rounds.length < task.spec.rounds;
}

/** The task's federated evaluation: the final head and the base head, on `devices`. No device: judged on nothing. */
export function startTaskEvaluation(task: FederatedTask, devices: string[], nowMs: number, reason = ''): Transition {
  if (task.state !== 'running') return same(task);
  const heads = task.headSha256 === task.baseHeadSha256 ? [task.headSha256] : [task.headSha256, task.baseHeadSha256];
  const phase: EvaluationPhase = {
    invited: devices,
    heads: heads.map(emptyTally),
    pending: devices.length * heads.length,
    deadlineMs: nowMs + task.spec.roundDeadlineMs,
  };
  const next: FederatedTask = { ...task, state: 'evaluating', evaluation: phase, reason, updatedAtMs: nowMs };
  if (devices.length === 0) return { task: { ...next, state: 'releasing' }, effects: [{ kind: 'judge' }] };
  return { task: next, effects: [{ kind: 'invite', purpose: 'evaluate', round: 0, deviceIds: devices, heads }] };
}

/** The timed part: deadlines of training, round evaluation and task evaluation. */
export function tick(task: FederatedTask, nowMs: number): Transition {
  if (task.state === 'running') {
    const round = currentRound(task);
    if (round?.state === 'training') return closeIfDue(task, nowMs);
    if (round?.state === 'evaluating') return closeRoundEvaluationIfDue(task, round.round, nowMs);
  }
  if (task.state === 'evaluating' && task.evaluation) return closeTaskEvaluationIfDue(task, nowMs);
  return same(task);
}

/** The judge's verdict, and the version it became (0: none). */
export function recordOutcome(
  task: FederatedTask,
  outcome: {
    report: EvaluationReport | null;
    version: number;
    release: TrainingRelease | null;
    state: 'succeeded' | 'rejected' | 'failed';
    errorCode?: string;
    reason: string;
  },
  nowMs: number,
): FederatedTask {
  return {
    ...task,
    state: outcome.state,
    report: outcome.report,
    resultVersion: outcome.version,
    release: outcome.release,
    errorCode: outcome.errorCode ?? '',
    reason: outcome.reason || task.reason,
    updatedAtMs: nowMs,
  };
}

export function failTask(task: FederatedTask, code: ErrorCode, reason: string, nowMs: number): Transition {
  return fail(task, code, reason, nowMs);
}

/** Cancelled at once; devices still working on the current round (or the evaluation) are told to stop. */
export function cancel(task: FederatedTask, reason: string, nowMs: number): Transition {
  const effects: Effect[] = [];
  const round = currentRound(task);
  if (round && (round.state === 'training' || round.state === 'aggregating' || round.state === 'evaluating')) {
    const open = round.state === 'evaluating' ? (round.evaluation?.invited ?? []) : round.invited.filter((id) => !round.answered.includes(id));
    if (open.length > 0) effects.push({ kind: 'cancel', round: round.round, deviceIds: open });
  }
  if (task.state === 'evaluating' && task.evaluation) effects.push({ kind: 'cancel', round: 0, deviceIds: task.evaluation.invited });
  const rounds = task.rounds.map((r) =>
    r === round && r.state !== 'done' && r.state !== 'failed' ? { ...r, state: 'failed' as const, endedAtMs: nowMs, errorCode: '', reason: 'cancelled' } : r,
  );
  return { task: { ...task, rounds, state: 'cancelled', reason: reason || 'cancelled', updatedAtMs: nowMs }, effects };
}
