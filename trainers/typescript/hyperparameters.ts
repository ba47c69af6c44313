import { z } from 'zod';
import { DriftlineError } from '../../common/errors.js';

/**
 * The hyperparameters file both built-in trainers read (trainers/pytorch/train.py takes the
 * same keys). Unknown keys are refused: a misspelt key silently ignored is a training run that
 * did not do what its operator asked.
 */
export const HYPERPARAMETERS_SCHEMA = z
  .object({
    epochs: z.number().int().min(1).max(10_000).default(20),
    batch_size: z.number().int().min(1).max(65_536).default(32),
    learning_rate: z.number().positive().max(10).default(0.005),
    optimizer: z.enum(['adam', 'sgd']).default('adam'),
    /** SGD only. */
    momentum: z.number().min(0).max(0.999).default(0.9),
    l2: z.number().min(0).max(1).default(1e-4),
    seed: z.number().int().nonnegative().default(1),
    /** Epochs without a better validation loss before stopping; 0 never stops early. */
    patience: z.number().int().nonnegative().default(5),
    /** Train at most this many of the final dense layers; the rest is frozen. Default: every dense layer of the head. */
    head_layers: z.number().int().min(1).optional(),
    /** Start the head from fresh weights instead of the base model's. */
    reinitialize: z.boolean().default(false),
    /** Rows per onnxruntime run when computing the frozen body's embeddings (TypeScript trainer only). */
    embedding_batch: z.number().int().min(1).max(65_536).default(512),
  })
  .strict();

export type Hyperparameters = z.infer<typeof HYPERPARAMETERS_SCHEMA>;

export function parseHyperparameters(text: string, source: string): Hyperparameters {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (cause) {
    throw new DriftlineError('HYPERPARAMETERS_INVALID', `${source} is not JSON`, { cause });
  }
  const parsed = HYPERPARAMETERS_SCHEMA.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new DriftlineError('HYPERPARAMETERS_INVALID', `${source}: ${issue?.path.join('.') || '(top level)'} ${issue?.message}`);
  }
  return parsed.data;
}
