import type { Logger } from '../common/logger.js';
import { DesiredState, FederatedInvitation } from '../common/proto/driftline/v1/device_link.js';
import type { DownChannel } from '../common/device-protocol/topics.js';

/** Where each down channel's messages go. */
export interface DownlinkHandlers {
  desired(state: DesiredState): void;
  command(payload: Buffer): Promise<unknown>;
  /** A federated invitation for the on-device learner; absent: the agent takes no part in federated rounds and ignores them. */
  federated?(invitation: FederatedInvitation): Promise<unknown>;
  logger: Logger;
}

/**
 * Routes what the control plane sends down: a desired state or a federated invitation is
 * decoded here (a malformed one is ignored and logged), a command goes to the command handler
 * (a failure is logged).
 * Nothing a message does can throw into the uplink.
 */
export function downlinkDispatcher(handlers: DownlinkHandlers): (channel: DownChannel, payload: Buffer) => void {
  return (channel, payload) => {
    if (channel === 'desired') {
      let desired: DesiredState;
      try {
        desired = DesiredState.decode(payload);
      } catch (err) {
        handlers.logger.warn({ err }, 'ignoring malformed desired state');
        return;
      }
      handlers.desired(desired);
    } else if (channel === 'command') {
      handlers.command(payload).catch((err: unknown) => handlers.logger.warn({ err }, 'command failed'));
    } else if (channel === 'federated') {
      const learner = handlers.federated;
      if (!learner) return;
      let invitation: FederatedInvitation;
      try {
        invitation = FederatedInvitation.decode(payload);
      } catch (err) {
        handlers.logger.warn({ err }, 'ignoring a malformed federated invitation');
        return;
      }
      learner(invitation).catch((err: unknown) => handlers.logger.warn({ err, task: invitation.taskId }, 'federated work failed'));
    }
  };
}
