import type { DriftStatus as DriftRollup, DriftStatusRequest } from '../../common/proto/driftline/v1/drift.js';
import type { DriftStatus } from './gates.js';
import type { DriftSource } from './ports.js';

const LEVEL: Record<string, DriftStatus | undefined> = { ok: 'ok', warn: 'warning', alert: 'drift' };
const RANK: Record<DriftStatus, number> = { ok: 0, warning: 1, drift: 2 };

/**
 * The drift gate's input, from the drift rollups (issue #4's drift service): the worst status
 * over the version's cohorts since the wave started. No reference or no sketches yet reads as
 * "not measured", which makes a configured drift gate inconclusive rather than passing.
 */
export function driftSourceFrom(queries: { status(request: DriftStatusRequest): Promise<DriftRollup[]> }): DriftSource {
  return {
    async status(model, version, sinceMs) {
      let worst: DriftStatus | undefined;
      for (const rollup of await queries.status({ model, version, sinceMs })) {
        const level = LEVEL[rollup.status];
        if (level && (worst === undefined || RANK[level] > RANK[worst])) worst = level;
      }
      return worst;
    },
  };
}
