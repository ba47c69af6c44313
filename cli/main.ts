import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { DRIFTLINE_VERSION } from '../common/version.js';
import { DEFAULT_SERVER, DEFAULT_TOKEN_FILE, EXIT, EXIT_CODES_HELP, type ExitCode } from './cli-error.js';
import type { GlobalOptions } from './context.js';
import { USER_FORM_HELP } from './help.js';

const TOKEN_HELP = `Token lookup order (first found wins):
  1. --token <token>
  2. the DRIFTLINE_TOKEN environment variable
  3. --token-file <file>
  4. ./${DEFAULT_TOKEN_FILE}, written by \`driftline serve\` run in this directory`;

// Here rather than in arguments.ts, whose duration parser loads the config schema (zod, yaml).
function positiveSeconds(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('expected a positive number of seconds');
  return n;
}

type Register = (program: Command) => void;

/**
 * Each command group is loaded only when it runs: `driftline devices list` never loads the
 * control plane, `driftline --version` not even gRPC. Help and unknown commands load them all.
 */
const COMMANDS: Record<string, () => Promise<Register>> = {
  serve: async () => (await import('./commands/serve.js')).registerServe,
  devices: async () => (await import('./commands/devices.js')).registerDevices,
  models: async () => (await import('./commands/models.js')).registerModels,
  rollout: async () => (await import('./commands/rollout.js')).registerRollout,
  telemetry: async () => (await import('./commands/telemetry.js')).registerTelemetry,
  drift: async () => (await import('./commands/drift.js')).registerDrift,
  datasets: async () => (await import('./commands/datasets.js')).registerDatasets,
  tokens: async () => (await import('./commands/tokens.js')).registerTokens,
  keys: async () => (await import('./commands/keys.js')).registerKeys,
  // Training jobs and `training policy` (registerTraining adds the policy subgroup to the same group).
  training: async () => (await import('./commands/training.js')).registerTraining,
  worker: async () => (await import('./commands/worker.js')).registerWorkerCommand,
  federated: async () => (await import('./commands/federated.js')).registerFederated,
};

/** The program with its global options and every command registered (help, tests). */
export async function buildProgram(): Promise<Command> {
  const program = globalProgram();
  for (const load of Object.values(COMMANDS)) (await load())(program);
  return program;
}

function globalProgram(): Command {
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
    .configureHelp({ ...USER_FORM_HELP, showGlobalOptions: true })
    // Commander's own messages get the same shape as every other error; its exits become ours.
    .configureOutput({ outputError: (text, write) => write(text.replace(/^error: /, 'error [USAGE]: ')) })
    .exitOverride()
    .addHelpText('after', `\n${TOKEN_HELP}\n\n${EXIT_CODES_HELP}\n`);
  program
    .command('version')
    .description('print the version (also: driftline --version, -V)')
    .action(() => void process.stdout.write(`${DRIFTLINE_VERSION}\n`));
  return program;
}

/**
 * The first word that is not a global option (nor a global option's value): the command.
 * `--version` before any command is the program's own (after one, `models deploy --version N` keeps it).
 */
function firstCommand(program: Command, args: readonly string[]): string | undefined {
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '--') return args[i + 1];
    if (arg === '--version' || arg === '-V') return 'version';
    if (!arg.startsWith('-')) return arg;
    const option = program.options.find((o) => o.long === arg.split('=')[0] || o.short === arg);
    if (option && (option.required || option.optional) && !arg.includes('=')) i++;
  }
  return undefined;
}

async function programFor(args: readonly string[]): Promise<Command> {
  const program = globalProgram();
  const command = firstCommand(program, args);
  if (command === 'version') return program;
  const load = command === undefined ? undefined : COMMANDS[command];
  if (!load) return buildProgram();
  (await load())(program);
  return program;
}

/** Runs the CLI and resolves to its exit code; `serve` resolves once listening and keeps the process alive. */
export async function main(argv: readonly string[]): Promise<ExitCode> {
  const args = argv.slice(2);
  const program = await programFor(args);
  try {
    await program.parseAsync(firstCommand(program, args) === 'version' && !args.includes('version') ? [...argv.slice(0, 2), 'version'] : argv);
    return EXIT.ok;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    // Loaded only on this path: it knows gRPC's statuses, and --version or --help never needs it.
    const { toCliError } = await import('./connection.js');
    const error = toCliError(err, program.opts<GlobalOptions>().server);
    // One line per error, so scripts can grep it: a multi-line problem list becomes `a: b; c`.
    const message = error.message.replace(/(:?)\s*\n\s*/g, (_, colon: string) => (colon ? ': ' : '; '));
    process.stderr.write(`error [${error.code}]: ${message}\n`);
    return error.exitCode;
  }
}
