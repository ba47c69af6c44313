import type { ServerReadableStream } from '@grpc/grpc-js';
import { z } from 'zod';
import { activeModelsOf, desiredModelsOf } from '../../common/device-protocol/model-set.js';
import { DriftlineError } from '../../common/errors.js';
import { assertDeviceId, assertModelName, matchesSelector, parseSelector } from '../../common/ids.js';
import type { ModelServiceServer, ModelVersion, UploadModelRequest } from '../../common/proto/driftline/v1/models.js';
import type { DeviceRecord } from '../fleet/fleet-store.js';
import type { ApiDeps } from './ports.js';
import { clientStreaming, unary, validate, type RpcContext } from './rpc.js';

const deployRequest = z.object({
  version: z.number().int().nonnegative(),
  deviceIds: z.array(z.string()).max(10_000),
});

const undeployRequest = z.object({ deviceIds: z.array(z.string()).max(10_000) });

export function modelService(deps: ApiDeps, ctx: RpcContext): ModelServiceServer {
  const { registry, logger } = deps;
  return {
    uploadModel: clientStreaming(ctx, 'UploadModel', 'operator', async (call, caller) => {
      const version = await receiveUpload(deps, call);
      logger.info({ model: version.name, version: version.version, sha256: version.sha256, by: caller?.id }, 'model uploaded');
      return version;
    }),
    listModels: unary(ctx, 'ListModels', 'viewer', async () => ({ latest: await registry.listLatest() })),
    getModel: unary(ctx, 'GetModel', 'viewer', (req) => registry.get(assertModelName(req.name))),
    amendModel: unary(ctx, 'AmendModel', 'operator', async (req, caller) => {
      const version = await registry.amend(assertModelName(req.name), req.version, { description: req.description, metadata: req.metadata });
      logger.info({ model: version.name, version: version.version, amends: version.amendsVersion, by: caller?.id }, 'model version amended');
      return version;
    }),
    undeployModel: unary(ctx, 'UndeployModel', 'operator', async (req, caller) => {
      const name = assertModelName(req.name);
      const { deviceIds } = validate(undeployRequest, req);
      const holding = (await selectTargets(deps, deviceIds, req.selector)).filter((d) => desiredModelsOf(d.desired).some((m) => m.name === name));
      if (holding.length === 0) {
        const where = deviceIds.length > 0 || req.selector ? 'of the target devices' : 'enrolled device';
        throw new DriftlineError('MODEL_NOT_DEPLOYED', `no ${where} has ${name} in its desired models; nothing to undeploy`, {
          details: { name, deviceIds: deviceIds.slice(0, 100), selector: req.selector },
        });
      }
      const removed = await deps.desiredStates.undeploy(name, holding);
      logger.info({ model: name, devices: removed.length, by: caller?.id }, 'model undeployed');
      return { devices: removed.length };
    }),
    deployModel: unary(ctx, 'DeployModel', 'operator', async (req, caller) => {
      const { version, deviceIds } = validate(deployRequest, req);
      const model = await registry.resolve(assertModelName(req.name), version);
      const targets = await selectTargets(deps, deviceIds, req.selector);
      // A release every device would refuse (revoked signing key, expired root) is refused here, with the reason;
      // so is a canary sent to devices it does not name.
      await deps.releases?.assertDeployable(
        model.name,
        model.version,
        targets.map((d) => d.id),
      );
      const rollback = await rollbackFor(deps, model, targets, caller?.id);
      const published = await deps.desiredStates.deploy(model, targets, { rollback });
      logger.info(
        { model: model.name, version: model.version, devices: targets.length, published, rolledBack: rollback?.deviceIds.size ?? 0, by: caller?.id },
        'model deployed',
      );
      return { model, devices: targets.length };
    }),
  };
}

/** Reads the header, then hands the chunks to the registry as they arrive. */
async function receiveUpload(deps: ApiDeps, call: ServerReadableStream<UploadModelRequest, ModelVersion>): Promise<ModelVersion> {
  const messages = call[Symbol.asyncIterator]() as AsyncIterator<UploadModelRequest>;
  const first = await messages.next();
  if (first.done || first.value.part?.$case !== 'header') {
    throw new DriftlineError('REQUEST_INVALID', 'an upload starts with exactly one header message');
  }
  async function* chunks(): AsyncGenerator<Uint8Array> {
    for (let next = await messages.next(); !next.done; next = await messages.next()) {
      const part = next.value.part;
      if (part?.$case !== 'chunk') throw new DriftlineError('REQUEST_INVALID', 'after the header an upload carries only chunks');
      yield part.value;
    }
  }
  return deps.registry.upload(first.value.part.value, chunks());
}

/**
 * The devices a deploy reaches: the named ones (each must exist) and/or those matching the
 * selector, or every enrolled device when neither is given. Decommissioned devices are skipped.
 */
async function selectTargets({ fleet }: ApiDeps, deviceIds: readonly string[], selector: string): Promise<DeviceRecord[]> {
  const terms = parseSelector(selector);
  const named = deviceIds.length > 0 ? await Promise.all([...new Set(deviceIds)].map((id) => fleet.get(assertDeviceId(id)))) : await fleet.list();
  return named.filter((device) => device.status === 'enrolled' && matchesSelector(device.labels, terms));
}

interface Rollback {
  directive: Buffer;
  deviceIds: ReadonlySet<string>;
}

/**
 * Devices that pin a root refuse a version below the highest they ever activated unless a
 * signed rollback directive names them (anti-rollback). Those known to run a newer version
 * (their reported active model; a lower bound of the highest they activated) get a directive
 * from the online rollback key, the way an aborted rollout sends devices back. Without online
 * signing every one of them would refuse, so the deploy is refused here, saying how to roll back.
 */
async function rollbackFor(
  { releases, config, clock }: ApiDeps,
  model: ModelVersion,
  targets: readonly DeviceRecord[],
  by: string | undefined,
): Promise<Rollback | undefined> {
  if (!releases) return undefined;
  const runs = (d: DeviceRecord): number => activeModelsOf(d.reported).find((m) => m.name === model.name)?.version ?? 0;
  const ahead = targets.filter((d) => runs(d) > model.version);
  if (ahead.length === 0) return undefined;
  const ids = ahead.map((d) => d.id);
  const newest = Math.max(...ahead.map(runs));
  const directive = await releases.rollbackDirective({
    model: model.name,
    toVersion: model.version,
    deviceIds: ids,
    reason: `models deploy ${model.name} --version ${model.version}${by ? ` by ${by}` : ''}`,
    ttlMs: config.rollout.rollbackTtl,
    id: `deploy-${model.name}-v${model.version}-${clock.now()}`,
  });
  if (!directive) {
    const named = ids.slice(0, 5).join(', ') + (ids.length > 5 ? ` and ${ids.length - 5} more` : '');
    throw new DriftlineError(
      'RELEASE_VERSION_REFUSED',
      `${ids.length} of the ${targets.length} target devices (${named}) already run a newer ${model.name} (up to v${newest}); devices refuse v${model.version} without a signed rollback directive (anti-rollback). ` +
        `To roll back: start the control plane with online rollback signing (serve --rollback-key <file>) and deploy again, or push the v${model.version} file again as a new version (driftline models push <file> --sign) and deploy that`,
      { details: { devices: ids.slice(0, 100), requested: model.version, newest } },
    );
  }
  return { directive, deviceIds: new Set(ids) };
}
