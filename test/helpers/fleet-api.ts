import { readFileSync } from 'node:fs';
import { createOperatorClient } from '../../client/operator-client.js';
import { DeviceServiceService, type Device } from '../../common/proto/driftline/v1/fleet.js';
import { ModelServiceService } from '../../common/proto/driftline/v1/models.js';
import { TelemetryServiceService } from '../../common/proto/driftline/v1/telemetry.js';

/** A thin test client over the fleet management API, as an operator with the admin token (the operator client the CLI uses). */
export function fleetApi(address: string, tokenFile: string) {
  const client = createOperatorClient({ address, token: readFileSync(tokenFile, 'utf8').trim() });
  const devices = client.service(DeviceServiceService);
  const models = client.service(ModelServiceService);
  const telemetry = client.service(TelemetryServiceService);

  return {
    createEnrollmentToken: (deviceId: string, labels: Record<string, string> = {}, ttlSeconds = 600) =>
      devices.createEnrollmentToken({ deviceId, labels, ttlSeconds }).then((r) => r.token),
    listDevices: (): Promise<Device[]> => devices.listDevices({ selector: '', includeDecommissioned: false }).then((r) => r.devices),
    uploadModel: (name: string, bytes: Uint8Array) => client.uploadModelBytes(bytes, { name, description: 'test' }),
    deploy: (name: string, deviceIds: string[] = []) => models.deployModel({ name, version: 0, deviceIds, selector: '' }),
    undeploy: (name: string, deviceIds: string[] = []) => models.undeployModel({ name, deviceIds, selector: '' }),
    summary: (deviceId = '', sinceMs = 0) => telemetry.getSummary({ deviceId, sinceMs }),
    close: () => client.close(),
  };
}

export type FleetApi = ReturnType<typeof fleetApi>;
