import { describe, expect, it } from 'vitest';
import type { ReleaseStatus } from '../common/proto/driftline/v1/releases.js';
import type { CanaryRequest, CanarySigning } from '../control-plane/registry/release-signing.js';
import { canarySigningOf } from '../control-plane/training/wiring.js';
import { silentLogger } from '../common/logger.js';

/**
 * The release canary's signing port over the release signer: what it asks the signer, and when it
 * does not ask because the version is signed already (a release key's signature given offline, a
 * canary for the same devices signed before a restart).
 */
function rig(status: Partial<ReleaseStatus> = { status: 'unsigned' }) {
  const asked: CanaryRequest[] = [];
  const signing = canarySigningOf({
    signer: {
      async signCanary(request): Promise<CanarySigning> {
        asked.push(request);
        return { state: 'awaiting-signature', reason: 'no automation key is configured' };
      },
    },
    fleet: { list: async () => [{ id: 'edge-b' }, { id: 'edge-a' }] as never },
    registry: {
      resolve: async () =>
        ({
          metadata: {
            'lineage.parent_version': '1',
            'lineage.dataset_sha256': 'ab'.repeat(32),
            'lineage.job_id': 'tj_1',
            'lineage.metrics': '{"test_accuracy":0.93,"note":"x"}',
          },
        }) as never,
    },
    releases: {
      trusted: true,
      statuses: async (refs) =>
        refs.map((r) => ({ name: r.name, version: r.version, status: 'unsigned', signedBy: '', keyIds: [], audience: [], reason: '', ...status })),
    },
    logger: silentLogger(),
  });
  return { signing, asked };
}

describe('canary signing port', () => {
  it('asks the signer for a canary naming the cohort devices, sorted, with the lineage the sink recorded', async () => {
    const { signing, asked } = rig();
    expect(await signing.signCanary({ model: 'vibration', version: 2, audience: 'cohort=north' })).toEqual({ state: 'awaiting-signature' });
    expect(asked).toEqual([
      {
        model: 'vibration',
        version: 2,
        audience: ['edge-a', 'edge-b'],
        manifest: { lineage: { parentVersion: 1, dataSha256: 'ab'.repeat(32), job: 'tj_1', metrics: { test_accuracy: 0.93 } } },
      },
    ]);
  });

  it('answers signed without asking again once a release key signed the version offline (models sign)', async () => {
    const { signing, asked } = rig({ status: 'signed', signedBy: 'release-key' });
    expect(await signing.signCanary({ model: 'vibration', version: 2, audience: 'cohort=north' })).toEqual({ state: 'signed' });
    expect(asked).toEqual([]);
  });

  it('answers signed without signing twice for a canary of the same devices signed before', async () => {
    const { signing, asked } = rig({ status: 'canary', signedBy: 'automation-key', audience: ['edge-b', 'edge-a'] });
    expect(await signing.signCanary({ model: 'vibration', version: 2, audience: 'cohort=north' })).toEqual({ state: 'signed' });
    expect(asked).toEqual([]);
  });

  it('asks the signer when the canary signed before names other devices', async () => {
    const { signing, asked } = rig({ status: 'canary', signedBy: 'automation-key', audience: ['edge-a'] });
    await signing.signCanary({ model: 'vibration', version: 2, audience: 'cohort=north' });
    expect(asked).toHaveLength(1);
  });
});
