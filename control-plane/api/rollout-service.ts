import { z } from 'zod';
import { isActive, parseGate, formatGate, wavesFrom, DEFAULT_GATES } from '../rollout/plan.js';
import type { Actor, RolloutEngine } from '../rollout/engine.js';
import type { Rollout as RolloutRecord } from '../rollout/state-machine.js';
import type { OperatorCommand } from '../rollout/state-machine.js';
import type { Rollout, RolloutServiceServer, RolloutWave } from '../../common/proto/driftline/v1/rollouts.js';
import { assertModelName } from '../../common/ids.js';
import type { Caller, RpcContext } from './rpc.js';
import { serverStreaming, unary, validate } from './rpc.js';

export interface RolloutApiDeps {
  rollouts: RolloutEngine;
  /** How often Watch re-sends a rollout whose device counts changed between transitions. */
  watchIntervalMs: number;
}

const startRequest = z.object({
  version: z.number().int().positive(),
  wavePercents: z.array(z.number()).min(1).max(20),
  bakeSeconds: z
    .number()
    .int()
    .min(0)
    .max(30 * 86_400),
  minDevices: z.number().int().min(0).max(100_000),
  clientRequestId: z.string().max(128),
  gates: z.array(z.string().max(128)).max(20),
});

const requestId = z.string().max(128);

export function rolloutService({ rollouts, watchIntervalMs }: RolloutApiDeps, ctx: RpcContext): RolloutServiceServer {
  const actor = (caller: Caller, clientRequestId: string): Actor => ({
    actor: caller?.id ?? 'anonymous',
    clientRequestId: validate(requestId, clientRequestId),
  });
  const commandRpc = (name: string, cmd: OperatorCommand) =>
    unary(ctx, name, 'operator', async (req: { id: string; clientRequestId: string; reason: string }, caller) =>
      toWire(rollouts, await rollouts.command(req.id, cmd, actor(caller, req.clientRequestId), req.reason.slice(0, 500))),
    );
  return {
    startRollout: unary(ctx, 'StartRollout', 'operator', async (req, caller) => {
      const v = validate(startRequest, req);
      const gates = v.gates.length === 0 ? [...DEFAULT_GATES] : v.gates.length === 1 && v.gates[0] === 'none' ? [] : v.gates.map(parseGate);
      const rollout = await rollouts.start(
        {
          model: assertModelName(req.model),
          version: v.version,
          target: req.target,
          waves: wavesFrom(v.wavePercents, v.bakeSeconds * 1000, Math.max(1, v.minDevices)),
          gates,
          failureLimit: req.failureLimit,
          ...(req.consecutiveErrorLimit > 0 ? { consecutiveErrorLimit: req.consecutiveErrorLimit } : {}),
          ...(req.minInferences > 0 ? { minInferences: req.minInferences } : {}),
          ...(req.intervalSeconds > 0 ? { intervalMs: req.intervalSeconds * 1000 } : {}),
        },
        actor(caller, v.clientRequestId),
        { requireMinDevices: req.requireMinDevices },
      );
      return toWire(rollouts, rollout);
    }),
    getRollout: unary(ctx, 'GetRollout', 'viewer', async (req) => toWire(rollouts, await rollouts.get(req.id))),
    listRollouts: unary(ctx, 'ListRollouts', 'viewer', async (req) => ({
      rollouts: await Promise.all(
        (await rollouts.list({ activeOnly: req.activeOnly, ...(req.model ? { model: req.model } : {}) })).map((r) => toWire(rollouts, r)),
      ),
    })),
    pauseRollout: commandRpc('PauseRollout', 'pause'),
    resumeRollout: commandRpc('ResumeRollout', 'resume'),
    abortRollout: commandRpc('AbortRollout', 'abort'),
    promoteRollout: commandRpc('PromoteRollout', 'promote'),
    getRolloutAudit: unary(ctx, 'GetRolloutAudit', 'viewer', async (req) => ({
      entries: (await rollouts.audit(req.id)).map((e) => ({
        seq: e.seq,
        atMs: e.atMs,
        actor: e.actor,
        clientRequestId: e.clientRequestId,
        action: e.action,
        fromState: e.fromState,
        toState: e.toState,
        wave: e.wave + 1,
        reason: e.reason,
        details: JSON.stringify(e.details),
      })),
    })),
    watchRollout: serverStreaming(ctx, 'WatchRollout', 'viewer', (call) => {
      const id = call.request.id;
      let last = '';
      const write = async (r: RolloutRecord): Promise<void> => {
        const wire = await toWire(rollouts, r);
        if (stopped) return;
        const text = JSON.stringify(wire);
        if (text !== last) {
          last = text;
          call.write(wire);
        }
        if (!isActive(r.state)) stop();
      };
      // One send at a time, in the order the rollouts came: a slow read never reorders the stream.
      let sending: Promise<void> = Promise.resolve();
      const send = (next: RolloutRecord | (() => Promise<RolloutRecord>)): Promise<void> => {
        const run = sending.then(async () => write(typeof next === 'function' ? await next() : next));
        sending = run.catch(() => undefined);
        return run;
      };
      let stopped = false;
      const unsubscribe = rollouts.subscribe((r) => {
        if (r.id === id) void send(r).catch(() => undefined);
      });
      const refresh = setInterval(() => void send(() => rollouts.get(id)).catch(() => undefined), watchIntervalMs);
      const stop = (): void => {
        if (stopped) return;
        stopped = true;
        unsubscribe();
        clearInterval(refresh);
        call.end();
      };
      call.on('cancelled', stop);
      return send(() => rollouts.get(id)).catch((err: unknown) => {
        stopped = true;
        unsubscribe();
        clearInterval(refresh);
        throw err;
      });
    }),
  };
}

export async function toWire(engine: RolloutEngine, r: RolloutRecord): Promise<Rollout> {
  const versions = await engine.versionCounts(r);
  return {
    id: r.id,
    model: r.plan.model,
    version: r.plan.version,
    state: r.state,
    wave: r.wave + 1,
    reason: r.reason,
    target: r.plan.target,
    waves: r.plan.waves.map((w, i): RolloutWave => ({
      percent: w.percent,
      minDevices: w.minDevices,
      bakeSeconds: Math.round(w.bakeMs / 1000),
      devices: r.waveSizes[i] ?? 0,
      status: waveStatus(r, i),
    })),
    gates: r.plan.gates.map(formatGate),
    targetedDevices: r.targets.length,
    incompatible: r.incompatible.map((d) => ({ deviceId: d.deviceId, reason: d.reason })),
    versions,
    baselineVersion: r.baselineVersion,
    lastEvaluation: (r.lastEvaluation?.results ?? []).map((g) => ({
      gate: g.gate,
      verdict: g.verdict,
      value: g.value ?? 0,
      hasValue: g.value !== null,
      threshold: g.threshold,
      detail: g.detail,
    })),
    createdAtMs: r.createdAtMs,
    updatedAtMs: r.updatedAtMs,
    waveStartedAtMs: r.waveStartedAtMs,
    nextEvaluationAtMs: r.nextEvaluationAtMs,
    touchedDevices: r.touched,
    rolledBackDevices: r.rolledBack.length,
    failureLimit: r.plan.failureLimit,
    failures: r.failures,
  };
}

function waveStatus(r: RolloutRecord, i: number): string {
  if (i < r.wave) return 'passed';
  if (i > r.wave) return r.state === 'aborted' ? 'skipped' : 'pending';
  switch (r.state) {
    case 'progressing':
      return 'baking';
    case 'paused':
      return 'paused';
    case 'aborted':
      return 'failed';
    case 'succeeded':
      return 'passed';
    default:
      return 'pending';
  }
}
