import { DriftlineError } from '../../../common/errors.js';
import type { Logger } from '../../../common/logger.js';
import { candidateExamples, elementCount, type ExampleInput, type ExampleInputs } from '../../../common/onnx/example-inputs.js';
import type { TensorSession } from '../../../common/onnx/tensor-session.js';
import { seededRandom } from '../../../common/seeded-random.js';
import { decodeEnvelope, parsePayload } from '../../../common/trust/dsse.js';
import { toGoldenTensor } from '../../../common/trust/golden.js';
import { releaseManifestSchema, type GoldenVector, type ReleaseManifest } from '../../../common/trust/manifest.js';
import type { ModelRegistry } from '../../registry/model-registry.js';
import type { ManifestExtras } from '../../registry/release-signing.js';
import type { ReleaseStore } from '../../registry/release-store.js';
import { GOLDEN_TOLERANCE, type ModelSessions } from '../../training/release-data.js';
import { FEDERATED_TASK_METADATA_KEY } from './federated-release.js';

/**
 * A federated version's canary manifest material beyond its lineage. There is no central data
 * (the samples stayed on the devices), so its golden vectors are recorded on example inputs:
 * the parent's signed manifest's examples (their data when they carry some, else values drawn
 * from a fixed seed), or, when the parent has no manifest with examples, its declared input
 * shapes (dynamic dimensions as 1). The version itself is run on them: a device self-tests the
 * head that was written in, and refuses bytes that compute anything else. The reference
 * distributions are the parent's (the inputs the devices see did not change; only the head did).
 * Inputs other than float32 leave the manifest without golden vectors, logged with the reason.
 */

/** The parent's signed manifest, when it has one (ReleaseStore below). */
export interface ParentManifests {
  manifestOf(model: string, version: number): Promise<Pick<ReleaseManifest, 'examples' | 'reference'> | undefined>;
}

/** The parent's signed manifest from the release store (the control plane signed or stored it: it is read, not verified again). */
export function releaseStoreManifests(releases: Pick<ReleaseStore, 'envelopeOf'>): ParentManifests {
  return {
    async manifestOf(model, version) {
      const envelope = await releases.envelopeOf(model, version);
      if (!envelope) return undefined;
      const decoded = decodeEnvelope(envelope);
      return parsePayload(Buffer.from(decoded.payload, 'base64'), releaseManifestSchema, 'RELEASE_INVALID', `${model} v${version}'s manifest`);
    },
  };
}

/** Golden vectors a federated version's canary carries. */
export const FEDERATED_GOLDEN_VECTORS = 3;
/** Seed of the example values drawn when an example carries no data: fixed, so a retried signing records the same vectors. */
const EXAMPLE_SEED = 0x0fed;

export class FederatedReleaseData {
  constructor(
    private readonly deps: {
      registry: Pick<ModelRegistry, 'resolve'>;
      /** A stored version's ONNX bytes by its sha256. */
      bytesOf: (sha256: string) => Promise<Uint8Array>;
      sessions: ModelSessions;
      parents: ParentManifests;
      logger: Logger;
      goldenVectors?: number;
      /** What every other version's canary carries (the retrained versions' RetrainedReleaseData), so one port serves canarySigningOf. */
      otherwise?: { manifestExtras(request: { model: string; version: number }): Promise<Pick<ManifestExtras, 'golden' | 'examples' | 'reference'>> };
    },
  ) {}

  /** Golden vectors, examples and the parent's reference distributions for a federated version; another version's from `otherwise` ({} without it). */
  async manifestExtras(request: { model: string; version: number }): Promise<Pick<ManifestExtras, 'golden' | 'examples' | 'reference'>> {
    const { registry, logger } = this.deps;
    const stored = await registry.resolve(request.model, request.version);
    if (!stored.metadata[FEDERATED_TASK_METADATA_KEY]) return this.deps.otherwise ? this.deps.otherwise.manifestExtras(request) : {};
    const parentVersion = Number(stored.metadata['lineage.parent_version']) || 0;
    const parent = parentVersion > 0 ? await this.deps.parents.manifestOf(request.model, parentVersion).catch(() => undefined) : undefined;
    const out: Pick<ManifestExtras, 'golden' | 'examples' | 'reference'> = {};
    if (parent?.reference) out.reference = parent.reference;
    const declared = stored.inputs.map((t) => ({ name: t.name, type: t.type, shape: [...t.shape] }));
    const examples: ExampleInputs = parent?.examples && parent.examples.length > 0 ? parent.examples : candidateExamples(declared).slice(0, 1);
    const count = Math.min(64, Math.max(0, this.deps.goldenVectors ?? FEDERATED_GOLDEN_VECTORS));
    if (count === 0) return out;
    const notFloat = examples.flatMap((e) => Object.entries(e)).find(([, t]) => t.type !== 'float32' && t.type !== 'FP32');
    if (notFloat) {
      logger.warn(
        { ...request, input: notFloat[0], type: notFloat[1].type },
        'the federated version takes an input other than float32: its canary carries no golden vectors',
      );
      return out;
    }
    const session = await this.deps.sessions.open(await this.deps.bytesOf(stored.sha256), `v${request.version}`);
    try {
      const random = seededRandom(EXAMPLE_SEED);
      const vectors: GoldenVector[] = [];
      for (let i = 0; i < count; i++) {
        const example = examples[i % examples.length]!;
        // Repeated examples without data get new values; repeated ones with data would be the same vector twice.
        if (i >= examples.length && Object.values(example).every((t) => t.data !== undefined)) break;
        const feeds = feedsOf(example, random);
        let outputs: Awaited<ReturnType<TensorSession['run']>>;
        try {
          outputs = await session.run(feeds);
        } catch (err) {
          throw new DriftlineError('MODEL_INVALID', `v${request.version} does not run on its example inputs: ${(err as Error).message}`, { cause: err });
        }
        vectors.push({
          inputs: Object.fromEntries(Object.entries(feeds).map(([name, f]) => [name, toGoldenTensor(f)])),
          outputs: Object.fromEntries(Object.entries(outputs).map(([name, t]) => [name, toGoldenTensor(t)])),
        });
      }
      out.golden = { tolerance: { ...GOLDEN_TOLERANCE }, vectors };
      out.examples = examples.map((e) => Object.fromEntries(Object.entries(e).map(([name, t]) => [name, { type: 'float32', dims: [...t.dims] }])));
      return out;
    } finally {
      await session.release();
    }
  }
}

/** Float32 feeds of an example: its data, or values in [−1, 1) from the seeded source. */
function feedsOf(example: ExampleInput, random: ReturnType<typeof seededRandom>): Record<string, { type: 'float32'; dims: number[]; data: Float32Array }> {
  return Object.fromEntries(
    Object.entries(example).map(([name, t]) => {
      const n = elementCount(t.dims);
      const data = t.data ? Float32Array.from(t.data, Number) : Float32Array.from({ length: n }, () => random.uniform(-1, 1));
      return [name, { type: 'float32' as const, dims: [...t.dims], data }];
    }),
  );
}
