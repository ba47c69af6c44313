/**
 * bench:federated — federated head training against centralized training, in one run, on a
 * synthetic classification dataset in embedding space (bench/federated/simulation.ts), or on a
 * dataset snapshot folder with --dataset <dir>:
 * - centralized_accuracy: trainHead on every training row;
 * - fedavg_{iid,dir05,dir01}_accuracy after R rounds (clients train E local epochs from the
 *   global head, updates go through the wire codec and validation into the FedAvg strategy),
 *   with IID and Dirichlet(α = 0.5, 0.1) label splits, and the rounds to reach
 *   centralized − 0.01 (target: centralized − fedavg_iid ≤ 0.01);
 * - async_vs_sync_time: simulated time to centralized − 0.02 with 30 % slow clients (5× slower),
 *   asynchronous FedBuff (K updates per aggregation) against synchronous rounds that wait for
 *   their stragglers up to the deadline (target ≤ 0.5); also against rounds that over-select and
 *   close at clients_per_round (async_vs_sync_overselected_time, no target);
 * - aggregation_vs_axpy: the streaming aggregator against a plain Float32Array axpy over the same
 *   bytes (target ≥ 0.5);
 * - peak_rss_mb at 10, 100, 1,000 clients of streaming aggregation (O(model size));
 * - the accuracy cost of float16 and int8 update compression.
 * Prints progress on stderr and one JSON line last. Flags: --clients, --clients-per-round,
 * --rounds, --local-epochs, --learning-rate (local momentum SGD; 0.05 is tuned on the synthetic
 * data, a snapshot may need its own), --central-epochs, --train-rows, --test-rows, --features,
 * --classes, --aggregation-params, --memory-params, --seed, --dataset <dir>.
 */
import { parseArgs } from 'node:util';
import { readSnapshotFolder } from '../common/datasets/snapshot-layout.js';
import { labelledRows } from '../common/learning/dense-head.js';
import { createStrategy, strategySpec } from '../control-plane/federated/strategies/create-strategy.js';
import { measurePeakRss, measureThroughput } from './federated/aggregation.js';
import {
  centralized,
  dirichletSplit,
  iidSplit,
  runAsync,
  runSync,
  stragglerDurations,
  syntheticDataset,
  type Dataset,
  type LocalTraining,
  type RunResult,
} from './federated/simulation.js';

const { values: flags } = parseArgs({
  options: {
    clients: { type: 'string', default: '100' },
    rounds: { type: 'string', default: '50' },
    'clients-per-round': { type: 'string', default: '20' },
    'local-epochs': { type: 'string', default: '5' },
    'learning-rate': { type: 'string', default: '0.05' },
    'central-epochs': { type: 'string', default: '10' },
    'train-rows': { type: 'string', default: '20000' },
    'test-rows': { type: 'string', default: '5000' },
    features: { type: 'string', default: '32' },
    classes: { type: 'string', default: '10' },
    'aggregation-params': { type: 'string', default: String(1 << 20) },
    'memory-params': { type: 'string', default: String(1 << 18) },
    dataset: { type: 'string' },
    seed: { type: 'string', default: '1' },
  },
});
const int = (name: keyof typeof flags): number => {
  const value = Number(flags[name]);
  if (!Number.isInteger(value) || value < 1) throw new Error(`--${name} must be a whole number ≥ 1`);
  return value;
};
const log = (line: string): void => void process.stderr.write(`${line}\n`);
const round3 = (x: number): number => Number(x.toFixed(4));

const CLIENTS = int('clients');
const ROUNDS = int('rounds');
const PER_ROUND = Math.min(int('clients-per-round'), CLIENTS);
const SEED = int('seed');
// Local training as the devices run it; tuned once for this dataset (E = 5 local epochs of
// momentum SGD), the same optimizer centralized training uses.
const LEARNING_RATE = Number(flags['learning-rate']);
if (!(LEARNING_RATE > 0 && LEARNING_RATE < 10)) throw new Error('--learning-rate must be above 0 and below 10');
const LOCAL: LocalTraining = { localEpochs: int('local-epochs'), batchSize: 32, learningRate: LEARNING_RATE, optimizer: 'sgd', momentum: 0.9, l2: 1e-4 };
const SLOW_FRACTION = 0.3;
const SLOW_FACTOR = 5;

function loadDataset(): { data: Dataset; source: string } {
  if (flags.dataset) {
    const { manifest, splits } = readSnapshotFolder(flags.dataset);
    const features = manifest.input.shape.reduce((a, b) => a * b, 1);
    const train = labelledRows(splits.train.x, splits.train.y, features);
    const test = labelledRows(splits.test.x, splits.test.y, features);
    if (train.rows < CLIENTS || test.rows === 0)
      throw new Error(`${flags.dataset}: ${train.rows} labelled training rows and ${test.rows} test rows are too few for ${CLIENTS} clients`);
    return { data: { train, test, classes: manifest.classes }, source: `snapshot ${manifest.id}` };
  }
  const data = syntheticDataset({ features: int('features'), classes: int('classes'), trainRows: int('train-rows'), testRows: int('test-rows'), seed: SEED });
  return { data, source: 'synthetic' };
}

const t0 = performance.now();
const { data, source } = loadDataset();
log(`dataset: ${source}, ${data.train.rows} training rows, ${data.test.rows} test rows, ${data.train.features} features, ${data.classes} classes`);

const central = centralized(data, LOCAL, int('central-epochs'), SEED);
const fedTarget = central.accuracy - 0.01;
const timeTarget = central.accuracy - 0.02;
log(`centralized: accuracy ${central.accuracy.toFixed(4)} (${flags['central-epochs']} epochs)`);

const fedavg = createStrategy(strategySpec('fedavg'));
const splits = {
  iid: iidSplit(data.train, CLIENTS, SEED + 1),
  dir05: dirichletSplit(data.train, CLIENTS, 0.5, SEED + 2),
  dir01: dirichletSplit(data.train, CLIENTS, 0.1, SEED + 3),
};
const sync = (clients: typeof splits.iid, encoding: 'float32' | 'float16' | 'int8'): RunResult =>
  runSync({
    clients,
    test: data.test,
    classes: data.classes,
    strategy: fedavg,
    rounds: ROUNDS,
    clientsPerRound: PER_ROUND,
    local: LOCAL,
    encoding,
    seed: SEED + 10,
    targetAccuracy: fedTarget,
  });
const accuracyRuns: Record<string, RunResult> = {};
for (const [name, clients] of Object.entries(splits)) {
  accuracyRuns[name] = sync(clients, 'float32');
  const r = accuracyRuns[name];
  log(
    `fedavg ${name}: accuracy ${r.finalAccuracy.toFixed(4)} after ${ROUNDS} rounds of ${PER_ROUND}/${CLIENTS} clients, rounds to ${fedTarget.toFixed(4)}: ${r.roundsToTarget ?? 'not reached'}`,
  );
}
const compression: Record<string, RunResult> = {};
for (const encoding of ['float16', 'int8'] as const) {
  compression[encoding] = sync(splits.iid, encoding);
  log(`fedavg iid ${encoding}: accuracy ${compression[encoding].finalAccuracy.toFixed(4)}`);
}

// Stragglers: the same IID clients, 30 % of them 5× slower, on a simulated clock.
const duration = stragglerDurations(CLIENTS, SLOW_FRACTION, SLOW_FACTOR, SEED + 4);
const timed = (closeWhen: 'all-invited' | 'clients-per-round'): RunResult =>
  runSync({
    clients: splits.iid,
    test: data.test,
    classes: data.classes,
    strategy: fedavg,
    rounds: ROUNDS * 2,
    clientsPerRound: PER_ROUND,
    local: LOCAL,
    encoding: 'float32',
    seed: SEED + 20,
    targetAccuracy: timeTarget,
    stopAtTarget: true,
    timing:
      closeWhen === 'all-invited'
        ? // Flower-style rounds: sample clients_per_round, wait for them up to a deadline that lets the slow ones in.
          { duration, overSelection: 0, minClients: Math.ceil(PER_ROUND / 2), deadline: 2 * SLOW_FACTOR, maxTime: Infinity, closeWhen }
        : // Over-select 30 %, close at clients_per_round or a tight deadline: the stragglers are cut.
          { duration, overSelection: 0.3, minClients: Math.ceil(PER_ROUND / 2), deadline: 3, maxTime: Infinity, closeWhen },
  });
const syncWaiting = timed('all-invited');
const syncOverselected = timed('clients-per-round');
const asyncRun = runAsync({
  clients: splits.iid,
  test: data.test,
  classes: data.classes,
  strategy: fedavg,
  concurrency: PER_ROUND,
  bufferSize: Math.max(1, Math.round(PER_ROUND / 2)),
  maxStaleness: 20,
  maxAggregations: ROUNDS * 6,
  maxTime: Infinity,
  duration,
  local: LOCAL,
  encoding: 'float32',
  seed: SEED + 30,
  targetAccuracy: timeTarget,
  stopAtTarget: true,
});
const ratio = (a: number | null, b: number | null): number | null => (a === null || b === null ? null : round3(a / b));
for (const [name, r] of Object.entries({ 'sync (wait for stragglers)': syncWaiting, 'sync (over-selected)': syncOverselected, 'async FedBuff': asyncRun })) {
  log(
    `${name}: time to ${timeTarget.toFixed(4)}: ${r.timeToTarget?.toFixed(1) ?? 'not reached'} (${r.roundsToTarget ?? '-'} aggregations, ${r.updates} updates, ${r.dropped} dropped)`,
  );
}

log('aggregation: streaming FedAvg against a plain Float32Array axpy ...');
const throughput = measureThroughput(int('aggregation-params'));
log(`  ${JSON.stringify(throughput)}`);
const memoryParams = int('memory-params');
const memory = [10, 100, 1000].map((clients) => {
  const point = measurePeakRss(clients, memoryParams);
  log(`memory: ${clients} clients of a ${memoryParams}-parameter head: peak RSS ${point.peak_rss_mb} MB, aggregator holds ${point.held_bytes} bytes`);
  return point;
});

console.log(
  JSON.stringify({
    dataset: source,
    clients: CLIENTS,
    clients_per_round: PER_ROUND,
    rounds: ROUNDS,
    local_epochs: LOCAL.localEpochs,
    learning_rate: LEARNING_RATE,
    centralized_accuracy: round3(central.accuracy),
    fedavg_iid_accuracy: round3(accuracyRuns.iid!.finalAccuracy),
    fedavg_dir05_accuracy: round3(accuracyRuns.dir05!.finalAccuracy),
    fedavg_dir01_accuracy: round3(accuracyRuns.dir01!.finalAccuracy),
    centralized_minus_fedavg_iid: round3(central.accuracy - accuracyRuns.iid!.finalAccuracy),
    target_accuracy: round3(fedTarget),
    rounds_to_target_iid: accuracyRuns.iid!.roundsToTarget,
    rounds_to_target_dir05: accuracyRuns.dir05!.roundsToTarget,
    rounds_to_target_dir01: accuracyRuns.dir01!.roundsToTarget,
    time_target_accuracy: round3(timeTarget),
    sync_time_to_target: syncWaiting.timeToTarget === null ? null : round3(syncWaiting.timeToTarget),
    sync_overselected_time_to_target: syncOverselected.timeToTarget === null ? null : round3(syncOverselected.timeToTarget),
    async_time_to_target: asyncRun.timeToTarget === null ? null : round3(asyncRun.timeToTarget),
    async_vs_sync_time: ratio(asyncRun.timeToTarget, syncWaiting.timeToTarget),
    async_vs_sync_overselected_time: ratio(asyncRun.timeToTarget, syncOverselected.timeToTarget),
    slow_clients: SLOW_FRACTION,
    fedavg_iid_float16_accuracy: round3(compression.float16!.finalAccuracy),
    fedavg_iid_int8_accuracy: round3(compression.int8!.finalAccuracy),
    float16_accuracy_cost: round3(accuracyRuns.iid!.finalAccuracy - compression.float16!.finalAccuracy),
    int8_accuracy_cost: round3(accuracyRuns.iid!.finalAccuracy - compression.int8!.finalAccuracy),
    ...throughput,
    peak_rss_mb_10_clients: memory[0]!.peak_rss_mb,
    peak_rss_mb_100_clients: memory[1]!.peak_rss_mb,
    peak_rss_mb_1000_clients: memory[2]!.peak_rss_mb,
    memory_params: memoryParams,
    wall_s: Number(((performance.now() - t0) / 1000).toFixed(1)),
  }),
);
