/**
 * A trainer's stdout, read as the contract's JSON lines with bounded memory: a line longer
 * than the cap is dropped as it streams in (never buffered whole), and a line that is not a
 * contract line is counted and handed on as a log line instead of failing the run.
 */
import { TRAINER_LINE_SCHEMA, type TrainerLine } from '../common/learning/trainer-contract.js';
import { truncateUntrusted } from '../common/untrusted-text.js';

/** What the runner tells its caller while a trainer runs; the worker forwards these as heartbeats. */
export type TrainerEvent =
  (Extract<TrainerLine, { type: 'progress' }> & { source: 'trainer' }) | { type: 'log'; message: string; source: 'trainer' | 'runner' };

/** How much of a bad line a log line repeats. */
const BAD_LINE_PREVIEW_CHARS = 200;

export class TrainerLineReader {
  private pieces: Buffer[] = [];
  private pending = 0;
  /** Set while the current line has passed the cap: its bytes are dropped up to the next newline. */
  private dropping = 0;
  badLines = 0;
  progressLines = 0;

  constructor(
    private readonly maxLineBytes: number,
    private readonly emit: (event: TrainerEvent) => void,
  ) {}

  push(chunk: Buffer): void {
    let start = 0;
    for (;;) {
      const newline = chunk.indexOf(0x0a, start);
      const end = newline < 0 ? chunk.length : newline;
      this.take(chunk.subarray(start, end));
      if (newline < 0) return;
      this.finishLine();
      start = newline + 1;
    }
  }

  /** The stream ended: a last line without a newline still counts. */
  end(): void {
    if (this.pending > 0 || this.dropping > 0) this.finishLine();
  }

  private take(bytes: Buffer): void {
    if (bytes.length === 0) return;
    if (this.dropping > 0 || this.pending + bytes.length > this.maxLineBytes) {
      this.dropping += this.pending + bytes.length;
      this.pieces = [];
      this.pending = 0;
      return;
    }
    // Copied: the stream may reuse its chunk's memory.
    this.pieces.push(Buffer.from(bytes));
    this.pending += bytes.length;
  }

  private finishLine(): void {
    if (this.dropping > 0) {
      this.bad(`a trainer output line over ${this.maxLineBytes} bytes was dropped (${this.dropping} bytes)`);
      this.dropping = 0;
      return;
    }
    const text = Buffer.concat(this.pieces, this.pending).toString('utf8').trim();
    this.pieces = [];
    this.pending = 0;
    if (text.length === 0) return;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      this.bad(`trainer output that is not a JSON line: ${truncateUntrusted(text, BAD_LINE_PREVIEW_CHARS)}`);
      return;
    }
    const parsed = TRAINER_LINE_SCHEMA.safeParse(value);
    if (!parsed.success) {
      this.bad(`trainer line that is not a progress or log line (${parsed.error.issues[0]?.message}): ${truncateUntrusted(text, BAD_LINE_PREVIEW_CHARS)}`);
      return;
    }
    if (parsed.data.type === 'progress') this.progressLines++;
    this.emit({ ...parsed.data, source: 'trainer' });
  }

  private bad(message: string): void {
    this.badLines++;
    this.emit({ type: 'log', message, source: 'runner' });
  }
}

/** The last bytes of a stream, for a crash report. */
export class StreamTail {
  private chunks: Buffer[] = [];
  private bytes = 0;

  constructor(private readonly maxBytes: number) {}

  push(chunk: Buffer): void {
    this.chunks.push(Buffer.from(chunk));
    this.bytes += chunk.length;
    while (this.chunks.length > 1 && this.bytes - this.chunks[0]!.length >= this.maxBytes) this.bytes -= this.chunks.shift()!.length;
  }

  text(): string {
    const all = Buffer.concat(this.chunks);
    return all.subarray(Math.max(0, all.length - this.maxBytes)).toString('utf8');
  }
}
