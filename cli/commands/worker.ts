import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import { InvalidArgumentError, Option, type Command } from 'commander';
import { createLogger, type LogFormat } from '../../common/logger.js';
import { formatDuration } from '../../common/units.js';
import { DRIFTLINE_VERSION } from '../../common/version.js';
import { BUILT_IN_TRAINERS, builtInTrainerCommand, findTorchPython, type BuiltInTrainer } from '../../worker/built-in-trainers.js';
import type { TrainerCommand } from '../../worker/trainer-process.js';
import { durationMs, keyValue, logFormatOption, logLevelOption } from '../arguments.js';
import { CliError, EXIT, checkServerAddress, tlsOf, type ConnectionOptions } from '../connection.js';
import type { GlobalOptions } from '../context.js';

interface WorkerOptions {
  name: string;
  workDir: string;
  trainers?: string[];
  trainer?: Record<string, string>;
  once?: boolean;
  shutdownGrace: number;
  nvidiaSmi: string;
  logLevel: string;
  logFormat: LogFormat;
}

const DEFAULT_WORK_DIR = '.driftline-worker';
const DEFAULT_GRACE_MS = 30_000;
const TRAINER_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

function trainerList(value: string): string[] {
  const names = value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (names.length === 0 || names.some((n) => !TRAINER_NAME.test(n))) throw new InvalidArgumentError('expected trainer names such as typescript,pytorch');
  return names;
}

const WORKER_HELP = `
The worker leases training jobs from the control plane, runs their trainer and hands in the
candidate. It needs a worker token: \`driftline tokens create --role worker\` (operator tokens are
refused). Run as many as you like, anywhere that reaches the gRPC address (a systemd service, a
Kubernetes Job): the lease queue is the only scheduling; a worker that dies loses its lease and
the job goes to another one.

Trainers: the built-in typescript (always) and pytorch (when a Python with torch and onnx is
found: DRIFTLINE_PYTHON, python3, /usr/bin/python3), and your own with --trainer name=command
(given --dataset, --base-model, --hyperparameters and --output; see the README's trainer contract).

SIGTERM or Ctrl-C: no new lease; the running attempt gets --shutdown-grace to finish, then its
trainer is stopped and the attempt fails with WORKER_SHUTDOWN (the job is queued again). A second
signal stops at once.`;

export function registerWorkerCommand(program: Command): void {
  program
    .command('worker')
    .description('run a GPU training worker: lease training jobs, run their trainer, upload the candidates')
    .option(
      '--name <name>',
      'worker name (registering again under it keeps the worker id)',
      hostname()
        .slice(0, 64)
        .replace(/[^A-Za-z0-9._-]/g, '-'),
    )
    .option('--work-dir <dir>', 'downloads, datasets and trainer output, one folder per attempt (one worker per directory)', DEFAULT_WORK_DIR)
    .addOption(
      new Option('--trainers <names>', `built-in trainers to offer, of ${BUILT_IN_TRAINERS.join(', ')}`)
        .argParser(trainerList)
        .default(undefined, 'typescript, and pytorch when torch is found'),
    )
    .option('--trainer <name=command>', 'also offer your own trainer: its name, and the command that runs it (repeatable)', keyValue)
    .option('--once', 'run at most one attempt: exit after it, or at once when nothing is queued (a Kubernetes Job)')
    .addOption(
      new Option('--shutdown-grace <duration>', 'on SIGTERM, how long a running attempt may go on before it is stopped')
        .argParser(durationMs)
        .default(DEFAULT_GRACE_MS, formatDuration(DEFAULT_GRACE_MS)),
    )
    .addOption(new Option('--nvidia-smi <path>', 'the nvidia-smi to ask for GPUs (none found: no GPU offered)').default('nvidia-smi').hideHelp())
    .addOption(logLevelOption())
    .addOption(logFormatOption())
    .addHelpText('after', WORKER_HELP)
    .action(async (_options: unknown, command: Command) => {
      const options = command.optsWithGlobals<WorkerOptions & GlobalOptions>();
      await runWorker(options);
    });
}

/** --token or DRIFTLINE_TOKEN (commander reads both), else --token-file; never the admin token file `serve` writes. */
function workerToken(options: ConnectionOptions): string {
  let token = options.token?.trim();
  if (!token && options.tokenFile) {
    try {
      token = readFileSync(options.tokenFile, 'utf8').trim();
    } catch (err) {
      throw new CliError('USAGE', `cannot read token file ${options.tokenFile}: ${(err as Error).message}`, EXIT.usage);
    }
  }
  if (!token) {
    throw new CliError(
      'AUTH_MISSING',
      'no worker token: create one with `driftline tokens create --role worker`, then pass --token-file <file> or set DRIFTLINE_TOKEN',
      EXIT.auth,
    );
  }
  return token;
}

/** The trainers this worker offers, each resolved to its command when a lease needs it. */
async function offeredTrainers(options: WorkerOptions, logger: ReturnType<typeof createLogger>): Promise<Record<string, () => Promise<TrainerCommand>>> {
  const trainers: Record<string, () => Promise<TrainerCommand>> = {};
  // Your own trainers first: a mistake there is reported before the (slow) torch probe.
  const custom: Record<string, () => Promise<TrainerCommand>> = {};
  for (const [name, commandLine] of Object.entries(options.trainer ?? {})) {
    if (!TRAINER_NAME.test(name)) throw new CliError('USAGE', `--trainer ${name}=...: a trainer name is letters, digits, . _ - (at most 64)`, EXIT.usage);
    const [command, ...args] = commandLine.trim().split(/\s+/);
    if (!command) throw new CliError('USAGE', `--trainer ${name}=: name the command that runs it`, EXIT.usage);
    custom[name] = async () => ({ command, args });
  }
  const asked = options.trainers;
  for (const name of asked ?? BUILT_IN_TRAINERS) {
    if (!(BUILT_IN_TRAINERS as readonly string[]).includes(name)) {
      throw new CliError(
        'USAGE',
        `--trainers: ${name} is not a built-in trainer (${BUILT_IN_TRAINERS.join(', ')}); offer your own with --trainer ${name}=<command>`,
        EXIT.usage,
      );
    }
    if (name === 'pytorch') {
      try {
        await findTorchPython();
      } catch (err) {
        // Asked for by name: a worker that cannot run it must not offer it.
        if (asked) throw new CliError('TRAINER_UNAVAILABLE', (err as Error).message, EXIT.unavailable);
        logger.info({ reason: (err as Error).message }, 'not offering the pytorch trainer');
        continue;
      }
    }
    trainers[name] = () => builtInTrainerCommand(name as BuiltInTrainer);
  }
  return { ...trainers, ...custom };
}

async function runWorker(options: WorkerOptions & GlobalOptions): Promise<void> {
  checkServerAddress(options.server);
  const token = workerToken(options);
  const tls = tlsOf(options);
  const logger = createLogger('driftline-worker', options.logLevel, options.logFormat);
  const json = Boolean(options.json);
  const say = (text: string, data: Record<string, unknown>): void => void process.stdout.write(json ? `${JSON.stringify(data)}\n` : `${text}\n`);
  const [{ grpcWorkerApi }, { TrainingWorker }, { detectResources }] = await Promise.all([
    import('../../worker/grpc/grpc-worker-api.js'),
    import('../../worker/training-worker.js'),
    import('../../worker/resources.js'),
  ]);
  const trainers = await offeredTrainers(options, logger);
  const resources = await detectResources({ nvidiaSmi: options.nvidiaSmi });
  if (resources.note) logger.info(resources.note);
  const api = grpcWorkerApi({ address: options.server, token, tls, timeoutMs: (options.timeout ?? 30) * 1000 });
  const worker = TrainingWorker.create({
    api,
    name: options.name,
    workDir: resolve(options.workDir),
    trainers,
    resources: { gpus: resources.gpus, cpu: resources.cpu, memoryBytes: resources.memoryBytes },
    version: DRIFTLINE_VERSION,
    once: options.once,
    logger,
    onEvent: (event) => {
      if (event.type === 'registered') {
        say(
          `worker ${options.name} registered as ${event.session.workerId}: ${resources.gpus.length} GPU(s)${resources.gpus.length ? ` (${resources.gpus.map((g) => g.name).join(', ')})` : ''}, ${resources.cpu} CPU, trainers ${Object.keys(trainers).join(', ')}`,
          {
            event: 'registered',
            workerId: event.session.workerId,
            name: options.name,
            gpus: resources.gpus,
            cpu: resources.cpu,
            memoryBytes: resources.memoryBytes,
            trainers: Object.keys(trainers),
          },
        );
      } else if (event.type === 'leased') {
        const l = event.lease;
        say(`job ${l.jobId} attempt ${l.attempt}: leased (${l.model} from v${l.baseVersion}, trainer ${l.trainer})`, {
          event: 'leased',
          jobId: l.jobId,
          attempt: l.attempt,
          model: l.model,
          baseVersion: l.baseVersion,
          trainer: l.trainer,
        });
      } else if (event.type === 'trainer-started') {
        say(`job ${event.jobId} attempt ${event.attempt}: trainer running (pid ${event.pid})`, {
          event: 'trainer-started',
          jobId: event.jobId,
          attempt: event.attempt,
          pid: event.pid,
        });
      } else if (event.type === 'attempt-ended') {
        say(
          `job ${event.jobId} attempt ${event.attempt}: ${event.outcome}${event.errorCode ? ` ${event.errorCode}` : ''}${event.message ? `: ${event.message.split('\n')[0]}` : ''}`,
          {
            event: 'attempt-ended',
            jobId: event.jobId,
            attempt: event.attempt,
            outcome: event.outcome,
            errorCode: event.errorCode ?? null,
            message: event.message ?? null,
          },
        );
      }
    },
  });
  // The worker is this process's entry point: it alone handles the signals.
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals): void => {
    signals++;
    const graceMs = signals > 1 ? 0 : options.shutdownGrace;
    logger.info({ signal, graceMs }, signals > 1 ? 'stopping now' : 'stopping: no new lease; the running attempt may finish within the grace');
    void worker.shutdown(graceMs);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    await worker.run();
    await worker.finished();
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    api.close();
  }
}
