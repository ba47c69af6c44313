/**
 * The on-device learner: answers the control plane's federated invitations (down/federated)
 * with reports (up/federated). KIND_TRAIN trains the round's head on the device's labelled
 * training samples, from the global head, and answers with the update (trained − start);
 * KIND_EVALUATE scores a head on the held-out samples; KIND_CANCEL stops a task's work.
 *
 * Inference comes first: the head trains on the main thread in slices of a few batches with a
 * yield to the event loop between them (models run on their own worker thread), and after each
 * slice the inference p95 seen during training is compared with the p95 before it: above the
 * profile's factor, training pauses. Each round's CPU time and memory are capped by the
 * profile. Answers are remembered per (task, round, kind): a replayed invitation gets the
 * same report again and never trains twice.
 */
import type { Clock } from '../../common/clock.js';
import { asDriftlineError, DriftlineError, type ErrorCode } from '../../common/errors.js';
import { flattenHead, headLength } from '../../common/federated/head-vector.js';
import { encodeUpdate, isUpdateEncoding, l2Norm } from '../../common/federated/update-codec.js';
import type { LearnerGuards } from '../../common/firmware-profile.js';
import { headProbabilities, trainHead, type DenseLayer, type LabelledRows } from '../../common/learning/dense-head.js';
import type { Logger } from '../../common/logger.js';
import { FederatedInvitation_Kind as Kind, type FederatedInvitation, type FederatedReport } from '../../common/proto/driftline/v1/device_link.js';
import { seededRandom } from '../../common/seeded-random.js';
import { guardRefusal } from './guards.js';
import { InferenceLatency, p95 } from './inference-latency.js';
import type { Backbone, BackboneSource, EmbeddingCache, HeadSource, LocalSample, ReportMemory, ReportSink, SampleSplit, SampleStore } from './ports.js';

export interface LearnerOptions {
  samples: SampleStore;
  embeddings: EmbeddingCache;
  backbones: BackboneSource;
  heads: HeadSource;
  reports: ReportMemory;
  publish: ReportSink;
  /** Inference latencies as the engine observes them (the agent feeds every answer in). */
  latency: InferenceLatency;
  guards: Readonly<LearnerGuards>;
  /** Fewer labelled training samples: the device declines (LEARNER_NOT_ENOUGH_SAMPLES). */
  minSamples: number;
  /** Most samples one round reads (bounds the work before it starts). */
  maxSamplesPerRound: number;
  /** The hottest sensor now, for the temperature guard. */
  temperature: () => Promise<number | undefined>;
  /** CPU time the process has used, in ms; the learner counts what its own work adds. */
  cpuTimeMs?: () => number;
  clock: Clock;
  logger: Logger;
}

/** What the learner did for one invitation: the tests' and the operator's view of its pause logic. */
export interface RoundRecord {
  key: string;
  kind: 'train' | 'evaluate';
  outcome: 'reported' | 'declined' | 'cancelled' | 'failed';
  errorCode?: string;
  slices: number;
  /** Slices after which the p95 during training was above factor × baseline. */
  overBound: number;
  pauses: number;
  pausedMs: number;
  /** Inference p95 in the minute before the work (undefined: no inference then). */
  baselineP95Ms: number | undefined;
  /** Inference p95 while the work ran (undefined: no inference then). */
  inferenceP95Ms: number | undefined;
  cpuMs: number;
  embeddedNow: number;
  embeddingsCached: number;
}

export interface LearnerStats {
  invitations: number;
  replays: number;
  late: number;
  cancelled: number;
  ignored: number;
  rounds: readonly RoundRecord[];
}

const BASELINE_WINDOW_MS = 60_000;
const IDLE_WINDOW_MS = 60_000;
const KEPT_ROUND_RECORDS = 64;
const KEPT_CANCELLED_TASKS = 1_000;

const keyOf = (taskId: string, round: number, kind: Kind): string => `${taskId}/${round}/${Kind[kind] ?? kind}`;

/** Work stops at a slice boundary by throwing this; never reported (a cancelled task wants no answer). */
class Cancelled extends Error {}

export class FederatedLearner {
  private readonly running = new Set<string>();
  private readonly cancelledTasks = new Set<string>();
  private queue: Promise<void> = Promise.resolve();
  private closed = false;
  private readonly cpuTimeMs: () => number;
  private readonly counters = { invitations: 0, replays: 0, late: 0, cancelled: 0, ignored: 0 };
  private readonly records: RoundRecord[] = [];

  constructor(private readonly options: LearnerOptions) {
    this.cpuTimeMs =
      options.cpuTimeMs ??
      (() => {
        const usage = process.cpuUsage();
        return (usage.user + usage.system) / 1000;
      });
  }

  stats(): LearnerStats {
    return { ...this.counters, rounds: [...this.records] };
  }

  /**
   * Takes one invitation. Cancels act at once; other work runs one invitation at a time, in
   * arrival order, so one round's caps hold for the device. Resolves when this invitation's
   * work is done (tests await it; the agent does not).
   */
  handle(invitation: FederatedInvitation): Promise<void> {
    this.counters.invitations++;
    if (this.closed) return Promise.resolve();
    if (invitation.kind === Kind.KIND_CANCEL) {
      this.cancel(invitation.taskId);
      return Promise.resolve();
    }
    if (invitation.kind !== Kind.KIND_TRAIN && invitation.kind !== Kind.KIND_EVALUATE) {
      this.counters.ignored++;
      this.options.logger.warn({ task: invitation.taskId, kind: invitation.kind }, 'ignoring a federated invitation of an unknown kind');
      return Promise.resolve();
    }
    const key = keyOf(invitation.taskId, invitation.round, invitation.kind);
    if (this.cancelledTasks.has(invitation.taskId)) {
      this.counters.ignored++;
      return Promise.resolve();
    }
    const remembered = this.options.reports.get(key);
    if (remembered) {
      // A replay (the control plane resent it, or our report was lost): the same answer, no new work.
      this.counters.replays++;
      return this.send(remembered);
    }
    if (this.running.has(key)) {
      this.counters.replays++;
      return Promise.resolve();
    }
    if (invitation.deadlineMs > 0 && this.options.clock.now() > invitation.deadlineMs) {
      this.counters.late++;
      this.options.logger.info({ task: invitation.taskId, round: invitation.round }, 'federated invitation arrived after its deadline; not started');
      return Promise.resolve();
    }
    this.running.add(key);
    const work = this.queue.then(() => this.work(key, invitation)).finally(() => this.running.delete(key));
    this.queue = work.catch(() => undefined);
    return work;
  }

  private cancel(taskId: string): void {
    this.counters.cancelled++;
    this.cancelledTasks.add(taskId);
    if (this.cancelledTasks.size > KEPT_CANCELLED_TASKS) this.cancelledTasks.delete(this.cancelledTasks.values().next().value!);
  }

  /** Stops taking invitations and waits for the work in flight to stop at its next slice. */
  async shutdown(): Promise<void> {
    this.closed = true;
    await this.queue;
  }

  private async work(key: string, invitation: FederatedInvitation): Promise<void> {
    const train = invitation.kind === Kind.KIND_TRAIN;
    const record: RoundRecord = {
      key,
      kind: train ? 'train' : 'evaluate',
      outcome: 'reported',
      slices: 0,
      overBound: 0,
      pauses: 0,
      pausedMs: 0,
      baselineP95Ms: undefined,
      inferenceP95Ms: undefined,
      cpuMs: 0,
      embeddedNow: 0,
      embeddingsCached: 0,
    };
    this.records.push(record);
    if (this.records.length > KEPT_ROUND_RECORDS) this.records.shift();
    const { clock } = this.options;
    const started = clock.now();
    const startedPerf = performance.now();
    // Everything observed so far came before the work: the baseline; what comes after the mark is during it.
    record.baselineP95Ms = p95(this.options.latency.between(started - BASELINE_WINDOW_MS));
    const startMark = this.options.latency.mark();
    const round = new RoundWork(this, invitation, record);
    let report: FederatedReport;
    try {
      report = train ? await round.train() : await round.evaluate();
    } catch (err) {
      if (err instanceof Cancelled || this.closed) {
        record.outcome = 'cancelled';
        this.options.logger.info({ task: invitation.taskId, round: invitation.round }, 'federated work stopped: the task was cancelled');
        return;
      }
      const error = asDriftlineError(err);
      record.outcome = error.code.startsWith('LEARNER_') ? 'declined' : 'failed';
      record.errorCode = error.code;
      report = emptyReport(invitation, error.code, error.message);
    }
    record.inferenceP95Ms = p95(this.options.latency.since(startMark));
    report.cpuMs = record.cpuMs;
    report.wallMs = performance.now() - startedPerf;
    report.inferenceP95Ms = record.inferenceP95Ms ?? 0;
    // Remembered before it is sent: an uplink that is offline now still gets it on the replay.
    this.options.reports.put(key, report);
    await this.send(report);
  }

  private async send(report: FederatedReport): Promise<void> {
    try {
      await this.options.publish(report);
    } catch (err) {
      this.options.logger.warn(
        { err, task: report.taskId, round: report.round },
        'federated report not sent (the uplink is offline); a replayed invitation resends it',
      );
    }
  }

  /** @internal for RoundWork */
  get deps(): LearnerOptions & { cpuTimeMs: () => number } {
    return { ...this.options, cpuTimeMs: this.cpuTimeMs };
  }

  /** @internal for RoundWork: throws Cancelled once the task is cancelled or the learner shuts down. */
  checkCancelled(taskId: string): void {
    if (this.closed || this.cancelledTasks.has(taskId)) throw new Cancelled();
  }
}

function emptyReport(invitation: FederatedInvitation, errorCode: string, message: string): FederatedReport {
  return {
    taskId: invitation.taskId,
    round: invitation.round,
    kind: invitation.kind,
    headSha256: invitation.headSha256,
    headVersion: invitation.headVersion,
    errorCode,
    message,
    sampleCount: 0,
    trainLoss: 0,
    update: undefined,
    evalSamples: 0,
    evalCorrect: 0,
    evalLoss: 0,
    perClassSupport: [],
    perClassCorrect: [],
    perClassPredicted: [],
    cpuMs: 0,
    wallMs: 0,
    inferenceP95Ms: 0,
  };
}

const refuse = (code: ErrorCode, message: string, details?: Record<string, unknown>): DriftlineError =>
  new DriftlineError(code, message, details ? { details } : {});

/** One invitation's work: the steps of a round, with its CPU accounting and its pauses. */
class RoundWork {
  private readonly deps: LearnerOptions & { cpuTimeMs: () => number };

  constructor(
    private readonly learner: FederatedLearner,
    private readonly invitation: FederatedInvitation,
    private readonly record: RoundRecord,
  ) {
    this.deps = learner.deps;
  }

  async train(): Promise<FederatedReport> {
    const inv = this.invitation;
    checkTrainingSettings(inv);
    await this.checkGuards();
    const { backbone, start } = await this.headAndBackbone();
    try {
      const samples = this.samplesFor('train', this.deps.minSamples);
      this.checkMemory(samples.length, backbone.features, headLength(start), 5);
      const rows = await this.embed(backbone, samples);
      const trained = await this.trainSliced(start, rows);
      const startVector = flattenHead(start);
      const delta = flattenHead(trained.layers);
      for (let i = 0; i < delta.length; i++) delta[i] = delta[i]! - startVector[i]!;
      const norm = l2Norm(delta);
      if (inv.clippingNorm > 0 && norm > inv.clippingNorm) {
        const scale = inv.clippingNorm / norm;
        for (let i = 0; i < delta.length; i++) delta[i]! *= scale;
      }
      const rng = seededRandom(Number(BigInt.asUintN(32, BigInt(inv.seed))) ^ 0x5eed);
      const update = encodeUpdate(delta, isUpdateEncoding(inv.updateCompression) ? inv.updateCompression : 'float32', () => rng.next());
      return { ...emptyReport(inv, '', ''), sampleCount: rows.rows, trainLoss: trained.loss, update };
    } finally {
      await backbone.close();
    }
  }

  async evaluate(): Promise<FederatedReport> {
    const inv = this.invitation;
    // Evaluation is light (one forward pass per held-out sample): only the profile's switch applies.
    if (!this.deps.guards.enabled) throw refuse('LEARNER_NOT_ALLOWED', "the firmware profile's learner.enabled is false");
    const { backbone, start } = await this.headAndBackbone();
    try {
      const samples = this.samplesFor('held-out', 1);
      this.checkMemory(samples.length, backbone.features, headLength(start), 1);
      const rows = await this.embed(backbone, samples);
      const classes = start[start.length - 1]!.outputs;
      const probabilities = headProbabilities(start, rows.x, rows.rows);
      const support = new Array<number>(classes).fill(0);
      const correct = new Array<number>(classes).fill(0);
      // What the head predicted per class, right or wrong: the control plane's exact macro F1 needs it.
      const predicted = new Array<number>(classes).fill(0);
      let loss = 0;
      let right = 0;
      for (let r = 0; r < rows.rows; r++) {
        const label = rows.y[r]!;
        let best = 0;
        for (let c = 1; c < classes; c++) if (probabilities[r * classes + c]! > probabilities[r * classes + best]!) best = c;
        support[label]!++;
        predicted[best]!++;
        if (best === label) {
          correct[label]!++;
          right++;
        }
        loss -= Math.log(Math.max(probabilities[r * classes + label]!, 1e-12));
      }
      return {
        ...emptyReport(inv, '', ''),
        evalSamples: rows.rows,
        evalCorrect: right,
        evalLoss: loss / rows.rows,
        perClassSupport: support,
        perClassCorrect: correct,
        perClassPredicted: predicted,
      };
    } finally {
      await backbone.close();
    }
  }

  private async checkGuards(): Promise<void> {
    const refusal = guardRefusal(this.deps.guards, {
      nowMs: this.deps.clock.now(),
      temperatureC: await this.deps.temperature(),
      inferencesPerSecond: this.deps.latency.ratePerSecond(IDLE_WINDOW_MS),
    });
    if (refusal) throw refuse('LEARNER_NOT_ALLOWED', `training not allowed now: ${refusal}`);
  }

  private async headAndBackbone(): Promise<{ backbone: Backbone; start: DenseLayer[] }> {
    const inv = this.invitation;
    const start = await this.deps.heads.fetch(inv);
    const backbone = await this.deps.backbones.open(inv.model, inv.version, start.length);
    const own = backbone.head;
    const same = own.length === start.length && own.every((l, i) => l.inputs === start[i]!.inputs && l.outputs === start[i]!.outputs);
    if (!same) {
      await backbone.close();
      const shape = (layers: readonly DenseLayer[]) => [layers[0]!.inputs, ...layers.map((l) => l.outputs)].join(' → ');
      throw refuse('LEARNER_NO_HEAD', `the round's head (${shape(start)}) is not the head of ${inv.model} v${inv.version} on this device (${shape(own)})`);
    }
    return { backbone, start };
  }

  private samplesFor(split: SampleSplit, minimum: number): LocalSample[] {
    const inv = this.invitation;
    const available = this.deps.samples.count(inv.model, split);
    if (available < minimum) {
      throw refuse('LEARNER_NOT_ENOUGH_SAMPLES', `${available} labelled ${split} samples of ${inv.model} on this device; at least ${minimum} needed`, {
        available,
        minimum,
      });
    }
    return this.deps.samples.labelled(inv.model, split, this.deps.maxSamplesPerRound);
  }

  /** The round's working memory, bounded before it is allocated: the embeddings and `copies` head-sized vectors. */
  private checkMemory(rows: number, features: number, parameters: number, copies: number): void {
    const bytes = rows * (features + 1) * 4 + parameters * 4 * copies;
    const cap = this.deps.guards.memoryPerRound;
    if (bytes > cap) {
      throw refuse('LEARNER_BUDGET_EXCEEDED', `the round needs about ${bytes} bytes, above the profile's learner.memoryPerRound of ${cap}`, { bytes, cap });
    }
  }

  /** Runs fn, counting the CPU time the process spends meanwhile against the round's cap. */
  private async metered<T>(fn: () => T | Promise<T>): Promise<T> {
    const before = this.deps.cpuTimeMs();
    let result: T;
    try {
      result = await fn();
    } finally {
      this.record.cpuMs += Math.max(0, this.deps.cpuTimeMs() - before);
    }
    const cap = this.deps.guards.cpuTimePerRound;
    if (this.record.cpuMs > cap) {
      throw refuse(
        'LEARNER_BUDGET_EXCEEDED',
        `the round used ${this.record.cpuMs.toFixed(1)} ms of CPU, above the profile's learner.cpuTimePerRound of ${cap} ms`,
        {
          cpuMs: this.record.cpuMs,
          cap,
        },
      );
    }
    return result;
  }

  private async embed(backbone: Backbone, samples: readonly LocalSample[]): Promise<LabelledRows> {
    const features = backbone.features;
    const x = new Float32Array(samples.length * features);
    const y = new Int32Array(samples.length);
    for (let i = 0; i < samples.length; i++) {
      this.learner.checkCancelled(this.invitation.taskId);
      const sample = samples[i]!;
      let embedding = this.deps.embeddings.get(backbone.modelSha256, sample.id);
      if (embedding && embedding.length === features) {
        this.record.embeddingsCached++;
      } else {
        embedding = await this.metered(() => backbone.embed(sample.inputs));
        this.deps.embeddings.put(backbone.modelSha256, sample.id, embedding);
        this.record.embeddedNow++;
      }
      x.set(embedding, i * features);
      y[i] = sample.label;
    }
    return { x, y, rows: samples.length, features };
  }

  /**
   * Local epochs of plain mini-batch SGD (with FedProx's term when μ > 0), a few batches per
   * slice. Each slice is one call of trainHead on those batches: plain SGD keeps no state between
   * steps, so slicing changes nothing but where the event loop gets its turn.
   */
  private async trainSliced(start: DenseLayer[], rows: LabelledRows): Promise<{ layers: DenseLayer[]; loss: number }> {
    const inv = this.invitation;
    const { guards } = this.deps;
    const batchSize = inv.batchSize;
    const sliceRows = batchSize * guards.batchesPerSlice;
    const rng = seededRandom(Number(BigInt.asUintN(32, BigInt(inv.seed))));
    const order = Int32Array.from({ length: rows.rows }, (_, i) => i);
    const slice: LabelledRows = { x: new Float32Array(sliceRows * rows.features), y: new Int32Array(sliceRows), rows: 0, features: rows.features };
    let layers = start;
    let lastEpochLoss = 0;
    let checkFrom = this.deps.latency.mark();
    for (let epoch = 0; epoch < inv.localEpochs; epoch++) {
      for (let i = order.length - 1; i > 0; i--) {
        const j = rng.int(i + 1);
        const t = order[i]!;
        order[i] = order[j]!;
        order[j] = t;
      }
      let epochLoss = 0;
      for (let from = 0; from < rows.rows; from += sliceRows) {
        this.learner.checkCancelled(inv.taskId);
        const to = Math.min(rows.rows, from + sliceRows);
        for (let r = from; r < to; r++) {
          const row = order[r]!;
          slice.x.set(rows.x.subarray(row * rows.features, (row + 1) * rows.features), (r - from) * rows.features);
          slice.y[r - from] = rows.y[row]!;
        }
        const part: LabelledRows = {
          x: slice.x.subarray(0, (to - from) * rows.features),
          y: slice.y.subarray(0, to - from),
          rows: to - from,
          features: rows.features,
        };
        const result = await this.metered(() =>
          trainHead(layers, part, undefined, {
            epochs: 1,
            batchSize,
            learningRate: inv.learningRate,
            optimizer: 'sgd',
            momentum: 0,
            l2: 0,
            seed: rng.int(0x7fffffff),
            patience: 0,
            reinitialize: false,
            proximalMu: inv.proximalMu,
            proximalCenter: start,
          }),
        );
        layers = result.layers;
        epochLoss += result.history[0]!.train.loss * part.rows;
        this.record.slices++;
        // Inference's turn: its answers and the uplink run before the next slice.
        await new Promise<void>((resolve) => setImmediate(resolve));
        checkFrom = await this.yieldToInference(checkFrom);
      }
      lastEpochLoss = epochLoss / rows.rows;
      if (!Number.isFinite(lastEpochLoss)) throw refuse('HYPERPARAMETERS_INVALID', `local training diverged in epoch ${epoch + 1}: lower the learning rate`);
    }
    return { layers, loss: lastEpochLoss };
  }

  /**
   * After a slice: the p95 of the inferences since the last check against the profile's factor
   * × the baseline; above it, training waits the profile's pause. Returns the mark the next
   * check starts from (after the pause, so the next check judges what came after it).
   */
  private async yieldToInference(checkFrom: number): Promise<number> {
    const { guards, clock, latency } = this.deps;
    const baseline = this.record.baselineP95Ms;
    const now = clock.now();
    const recent = p95(latency.since(checkFrom));
    if (baseline === undefined || recent === undefined || recent <= guards.inferenceP95Factor * baseline) return latency.mark();
    this.record.overBound++;
    if (this.invitation.deadlineMs > 0 && now + guards.pause > this.invitation.deadlineMs) {
      throw refuse('LEARNER_BUDGET_EXCEEDED', 'the round reached its deadline while training yielded to inference', { deadlineMs: this.invitation.deadlineMs });
    }
    this.record.pauses++;
    await new Promise<void>((resolve) => clock.setTimeout(resolve, guards.pause));
    this.record.pausedMs += clock.now() - now;
    this.learner.checkCancelled(this.invitation.taskId);
    return latency.mark();
  }
}

function checkTrainingSettings(inv: FederatedInvitation): void {
  const bad = (field: string, why: string) => refuse('FEDERATED_TASK_INVALID', `the invitation's ${field} ${why}`, { field });
  if (!Number.isInteger(inv.localEpochs) || inv.localEpochs < 1 || inv.localEpochs > 1000) throw bad('local_epochs', 'must be 1 to 1000');
  if (!Number.isInteger(inv.batchSize) || inv.batchSize < 1 || inv.batchSize > 65_536) throw bad('batch_size', 'must be 1 to 65536');
  if (!(inv.learningRate > 0) || !Number.isFinite(inv.learningRate)) throw bad('learning_rate', 'must be above 0');
  if (!(inv.proximalMu >= 0) || !Number.isFinite(inv.proximalMu)) throw bad('proximal_mu', 'must be 0 or more');
  if (!(inv.clippingNorm >= 0) || !Number.isFinite(inv.clippingNorm)) throw bad('clipping_norm', 'must be 0 or more');
  if (inv.updateCompression !== '' && !isUpdateEncoding(inv.updateCompression))
    throw bad('update_compression', `${JSON.stringify(inv.updateCompression)} is not float32, float16 or int8`);
}
