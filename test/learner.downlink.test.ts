import { describe, expect, it } from 'vitest';
import { downlinkDispatcher } from '../agent/downlink.js';
import { silentLogger } from '../common/logger.js';
import { FederatedInvitation, FederatedInvitation_Kind } from '../common/proto/driftline/v1/device_link.js';

describe('learner - down/federated routing', () => {
  it('downlink - decodes an invitation for the learner; a malformed one and a failing round are only logged; without a learner it is ignored', async () => {
    const seen: FederatedInvitation[] = [];
    const dispatch = downlinkDispatcher({
      logger: silentLogger(),
      desired: () => undefined,
      command: async () => undefined,
      federated: async (invitation) => {
        seen.push(invitation);
        throw new Error('the round failed');
      },
    });
    const invitation = FederatedInvitation.fromPartial({ taskId: 't', round: 3, kind: FederatedInvitation_Kind.KIND_EVALUATE, model: 'm', version: 2 });
    dispatch('federated', Buffer.from(FederatedInvitation.encode(invitation).finish()));
    dispatch('federated', Buffer.from([0xff, 0xff, 0xff]));
    await Promise.resolve();
    expect(seen).toEqual([invitation]);
    // An agent without the learner takes no part: the channel is dropped, nothing throws.
    const without = downlinkDispatcher({ logger: silentLogger(), desired: () => undefined, command: async () => undefined });
    expect(() => without('federated', Buffer.from(FederatedInvitation.encode(invitation).finish()))).not.toThrow();
  });
});
