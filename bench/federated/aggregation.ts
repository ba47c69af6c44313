/**
 * The aggregation figures of bench:federated:
 * - aggregation_vs_axpy: the streaming FedAvg aggregator's add() (sample-weighted, float64 running
 *   sum) against a plain Float32Array axpy loop (y += a·x) over the same update bytes, same run;
 * - peak RSS of streaming aggregation at 10, 100 and 1,000 clients, each in a fresh process
 *   (bench/federated/memory-child.ts) so one count's garbage does not colour the next: every
 *   client's update goes through the wire encoding, validation and the aggregator, then is
 *   dropped, so the peak stays O(model size).
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createStrategy, strategySpec } from '../../control-plane/federated/strategies/create-strategy.js';
import { seededRandom } from '../../common/seeded-random.js';

export interface ThroughputResult {
  aggregation_vs_axpy: number;
  aggregation_gb_per_s: number;
  axpy_gb_per_s: number;
  aggregation_params: number;
}

/** The baseline: y += a·x over Float32Arrays, the plainest loop there is. */
function axpy(a: number, x: Float32Array, y: Float32Array): void {
  const n = y.length;
  for (let i = 0; i < n; i++) y[i]! += a * x[i]!;
}

export function measureThroughput(params: number, distinct = 8, adds = 48, repeats = 3): ThroughputResult {
  const rng = seededRandom(11);
  const deltas = Array.from({ length: distinct }, () => Float32Array.from({ length: params }, () => rng.normal(0, 0.01)));
  const weights = Array.from({ length: distinct }, (_, i) => 10 + i);
  const strategy = createStrategy(strategySpec('fedavg'));
  const streaming = (): number => {
    const aggregator = strategy.createAggregator(params);
    for (let k = 0; k < adds; k++) aggregator.add({ deviceId: 'd', sampleCount: weights[k % distinct]!, delta: deltas[k % distinct]!, staleness: 0 });
    return aggregator.finish()[0]!;
  };
  const axpyAll = (): number => {
    const y = new Float32Array(params);
    for (let k = 0; k < adds; k++) axpy(weights[k % distinct]!, deltas[k % distinct]!, y);
    return y[0]!;
  };
  // Warm both up (JIT), then the best of alternating repeats: these machines are noisy.
  let sink = streaming() + axpyAll();
  let bestStreaming = Infinity;
  let bestAxpy = Infinity;
  for (let r = 0; r < repeats; r++) {
    let t = performance.now();
    sink += streaming();
    bestStreaming = Math.min(bestStreaming, performance.now() - t);
    t = performance.now();
    sink += axpyAll();
    bestAxpy = Math.min(bestAxpy, performance.now() - t);
  }
  if (!Number.isFinite(sink)) throw new Error('aggregation benchmark diverged');
  const bytes = adds * params * 4;
  const gbps = (ms: number): number => Number((bytes / (ms / 1000) / 1e9).toFixed(3));
  return {
    aggregation_vs_axpy: Number((bestAxpy / bestStreaming).toFixed(3)),
    aggregation_gb_per_s: gbps(bestStreaming),
    axpy_gb_per_s: gbps(bestAxpy),
    aggregation_params: params,
  };
}

export interface MemoryPoint {
  clients: number;
  peak_rss_mb: number;
  held_bytes: number;
}

export function measurePeakRss(clients: number, params: number): MemoryPoint {
  const child = fileURLToPath(new URL('./memory-child.ts', import.meta.url));
  const run = spawnSync(process.execPath, ['--import', 'tsx', child, String(clients), String(params)], { encoding: 'utf8', maxBuffer: 1 << 20 });
  if (run.status !== 0) throw new Error(`memory child (${clients} clients) failed: ${run.stderr.slice(-2000)}`);
  const lines = run.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]!) as MemoryPoint;
}
