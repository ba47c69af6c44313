/**
 * The chaos run's checker, in the spirit of Jepsen's total-queue checker: after the run has
 * healed (every process up, load stopped, buffers drained, agents stopped cleanly), it
 * compares what each agent acknowledged with what the control plane's store holds.
 * Pure: the harness reads the files and the processes, this judges them.
 *
 * What "acknowledged" means (see bench/chaos.ts's header for why):
 * - A telemetry record is acknowledged once the agent's buffer committed it. The buffer's
 *   sequence numbers are AUTOINCREMENT rowids of one table that lives across boots; SQLite
 *   hands them out without gaps to committed transactions only, so the records the buffer
 *   ever committed are exactly seq 1..committed (sqlite_sequence). Each must be in the store
 *   exactly once, unless the buffer's retention policy dropped it and counted the drop.
 * - An inference is acknowledged when the local API answered it with 200. Its telemetry is
 *   recorded off the request path (group-committed a few milliseconds later), so a kill -9
 *   may take the last few answered inferences' records with it before they were committed:
 *   those are reported (unrecordedAtKill), not lost. In the last boot, which ends with a clean
 *   stop, every answered inference must be stored.
 */

export interface StoredRecord {
  boot: number;
  seq: number;
  kind: string;
  /** 1 for an inference answered ok, 0 for a failed one, null for other kinds. */
  ok: number | null;
}

export interface DeviceEvidence {
  deviceId: string;
  /** The highest seq the buffer ever committed (sqlite_sequence of its outbox). */
  committed: number;
  /** Seqs still in the buffer's outbox at the end (not yet acknowledged by the control plane). */
  pendingSeqs: readonly number[];
  /**
   * Per boot (index 0 = boot 1): inference records answered ok that are among pendingSeqs, so
   * neither stored nor missing: still waiting in the buffer. Absent: none.
   */
  pendingOkInferences?: readonly number[];
  /** Records the buffer's retention policy dropped and counted (buffer.drops). */
  dropped: number;
  /** How many times the harness started this agent (its boots are 1..starts). */
  starts: number;
  /** The agent's own boot counter at the end. */
  boot: number;
  /** Per boot (index 0 = boot 1): requests sent and requests answered with 200. */
  attempted: readonly number[];
  answered: readonly number[];
  /** True when the last boot ended with a clean stop (SIGTERM, drained, exit 0). */
  lastBootStoppedCleanly: boolean;
  stored: readonly StoredRecord[];
  /** The model the device serves at the end, and the one its desired state names. */
  served: { name: string; version: number } | null;
  desired: { name: string; version: number } | null;
  /** The error code the device reports (its reported state) when it refused its desired model; '' for none. */
  reportedError: string;
}

export interface DeviceVerdict {
  deviceId: string;
  committed: number;
  stored: number;
  lost: number;
  duplicated: number;
  unexpected: number;
  /**
   * A few examples of each problem: seqs, or sentences for unexpected records and for answered
   * inferences that have no record anywhere (never committed, so no seq to show).
   */
  examples: { lost: number[]; duplicated: number[]; unexpected: string[]; unrecorded: string[] };
  buffered: number;
  dropped: number;
  unrecordedAtKill: number;
  modelConsistent: boolean;
  served: DeviceEvidence['served'];
  desired: DeviceEvidence['desired'];
  /** Why the device says it is not on its desired model, when it is not and says so. */
  refusal: string;
}

export interface CheckResult {
  lost: number;
  duplicated: number;
  unexpected: number;
  models_inconsistent: number;
  /** Of those, the devices that report refusing their desired model, by the code they report. */
  models_refused: Record<string, number>;
  /**
   * Committed records still in a buffer at the check (the final drain ran out of time): neither
   * lost nor delivered, never counted in `lost`.
   */
  buffered: number;
  dropped: number;
  records_committed: number;
  records_stored: number;
  inferences_answered: number;
  /** Answered inferences whose records a kill -9 took before they were committed (by design; see above). */
  inferences_unrecorded_at_kill: number;
  devices: DeviceVerdict[];
}

/** At most this many example seqs per device and problem in the verdict, so a bad run's report stays readable. */
const EXAMPLES = 20;

export function checkDevice(e: DeviceEvidence): DeviceVerdict {
  const seen = new Map<number, number>();
  const unexpected: string[] = [];
  let unexpectedCount = 0;
  const flag = (what: string): void => {
    unexpectedCount++;
    if (unexpected.length < EXAMPLES) unexpected.push(what);
  };
  for (const r of e.stored) {
    seen.set(r.seq, (seen.get(r.seq) ?? 0) + 1);
    if (!Number.isInteger(r.seq) || r.seq < 1 || r.seq > e.committed)
      flag(`seq ${r.seq} (boot ${r.boot}) was never committed by the buffer (committed 1..${e.committed})`);
    if (!Number.isInteger(r.boot) || r.boot < 1 || r.boot > e.starts) flag(`seq ${r.seq} carries boot ${r.boot}, but the agent ran boots 1..${e.starts}`);
  }
  if (e.boot !== e.starts) flag(`the agent's boot counter is ${e.boot} after ${e.starts} starts`);

  // Inference records per boot: never more than requests sent in that boot (one record per request).
  const inferencesPerBoot = new Map<number, { all: number; ok: number }>();
  for (const r of e.stored) {
    if (r.kind !== 'inference') continue;
    const n = inferencesPerBoot.get(r.boot) ?? { all: 0, ok: 0 };
    n.all++;
    if (r.ok === 1) n.ok++;
    inferencesPerBoot.set(r.boot, n);
  }
  const lostSeqs: number[] = [];
  const unrecorded: string[] = [];
  let lostCount = 0;
  let unrecordedAtKill = 0;
  for (let boot = 1; boot <= e.starts; boot++) {
    const n = inferencesPerBoot.get(boot) ?? { all: 0, ok: 0 };
    const attempted = e.attempted[boot - 1] ?? 0;
    const answered = e.answered[boot - 1] ?? 0;
    if (n.all > attempted) flag(`boot ${boot} has ${n.all} inference records for ${attempted} requests sent`);
    // Answered, and neither stored nor still in the buffer: no record of it anywhere.
    const missing = Math.max(0, answered - n.ok - (e.pendingOkInferences?.[boot - 1] ?? 0));
    const last = boot === e.starts;
    // Counted as lost too; a committed inference record missing from the store then counts twice (lost is an upper bound).
    if (last && e.lastBootStoppedCleanly) {
      lostCount += missing;
      if (missing > 0) unrecorded.push(`boot ${boot}: ${missing} of ${answered} answered inferences have no record, stored or buffered`);
    } else unrecordedAtKill += missing;
  }

  const pending = new Set(e.pendingSeqs);
  let missingCommitted = 0;
  for (let seq = 1; seq <= e.committed; seq++) {
    if (seen.has(seq) || pending.has(seq)) continue;
    missingCommitted++;
    if (missingCommitted > e.dropped && lostSeqs.length < EXAMPLES) lostSeqs.push(seq);
  }
  lostCount += Math.max(0, missingCommitted - e.dropped);

  const duplicated: number[] = [];
  let duplicatedCount = 0;
  for (const [seq, count] of seen) {
    if (count < 2) continue;
    duplicatedCount += count - 1;
    if (duplicated.length < EXAMPLES) duplicated.push(seq);
  }

  const modelConsistent = e.desired !== null && e.served !== null && e.served.name === e.desired.name && e.served.version === e.desired.version;
  return {
    deviceId: e.deviceId,
    committed: e.committed,
    stored: e.stored.length,
    lost: lostCount,
    duplicated: duplicatedCount,
    unexpected: unexpectedCount,
    examples: { lost: lostSeqs, duplicated, unexpected, unrecorded },
    buffered: [...pending].filter((s) => !seen.has(s)).length,
    dropped: e.dropped,
    unrecordedAtKill,
    modelConsistent,
    served: e.served,
    desired: e.desired,
    refusal: modelConsistent ? '' : e.reportedError,
  };
}

export function check(devices: readonly DeviceEvidence[]): CheckResult {
  const verdicts = devices.map(checkDevice);
  const sum = (f: (v: DeviceVerdict) => number): number => verdicts.reduce((n, v) => n + f(v), 0);
  return {
    lost: sum((v) => v.lost),
    duplicated: sum((v) => v.duplicated),
    unexpected: sum((v) => v.unexpected),
    models_inconsistent: verdicts.filter((v) => !v.modelConsistent).length,
    models_refused: Object.fromEntries(
      [...new Set(verdicts.filter((v) => !v.modelConsistent && v.refusal).map((v) => v.refusal))].map((code) => [
        code,
        verdicts.filter((v) => !v.modelConsistent && v.refusal === code).length,
      ]),
    ),
    buffered: sum((v) => v.buffered),
    dropped: sum((v) => v.dropped),
    records_committed: sum((v) => v.committed),
    records_stored: sum((v) => v.stored),
    inferences_answered: devices.reduce((n, d) => n + d.answered.reduce((a, b) => a + b, 0), 0),
    inferences_unrecorded_at_kill: sum((v) => v.unrecordedAtKill),
    devices: verdicts,
  };
}
