import { Command, InvalidArgumentError, Option } from 'commander';
import { DriftlineError } from '../common/errors.js';
import { createLogger, LOG_FORMATS, type LogFormat } from '../common/logger.js';
import { DRIFTLINE_VERSION } from '../common/version.js';
import { startAgent } from './agent.js';
import { AGENT_ENVIRONMENT, agentConfigSchema, loadAgentConfig } from './config.js';
import { formatSelftest, runSelftest } from './selftest.js';

/** Exit codes of driftline-agent. */
export const AGENT_EXIT = { ok: 0, failed: 1, usage: 2, config: 3, decommissioned: 4 } as const;

const port = (value: string): number => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('expected a port number 0-65535');
  return n;
};

/** What a flag left out means, shown in help: the configuration schema's defaults (a commander default would override the --config file). */
const DEFAULTS = agentConfigSchema.parse({});

const program = new Command('driftline-agent')
  .description('Driftline edge agent: serves ONNX models on this device and keeps the fleet informed')
  .version(DRIFTLINE_VERSION, '-V, --version')
  .exitOverride()
  .showHelpAfterError();

program
  .command('selftest')
  .description('check this installation: native addons, one inference on the bundled demo model, the buffer, the firmware profile')
  .option('--data-dir <dir>', 'open (or create) the buffer in this folder instead of a temporary one')
  .option('--model <file.onnx>', 'run this model instead of the demo model bundled in the binary')
  .option(
    '--examples <file.json>',
    'with --model: example inputs it runs on (the file `driftline models push --examples` takes); without, sizes for its dynamic dims are tried',
  )
  .option('--profile <name>', 'firmware profile name, or auto')
  .option('--json', 'print the results as one JSON line')
  .addHelpText('after', '\nExit codes: 0 every check passed, 1 a check failed.')
  .action(async (opts: { dataDir?: string; model?: string; examples?: string; profile?: string; json?: boolean }) => {
    const report = await runSelftest(opts);
    process.stdout.write(opts.json ? `${JSON.stringify(report)}\n` : formatSelftest(report));
    process.exit(report.ok ? AGENT_EXIT.ok : AGENT_EXIT.failed);
  });

program
  .command('run')
  .description('enroll if needed, then run until SIGINT/SIGTERM')
  .option('-c, --config <file>', 'configuration file (YAML or JSON)')
  .option('--device-id <id>', 'device id (needed to enroll)')
  .option('--enroll-token <token>', 'one-time enrollment token from `driftline devices token <id>`')
  .option('--server <host:port>', `control plane gRPC address used to enroll (default: ${DEFAULTS.server})`)
  .option('--server-ca <file>', 'CA bundle for the control plane TLS certificate')
  .option('--data-dir <dir>', `folder for identity, buffer and models (default: ${DEFAULTS.dataDir})`)
  .option('--profile <name>', `firmware profile name, or auto (default: ${DEFAULTS.firmwareProfile})`)
  .option('--mqtt-url <url>', 'override the broker URL given at enrollment')
  .option('--mqtt-ca <file>', 'CA bundle for an mqtts:// broker')
  .option('--local-port <port>', `local inference API port on 127.0.0.1, 0: any free port (default: ${DEFAULTS.localApi.port})`, port)
  .option('--local-socket <path>', 'serve the local API on a unix socket instead')
  .option('--buffer-sync <mode>', `SQLite synchronous mode for the buffer: FULL or NORMAL (default: ${DEFAULTS.buffer.synchronous})`)
  .option('--log-level <level>', `trace, debug, info, warn, error (default: ${DEFAULTS.logLevel})`)
  .addOption(
    new Option('--log-format <format>', 'log lines as text (pino-pretty) or JSON; auto: text on a terminal, JSON otherwise')
      .choices(LOG_FORMATS)
      .env('DRIFTLINE_LOG_FORMAT')
      .default('auto'),
  )
  .addHelpText(
    'after',
    `\nPrecedence: defaults < --config file < environment < flags.\nEnvironment: ${Object.keys(AGENT_ENVIRONMENT).join(', ')}\n` +
      `Exit codes: 0 stopped cleanly, 1 failed, 2 usage, 3 configuration or enrollment refused, 4 the device was decommissioned (enroll it again).`,
  )
  .action(async (opts: Record<string, string | number | undefined>) => {
    const config = loadAgentConfig({
      file: opts.config as string | undefined,
      env: process.env,
      flags: {
        deviceId: opts.deviceId,
        enrollToken: opts.enrollToken,
        server: opts.server,
        serverCaFile: opts.serverCa,
        dataDir: opts.dataDir,
        firmwareProfile: opts.profile,
        mqtt: { url: opts.mqttUrl, caFile: opts.mqttCa },
        localApi: { port: opts.localPort, socketPath: opts.localSocket },
        buffer: { synchronous: opts.bufferSync },
        logLevel: opts.logLevel,
      },
    });
    const logger = createLogger('driftline-agent', config.logLevel, opts.logFormat as LogFormat);
    // A decommissioned device stops for good (the broker would refuse it forever): say so, shut down, exit 4.
    let signals = 0;
    let fatal: ((err: DriftlineError) => void) | undefined;
    let earlyFatal: DriftlineError | undefined;
    const agent = await startAgent(config, { logger, onFatal: (err) => (fatal ? fatal(err) : (earlyFatal ??= err)) });
    fatal = (err) => {
      if (signals++ > 0) return;
      process.stderr.write(`driftline-agent: error [${err.code}]: ${err.message}\n`);
      agent.shutdown().then(
        () => process.exit(AGENT_EXIT.decommissioned),
        () => process.exit(AGENT_EXIT.decommissioned),
      );
    };
    const stop = (signal: string): void => {
      if (++signals > 1) process.exit(AGENT_EXIT.failed);
      logger.info({ signal }, 'stopping');
      agent.shutdown().then(
        () => {
          const s = agent.stats();
          process.stdout.write(
            `driftline-agent: stopped device=${agent.deviceId} enqueued=${s.recordsEnqueued} acknowledged=${s.recordsAcknowledged} buffered=${s.bufferDepth} dropped=${s.recordsDropped}\n`,
          );
          process.exit(AGENT_EXIT.ok);
        },
        (err: unknown) => {
          logger.error({ err }, 'shutdown failed');
          process.exit(AGENT_EXIT.failed);
        },
      );
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
    // The one line scripts wait for (logs go to stderr); only now, so a signal sent on seeing it finds the handlers.
    process.stdout.write(`driftline-agent: ready device=${agent.deviceId} local-api=${agent.localApiUrl}\n`);
    if (earlyFatal) fatal(earlyFatal);
  });

// No top-level await: the packaged binary bundles this module as CommonJS (packaging/build-agent.ts).
program.parseAsync(process.argv).catch((err: unknown) => {
  const code = (err as { code?: string }).code;
  if (code === 'commander.helpDisplayed' || code === 'commander.version' || code === 'commander.help') process.exit(AGENT_EXIT.ok);
  if (code?.startsWith('commander.')) process.exit(AGENT_EXIT.usage);
  if (err instanceof DriftlineError) {
    const fix =
      err.code === 'LISTEN_FAILED' && err.details?.listener === 'local-api'
        ? '; choose another port with --local-port <port> (0: any free port) or serve on a unix socket with --local-socket <path>'
        : '';
    process.stderr.write(`driftline-agent: error [${err.code}]: ${err.message}${fix}\n`);
    process.exit(err.kind === 'invalid' || err.kind === 'unauthenticated' || err.kind === 'forbidden' ? AGENT_EXIT.config : AGENT_EXIT.failed);
  }
  process.stderr.write(`driftline-agent: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(AGENT_EXIT.failed);
});
