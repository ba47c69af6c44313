import { Option, type Command } from 'commander';
import { layerConfig, readConfigFile } from '../../common/config.js';
import { DriftlineError } from '../../common/errors.js';
import { createLogger, type LogFormat } from '../../common/logger.js';
import { controlPlaneConfigSchema, type ControlPlaneConfigInput } from '../../control-plane/config.js';
import { integer, logFormatOption, logLevelOption } from '../arguments.js';
import { CliError, EXIT } from '../connection.js';

interface ServeOptions {
  config?: string;
  dataDir?: string;
  grpcHost?: string;
  grpcPort?: number;
  httpHost?: string;
  httpPort?: number;
  mqttHost?: string;
  mqttPort?: number;
  mqttUrl?: string;
  mqttUsername?: string;
  mqttPassword?: string;
  mqttCa?: string;
  advertiseMqttUrl?: string;
  advertiseHttpUrl?: string;
  trustRoot?: string;
  rollbackKey?: string;
  automationKey?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsClientCa?: string;
  logLevel: string;
  logFormat: LogFormat;
}

const DEFAULT_DATA_DIR = '.driftline';
const port = integer(0, 65535);
/**
 * What a flag left out means, shown in help: the configuration schema's defaults. Not commander
 * defaults, which would override the --config file (flags override it only when given).
 */
const DEFAULTS = controlPlaneConfigSchema.parse({ dataDir: DEFAULT_DATA_DIR });

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('run the control plane (gRPC API, MQTT broker, artifact HTTP server) in this process')
    .option('--config <file>', 'configuration file (.yaml or .json); flags override it')
    .option('--data-dir <dir>', `where the store, artifacts and admin token live (default: ${DEFAULT_DATA_DIR})`)
    .option('--grpc-host <host>', `gRPC listen address (default: ${DEFAULTS.grpc.host})`)
    .option('--grpc-port <port>', `gRPC port, 0: any free port (default: ${DEFAULTS.grpc.port})`, port)
    .option('--http-host <host>', `artifact HTTP listen address (default: ${DEFAULTS.http.host})`)
    .option('--http-port <port>', `artifact HTTP port, 0: any free port (default: ${DEFAULTS.http.port})`, port)
    .option('--mqtt-host <host>', `embedded MQTT broker listen address (default: ${DEFAULTS.mqtt.embedded.host})`)
    .option('--mqtt-port <port>', `embedded MQTT broker port, 0: any free port (default: ${DEFAULTS.mqtt.embedded.port})`, port)
    .option('--mqtt-url <url>', 'use this external broker (mqtt:// or mqtts://) instead of the embedded one')
    .option('--mqtt-username <name>', 'user name on the external broker')
    .addOption(new Option('--mqtt-password <password>', 'password on the external broker').env('DRIFTLINE_MQTT_PASSWORD'))
    .option('--mqtt-ca <file>', 'CA bundle that signed the external broker certificate')
    .option('--advertise-mqtt-url <url>', 'broker URL handed to devices at enrollment')
    .option('--advertise-http-url <url>', 'artifact base URL handed to devices')
    .option('--tls-client-ca <file>', 'require gRPC clients to present a certificate this CA signed (mTLS)')
    .option('--trust-root <path>', 'root metadata for signed releases: the root/ folder of `driftline keys init` (or one root.v<N>.json)')
    .option('--rollback-key <file>', 'opt in to online signing of rollback directives with this key (passphrase in $DRIFTLINE_ROLLBACK_KEY_PASSPHRASE)')
    .option(
      '--automation-key <file>',
      'opt in to online signing of scoped canaries with this automation key (keys create-automation; passphrase in $DRIFTLINE_AUTOMATION_KEY_PASSPHRASE)',
    )
    .addOption(logLevelOption())
    .addOption(logFormatOption())
    .addHelpText('after', '\nWith serve, the global --tls-cert and --tls-key are the gRPC server certificate and key.')
    .action(async (_options: unknown, command: Command) => {
      // optsWithGlobals: --tls-cert/--tls-key are global options, read by the program wherever they appear.
      const options = command.optsWithGlobals<ServeOptions>();
      const config = withFlags(options.config ? readConfigFile(options.config) : {}, options);
      const logger = createLogger('driftline', options.logLevel, options.logFormat);
      // Loaded here so that client commands do not pay for SQLite, the broker and the registry.
      const { runControlPlane } = await import('../../control-plane/main.js');
      await runControlPlane(config, { logger }).catch((err: unknown) => {
        throw withListenFix(err);
      });
    });
}

const LISTEN_FIX: Record<string, string> = {
  grpc: 'choose another port with --grpc-port <port> (0: any free port)',
  mqtt: 'choose another port with --mqtt-port <port> (0: any free port), or use the broker that holds it with --mqtt-url',
  http: 'choose another port with --http-port <port> (0: any free port)',
};

/** A listener that could not bind becomes LISTEN_FAILED naming the flag that changes its port (the start has cleaned up by then). */
function withListenFix(err: unknown): unknown {
  if (!(err instanceof DriftlineError) || err.code !== 'LISTEN_FAILED') return err;
  const fix = LISTEN_FIX[String(err.details?.listener)];
  return fix ? new CliError(err.code, `${err.message}; ${fix}`, EXIT.unavailable) : err;
}

/** Lays the flags that were given over the file's settings; the schema validates the result. */
function withFlags(file: unknown, o: ServeOptions): ControlPlaneConfigInput {
  const flags = {
    dataDir: o.dataDir,
    grpc: {
      host: o.grpcHost,
      port: o.grpcPort,
      tls: o.tlsCert || o.tlsKey || o.tlsClientCa ? { cert: o.tlsCert, key: o.tlsKey, clientCa: o.tlsClientCa } : undefined,
    },
    http: { host: o.httpHost, port: o.httpPort },
    mqtt: {
      host: o.mqttHost,
      port: o.mqttPort,
      url: o.mqttUrl,
      username: o.mqttUsername,
      password: o.mqttPassword,
      caFile: o.mqttCa,
      advertisedUrl: o.advertiseMqttUrl,
    },
    advertisedHttpUrl: o.advertiseHttpUrl,
    trust: { root: o.trustRoot, rollbackKey: o.rollbackKey, automationKey: o.automationKey },
  };
  const merged = layerConfig(file, flags) as ControlPlaneConfigInput;
  return typeof merged === 'object' && merged !== null && !Array.isArray(merged) && merged.dataDir === undefined
    ? { ...merged, dataDir: DEFAULT_DATA_DIR }
    : merged;
}
