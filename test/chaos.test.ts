import { describe, expect, it } from 'vitest';
import { KILL_KINDS, runChaos } from '../bench/chaos/harness.js';

// The short version of `npm run chaos`: one kill -9 of every kind, real processes, then the total-queue check.
describe('chaos - kill -9 of agents and control plane under load', () => {
  it('loses, duplicates and invents no record, and leaves every device on its desired model, after one kill of each kind', async () => {
    // The harness's progress lines, and an inconsistent agent's own log, explain a failure.
    const lines: string[] = [];
    const result = await runChaos({ trials: KILL_KINDS.length, cycleKinds: true, seed: 7, log: (line) => lines.push(line) });
    expect(result.kills).toEqual(Object.fromEntries(KILL_KINDS.map((k) => [k, 1])));
    expect(
      result.devices.filter((d) => d.lost || d.duplicated || d.unexpected || !d.modelConsistent),
      lines.join('\n'),
    ).toEqual([]);
    expect(result).toMatchObject({ trials: KILL_KINDS.length, lost: 0, duplicated: 0, unexpected: 0, models_inconsistent: 0, stalls: 0, buffered: 0 });
    expect(result.records_stored).toBeGreaterThan(0);
  }, 900_000);
});
