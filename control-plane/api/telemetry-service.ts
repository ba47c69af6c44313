import { z } from 'zod';
import { assertDeviceId } from '../../common/ids.js';
import type { TelemetryServiceServer } from '../../common/proto/driftline/v1/telemetry.js';
import type { ApiDeps } from './ports.js';
import { unary, validate, type RpcContext } from './rpc.js';

const summaryRequest = z.object({ sinceMs: z.number().int().nonnegative() });

export function telemetryService(deps: ApiDeps, ctx: RpcContext): TelemetryServiceServer {
  return {
    getSummary: unary(ctx, 'GetSummary', 'viewer', (req) => {
      validate(summaryRequest, req);
      if (req.deviceId !== '') assertDeviceId(req.deviceId);
      return deps.telemetry.summary(req);
    }),
  };
}
