import { DriftlineError } from '../../common/errors.js';
import { cohortOrder, incompatibility, waveSizes, type DeviceFacts, type ModelConstraints } from './cohorts.js';
import { evaluateGates, type CohortStats, type Evaluation, type Observation } from './gates.js';
import { isActive, type RolloutPlan, type RolloutState } from './plan.js';

/**
 * The rollout as a pure state machine: every function takes the rollout and the time and
 * returns the next rollout, the effects the driver must carry out (deploy, roll back) and
 * the audit entries to record. No timers, no I/O: a driver ticks it, tests drive it with a
 * ManualClock.
 *
 *   pending ──start──► progressing(wave 0) ──gates pass──► progressing(wave n+1) … ──► succeeded
 *                        │   ▲                     │
 *          inconclusive/ │   │ resume              │ gates fail beyond failureLimit, abort
 *          pause         ▼   │                     ▼
 *                        paused ───── abort ────► aborted (every touched device rolled back)
 */
export interface Rollout {
  id: string;
  plan: RolloutPlan;
  state: RolloutState;
  /** Index of the current wave; -1 while pending. */
  wave: number;
  reason: string;
  createdAtMs: number;
  updatedAtMs: number;
  waveStartedAtMs: number;
  /** When the gates are next evaluated (the end of the bake, then every interval). */
  nextEvaluationAtMs: number;
  /** Compatible targeted devices in cohort order; wave k covers the first waveSizes[k]. */
  targets: string[];
  waveSizes: number[];
  incompatible: Array<{ deviceId: string; reason: string }>;
  /** The version each target ran when the rollout was planned (0: none): where a rollback returns it. */
  fromVersions: Record<string, number>;
  /** The most common version among the targets at planning time. */
  baselineVersion: number;
  /** Devices sent the new version so far (a prefix of targets). */
  touched: number;
  failures: number;
  consecutiveErrors: number;
  lastEvaluation: Evaluation | null;
  /** The old version's cohort at the last evaluation that had one, for waves where nobody is left on it. */
  baselineSnapshot: CohortStats | null;
  rolledBack: string[];
}

export type Effect =
  | { kind: 'deploy'; wave: number; deviceIds: string[] }
  /** toVersion 0: remove the model from the device's set (it had none before the rollout). */
  | { kind: 'rollback'; devices: Array<{ deviceId: string; toVersion: number }>; reason: string };

export interface AuditEntry {
  action: string;
  fromState: RolloutState;
  toState: RolloutState;
  wave: number;
  reason: string;
  details: Record<string, unknown>;
}

export interface Transition {
  rollout: Rollout;
  effects: Effect[];
  audit: AuditEntry[];
}

export interface PlanningDevice extends DeviceFacts {
  /** Version of the rollout's model the device runs now (0: none or another model). */
  activeVersion: number;
}

/** Plans a rollout: picks the compatible targets, orders them into cohorts, sizes the waves. */
export function createRollout(input: {
  id: string;
  plan: RolloutPlan;
  devices: readonly PlanningDevice[];
  constraints: ModelConstraints;
  nowMs: number;
  /** Refuse when fewer compatible devices than the first wave's minimum are targeted (no canary). */
  requireMinDevices?: boolean;
}): Transition {
  const { id, plan, devices, constraints, nowMs } = input;
  const incompatible: Rollout['incompatible'] = [];
  const compatible: PlanningDevice[] = [];
  for (const device of devices) {
    const why = incompatibility(constraints, device);
    if (why) incompatible.push({ deviceId: device.id, reason: why });
    else compatible.push(device);
  }
  // Devices already on the new version count as targets but need nothing sent.
  if (compatible.length === 0) {
    throw new DriftlineError('ROLLOUT_NO_TARGETS', `no compatible device matches ${JSON.stringify(plan.target)} (${incompatible.length} incompatible)`, {
      details: { incompatible: incompatible.length },
    });
  }
  const minimum = plan.waves[0]!.minDevices;
  if (input.requireMinDevices && compatible.length < minimum) {
    const matching = plan.target ? `matching ${plan.target}` : 'in the fleet';
    throw new DriftlineError(
      'ROLLOUT_MIN_DEVICES_UNMET',
      `--min-devices ${minimum} is more than the ${compatible.length} compatible device(s) ${matching}${incompatible.length ? ` (${incompatible.length} incompatible)` : ''}: the first wave would be every device (no canary); lower --min-devices or widen --target; nothing was started`,
      { details: { minDevices: minimum, compatible: compatible.length, incompatible: incompatible.length } },
    );
  }
  const targets = cohortOrder(
    id,
    compatible.map((d) => d.id),
  );
  const fromVersions = Object.fromEntries(compatible.map((d) => [d.id, d.activeVersion]));
  const rollout: Rollout = {
    id,
    plan,
    state: 'pending',
    wave: -1,
    reason: '',
    createdAtMs: nowMs,
    updatedAtMs: nowMs,
    waveStartedAtMs: 0,
    nextEvaluationAtMs: 0,
    targets,
    waveSizes: waveSizes(id, targets, plan.waves),
    incompatible,
    fromVersions,
    baselineVersion: mostCommon(compatible.map((d) => d.activeVersion).filter((v) => v > 0 && v !== plan.version)),
    touched: 0,
    failures: 0,
    consecutiveErrors: 0,
    lastEvaluation: null,
    baselineSnapshot: null,
    rolledBack: [],
  };
  return {
    rollout,
    effects: [],
    audit: [
      entry(rollout, 'pending', 'create', '', {
        targets: targets.length,
        incompatible: incompatible.length,
        waveSizes: rollout.waveSizes,
        baselineVersion: rollout.baselineVersion,
      }),
    ],
  };
}

/** Devices of the current wave (everything sent the new version so far). */
export const touchedDevices = (r: Rollout): string[] => r.targets.slice(0, r.touched);
/** Devices not yet sent the new version: the baseline the gates compare against. */
export const untouchedDevices = (r: Rollout): string[] => r.targets.slice(r.touched);

/** True when a tick at nowMs would evaluate the gates, so the driver knows to measure first. */
export function dueForEvaluation(r: Rollout, nowMs: number): boolean {
  return r.state === 'progressing' && nowMs >= r.nextEvaluationAtMs;
}

export type Measurement = { ok: true; observation: Observation } | { ok: false; error: string };

/**
 * Advances time: a pending rollout starts its first wave; a progressing one whose bake is over
 * is judged on the measurement the driver took (required when dueForEvaluation).
 */
export function tick(r: Rollout, nowMs: number, measurement?: Measurement): Transition {
  if (r.state === 'pending') return startWave(r, 0, nowMs, 'start', '');
  if (!dueForEvaluation(r, nowMs) || !measurement) return unchanged(r);

  if (!measurement.ok) {
    const consecutiveErrors = r.consecutiveErrors + 1;
    if (consecutiveErrors > r.plan.consecutiveErrorLimit) {
      return abort({ ...r, consecutiveErrors }, nowMs, 'auto-abort', `metrics unavailable ${consecutiveErrors} times in a row: ${measurement.error}`);
    }
    const next = { ...r, consecutiveErrors, nextEvaluationAtMs: nowMs + r.plan.intervalMs, updatedAtMs: nowMs };
    return { rollout: next, effects: [], audit: [entry(next, r.state, 'measurement-error', measurement.error, { consecutiveErrors })] };
  }

  const observation = withBaseline(r, measurement.observation);
  const wave = r.plan.waves[r.wave]!;
  const evaluation = evaluateGates(r.plan.gates, observation, { minDevices: wave.minDevices, minInferences: r.plan.minInferences });
  const judged: Rollout = {
    ...r,
    consecutiveErrors: 0,
    lastEvaluation: evaluation,
    baselineSnapshot: measurement.observation.baseline.inferences > 0 ? measurement.observation.baseline : r.baselineSnapshot,
    updatedAtMs: nowMs,
  };
  const details = { evaluation: evaluation.results, install: observation.install };
  if (evaluation.verdict === 'pass') {
    const passed = entry(judged, 'progressing', 'gates-passed', '', details);
    const next = advance(judged, nowMs, 'advance', '');
    return { ...next, audit: [passed, ...next.audit] };
  }
  if (evaluation.verdict === 'fail') {
    const failures = r.failures + 1;
    if (failures > r.plan.failureLimit) {
      const aborted = abort({ ...judged, failures }, nowMs, 'auto-abort', `wave ${r.wave + 1} failed its gates: ${evaluation.reason}`, details);
      return aborted;
    }
    const next = { ...judged, failures, nextEvaluationAtMs: nowMs + r.plan.intervalMs };
    return { rollout: next, effects: [], audit: [entry(next, r.state, 'gates-failed', evaluation.reason, { ...details, failures })] };
  }
  const paused: Rollout = { ...judged, state: 'paused', reason: `inconclusive: ${evaluation.reason}` };
  return { rollout: paused, effects: [], audit: [entry(paused, r.state, 'auto-pause', paused.reason, details)] };
}

export type OperatorCommand = 'pause' | 'resume' | 'abort' | 'promote';

/** Applies an operator's command; a command that makes no sense in the current state is refused. */
export function command(r: Rollout, cmd: OperatorCommand, nowMs: number, reason = ''): Transition {
  const refuse = (): never => {
    throw new DriftlineError('ROLLOUT_STATE_INVALID', `cannot ${cmd} a rollout that is ${r.state}`, { details: { id: r.id, state: r.state, command: cmd } });
  };
  switch (cmd) {
    case 'pause': {
      if (r.state !== 'progressing' && r.state !== 'pending') refuse();
      const next: Rollout = { ...r, state: 'paused', reason: reason || 'paused by operator', updatedAtMs: nowMs };
      return { rollout: next, effects: [], audit: [entry(next, r.state, 'pause', next.reason, {})] };
    }
    case 'resume': {
      if (r.state !== 'paused') refuse();
      if (r.wave < 0) {
        const next: Rollout = { ...r, state: 'pending', reason: '', updatedAtMs: nowMs };
        return { rollout: next, effects: [], audit: [entry(next, r.state, 'resume', reason, {})] };
      }
      // Judged again at the next tick if the bake is over: data that arrived meanwhile may now suffice.
      const next: Rollout = {
        ...r,
        state: 'progressing',
        reason: '',
        failures: 0,
        nextEvaluationAtMs: Math.max(r.waveStartedAtMs + r.plan.waves[r.wave]!.bakeMs, nowMs),
        updatedAtMs: nowMs,
      };
      return { rollout: next, effects: [], audit: [entry(next, r.state, 'resume', reason, {})] };
    }
    case 'abort':
      if (!isActive(r.state)) refuse();
      return abort(r, nowMs, 'abort', reason || 'aborted by operator');
    case 'promote':
      if (!isActive(r.state)) refuse();
      return advance({ ...r, updatedAtMs: nowMs }, nowMs, 'promote', reason || 'promoted by operator');
  }
}

function advance(r: Rollout, nowMs: number, action: string, reason: string): Transition {
  const nextWave = r.wave + 1;
  if (nextWave >= r.plan.waves.length) {
    const done: Rollout = { ...r, state: 'succeeded', reason: reason || 'every wave passed its gates', updatedAtMs: nowMs };
    return { rollout: done, effects: [], audit: [entry(done, r.state, action === 'advance' ? 'succeed' : action, done.reason, {})] };
  }
  return startWave(r, nextWave, nowMs, action, reason);
}

function startWave(r: Rollout, wave: number, nowMs: number, action: string, reason: string): Transition {
  const size = r.waveSizes[wave]!;
  const deviceIds = r.targets.slice(r.touched, size).filter((id) => r.fromVersions[id] !== r.plan.version);
  const next: Rollout = {
    ...r,
    state: 'progressing',
    wave,
    reason,
    touched: size,
    failures: 0,
    waveStartedAtMs: nowMs,
    nextEvaluationAtMs: nowMs + r.plan.waves[wave]!.bakeMs,
    updatedAtMs: nowMs,
  };
  return {
    rollout: next,
    effects: deviceIds.length > 0 ? [{ kind: 'deploy', wave, deviceIds }] : [],
    audit: [entry(next, r.state, action, reason, { devices: deviceIds, cohort: size, percent: r.plan.waves[wave]!.percent })],
  };
}

function abort(r: Rollout, nowMs: number, action: string, reason: string, details: Record<string, unknown> = {}): Transition {
  const devices = touchedDevices(r)
    .filter((id) => r.fromVersions[id] !== r.plan.version)
    // Back to what each device ran: a device that had no version of this model (it serves others
    // beside it, issue #12) goes back to not having it, toVersion 0, and keeps its other models.
    .map((deviceId) => ({ deviceId, toVersion: r.fromVersions[deviceId] ?? 0 }));
  const next: Rollout = { ...r, state: 'aborted', reason, updatedAtMs: nowMs, rolledBack: devices.map((d) => d.deviceId) };
  return {
    rollout: next,
    effects: devices.length > 0 ? [{ kind: 'rollback', devices, reason }] : [],
    audit: [entry(next, r.state, action, reason, { ...details, rolledBack: next.rolledBack })],
  };
}

/** In the last wave nobody may be left on the old version; then the gates compare with its last snapshot. */
function withBaseline(r: Rollout, obs: Observation): Observation {
  if (obs.baseline.inferences > 0 || !r.baselineSnapshot) return obs;
  return { ...obs, baseline: r.baselineSnapshot };
}

const unchanged = (r: Rollout): Transition => ({ rollout: r, effects: [], audit: [] });

function entry(r: Rollout, fromState: RolloutState, action: string, reason: string, details: Record<string, unknown>): AuditEntry {
  return { action, fromState, toState: r.state, wave: r.wave, reason, details };
}

function mostCommon(values: readonly number[]): number {
  const counts = new Map<number, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  let best = 0;
  let bestCount = 0;
  for (const [v, n] of counts) if (n > bestCount || (n === bestCount && v > best)) [best, bestCount] = [v, n];
  return best;
}
