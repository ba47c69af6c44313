import { setTimeout as sleep } from 'node:timers/promises';
import { vibrationRowSampler, type DriftOption } from './model/vibration-data.js';

/** How long to wait before asking again while the deployed model is still on its way. */
const MODEL_WAIT_MS = 250;
/** A request that takes longer than this counts as failed instead of stalling the device's loop. */
const REQUEST_TIMEOUT_MS = 10_000;
/** Live p50 over the most recent requests, so the view shows the present, not the warm-up. */
const RECENT_LATENCIES = 256;
/** Whole-run percentiles from a uniform sample, so memory stays flat however long the demo runs. */
const RESERVOIR_SIZE = 4096;

/**
 * One application on one device: sends realistic vibration rows to the agent's local
 * inference API (Open Inference Protocol v2) at a steady rate, one request at a time,
 * and keeps score. A request slower than the interval just lowers the rate.
 */
export class DeviceTraffic {
  /** Requests answered with 200 by every stage (with a pipeline: both models answered). */
  ok = 0;
  failed = 0;
  /** Inferences answered with 200, per model (a pipeline calls each of its models once per request). */
  readonly okByModel: Record<string, number> = {};
  /** 503 MODEL_NOT_LOADED answers while the model was still arriving; not failures. */
  waitingForModel = 0;
  /** Successful inferences whose predicted class matched the row's true label. */
  correct = 0;
  lastError: string | undefined;
  private readonly recent: number[] = [];
  private readonly reservoir: number[] = [];
  private timed = 0;
  private readonly nextRow: ReturnType<typeof vibrationRowSampler>;
  private readonly stopper = new AbortController();
  private loop: Promise<void> | undefined;

  constructor(
    private readonly localApiUrl: string,
    /**
     * `drift`: the rows come from aged sensors (see DriftOption). `then`: a second model the
     * application calls with the first one's class probabilities (the pipeline scenario).
     */
    private readonly options: { model: string; ratePerSecond: number; seed: number; drift?: DriftOption; then?: string },
  ) {
    this.nextRow = vibrationRowSampler(options.seed, { drift: options.drift });
    for (const model of [options.model, options.then]) if (model) this.okByModel[model] = 0;
  }

  start(): void {
    this.loop ??= this.run();
  }

  /** Stops sending; resolves once the request in flight has been answered or cut off. */
  async stop(): Promise<void> {
    this.stopper.abort();
    await this.loop;
  }

  /** Median client-side latency of the most recent requests, in ms. */
  recentP50(): number | undefined {
    return quantile(
      [...this.recent].sort((a, b) => a - b),
      0.5,
    );
  }

  /** A uniform sample of the client-side latencies of the whole run, in ms. */
  samples(): readonly number[] {
    return this.reservoir;
  }

  private async run(): Promise<void> {
    const intervalMs = 1000 / this.options.ratePerSecond;
    const signal = this.stopper.signal;
    let due = performance.now();
    while (!signal.aborted) {
      const waitMs = due - performance.now();
      if (waitMs > 0) await sleep(waitMs, undefined, { signal }).catch(() => undefined);
      if (signal.aborted) break;
      const outcome = await this.inferOnce();
      if (outcome === 'model-not-loaded') {
        await sleep(MODEL_WAIT_MS, undefined, { signal }).catch(() => undefined);
        due = performance.now();
      } else {
        // Never schedule into the past: after a slow answer, carry on at the rate rather than burst to catch up.
        due = Math.max(due + intervalMs, performance.now());
      }
    }
  }

  private async inferOnce(): Promise<'ok' | 'failed' | 'model-not-loaded' | 'stopped'> {
    const row = this.nextRow();
    const started = performance.now();
    try {
      const first = await this.infer(this.options.model, { name: 'features', shape: [1, row.features.length], datatype: 'FP32', data: row.features });
      if (first.outcome !== 'ok') return first.outcome;
      if (this.options.then) {
        const probabilities = first.body.outputs?.find((o) => o.name === 'probabilities')?.data ?? [];
        const second = await this.infer(this.options.then, {
          name: 'fault_probabilities',
          shape: [1, probabilities.length],
          datatype: 'FP32',
          data: probabilities,
        });
        if (second.outcome !== 'ok') return second.outcome;
      }
      this.ok++;
      this.recordLatency(performance.now() - started);
      if (predictedClass(first.body) === row.label) this.correct++;
      return 'ok';
    } catch (err) {
      // Stopping cuts the request in flight; that is the demo ending, not the agent failing.
      if (this.stopper.signal.aborted) return 'stopped';
      this.fail(err instanceof Error ? `${err.name}: ${err.message}` : String(err));
      return 'failed';
    }
  }

  /** One call of one model's infer endpoint; a failure is counted here, a model still on its way is not. */
  private async infer(
    model: string,
    input: { name: string; shape: number[]; datatype: string; data: unknown[] },
  ): Promise<{ outcome: 'ok' | 'failed' | 'model-not-loaded'; body: InferResponse }> {
    const response = await fetch(`${this.localApiUrl}/v2/models/${encodeURIComponent(model)}/infer`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ inputs: [input] }),
      signal: AbortSignal.any([this.stopper.signal, AbortSignal.timeout(REQUEST_TIMEOUT_MS)]),
    });
    const body = (await response.json()) as InferResponse;
    if (response.status === 200) {
      this.okByModel[model] = (this.okByModel[model] ?? 0) + 1;
      return { outcome: 'ok', body };
    }
    // Before the deploy reaches the device the model is not there yet (404 for a model the agent has never had).
    if ((response.status === 503 && body.code === 'MODEL_NOT_LOADED') || (response.status === 404 && body.code === 'MODEL_NOT_FOUND')) {
      this.waitingForModel++;
      return { outcome: 'model-not-loaded', body };
    }
    this.fail(`${model}: HTTP ${response.status} ${body.code ?? ''} ${body.error ?? ''}`.trim());
    return { outcome: 'failed', body };
  }

  private fail(reason: string): void {
    this.failed++;
    this.lastError = reason;
  }

  private recordLatency(ms: number): void {
    this.recent.push(ms);
    if (this.recent.length > RECENT_LATENCIES) this.recent.shift();
    // Algorithm R: every latency of the run has the same chance to be in the sample.
    this.timed++;
    if (this.reservoir.length < RESERVOIR_SIZE) this.reservoir.push(ms);
    else {
      const slot = Math.floor(Math.random() * this.timed);
      if (slot < RESERVOIR_SIZE) this.reservoir[slot] = ms;
    }
  }
}

interface InferResponse {
  code?: string;
  error?: string;
  outputs?: Array<{ name: string; data: unknown[] }>;
}

function predictedClass(body: InferResponse): number | undefined {
  const label = body.outputs?.find((o) => o.name === 'label')?.data[0];
  return typeof label === 'number' ? label : undefined;
}

/** Nearest-rank quantile of sorted values. */
export function quantile(sorted: readonly number[], q: number): number | undefined {
  if (sorted.length === 0) return undefined;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank];
}

/** Percentile over the samples of several devices together. */
export function fleetPercentile(traffic: readonly DeviceTraffic[], p: number): number | undefined {
  const all = traffic.flatMap((t) => [...t.samples()]).sort((a, b) => a - b);
  return quantile(all, p / 100);
}
