import { describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { DriftlineError } from '../common/errors.js';
import { parseExampleInputsFile } from '../common/onnx/example-inputs.js';
import { canonicalJson } from '../common/trust/canonical.js';
import { signManifestBytes, verifyRelease } from '../common/trust/manifest.js';
import { sequenceModelBytes } from './fixtures/inference-models.js';
import { signRaw, testTrust } from './helpers/releases.js';
import { buildReleaseManifest } from '../cli/releases/manifest-builder.js';

const NOW = 1_700_000_000_000;
const examples = [{ tokens: { type: 'float32', dims: [1, 96] }, step: { type: 'int64', dims: [], data: [1] }, state: { type: 'float32', dims: [1, 48] } }];

describe('release manifests - example inputs', () => {
  it('manifest - an old signed manifest without example inputs still verifies, and signing one adds no field', async () => {
    const trust = testTrust(NOW);
    const manifest = await buildReleaseManifest({ bytes: sequenceModelBytes(8), name: 'sequence', version: 1, createdAtMs: NOW });
    expect(manifest.golden.vectors[0]!.inputs.tokens!.dims).toEqual([1, 16]);
    const { examples: _none, ...old } = manifest;
    expect('examples' in manifest).toBe(false);
    // Exactly the bytes an agent from before example inputs would have signed.
    const verified = verifyRelease(signRaw(old, trust.release.signer), trust.metadata(1), new ManualClock(NOW));
    expect(verified.manifest.examples).toBeUndefined();
    expect(canonicalJson(verified.manifest)).toBe(canonicalJson(old));
  });

  it('manifest - carries example inputs through signing, and records golden vectors on them', async () => {
    const trust = testTrust(NOW);
    const manifest = await buildReleaseManifest({
      bytes: sequenceModelBytes(48),
      name: 'sequence',
      version: 1,
      createdAtMs: NOW,
      examples: parseExampleInputsFile(JSON.stringify(examples), 'examples.json'),
    });
    expect(manifest.golden.vectors.map((v) => v.inputs.tokens!.dims)).toEqual([
      [1, 96],
      [1, 96],
      [1, 96],
    ]);
    const verified = verifyRelease(signManifestBytes(manifest, trust.release.signer), trust.metadata(1), new ManualClock(NOW));
    expect(verified.manifest.examples).toEqual(examples);
  });

  it('manifest - recording golden vectors for a model that runs on no size tried fails with MODEL_WARMUP_FAILED, not INTERNAL', async () => {
    const err = await buildReleaseManifest({ bytes: sequenceModelBytes(48), name: 'sequence', version: 1, createdAtMs: NOW }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DriftlineError);
    expect((err as DriftlineError).code).toBe('MODEL_WARMUP_FAILED');
    expect((err as DriftlineError).message).toContain('cannot be reshaped');
  });

  it('manifest - refuses an example file whose values do not fill its dims, with REQUEST_INVALID', () => {
    const bad = [{ tokens: { type: 'float32', dims: [1, 4], data: [1, 2] } }];
    expect(() => parseExampleInputsFile(JSON.stringify(bad), 'bad.json')).toThrow(expect.objectContaining({ code: 'REQUEST_INVALID' }));
    expect(() => parseExampleInputsFile('not json', 'bad.json')).toThrow(expect.objectContaining({ code: 'REQUEST_INVALID' }));
  });
});
