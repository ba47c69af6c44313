import { describe, expect, it } from 'vitest';
import { check, type DeviceEvidence, type StoredRecord } from '../bench/chaos/checker.js';

const inference = (boot: number, seq: number): StoredRecord => ({ boot, seq, kind: 'inference', ok: 1 });
const event = (boot: number, seq: number): StoredRecord => ({ boot, seq, kind: 'event', ok: null });

/** Two boots: boot 1 killed after 3 answered inferences, boot 2 stopped cleanly after 2; seqs 1..7 committed. */
function evidence(overrides: Partial<DeviceEvidence> = {}): DeviceEvidence {
  return {
    deviceId: 'd1',
    committed: 7,
    pendingSeqs: [],
    dropped: 0,
    starts: 2,
    boot: 2,
    attempted: [4, 2],
    answered: [3, 2],
    lastBootStoppedCleanly: true,
    stored: [event(1, 1), inference(1, 2), inference(1, 3), inference(1, 4), event(2, 5), inference(2, 6), inference(2, 7)],
    served: { name: 'vibration', version: 2 },
    desired: { name: 'vibration', version: 2 },
    reportedError: '',
    ...overrides,
  };
}

describe('chaos checker (total-queue check of buffers against the store)', () => {
  it('passes a run in which every committed record is stored once and every device serves its desired model', () => {
    expect(check([evidence()])).toMatchObject({
      lost: 0,
      duplicated: 0,
      unexpected: 0,
      models_inconsistent: 0,
      records_committed: 7,
      records_stored: 7,
      inferences_answered: 5,
    });
  });

  it('counts a committed record missing from the store as lost, unless the buffer counted it as dropped or still holds it', () => {
    const missing = evidence({ stored: evidence().stored.filter((r) => r.seq !== 5) });
    expect(check([missing])).toMatchObject({ lost: 1 });
    expect(check([missing]).devices[0]!.examples.lost).toEqual([5]);
    expect(check([{ ...missing, dropped: 1 }])).toMatchObject({ lost: 0, dropped: 1 });
    expect(check([{ ...missing, pendingSeqs: [5] }])).toMatchObject({ lost: 0, buffered: 1 });
  });

  it('an answered inference of the last boot still waiting in the buffer at the check is buffered, not lost', () => {
    const waiting = evidence({ stored: evidence().stored.filter((r) => r.seq !== 7), pendingSeqs: [7], pendingOkInferences: [0, 1] });
    expect(check([waiting])).toMatchObject({ lost: 0, buffered: 1 });
    // Without knowing it waits there, the missing answered inference is lost, and the verdict says which boot.
    const gone = check([evidence({ stored: evidence().stored.filter((r) => r.seq !== 7) })]);
    expect(gone.lost).toBeGreaterThan(0);
    expect(gone.devices[0]!.examples.lost).toEqual([7]);
    expect(gone.devices[0]!.examples.unrecorded).toEqual(['boot 2: 1 of 2 answered inferences have no record, stored or buffered']);
  });

  it('counts a seq stored twice, under another boot, as duplicated', () => {
    expect(check([evidence({ stored: [...evidence().stored, event(2, 3)] })])).toMatchObject({ duplicated: 1, lost: 0 });
  });

  it('counts records the buffer never committed, boots that never ran and more inference records than requests as unexpected', () => {
    expect(check([evidence({ stored: [...evidence().stored, event(2, 8)] })]).unexpected).toBe(1);
    expect(check([evidence({ stored: evidence().stored.map((r) => (r.seq === 5 ? { ...r, boot: 3 } : r)) })]).unexpected).toBe(1);
    expect(check([evidence({ attempted: [2, 2] })]).unexpected).toBe(1);
  });

  it('takes answered inferences a kill took before their commit as unrecorded, but not in the last boot, which stopped cleanly', () => {
    // Boot 1 answered 4 but only 3 records are stored: the kill's group-commit window.
    expect(check([evidence({ answered: [4, 2] })])).toMatchObject({ lost: 0, inferences_unrecorded_at_kill: 1 });
    expect(check([evidence({ answered: [3, 3], attempted: [4, 3] })])).toMatchObject({ lost: 1 });
    expect(check([evidence({ answered: [3, 3], attempted: [4, 3], lastBootStoppedCleanly: false })])).toMatchObject({
      lost: 0,
      inferences_unrecorded_at_kill: 1,
    });
  });

  it('counts a device not serving its desired model as inconsistent, and says which code it reports for it', () => {
    const result = check([
      evidence({ served: { name: 'vibration', version: 1 }, reportedError: 'RELEASE_ACTIVATION_INTERRUPTED' }),
      evidence({ deviceId: 'd2', served: null }),
    ]);
    expect(result).toMatchObject({ models_inconsistent: 2, models_refused: { RELEASE_ACTIVATION_INTERRUPTED: 1 } });
  });
});
