import { Argument, type Command } from 'commander';
import { systemClock } from '../../../common/clock.js';
import { CreateEnrollmentTokenResponse, Device, DeviceServiceClient, DeviceStatus } from '../../../common/proto/driftline/v1/fleet.js';
import { durationMs, keyValue, repeated } from '../arguments.js';
import { usageError } from '../connection.js';
import { withConnection } from '../context.js';
import { labelsText, relativeTime } from '../output.js';

const STATUS_TEXT: Record<number, string> = {
  [DeviceStatus.DEVICE_STATUS_ENROLLED]: 'enrolled',
  [DeviceStatus.DEVICE_STATUS_DECOMMISSIONED]: 'decommissioned',
};

const status = (device: Device): string => STATUS_TEXT[device.status] ?? 'unknown';
const activeModel = (device: Device): string => {
  const model = device.reported?.activeModel;
  return model?.name ? `${model.name}@v${model.version}` : '-';
};

export function registerDevices(program: Command): void {
  const devices = program.command('devices').description('enroll, list, label and decommission devices');

  devices
    .command('list')
    .description('list devices')
    .option('--selector <k=v,...>', 'only devices whose labels match (a value ending in * matches a prefix)', '')
    .option('--all', 'include decommissioned devices')
    .action((options: { selector: string; all?: boolean }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.client(DeviceServiceClient);
        const response = await connection.call(client, 'listDevices', { selector: options.selector, includeDecommissioned: Boolean(options.all) });
        // Lists always carry their array in JSON (proto3 JSON would drop an empty one).
        output.result({ devices: response.devices.map((d) => Device.toJSON(d)) }, () => {
          const now = systemClock.now();
          output.table(
            ['ID', 'STATUS', 'ONLINE', 'PROFILE', 'MODEL', 'LAST SEEN', 'BUFFER', 'LABELS'],
            response.devices.map((d) => [
              d.id,
              status(d),
              d.online ? 'yes' : 'no',
              d.reported?.firmwareProfile || '-',
              activeModel(d),
              relativeTime(d.lastSeenMs, now),
              d.reported?.bufferDepth ?? '-',
              labelsText(d.labels),
            ]),
          );
        });
      }),
    );

  devices
    .command('get')
    .description('show one device')
    .argument('<id>', 'device id')
    .action((id: string, _options: unknown, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.client(DeviceServiceClient);
        const device = await connection.call(client, 'getDevice', { deviceId: id });
        output.result(Device.toJSON(device), () => output.table(['FIELD', 'VALUE'], deviceFields(device, systemClock.now())));
      }),
    );

  devices
    .command('token')
    .description('create a one-time enrollment token for a device')
    .argument('<id>', 'device id the token enrolls')
    .option('--label <k=v>', 'label the device gets at enrollment (repeatable)', keyValue)
    .option('--ttl <duration>', 'how long the token stays valid, e.g. 24h (default: the server setting)', durationMs)
    .action((id: string, options: { label?: Record<string, string>; ttl?: number }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.client(DeviceServiceClient);
        const response = await connection.call(client, 'createEnrollmentToken', {
          deviceId: id,
          labels: options.label ?? {},
          ttlSeconds: options.ttl === undefined ? 0 : Math.ceil(options.ttl / 1000),
        });
        const agentCommand = `driftline-agent run --enroll-token ${response.token} --device-id ${response.deviceId} --server ${connection.server}`;
        output.result({ ...(CreateEnrollmentTokenResponse.toJSON(response) as object), agentCommand }, () => {
          output.line(`enrollment token for ${response.deviceId} (one use, expires ${new Date(response.expiresAtMs).toISOString()}):`);
          output.line(response.token);
          output.line('');
          output.line('on the device, run:');
          output.line(`  ${agentCommand}`);
        });
      }),
    );

  devices
    .command('label')
    .description('set or remove labels of a device')
    .argument('<id>', 'device id')
    .addArgument(new Argument('[labels...]', 'labels to set, as key=value').argParser(keyValue).default({}, 'none'))
    .option('--remove <key>', 'label key to remove (repeatable)', repeated)
    .action((id: string, labels: Record<string, string>, options: { remove?: string[] }, command: Command) =>
      withConnection(command, async (connection, output) => {
        if (Object.keys(labels).length === 0 && !options.remove) throw usageError('give labels to set (key=value) or --remove <key>');
        const client = connection.client(DeviceServiceClient);
        const device = await connection.call(client, 'labelDevice', { deviceId: id, set: labels, remove: options.remove ?? [] });
        output.result(Device.toJSON(device), () => output.line(`${device.id}: ${labelsText(device.labels)}`));
      }),
    );

  devices
    .command('decommission')
    .description("revoke a device's credential and disconnect it (its telemetry is kept)")
    .argument('<id>', 'device id')
    .action((id: string, _options: unknown, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.client(DeviceServiceClient);
        const device = await connection.call(client, 'decommissionDevice', { deviceId: id });
        output.result(Device.toJSON(device), () => output.line(`decommissioned ${device.id}`));
      }),
    );
}

function deviceFields(device: Device, now: number): Array<[string, string | number]> {
  const reported = device.reported;
  const desired = device.desiredModel;
  return [
    ['id', device.id],
    ['status', status(device)],
    ['online', device.online ? 'yes' : 'no'],
    ['labels', labelsText(device.labels)],
    ['enrolled', relativeTime(device.enrolledAtMs, now)],
    ['last seen', relativeTime(device.lastSeenMs, now)],
    ['profile', reported?.firmwareProfile || '-'],
    ['agent', reported?.agentVersion || '-'],
    ['model', activeModel(device) + (reported?.activeModel?.provider ? ` (${reported.activeModel.provider})` : '')],
    ['desired model', desired?.name ? `${desired.name}@v${desired.version}` : '-'],
    ['buffer', reported?.bufferDepth ?? '-'],
    ['dropped records', reported?.droppedRecords ?? '-'],
    ['last error', reported?.lastErrorCode ? `[${reported.lastErrorCode}] ${reported.lastError}` : '-'],
  ];
}
