import type { Clock } from '../common/clock.js';
import { Command, CommandResult } from '../common/proto/driftline/v1/device_link.js';

/** What the command handler needs from the agent. */
export interface CommandContext {
  clock: Clock;
  /** The buffer's boot counter, answered to `ping`. */
  boot: number;
  reportState(): Promise<void>;
  publishResult(result: Uint8Array): Promise<void>;
}

/** Command ids remembered to recognise a replay; the oldest are forgotten first. */
const REMEMBERED_COMMANDS = 1024;

/**
 * Operator commands sent down to the device (`ping`, `report-state`). A replayed command (the
 * same id again: a redelivery, or someone replaying captured traffic) is answered again but
 * not executed twice; an expired one is refused.
 */
export class CommandHandler {
  private readonly seen = new Set<string>();

  constructor(
    private readonly context: CommandContext,
    private readonly memory = REMEMBERED_COMMANDS,
  ) {}

  /** Decodes, runs and answers one command; a payload that does not decode throws. */
  async handle(payload: Uint8Array): Promise<CommandResult> {
    const command = Command.decode(payload);
    const replay = this.seen.has(command.id);
    this.seen.add(command.id);
    if (this.seen.size > this.memory) this.seen.delete(this.seen.values().next().value!);
    const result = await this.run(command, replay);
    await this.context.publishResult(CommandResult.encode(result).finish());
    return result;
  }

  private async run(command: Command, replay: boolean): Promise<CommandResult> {
    const { id } = command;
    if (command.expiresAtMs > 0 && command.expiresAtMs < this.context.clock.now()) {
      return { id, ok: false, errorCode: 'REQUEST_INVALID', message: 'command expired', output: {} };
    }
    if (command.kind === 'ping') return { id, ok: true, errorCode: '', message: 'pong', output: { boot: String(this.context.boot) } };
    if (command.kind === 'report-state') {
      if (!replay) await this.context.reportState();
      return { id, ok: true, errorCode: '', message: 'state reported', output: {} };
    }
    return { id, ok: false, errorCode: 'REQUEST_INVALID', message: `unknown command ${JSON.stringify(command.kind)}`, output: {} };
  }
}
