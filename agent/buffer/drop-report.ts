import type { DropCounts, ModelDropCounts } from './ports.js';

/**
 * Records the buffer policy dropped are themselves reported, as an event with the running
 * counts, when the counts changed since the last report. The report is a record too: in a
 * full buffer it pushes an older one out (in its own commit). Such drops count but do not
 * trigger a report of their own, or an idle agent offline would report, and drop, once a
 * tick for as long as it is offline.
 */
export class DropReporter {
  private reported: string;

  constructor(
    private readonly source: { dropped(): DropCounts; droppedByModel?(): ModelDropCounts },
    private readonly report: (drops: DropCounts, byModel: ModelDropCounts) => Promise<unknown>,
  ) {
    this.reported = this.counts().json;
  }

  /** The per-stream counts and the per-model ones, which change together (a drop counts in both). */
  private counts(): { drops: DropCounts; byModel: ModelDropCounts; json: string } {
    const drops = this.source.dropped();
    const byModel = this.source.droppedByModel?.() ?? {};
    return { drops, byModel, json: JSON.stringify([drops, byModel]) };
  }

  /** Reports the counts when they changed; the drops the report itself causes are folded in once it is recorded. */
  check(): void {
    const { drops, byModel, json } = this.counts();
    if (json === this.reported) return;
    this.reported = json;
    void this.report(drops, byModel).then(() => {
      this.reported = this.counts().json;
    });
  }
}
