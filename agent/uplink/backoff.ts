/**
 * Exponential backoff with full jitter, so a fleet that lost its broker at the same
 * moment does not come back at the same moment.
 */
export function backoffDelay(attempt: number, minMs: number, maxMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(minMs / 2 + random() * (ceiling - minMs / 2));
}
