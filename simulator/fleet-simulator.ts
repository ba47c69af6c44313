import mqtt, { type MqttClient } from 'mqtt';
import type { Clock } from '../common/clock.js';
import { DriftlineError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { decodeDown, encodeUp } from '../common/device-protocol/messages.js';
import { Outcome, ReportedState, Stream, TelemetryBatch, type DesiredState, type TelemetryRecord } from '../common/proto/driftline/v1/device_link.js';
import { DeviceServiceService, EnrollmentServiceService } from '../common/proto/driftline/v1/fleet.js';
import { createOperatorClient } from '../client/operator-client.js';
import { downTopic, upTopic, type UpChannel } from '../common/device-protocol/topics.js';
import { desiredModelsOf } from '../common/device-protocol/model-set.js';

/**
 * Many simulated devices in one process, each a real MQTT client with its own credential,
 * speaking the device protocol to the real broker: it obeys its desired state ("installs" a
 * version without running onnxruntime), reports state, and sends inference telemetry whose
 * latency and error rate depend on the version it runs. Used by the end-to-end rollout tests
 * and by the demo's rollout scenarios. A device double, not part of the control plane: it
 * speaks only the device protocol in common/device-protocol/, like the agent.
 */

/** How a model version behaves on a simulated device. */
export interface VersionBehavior {
  /** Median inference latency. */
  latencyMs: number;
  /** Fraction of inferences that fail. */
  errorRate: number;
  /** The install fails (the device keeps its old model and reports the error). */
  installFails?: boolean;
  /** Share of answered inferences whose application later posts the true label (default 0: none). */
  labelRate?: number;
  /** Share of labelled answers that were right. */
  accuracy?: number;
}

export interface SimulatedDeviceSpec {
  id: string;
  profile: string;
  labels?: Record<string, string>;
}

/** The behaviour of `version` of `model` (one simulator can serve several models per device). */
export type BehaviorOf = (version: number, model: string) => VersionBehavior;

export interface SimulatedCredential {
  deviceId: string;
  username: string;
  password: string;
  profile: string;
}

export interface InstallEvent {
  model: string;
  version: number;
  revision: number;
  ok: boolean;
  atMs: number;
}

const AGENT_VERSION = 'simulator';

/** Enrolls devices through the real API: one-time token (operator), then enrollment (public). */
export async function enrollSimulatedDevices(options: {
  address: string;
  token: string;
  devices: readonly SimulatedDeviceSpec[];
  concurrency?: number;
}): Promise<SimulatedCredential[]> {
  // The operator (with its token) creates each one-time token; the device side enrolls with none, as an agent does.
  const operator = createOperatorClient({ address: options.address, token: options.token });
  const anonymous = createOperatorClient({ address: options.address });
  const deviceApi = operator.service(DeviceServiceService);
  const enrollApi = anonymous.service(EnrollmentServiceService);
  try {
    return await inBatches(options.devices, options.concurrency ?? 25, async (spec) => {
      const { token } = await deviceApi.createEnrollmentToken({ deviceId: spec.id, labels: spec.labels ?? {}, ttlSeconds: 600 });
      const enrolled = await enrollApi.enroll({ token, deviceId: spec.id, firmwareProfile: spec.profile, agentVersion: AGENT_VERSION });
      return { deviceId: spec.id, username: enrolled.mqttUsername, password: enrolled.mqttPassword, profile: spec.profile };
    });
  } finally {
    operator.close();
    anonymous.close();
  }
}

interface ServedModel {
  name: string;
  version: number;
  sha256: string;
  /** This model's latest failed install (it keeps serving `version`), '' when none. */
  lastErrorCode: string;
}

/**
 * One simulated device. It serves a set of models, like the agent (issue #12); with `legacy`
 * it behaves as an agent from before the sets: it reads only the desired state's single
 * `model` and reports only `active_model`, so tests can show such a device keeps working.
 */
export class SimulatedDevice {
  /** The models it serves, by name, in the order they were first installed. */
  readonly models = new Map<string, ServedModel>();
  appliedRevision = 0;
  /** Every install the device attempted, in order. */
  readonly installs: InstallEvent[] = [];
  private seq = 0;
  private readonly boot: number;

  constructor(
    readonly id: string,
    readonly profile: string,
    private readonly client: MqttClient,
    private readonly sim: { clock: Clock; behavior: BehaviorOf; random: () => number },
    boot: number,
    readonly legacy = false,
  ) {
    this.boot = boot;
  }

  /** The first model it serves (the only one on a device that serves one). */
  get active(): { name: string; version: number; sha256: string } | undefined {
    return this.models.values().next().value;
  }

  /** Versions of `model` (default: every model) this device ever installed, in order. */
  versionsOf(model?: string): number[] {
    return this.installs.filter((i) => i.ok && (model === undefined || i.model === model)).map((i) => i.version);
  }

  /** Versions this device ever ran, in order. */
  get versionHistory(): number[] {
    return this.versionsOf();
  }

  async onDesired(desired: DesiredState): Promise<void> {
    if (desired.revision <= this.appliedRevision) return;
    const wanted = this.legacy ? (desired.model ? [desired.model] : []) : desiredModelsOf(desired);
    // A model the set no longer names stops; each other entry installs on its own, and a failed
    // install keeps that model's old version while the others go on.
    for (const name of [...this.models.keys()]) if (!wanted.some((m) => m.name === name)) this.models.delete(name);
    let failed = false;
    for (const model of wanted) {
      const current = this.models.get(model.name);
      if (current?.version === model.version) continue;
      const ok = !this.sim.behavior(model.version, model.name).installFails;
      this.installs.push({ model: model.name, version: model.version, revision: desired.revision, ok, atMs: this.sim.clock.now() });
      failed ||= !ok;
      if (ok) this.models.set(model.name, { name: model.name, version: model.version, sha256: model.sha256, lastErrorCode: '' });
      else if (current) current.lastErrorCode = 'MODEL_INVALID';
      else this.models.set(model.name, { name: model.name, version: 0, sha256: '', lastErrorCode: 'MODEL_INVALID' });
    }
    // Like the agent: a revision with a failed install is not applied (a resend retries it).
    if (!failed) this.appliedRevision = desired.revision;
    await this.report();
  }

  /** The error of the latest failed install, device-wide (what an agent from before reports). */
  get lastErrorCode(): string {
    return [...this.models.values()].find((m) => m.lastErrorCode)?.lastErrorCode ?? '';
  }

  report(): Promise<void> {
    const serving = [...this.models.values()];
    const first = serving.find((m) => m.version > 0);
    const state = ReportedState.fromPartial({
      agentVersion: AGENT_VERSION,
      firmwareProfile: this.profile,
      ...(first ? { activeModel: { name: first.name, version: first.version, sha256: first.sha256, provider: 'cpu' } } : {}),
      ...(this.legacy
        ? {}
        : {
            activeModels: serving.map((m) => ({
              name: m.name,
              version: m.version,
              sha256: m.sha256,
              provider: m.version > 0 ? 'cpu' : '',
              state: m.version > 0 ? 'serving' : 'refused',
              lastErrorCode: m.lastErrorCode,
              lastError: m.lastErrorCode ? `simulated install of ${m.name} failed` : '',
            })),
          }),
      boot: this.boot,
      desiredRevision: this.appliedRevision,
      lastErrorCode: this.lastErrorCode,
      reportedAtMs: this.sim.clock.now(),
    });
    return this.publish('state', encodeUp('state', state));
  }

  /** Sends `count` inferences of every model it serves in one batch; a device with no model sends nothing. */
  emitInferences(count: number): Promise<void> {
    const serving = [...this.models.values()].filter((m) => m.version > 0);
    if (serving.length === 0 || count <= 0) return Promise.resolve();
    const now = this.sim.clock.now();
    const records: TelemetryRecord[] = [];
    for (const active of serving) this.inferencesOf(active, count, now, records);
    return this.publish('telemetry', encodeUp('telemetry', TelemetryBatch.fromPartial({ records, sentAtMs: now })));
  }

  private inferencesOf(active: ServedModel, count: number, now: number, records: TelemetryRecord[]): void {
    const behavior = this.sim.behavior(active.version, active.name);
    for (let i = 0; i < count; i++) {
      const failed = this.sim.random() < behavior.errorRate;
      records.push({
        boot: this.boot,
        seq: ++this.seq,
        timeMs: now,
        stream: Stream.STREAM_INFERENCE,
        body: {
          $case: 'inference',
          value: {
            model: active.name,
            version: active.version,
            provider: 'cpu',
            latencyMs: behavior.latencyMs * (0.8 + 0.4 * this.sim.random()),
            outcome: failed ? Outcome.OUTCOME_ERROR : Outcome.OUTCOME_OK,
            topClass: failed ? -1 : 0,
            confidence: failed ? 0 : 0.9,
            errorCode: failed ? 'INFERENCE_FAILED' : '',
            batchSize: 1,
          },
        },
      } as TelemetryRecord);
      // The application's ground truth for some answers, as the local API's /feedback records it.
      if (!failed && this.sim.random() < (behavior.labelRate ?? 0)) {
        const correct = this.sim.random() < (behavior.accuracy ?? 1);
        records.push({
          boot: this.boot,
          seq: ++this.seq,
          timeMs: now,
          stream: Stream.STREAM_INFERENCE,
          body: {
            $case: 'label',
            value: {
              model: active.name,
              version: active.version,
              requestId: `${this.id}-${this.seq}`,
              predicted: 0,
              label: correct ? 0 : 1,
              correct,
              inferenceTimeMs: now,
            },
          },
        } as TelemetryRecord);
      }
    }
  }

  private publish(channel: UpChannel, payload: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) =>
      this.client.publish(upTopic(this.id, channel), Buffer.from(payload), { qos: 1 }, (err) => (err ? reject(err) : resolve())),
    );
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.client.end(false, {}, () => resolve()));
  }
}

export interface FleetSimulatorOptions {
  brokerUrl: string;
  devices: readonly SimulatedCredential[];
  behavior: BehaviorOf;
  /** Devices that behave as agents from before the model sets (single model read and reported). */
  legacy?: (deviceId: string) => boolean;
  clock: Clock;
  logger: Logger;
  seed?: number;
  concurrency?: number;
}

export class FleetSimulator {
  private constructor(readonly devices: SimulatedDevice[]) {}

  /** Connects every device (its own MQTT client and credential), subscribes to its desired state and reports in. */
  static async start(options: FleetSimulatorOptions): Promise<FleetSimulator> {
    const random = mulberry32(options.seed ?? 42);
    const sim = { clock: options.clock, behavior: options.behavior, random };
    const devices = await inBatches(options.devices, options.concurrency ?? 50, async (cred) => {
      const client = await connect(options.brokerUrl, cred);
      const device = new SimulatedDevice(cred.deviceId, cred.profile, client, sim, 1, options.legacy?.(cred.deviceId) ?? false);
      // Desired states are handled one at a time per device, in arrival order, like the agent.
      let queue = Promise.resolve();
      client.on('message', (topic, payload) => {
        if (topic !== downTopic(cred.deviceId, 'desired')) return;
        queue = queue
          .then(() => device.onDesired(decodeDown('desired', payload)))
          .catch((err: unknown) => options.logger.warn({ err, deviceId: cred.deviceId }, 'simulated device could not apply its desired state'));
      });
      await new Promise<void>((resolve, reject) =>
        client.subscribe([downTopic(cred.deviceId, 'desired'), downTopic(cred.deviceId, 'ack')], { qos: 1 }, (err) => (err ? reject(err) : resolve())),
      );
      await device.report();
      return device;
    });
    options.logger.info({ devices: devices.length }, 'fleet simulator connected');
    return new FleetSimulator(devices);
  }

  /** Every device sends `perDevice` inferences of each model it serves; resolves when the broker has them all. */
  async emitInferences(perDevice: number): Promise<number> {
    await inBatches(this.devices, 100, (d) => d.emitInferences(perDevice));
    return this.devices.reduce((n, d) => n + [...d.models.values()].filter((m) => m.version > 0).length, 0) * perDevice;
  }

  /** Devices per version of `model` (default: each device's first model; 0: none). */
  versions(model?: string): Record<string, number> {
    const counts: Record<string, number> = {};
    for (const d of this.devices) {
      const v = String((model === undefined ? d.active : d.models.get(model))?.version ?? 0);
      counts[v] = (counts[v] ?? 0) + 1;
    }
    return counts;
  }

  device(id: string): SimulatedDevice {
    const d = this.devices.find((x) => x.id === id);
    if (!d) throw new DriftlineError('DEVICE_NOT_FOUND', `no simulated device ${id}`);
    return d;
  }

  async shutdown(): Promise<void> {
    await Promise.all(this.devices.map((d) => d.close()));
  }
}

function connect(url: string, cred: SimulatedCredential): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(url, {
      protocolVersion: 4,
      clientId: cred.deviceId,
      username: cred.username,
      password: cred.password,
      clean: true,
      reconnectPeriod: 1000,
      connectTimeout: 10_000,
    });
    const onError = (err: Error): void => {
      client.end(true);
      reject(new DriftlineError('UPLINK_UNAVAILABLE', `simulated device ${cred.deviceId} cannot connect`, { cause: err }));
    };
    client.once('error', onError);
    client.once('connect', () => {
      client.off('error', onError);
      resolve(client);
    });
  });
}

async function inBatches<T, R>(items: readonly T[], size: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = [];
  for (let i = 0; i < items.length; i += size) out.push(...(await Promise.all(items.slice(i, i + size).map(fn))));
  return out;
}

/** Small seeded PRNG, so a simulated fleet behaves the same on every run. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
