import type { Logger } from '../common/logger.js';
import { DesiredState } from '../common/proto/driftline/v1/device_link.js';
import type { DownChannel } from '../common/device-protocol/topics.js';

/** Where each down channel's messages go. */
export interface DownlinkHandlers {
  desired(state: DesiredState): void;
  command(payload: Buffer): Promise<unknown>;
  logger: Logger;
}

/**
 * Routes what the control plane sends down: a desired state is decoded here (a malformed one
 * is ignored and logged), a command goes to the command handler (a failure is logged).
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
    }
  };
}
