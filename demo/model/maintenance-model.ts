import { mkdir, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { buildModel } from '../../common/onnx/builder.js';
import { sha256Hex } from '../../common/hashing.js';
import { VIBRATION_CLASSES } from './vibration-data.js';

/**
 * The second stage of the demo's pipeline: from the fault classifier's class probabilities to
 * how urgently the machine needs a technician. Its weights are written down, not trained: a
 * fault type has a known urgency (a bearing fault stops the line; imbalance and misalignment
 * can wait for the next shift), and the logits are that table scaled, so an uncertain fault
 * verdict gives an uncertain urgency. Small on purpose: the pipeline demo is about two models
 * on one device, each with its own version, telemetry and drift, not about this model.
 */
export const MAINTENANCE_MODEL_NAME = 'maintenance';
export const URGENCY_CLASSES = ['routine', 'next_shift', 'stop_now'] as const;

/** Urgency of each vibration class, in VIBRATION_CLASSES order. */
const URGENCY_OF_FAULT: Record<(typeof VIBRATION_CLASSES)[number], (typeof URGENCY_CLASSES)[number]> = {
  normal: 'routine',
  imbalance: 'next_shift',
  misalignment: 'next_shift',
  bearing_fault: 'stop_now',
};
/** How sharply a confident fault verdict maps to its urgency (logit per unit of probability). */
const SHARPNESS = 8;

export function buildMaintenanceModel(): Uint8Array {
  const faults = VIBRATION_CLASSES.length;
  const urgencies = URGENCY_CLASSES.length;
  // Gemm with transB: weights are [urgencies, faults].
  const weights = URGENCY_CLASSES.flatMap((urgency) => VIBRATION_CLASSES.map((fault) => (URGENCY_OF_FAULT[fault] === urgency ? SHARPNESS : 0)));
  return buildModel({
    name: 'maintenance-urgency',
    inputs: [{ name: 'fault_probabilities', type: 'float32', shape: ['batch', faults] }],
    outputs: [
      { name: 'urgency_probabilities', type: 'float32', shape: ['batch', urgencies] },
      { name: 'urgency', type: 'int64', shape: ['batch'] },
    ],
    nodes: [
      { op: 'Gemm', inputs: ['fault_probabilities', 'w', 'b'], outputs: ['logits'], attributes: { transB: { int: 1 } } },
      { op: 'Softmax', inputs: ['logits'], outputs: ['urgency_probabilities'], attributes: { axis: { int: 1 } } },
      { op: 'ArgMax', inputs: ['urgency_probabilities'], outputs: ['urgency'], attributes: { axis: { int: 1 }, keepdims: { int: 0 } } },
    ],
    initializers: [
      { name: 'w', type: 'float32', dims: [urgencies, faults], values: weights },
      { name: 'b', type: 'float32', dims: [urgencies], values: new Array<number>(urgencies).fill(0) },
    ],
    metadata: {
      'driftline.task': 'classification',
      'driftline.classes': URGENCY_CLASSES.join(','),
      'driftline.features': VIBRATION_CLASSES.map((c) => `p_${c}`).join(','),
      'driftline.probabilities_output': 'urgency_probabilities',
    },
  });
}

/** The urgency the model should give a confident verdict of this fault class (what the demo checks the chain against). */
export const expectedUrgency = (faultClass: number): number => URGENCY_CLASSES.indexOf(URGENCY_OF_FAULT[VIBRATION_CLASSES[faultClass]!]);

export async function writeMaintenanceModel(path: string): Promise<{ path: string; sha256: string }> {
  const bytes = buildMaintenanceModel();
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, bytes);
  return { path, sha256: sha256Hex(bytes) };
}
