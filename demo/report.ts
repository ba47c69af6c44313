import type { TelemetrySummary } from '../common/proto/driftline/v1/telemetry.js';
import { describeDrift, type DemoDriftReport } from './drift-scenario.js';
import { count, plainTable } from './status-view.js';
import { fleetPercentile, type DeviceTraffic } from './traffic.js';

/** An agent's own record accounting, from its `driftline-agent: stopped ...` line. */
export interface AgentAccount {
  enqueued: number;
  acknowledged: number;
  buffered: number;
  dropped: number;
}

export interface DeviceOutcome {
  id: string;
  traffic: DeviceTraffic;
  /** Undefined when the agent did not stop cleanly (no `stopped` line). */
  account: AgentAccount | undefined;
  /** The last figures its health endpoint gave, the fallback when there is no `stopped` line. */
  lastHealth: AgentAccount | undefined;
}

export interface DemoModelInfo {
  name: string;
  version: number;
  sha256: string;
  /** Held-out accuracy measured when the demo trained it. */
  accuracy: number;
}

export interface DeviceReport {
  id: string;
  inferences: number;
  failedInferences: number;
  enqueued: number;
  acknowledged: number;
  stored: number;
  buffered: number;
  dropped: number;
  lost: number;
  stoppedCleanly: boolean;
}

/** With --scenario pipeline: what each device served and what each model answered and stored. */
export interface PipelineOutcome {
  /** Per device: the models its application got answers from, and those its last reported state lists as serving. */
  perDevice: Record<string, { answered: string[]; reported: string[] }>;
  /** Per model: inferences the applications got answered, and inferences the control plane stored. */
  perModel: Record<string, { inferences: number; stored: number }>;
}

/** The demo's result: the --json line, and what the human summary shows. */
export interface DemoReport {
  ok: boolean;
  devices: number;
  inferences: number;
  failedInferences: number;
  /** Records the control plane stored, from its telemetry summary. */
  telemetryStored: number;
  /** Sum over agents of (enqueued - stored for that device), each clamped at 0. */
  lost: number;
  /** With --scenario drift: drift per cohort, as the control plane's DriftService reported it at the end. */
  drift?: DemoDriftReport;
  /** With --scenario pipeline: the fewest models any device served (answered and reported serving). */
  models?: number;
  /** With --scenario pipeline: per model, inferences answered and stored. */
  perModel?: PipelineOutcome['perModel'];
  enqueued: number;
  buffered: number;
  dropped: number;
  duplicatesDropped: number;
  durationS: number;
  ratePerDevice: number;
  latencyMs: { p50: number; p95: number } | null;
  /** Share of successful inferences whose predicted class matched the row's true label. */
  liveAccuracy: number | null;
  model: DemoModelInfo;
  perDevice: DeviceReport[];
  /** Why ok is false, one sentence each. */
  problems: string[];
  /** Where the data and logs are, when they were kept. */
  dataDir?: string;
}

const round = (n: number, digits: number): number => Number(n.toFixed(digits));

/**
 * Puts the three views of the run side by side: what the applications saw, what each agent
 * says it enqueued, and what the control plane stored. A record counts as lost when the agent
 * enqueued it and the store does not have it; duplicates cannot hide a loss because the store
 * de-duplicates by (device, boot, sequence) before counting.
 */
export function buildReport(input: {
  devices: readonly DeviceOutcome[];
  summary: TelemetrySummary;
  model: DemoModelInfo;
  durationS: number;
  ratePerDevice: number;
  problems: readonly string[];
  drift?: DemoDriftReport | undefined;
  pipeline?: PipelineOutcome | undefined;
}): DemoReport {
  const stored = new Map(input.summary.devices.map((d) => [d.deviceId, d.records]));
  const problems = [...input.problems];
  const perDevice = input.devices.map((d): DeviceReport => {
    const account = d.account ?? d.lastHealth ?? { enqueued: 0, acknowledged: 0, buffered: 0, dropped: 0 };
    const storedHere = stored.get(d.id) ?? 0;
    const lost = Math.max(0, account.enqueued - storedHere);
    if (!d.account) problems.push(`${d.id} did not stop cleanly; its figures are the last it reported`);
    if (lost > 0) problems.push(`${d.id} enqueued ${account.enqueued} records but the control plane stored ${storedHere}`);
    if (account.dropped > 0) problems.push(`${d.id} dropped ${account.dropped} records (buffer full)`);
    return {
      id: d.id,
      inferences: d.traffic.ok,
      failedInferences: d.traffic.failed,
      enqueued: account.enqueued,
      acknowledged: account.acknowledged,
      stored: storedHere,
      buffered: account.buffered,
      dropped: account.dropped,
      lost,
      stoppedCleanly: d.account !== undefined,
    };
  });
  const sum = (pick: (d: DeviceReport) => number): number => perDevice.reduce((total, d) => total + pick(d), 0);
  const failedInferences = sum((d) => d.failedInferences);
  if (failedInferences > 0) {
    const last = input.devices.map((d) => d.traffic.lastError).findLast((e) => e !== undefined);
    problems.push(`${failedInferences} inferences failed${last ? ` (last: ${last})` : ''}`);
  }
  const inferences = sum((d) => d.inferences);
  const correct = input.devices.reduce((total, d) => total + d.traffic.correct, 0);
  const traffic = input.devices.map((d) => d.traffic);
  const p50 = fleetPercentile(traffic, 50);
  const p95 = fleetPercentile(traffic, 95);
  if (inferences === 0) problems.push('no inference succeeded');
  const pipeline = input.pipeline;
  const modelsServed = pipeline ? pipelineProblems(pipeline, problems) : undefined;
  return {
    ok: problems.length === 0,
    devices: perDevice.length,
    inferences,
    failedInferences,
    telemetryStored: input.summary.recordsStored,
    lost: sum((d) => d.lost),
    ...(input.drift ? { drift: input.drift } : {}),
    ...(pipeline ? { models: modelsServed, perModel: pipeline.perModel } : {}),
    enqueued: sum((d) => d.enqueued),
    buffered: sum((d) => d.buffered),
    dropped: sum((d) => d.dropped),
    duplicatesDropped: input.summary.duplicatesDropped,
    durationS: round(input.durationS, 1),
    ratePerDevice: input.ratePerDevice,
    latencyMs: p50 === undefined || p95 === undefined ? null : { p50: round(p50, 2), p95: round(p95, 2) },
    liveAccuracy: inferences ? round(correct / inferences, 4) : null,
    model: { ...input.model, accuracy: round(input.model.accuracy, 4) },
    perDevice,
    problems,
  };
}

/** Adds what the pipeline got wrong to problems; resolves with the fewest models any device served both ways. */
function pipelineProblems(pipeline: PipelineOutcome, problems: string[]): number {
  const models = Object.keys(pipeline.perModel);
  let fewest = Infinity;
  for (const [device, { answered, reported }] of Object.entries(pipeline.perDevice)) {
    const both = answered.filter((m) => reported.includes(m));
    fewest = Math.min(fewest, both.length);
    const missing = models.filter((m) => !both.includes(m));
    if (missing.length > 0)
      problems.push(
        `${device} did not serve ${missing.join(', ')} (answered: ${answered.join(', ') || 'none'}; reported serving: ${reported.join(', ') || 'none'})`,
      );
  }
  for (const [model, { inferences, stored }] of Object.entries(pipeline.perModel)) {
    // Stored counts every inference record, answered ones and any the agent recorded as failed; never fewer than answered.
    if (stored < inferences) problems.push(`${model}: ${inferences} inferences answered but the control plane stored ${stored}`);
  }
  return Number.isFinite(fewest) ? fewest : 0;
}

const percent = (share: number | null): string => (share === null ? '-' : `${(100 * share).toFixed(1)}%`);

/** The short summary a person reads at the end. */
export function renderSummary(report: DemoReport): string {
  const table = plainTable(
    ['DEVICE', 'INFERENCES', 'FAILED', 'ENQUEUED', 'STORED', 'BUFFERED', 'LOST'],
    report.perDevice.map((d) => [d.id, count(d.inferences), count(d.failedInferences), count(d.enqueued), count(d.stored), count(d.buffered), count(d.lost)]),
  );
  const latency = report.latencyMs ? `p50 ${report.latencyMs.p50} ms, p95 ${report.latencyMs.p95} ms (client side)` : 'no latency measured';
  const lines = [
    '',
    `Driftline demo: ${report.devices} devices, ${report.durationS} s of traffic at ${report.ratePerDevice}/s per device`,
    `  model       ${report.model.name}@v${report.model.version}  held-out accuracy ${percent(report.model.accuracy)}, live accuracy ${percent(report.liveAccuracy)}`,
    `  inferences  ${count(report.inferences)} ok, ${count(report.failedInferences)} failed; ${latency}`,
    `  telemetry   ${count(report.enqueued)} records enqueued by the agents, ${count(report.telemetryStored)} stored by the control plane`,
    `  lost        ${count(report.lost)} (duplicates dropped on the way: ${count(report.duplicatesDropped)})`,
    ...(report.perModel
      ? [
          `  models      ${report.models} per device: ${Object.entries(report.perModel)
            .map(([name, m]) => `${name} ${count(m.inferences)} answered, ${count(m.stored)} stored`)
            .join('; ')}`,
        ]
      : []),
    ...(report.drift
      ? [
          `  drift       ${report.drift.status}: ${describeDrift(report.drift)}${report.drift.firstAlertS === null ? '' : `; first alert after ${report.drift.firstAlertS} s of traffic`}`,
        ]
      : []),
    '',
    table,
    report.ok ? 'OK: every inference answered, every telemetry record stored exactly once.' : `FAILED:\n${report.problems.map((p) => `  - ${p}`).join('\n')}`,
  ];
  return `${lines.join('\n')}\n`;
}
