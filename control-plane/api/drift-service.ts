import { z } from 'zod';
import { DriftlineError } from '../../common/errors.js';
import type { DriftServiceServer } from '../../common/proto/driftline/v1/drift.js';
import type { ApiDeps } from './ports.js';
import { unary, validate, type RpcContext } from './rpc.js';

const statusRequest = z.object({ model: z.string().min(1).max(128), version: z.number().int().nonnegative(), sinceMs: z.number().int().nonnegative() });

export function driftService(deps: ApiDeps, ctx: RpcContext): DriftServiceServer {
  return {
    getDriftStatus: unary(ctx, 'GetDriftStatus', 'viewer', (req) => {
      validate(statusRequest, req);
      if (!deps.drift) throw new DriftlineError('NOT_IMPLEMENTED', 'drift status is not served by this control plane');
      // Refuses an unknown model with MODEL_NOT_FOUND rather than an empty answer.
      deps.registry.get(req.model);
      return { statuses: deps.drift.status(req) };
    }),
  };
}
