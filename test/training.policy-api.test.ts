/**
 * Retraining policies over the API: a real control plane on OS-chosen ports and a ManualClock,
 * RetrainingPolicyService through the operator client, and `driftline training policy set|show`
 * as a process. The model has no captured samples: a decision that fires makes no dataset and
 * records start_failed with DATASET_EMPTY (the closed loop itself: test/training.loop*.test.ts).
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createOperatorClient, type OperatorClient } from '../client/operator-client.js';
import { ManualClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { AccessServiceService, Role } from '../common/proto/driftline/v1/fleet.js';
import { RetrainingPolicyServiceService, type RetrainingPolicy } from '../common/proto/driftline/v1/retraining.js';
import { startControlPlane, type ControlPlane } from '../control-plane/server.js';
import { demoModelBytes } from './fixtures/models.js';

const BIN = fileURLToPath(new URL('../bin/driftline.js', import.meta.url));
const MINUTE = 60_000;

const policy = (over: Partial<RetrainingPolicy> = {}): RetrainingPolicy => ({
  model: 'vibration',
  enabled: true,
  onDrift: undefined,
  onSchedule: { cron: '*/5 * * * *' },
  onLabelled: undefined,
  cooldownMs: 6 * 3_600_000,
  minDatasetRows: 0,
  job: {
    trainer: 'ts-dense-head',
    hyperparametersJson: '{"epochs":20}',
    gpus: 1,
    gpuMemoryBytes: 0,
    maxDurationMs: 0,
    gates: ['accuracy-delta>=0.01'],
    dataset: undefined,
  },
  rollout: undefined,
  version: 0,
  updatedAtMs: 0,
  updatedBy: '',
  createdAtMs: 0,
  nextScheduledAtMs: 0,
  ...over,
});

const refusal = (promise: Promise<unknown>) =>
  promise.then(
    () => 'accepted',
    (err: { code: string }) => err.code,
  );

describe('retraining policy API', () => {
  let dir: string;
  let cp: ControlPlane;
  let admin: OperatorClient;
  let viewer: OperatorClient;
  // 2026-01-05T00:00:00Z
  const clock = new ManualClock(Date.UTC(2026, 0, 5));

  function driftline(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      execFile(
        process.execPath,
        [BIN, '--server', cp.addresses.grpc, '--token-file', cp.adminTokenFile, ...args],
        { env: { ...process.env, DRIFTLINE_SERVER: '', DRIFTLINE_TOKEN: '' } },
        (error, stdout, stderr) => resolve({ code: error ? Number(error.code) : 0, stdout, stderr }),
      );
    });
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-policy-api-'));
    cp = await startControlPlane(
      { dataDir: join(dir, 'cp'), grpc: { port: 0 }, http: { port: 0 }, mqtt: { port: 0 }, retraining: { tickInterval: '1m' } },
      { logger: silentLogger(), clock },
    );
    admin = createOperatorClient({ address: cp.addresses.grpc, token: readFileSync(cp.adminTokenFile, 'utf8').trim() });
    await admin.uploadModelBytes(demoModelBytes(1), { name: 'vibration' });
    await admin.uploadModelBytes(demoModelBytes(2), { name: 'pressure' });
    const minted = await admin.service(AccessServiceService).createToken({ name: 'dashboard', role: Role.ROLE_VIEWER });
    viewer = createOperatorClient({ address: cp.addresses.grpc, token: minted.token });
  }, 60_000);

  afterAll(async () => {
    admin?.close();
    viewer?.close();
    await cp?.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });

  it('sets, shows and lists the decisions of a policy through a real server; the schedule fires on the tick and records why no job started', async () => {
    const api = admin.service(RetrainingPolicyServiceService);
    const set = await api.setRetrainingPolicy({ policy: policy() });
    expect(set).toMatchObject({ model: 'vibration', version: 1, onSchedule: { cron: '*/5 * * * *' }, nextScheduledAtMs: Date.UTC(2026, 0, 5, 0, 5) });
    expect(set.updatedBy).not.toBe('');
    // The same policy again is the same version; the job template came back with its defaults.
    expect((await api.setRetrainingPolicy({ policy: policy() })).version).toBe(1);
    expect(set.job).toMatchObject({ trainer: 'ts-dense-head', gpus: 1, maxDurationMs: 2 * 3_600_000, dataset: { labelledOnly: true, replayParent: true } });
    // No rollout section given: the canary defaults, as `rollout start` has them.
    expect(set.rollout).toEqual({ enabled: true, target: '', wavePercents: [1, 10, 50, 100], bakeMs: 600_000, minDevices: 5, gates: [], failureLimit: 0 });

    await clock.advanceAsync(5 * MINUTE);
    await cp.triggerWatcher.idle();
    const read = viewer.service(RetrainingPolicyServiceService);
    expect(await read.getRetrainingPolicy({ model: 'vibration' })).toMatchObject({ version: 1, cooldownMs: 6 * 3_600_000 });
    const { decisions } = await read.listTriggerDecisions({ model: 'vibration', firedOnly: false, pageSize: 0, pageToken: '' });
    expect(decisions).toHaveLength(1);
    expect(decisions[0]).toMatchObject({ trigger: 'schedule', fired: false, reason: 'start_failed', triggerKey: `schedule-${Date.UTC(2026, 0, 5, 0, 5)}` });
    expect(JSON.parse(decisions[0]!.details)).toMatchObject({ code: 'DATASET_EMPTY' });
  });

  it('pages through decisions newest first', async () => {
    // A start that failed leaves no cooldown: the next moments decide again.
    await clock.advanceAsync(10 * MINUTE);
    await cp.triggerWatcher.idle();
    const read = viewer.service(RetrainingPolicyServiceService);
    const first = await read.listTriggerDecisions({ model: 'vibration', firedOnly: false, pageSize: 2, pageToken: '' });
    expect(first.decisions.map((d) => d.triggerKey)).toEqual([`schedule-${Date.UTC(2026, 0, 5, 0, 15)}`, `schedule-${Date.UTC(2026, 0, 5, 0, 10)}`]);
    expect(first.nextPageToken).not.toBe('');
    const second = await read.listTriggerDecisions({ model: 'vibration', firedOnly: false, pageSize: 2, pageToken: first.nextPageToken });
    expect(second.decisions.map((d) => d.triggerKey)).toEqual([`schedule-${Date.UTC(2026, 0, 5, 0, 5)}`]);
    expect(second.nextPageToken).toBe('');
    expect(await refusal(read.listTriggerDecisions({ model: 'vibration', firedOnly: false, pageSize: 2, pageToken: 'abc' }))).toBe('REQUEST_INVALID');
  });

  it('a viewer cannot set a policy (ROLE_INSUFFICIENT); bad policies and unknown models are refused with their codes', async () => {
    expect(await refusal(viewer.service(RetrainingPolicyServiceService).setRetrainingPolicy({ policy: policy() }))).toBe('ROLE_INSUFFICIENT');
    const api = admin.service(RetrainingPolicyServiceService);
    expect(await refusal(api.setRetrainingPolicy({ policy: policy({ onSchedule: { cron: 'every night' } }) }))).toBe('RETRAINING_POLICY_INVALID');
    expect(await refusal(api.setRetrainingPolicy({ policy: policy({ onSchedule: undefined }) }))).toBe('RETRAINING_POLICY_INVALID');
    expect(await refusal(api.setRetrainingPolicy({ policy: policy({ model: 'nope' }) }))).toBe('MODEL_NOT_FOUND');
    expect(await refusal(api.setRetrainingPolicy({ policy: policy({ model: '$SYS' }) }))).toBe('ID_INVALID');
    expect(await refusal(api.getRetrainingPolicy({ model: 'pressure' }))).toBe('RETRAINING_POLICY_NOT_FOUND');
  });

  it('training policy set and show work from the command line, with --json', async () => {
    const set = await driftline(
      'training',
      'policy',
      'set',
      'pressure',
      '--on-drift',
      '--on-schedule',
      '0 3 * * *',
      '--on-labelled',
      '500',
      '--cooldown',
      '6h',
      '--min-rows',
      '200',
      '--trainer',
      'ts-dense-head',
      '--gate',
      'accuracy-delta>=0.01',
      '--param',
      'epochs=30',
      '--param',
      'optimizer=adam',
      '--canary-waves',
      '25,100',
      '--canary-bake',
      '30m',
      '--canary-min-devices',
      '2',
      '--canary-gate',
      'p95-latency-ratio<=1.2',
      '--canary-target',
      'site=plant-3',
    );
    expect(set.stderr).toBe('');
    expect(set.stdout).toMatch(/retraining policy of pressure set \(version 1\)/);
    expect(set.stdout).toMatch(/triggers\s+on drift alert \(any version, every cohort\); on schedule "0 3 \* \* \*" UTC .*; on 500 new labelled samples/);
    expect(set.stdout).toMatch(
      /canary\s+to the drifted cohort within site=plant-3, waves 25,100% \(at least 2 device\(s\)\), bake 30m, gates p95-latency-ratio<=1.2/,
    );

    const shown = JSON.parse((await driftline('--json', 'training', 'policy', 'show', 'pressure')).stdout) as {
      policy: { version: number; minDatasetRows: number; job: { hyperparametersJson: string }; rollout: unknown };
      decisions: unknown[];
    };
    expect(shown.policy).toMatchObject({ version: 1, minDatasetRows: 200 });
    expect(shown.policy.rollout).toMatchObject({ enabled: true, target: 'site=plant-3', wavePercents: [25, 100], bakeMs: 1_800_000, minDevices: 2 });
    expect(JSON.parse(shown.policy.job.hyperparametersJson)).toEqual({ epochs: 30, optimizer: 'adam' });
    expect(shown.decisions).toEqual([]);

    const table = await driftline('training', 'policy', 'show', 'vibration');
    expect(table.stdout).toMatch(/ID\s+AT\s+TRIGGER\s+FIRED\s+REASON\s+JOB\s+DETAILS/);
    expect(table.stdout).toMatch(/schedule-\d+\s+no\s+start_failed\s+-\s+.*code=DATASET_EMPTY/);

    const noCanary = await driftline('training', 'policy', 'set', 'pressure', '--trainer', 'ts-dense-head', '--on-drift', '--no-canary');
    expect(noCanary.stdout).toMatch(/canary\s+off/);
    const badGate = await driftline('training', 'policy', 'set', 'pressure', '--trainer', 'ts-dense-head', '--on-drift', '--canary-gate', 'speed>=1');
    expect(badGate.stderr).toMatch(/^error \[RETRAINING_POLICY_INVALID\]: .*rollout\.gates/);

    const refused = await driftline('training', 'policy', 'set', 'pressure', '--trainer', 'ts-dense-head', '--on-schedule', '0 0 3 * * *');
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/^error \[RETRAINING_POLICY_INVALID\]: /);
    const missing = await driftline('training', 'policy', 'show', 'nothing-here');
    expect(missing.code).toBe(4);
  });
});
