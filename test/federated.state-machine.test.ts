import { describe, expect, it } from 'vitest';
import { parseFederatedSpec } from '../control-plane/federated/task-spec.js';
import {
  cancel,
  createTask,
  invitedPerRound,
  placeTrainReport,
  recordAggregation,
  recordTrainReport,
  selectDevices,
  startRound,
  tick,
  type FederatedTask,
} from '../control-plane/federated/task-state-machine.js';
import { startRequest } from './helpers/federated.js';

const NOW = 1_700_000_000_000;
const fleet = (n: number, online = true) => Array.from({ length: n }, (_, i) => ({ deviceId: `dev-${i}`, online }));

function running(over: Parameters<typeof startRequest>[0] = {}, devices = fleet(10)): FederatedTask {
  const task = createTask({ id: 'fl_test', spec: parseFederatedSpec(startRequest(over)), baseHeadSha256: 'a'.repeat(64), createdBy: 'tok', nowMs: NOW });
  return startRound(task, devices, NOW).task;
}

describe('federated state machine', () => {
  it('selection - invites clients_per_round × (1 + over_selection), the same devices for the same (task, round), online ones first', () => {
    const spec = parseFederatedSpec(startRequest({ clientsPerRound: 4, minClients: 2, overSelection: 0.3 }));
    expect(invitedPerRound(spec)).toBe(6);
    const devices = [...fleet(6, false), { deviceId: 'on-1', online: true }, { deviceId: 'on-2', online: true }];
    const picked = selectDevices('fl_x', 1, devices, 3);
    expect(picked.slice(0, 2).sort()).toEqual(['on-1', 'on-2']);
    expect(selectDevices('fl_x', 1, [...devices].reverse(), 3)).toEqual(picked);
    const everyRound = new Set([1, 2, 3, 4, 5].map((r) => selectDevices('fl_x', r, fleet(20), 3).join()));
    expect(everyRound.size).toBeGreaterThan(1);
  });

  it('start - a task with no eligible device fails with FEDERATED_NO_CLIENTS', () => {
    const task = createTask({ id: 'fl_test', spec: parseFederatedSpec(startRequest()), baseHeadSha256: 'a'.repeat(64), createdBy: 'tok', nowMs: NOW });
    const t = startRound(task, [], NOW);
    expect(t.task).toMatchObject({ state: 'failed', errorCode: 'FEDERATED_NO_CLIENTS' });
    expect(t.effects).toEqual([]);
  });

  it('training - closes early once clients_per_round updates are in, dropping and cancelling the rest', () => {
    let task = running({ clientsPerRound: 2, minClients: 1, overSelection: 1 });
    const invited = task.rounds[0]!.invited;
    expect(invited).toHaveLength(4);
    task = recordTrainReport(task, 1, invited[0]!, { kind: 'accepted', samples: 5, loss: 1 }, NOW + 1).task;
    const closed = recordTrainReport(task, 1, invited[1]!, { kind: 'accepted', samples: 5, loss: 1 }, NOW + 2);
    expect(closed.task.rounds[0]).toMatchObject({ state: 'aggregating', aggregated: 2, dropped: 2 });
    expect(closed.effects).toEqual([
      { kind: 'cancel', round: 1, deviceIds: invited.slice(2) },
      { kind: 'aggregate', round: 1 },
    ]);
    expect(placeTrainReport(closed.task, 1, invited[2]!)).toEqual({ use: false, code: 'FEDERATED_UPDATE_STALE', round: 1 });
    expect(placeTrainReport(closed.task, 1, 'stranger')).toMatchObject({ use: false, code: 'FEDERATED_UPDATE_UNEXPECTED' });
  });

  it('deadline - before it nothing happens; at it, the quorum decides between aggregating and failing', () => {
    const task = running({ clientsPerRound: 3, minClients: 2 });
    const [a, b] = task.rounds[0]!.invited;
    const one = recordTrainReport(task, 1, a!, { kind: 'accepted', samples: 5, loss: 1 }, NOW + 1).task;
    expect(tick(one, NOW + 59_999).task.state).toBe('running');
    expect(tick(one, NOW + 60_000).task).toMatchObject({ state: 'failed', errorCode: 'FEDERATED_NO_QUORUM' });
    const two = recordTrainReport(one, 1, b!, { kind: 'accepted', samples: 5, loss: 1 }, NOW + 2).task;
    expect(tick(two, NOW + 60_000).task.rounds[0]!.state).toBe('aggregating');
  });

  it('rounds - after the aggregation the round evaluates its head on the reporters; the last round leads to the task evaluation', () => {
    let task = running({ rounds: 1, clientsPerRound: 1, minClients: 1 });
    const [a] = task.rounds[0]!.invited;
    task = recordTrainReport(task, 1, a!, { kind: 'accepted', samples: 5, loss: 1 }, NOW + 1).task;
    const aggregated = recordAggregation(
      task,
      1,
      { headSha256: 'b'.repeat(64), strategyState: {}, privacyState: {}, clippingNorm: 0, epsilon: 0, delta: 0 },
      [a!],
      NOW + 2,
    );
    expect(aggregated.task).toMatchObject({ headSha256: 'b'.repeat(64), headVersion: 1 });
    expect(aggregated.effects).toEqual([{ kind: 'invite', purpose: 'evaluate', round: 1, deviceIds: [a], heads: ['b'.repeat(64)] }]);
    // Nobody answers the evaluation: its deadline closes the round.
    expect(tick(aggregated.task, NOW + 2 + 60_000).task.rounds[0]!.state).toBe('done');
  });

  it('cancel - cancels a running task and tells the devices still training', () => {
    const task = running({ clientsPerRound: 2, minClients: 1 });
    const t = cancel(task, 'stop', NOW + 5);
    expect(t.task.state).toBe('cancelled');
    expect(t.effects).toEqual([{ kind: 'cancel', round: 1, deviceIds: task.rounds[0]!.invited }]);
  });
});
