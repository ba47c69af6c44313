import { Argument, type Command } from 'commander';
import { systemClock } from '../../common/clock.js';
import { CreateEnrollmentTokenResponse, Device, DeviceServiceService, DeviceStatus, EnrollmentToken } from '../../common/proto/driftline/v1/fleet.js';
import { durationMs, keyValue, repeated } from '../arguments.js';
import { usageError, type Connection } from '../connection.js';
import { withConnection } from '../context.js';
import { bytes, labelsText, relativeTime, type Output } from '../output.js';

const STATUS_TEXT: Record<number, string> = {
  [DeviceStatus.DEVICE_STATUS_ENROLLED]: 'enrolled',
  [DeviceStatus.DEVICE_STATUS_DECOMMISSIONED]: 'decommissioned',
};

const status = (device: Device): string => STATUS_TEXT[device.status] ?? 'unknown';
/** The models a device serves, `name@vN` each (the control plane lists a device from before as a set of one). */
const activeModels = (device: Device): string => {
  const serving = (device.reported?.activeModels ?? []).filter((m) => m.name && m.version > 0);
  return serving.length > 0 ? serving.map((m) => `${m.name}@v${m.version}`).join(', ') : '-';
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
        const client = connection.api.service(DeviceServiceService);
        const response = await client.listDevices({ selector: options.selector, includeDecommissioned: Boolean(options.all) });
        // Lists always carry their array in JSON (proto3 JSON would drop an empty one).
        output.result({ devices: response.devices.map((d) => Device.toJSON(d)) }, () => {
          const now = systemClock.now();
          output.table(
            ['ID', 'STATUS', 'ONLINE', 'PROFILE', 'MODELS', 'LAST SEEN', 'BUFFER', 'LABELS'],
            response.devices.map((d) => [
              d.id,
              status(d),
              d.online ? 'yes' : 'no',
              d.reported?.firmwareProfile || '-',
              activeModels(d),
              relativeTime(d.lastSeenMs, now),
              d.reported?.bufferDepth ?? '-',
              labelsText(d.labels),
            ]),
            options.selector ? `No devices found matching ${options.selector}` : 'No devices found',
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
        const client = connection.api.service(DeviceServiceService);
        const device = await client.getDevice({ deviceId: id });
        output.result(Device.toJSON(device), () => {
          output.table(['FIELD', 'VALUE'], deviceFields(device, systemClock.now()));
          output.line('');
          output.table(['MODEL', 'DESIRED', 'RUNNING', 'STATE', 'PROVIDER', 'MEMORY', 'LAST ERROR'], modelRows(device), 'no model desired or reported');
        });
      }),
    );

  /** Prints a fresh token and the command that enrolls the device with it. */
  const showToken = (connection: Connection, output: Output, response: CreateEnrollmentTokenResponse): void => {
    const agentCommand = `driftline-agent run --enroll-token ${response.token} --device-id ${response.deviceId} --server ${connection.server}`;
    output.result({ ...(CreateEnrollmentTokenResponse.toJSON(response) as object), agentCommand }, () => {
      const what = response.reenroll ? 're-enrollment token' : 'enrollment token';
      output.line(`${what} ${response.id} for ${response.deviceId} (one use, expires ${new Date(response.expiresAtMs).toISOString()}):`);
      output.line(response.token);
      output.line('');
      output.line(response.reenroll ? 'on the device, remove its identity.json, then run:' : 'on the device, run:');
      output.line(`  ${agentCommand}`);
    });
  };
  const ttlSeconds = (ttl: number | undefined): number => (ttl === undefined ? 0 : Math.ceil(ttl / 1000));

  devices
    .command('token')
    .description('create a one-time enrollment token for a device that is not enrolled yet')
    .argument('<id>', 'device id the token enrolls')
    .option('--label <k=v>', 'label the device gets at enrollment (repeatable)', keyValue)
    .option('--ttl <duration>', 'how long the token stays valid, e.g. 24h (default: the server setting)', durationMs)
    .action((id: string, options: { label?: Record<string, string>; ttl?: number }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.api.service(DeviceServiceService);
        const response = await client.createEnrollmentToken({ deviceId: id, labels: options.label ?? {}, ttlSeconds: ttlSeconds(options.ttl) });
        showToken(connection, output, response);
      }),
    );

  devices
    .command('reenroll')
    .description(
      'create a one-time token that re-enrolls an enrolled device: when spent, the device gets a new secret and sessions using the old one are dropped',
    )
    .argument('<id>', 'device id')
    .option('--ttl <duration>', 'how long the token stays valid, e.g. 24h (default: the server setting)', durationMs)
    .action((id: string, options: { ttl?: number }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.api.service(DeviceServiceService);
        showToken(connection, output, await client.reenrollDevice({ deviceId: id, ttlSeconds: ttlSeconds(options.ttl) }));
      }),
    );

  devices
    .command('tokens')
    .description('list enrollment tokens still usable (ids and state only; a token is shown once, when created)')
    .option('--device <id>', "only this device's tokens")
    .option('--all', 'also used, expired and revoked tokens')
    .action((options: { device?: string; all?: boolean }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.api.service(DeviceServiceService);
        const response = await client.listEnrollmentTokens({ deviceId: options.device ?? '', includeInactive: Boolean(options.all) });
        output.result({ tokens: response.tokens.map((t) => EnrollmentToken.toJSON(t)) }, () => {
          const now = systemClock.now();
          output.table(
            ['ID', 'DEVICE', 'KIND', 'STATE', 'CREATED', 'EXPIRES'],
            response.tokens.map((t) => [
              t.id,
              t.deviceId,
              t.reenroll ? 'reenroll' : 'enroll',
              t.state,
              relativeTime(t.createdAtMs, now),
              new Date(t.expiresAtMs).toISOString(),
            ]),
            options.all ? 'No enrollment tokens found' : 'No usable enrollment tokens found (--all shows used, expired and revoked ones)',
          );
        });
      }),
    );

  devices
    .command('revoke-token')
    .description('revoke an enrollment token that was not used yet')
    .argument('<token-id>', 'token id (enr_..., from devices tokens)')
    .action((id: string, _options: unknown, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.api.service(DeviceServiceService);
        const token = await client.revokeEnrollmentToken({ id });
        output.result(EnrollmentToken.toJSON(token), () =>
          output.line(
            token.state === 'used' ? `token ${token.id} was already used; nothing to revoke` : `revoked enrollment token ${token.id} for ${token.deviceId}`,
          ),
        );
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
        const client = connection.api.service(DeviceServiceService);
        const device = await client.labelDevice({ deviceId: id, set: labels, remove: options.remove ?? [] });
        output.result(Device.toJSON(device), () => output.line(`${device.id}: ${labelsText(device.labels)}`));
      }),
    );

  devices
    .command('decommission')
    .description("revoke a device's credential and disconnect it (its telemetry is kept)")
    .argument('<id>', 'device id')
    .action((id: string, _options: unknown, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.api.service(DeviceServiceService);
        const device = await client.decommissionDevice({ deviceId: id });
        output.result(Device.toJSON(device), () => output.line(`decommissioned ${device.id}`));
      }),
    );
}

function deviceFields(device: Device, now: number): Array<[string, string | number]> {
  const reported = device.reported;
  return [
    ['id', device.id],
    ['status', status(device)],
    ['online', device.online ? 'yes' : 'no'],
    ['labels', labelsText(device.labels)],
    ['enrolled', relativeTime(device.enrolledAtMs, now)],
    ['last seen', relativeTime(device.lastSeenMs, now)],
    ['profile', reported?.firmwareProfile || '-'],
    ['agent', reported?.agentVersion || '-'],
    ['buffer', reported?.bufferDepth ?? '-'],
    ['dropped records', reported?.droppedRecords ?? '-'],
    ['last error', reported?.lastErrorCode ? `[${reported.lastErrorCode}] ${reported.lastError}` : '-'],
  ];
}

/**
 * One row per model the device should run or reports, by name: what is desired, what runs
 * (a refused update keeps the old version running), and the model's own last error.
 */
function modelRows(device: Device): Array<Array<string | number>> {
  const reported = new Map((device.reported?.activeModels ?? []).map((m) => [m.name, m]));
  const names = [...new Set([...device.desiredModels.map((m) => m.name), ...reported.keys()])];
  return names.map((name) => {
    const desired = device.desiredModels.find((m) => m.name === name);
    const active = reported.get(name);
    const fallbacks = active?.fallbacks.length ? ` (after ${active.fallbacks.join(', ')})` : '';
    return [
      name,
      desired ? `v${desired.version}` : 'removed',
      active && active.version > 0 ? `v${active.version}` : '-',
      active?.state || (desired ? 'pending' : '-'),
      active?.provider ? active.provider + fallbacks : '-',
      active?.memoryBytes ? bytes(active.memoryBytes) : '-',
      active?.lastErrorCode ? `[${active.lastErrorCode}] ${active.lastError}` : '-',
    ];
  });
}
