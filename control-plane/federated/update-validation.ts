/**
 * The checks every device update passes before it reaches an aggregator, cheapest first and
 * bounded before any work: the wire size (FEDERATED_UPDATE_TOO_LARGE, before decoding), the
 * encoding and length (FEDERATED_UPDATE_SHAPE), finite values (FEDERATED_UPDATE_NOT_FINITE,
 * common/federated/update-codec.ts decodes and checks both), then the L2 norm bound
 * (FEDERATED_UPDATE_NORM). Pure: the round counts a refusal under its code.
 */
import { DriftlineError } from '../../common/errors.js';
import { decodeUpdate, l2Norm, type UpdateEncoding } from '../../common/federated/update-codec.js';
import type { FederatedTensor } from '../../common/proto/driftline/v1/device_link.js';

export interface UpdateLimits {
  /** Parameters in the task's head. */
  headLength: number;
  /** Updates with a larger L2 norm are refused (0: no bound). */
  maxUpdateNorm: number;
  /** Largest update data on the wire, in bytes. */
  maxBytes: number;
  /** The encoding the task asked for (update_compression); absent: any known encoding. */
  encoding?: UpdateEncoding;
}

export interface ValidatedUpdate {
  delta: Float32Array;
  norm: number;
}

export function validateUpdate(tensor: FederatedTensor | undefined, limits: UpdateLimits): ValidatedUpdate {
  if (!tensor) throw new DriftlineError('FEDERATED_UPDATE_SHAPE', 'the report carries no update');
  if (tensor.data.length > limits.maxBytes) {
    throw new DriftlineError('FEDERATED_UPDATE_TOO_LARGE', `the update holds ${tensor.data.length} bytes, more than the ${limits.maxBytes} allowed`);
  }
  if (limits.encoding !== undefined && tensor.encoding !== limits.encoding) {
    throw new DriftlineError('FEDERATED_UPDATE_SHAPE', `the update is encoded as ${tensor.encoding.slice(0, 32)}, the task asks for ${limits.encoding}`);
  }
  const delta = decodeUpdate(tensor, limits.headLength);
  const norm = l2Norm(delta);
  if (limits.maxUpdateNorm > 0 && norm > limits.maxUpdateNorm) {
    throw new DriftlineError(
      'FEDERATED_UPDATE_NORM',
      `the update's L2 norm ${norm.toPrecision(4)} is above the task's max_update_norm ${limits.maxUpdateNorm}`,
    );
  }
  return { delta, norm };
}
