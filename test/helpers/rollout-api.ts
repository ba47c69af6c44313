import { readFileSync } from 'node:fs';
import { createOperatorClient } from '../../client/operator-client.js';
import { RolloutServiceService, type Rollout, type RolloutCommandRequest, type StartRolloutRequest } from '../../common/proto/driftline/v1/rollouts.js';

/** A thin test client over RolloutService (and model upload with metadata), as the admin (the operator client the CLI uses). */
export function rolloutApi(address: string, tokenFile: string) {
  const client = createOperatorClient({ address, token: readFileSync(tokenFile, 'utf8').trim() });
  const rollouts = client.service(RolloutServiceService);
  const command = (name: 'pauseRollout' | 'resumeRollout' | 'abortRollout' | 'promoteRollout') => (req: Partial<RolloutCommandRequest> & { id: string }) =>
    rollouts[name]({ clientRequestId: '', reason: '', ...req });

  return {
    start: (req: Partial<StartRolloutRequest> & { model: string; version: number }) =>
      rollouts.startRollout({
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
      }),
    get: (id: string) => rollouts.getRollout({ id }),
    list: () => rollouts.listRollouts({ activeOnly: false, model: '' }).then((r) => r.rollouts),
    audit: (id: string) => rollouts.getRolloutAudit({ id }).then((r) => r.entries),
    pause: command('pauseRollout'),
    resume: command('resumeRollout'),
    abort: command('abortRollout'),
    promote: command('promoteRollout'),
    /** Collects Watch messages until the stream ends or `until` holds (leaving the loop cancels the watch). */
    watch: async (id: string, until: (r: Rollout) => boolean): Promise<Rollout[]> => {
      const seen: Rollout[] = [];
      for await (const r of rollouts.watchRollout({ id })) {
        seen.push(r);
        if (until(r)) break;
      }
      return seen;
    },
    upload: (name: string, bytes: Uint8Array, meta: Record<string, string> = {}) =>
      client.uploadModelBytes(bytes, { name, description: 'test', metadata: meta }),
    close: () => client.close(),
  };
}

export type RolloutApi = ReturnType<typeof rolloutApi>;
