import type { ClientWritableStream, ServiceError } from '@grpc/grpc-js';
import { sha256Hex } from '../common/hashing.js';
import { DriftServiceClient, type DriftStatus } from '../common/proto/driftline/v1/drift.js';
import { DeviceServiceClient, type Device } from '../common/proto/driftline/v1/fleet.js';
import { ModelServiceClient, type ModelVersion, type UploadModelRequest } from '../common/proto/driftline/v1/models.js';
import { TelemetryServiceClient, type TelemetrySummary } from '../common/proto/driftline/v1/telemetry.js';
import { Connection } from '../cli/connection.js';

/** Same chunking as `driftline models push`: well under grpc-js's 4 MiB message limit. */
const UPLOAD_CHUNK_BYTES = 64 * 1024;

/**
 * The operator's side of the demo: the calls `driftline devices|models|telemetry|drift ...` make,
 * over the same Connection the CLI uses (bearer token, deadlines), without paying for a
 * CLI process per call while the live view polls every second.
 */
export class DemoFleet {
  private readonly connection: Connection;
  private readonly devices: DeviceServiceClient;
  private readonly models: ModelServiceClient;
  private readonly telemetry: TelemetryServiceClient;
  private readonly drift: DriftServiceClient;

  constructor(server: string, token: string) {
    // A deadline of its own, shorter than the CLI's: a poll that hangs must not freeze the live view.
    this.connection = new Connection({ server, token, timeout: 10 });
    this.devices = this.connection.client(DeviceServiceClient);
    this.models = this.connection.client(ModelServiceClient);
    this.telemetry = this.connection.client(TelemetryServiceClient);
    this.drift = this.connection.client(DriftServiceClient);
  }

  async createEnrollmentToken(deviceId: string, labels: Record<string, string>): Promise<string> {
    const response = await this.connection.call(this.devices, 'createEnrollmentToken', { deviceId, labels, ttlSeconds: 0 });
    return response.token;
  }

  async listDevices(): Promise<Device[]> {
    return (await this.connection.call(this.devices, 'listDevices', { selector: '', includeDecommissioned: false })).devices;
  }

  uploadModel(name: string, bytes: Uint8Array, description: string): Promise<ModelVersion> {
    return new Promise((resolve, reject) => {
      const call: ClientWritableStream<UploadModelRequest> = this.models.uploadModel(
        this.connection.metadata(),
        this.connection.callOptions('unary'),
        (error: ServiceError | null, version: ModelVersion) => (error ? reject(error) : resolve(version)),
      );
      call.write({ part: { $case: 'header', value: { name, sizeBytes: bytes.length, sha256: sha256Hex(bytes), description, metadata: {} } } });
      for (let offset = 0; offset < bytes.length; offset += UPLOAD_CHUNK_BYTES) {
        call.write({ part: { $case: 'chunk', value: Buffer.from(bytes.subarray(offset, offset + UPLOAD_CHUNK_BYTES)) } });
      }
      call.end();
    });
  }

  /** Deploys the latest version to every enrolled device; resolves with the deployed version and how many devices it targets. */
  async deployLatest(name: string): Promise<{ version: number; devices: number }> {
    const response = await this.connection.call(this.models, 'deployModel', { name, version: 0, deviceIds: [], selector: '' });
    return { version: response.model?.version ?? 0, devices: response.devices };
  }

  summary(): Promise<TelemetrySummary> {
    return this.connection.call(this.telemetry, 'getSummary', { deviceId: '', sinceMs: 0 });
  }

  /** What `driftline drift show --model <name>` prints: every version, the fleet ("") and each cohort, over the server's default window. */
  async driftStatus(model: string): Promise<DriftStatus[]> {
    return (await this.connection.call(this.drift, 'getDriftStatus', { model, version: 0, sinceMs: 0 })).statuses;
  }

  close(): void {
    this.connection.close();
  }
}
