/**
 * `npm run chaos -- --trials N`: a thousand kill -9s, then a Jepsen-style check.
 *
 * A control plane (`driftline serve`: store, embedded broker, rollout driver) and agents
 * (`driftline-agent run`) run as real processes with real SQLite files under steady load:
 * application clients send inferences to every agent's local API, which is what produces
 * telemetry. Each trial picks a kind and a process, kills it with SIGKILL at a random moment
 * of that activity, restarts it on the same data folder, and waits for a short load to go
 * through again (a condition, never a duration):
 *
 *   agent-enqueue  an agent while its recorder group-commits the inferences' records
 *   agent-upload   an agent with records waiting and its uplink connected (a batch in flight)
 *   agent-swap     an agent 0-800 ms after a new version was pushed and deployed (download,
 *                  verify, self-test, swap; swaps_interrupted counts kills before the swap ended)
 *   cp-commit      the control plane at a random moment of steady ingest (group commits)
 *   cp-ack         the control plane right after a batch was committed (its ack going out)
 *   cp-rollout     the control plane 0-2.5 s into a two-wave rollout of a new version
 *                  (ticks every 200 ms: wave starts, bakes, desired-state writes)
 *
 * A kind names what was going on, not a line of code: the moment within it is random.
 *
 * What "acknowledged" means here. An agent acknowledges two things:
 * - a telemetry record, once its buffer committed it to buffer.db (the agent's promise: it
 *   keeps a record until the control plane acknowledges it after committing it). Those are
 *   exactly seq 1..sqlite_sequence of the buffer's outbox, across boots (AUTOINCREMENT
 *   rowids are handed out without gaps to committed transactions only);
 * - an inference, when the local API answers it with 200. Its record is written off the
 *   request path (a group commit a few ms later), so a kill -9 may take the last answered
 *   inferences' records with it before they were committed: counted as
 *   inferences_unrecorded_at_kill, not as lost. After the last boot, which ends with a clean
 *   stop, every answered inference must be stored.
 * At the end (rollouts ended, load stopped, buffers drained, agents stopped with SIGTERM) the
 * checker (bench/chaos/checker.ts) reads every buffer.db and the control plane's store:
 *   lost                 committed records (or last-boot answered inferences) not in the store,
 *                        less those the buffer's retention dropped and counted
 *   duplicated           a (device, seq) stored more than once (under any boot)
 *   unexpected           stored records the agent never committed (seq or boot out of range),
 *                        or more inference records in a boot than requests sent in it
 *   models_inconsistent  devices whose served model (the agent's /healthz) is not the one
 *                        their desired state names (models_refused: of those, the ones whose
 *                        reported state gives a refusal code, by code)
 * The last stdout line is one JSON object with those and the kills per kind.
 *
 * Options: --trials N (default 100), --agents N (2), --clients N per agent (2), --seed N,
 * --kinds a,b (default all), --max-minutes M (start no trial after M minutes), --keep (keep the data folder). Exit code 1 when any of the four is not 0.
 */
import { Command, InvalidArgumentError } from 'commander';
import { KILL_KINDS, runChaos, type KillKind } from './chaos/harness.js';

const whole = (value: string): number => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a whole number >= 1');
  return n;
};
const kindList = (value: string): KillKind[] => {
  const kinds = value.split(',').map((k) => k.trim());
  for (const k of kinds) if (!(KILL_KINDS as readonly string[]).includes(k)) throw new InvalidArgumentError(`expected kinds from ${KILL_KINDS.join(', ')}`);
  return kinds as KillKind[];
};

const options = new Command('chaos')
  .option('--trials <n>', 'kill -9 trials', whole, 100)
  .option('--agents <n>', 'agent processes', whole, 2)
  .option('--clients <n>', 'concurrent application clients per agent', whole, 2)
  .option('--seed <n>', 'seed of the random choices (default: the time)', whole)
  .option('--kinds <list>', `comma-separated subset of ${KILL_KINDS.join(', ')}`, kindList)
  .option('--max-minutes <n>', 'start no trial after this many minutes; the check still runs', whole)
  .option('--keep', 'keep the data folder')
  .parse(process.argv)
  .opts<{ trials: number; agents: number; clients: number; seed?: number; kinds?: KillKind[]; maxMinutes?: number; keep?: boolean }>();

const seed = options.seed ?? Date.now() % 2 ** 31;
process.stderr.write(`chaos: seed ${seed}\n`);
const result = await runChaos({
  trials: options.trials,
  agents: options.agents,
  clientsPerAgent: options.clients,
  seed,
  kinds: options.kinds,
  keep: options.keep,
  maxMinutes: options.maxMinutes,
  log: (line) => process.stderr.write(`${line}\n`),
});
const { devices, ...summary } = result;
for (const d of devices) if (d.lost || d.duplicated || d.unexpected || !d.modelConsistent) process.stderr.write(`chaos: ${JSON.stringify(d)}\n`);
process.stdout.write(`${JSON.stringify({ seed, ...summary })}\n`);
process.exitCode = summary.lost || summary.duplicated || summary.unexpected || summary.models_inconsistent ? 1 : 0;
