/**
 * The in-process federated simulation behind bench:federated (and its test at tiny size): a
 * synthetic classification dataset in embedding space, IID and Dirichlet label splits across
 * clients, centralized head training, synchronous FedAvg rounds and asynchronous FedBuff rounds
 * on a simulated clock. Clients run the same head training the devices run (trainHead from
 * common/learning/dense-head.ts) from the global head; their updates travel through the real
 * wire encoding and validation (update-codec, update-validation) into the real strategies.
 * Deterministic for a seed; no timing in here (bench/federated.ts measures the wall clock).
 */
import { encodeUpdate, type UpdateEncoding } from '../../common/federated/update-codec.js';
import { flattenHead, unflattenHead, type LayerShape } from '../../common/federated/head-vector.js';
import { evaluateHead, trainHead, DEFAULT_HEAD_TRAINING, type HeadTrainingOptions, type LabelledRows } from '../../common/learning/dense-head.js';
import { seededRandom, type SeededRandom } from '../../common/seeded-random.js';
import { AsyncUpdateBuffer } from '../../control-plane/federated/strategies/async-buffer.js';
import type { ServerStrategy } from '../../control-plane/federated/strategies/strategy.js';
import { validateUpdate } from '../../control-plane/federated/update-validation.js';

export interface Dataset {
  train: LabelledRows;
  test: LabelledRows;
  classes: number;
}

export interface SyntheticOptions {
  features: number;
  classes: number;
  trainRows: number;
  testRows: number;
  seed: number;
}

/**
 * Embeddings of a frozen backbone, roughly: each class is a mixture of two Gaussian clusters in a
 * low-dimensional latent space, lifted to `features` dimensions through a random linear map and a
 * tanh (so the classes are not linearly separable in a trivial way), plus feature noise.
 */
export function syntheticDataset(options: SyntheticOptions): Dataset {
  const { features, classes, seed } = options;
  const rng = seededRandom(seed);
  const latent = Math.max(4, Math.round(features / 3));
  const centers = Array.from({ length: classes * 2 }, () => Array.from({ length: latent }, () => rng.normal(0, 1.2)));
  const lift = Array.from({ length: features * latent }, () => rng.normal(0, 1 / Math.sqrt(latent)));
  const offset = Array.from({ length: features }, () => rng.normal(0, 0.3));
  const z = new Float64Array(latent);
  const rows = (count: number): LabelledRows => {
    const x = new Float32Array(count * features);
    const y = new Int32Array(count);
    for (let r = 0; r < count; r++) {
      const label = rng.int(classes);
      y[r] = label;
      const center = centers[label * 2 + rng.int(2)]!;
      for (let j = 0; j < latent; j++) z[j] = center[j]! + rng.normal(0, 0.7);
      for (let f = 0; f < features; f++) {
        let s = offset[f]!;
        for (let j = 0; j < latent; j++) s += lift[f * latent + j]! * z[j]!;
        x[r * features + f] = Math.tanh(1.5 * s) + rng.normal(0, 0.15);
      }
    }
    return { x, y, rows: count, features };
  };
  return { train: rows(options.trainRows), test: rows(options.testRows), classes };
}

/** The rows at these indices, as their own LabelledRows. */
export function subset(data: LabelledRows, indices: ArrayLike<number>): LabelledRows {
  const { features } = data;
  const x = new Float32Array(indices.length * features);
  const y = new Int32Array(indices.length);
  for (let i = 0; i < indices.length; i++) {
    const r = indices[i]!;
    x.set(data.x.subarray(r * features, (r + 1) * features), i * features);
    y[i] = data.y[r]!;
  }
  return { x, y, rows: indices.length, features };
}

function shuffle(values: number[], rng: SeededRandom): number[] {
  for (let i = values.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [values[i], values[j]] = [values[j]!, values[i]!];
  }
  return values;
}

/** Every row dealt to `clients` clients at random, as evenly as the count allows. */
export function iidSplit(data: LabelledRows, clients: number, seed: number): LabelledRows[] {
  const order = shuffle(
    Array.from({ length: data.rows }, (_, i) => i),
    seededRandom(seed),
  );
  return Array.from({ length: clients }, (_, c) =>
    subset(
      data,
      order.filter((_, i) => i % clients === c),
    ),
  );
}

/** Gamma(shape, 1) by Marsaglia and Tsang, boosted for shape < 1. */
function gamma(shape: number, rng: SeededRandom): number {
  if (shape < 1) return gamma(shape + 1, rng) * Math.pow(1 - rng.next(), 1 / shape);
  const d = shape - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    const x = rng.normal();
    const v = (1 + c * x) ** 3;
    if (v <= 0) continue;
    const u = 1 - rng.next();
    if (Math.log(u) < 0.5 * x * x + d - d * v + d * Math.log(v)) return d * v;
  }
}

/**
 * Label skew as in Hsu et al. 2019 (and Flower's DirichletPartitioner): for each class, the
 * shares of its rows across clients are drawn from Dirichlet(α); small α gives each client few
 * classes. Redrawn (up to 50 times) until every client holds at least `minRows` rows, then topped up.
 */
export function dirichletSplit(data: LabelledRows, clients: number, alpha: number, seed: number, minRows = 5): LabelledRows[] {
  const rng = seededRandom(seed);
  const classes = Math.max(...Array.from(data.y)) + 1;
  const byClass = Array.from({ length: classes }, () => [] as number[]);
  for (let r = 0; r < data.rows; r++) byClass[data.y[r]!]!.push(r);
  let assigned: number[][] = [];
  for (let attempt = 0; attempt < 50; attempt++) {
    assigned = Array.from({ length: clients }, () => []);
    for (const rows of byClass) {
      shuffle(rows, rng);
      const shares = Array.from({ length: clients }, () => gamma(alpha, rng));
      const total = shares.reduce((a, b) => a + b, 0);
      let at = 0;
      let cumulative = 0;
      shares.forEach((share, c) => {
        cumulative += share / total;
        const end = c === clients - 1 ? rows.length : Math.round(cumulative * rows.length);
        for (; at < end; at++) assigned[c]!.push(rows[at]!);
      });
    }
    if (assigned.every((rows) => rows.length >= minRows)) break;
  }
  // Still short (many clients, tiny α): top the short clients up from the largest one, so every
  // client has samples to train on (a device without any would decline the round).
  for (const rows of assigned) {
    while (rows.length < minRows) {
      const largest = assigned.reduce((a, b) => (b.length > a.length ? b : a));
      if (largest.length <= minRows) break;
      rows.push(largest.pop()!);
    }
  }
  return assigned.map((rows) => subset(data, rows));
}

export interface LocalTraining {
  localEpochs: number;
  batchSize: number;
  learningRate: number;
  optimizer: 'sgd' | 'adam';
  momentum: number;
  l2: number;
}

const zeroHead = (features: number, classes: number): Float32Array => new Float32Array(features * classes + classes);

function trainOptions(local: LocalTraining, seed: number): HeadTrainingOptions {
  return {
    ...DEFAULT_HEAD_TRAINING,
    epochs: local.localEpochs,
    batchSize: local.batchSize,
    learningRate: local.learningRate,
    optimizer: local.optimizer,
    momentum: local.momentum,
    l2: local.l2,
    seed,
    patience: 0,
    reinitialize: false,
  };
}

export function accuracyOf(head: Float32Array, shapes: readonly LayerShape[], test: LabelledRows): number {
  return evaluateHead(unflattenHead(head, shapes), test).accuracy;
}

/** Centralized training: the same head trained on every training row at once. */
export function centralized(data: Dataset, local: LocalTraining, epochs: number, seed: number): { accuracy: number; head: Float32Array } {
  const shapes = [{ inputs: data.train.features, outputs: data.classes }];
  const trained = trainHead(unflattenHead(zeroHead(data.train.features, data.classes), shapes), data.train, undefined, {
    ...trainOptions(local, seed),
    epochs,
  });
  const head = flattenHead(trained.layers);
  return { accuracy: accuracyOf(head, shapes, data.test), head };
}

/**
 * One client's work: train from `global` on its rows, send the delta through the wire encoding
 * and the server's validation. Returns the delta as the server decoded it.
 */
function clientUpdate(
  global: Float32Array,
  shapes: readonly LayerShape[],
  rows: LabelledRows,
  local: LocalTraining,
  encoding: UpdateEncoding,
  seed: number,
): Float32Array {
  const trained = flattenHead(trainHead(unflattenHead(global, shapes), rows, undefined, trainOptions(local, seed)).layers);
  for (let i = 0; i < trained.length; i++) trained[i]! -= global[i]!;
  const rng = seededRandom(seed ^ 0x5bd1e995);
  const wire = encodeUpdate(trained, encoding, rng.next);
  return validateUpdate(wire, { headLength: global.length, maxUpdateNorm: 0, maxBytes: trained.length * 4 }).delta;
}

export interface SyncOptions {
  clients: LabelledRows[];
  test: LabelledRows;
  classes: number;
  strategy: ServerStrategy;
  rounds: number;
  clientsPerRound: number;
  local: LocalTraining;
  encoding: UpdateEncoding;
  seed: number;
  /** Accuracy to reach for roundsToTarget (and timeToTarget with timing). */
  targetAccuracy: number;
  /** End the run once the target is reached (time-to-target runs). */
  stopAtTarget?: boolean;
  /** Simulated stragglers; without it every invited client reports and a round takes 1 time unit. */
  timing?: SyncTiming;
}

/** Simulated time of a synchronous round with stragglers. */
export interface SyncTiming {
  /** Client c's time to train once (a draw per call). */
  duration: (client: number, rng: SeededRandom) => number;
  overSelection: number;
  minClients: number;
  /**
   * all-invited: the round waits for every invited device up to the deadline (Flower's rounds,
   * FedBuff's synchronous baseline); clients-per-round: it closes as soon as clients_per_round
   * devices reported (over-selection then hides the stragglers).
   */
  closeWhen: 'all-invited' | 'clients-per-round';
  /** The round closes at this simulated time after it starts, with the quorum (or fails without one). */
  deadline: number;
  /** Stop once the simulated clock passes this. */
  maxTime: number;
}

export interface RunResult {
  /** Test accuracy after each aggregation. */
  accuracy: number[];
  finalAccuracy: number;
  /** Aggregations until the test accuracy first reached the target (null: never). */
  roundsToTarget: number | null;
  /** Simulated time at each aggregation, and when the target was first reached (null: never). */
  time: number[];
  timeToTarget: number | null;
  /** Updates aggregated over the run. */
  updates: number;
  /** Updates that came too late (sync) or too stale (async). */
  dropped: number;
  failedRounds: number;
}

/**
 * Synchronous FedAvg-style rounds: sample clients, each trains from the global head, the server
 * aggregates with the strategy and applies its step. With timing, a round invites
 * clients_per_round × (1 + over_selection) devices and closes when they have reported (all of
 * them, or clients_per_round of them: timing.closeWhen), or at the deadline with whatever reached
 * the quorum (failed below it); later reports are dropped, as the rounds engine does.
 */
export function runSync(options: SyncOptions): RunResult {
  const { clients, test, classes, strategy, local, encoding } = options;
  const features = test.features;
  const shapes = [{ inputs: features, outputs: classes }];
  const rng = seededRandom(options.seed);
  let global = zeroHead(features, classes);
  let state = strategy.initialState(global.length);
  const result: RunResult = { accuracy: [], finalAccuracy: 0, roundsToTarget: null, time: [], timeToTarget: null, updates: 0, dropped: 0, failedRounds: 0 };
  let now = 0;
  for (let round = 1; round <= options.rounds; round++) {
    const timing = options.timing;
    const invited = Math.min(clients.length, Math.ceil(options.clientsPerRound * (1 + (timing?.overSelection ?? 0))));
    const chosen = shuffle(
      Array.from({ length: clients.length }, (_, i) => i),
      rng,
    ).slice(0, invited);
    let reporting = chosen;
    if (timing) {
      const finishing = chosen.map((c) => ({ c, at: timing.duration(c, rng) })).sort((a, b) => a.at - b.at);
      const enough = finishing[timing.closeWhen === 'all-invited' ? finishing.length - 1 : options.clientsPerRound - 1];
      const close = enough && enough.at <= timing.deadline ? enough.at : timing.deadline;
      reporting = finishing.filter((f) => f.at <= close).map((f) => f.c);
      result.dropped += chosen.length - reporting.length;
      now += close;
      if (reporting.length < timing.minClients) {
        result.failedRounds++;
        if (now > timing.maxTime) break;
        continue;
      }
    } else {
      now += 1;
    }
    const aggregator = strategy.createAggregator(global.length);
    for (const c of reporting) {
      const delta = clientUpdate(global, shapes, clients[c]!, local, encoding, options.seed * 7919 + round * 131 + c);
      aggregator.add({ deviceId: `client-${c}`, sampleCount: clients[c]!.rows, delta, staleness: 0 });
    }
    result.updates += aggregator.count;
    ({ global, state } = strategy.apply(global, aggregator.finish(), state));
    record(result, accuracyOf(global, shapes, test), now, options.targetAccuracy);
    if ((timing && now > timing.maxTime) || (options.stopAtTarget && result.roundsToTarget !== null)) break;
  }
  return result;
}

function record(result: RunResult, accuracy: number, now: number, target: number): void {
  result.accuracy.push(accuracy);
  result.time.push(now);
  result.finalAccuracy = accuracy;
  if (result.roundsToTarget === null && accuracy >= target) {
    result.roundsToTarget = result.accuracy.length;
    result.timeToTarget = now;
  }
}

export interface AsyncOptions {
  clients: LabelledRows[];
  test: LabelledRows;
  classes: number;
  strategy: ServerStrategy;
  /** Devices training at any one time. */
  concurrency: number;
  /** K: updates per aggregation. */
  bufferSize: number;
  maxStaleness: number;
  /** Stop after this many aggregations or this simulated time. */
  maxAggregations: number;
  maxTime: number;
  duration: (client: number, rng: SeededRandom) => number;
  local: LocalTraining;
  encoding: UpdateEncoding;
  seed: number;
  targetAccuracy: number;
  stopAtTarget?: boolean;
}

/**
 * Asynchronous FedBuff rounds on a simulated clock: `concurrency` devices train at once, each
 * from the head current when it started; when one finishes, its update enters the buffer
 * (staleness = versions since it started; too stale: refused) and an idle device starts in its
 * place; every K buffered updates become a new head version.
 */
export function runAsync(options: AsyncOptions): RunResult {
  const { clients, test, classes, strategy, local, encoding } = options;
  const features = test.features;
  const shapes = [{ inputs: features, outputs: classes }];
  const rng = seededRandom(options.seed);
  let global = zeroHead(features, classes);
  let state = strategy.initialState(global.length);
  let version = 0;
  const buffer = new AsyncUpdateBuffer(strategy, global.length, { bufferSize: options.bufferSize, maxStaleness: options.maxStaleness });
  const result: RunResult = { accuracy: [], finalAccuracy: 0, roundsToTarget: null, time: [], timeToTarget: null, updates: 0, dropped: 0, failedRounds: 0 };
  interface Job {
    client: number;
    at: number;
    version: number;
    delta: Float32Array;
  }
  const running: Job[] = [];
  const busy = new Set<number>();
  let jobs = 0;
  const start = (now: number): void => {
    let client = rng.int(clients.length);
    while (busy.has(client)) client = rng.int(clients.length);
    busy.add(client);
    jobs++;
    // The device trains from the head it fetched now; its answer arrives when it is done.
    const delta = clientUpdate(global, shapes, clients[client]!, local, encoding, options.seed * 7919 + jobs * 131 + client);
    running.push({ client, at: now + options.duration(client, rng), version, delta });
  };
  for (let i = 0; i < Math.min(options.concurrency, clients.length); i++) start(0);
  while (result.accuracy.length < options.maxAggregations && running.length > 0) {
    running.sort((a, b) => a.at - b.at);
    const job = running.shift()!;
    busy.delete(job.client);
    const now = job.at;
    if (now > options.maxTime) break;
    try {
      buffer.add({ deviceId: `client-${job.client}`, sampleCount: clients[job.client]!.rows, delta: job.delta, staleness: version - job.version });
    } catch (err) {
      if ((err as { code?: string }).code !== 'FEDERATED_UPDATE_STALE') throw err;
      result.dropped++;
    }
    if (buffer.ready) {
      const flushed = buffer.flush();
      result.updates += flushed.updates;
      ({ global, state } = strategy.apply(global, flushed.delta, state));
      version++;
      record(result, accuracyOf(global, shapes, test), now, options.targetAccuracy);
      if (options.stopAtTarget && result.roundsToTarget !== null) break;
    }
    start(now);
  }
  return result;
}

/** A population where a `slowFraction` of the clients takes `slowFactor` times longer (log-normal jitter). */
export function stragglerDurations(clients: number, slowFraction: number, slowFactor: number, seed: number): (client: number, rng: SeededRandom) => number {
  const slow = new Set(
    shuffle(
      Array.from({ length: clients }, (_, i) => i),
      seededRandom(seed),
    ).slice(0, Math.round(clients * slowFraction)),
  );
  return (client, rng) => (slow.has(client) ? slowFactor : 1) * rng.logNormal(0.25);
}
