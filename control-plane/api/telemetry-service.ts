import { z } from 'zod';
import { DriftlineError } from '../../common/errors.js';
import { assertDeviceId } from '../../common/ids.js';
import { RollupBucket, RollupGroupBy, type TelemetryServiceServer } from '../../common/proto/driftline/v1/telemetry.js';
import { MAX_ROLLUP_ROWS } from '../store/sqlite/rollup-queries.js';
import type { ApiDeps } from './ports.js';
import { unary, validate, type RpcContext } from './rpc.js';

const summaryRequest = z.object({ sinceMs: z.number().int().nonnegative() });

const GROUP_BYS = [
  RollupGroupBy.ROLLUP_GROUP_BY_UNSPECIFIED,
  RollupGroupBy.ROLLUP_GROUP_BY_DEVICE,
  RollupGroupBy.ROLLUP_GROUP_BY_MODEL_VERSION,
  RollupGroupBy.ROLLUP_GROUP_BY_COHORT,
  RollupGroupBy.ROLLUP_GROUP_BY_FLEET,
];
const BUCKETS = [RollupBucket.ROLLUP_BUCKET_UNSPECIFIED, RollupBucket.ROLLUP_BUCKET_ONE_MINUTE, RollupBucket.ROLLUP_BUCKET_ONE_HOUR];

const rollupsRequest = z
  .object({
    model: z.string().max(128),
    version: z.number().int().nonnegative(),
    selector: z.string().max(1024),
    groupBy: z.number().refine((v) => GROUP_BYS.includes(v), 'must be DEVICE, MODEL_VERSION, COHORT or FLEET'),
    bucket: z.number().refine((v) => BUCKETS.includes(v), 'must be ONE_MINUTE or ONE_HOUR'),
    sinceMs: z.number().int().nonnegative(),
    limit: z.number().int().min(0).max(MAX_ROLLUP_ROWS),
  })
  .refine((r) => r.version === 0 || r.model !== '', { path: ['version'], message: 'a version filter needs a model' });

export function telemetryService(deps: ApiDeps, ctx: RpcContext): TelemetryServiceServer {
  return {
    getSummary: unary(ctx, 'GetSummary', 'viewer', (req) => {
      validate(summaryRequest, req);
      if (req.deviceId !== '') assertDeviceId(req.deviceId);
      return deps.telemetry.summary(req);
    }),
    getRollups: unary(ctx, 'GetRollups', 'viewer', (req) => {
      validate(rollupsRequest, req);
      if (req.deviceId !== '') assertDeviceId(req.deviceId);
      if (!deps.telemetryRollups) throw new DriftlineError('NOT_IMPLEMENTED', 'telemetry rollups are not served by this control plane');
      return deps.telemetryRollups.rollups(req);
    }),
  };
}
