import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { credentials, Metadata, type ServiceError } from '@grpc/grpc-js';
import { ModelServiceClient, type ModelVersion } from '../../common/proto/driftline/v1/models.js';
import {
  RolloutServiceClient,
  type Rollout,
  type RolloutAudit,
  type RolloutCommandRequest,
  type StartRolloutRequest,
} from '../../common/proto/driftline/v1/rollouts.js';

type Callback<T> = (err: ServiceError | null, value: T) => void;

/** A thin test client over RolloutService (and model upload with metadata), as the admin. */
export function rolloutApi(address: string, tokenFile: string) {
  const metadata = new Metadata();
  metadata.set('authorization', `Bearer ${readFileSync(tokenFile, 'utf8').trim()}`);
  const channel = credentials.createInsecure();
  const rollouts = new RolloutServiceClient(address, channel);
  const models = new ModelServiceClient(address, channel);
  const call = <T>(fn: (cb: Callback<T>) => unknown): Promise<T> => new Promise((resolve, reject) => fn((err, value) => (err ? reject(err) : resolve(value))));
  const command = (name: 'pauseRollout' | 'resumeRollout' | 'abortRollout' | 'promoteRollout') => (req: Partial<RolloutCommandRequest> & { id: string }) =>
    call<Rollout>((cb) => rollouts[name]({ clientRequestId: '', reason: '', ...req }, metadata, cb));

  return {
    start: (req: Partial<StartRolloutRequest> & { model: string; version: number }) =>
      call<Rollout>((cb) =>
        rollouts.startRollout(
          {
            wavePercents: [100],
            bakeSeconds: 0,
            minDevices: 1,
            target: '',
            clientRequestId: '',
            gates: [],
            failureLimit: 0,
            consecutiveErrorLimit: 0,
            minInferences: 0,
            intervalSeconds: 0,
            requireMinDevices: false,
            ...req,
          },
          metadata,
          cb,
        ),
      ),
    get: (id: string) => call<Rollout>((cb) => rollouts.getRollout({ id }, metadata, cb)),
    list: () => call<{ rollouts: Rollout[] }>((cb) => rollouts.listRollouts({ activeOnly: false, model: '' }, metadata, cb)).then((r) => r.rollouts),
    audit: (id: string) => call<RolloutAudit>((cb) => rollouts.getRolloutAudit({ id }, metadata, cb)).then((r) => r.entries),
    pause: command('pauseRollout'),
    resume: command('resumeRollout'),
    abort: command('abortRollout'),
    promote: command('promoteRollout'),
    /** Collects Watch messages until the stream ends or `until` holds. */
    watch: (id: string, until: (r: Rollout) => boolean) =>
      new Promise<Rollout[]>((resolve, reject) => {
        const seen: Rollout[] = [];
        const stream = rollouts.watchRollout({ id }, metadata);
        stream.on('data', (r: Rollout) => {
          seen.push(r);
          if (until(r)) {
            stream.cancel();
            resolve(seen);
          }
        });
        stream.on('end', () => resolve(seen));
        stream.on('error', (err: ServiceError) => (err.code === 1 ? resolve(seen) : reject(err)));
      }),
    upload: (name: string, bytes: Uint8Array, meta: Record<string, string> = {}) =>
      new Promise<ModelVersion>((resolve, reject) => {
        const stream = models.uploadModel(metadata, (err, value) => (err ? reject(err) : resolve(value!)));
        const sha256 = createHash('sha256').update(bytes).digest('hex');
        stream.write({ part: { $case: 'header', value: { name, sizeBytes: bytes.length, sha256, description: 'test', metadata: meta } } });
        stream.write({ part: { $case: 'chunk', value: Buffer.from(bytes) } });
        stream.end();
      }),
    close: () => {
      rollouts.close();
      models.close();
    },
  };
}

export type RolloutApi = ReturnType<typeof rolloutApi>;
