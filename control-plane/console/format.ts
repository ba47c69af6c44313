import { html, type SafeHtml } from './html.js';

/**
 * How the console writes times and numbers: times in UTC on the server inside <time datetime>
 * (console.js rewrites the text in the viewer's zone and keeps UTC in the title), numbers
 * always with their unit.
 */

export function utc(ms: number): string {
  return new Date(ms)
    .toISOString()
    .replace('T', ' ')
    .replace(/\.\d{3}Z$/, ' UTC');
}

/** A moment, or an em dash for "never" (0). */
export function time(ms: number): SafeHtml {
  if (!ms || !Number.isFinite(ms)) return html`<span class="muted">never</span>`;
  const iso = new Date(ms).toISOString();
  return html`<time datetime="${iso}" title="${utc(ms)}">${utc(ms)}</time>`;
}

const INTEGER = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
const DECIMAL = new Intl.NumberFormat('en-US', { maximumFractionDigits: 3 });

export const count = (n: number, unit: string, plural = `${unit}s`): string => `${INTEGER.format(n)} ${n === 1 ? unit : plural}`;
export const decimal = (n: number): string => (Number.isFinite(n) ? DECIMAL.format(n) : '–');
export const percent = (share: number): string => `${(share * 100).toFixed(1)} %`;
export const milliseconds = (ms: number): string => `${DECIMAL.format(ms)} ms`;

export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? INTEGER.format(value) : value.toFixed(1)} ${units[unit]}`;
}

export function duration(ms: number): string {
  if (ms < 1000) return `${ms} ms`;
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}
