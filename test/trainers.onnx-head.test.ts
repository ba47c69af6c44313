import * as ort from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import { findClassifierHead, withHeadInputAsOutput, writeClassifierHead, type ClassifierHead } from '../common/onnx/classifier-head.js';
import { buildModel, type ModelDecl } from '../common/onnx/builder.js';
import { readModelSignature } from '../common/onnx/signature.js';
import { headProbabilities, type DenseLayer } from '../common/learning/dense-head.js';
import { seededRandom } from '../common/seeded-random.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { generateVibrationData } from '../demo/model/vibration-data.js';

const rng = seededRandom(11);
const randoms = (n: number, sd = 0.5): number[] => Array.from({ length: n }, () => rng.normal(0, sd));

async function run(bytes: Uint8Array, input: string, x: Float32Array, features: number): Promise<Record<string, ort.Tensor>> {
  const session = await ort.InferenceSession.create(bytes);
  try {
    return await session.run({ [input]: new ort.Tensor('float32', x, [x.length / features, features]) });
  } finally {
    await session.release();
  }
}

/** Each weight moved a little: what a training run would write back. */
function nudged(layers: readonly DenseLayer[]): DenseLayer[] {
  return layers.map((l) => ({ ...l, weights: l.weights.map((w) => w * 0.8 + rng.normal(0, 0.1)), bias: l.bias.map((b) => b + rng.normal(0, 0.2)) }));
}

function expectClose(actual: Float32Array, expected: Float32Array): void {
  expect(actual.length).toBe(expected.length);
  let worst = 0;
  for (let i = 0; i < actual.length; i++) worst = Math.max(worst, Math.abs(actual[i]! - expected[i]!));
  expect(worst).toBeLessThan(1e-5);
}

const signatureOf = (bytes: Uint8Array) => {
  const { inputs, outputs } = readModelSignature(bytes);
  return { inputs, outputs };
};

/** The head's outputs computed from the frozen body's embeddings (onnxruntime) and the Float32 head, against the model's own output. */
async function expectHeadReproducesModel(bytes: Uint8Array, head: ClassifierHead, input: string, x: Float32Array, features: number): Promise<void> {
  const rows = x.length / features;
  const outputs = await run(withHeadInputAsOutput(bytes, head), input, x, features);
  const embeddings = head.inputIsGraphInput ? x : (outputs[head.input]!.data as Float32Array);
  expect(embeddings.length).toBe(rows * head.layers[0]!.inputs);
  expectClose(headProbabilities(head.layers, embeddings, rows), outputs[head.output]!.data as Float32Array);
}

/** Writes new weights, then checks the signature is the base's and the model's outputs are the Float32 head's. */
async function expectWrittenHeadServes(bytes: Uint8Array, head: ClassifierHead, input: string, x: Float32Array, features: number): Promise<Uint8Array> {
  const trained = nudged(head.layers);
  const written = writeClassifierHead(bytes, head, trained);
  expect(signatureOf(written)).toEqual(signatureOf(bytes));
  const reread = findClassifierHead(written, { maxLayers: head.layers.length });
  await expectHeadReproducesModel(written, reread, input, x, features);
  const embeddings = head.inputIsGraphInput ? x : ((await run(withHeadInputAsOutput(bytes, head), input, x, features))[head.input]!.data as Float32Array);
  const outputs = await run(written, input, x, features);
  expectClose(outputs[head.output]!.data as Float32Array, headProbabilities(trained, embeddings, x.length / features));
  return written;
}

function bodyThenHead(head: 'gemm' | 'gemm-no-bias' | 'matmul-add', softmax: boolean): ModelDecl {
  const [d, h, k] = [6, 5, 3];
  const headNodes: ModelDecl['nodes'] =
    head === 'matmul-add'
      ? [
          { op: 'MatMul', inputs: ['embedding', 'head_w'], outputs: ['head_product'] },
          // Bias first: Add is commutative and exporters write it either way.
          { op: 'Add', inputs: ['head_b', 'head_product'], outputs: ['logits'] },
        ]
      : [
          {
            op: 'Gemm',
            inputs: head === 'gemm' ? ['embedding', 'head_w', 'head_b'] : ['embedding', 'head_w'],
            outputs: ['logits'],
            attributes: { transB: { int: 0 }, alpha: { float: 0.5 }, beta: { float: 2 } },
          },
        ];
  return {
    name: `body-then-${head}`,
    inputs: [{ name: 'x', type: 'float32', shape: ['batch', d] }],
    outputs: [{ name: softmax ? 'probabilities' : 'logits', type: 'float32', shape: ['batch', k] }],
    nodes: [
      // A frozen body that is not a dense chain the head could extend into (Tanh, not ReLU).
      { op: 'MatMul', inputs: ['x', 'body_w'], outputs: ['body_product'] },
      { op: 'Add', inputs: ['body_product', 'body_b'], outputs: ['body_linear'] },
      { op: 'Tanh', inputs: ['body_linear'], outputs: ['embedding'] },
      ...headNodes,
      ...(softmax ? [{ op: 'Softmax', inputs: ['logits'], outputs: ['probabilities'], attributes: { axis: { int: -1 } } }] : []),
    ],
    initializers: [
      { name: 'body_w', type: 'float32', dims: [d, h], values: randoms(d * h) },
      { name: 'body_b', type: 'float32', dims: [h], values: randoms(h) },
      { name: 'head_w', type: 'float32', dims: [h, k], values: randoms(h * k) },
      ...(head === 'gemm-no-bias' ? [] : [{ name: 'head_b', type: 'float32' as const, dims: [k], values: randoms(k) }]),
    ],
  };
}

describe('trainers - ONNX classifier head surgery', () => {
  const demo = buildDemoModel();
  const vibration = generateVibrationData({ rows: 64, seed: 5 });

  it('finds both dense layers of the demo classifier, on its graph input, and its Float32 head computes what onnxruntime computes', async () => {
    const head = findClassifierHead(demo.bytes);
    expect(head.inputIsGraphInput).toBe(true);
    expect(head.input).toBe('features');
    expect(head.output).toBe('probabilities');
    expect(head.softmax).toBe(true);
    expect(head.layers.map((l) => [l.inputs, l.outputs])).toEqual([
      [8, 16],
      [16, 4],
    ]);
    await expectHeadReproducesModel(demo.bytes, head, 'features', vibration.x, 8);
  });

  it('writing trained weights into the demo classifier keeps its signature, its label output follows the new probabilities', async () => {
    const head = findClassifierHead(demo.bytes);
    const written = await expectWrittenHeadServes(demo.bytes, head, 'features', vibration.x, 8);
    const outputs = await run(written, 'features', vibration.x, 8);
    const p = outputs.probabilities!.data as Float32Array;
    const labels = outputs.label!.data as BigInt64Array;
    for (let r = 0; r < 64; r++) {
      const row = [...p.subarray(r * 4, r * 4 + 4)];
      expect(Number(labels[r])).toBe(row.indexOf(Math.max(...row)));
    }
  });

  it('with maxLayers 1 the demo classifier first layer becomes the frozen body, whose output onnxruntime hands back as embeddings', async () => {
    const head = findClassifierHead(demo.bytes, { maxLayers: 1 });
    expect(head.inputIsGraphInput).toBe(false);
    expect(head.input).toBe('hidden');
    await expectHeadReproducesModel(demo.bytes, head, 'features', vibration.x, 8);
    await expectWrittenHeadServes(demo.bytes, head, 'features', vibration.x, 8);
  });

  const x = Float32Array.from(randoms(20 * 6, 1));
  for (const [kind, softmax] of [
    ['gemm', true],
    ['gemm-no-bias', true],
    ['matmul-add', true],
    ['matmul-add', false],
  ] as const) {
    it(`a hand-built ${kind} head${softmax ? ' with Softmax' : ' ending in logits'} on a frozen body: embeddings through onnxruntime, written weights served as computed`, async () => {
      const bytes = buildModel(bodyThenHead(kind, softmax));
      const head = findClassifierHead(bytes);
      expect(head.layers.length).toBe(1);
      expect(head.input).toBe('embedding');
      expect(head.softmax).toBe(softmax);
      if (softmax) {
        await expectHeadReproducesModel(bytes, head, 'x', x, 6);
        await expectWrittenHeadServes(bytes, head, 'x', x, 6);
      } else {
        // Without a Softmax the model's output is the logits: compare their softmax.
        const written = writeClassifierHead(bytes, head, nudged(head.layers));
        expect(signatureOf(written)).toEqual(signatureOf(bytes));
        const reread = findClassifierHead(written);
        const embeddings = (await run(withHeadInputAsOutput(written, reread), 'x', x, 6)).embedding!.data as Float32Array;
        const logits = (await run(written, 'x', x, 6)).logits!.data as Float32Array;
        const p = headProbabilities(reread.layers, embeddings, 20);
        for (let r = 0; r < 20; r++) {
          const row = [...logits.subarray(r * 3, r * 3 + 3)];
          const max = Math.max(...row);
          const sum = row.reduce((s, v) => s + Math.exp(v - max), 0);
          row.forEach((v, c) => expect(Math.exp(v - max) / sum).toBeCloseTo(p[r * 3 + c]!, 5));
        }
      }
    });
  }

  it('a model whose last layer is not dense has no head to train: MODEL_HEAD_UNSUPPORTED', () => {
    const bytes = buildModel({
      name: 'no-head',
      inputs: [{ name: 'x', type: 'float32', shape: ['batch', 4] }],
      outputs: [{ name: 'p', type: 'float32', shape: ['batch', 4] }],
      nodes: [
        { op: 'Relu', inputs: ['x'], outputs: ['r'] },
        { op: 'Softmax', inputs: ['r'], outputs: ['p'], attributes: { axis: { int: 1 } } },
      ],
    });
    expect(() => findClassifierHead(bytes)).toThrow(expect.objectContaining({ code: 'MODEL_HEAD_UNSUPPORTED' }));
  });
});
