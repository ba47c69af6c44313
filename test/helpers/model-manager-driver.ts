// A process around the agent's model manager for the kill -9 tests: real SQLite state, real
// onnxruntime, real downloads. Test-only hook: DRIFTLINE_TEST_CRASH_AT=<install step> makes
// the process SIGKILL itself right after that step is persisted.
// env: DRIVER_DIR, DRIVER_ARTIFACT_URL, DRIVER_ROOT (root envelope file to pin), DRIVER_DESIRED (base64 DesiredState, optional)
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { SqliteBuffer } from '../../agent/buffer/sqlite-buffer.js';
import { InferenceEngine } from '../../agent/inference/engine.js';
import { createOnnxRuntime } from '../../agent/inference/onnxruntime-runtime.js';
import { runGoldenSelfTest } from '../../agent/models/golden-self-test.js';
import { ModelManager } from '../../agent/models/model-manager.js';
import { PinnedRoot } from '../../agent/trust/pinned-root.js';
import { systemClock } from '../../common/clock.js';
import { DesiredState } from '../../common/proto/driftline/v1/device_link.js';

const env = (name: string): string => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
};
const dir = env('DRIVER_DIR');
const logger = pino({ level: 'warn' }, pino.destination(2));
const runtime = createOnnxRuntime({ logger });
const buffer = SqliteBuffer.open({ file: join(dir, 'buffer.db'), synchronous: 'FULL' });
const engine = InferenceEngine.create({ runtime, providers: ['cpu'], logger, intraOpThreads: 1 });
const trust = PinnedRoot.open(dir);
if (!trust.current()) trust.pin(readFileSync(env('DRIVER_ROOT')), systemClock);
const crashAt = process.env.DRIFTLINE_TEST_CRASH_AT;
const manager = new ModelManager({
  modelsDir: join(dir, 'models'),
  host: engine,
  state: buffer.state,
  artifactBaseUrl: env('DRIVER_ARTIFACT_URL'),
  credential: { username: 'edge-1', password: 'secret' },
  downloadTimeoutMs: 30_000,
  maxModelBytes: 64 * 1024 * 1024,
  activationRetries: Number(process.env.DRIVER_ACTIVATION_RETRIES ?? 1),
  logger,
  clock: systemClock,
  trust,
  device: { deviceId: 'edge-1', arch: 'x86_64', providers: ['cpu'], memoryBytes: 8 * 1024 ** 3 },
  selfTest: (path, golden) => runGoldenSelfTest(runtime, ['cpu'], path, golden),
  onChange: () => undefined,
  onStep: (step) => {
    if (step === crashAt) process.kill(process.pid, 'SIGKILL');
  },
});
await manager.restore();
if (process.env.DRIVER_DESIRED) await manager.apply(DesiredState.decode(Buffer.from(process.env.DRIVER_DESIRED, 'base64')));
process.stdout.write(`${JSON.stringify({ active: engine.active() ?? null, state: manager.snapshot(), error: manager.error?.code ?? null })}\n`);
await engine.shutdown({ graceMs: 0 });
await buffer.close();
