import { Counter, Histogram, type Registry } from 'prom-client';
import type { InferenceObserver } from './engine.js';

/** Edge inference ranges from sub-millisecond tabular models to second-long vision ones. */
const LATENCY_BUCKETS_SECONDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/** Prometheus counters and a latency histogram fed by the engine's records. */
export function registerInferenceMetrics(registry: Registry): InferenceObserver {
  const requests = new Counter({
    name: 'driftline_inference_requests_total',
    help: 'Inference requests by model, outcome (ok or the error code) and execution provider',
    labelNames: ['model', 'outcome', 'provider'] as const,
    registers: [registry],
  });
  const latency = new Histogram({
    name: 'driftline_inference_latency_seconds',
    help: 'Inference latency of successful requests',
    labelNames: ['model', 'provider'] as const,
    buckets: LATENCY_BUCKETS_SECONDS,
    registers: [registry],
  });
  return {
    onInference(record) {
      requests.inc({ model: record.model, outcome: record.ok ? 'ok' : (record.errorCode ?? 'error'), provider: record.provider });
      if (record.ok) latency.observe({ model: record.model, provider: record.provider }, record.latencyMs / 1000);
    },
  };
}

/** One observer that hands each record to all of them in order. */
export function chainObservers(...observers: InferenceObserver[]): InferenceObserver {
  return {
    onInference(record) {
      for (const observer of observers) observer.onInference(record);
    },
  };
}
