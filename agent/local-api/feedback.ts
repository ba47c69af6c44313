import { z } from 'zod';
import type { Clock } from '../../common/clock.js';
import { DriftlineError } from '../../common/errors.js';
import type { LabelRecord } from '../../common/proto/driftline/v1/device_link.js';

/** What the agent remembers of one answered request, until a label comes or newer answers push it out. */
interface Answer {
  model: string;
  version: number;
  predicted: number;
  classes: number;
  timeMs: number;
  labeled: boolean;
}

const FeedbackItemSchema = z.object({
  id: z.string().min(1).max(256),
  label: z.number().int().nonnegative(),
});

const FeedbackBatchSchema = z.object({ items: z.array(FeedbackItemSchema).min(1).max(1000) });
export type FeedbackItem = z.infer<typeof FeedbackItemSchema>;

/** A feedback body: `{id, label}`, or up to 1,000 of them in `{items: [...]}`. Errors name the field. */
export function parseFeedback(json: unknown): FeedbackItem[] {
  const batch = json !== null && typeof json === 'object' && !Array.isArray(json) && 'items' in json;
  const parsed = batch ? FeedbackBatchSchema.safeParse(json) : FeedbackItemSchema.safeParse(json);
  if (!parsed.success) {
    throw new DriftlineError('REQUEST_INVALID', `feedback is invalid: ${z.prettifyError(parsed.error)}`, { details: { issues: parsed.error.issues } });
  }
  return 'items' in parsed.data ? parsed.data.items : [parsed.data];
}

/**
 * Labels for answers the agent gave: the last `capacity` answered requests are remembered
 * (id -> model, version, top class) in insertion order, a Map used as an LRU, so memory stays
 * bounded however many requests never get a label. A label turns into one LabelRecord for the
 * version that answered, whichever version is active when the label comes.
 */
export class FeedbackLedger {
  private readonly answers = new Map<string, Answer>();

  constructor(
    private readonly capacity: number,
    private readonly clock: Clock,
  ) {}

  /** Remembers an answer; only one-row requests with a top class can be labelled. */
  remember(id: string, answer: { model: string; version: number; topClass?: number | undefined; classes?: number | undefined }): void {
    if (answer.topClass === undefined || answer.classes === undefined) return;
    // Re-inserting moves a reused id to the newest end.
    this.answers.delete(id);
    this.answers.set(id, {
      model: answer.model,
      version: answer.version,
      predicted: answer.topClass,
      classes: answer.classes,
      timeMs: this.clock.now(),
      labeled: false,
    });
    if (this.answers.size > this.capacity) this.answers.delete(this.answers.keys().next().value!);
  }

  /**
   * Checks every item first, so a bad one refuses the whole request and none is recorded;
   * then marks them labelled and returns their records. An id answered by another model (or,
   * on a versioned route, another version) is unknown here.
   */
  label(items: readonly FeedbackItem[], scope: { model: string; version?: number | undefined }): LabelRecord[] {
    const seen = new Set<string>();
    const found = items.map((item, i) => {
      const where = items.length > 1 ? `items[${i}]` : 'id';
      const answer = this.answers.get(item.id);
      if (!answer || answer.model !== scope.model || (scope.version !== undefined && answer.version !== scope.version)) {
        throw new DriftlineError(
          'FEEDBACK_UNKNOWN_ID',
          `${where}: no answered request with id ${JSON.stringify(item.id)} is remembered for ${scope.model}${scope.version === undefined ? '' : ` v${scope.version}`} (unknown, or older than the last ${this.capacity} answers)`,
          { details: { id: item.id } },
        );
      }
      if (answer.labeled || seen.has(item.id))
        throw new DriftlineError('FEEDBACK_DUPLICATE', `${where}: request ${JSON.stringify(item.id)} already has a label`, { details: { id: item.id } });
      seen.add(item.id);
      if (item.label >= answer.classes) {
        throw new DriftlineError(
          'REQUEST_INVALID',
          `${items.length > 1 ? `items[${i}].` : ''}label ${item.label} is out of range: ${answer.model} v${answer.version} has classes 0..${answer.classes - 1}`,
          { details: { field: 'label', classes: answer.classes } },
        );
      }
      return answer;
    });
    return found.map((answer, i) => {
      answer.labeled = true;
      const { id, label } = items[i]!;
      return {
        model: answer.model,
        version: answer.version,
        requestId: id,
        predicted: answer.predicted,
        label,
        correct: label === answer.predicted,
        inferenceTimeMs: answer.timeMs,
      };
    });
  }
}
