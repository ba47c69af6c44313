import * as ort from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import { buildModel } from '../common/onnx/builder.js';
import { readModelSignature } from '../common/onnx/signature.js';

const addModel = () =>
  buildModel({
    name: 'add',
    inputs: [
      { name: 'a', type: 'float32', shape: ['batch', 3] },
      { name: 'b', type: 'float32', shape: ['batch', 3] },
    ],
    outputs: [{ name: 'sum', type: 'float32', shape: ['batch', 3] }],
    nodes: [{ op: 'Add', inputs: ['a', 'b'], outputs: ['sum'] }],
    metadata: { 'driftline.task': 'regression' },
  });

const session = (bytes: Uint8Array) => ort.InferenceSession.create(Buffer.from(bytes));

describe('onnx builder', () => {
  it('builds an Add model with a dynamic batch that onnxruntime runs at any batch size', async () => {
    const s = await session(addModel());
    for (const batch of [1, 4]) {
      const a = Float32Array.from({ length: batch * 3 }, (_, i) => i);
      const b = Float32Array.from({ length: batch * 3 }, (_, i) => 0.5 * i);
      const { sum } = await s.run({ a: new ort.Tensor('float32', a, [batch, 3]), b: new ort.Tensor('float32', b, [batch, 3]) });
      expect(sum!.dims).toEqual([batch, 3]);
      expect(Array.from(sum!.data as Float32Array)).toEqual(Array.from(a, (v, i) => v + b[i]!));
    }
    await s.release();
  });

  it('builds an int64 model whose initializer keeps values beyond 2^53', async () => {
    const big = 2n ** 60n;
    const bytes = buildModel({
      name: 'int64-offset',
      inputs: [{ name: 'x', type: 'int64', shape: [2] }],
      outputs: [{ name: 'y', type: 'int64', shape: [2] }],
      nodes: [{ op: 'Add', inputs: ['x', 'offset'], outputs: ['y'] }],
      initializers: [{ name: 'offset', type: 'int64', dims: [2], values: [big, -7n] }],
    });
    const s = await session(bytes);
    const { y } = await s.run({ x: new ort.Tensor('int64', BigInt64Array.from([3n, 10n]), [2]) });
    expect(Array.from(y!.data as BigInt64Array)).toEqual([big + 3n, 3n]);
    await s.release();
  });

  it('builds a two-output model with float weights and int and float attributes', async () => {
    const bytes = buildModel({
      name: 'linear-softmax',
      inputs: [{ name: 'x', type: 'float32', shape: ['batch', 2] }],
      outputs: [
        { name: 'probs', type: 'float32', shape: ['batch', 2] },
        { name: 'label', type: 'int64', shape: ['batch'] },
      ],
      nodes: [
        { op: 'Gemm', inputs: ['x', 'w', 'bias'], outputs: ['logits'], attributes: { alpha: { float: 2 } } },
        { op: 'Softmax', inputs: ['logits'], outputs: ['probs'], attributes: { axis: { int: 1 } } },
        { op: 'ArgMax', inputs: ['probs'], outputs: ['label'], attributes: { axis: { int: 1 }, keepdims: { int: 0 } } },
      ],
      initializers: [
        { name: 'w', type: 'float32', dims: [2, 2], values: [1, 0, 0, -1] },
        { name: 'bias', type: 'float32', dims: [2], values: [0, 0] },
      ],
    });
    const s = await session(bytes);
    const { probs, label } = await s.run({ x: new ort.Tensor('float32', Float32Array.from([1, 1, -1, -1]), [2, 2]) });
    const p = probs!.data as Float32Array;
    const e = 1 / (1 + Math.exp(-4));
    expect(p[0]).toBeCloseTo(e, 6);
    expect(p[1]).toBeCloseTo(1 - e, 6);
    expect(p[2]).toBeCloseTo(1 - e, 6);
    expect(Array.from(label!.data as BigInt64Array)).toEqual([0n, 1n]);
    await s.release();
  });

  it('builds a Constant node from a tensor attribute', async () => {
    const bytes = buildModel({
      name: 'constant',
      inputs: [{ name: 'x', type: 'int32', shape: [3] }],
      outputs: [{ name: 'y', type: 'int32', shape: [3] }],
      nodes: [
        { op: 'Constant', inputs: [], outputs: ['c'], attributes: { value: { tensor: { type: 'int32', dims: [3], values: [1, -2, 3] } } } },
        { op: 'Mul', inputs: ['x', 'c'], outputs: ['y'] },
      ],
    });
    const s = await session(bytes);
    const { y } = await s.run({ x: new ort.Tensor('int32', Int32Array.from([5, 5, 5]), [3]) });
    expect(Array.from(y!.data as Int32Array)).toEqual([5, -10, 15]);
    await s.release();
  });

  it('refuses an initializer whose value count does not match its dims', () => {
    expect(() =>
      buildModel({
        name: 'bad',
        inputs: [],
        outputs: [],
        nodes: [],
        initializers: [{ name: 'w', type: 'float32', dims: [2, 2], values: [1, 2, 3] }],
      }),
    ).toThrow(expect.objectContaining({ code: 'MODEL_INVALID' }));
  });

  it('refuses a non-integer int attribute and a node domain without an opset', () => {
    const base = { name: 'bad', inputs: [], outputs: [] };
    expect(() => buildModel({ ...base, nodes: [{ op: 'ArgMax', inputs: ['x'], outputs: ['y'], attributes: { axis: { int: 0.5 } } }] })).toThrow(
      expect.objectContaining({ code: 'MODEL_INVALID' }),
    );
    expect(() => buildModel({ ...base, nodes: [{ op: 'FusedGemm', domain: 'com.microsoft', inputs: [], outputs: [] }] })).toThrow(
      expect.objectContaining({ code: 'MODEL_INVALID' }),
    );
  });
});

describe('onnx signature', () => {
  it('reads back inputs, outputs, opset, producer and metadata of a built model', () => {
    const sig = readModelSignature(addModel());
    expect(sig).toEqual({
      opset: 17,
      irVersion: 8,
      producer: 'driftline',
      inputs: [
        { name: 'a', type: 'float32', shape: [-1, 3] },
        { name: 'b', type: 'float32', shape: [-1, 3] },
      ],
      outputs: [{ name: 'sum', type: 'float32', shape: [-1, 3] }],
      metadata: { 'driftline.task': 'regression' },
    });
  });

  it('leaves out initializers that are also listed as graph inputs', () => {
    const bytes = buildModel({
      name: 'overridable-weight',
      inputs: [
        { name: 'x', type: 'float32', shape: [2] },
        { name: 'w', type: 'float32', shape: [2] },
      ],
      outputs: [{ name: 'y', type: 'float32', shape: [2] }],
      nodes: [{ op: 'Mul', inputs: ['x', 'w'], outputs: ['y'] }],
      initializers: [{ name: 'w', type: 'float32', dims: [2], values: [2, 3] }],
      opset: 13,
      irVersion: 7,
    });
    const sig = readModelSignature(bytes);
    expect(sig.inputs).toEqual([{ name: 'x', type: 'float32', shape: [2] }]);
    expect(sig.opset).toBe(13);
    expect(sig.irVersion).toBe(7);
  });

  it('names int64, bool and scalar outputs', () => {
    const bytes = buildModel({
      name: 'types',
      inputs: [{ name: 'x', type: 'int64', shape: ['n'] }],
      outputs: [
        { name: 'positive', type: 'bool', shape: ['n'] },
        { name: 'total', type: 'int64', shape: [] },
      ],
      nodes: [
        { op: 'Greater', inputs: ['x', 'zero'], outputs: ['positive'] },
        { op: 'ReduceSum', inputs: ['x'], outputs: ['total'], attributes: { keepdims: { int: 0 } } },
      ],
      initializers: [{ name: 'zero', type: 'int64', dims: [], values: [0] }],
    });
    expect(readModelSignature(bytes).outputs).toEqual([
      { name: 'positive', type: 'bool', shape: [-1] },
      { name: 'total', type: 'int64', shape: [] },
    ]);
  });

  it('rejects empty, truncated and random bytes as MODEL_INVALID', () => {
    const good = addModel();
    let state = 0x9e3779b9;
    const random = Uint8Array.from({ length: 512 }, () => {
      state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
      return state >>> 24;
    });
    for (const bytes of [new Uint8Array(0), good.subarray(0, Math.floor(good.length / 2)), good.subarray(0, 5), random]) {
      expect(() => readModelSignature(bytes)).toThrow(expect.objectContaining({ code: 'MODEL_INVALID' }));
    }
  });
});
