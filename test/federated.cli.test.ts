/**
 * `driftline federated start|list|status [--watch]|cancel`: option validation before any call
 * (usage errors, exit 2), the request a start sends, and the commands end to end against a real
 * control plane (gRPC on an OS-chosen port, SQLite, FederatedService over the rounds engine).
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createOperatorClient, type OperatorClient } from '../client/operator-client.js';
import { ROUND_HEAD, roundRows, startRequestOf, summaryLine, type FederatedStartOptions } from '../cli/commands/federated.js';
import { silentLogger } from '../common/logger.js';
import { AccessServiceService, Role } from '../common/proto/driftline/v1/fleet.js';
import { FederatedTask } from '../common/proto/driftline/v1/federated.js';
import { startControlPlane, type ControlPlane } from '../control-plane/server.js';
import { referenceAlgorithms } from './helpers/federated.js';
import { BASE_MODEL } from './helpers/training-api.js';

const BIN = fileURLToPath(new URL('../bin/driftline.js', import.meta.url));

const run = (args: string[], env: NodeJS.ProcessEnv, cwd: string): Promise<{ code: number; stdout: string; stderr: string }> =>
  new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { cwd, env }, (error, stdout, stderr) => resolve({ code: error ? Number(error.code) : 0, stdout, stderr }));
  });

const START = ['federated', 'start', '--model', 'vibration', '--base-version', '1', '--rounds', '3', '--clients-per-round', '4'];

const options = (over: Partial<FederatedStartOptions> = {}): FederatedStartOptions => ({
  model: 'vibration',
  baseVersion: 1,
  cohort: '',
  rounds: 3,
  clientsPerRound: 4,
  overSelection: 0,
  strategy: 'fedavg',
  privacy: 'none',
  mode: 'sync',
  compression: 'float32',
  ...over,
});

describe('driftline federated - options', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-federated-cli-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  // Nothing listens there: a bad option must be refused before any call is made.
  const env = (): NodeJS.ProcessEnv => ({ ...process.env, DRIFTLINE_SERVER: '127.0.0.1:1', DRIFTLINE_TOKEN: 'tok_unused' });

  it.each<[string, string[]]>([
    ['a missing --rounds', ['federated', 'start', '--model', 'vibration', '--base-version', '1', '--clients-per-round', '4']],
    ['an unknown strategy', [...START, '--strategy', 'fedsgd']],
    ['a negative over-selection', [...START, '--over-selection', '-0.1']],
    ['a quorum above the clients per round', [...START, '--min-clients', '5']],
    ['async without a buffer size', [...START, '--mode', 'async']],
    ['a buffer size in sync mode', [...START, '--buffer-size', '2']],
    ['central DP without a clipping norm', [...START, '--privacy', 'central-gaussian', '--noise-multiplier', '1']],
    ['a noise multiplier without DP', [...START, '--noise-multiplier', '1']],
    ['ε without δ', [...START, '--privacy', 'central-gaussian', '--clipping-norm', '1', '--noise-multiplier', '1', '--target-epsilon', '8']],
    ['a proximal term for fedavg', [...START, '--proximal-mu', '0.01']],
    ['an unknown compression', [...START, '--compression', 'int4']],
    ['a bad deadline', [...START, '--round-deadline', 'soon']],
    ['an unknown list state', ['federated', 'list', '--state', 'sleeping']],
  ])('federated start - refuses %s with a usage error (exit 2) before any call', async (_, args) => {
    const result = await run(args, env(), dir);
    expect(result.code, result.stderr).toBe(2);
    expect(result.stderr).toMatch(/^error \[USAGE\]: /);
  });

  it('federated start - the request carries every option, defaults as 0 for the server to fill', () => {
    const request = startRequestOf(
      options({
        cohort: 'site=north',
        minClients: 3,
        overSelection: 0.3,
        roundDeadline: 90_500,
        strategy: 'fedprox',
        proximalMu: 0.01,
        privacy: 'central-gaussian',
        clippingNorm: 1,
        noiseMultiplier: 1.1,
        targetEpsilon: 8,
        delta: 1e-5,
        compression: 'int8',
        gate: ['accuracy-delta>=0.01'],
        release: true,
        requestId: 'r-1',
      }),
    );
    expect(request).toMatchObject({
      model: 'vibration',
      baseVersion: 1,
      clientRequestId: 'r-1',
      cohortSelector: 'site=north',
      rounds: 3,
      clientsPerRound: 4,
      minClients: 3,
      overSelection: 0.3,
      roundDeadlineSeconds: 91,
      localEpochs: 0,
      strategy: { name: 'fedprox', proximalMu: 0.01 },
      privacy: { mode: 'central-gaussian', clippingNorm: 1, noiseMultiplier: 1.1, targetEpsilon: 8, delta: 1e-5 },
      mode: 'sync',
      updateCompression: 'int8',
      gates: ['accuracy-delta>=0.01'],
      release: true,
    });
    expect(startRequestOf(options()).clientRequestId).not.toBe(startRequestOf(options()).clientRequestId);
    expect(() => startRequestOf(options({ model: 'Bad Name' }))).toThrow(expect.objectContaining({ code: 'ID_INVALID' }));
  });

  it('federated status - rows of rounds with refusals by code, and one summary line per change', () => {
    const task = FederatedTask.fromPartial({
      id: 'fl_1',
      state: 'running',
      round: 2,
      spec: { model: 'vibration', baseVersion: 1, rounds: 3, clientsPerRound: 4 },
      epsilon: 0.75,
      rounds: [
        {
          round: 1,
          state: 'done',
          invited: 5,
          reported: 4,
          aggregated: 3,
          dropped: 1,
          refused: { FEDERATED_UPDATE_NOT_FINITE: 1 },
          trainLoss: 0.51234,
          accuracy: 0.8,
          evalSamples: 100,
          epsilon: 0.4,
        },
        { round: 2, state: 'training', invited: 5, reported: 2, aggregated: 0, accuracy: -1, epsilon: 0 },
      ],
    });
    expect(ROUND_HEAD).toEqual(['ROUND', 'STATE', 'INVITED', 'REPORTED', 'AGGREGATED', 'DROPPED', 'REFUSED', 'TRAIN LOSS', 'ACCURACY', 'EPSILON']);
    expect(roundRows(task)).toEqual([
      [1, 'done', 5, 4, 3, 1, '1 (FEDERATED_UPDATE_NOT_FINITE 1)', '0.5123', '80.00%', '0.400'],
      [2, 'training', 5, 2, 0, 0, '0', '-', '-', '-'],
    ]);
    expect(summaryLine(task)).toBe('running round 2/3 training reported 2/5 aggregated 0 ε 0.750');
  });
});

describe('driftline federated - the commands against a real control plane', () => {
  let dir: string;
  let cp: ControlPlane;
  let admin: OperatorClient;
  let operator: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-federated-cli-e2e-'));
    cp = await startControlPlane(
      { dataDir: join(dir, 'cp'), grpc: { port: 0 }, http: { port: 0 }, mqtt: { port: 0 }, federated: { tickInterval: '50ms', watchInterval: '50ms' } },
      { logger: silentLogger(), federated: { algorithms: referenceAlgorithms() } },
    );
    admin = createOperatorClient({ address: cp.addresses.grpc, token: readFileSync(cp.adminTokenFile, 'utf8').trim(), streamTimeoutMs: 60_000 });
    operator = (await admin.service(AccessServiceService).createToken({ name: 'ops', role: Role.ROLE_OPERATOR })).token;
    await admin.uploadModelBytes(BASE_MODEL, { name: 'vibration', description: 'clean-data classifier', metadata: {} });
  });
  afterAll(async () => {
    admin?.close();
    await cp?.shutdown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });
  const driftline = (...args: string[]) => run(args, { ...process.env, DRIFTLINE_SERVER: cp.addresses.grpc, DRIFTLINE_TOKEN: operator }, dir);

  it('federated - start, list, status --watch to its end, then cancel refused on an ended task (FEDERATED_STATE_INVALID, exit 6)', async () => {
    // No device serves the base version: the task starts, then fails its first round with FEDERATED_NO_CLIENTS.
    const started = await driftline(...START, '--cohort', 'site=nowhere', '--gate', 'accuracy-delta>=0.01', '--request-id', 'cli-1', '--json');
    expect(started.code, started.stderr).toBe(0);
    const task = JSON.parse(started.stdout) as { id: string; state: string; spec: { cohortSelector: string; strategy: { name: string }; gates: string[] } };
    expect(task.spec).toMatchObject({ cohortSelector: 'site=nowhere', strategy: { name: 'fedavg' }, gates: ['accuracy-delta>=0.01'] });

    // status --watch on a pipe: one line per change until the task ends, then the status tables.
    const watched = await driftline('federated', 'status', task.id, '--watch');
    expect(watched.code, watched.stderr).toBe(0);
    expect(watched.stdout).toMatch(/^failed round \d\/3.*FEDERATED_NO_CLIENTS/m);
    expect(watched.stdout).toMatch(/^state\s+failed$/m);
    expect(watched.stdout).toMatch(/^error\s+FEDERATED_NO_CLIENTS$/m);

    const list = await driftline('federated', 'list', '--model', 'vibration');
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout.split('\n')[0]).toMatch(/^ID\s+MODEL\s+BASE\s+STRATEGY\s+STATE\s+ROUND\s+ACCURACY\s+EPSILON\s+RESULT\s+UPDATED\s+REASON$/);
    expect(list.stdout).toMatch(new RegExp(`^${task.id}\\s+vibration\\s+v1\\s+fedavg\\s+failed\\s`, 'm'));
    const none = await driftline('federated', 'list', '--state', 'running');
    expect(none.stdout.trim()).toBe('No federated tasks found matching the filters');

    const json = await driftline('federated', 'status', task.id, '--json');
    expect(JSON.parse(json.stdout)).toMatchObject({ id: task.id, state: 'failed', errorCode: 'FEDERATED_NO_CLIENTS' });

    const cancel = await driftline('federated', 'cancel', task.id, '--reason', 'too late');
    expect(cancel.code).toBe(6);
    expect(cancel.stderr).toMatch(/^error \[FEDERATED_STATE_INVALID\]/);
  });

  it('federated - refusals from the server keep their codes and exit codes', async () => {
    const missing = await driftline('federated', 'status', 'fl_nope');
    expect(missing.code).toBe(4);
    expect(missing.stderr).toMatch(/^error \[FEDERATED_TASK_NOT_FOUND\].*driftline federated list/);
    const unknownModel = await driftline('federated', 'start', '--model', 'nosuch', '--base-version', '1', '--rounds', '1', '--clients-per-round', '1');
    expect(unknownModel.code).toBe(4);
    expect(unknownModel.stderr).toMatch(/^error \[MODEL_NOT_FOUND\]/);
    const badGate = await driftline(...START, '--gate', 'regression-accuracy-delta>=0');
    expect(badGate.code).toBe(2);
    expect(badGate.stderr).toMatch(/^error \[FEDERATED_TASK_INVALID\].*regression split/);
  });
});
