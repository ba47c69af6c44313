import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { credentials, Metadata, type Client, type ServiceError } from '@grpc/grpc-js';
import { DeviceServiceClient, type Device } from '../../common/proto/driftline/v1/fleet.js';
import { ModelServiceClient, type ModelVersion } from '../../common/proto/driftline/v1/models.js';
import { TelemetryServiceClient, type TelemetrySummary } from '../../common/proto/driftline/v1/telemetry.js';

type Callback<T> = (err: ServiceError | null, value: T) => void;

/** A thin test client over the fleet management API, as an operator with the admin token. */
export function fleetApi(address: string, tokenFile: string) {
  const metadata = new Metadata();
  metadata.set('authorization', `Bearer ${readFileSync(tokenFile, 'utf8').trim()}`);
  const channel = credentials.createInsecure();
  const devices = new DeviceServiceClient(address, channel);
  const models = new ModelServiceClient(address, channel);
  const telemetry = new TelemetryServiceClient(address, channel);
  const call = <T>(fn: (cb: Callback<T>) => unknown): Promise<T> => new Promise((resolve, reject) => fn((err, value) => (err ? reject(err) : resolve(value))));

  return {
    createEnrollmentToken: (deviceId: string, labels: Record<string, string> = {}, ttlSeconds = 600) =>
      call<{ token: string }>((cb) => devices.createEnrollmentToken({ deviceId, labels, ttlSeconds }, metadata, cb)).then((r) => r.token),
    listDevices: () => call<{ devices: Device[] }>((cb) => devices.listDevices({ selector: '', includeDecommissioned: false }, metadata, cb)).then((r) => r.devices),
    uploadModel: (name: string, bytes: Uint8Array) =>
      new Promise<ModelVersion>((resolve, reject) => {
        const stream = models.uploadModel(metadata, (err, value) => (err ? reject(err) : resolve(value!)));
        const sha256 = createHash('sha256').update(bytes).digest('hex');
        stream.write({ part: { $case: 'header', value: { name, sizeBytes: bytes.length, sha256, description: 'test', metadata: {} } } });
        for (let i = 0; i < bytes.length; i += 64 * 1024) stream.write({ part: { $case: 'chunk', value: Buffer.from(bytes.subarray(i, i + 64 * 1024)) } });
        stream.end();
      }),
    deploy: (name: string, deviceIds: string[] = []) =>
      call<{ devices: number }>((cb) => models.deployModel({ name, version: 0, deviceIds, selector: '' }, metadata, cb)),
    summary: (deviceId = '') => call<TelemetrySummary>((cb) => telemetry.getSummary({ deviceId, sinceMs: 0 }, metadata, cb)),
    close: () => [devices, models, telemetry].forEach((c: Client) => c.close()),
  };
}

export type FleetApi = ReturnType<typeof fleetApi>;
