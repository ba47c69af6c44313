import type { Logger } from '../../common/logger.js';
import { parseReference, referenceDigest, type DriftReference } from '../../common/drift/reference.js';
import { mergeSketches } from '../../common/drift/sketch.js';
import { DriftSketch, type DriftStatus } from '../../common/proto/driftline/v1/drift.js';
import { evaluateDrift, type DriftThresholds } from './evaluate.js';
import { BUCKET_HOUR_MS, BUCKET_MINUTE_MS, type DriftLookups, type DriftRollupRepository, type DriftRollupRow, type FeatureHistogram } from './ports.js';

export interface DriftQueryOptions {
  thresholds: DriftThresholds;
  /** Window used when a request gives no since_ms. */
  defaultWindowMs: number;
  /** Windows up to this long are answered from 1-minute buckets, longer ones from 1-hour buckets. */
  minuteBucketsUpToMs: number;
  /** The windowed test's long window (hour buckets); 0 or absent: off. */
  longWindowMs?: number;
}

/**
 * Drift status from the rollups: merges the buckets of a window across devices (and per cohort)
 * and tests the sum against the model version's reference. Parsed references are kept, as a
 * model version's reference never changes.
 */
export class DriftStatusQuery {
  private readonly references = new Map<string, DriftReference | null>();

  constructor(private readonly deps: { rollups: DriftRollupRepository; lookups: DriftLookups; logger: Logger }) {}

  /**
   * Drift per version of `model` (or one version), for the fleet (cohort "") and per cohort label.
   * For the default window (no since_ms) the same cohort over `longWindowMs` (hour buckets) is
   * tested alongside it: the windowed test that names a small shift the short window cannot.
   */
  async status(request: { model: string; version: number; sinceMs: number }, options: DriftQueryOptions, nowMs: number): Promise<DriftStatus[]> {
    const { rollups } = this.deps;
    const sinceMs = request.sinceMs > 0 ? request.sinceMs : nowMs - options.defaultWindowMs;
    const bucketMs = nowMs - sinceMs <= options.minuteBucketsUpToMs ? BUCKET_MINUTE_MS : BUCKET_HOUR_MS;
    const rows = await rollups.rowsSince(request.model, request.version, bucketMs, sinceMs);
    const longMs = options.longWindowMs ?? 0;
    const longRows =
      request.sinceMs === 0 && longMs > nowMs - sinceMs ? await rollups.rowsSince(request.model, request.version, BUCKET_HOUR_MS, nowMs - longMs) : undefined;
    const cohorts = await this.cohortsOf([...rows, ...(longRows ?? [])]);
    const versions = [...new Set(rows.map((r) => r.version))];
    if (request.version > 0 && !versions.includes(request.version)) versions.push(request.version);
    const statuses: DriftStatus[] = [];
    for (const version of versions) {
      const reference = await this.referenceOf(request.model, version);
      const empty = (cohort: string, status: string, reason: string): DriftStatus => ({
        model: request.model,
        version,
        cohort,
        status,
        devices: 0,
        rows: 0,
        driftedShare: 0,
        features: [],
        predictions: undefined,
        confidence: undefined,
        latencyP50Ms: 0,
        latencyP95Ms: 0,
        errorRate: 0,
        windowStartMs: sinceMs,
        windowEndMs: nowMs,
        reason,
        minRows: 0,
      });
      if (!reference) {
        statuses.push(empty('', 'no_reference', 'the model version has no drift reference'));
        continue;
      }
      const digest = referenceDigest(reference);
      const groups = groupsOf(rows, version, digest, cohorts);
      const long = longRows ? groupsOf(longRows, version, digest, cohorts) : undefined;
      if (!groups.has('')) statuses.push(empty('', 'no_data', 'no drift sketches in the window'));
      for (const [cohort, g] of [...groups].sort(([a], [b]) => a.localeCompare(b))) {
        statuses.push({
          model: request.model,
          version,
          cohort,
          devices: g.devices.size,
          ...evaluateDrift(reference, g.sketch, options.thresholds, { long: long?.get(cohort)?.sketch }),
        });
      }
    }
    return statuses;
  }

  /**
   * One feature's reference distribution against the fleet's (or a cohort's) merged counts in
   * the window, on the reference's edges; undefined when the version has no reference or the
   * reference no such feature. Current counts are zeros when no sketch reached the window.
   */
  async histogram(
    request: { model: string; version: number; cohort: string; feature: string; sinceMs: number },
    options: DriftQueryOptions,
    nowMs: number,
  ): Promise<FeatureHistogram | undefined> {
    const reference = await this.referenceOf(request.model, request.version);
    const feature = reference?.features.find((f) => f.name === request.feature);
    if (!reference || !feature) return undefined;
    const sinceMs = request.sinceMs > 0 ? request.sinceMs : nowMs - options.defaultWindowMs;
    const bucketMs = nowMs - sinceMs <= options.minuteBucketsUpToMs ? BUCKET_MINUTE_MS : BUCKET_HOUR_MS;
    const rows = await this.deps.rollups.rowsSince(request.model, request.version, bucketMs, sinceMs);
    const group = groupsOf(rows, request.version, referenceDigest(reference), await this.cohortsOf(rows)).get(request.cohort);
    const bins = group?.sketch.features.find((f) => f.name === request.feature);
    const current = feature.counts.map((_, i) => Number(bins?.counts[i] ?? 0));
    return {
      feature: feature.name,
      edges: [...feature.edges],
      reference: [...feature.counts],
      current,
      rows: Number(group?.sketch.rows ?? 0),
      windowStartMs: sinceMs,
      windowEndMs: nowMs,
    };
  }

  /** The cohort of every device with rows, looked up once per query. */
  private async cohortsOf(rows: readonly DriftRollupRow[]): Promise<Map<string, string>> {
    const ids = [...new Set(rows.map((r) => r.deviceId))];
    const cohorts = await Promise.all(ids.map((id) => this.deps.lookups.cohort(id)));
    return new Map(ids.map((id, i) => [id, cohorts[i]!]));
  }

  private async referenceOf(model: string, version: number): Promise<DriftReference | undefined> {
    const key = `${model}\u0000${version}`;
    if (!this.references.has(key)) {
      const json = await this.deps.lookups.reference(model, version);
      let parsed: DriftReference | null = null;
      if (json) {
        try {
          parsed = parseReference(json);
        } catch (err) {
          this.deps.logger.warn({ model, version, err }, 'model has an invalid drift reference');
        }
      }
      this.references.set(key, parsed);
    }
    return this.references.get(key) ?? undefined;
  }
}

/** The merged sketch of the fleet ("") and of each cohort, for one version and reference digest. */
function groupsOf(
  rows: readonly DriftRollupRow[],
  version: number,
  digest: string,
  cohorts: ReadonlyMap<string, string>,
): Map<string, { sketch: DriftSketch; devices: Set<string> }> {
  const groups = new Map<string, { sketch: DriftSketch; devices: Set<string> }>();
  for (const row of rows) {
    if (row.version !== version || row.digest !== digest) continue;
    const sketch = DriftSketch.decode(row.sketch);
    const cohort = cohorts.get(row.deviceId) ?? '';
    for (const group of cohort ? ['', cohort] : ['']) {
      const g = groups.get(group);
      if (!g) groups.set(group, { sketch, devices: new Set([row.deviceId]) });
      else {
        g.sketch = mergeSketches(g.sketch, sketch);
        g.devices.add(row.deviceId);
      }
    }
  }
  return groups;
}
