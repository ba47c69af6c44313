import type { Clock } from './clock.js';

/**
 * At most one log line per reason per interval. Refusals an attacker can trigger at wire
 * speed (bad connects, oversized packets) would otherwise turn the log into the attack's
 * amplifier; counters still count every one, the log says how many it left out.
 */
export class LogThrottle {
  private readonly lastLogged = new Map<string, { at: number; suppressed: number }>();

  constructor(private readonly options: { clock: Clock; intervalMs: number }) {}

  /** Whether to log this occurrence of `reason` now, with how many were left out since the last line; undefined to skip it. */
  admit(reason: string): { suppressed: number } | undefined {
    const now = this.options.clock.now();
    const entry = this.lastLogged.get(reason);
    if (entry && now - entry.at < this.options.intervalMs) {
      entry.suppressed++;
      return undefined;
    }
    const suppressed = entry?.suppressed ?? 0;
    this.lastLogged.set(reason, { at: now, suppressed: 0 });
    return { suppressed };
  }
}
