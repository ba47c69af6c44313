/**
 * Text that arrived from outside (client ids, user names, topics, error text echoing them)
 * goes into logs only through here, so one hostile 64 KiB string costs a log line a few
 * hundred bytes, not its own size.
 */
export const UNTRUSTED_LOG_CHARS = 128;

/** The first `maxChars` characters of `text`, and how many were cut when any were. Non-strings become their type name. */
export function truncateUntrusted(text: unknown, maxChars: number = UNTRUSTED_LOG_CHARS): string | undefined {
  if (text === undefined || text === null) return undefined;
  const value = typeof text === 'string' ? text : Buffer.isBuffer(text) ? text.toString('utf8', 0, maxChars * 4) : `[${typeof text}]`;
  if (value.length <= maxChars) return value;
  return `${value.slice(0, maxChars)}…(+${value.length - maxChars} chars)`;
}
