// A device serving a set of models, without the composition root: real SQLite agent state,
// real onnxruntime, real downloads from the test artifact server, the set coordinator and,
// when asked, the local API in front of the engine.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteBuffer } from '../../agent/buffer/sqlite-buffer.js';
import { InferenceEngine } from '../../agent/inference/engine.js';
import { createOnnxRuntime } from '../../agent/inference/onnxruntime-runtime.js';
import { repositoryIndex } from '../../agent/local-api/routes.js';
import { startLocalApi, type LocalApi } from '../../agent/local-api/server.js';
import { runGoldenSelfTest } from '../../agent/models/golden-self-test.js';
import type { InstallState } from '../../agent/models/model-manager.js';
import { ModelSet } from '../../agent/models/model-set.js';
import { PinnedRoot } from '../../agent/trust/pinned-root.js';
import { systemClock, type Clock } from '../../common/clock.js';
import { desiredStateOf } from '../../common/device-protocol/model-set.js';
import type { Logger } from '../../common/logger.js';
import type { DesiredModel, DesiredState } from '../../common/proto/driftline/v1/device_link.js';
import { Registry } from 'prom-client';
import type { TestRelease } from './releases.js';

export interface SetDevice {
  dir: string;
  buffer: SqliteBuffer;
  engine: InferenceEngine;
  set: ModelSet;
  events: Array<{ kind: string; model: string; version: number; code?: string }>;
  api?: LocalApi;
  close(options?: { keep?: boolean }): Promise<void>;
}

export interface SetDeviceOptions {
  dir?: string;
  artifactUrl: string;
  /** The root envelope to pin on a new data folder. */
  root: Buffer;
  logger: Logger;
  clock?: Clock;
  memoryBudgetBytes?: number;
  activationRetries?: number;
  localApi?: boolean;
  onStep?: (step: InstallState | 'activated', model: string) => void;
}

export async function setDevice(options: SetDeviceOptions): Promise<SetDevice> {
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), 'driftline-model-set-'));
  const clock = options.clock ?? systemClock;
  const { logger } = options;
  const runtime = createOnnxRuntime({ logger });
  const buffer = SqliteBuffer.open({ file: join(dir, 'buffer.db'), synchronous: 'FULL' });
  const engine = InferenceEngine.create({
    runtime,
    providers: ['cpu'],
    logger,
    clock,
    intraOpThreads: 1,
    ...(options.memoryBudgetBytes !== undefined ? { memoryBudgetBytes: options.memoryBudgetBytes } : {}),
  });
  const pinned = PinnedRoot.open(dir);
  if (!pinned.current()) pinned.pin(options.root, clock);
  const events: SetDevice['events'] = [];
  const set = new ModelSet({
    modelsDir: join(dir, 'models'),
    host: { load: (m) => engine.load({ ...m, providers: ['cpu'] }), unload: (name) => engine.unload(name), model: (name) => engine.model(name) },
    state: buffer.state,
    artifactBaseUrl: options.artifactUrl,
    credential: { username: 'edge-1', password: 'secret' },
    downloadTimeoutMs: 30_000,
    maxModelBytes: 256 * 1024 * 1024,
    activationRetries: options.activationRetries ?? 1,
    logger,
    clock,
    trust: pinned,
    device: { deviceId: 'edge-1', arch: 'x86_64', providers: ['cpu'], memoryBytes: 8 * 1024 ** 3 },
    selfTest: (path, golden) => runGoldenSelfTest(runtime, ['cpu'], path, golden),
    onChange: (e) => events.push({ kind: e.kind, model: e.model.name, version: e.model.version, ...(e.error ? { code: e.error.code } : {}) }),
    ...(options.onStep ? { onStep: options.onStep } : {}),
  });
  const device: SetDevice = {
    dir,
    buffer,
    engine,
    set,
    events,
    async close({ keep = false } = {}) {
      await device.api?.close(0);
      await engine.shutdown({ graceMs: 0 });
      await buffer.close();
      if (!keep) rmSync(dir, { recursive: true, force: true });
    },
  };
  if (options.localApi) {
    device.api = await startLocalApi({
      engine,
      health: () => ({ ok: true, details: {} }),
      metrics: new Registry(),
      logger,
      repository: () => repositoryIndex(set.entries(), engine.models()),
    });
  }
  return device;
}

/** One entry of a desired set, for a release served by the artifact server. */
export function entryFor(release: TestRelease, rollback: Buffer = Buffer.alloc(0)): DesiredModel {
  return {
    name: release.manifest.name,
    version: release.manifest.version,
    sha256: release.sha256,
    sizeBytes: release.bytes.length,
    artifactPath: `artifacts/sha256/${release.sha256}`,
    envelope: release.envelope,
    driftReference: '',
    rollback,
  };
}

/** A desired state of the set shape (the old single-model fields filled from the first entry, as the control plane sends it). */
export function desiredSet(revision: number, releases: ReadonlyArray<TestRelease | DesiredModel>, rootChain: Buffer[] = []): DesiredState {
  return desiredStateOf({ revision, models: releases.map((r) => ('bytes' in r ? entryFor(r) : r)), rootChain });
}
