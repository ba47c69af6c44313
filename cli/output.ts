import Table from 'cli-table3';

/** Where a command writes its result: a table or lines for people, one JSON document for scripts. */
export interface Output {
  readonly json: boolean;
  /** Prints `data` as JSON with --json, otherwise calls `human`. */
  result(data: unknown, human: () => void): void;
  line(text: string): void;
  /** A table; with no rows, the `empty` line ("No devices found") instead of a bare header. */
  table(head: string[], rows: Array<Array<string | number>>, empty?: string): void;
}

export function createOutput(json: boolean): Output {
  const write = (text: string): void => void process.stdout.write(text);
  return {
    json,
    result(data, human) {
      if (json) write(`${JSON.stringify(data, null, 2)}\n`);
      else human();
    },
    line(text) {
      write(`${text}\n`);
    },
    table(head, rows, empty) {
      write(rows.length === 0 && empty !== undefined ? `${empty}\n` : `${renderTable(head, rows)}\n`);
    },
  };
}

// Borderless, space-separated columns (as kubectl prints them), so output stays greppable.
export const BORDERLESS_TABLE_CHARS: Record<string, string> = Object.fromEntries(
  [
    'top',
    'top-mid',
    'top-left',
    'top-right',
    'bottom',
    'bottom-mid',
    'bottom-left',
    'bottom-right',
    'left',
    'left-mid',
    'mid',
    'mid-mid',
    'right',
    'right-mid',
  ].map((c) => [c, '']),
);

function renderTable(head: string[], rows: Array<Array<string | number>>): string {
  const table = new Table({
    head,
    chars: { ...BORDERLESS_TABLE_CHARS, middle: '   ' },
    style: { 'padding-left': 0, 'padding-right': 0, head: [], border: [], compact: true },
  });
  table.push(...rows);
  return table.toString().replace(/[ \t]+$/gm, '');
}

/** "12s ago", "3m ago", "in 2h" (a skewed device clock), "-" for never. */
export function relativeTime(ms: number, now: number): string {
  if (!ms) return '-';
  const delta = Math.round((now - ms) / 1000);
  const abs = Math.abs(delta);
  const [value, unit] =
    abs < 60 ? [abs, 's'] : abs < 3600 ? [Math.floor(abs / 60), 'm'] : abs < 86_400 ? [Math.floor(abs / 3600), 'h'] : [Math.floor(abs / 86_400), 'd'];
  return delta >= 0 ? `${value}${unit} ago` : `in ${value}${unit}`;
}

export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let i = 0;
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${value.toFixed(1)} ${units[i]}`;
}

export function labelsText(labels: Record<string, string>): string {
  const entries = Object.entries(labels);
  return entries.length ? entries.map(([k, v]) => `${k}=${v}`).join(',') : '-';
}

/** Shows the cursor and turns line wrap back on (what a live progress display turns off). */
export const RESTORE_TERMINAL = '\x1b[?25h\x1b[?7h';

/**
 * Ctrl-C (or SIGTERM) during a live display: stop it, put the terminal back (cursor, line
 * wrap), then exit as the signal would have (130, 143). Returns the function that removes
 * the handlers once the display has ended by itself.
 */
export function restoreTerminalOnSignal(stop: () => void, stream: NodeJS.WriteStream = process.stderr): () => void {
  const handler = (signal: NodeJS.Signals): void => {
    try {
      stop();
    } finally {
      if (stream.isTTY) stream.write(RESTORE_TERMINAL);
      process.exit(signal === 'SIGINT' ? 130 : 143);
    }
  };
  process.once('SIGINT', handler);
  process.once('SIGTERM', handler);
  return () => {
    process.off('SIGINT', handler);
    process.off('SIGTERM', handler);
  };
}
