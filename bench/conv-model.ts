import { buildModel, type InitializerDecl, type NodeDecl } from '../common/onnx/builder.js';

/** Input of the benchmark's convolutional model: one 64x64 RGB image per row. */
export const CONV_INPUT_SHAPE = [3, 64, 64] as const;
/**
 * The realistic-size variant: one 224x224 RGB image (ImageNet-sized), a stride-2 stem like
 * real vision models', about 0.5 GMAC per image.
 */
export const LARGE_INPUT_SHAPE = [3, 224, 224] as const;
export const buildLargeConvModel = (seed = 11) => buildConvModel(seed, { inputShape: LARGE_INPUT_SHAPE, stemStride: 2 });

/**
 * An image classifier shaped like the small vision models edge devices run: six 3x3
 * convolutions (stride 2 from the second on, widening to 512 channels), global average
 * pooling and a 10-class softmax. About 3.9 million parameters, deterministic weights
 * (He-scaled, from a seeded generator) so activations stay finite. Dynamic batch dimension.
 */
export function buildConvModel(
  seed = 7,
  options: { inputShape?: readonly [number, number, number]; stemStride?: number } = {},
): { bytes: Uint8Array; parameters: number } {
  const inputShape = options.inputShape ?? CONV_INPUT_SHAPE;
  let state = seed >>> 0 || 1;
  const random = () => {
    // xorshift32: fast, seeded, good enough for weights nobody trains.
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 0x100000000;
  };
  const layers: Array<{ out: number; stride: number }> = [
    { out: 32, stride: options.stemStride ?? 1 },
    { out: 64, stride: 2 },
    { out: 128, stride: 2 },
    { out: 256, stride: 2 },
    { out: 512, stride: 1 },
    { out: 512, stride: 2 },
  ];
  const nodes: NodeDecl[] = [];
  const initializers: InitializerDecl[] = [];
  let parameters = 0;
  let channels: number = inputShape[0];
  let x = 'image';
  layers.forEach(({ out, stride }, i) => {
    const fanIn = channels * 9;
    const scale = Math.sqrt(2 / fanIn);
    const w = Float32Array.from({ length: out * fanIn }, () => (random() * 2 - 1) * scale * Math.sqrt(3));
    initializers.push({ name: `w${i}`, type: 'float32', dims: [out, channels, 3, 3], values: w });
    initializers.push({ name: `b${i}`, type: 'float32', dims: [out], values: new Float32Array(out) });
    parameters += w.length + out;
    nodes.push({
      op: 'Conv',
      inputs: [x, `w${i}`, `b${i}`],
      outputs: [`c${i}`],
      attributes: { kernel_shape: { ints: [3, 3] }, pads: { ints: [1, 1, 1, 1] }, strides: { ints: [stride, stride] } },
    });
    nodes.push({ op: 'Relu', inputs: [`c${i}`], outputs: [`r${i}`] });
    x = `r${i}`;
    channels = out;
  });
  const classes = 10;
  const fc = Float32Array.from({ length: classes * channels }, () => (random() * 2 - 1) / Math.sqrt(channels));
  initializers.push({ name: 'fc_w', type: 'float32', dims: [classes, channels], values: fc });
  initializers.push({ name: 'fc_b', type: 'float32', dims: [classes], values: new Float32Array(classes) });
  parameters += fc.length + classes;
  nodes.push({ op: 'GlobalAveragePool', inputs: [x], outputs: ['pooled'] });
  nodes.push({ op: 'Flatten', inputs: ['pooled'], outputs: ['flat'], attributes: { axis: { int: 1 } } });
  nodes.push({ op: 'Gemm', inputs: ['flat', 'fc_w', 'fc_b'], outputs: ['logits'], attributes: { transB: { int: 1 } } });
  nodes.push({ op: 'Softmax', inputs: ['logits'], outputs: ['probabilities'], attributes: { axis: { int: 1 } } });
  const bytes = buildModel({
    name: 'bench-conv',
    inputs: [{ name: 'image', type: 'float32', shape: ['batch', ...inputShape] }],
    outputs: [{ name: 'probabilities', type: 'float32', shape: ['batch', classes] }],
    nodes,
    initializers,
  });
  return { bytes, parameters };
}
