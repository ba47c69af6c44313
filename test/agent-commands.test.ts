import { describe, expect, it } from 'vitest';
import { CommandHandler } from '../agent/commands.js';
import { ManualClock } from '../common/clock.js';
import { Command, CommandResult } from '../common/proto/driftline/v1/device_link.js';

function handler(memory?: number) {
  const clock = new ManualClock(1_000_000);
  const published: CommandResult[] = [];
  let reports = 0;
  const commands = new CommandHandler(
    {
      clock,
      boot: 7,
      reportState: async () => void reports++,
      publishResult: async (bytes) => void published.push(CommandResult.decode(bytes)),
    },
    memory,
  );
  const send = (command: Partial<Command> & { id: string; kind: string }) => commands.handle(Command.encode(Command.fromPartial(command)).finish());
  return { clock, published, reports: () => reports, send };
}

describe('agent commands', () => {
  it('answers ping with the boot counter', async () => {
    const { send, published } = handler();
    await send({ id: 'c1', kind: 'ping' });
    expect(published).toEqual([expect.objectContaining({ id: 'c1', ok: true, message: 'pong', output: { boot: '7' } })]);
  });

  it('a replayed report-state is answered again but not executed twice', async () => {
    const { send, published, reports } = handler();
    await send({ id: 'c1', kind: 'report-state' });
    await send({ id: 'c1', kind: 'report-state' });
    expect(reports()).toBe(1);
    expect(published.map((r) => [r.id, r.ok])).toEqual([
      ['c1', true],
      ['c1', true],
    ]);
  });

  it('forgets the oldest command ids beyond its memory', async () => {
    const { send, reports } = handler(2);
    for (const id of ['a', 'b', 'c']) await send({ id, kind: 'report-state' });
    await send({ id: 'a', kind: 'report-state' });
    expect(reports()).toBe(4);
  });

  it('refuses an expired command and an unknown one with REQUEST_INVALID', async () => {
    const { send, clock } = handler();
    expect(await send({ id: 'old', kind: 'ping', expiresAtMs: clock.now() - 1 })).toMatchObject({
      ok: false,
      errorCode: 'REQUEST_INVALID',
      message: 'command expired',
    });
    expect(await send({ id: 'x', kind: 'reboot' })).toMatchObject({ ok: false, errorCode: 'REQUEST_INVALID' });
  });

  it('a payload that is not a command throws, for the dispatcher to log', async () => {
    const { published } = handler();
    const commands = new CommandHandler({ clock: new ManualClock(), boot: 1, reportState: async () => {}, publishResult: async () => {} });
    await expect(commands.handle(new Uint8Array([0xff, 0xff, 0xff]))).rejects.toThrow();
    expect(published).toEqual([]);
  });
});
