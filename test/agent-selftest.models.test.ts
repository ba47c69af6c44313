import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runSelftest } from '../agent/selftest.js';
import { sequenceModelBytes, tokensModelBytes } from './fixtures/inference-models.js';
import { modelFolder, type ModelFile, type ModelFolder } from './fixtures/models.js';

let folder: ModelFolder;
let sequence48: ModelFile;
let tokens: ModelFile;

beforeAll(async () => {
  folder = await modelFolder();
  sequence48 = await folder.write('sequence-48.onnx', sequenceModelBytes(48));
  tokens = await folder.write('tokens.onnx', tokensModelBytes());
});
afterAll(() => folder.remove());

const inference = async (options: Parameters<typeof runSelftest>[0]) => (await runSelftest(options)).checks.find((c) => c.name === 'inference')!;

describe('selftest --model', () => {
  it('selftest - runs a model with several inputs of other types than float32', async () => {
    const check = await inference({ model: tokens.path });
    expect(check).toMatchObject({ ok: true });
    expect(check.detail).toContain('total[1]');
  });

  it('selftest - runs a sequence model on the example inputs given, and names the warm-up failure without them', async () => {
    const without = await inference({ model: sequence48.path });
    expect(without).toMatchObject({ ok: false, code: 'MODEL_WARMUP_FAILED' });
    const file = join(folder.dir, 'examples.json');
    writeFileSync(
      file,
      JSON.stringify([{ tokens: { type: 'float32', dims: [1, 96] }, step: { type: 'int64', dims: [], data: [1] }, state: { type: 'float32', dims: [1, 48] } }]),
    );
    const check = await inference({ model: sequence48.path, examples: file });
    expect(check).toMatchObject({ ok: true });
    expect(check.detail).toContain('logits[1x96]');
  });
});
