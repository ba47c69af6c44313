/**
 * The trainer contract: what a training job runs, built in or brought by a user (README,
 * "Bring your own trainer"). A trainer is a command, started as
 *
 *   <cmd> --dataset DIR --base-model FILE.onnx --hyperparameters FILE.json --output DIR
 *
 * DIR is a driftline-dataset/1 snapshot folder (common/datasets/snapshot-layout.ts). The
 * trainer writes OUTPUT/model.onnx (the candidate, with the base model's input and output
 * names, types and shapes) and OUTPUT/metrics.json (METRICS_SCHEMA), prints progress to stdout
 * as JSON lines (TRAINER_LINE_SCHEMA), one object a line, and exits 0. Anything else it prints
 * to stdout is counted and shown as a log line; stderr is kept as a tail for crash reports.
 */
import { z } from 'zod';

export const TRAINER_OUTPUT_MODEL = 'model.onnx';
export const TRAINER_OUTPUT_METRICS = 'metrics.json';

export interface TrainerArguments {
  /** A driftline-dataset/1 snapshot folder. */
  dataset: string;
  /** The parent version's ONNX file. */
  baseModel: string;
  /** A JSON file holding an object; each trainer documents its own keys. */
  hyperparameters: string;
  /** An existing, empty folder the trainer writes model.onnx and metrics.json into. */
  output: string;
}

/** The arguments a trainer command is given, after the command's own. */
export function trainerArgv(args: TrainerArguments): string[] {
  return ['--dataset', args.dataset, '--base-model', args.baseModel, '--hyperparameters', args.hyperparameters, '--output', args.output];
}

const finite = z.number().refine(Number.isFinite, 'must be a finite number');
/** Metric names travel to the control plane and the CLI: short identifiers, not free text. */
const metricName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_.-]{0,63}$/, 'metric names are identifiers of at most 64 characters');
const MAX_METRICS = 64;

export const progressLineSchema = z.object({
  type: z.literal('progress'),
  epoch: z.number().int().nonnegative(),
  epochs: z.number().int().positive(),
  loss: finite,
  metrics: z
    .record(metricName, finite)
    .refine((m) => Object.keys(m).length <= MAX_METRICS, `at most ${MAX_METRICS} metrics`)
    .default({}),
});

export const logLineSchema = z.object({
  type: z.literal('log'),
  message: z.string().max(4096),
});

/** One line of a trainer's stdout. */
export const TRAINER_LINE_SCHEMA = z.discriminatedUnion('type', [progressLineSchema, logLineSchema]);

export type TrainerProgress = z.infer<typeof progressLineSchema>;
export type TrainerLog = z.infer<typeof logLineSchema>;
export type TrainerLine = z.infer<typeof TRAINER_LINE_SCHEMA>;

/**
 * metrics.json: at least the final train and validation loss and accuracy, as finite numbers
 * (JSON has no NaN; Python's json.dump writes one anyway, which then fails to parse, as it
 * should). Other keys are finite numbers or short strings (the device a trainer used).
 */
export const METRICS_SCHEMA = z
  .object({
    train_loss: finite,
    validation_loss: finite,
    train_accuracy: finite.pipe(z.number().min(0).max(1)),
    validation_accuracy: finite.pipe(z.number().min(0).max(1)),
  })
  .catchall(z.union([finite, z.string().max(256)]))
  .refine((m) => Object.keys(m).length <= MAX_METRICS, `at most ${MAX_METRICS} entries`)
  .refine((m) => Object.keys(m).every((key) => metricName.safeParse(key).success), 'metric names are identifiers of at most 64 characters');

export type TrainerMetrics = z.infer<typeof METRICS_SCHEMA>;
