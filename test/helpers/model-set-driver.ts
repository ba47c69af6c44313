// A process around the agent's model set for the kill -9 tests: real SQLite state, real
// onnxruntime, real downloads (test/helpers/model-set-device.ts). Test-only hook:
// DRIFTLINE_TEST_CRASH_AT=<install step> with DRIFTLINE_TEST_CRASH_MODEL=<model name> makes the
// process SIGKILL itself right after that step of that model's install is persisted.
// env: DRIVER_DIR, DRIVER_ARTIFACT_URL, DRIVER_ROOT (root envelope file to pin), DRIVER_DESIRED (base64 DesiredState, optional)
// stdout, last line: what the set serves once restored (and the desired state applied), as JSON.
import { readFileSync } from 'node:fs';
import pino from 'pino';
import { SET_STATE_KEY } from '../../agent/models/model-set.js';
import { DesiredState } from '../../common/proto/driftline/v1/device_link.js';
import { setDevice } from './model-set-device.js';

const env = (name: string): string => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
};
const crashAt = process.env.DRIFTLINE_TEST_CRASH_AT;
const crashModel = process.env.DRIFTLINE_TEST_CRASH_MODEL;
const device = await setDevice({
  dir: env('DRIVER_DIR'),
  artifactUrl: env('DRIVER_ARTIFACT_URL'),
  root: readFileSync(env('DRIVER_ROOT')),
  logger: pino({ level: 'warn' }, pino.destination(2)),
  activationRetries: Number(process.env.DRIVER_ACTIVATION_RETRIES ?? 1),
  onStep: (step, model) => {
    if (step === crashAt && model === crashModel) process.kill(process.pid, 'SIGKILL');
  },
});
const { set, engine, buffer } = device;
await set.restore();
if (process.env.DRIVER_DESIRED) await set.apply(DesiredState.decode(Buffer.from(process.env.DRIVER_DESIRED, 'base64')));

const row = [4.1, 12, 2.9, 3.2, 2.5, 0.9, 0.4, 41];
const served = [];
for (const m of engine.models()) {
  const answer = await engine.infer(m.name, [{ name: 'features', datatype: 'FP32', shape: [1, 8], data: row }]);
  served.push({ name: m.name, version: m.version, sha256: m.sha256, answeredBy: { model: answer.model, version: answer.version } });
}
const record = JSON.parse(buffer.state.getState(SET_STATE_KEY) ?? '{}') as { known?: string[] };
const report = {
  served,
  entries: set.entries().map((e) => ({ name: e.name, version: e.version, state: e.state, error: e.error?.code ?? null })),
  slots: Object.fromEntries((record.known ?? []).map((name) => [name, set.manager(name)?.snapshot() ?? null])),
  record,
  revision: set.desiredRevision,
  error: set.error?.code ?? null,
};
process.stdout.write(`${JSON.stringify(report)}\n`);
await device.close({ keep: true });
