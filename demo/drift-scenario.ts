import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import type { DriftStatus } from '../common/proto/driftline/v1/drift.js';
import { demoTrainingData } from './model/demo-model.js';
import { toCsv, VIBRATION_CLASSES } from './model/vibration-data.js';

/**
 * The pieces of `npm run demo -- --scenario drift` that are not the fleet demo's: which
 * devices get drifted inputs, the reference the model is pushed with, the agents' short
 * drift window, and the drift status as the control plane's DriftService reports it.
 */

export const CLEAN_COHORT = 'plant-1';
/** Its devices' applications read aged sensors (the data generator's drift switch, severity 1). */
export const DRIFTED_COHORT = 'plant-2';

/**
 * Agents close a drift window every 5 s instead of every 15 s, so the first sketches reach
 * the control plane a few seconds after traffic starts; the control plane's settings stay
 * `driftline serve`'s defaults (15 min window, 100 rows before a verdict).
 */
const DEMO_AGENT_CONFIG = { schedule: { driftWindow: '*/5 * * * * *' } } as const;

export const REFERENCE_CLASSES = VIBRATION_CLASSES.join(',');

/** The demo model's own training rows as CSV, the file an operator hands to `models push --reference`. */
export function writeReferenceCsv(path: string): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, toCsv(demoTrainingData()));
}

export function writeAgentConfig(path: string): void {
  writeFileSync(path, `${JSON.stringify(DEMO_AGENT_CONFIG, null, 2)}\n`);
}

export interface CohortDrift {
  status: string;
  devices: number;
  rows: number;
  /** The largest feature PSI. */
  psi: number;
  /** Features whose corrected test says drifted. */
  drifted: string[];
}

export interface DemoDriftReport {
  /** The worst cohort's status. */
  status: string;
  model: string;
  version: number;
  cohorts: Record<string, CohortDrift>;
  /** The whole fleet's status (cohort "" in DriftStatus). */
  fleet: string;
  /** Seconds of traffic before the live view first saw the drifted cohort alert; null when it never did. */
  firstAlertS: number | null;
}

// Worst last; a status the demo does not know ranks lowest.
const SEVERITY = ['no_reference', 'no_data', 'ok', 'warn', 'alert'];
const worst = (statuses: readonly string[]): string => statuses.reduce((a, b) => (SEVERITY.indexOf(b) > SEVERITY.indexOf(a) ? b : a), 'no_data');

/** The newest version's drift per cohort, from GetDriftStatus; undefined when there is none yet. */
export function summarizeDrift(statuses: readonly DriftStatus[], firstAlertS: number | null = null): DemoDriftReport | undefined {
  if (statuses.length === 0) return undefined;
  const version = Math.max(...statuses.map((s) => s.version));
  const mine = statuses.filter((s) => s.version === version);
  const cohorts: Record<string, CohortDrift> = {};
  for (const s of mine) {
    if (s.cohort === '') continue;
    cohorts[s.cohort] = {
      status: s.status,
      devices: s.devices,
      rows: s.rows,
      psi: Number(Math.max(0, ...s.features.map((f) => f.psi)).toFixed(3)),
      drifted: s.features.filter((f) => f.drifted).map((f) => f.name),
    };
  }
  return {
    status: worst(Object.values(cohorts).map((c) => c.status)),
    model: mine[0]!.model,
    version,
    cohorts,
    fleet: mine.find((s) => s.cohort === '')?.status ?? 'no_data',
    firstAlertS,
  };
}

/** Why the scenario did not show what it should, one sentence each; empty when it did. */
export function driftProblems(drift: DemoDriftReport | undefined): string[] {
  const drifted = drift?.cohorts[DRIFTED_COHORT]?.status ?? 'no_data';
  const clean = drift?.cohorts[CLEAN_COHORT]?.status ?? 'no_data';
  const problems: string[] = [];
  if (drifted !== 'alert') problems.push(`cohort ${DRIFTED_COHORT} was fed drifted inputs but its drift status is ${drifted}, not alert`);
  if (clean === 'alert' || clean === 'no_data' || clean === 'no_reference') {
    problems.push(`cohort ${CLEAN_COHORT} was fed clean inputs but its drift status is ${clean}, expected a verdict below alert`);
  }
  return problems;
}

/** One line: each cohort's status and largest PSI. */
export function describeDrift(drift: DemoDriftReport | undefined): string {
  if (!drift || Object.keys(drift.cohorts).length === 0) return 'no sketches yet';
  return Object.entries(drift.cohorts)
    .map(([cohort, c]) => {
      // Below the control plane's minimum rows there is no verdict, and its PSI means little.
      if (c.status === 'no_data') return `${cohort} no_data (${c.rows} rows so far)`;
      return `${cohort} ${c.status} (max PSI ${c.psi.toFixed(2)}, ${c.drifted.length} drifted features, ${c.rows} rows)`;
    })
    .join(', ');
}
