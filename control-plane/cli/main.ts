import { Command, CommanderError, Option } from 'commander';
import { DRIFTLINE_VERSION } from '../../common/version.js';
import { positiveSeconds } from './arguments.js';
import { registerDevices } from './commands/devices.js';
import { registerDrift } from './commands/drift.js';
import { registerKeys } from './commands/keys.js';
import { registerModels } from './commands/models.js';
import { registerRollout } from './commands/rollout.js';
import { registerServe } from './commands/serve.js';
import { registerTelemetry } from './commands/telemetry.js';
import { registerTokens } from './commands/tokens.js';
import { DEFAULT_SERVER, DEFAULT_TOKEN_FILE, EXIT, EXIT_CODES_HELP, type ExitCode, toCliError } from './connection.js';
import type { GlobalOptions } from './context.js';

const TOKEN_HELP = `Token lookup order (first found wins):
  1. --token <token>
  2. the DRIFTLINE_TOKEN environment variable
  3. --token-file <file>
  4. ./${DEFAULT_TOKEN_FILE}, written by \`driftline serve\` run in this directory`;

export function buildProgram(): Command {
  const program = new Command('driftline')
    .description('Driftline operator CLI: run the control plane, manage devices, models, rollouts and tokens')
    // Only -V: a program-level --version would swallow `models deploy --version N`.
    .version(DRIFTLINE_VERSION, '-V', 'print the version')
    .addOption(new Option('--server <host:port>', 'control plane gRPC address').env('DRIFTLINE_SERVER').default(DEFAULT_SERVER))
    .addOption(new Option('--token <token>', 'operator token (lookup order: see driftline --help)').env('DRIFTLINE_TOKEN'))
    .option('--token-file <file>', `file holding the operator token (default: ./${DEFAULT_TOKEN_FILE} if it exists)`)
    .option('--tls', 'connect with TLS, trusting the system roots')
    .option('--tls-ca <file>', 'connect with TLS, trusting this CA bundle')
    .option('--tls-cert <file>', 'client certificate for mTLS (with serve: the server certificate)')
    .option('--tls-key <file>', 'key of --tls-cert')
    .option('--json', 'print one JSON document on stdout instead of tables')
    .option('--timeout <seconds>', 'deadline of each call (default: 30 s; uploads: none)', positiveSeconds)
    .configureHelp({ showGlobalOptions: true })
    // Commander's own messages get the same shape as every other error; its exits become ours.
    .configureOutput({ outputError: (text, write) => write(text.replace(/^error: /, 'error [USAGE]: ')) })
    .exitOverride()
    .addHelpText('after', `\n${TOKEN_HELP}\n\n${EXIT_CODES_HELP}\n`);

  registerServe(program);
  registerDevices(program);
  registerModels(program);
  registerRollout(program);
  registerTelemetry(program);
  registerDrift(program);
  registerTokens(program);
  registerKeys(program);
  return program;
}

/** Runs the CLI and resolves to its exit code; `serve` resolves once listening and keeps the process alive. */
export async function main(argv: readonly string[]): Promise<ExitCode> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return EXIT.ok;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    const error = toCliError(err, program.opts<GlobalOptions>().server);
    // One line per error, so scripts can grep it: a multi-line problem list becomes `a: b; c`.
    const message = error.message.replace(/(:?)\s*\n\s*/g, (_, colon: string) => (colon ? ': ' : '; '));
    process.stderr.write(`error [${error.code}]: ${message}\n`);
    return error.exitCode;
  }
}
