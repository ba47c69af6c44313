import { z } from 'zod';
import { DriftlineError } from '../../common/errors.js';
import { assertModelName } from '../../common/ids.js';
import type { ReleaseServiceServer } from '../../common/proto/driftline/v1/releases.js';
import { MAX_STATUS_REFS } from '../registry/release-store.js';
import type { ApiDeps } from './ports.js';
import { unary, validate, type RpcContext } from './rpc.js';

const MAX_ENVELOPE_BYTES = 16 * 1024 * 1024;
const publishRequest = z.object({ version: z.number().int().positive() });
const statusRequest = z.object({
  versions: z.array(z.object({ name: z.string(), version: z.number().int().positive() })).max(MAX_STATUS_REFS),
});

/** Signed releases: publish a signed manifest for a stored version, read releases and the trust root. */
export function releaseService(deps: ApiDeps, ctx: RpcContext): ReleaseServiceServer {
  const releases = () => {
    if (!deps.releases) throw new DriftlineError('TRUST_NOT_CONFIGURED', 'the control plane runs without signed releases');
    return deps.releases;
  };
  return {
    publishRelease: unary(ctx, 'PublishRelease', 'operator', async (req, caller) => {
      const { version } = validate(publishRequest, req);
      if (req.envelope.length === 0 || req.envelope.length > MAX_ENVELOPE_BYTES)
        throw new DriftlineError('REQUEST_INVALID', 'an envelope of 1 byte to 16 MiB is required');
      const release = await releases().publish(assertModelName(req.name), version, Buffer.from(req.envelope));
      deps.logger.info({ model: release.name, version: release.version, keyIds: release.keyIds, by: caller?.id }, 'release signed');
      return release;
    }),
    getRelease: unary(ctx, 'GetRelease', 'viewer', (req) => releases().get(assertModelName(req.name), Math.max(0, Math.trunc(req.version)))),
    getReleaseDraft: unary(ctx, 'GetReleaseDraft', 'viewer', (req) => {
      const { version } = validate(publishRequest, req);
      return releases().draft(assertModelName(req.name), version);
    }),
    listReleaseStatuses: unary(ctx, 'ListReleaseStatuses', 'viewer', async (req) => {
      const { versions } = validate(statusRequest, req);
      // Without a trust root nothing is signed: every version is unsigned.
      if (!deps.releases) return { statuses: versions.map((v) => ({ ...v, status: 'unsigned', signedBy: '', keyIds: [], audience: [], reason: '' })) };
      return { statuses: await deps.releases.statuses(versions) };
    }),
    getTrustRoot: unary(ctx, 'GetTrustRoot', 'viewer', () => {
      const store = releases();
      const latest = store.rootVersion();
      if (!latest) throw new DriftlineError('TRUST_NOT_CONFIGURED', 'the control plane has no trust root');
      return { rootChain: store.rootChain(), version: latest.version, expiresAtMs: latest.expiresAtMs };
    }),
  };
}
