import { createOperatorClient, type OperatorClient } from '../client/operator-client.js';
import { DriftServiceService, type DriftStatus } from '../common/proto/driftline/v1/drift.js';
import { DeviceServiceService, type Device } from '../common/proto/driftline/v1/fleet.js';
import { ModelServiceService, type ModelVersion } from '../common/proto/driftline/v1/models.js';
import { RollupBucket, RollupGroupBy, TelemetryServiceService, type TelemetrySummary } from '../common/proto/driftline/v1/telemetry.js';

/** Deadline of each call, shorter than the CLI's: a poll that hangs must not freeze the live view. */
const DEMO_TIMEOUT_MS = 10_000;

/**
 * The operator's side of the demo: the calls `driftline devices|models|telemetry|drift ...` make,
 * over the operator client the CLI uses (bearer token, deadlines, chunked upload), without
 * paying for a CLI process per call while the live view polls every second.
 */
export class DemoFleet {
  private readonly client: OperatorClient;

  constructor(server: string, token: string) {
    this.client = createOperatorClient({ address: server, token, timeoutMs: DEMO_TIMEOUT_MS, streamTimeoutMs: DEMO_TIMEOUT_MS });
  }

  async createEnrollmentToken(deviceId: string, labels: Record<string, string>): Promise<string> {
    const response = await this.client.service(DeviceServiceService).createEnrollmentToken({ deviceId, labels, ttlSeconds: 0 });
    return response.token;
  }

  async listDevices(): Promise<Device[]> {
    return (await this.client.service(DeviceServiceService).listDevices({ selector: '', includeDecommissioned: false })).devices;
  }

  uploadModel(name: string, bytes: Uint8Array, description: string): Promise<ModelVersion> {
    return this.client.uploadModelBytes(bytes, { name, description });
  }

  /** Deploys the latest version to every enrolled device; resolves with the deployed version and how many devices it targets. */
  async deployLatest(name: string): Promise<{ version: number; devices: number }> {
    const response = await this.client.service(ModelServiceService).deployModel({ name, version: 0, deviceIds: [], selector: '' });
    return { version: response.model?.version ?? 0, devices: response.devices };
  }

  summary(): Promise<TelemetrySummary> {
    return this.client.service(TelemetryServiceService).getSummary({ deviceId: '', sinceMs: 0 });
  }

  /** Inferences of one model (every version) the control plane stored, from its per-minute rollups of the whole fleet. */
  async storedInferences(model: string): Promise<number> {
    const rollups = await this.client.service(TelemetryServiceService).getRollups({
      model,
      version: 0,
      deviceId: '',
      selector: '',
      groupBy: RollupGroupBy.ROLLUP_GROUP_BY_FLEET,
      bucket: RollupBucket.ROLLUP_BUCKET_ONE_MINUTE,
      sinceMs: 0,
      limit: 0,
    });
    return rollups.rows.reduce((total, row) => total + row.inferences, 0);
  }

  /** What `driftline drift show --model <name>` prints: every version, the fleet ("") and each cohort, over the server's default window. */
  async driftStatus(model: string): Promise<DriftStatus[]> {
    return (await this.client.service(DriftServiceService).getDriftStatus({ model, version: 0, sinceMs: 0 })).statuses;
  }

  close(): void {
    this.client.close();
  }
}
