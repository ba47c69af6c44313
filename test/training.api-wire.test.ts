/**
 * A training job's trigger (its lineage) and release (the canary after the gate) on the wire:
 * jobToWire maps them, protobuf carries them (fields 24 and 25, unset for an operator's job),
 * `--json` prints them, and `driftline training status` / `list` render them.
 */
import { describe, expect, it } from 'vitest';
import { releaseText, triggerShort, triggerText } from '../cli/commands/training.js';
import { TrainingJob as WireJob } from '../common/proto/driftline/v1/learning.js';
import { jobToWire } from '../control-plane/api/training-service.js';
import { createJob, type TrainingJob, type TrainingJobSpec, type TrainingRelease, type TrainingTrigger } from '../control-plane/training/job-state-machine.js';

const SPEC: TrainingJobSpec = {
  model: 'vibration',
  baseVersion: 1,
  datasetId: 'a'.repeat(64),
  trainer: 'ts-dense-head',
  hyperparametersJson: '{}',
  resources: { gpus: 0, gpuMemoryBytes: 0, cpu: 0, memoryBytes: 0 },
  maxDurationMs: 3_600_000,
  maxAttempts: 3,
  gates: ['accuracy-delta>=0.05'],
};
const TRIGGER: TrainingTrigger = {
  kind: 'drift',
  key: 'drift-12',
  clientRequestId: 'retrain/vibration/drift-12',
  policyVersion: 3,
  driftEventId: 12,
  cohort: 'plant-2',
  cohortSelector: 'cohort=plant-2',
  datasetSelector: 'site=eu,cohort=plant-2',
  replayedDatasetId: 'b'.repeat(64),
};

function job(over: { trigger?: TrainingTrigger; release?: Partial<TrainingRelease> } = {}): TrainingJob {
  const spec = over.trigger ? { ...SPEC, trigger: over.trigger } : SPEC;
  const created = createJob({ id: 'tj_1', spec, nowMs: 1_000 }).job;
  return {
    ...created,
    state: 'succeeded',
    resultVersion: 2,
    ...(over.release
      ? {
          release: {
            state: 'rolling-out',
            version: 2,
            audience: 'cohort=plant-2',
            rolloutId: 'ro_7',
            reason: '',
            errorCode: '',
            updatedAtMs: 2_000,
            ...over.release,
          },
        }
      : {}),
  };
}

const roundTrip = (j: TrainingJob) => WireJob.decode(WireJob.encode(jobToWire(j)).finish());

describe('training jobs on the wire - trigger and release', () => {
  it('carries a triggered job’s trigger and release through protobuf and into --json', () => {
    const wire = roundTrip(job({ trigger: TRIGGER, release: {} }));
    expect(wire.trigger).toEqual(TRIGGER);
    expect(wire.release).toEqual({
      state: 'rolling-out',
      version: 2,
      audience: 'cohort=plant-2',
      rolloutId: 'ro_7',
      reason: '',
      errorCode: '',
      updatedAtMs: 2_000,
    });
    const json = WireJob.toJSON(wire) as Record<string, unknown>;
    expect(json.trigger).toMatchObject({ kind: 'drift', cohort: 'plant-2', driftEventId: 12, policyVersion: 3, clientRequestId: 'retrain/vibration/drift-12' });
    expect(json.release).toMatchObject({ state: 'rolling-out', rolloutId: 'ro_7', version: 2 });
  });

  it('leaves both unset for an operator’s job (and an older reader just skips the new fields)', () => {
    const wire = roundTrip(job());
    expect(wire.trigger).toBeUndefined();
    expect(wire.release).toBeUndefined();
    const json = WireJob.toJSON(wire) as Record<string, unknown>;
    expect(json).not.toHaveProperty('trigger');
    expect(json).not.toHaveProperty('release');
    expect(triggerShort(wire)).toBe('-');
  });

  it('renders the trigger row and the TRIGGER column', () => {
    expect(triggerText(roundTrip(job({ trigger: TRIGGER })))).toBe('drift alert on cohort plant-2 (event 12, policy v3); replays bbbbbbbbbbbb');
    expect(triggerShort(roundTrip(job({ trigger: TRIGGER })))).toBe('drift plant-2');
    const fleet = { ...TRIGGER, cohort: '', cohortSelector: '', replayedDatasetId: '' };
    expect(triggerText(roundTrip(job({ trigger: fleet })))).toBe('drift alert on the fleet (event 12, policy v3)');
    expect(triggerShort(roundTrip(job({ trigger: fleet })))).toBe('drift');
    const scheduled = { ...fleet, kind: 'schedule' as const, key: 'schedule-1', driftEventId: 0 };
    expect(triggerText(roundTrip(job({ trigger: scheduled })))).toBe('schedule (policy v3)');
    const labelled = { ...fleet, kind: 'labelled' as const, key: 'labelled-1', driftEventId: 0, policyVersion: 1 };
    expect(triggerText(roundTrip(job({ trigger: labelled })))).toBe('new labelled samples (policy v1)');
  });

  it('renders the release row in each state', () => {
    const text = (release: Partial<TrainingRelease>) => releaseText(roundTrip(job({ trigger: TRIGGER, release })));
    expect(text({})).toBe('rolling out to cohort=plant-2 (rollout ro_7)');
    expect(text({ state: 'awaiting-signature', rolloutId: '', reason: 'sign it: driftline models sign vibration 2' })).toBe(
      'awaiting signature: driftline models sign vibration 2 (canary to cohort=plant-2)',
    );
    expect(text({ state: 'succeeded' })).toBe('rolled out to cohort=plant-2 (rollout ro_7)');
    expect(text({ state: 'aborted', reason: 'gate error-rate-delta<=0.05 failed in wave 1' })).toBe(
      'aborted: gate error-rate-delta<=0.05 failed in wave 1 (rollout ro_7)',
    );
    expect(text({ state: 'failed', rolloutId: '', errorCode: 'ROLLOUT_NO_TARGETS', reason: 'no device matches cohort=plant-2' })).toBe(
      'failed: ROLLOUT_NO_TARGETS: no device matches cohort=plant-2',
    );
    expect(text({ state: 'skipped', rolloutId: '', reason: 'the policy has no rollout' })).toBe('skipped: the policy has no rollout');
  });
});
