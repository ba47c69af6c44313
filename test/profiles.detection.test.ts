import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { chooseProfile, missingProviderFact, type HostFacts } from '../agent/profiles/detect.js';
import { systemHostProbe } from '../agent/profiles/host-probe.js';
import { inferenceSettings, providerWarnings } from '../agent/profiles/inference-settings.js';
import { DriftlineError } from '../common/errors.js';
import { loadFirmwareProfiles } from '../common/firmware-profile.js';

const profiles = loadFirmwareProfiles();
const scratch = mkdtempSync(join(tmpdir(), 'driftline-host-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

const host = (facts: Partial<HostFacts>): HostFacts => ({ arch: 'x64', platform: 'linux', nvidiaSmi: false, ...facts });

const hosts: Array<[string, HostFacts, string]> = [
  [
    'a Jetson Orin Nano on JetPack 6',
    host({
      arch: 'arm64',
      deviceTreeModel: 'NVIDIA Jetson Orin Nano Developer Kit',
      tegraRelease: '# R36 (release), REVISION: 4.3, GCID: 38968081',
      nvidiaSmi: true,
    }),
    'jetson-orin-nano-jp6',
  ],
  [
    'a Jetson AGX Orin on JetPack 6',
    host({ arch: 'arm64', deviceTreeModel: 'Jetson AGX Orin Developer Kit', tegraRelease: '# R36 (release), REVISION: 3.0' }),
    'jetson-agx-orin-jp6',
  ],
  ['a Raspberry Pi 5', host({ arch: 'arm64', deviceTreeModel: 'Raspberry Pi 5 Model B Rev 1.0' }), 'raspberry-pi-5'],
  ['an x86_64 server with an NVIDIA GPU', host({ nvidiaSmi: true }), 'x86_64-nvidia-cuda12'],
  ['a plain x86_64 machine', host({}), 'generic-x86_64-cpu'],
];

function thrown(work: () => unknown): DriftlineError {
  try {
    work();
  } catch (err) {
    expect(err).toBeInstanceOf(DriftlineError);
    return err as DriftlineError;
  }
  throw new Error('expected an error');
}

describe('firmware profile detection', () => {
  it.each(hosts)('detection - recognises %s', (_, facts, expected) => {
    const choice = chooseProfile('auto', profiles, facts);
    expect(choice.profile.name).toBe(expected);
  });

  it('detection - recognises the known devices without a warning', () => {
    for (const [, facts] of hosts.slice(0, 4)) expect(chooseProfile('auto', profiles, facts).warnings).toEqual([]);
  });

  const unknown: Array<[string, HostFacts, string]> = [
    ['an arm64 board no profile knows', host({ arch: 'arm64', deviceTreeModel: 'Pine64 RockPro64 v2.1' }), 'generic-arm64-cpu'],
    [
      'a Jetson on JetPack 5 (R35)',
      host({ arch: 'arm64', deviceTreeModel: 'NVIDIA Jetson Orin Nano Developer Kit', tegraRelease: '# R35 (release), REVISION: 4.1' }),
      'generic-arm64-cpu',
    ],
    ['an arm64 server with nvidia-smi', host({ arch: 'arm64', nvidiaSmi: true }), 'generic-arm64-cpu'],
  ];

  it.each(unknown)('detection - serves %s with the generic CPU profile and a warning to report', (_, facts, expected) => {
    const choice = chooseProfile('auto', profiles, facts);
    expect(choice.profile.name).toBe(expected);
    expect(choice.warnings).toHaveLength(1);
  });

  it('detection - takes a named profile as given, warning when it is for another architecture', () => {
    expect(chooseProfile('raspberry-pi-5', profiles, host({ arch: 'arm64' }))).toMatchObject({ profile: { name: 'raspberry-pi-5' }, warnings: [] });
    expect(chooseProfile('jetson-orin-nano-jp6', profiles, host({})).warnings).toHaveLength(1);
  });

  it('detection - refuses an unknown profile name and an architecture no profile covers with CONFIG_INVALID', () => {
    expect(thrown(() => chooseProfile('jetson-xavier', profiles, host({}))).code).toBe('CONFIG_INVALID');
    expect(thrown(() => chooseProfile('auto', profiles, host({ arch: 'riscv64' }))).code).toBe('CONFIG_INVALID');
  });

  it('detection - reads device-tree model, tegra release and nvidia-smi from the host files and PATH', async () => {
    const model = join(scratch, 'model');
    const tegra = join(scratch, 'nv_tegra_release');
    const bin = join(scratch, 'bin');
    writeFileSync(model, 'NVIDIA Jetson Orin Nano Developer Kit\0');
    writeFileSync(tegra, '# R36 (release), REVISION: 4.3\n# KERNEL_VARIANT: oot\n');
    mkdirSync(bin);
    writeFileSync(join(bin, 'nvidia-smi'), '#!/bin/sh\n');
    chmodSync(join(bin, 'nvidia-smi'), 0o755);
    const facts = await systemHostProbe({ deviceTreeModel: model, tegraRelease: tegra, path: bin }).facts();
    expect(facts).toMatchObject({ deviceTreeModel: 'NVIDIA Jetson Orin Nano Developer Kit', tegraRelease: '# R36 (release), REVISION: 4.3', nvidiaSmi: true });

    const bare = await systemHostProbe({ deviceTreeModel: join(scratch, 'none'), tegraRelease: join(scratch, 'none'), path: join(scratch, 'empty') }).facts();
    expect(bare).toEqual({ arch: process.arch, platform: process.platform, nvidiaSmi: false });
  });
});

describe('inference settings from a profile', () => {
  it('settings - take providers with their options, threads, batching and model limit from the profile', () => {
    const settings = inferenceSettings(profiles.get('jetson-orin-nano-jp6')!);
    expect(settings.providers.map((p) => p.name)).toEqual(['tensorrt', 'cuda', 'cpu']);
    expect(settings).toMatchObject({
      intraOpThreads: 6,
      interOpThreads: 1,
      batching: { defaultBatch: 4, maxBatch: 16, maxQueueDelayMs: 2, maxQueue: 256, concurrency: 1 },
      maxModelBytes: 512 * 1024 ** 2,
      libraryPath: '/opt/onnxruntime-jetpack6/lib',
    });
    // 0 threads in a profile leaves the choice to onnxruntime.
    expect(inferenceSettings(profiles.get('generic-x86_64-cpu')!).intraOpThreads).toBeUndefined();
  });

  it('settings - let configuration override the profile, keeping the profile options of a provider it names', () => {
    const settings = inferenceSettings(profiles.get('jetson-orin-nano-jp6')!, {
      providers: ['cuda', 'cpu'],
      intraOpThreads: 2,
      batching: { maxBatch: 4, maxQueue: 8 },
      maxModelBytes: 1024,
      libraryPath: '/usr/local/onnxruntime/lib',
    });
    expect(settings.providers).toEqual([{ name: 'cuda', deviceId: 0, memoryLimit: 2 * 1024 ** 3 }, { name: 'cpu' }]);
    expect(settings).toMatchObject({
      intraOpThreads: 2,
      batching: { defaultBatch: 4, maxBatch: 4, maxQueue: 8 },
      maxModelBytes: 1024,
      libraryPath: '/usr/local/onnxruntime/lib',
    });
  });

  it('settings - warn about each missing accelerated provider with the fact that applies to the host', () => {
    const nano = inferenceSettings(profiles.get('jetson-orin-nano-jp6')!);
    expect(providerWarnings(nano, ['cpu'], { arch: 'arm64', platform: 'linux' })).toHaveLength(2);
    expect(providerWarnings(nano, ['tensorrt', 'cuda', 'cpu'], { arch: 'arm64', platform: 'linux' })).toEqual([]);
    expect(providerWarnings(inferenceSettings(profiles.get('generic-x86_64-cpu')!), ['cpu'], { arch: 'x64', platform: 'linux' })).toEqual([]);
  });

  it('settings - name the arm64 CPU-only prebuilt, a JetPack build without the provider, or the missing cuda12 install', () => {
    expect(missingProviderFact('tensorrt', { arch: 'arm64', platform: 'linux' }, undefined).fact).toBe('arm64-prebuilt-cpu-only');
    expect(missingProviderFact('tensorrt', { arch: 'arm64', platform: 'linux' }, '/opt/ort/lib').fact).toBe('library-lacks-provider');
    expect(missingProviderFact('cuda', { arch: 'x64', platform: 'linux' }, undefined).fact).toBe('x64-cuda-not-installed');
    expect(missingProviderFact('cuda', { arch: 'arm64', platform: 'darwin' }, undefined).fact).toBe('not-on-this-platform');
  });
});
