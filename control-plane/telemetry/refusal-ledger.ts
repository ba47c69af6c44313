import type { Clock } from '../../common/clock.js';
import type { ErrorCode } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import type { UpChannel } from '../../common/device-protocol/topics.js';
import type { RefusalStore } from './ports.js';

interface Pending {
  count: number;
  lastMs: number;
}

/**
 * Counts refused device messages per device and code, and keeps a flood of them cheap: the
 * counts are written to the store and logged together, at most once per interval per
 * device (the first refusal after a quiet interval logs at once), and whenever the totals
 * are read (flush()). A device that floods the control plane costs a map update per message,
 * not a log line and a transaction.
 */
export class RefusalLedger {
  /** Refusals since start by code, for metrics. */
  readonly totals = new Map<ErrorCode, number>();
  private readonly pending = new Map<string, { codes: Map<ErrorCode, Pending>; rejectedBatches: number }>();
  private readonly lastLogged = new Map<string, number>();

  constructor(private readonly options: { store: RefusalStore; clock: Clock; logger: Logger; logIntervalMs: number }) {}

  /** Notes one refused message; `rejectedBatch`: a telemetry batch refused for what it held (not for the rate). */
  note(deviceId: string, channel: UpChannel, code: ErrorCode, reason: string, rejectedBatch: boolean): void {
    const now = this.options.clock.now();
    this.totals.set(code, (this.totals.get(code) ?? 0) + 1);
    let device = this.pending.get(deviceId);
    if (!device) {
      device = { codes: new Map(), rejectedBatches: 0 };
      this.pending.set(deviceId, device);
    }
    const entry = device.codes.get(code) ?? { count: 0, lastMs: now };
    entry.count++;
    entry.lastMs = now;
    device.codes.set(code, entry);
    if (rejectedBatch) device.rejectedBatches++;

    const last = this.lastLogged.get(deviceId);
    if (last !== undefined && now >= last && now - last < this.options.logIntervalMs) return;
    this.lastLogged.set(deviceId, now);
    const { refused } = this.flushDevice(deviceId);
    this.options.logger.warn(
      { deviceId, channel, code, reason, refused, intervalMs: this.options.logIntervalMs },
      'device messages refused (logged at most once per interval per device)',
    );
  }

  /** Writes every pending count to the store (before the totals are read, and at shutdown). */
  async flush(): Promise<void> {
    await Promise.all([...this.pending.keys()].map((deviceId) => this.flushDevice(deviceId).written));
  }

  /** Takes the device's pending counts and writes them; a write that fails is logged (the counts are advisory, the messages were refused either way). */
  private flushDevice(deviceId: string): { refused: Record<string, number>; written: Promise<void> } {
    const device = this.pending.get(deviceId);
    if (!device) return { refused: {}, written: Promise.resolve() };
    this.pending.delete(deviceId);
    const refusals = [...device.codes].map(([code, { count, lastMs }]) => ({ code, count, lastMs }));
    const written = this.options.store
      .noteRefusals(deviceId, refusals, device.rejectedBatches)
      .catch((err: unknown) => this.options.logger.warn({ err, deviceId }, 'refusal counts not stored'));
    return { refused: Object.fromEntries(refusals.map((r) => [r.code, r.count])), written };
  }
}
