/**
 * Training over the real gRPC API, the edges: who may call what (worker tokens and operator
 * tokens never reach each other's calls), a candidate upload over the cap or lying about itself
 * refused with a stable code and nothing stored, a cancel heard at the worker's next heartbeat,
 * an expired lease re-queued by the sweep, watch streams ended by shutdown, and the token
 * table of an older store migrated to take the worker role.
 */
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccessServiceService, DeviceServiceService, Role } from '../common/proto/driftline/v1/fleet.js';
import { TrainingServiceService, WorkerServiceService, type StartTrainingJobRequest, type TrainingJobUpdate } from '../common/proto/driftline/v1/learning.js';
import { openDatabase } from '../control-plane/store/sqlite/database.js';
import { SqliteOperatorTokenRepository } from '../control-plane/store/sqlite/operator-token-repository.js';
import { refusalOf } from './helpers/grpc-calls.js';
import { chunksOf, drifted, sha256, startTrainingApi, workerRegistration, type TrainingApiRig } from './helpers/training-api.js';

const CAP = 64 * 1024;
const LEASE_TTL_MS = 30_000;

describe('training API - access, bounds, cancel, lease expiry and shutdown', () => {
  let dir: string;
  let rig: TrainingApiRig;
  let datasetId: string;
  let request: (over?: Partial<StartTrainingJobRequest>) => StartTrainingJobRequest;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-training-access-'));
    rig = await startTrainingApi(dir, { training: { maxCandidateBytes: CAP, leaseTtl: LEASE_TTL_MS, sweepInterval: '1h' } });
    datasetId = (await drifted(rig, { rows: 60 })).id;
    request = (over = {}) => ({
      model: 'vibration',
      baseVersion: 1,
      clientRequestId: '',
      datasetId,
      trainer: 'typescript',
      hyperparametersJson: '{}',
      resources: undefined,
      maxDurationSeconds: 0,
      maxAttempts: 0,
      gates: [],
      ...over,
    });
  });

  afterAll(async () => {
    await rig?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** A job started by the operator and leased by the first worker token. */
  async function leasedJob(over: Partial<StartTrainingJobRequest> = {}) {
    const job = await rig.operator.service(TrainingServiceService).startTrainingJob(request(over));
    const worker = rig.worker.service(WorkerServiceService);
    const { workerId } = await worker.registerWorker(workerRegistration('cpu-box-1'));
    const { lease } = await worker.leaseTrainingJob({ workerId });
    expect(lease?.jobId).toBe(job.id);
    return { job, lease: lease!, workerId };
  }

  const cancel = (id: string) => rig.operator.service(TrainingServiceService).cancelTrainingJob({ id, clientRequestId: '', reason: 'test done' });

  it('checks roles: viewers read, operators start and cancel, only worker tokens call WorkerService, and worker tokens call nothing else', async () => {
    const denied = { status: status.PERMISSION_DENIED, code: 'ROLE_INSUFFICIENT' };
    expect(await refusalOf(rig.viewer.service(TrainingServiceService).startTrainingJob(request()))).toEqual(denied);
    const job = await rig.operator.service(TrainingServiceService).startTrainingJob(request());
    expect(await refusalOf(rig.viewer.service(TrainingServiceService).cancelTrainingJob({ id: job.id, clientRequestId: '', reason: '' }))).toEqual(denied);
    expect((await rig.viewer.service(TrainingServiceService).getTrainingJob({ id: job.id })).state).toBe('queued');

    // Operator tokens, admin included, are not workers.
    for (const client of [rig.operator, rig.admin, rig.viewer]) {
      expect(await refusalOf(client.service(WorkerServiceService).registerWorker(workerRegistration('intruder')))).toEqual(denied);
      expect(await refusalOf(client.service(WorkerServiceService).leaseTrainingJob({ workerId: 'tw_x' }))).toEqual(denied);
    }
    // A worker token reaches no operator call: not the fleet, not the jobs, not the tokens, not /metrics.
    expect(await refusalOf(rig.worker.service(DeviceServiceService).listDevices({ selector: '', includeDecommissioned: false }))).toEqual(denied);
    expect(await refusalOf(rig.worker.service(TrainingServiceService).getTrainingJob({ id: job.id }))).toEqual(denied);
    expect(await refusalOf(rig.worker.service(TrainingServiceService).startTrainingJob(request()))).toEqual(denied);
    expect(await refusalOf(rig.worker.service(AccessServiceService).listTokens({}))).toEqual(denied);
    const metrics = (token: string) => fetch(`${rig.cp.addresses.http}/metrics`, { headers: { authorization: `Bearer ${token}` } });
    expect((await metrics(rig.tokens.worker)).status).toBe(401);
    expect((await metrics(rig.tokens.viewer)).status).toBe(200);

    // `tokens list` shows the role.
    const tokens = await rig.admin.service(AccessServiceService).listTokens({});
    expect(tokens.tokens.filter((t) => t.role === Role.ROLE_WORKER).map((t) => t.name)).toEqual(['gpu-host-1', 'gpu-host-2']);

    // A worker is bound to the token that registered it.
    const mine = rig.worker.service(WorkerServiceService);
    const theirs = rig.otherWorker.service(WorkerServiceService);
    const { workerId } = await mine.registerWorker(workerRegistration('cpu-box-1'));
    expect(await refusalOf(theirs.leaseTrainingJob({ workerId }))).toEqual({ status: status.NOT_FOUND, code: 'TRAINING_WORKER_NOT_FOUND' });
    const { lease } = await mine.leaseTrainingJob({ workerId });
    expect(lease?.jobId).toBe(job.id);
    const lost = { status: status.FAILED_PRECONDITION, code: 'TRAINING_LEASE_LOST' };
    expect(await refusalOf(theirs.heartbeatTrainingJob({ leaseId: lease!.leaseId, progress: undefined, logLines: [] }))).toEqual(lost);
    expect(await refusalOf(drain(theirs.downloadArtifact({ leaseId: lease!.leaseId, sha256: lease!.baseModel!.sha256 })))).toEqual(lost);
    // Only what the lease names is downloadable.
    expect(await refusalOf(drain(mine.downloadArtifact({ leaseId: lease!.leaseId, sha256: 'a'.repeat(64) })))).toEqual({
      status: status.PERMISSION_DENIED,
      code: 'ARTIFACT_FORBIDDEN',
    });
    await cancel(job.id);
  });

  it('refuses bad requests with stable codes', async () => {
    const training = rig.operator.service(TrainingServiceService);
    const invalid = { status: status.INVALID_ARGUMENT, code: 'REQUEST_INVALID' };
    expect(await refusalOf(training.startTrainingJob(request({ datasetId: 'not-a-hash' })))).toEqual(invalid);
    expect(await refusalOf(training.startTrainingJob(request({ baseVersion: 0 })))).toEqual(invalid);
    expect(await refusalOf(training.startTrainingJob(request({ hyperparametersJson: '[1]' })))).toEqual(invalid);
    expect(await refusalOf(training.startTrainingJob(request({ gates: ['p95-latency-ratio<=2'] })))).toEqual(invalid);
    expect(await refusalOf(training.startTrainingJob(request({ datasetId: 'f'.repeat(64) })))).toEqual({ status: status.NOT_FOUND, code: 'DATASET_NOT_FOUND' });
    expect(await refusalOf(training.startTrainingJob(request({ baseVersion: 7 })))).toEqual({ status: status.NOT_FOUND, code: 'MODEL_NOT_FOUND' });
    expect(await refusalOf(training.getTrainingJob({ id: 'tj_nope' }))).toEqual({ status: status.NOT_FOUND, code: 'TRAINING_JOB_NOT_FOUND' });
    expect(await refusalOf(training.listTrainingJobs({ model: '', state: '', pageSize: 5000, pageToken: '' }))).toEqual(invalid);
    expect(await refusalOf(training.listTrainingJobs({ model: '', state: 'sleeping', pageSize: 0, pageToken: '' }))).toEqual(invalid);
    expect(await refusalOf(training.listTrainingJobs({ model: '', state: '', pageSize: 0, pageToken: 'forged' }))).toEqual(invalid);
    expect(await refusalOf(drain(rig.viewer.service(TrainingServiceService).watchTrainingJob({ id: 'tj_nope' })))).toEqual({
      status: status.NOT_FOUND,
      code: 'TRAINING_JOB_NOT_FOUND',
    });

    const { job, lease } = await leasedJob();
    const worker = rig.worker.service(WorkerServiceService);
    expect(
      await refusalOf(
        worker.heartbeatTrainingJob({ leaseId: lease.leaseId, progress: { epoch: 1, loss: 0, hasLoss: false, metrics: { acc: NaN } }, logLines: [] }),
      ),
    ).toEqual(invalid);
    expect(await refusalOf(worker.failTrainingAttempt({ leaseId: lease.leaseId, errorCode: 'crashed!', message: '' }))).toEqual(invalid);
    expect(await refusalOf(worker.completeTrainingAttempt({ leaseId: lease.leaseId, candidateId: 'tc_none', metrics: {} }))).toEqual({
      status: status.NOT_FOUND,
      code: 'TRAINING_CANDIDATE_NOT_FOUND',
    });
    // Repeated cancels are idempotent per request id; cancelling an ended job is refused.
    const cancelled = await rig.operator.service(TrainingServiceService).cancelTrainingJob({ id: job.id, clientRequestId: 'c-1', reason: 'wrong data' });
    expect(cancelled).toMatchObject({ state: 'cancelled', cancelReason: 'wrong data' });
    expect((await rig.operator.service(TrainingServiceService).cancelTrainingJob({ id: job.id, clientRequestId: 'c-1', reason: 'wrong data' })).state).toBe(
      'cancelled',
    );
    expect(await refusalOf(cancel(job.id))).toEqual({ status: status.FAILED_PRECONDITION, code: 'TRAINING_STATE_INVALID' });
  });

  it('refuses a candidate over the upload cap (PAYLOAD_TOO_LARGE), longer or shorter than declared (UPLOAD_INCOMPLETE) or with another sha256 (MODEL_CHECKSUM_MISMATCH), and stores nothing', async () => {
    const { job, lease } = await leasedJob();
    const big = Buffer.alloc(CAP + 1, 7);
    const small = Buffer.alloc(1000, 3);
    const upload = (header: { sizeBytes: number; sha256: string }, bytes: Uint8Array) =>
      refusalOf(rig.worker.uploadCandidate({ leaseId: lease.leaseId, ...header }, chunksOf(bytes, 4096)));

    expect(await upload({ sizeBytes: big.length, sha256: sha256(big) }, big)).toEqual({ status: status.RESOURCE_EXHAUSTED, code: 'PAYLOAD_TOO_LARGE' });
    // A header that declares less than it sends is cut off at the declared size.
    expect(await upload({ sizeBytes: small.length, sha256: sha256(big) }, big)).toEqual({ status: status.INVALID_ARGUMENT, code: 'UPLOAD_INCOMPLETE' });
    expect(await upload({ sizeBytes: small.length + 10, sha256: sha256(small) }, small)).toEqual({
      status: status.INVALID_ARGUMENT,
      code: 'UPLOAD_INCOMPLETE',
    });
    expect(await upload({ sizeBytes: small.length, sha256: sha256(big) }, small)).toEqual({ status: status.INVALID_ARGUMENT, code: 'MODEL_CHECKSUM_MISMATCH' });
    // Another worker token cannot upload under this lease.
    expect(await refusalOf(rig.otherWorker.uploadCandidate({ leaseId: lease.leaseId, sizeBytes: small.length, sha256: sha256(small) }, [small]))).toEqual({
      status: status.FAILED_PRECONDITION,
      code: 'TRAINING_LEASE_LOST',
    });

    const artifacts = join(dir, 'cp', 'artifacts');
    for (const bytes of [big, small]) expect(existsSync(join(artifacts, 'sha256', sha256(bytes).slice(0, 2), sha256(bytes)))).toBe(false);
    expect(readdirSync(join(artifacts, 'tmp'))).toEqual([]);
    // The lease still holds: a good upload afterwards is taken.
    const ok = await rig.worker.uploadCandidate({ leaseId: lease.leaseId, sizeBytes: small.length, sha256: sha256(small) }, [small]);
    expect(ok).toMatchObject({ sha256: sha256(small), sizeBytes: small.length });
    expect((await rig.viewer.service(TrainingServiceService).getTrainingJob({ id: job.id })).candidate).toBeUndefined();
    await cancel(job.id);
  });

  it('a job cancelled while leased tells its worker to stop at the next heartbeat; the worker failing it afterwards changes nothing', async () => {
    const { job, lease } = await leasedJob();
    const worker = rig.worker.service(WorkerServiceService);
    expect((await worker.heartbeatTrainingJob({ leaseId: lease.leaseId, progress: undefined, logLines: ['epoch 1'] })).cancel).toBe(false);
    expect(await cancel(job.id)).toMatchObject({ state: 'cancelled', cancelReason: 'test done' });
    expect(await worker.heartbeatTrainingJob({ leaseId: lease.leaseId, progress: undefined, logLines: ['epoch 2'] })).toMatchObject({ cancel: true });
    const failed = await worker.failTrainingAttempt({ leaseId: lease.leaseId, errorCode: 'TRAINER_CANCELLED', message: 'stopped' });
    expect(failed.job).toMatchObject({ id: job.id, state: 'cancelled' });
    // Nothing more to lease: the cancelled job is not queued again.
    const { workerId } = await worker.registerWorker(workerRegistration('cpu-box-1'));
    expect((await worker.leaseTrainingJob({ workerId })).lease).toBeUndefined();
  });

  it('a lease not heartbeated within its ttl expires by the clock: the sweep re-queues the job for its next attempt, and the old lease is lost', async () => {
    const { job, lease, workerId } = await leasedJob({ maxAttempts: 2 });
    const worker = rig.worker.service(WorkerServiceService);
    await rig.clock.advanceAsync(LEASE_TTL_MS + 1);
    await rig.cp.training.sweep();
    const requeued = await rig.viewer.service(TrainingServiceService).getTrainingJob({ id: job.id });
    expect(requeued).toMatchObject({ state: 'queued', attempt: 2, errorCode: 'TRAINING_LEASE_LOST', workerId: '' });
    expect(await refusalOf(worker.heartbeatTrainingJob({ leaseId: lease.leaseId, progress: undefined, logLines: [] }))).toEqual({
      status: status.FAILED_PRECONDITION,
      code: 'TRAINING_LEASE_LOST',
    });
    // Another worker token's worker takes the second attempt.
    const other = rig.otherWorker.service(WorkerServiceService);
    const registered = await other.registerWorker(workerRegistration('cpu-box-2'));
    const again = (await other.leaseTrainingJob({ workerId: registered.workerId })).lease!;
    expect(again).toMatchObject({ jobId: job.id, attempt: 2 });
    expect(again.leaseId).not.toBe(lease.leaseId);
    expect((await worker.leaseTrainingJob({ workerId })).lease).toBeUndefined();
    // The last attempt expiring too fails the job.
    await rig.clock.advanceAsync(LEASE_TTL_MS + 1);
    await rig.cp.training.sweep();
    expect(await rig.viewer.service(TrainingServiceService).getTrainingJob({ id: job.id })).toMatchObject({
      state: 'failed',
      errorCode: 'TRAINING_ATTEMPTS_EXHAUSTED',
    });
  });

  it('shutdown ends an open watch stream (the watcher sees it end, not an error)', async () => {
    const job = await rig.operator.service(TrainingServiceService).startTrainingJob(request());
    const updates: TrainingJobUpdate[] = [];
    let first!: () => void;
    const firstSeen = new Promise<void>((resolve) => (first = resolve));
    const watching = (async () => {
      for await (const update of rig.viewer.service(TrainingServiceService).watchTrainingJob({ id: job.id })) {
        updates.push(update);
        first();
      }
      return 'ended';
    })();
    await firstSeen;
    await rig.cp.shutdown();
    expect(await watching).toBe('ended');
    expect(updates.map((u) => u.job!.state)).toEqual(['queued']);
  });
});

describe('operator tokens - an older store takes the worker role', () => {
  it('rebuilds the table with every token kept, then stores worker tokens and still refuses an unknown role', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'driftline-tokens-migration-'));
    try {
      const file = join(dir, 'control-plane.db');
      const old = openDatabase(file);
      // The table as version 1 of the module left it, with a token in it.
      old.exec(`CREATE TABLE schema_migrations (module TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (module, version));
        INSERT INTO schema_migrations VALUES ('operator_tokens', 1);
        CREATE TABLE operator_tokens (id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
          token_hash TEXT NOT NULL UNIQUE, created_at_ms INTEGER NOT NULL, revoked_at_ms INTEGER);
        INSERT INTO operator_tokens VALUES ('tok_a', 'bootstrap-admin', 'admin', '${'a'.repeat(64)}', 1, NULL), ('tok_b', 'old', 'viewer', '${'b'.repeat(64)}', 2, 3);`);
      expect(() => old.prepare(`INSERT INTO operator_tokens VALUES ('tok_w', 'w', 'worker', '${'c'.repeat(64)}', 4, NULL)`).run()).toThrow(/CHECK/);
      old.close();

      const db = openDatabase(file);
      const tokens = new SqliteOperatorTokenRepository(db);
      expect(await tokens.list()).toEqual([
        { id: 'tok_a', name: 'bootstrap-admin', role: 'admin', createdAtMs: 1, revokedAtMs: null },
        { id: 'tok_b', name: 'old', role: 'viewer', createdAtMs: 2, revokedAtMs: 3 },
      ]);
      expect(await tokens.hasLiveAdmin()).toBe(true);
      await tokens.insert({ id: 'tok_w', name: 'gpu', role: 'worker', tokenHash: 'c'.repeat(64), createdAtMs: 4 });
      expect(await tokens.byHash('c'.repeat(64))).toMatchObject({ id: 'tok_w', role: 'worker' });
      await expect(tokens.insert({ id: 'tok_r', name: 'root', role: 'root' as 'admin', tokenHash: 'd'.repeat(64), createdAtMs: 5 })).rejects.toThrow(/CHECK/);
      expect(db.prepare(`SELECT max(version) AS v FROM schema_migrations WHERE module = 'operator_tokens'`).get()).toEqual({ v: 2 });
      db.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** Reads a server stream to its end (a refusal rejects). */
async function drain(stream: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of stream) {
    // read on
  }
}
