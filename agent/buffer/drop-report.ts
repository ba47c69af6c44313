import type { DropCounts } from './ports.js';

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
    private readonly source: { dropped(): DropCounts },
    private readonly report: (drops: DropCounts) => Promise<unknown>,
  ) {
    this.reported = JSON.stringify(source.dropped());
  }

  /** Reports the counts when they changed; the drops the report itself causes are folded in once it is recorded. */
  check(): void {
    const drops = this.source.dropped();
    const json = JSON.stringify(drops);
    if (json === this.reported) return;
    this.reported = json;
    void this.report(drops).then(() => {
      this.reported = JSON.stringify(this.source.dropped());
    });
  }
}
