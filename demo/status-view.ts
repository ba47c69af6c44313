import Table from 'cli-table3';
import { BORDERLESS_TABLE_CHARS } from '../cli/output.js';
import { describeDrift } from './drift-scenario.js';
import type { DeviceStatusRow, FleetSnapshot } from './snapshot.js';

/** A one-line status on stderr this often when there is no live table (pipes, CI, --json). */
const PLAIN_STATUS_EVERY_S = 5;

/** Where the demo tells a person what is happening: progress notes, and the fleet's status while traffic runs. */
export interface StatusDisplay {
  /** One progress line on stderr. */
  note(text: string): void;
  /** The fleet as it is now; `footer` says how the run ends (e.g. "Ctrl-C to stop"). */
  update(snapshot: FleetSnapshot, footer: string): void;
  /** Leaves the last table on screen; later notes print below it. */
  close(): void;
}

export const count = (n: number): string => n.toLocaleString('en-US');
const ms = (value: number | undefined): string => (value === undefined ? '-' : `${value.toFixed(1)}ms`);
const orDash = (value: number | undefined): string => (value === undefined ? '-' : count(value));

export function createStatusDisplay(options: { live: boolean }): StatusDisplay {
  return options.live ? new LiveTable() : new PlainStatus();
}

/** Totals across the fleet, shared by the live header and the plain status line. */
function totals(snapshot: FleetSnapshot): { sent: number; failed: number; online: number; buffered: number; models: string } {
  const rows = snapshot.rows;
  const models = [...new Set(rows.map(modelText).filter((m) => m !== '-'))];
  return {
    sent: rows.reduce((sum, r) => sum + r.sent, 0),
    failed: rows.reduce((sum, r) => sum + r.failed, 0),
    online: rows.filter((r) => r.online).length,
    buffered: rows.reduce((sum, r) => sum + (r.health?.bufferDepth ?? 0), 0),
    models: models.length ? models.join(', ') : 'no model yet',
  };
}

/** Share of answered rows whose predicted class matched the true label, across the fleet. */
function accuracyText(snapshot: FleetSnapshot): string {
  const sent = snapshot.rows.reduce((sum, r) => sum + r.sent, 0);
  const correct = snapshot.rows.reduce((sum, r) => sum + r.correct, 0);
  return sent ? `${((100 * correct) / sent).toFixed(1)}%` : '-';
}

/** Columns after the first are numbers or short words, right-aligned so figures line up as they change. */
export function plainTable(head: string[], rows: string[][]): string {
  const table = new Table({
    head,
    // Borderless, as `driftline devices list` prints them, with narrower gaps: fits 80 columns.
    chars: { ...BORDERLESS_TABLE_CHARS, middle: '  ' },
    // No colours: the table must read the same in every terminal and in a screenshot.
    style: { 'padding-left': 0, 'padding-right': 0, head: [], border: [], compact: true },
    colAligns: head.map((_, i) => (i === 0 ? 'left' : 'right')),
  });
  table.push(...rows);
  return table.toString();
}

function modelText(row: DeviceStatusRow): string {
  const model = row.health?.activeModel;
  return model ? `${model.name}@v${model.version}` : '-';
}

function onlineText(row: DeviceStatusRow): string {
  if (row.online === undefined) return '?';
  return row.online ? 'yes' : 'no';
}

/**
 * A table on stdout redrawn in place: it erases what it drew last time (counting wrapped
 * lines) and draws again. Notes erase the table, print on stderr, and the table comes back
 * below them, so the progress log and the table never overwrite each other.
 */
class LiveTable implements StatusDisplay {
  private drawnLines = 0;
  private last: { text: string } | undefined;
  private previous: { sent: number; elapsedS: number } | undefined;
  private rate = 0;

  note(text: string): void {
    this.erase();
    process.stderr.write(`${text}\n`);
    if (this.last) this.draw(this.last.text);
  }

  update(snapshot: FleetSnapshot, footer: string): void {
    const t = totals(snapshot);
    if (this.previous && snapshot.elapsedS > this.previous.elapsedS) {
      this.rate = (t.sent - this.previous.sent) / (snapshot.elapsedS - this.previous.elapsedS);
    }
    this.previous = { sent: t.sent, elapsedS: snapshot.elapsedS };
    const header =
      `driftline demo  ${Math.round(snapshot.elapsedS)}s  ${t.online}/${snapshot.rows.length} devices online  model ${t.models}\n` +
      `inferences ${count(t.sent)} ok, ${count(t.failed)} failed, ${Math.round(this.rate)}/s, ${accuracyText(snapshot)} correct  ` +
      `telemetry stored ${orDash(snapshot.recordsStored)}, buffered ${count(t.buffered)}\n` +
      ('drift' in snapshot ? `drift ${describeDrift(snapshot.drift)}\n` : '');
    const table = plainTable(
      ['DEVICE', 'ONLINE', 'MODEL', 'PROVIDER', 'SENT', 'FAILED', 'P50', 'BUFFER', 'STORED'],
      snapshot.rows.map((row) => [
        row.id,
        onlineText(row),
        modelText(row),
        row.health?.activeModel?.provider ?? '-',
        count(row.sent),
        count(row.failed),
        ms(row.p50Ms),
        orDash(row.health?.bufferDepth),
        orDash(row.stored),
      ]),
    );
    const text = `${header}\n${table}\n${footer}\n`;
    this.erase();
    this.draw(text);
    this.last = { text };
  }

  close(): void {
    this.last = undefined;
    this.drawnLines = 0;
  }

  private draw(text: string): void {
    process.stdout.write(text);
    const columns = process.stdout.columns || 80;
    // Lines wider than the terminal wrap and take more than one row to erase.
    this.drawnLines = text
      .slice(0, -1)
      .split('\n')
      .reduce((rows, line) => rows + Math.max(1, Math.ceil(line.length / columns)), 0);
  }

  private erase(): void {
    // Cursor up to the first drawn line, then clear to the end of the screen.
    if (this.drawnLines > 0) process.stdout.write(`\x1b[${this.drawnLines}F\x1b[0J`);
    this.drawnLines = 0;
  }
}

/** Without a terminal to redraw: a short status line on stderr every few seconds. */
class PlainStatus implements StatusDisplay {
  private lastPrintedS = 0;

  note(text: string): void {
    process.stderr.write(`${text}\n`);
  }

  update(snapshot: FleetSnapshot): void {
    if (snapshot.elapsedS - this.lastPrintedS < PLAIN_STATUS_EVERY_S) return;
    this.lastPrintedS = snapshot.elapsedS;
    const t = totals(snapshot);
    this.note(
      `demo: ${Math.round(snapshot.elapsedS)}s  ${t.online}/${snapshot.rows.length} online  ${t.models}  inferences ${count(t.sent)} (${count(t.failed)} failed)  ` +
        `stored ${orDash(snapshot.recordsStored)}  buffered ${count(t.buffered)}` +
        ('drift' in snapshot ? `  drift ${describeDrift(snapshot.drift)}` : ''),
    );
  }

  close(): void {}
}
