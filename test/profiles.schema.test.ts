import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse as parseYaml, stringify as toYaml } from 'yaml';
import { DriftlineError } from '../common/errors.js';
import {
  FALLBACK_PROFILES,
  SHIPPED_PROFILES_DIR,
  loadFirmwareProfiles,
  parseFirmwareProfile,
  readFirmwareProfile,
  type FirmwareProfile,
} from '../common/firmware-profile.js';

const SHIPPED = ['generic-arm64-cpu', 'generic-x86_64-cpu', 'jetson-agx-orin-jp6', 'jetson-orin-nano-jp6', 'raspberry-pi-5', 'x86_64-nvidia-cuda12'];

const scratch = mkdtempSync(join(tmpdir(), 'driftline-profiles-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

function thrown(work: () => unknown): DriftlineError {
  try {
    work();
  } catch (err) {
    expect(err).toBeInstanceOf(DriftlineError);
    return err as DriftlineError;
  }
  throw new Error('expected an error');
}

const generic = (): Record<string, unknown> =>
  parseYaml(readFileSync(join(SHIPPED_PROFILES_DIR, 'generic-x86_64-cpu.yaml'), 'utf8')) as Record<string, unknown>;

describe('firmware profiles', () => {
  const profiles = loadFirmwareProfiles();

  it('profiles - ships a valid profile for each supported device class, named as its file', () => {
    expect([...profiles.keys()]).toEqual(SHIPPED);
    expect(
      readdirSync(SHIPPED_PROFILES_DIR)
        .filter((f) => f.endsWith('.yaml'))
        .sort(),
    ).toEqual(SHIPPED.map((n) => `${n}.yaml`));
  });

  it.each(SHIPPED)('profiles - %s gives every setting the agent applies', (name) => {
    const profile = profiles.get(name)!;
    expect(profile.name).toBe(name);
    expect(profile.inference.providers.at(-1)).toEqual({ name: 'cpu' });
    expect(profile.inference.batching.defaultBatch).toBeLessThanOrEqual(profile.inference.batching.maxBatch);
    for (const bytes of [profile.inference.memoryBudget, profile.inference.maxModelBytes, profile.buffer.diskBudget]) expect(bytes).toBeGreaterThan(0);
    expect(profile.telemetry.heartbeat).toMatch(/\S+( \S+){4,5}/);
  });

  it('profiles - keeps the generic CPU names the agent reports for unknown hardware', () => {
    expect(FALLBACK_PROFILES).toEqual({ x86_64: 'generic-x86_64-cpu', arm64: 'generic-arm64-cpu' });
    for (const arch of ['x86_64', 'arm64'] as const) {
      const fallback = profiles.get(FALLBACK_PROFILES[arch])!;
      expect(fallback).toMatchObject({ arch, accelerator: 'none' });
      // Never detected: chosen only by name or when nothing else matches.
      expect(fallback.detect).toBeUndefined();
    }
  });

  it('profiles - chains TensorRT, CUDA, CPU on Jetson with a JetPack onnxruntime path, and on x86_64 with CUDA 12', () => {
    const chain = (p: FirmwareProfile) => p.inference.providers.map((x) => x.name);
    for (const name of ['jetson-orin-nano-jp6', 'jetson-agx-orin-jp6']) {
      const jetson = profiles.get(name)!;
      expect(jetson).toMatchObject({ arch: 'arm64', accelerator: 'nvidia-jetson', onnxruntime: { libraryPath: expect.any(String) } });
      expect(chain(jetson)).toEqual(['tensorrt', 'cuda', 'cpu']);
      expect(jetson.inference.providers[0]).toMatchObject({
        name: 'tensorrt',
        deviceId: 0,
        fp16: true,
        workspaceSize: expect.any(Number),
        engineCacheDir: expect.any(String),
      });
    }
    const cuda = profiles.get('x86_64-nvidia-cuda12')!;
    expect(cuda).toMatchObject({ arch: 'x86_64', accelerator: 'nvidia-gpu', onnxruntime: {} });
    expect(chain(cuda)).toEqual(['tensorrt', 'cuda', 'cpu']);
    expect(chain(profiles.get('raspberry-pi-5')!)).toEqual(['cpu']);
  });

  it('profiles - parses sizes and durations into bytes and milliseconds', () => {
    const nano = profiles.get('jetson-orin-nano-jp6')!;
    expect(nano.inference.maxModelBytes).toBe(512 * 1024 ** 2);
    expect(nano.inference.batching.maxQueueDelay).toBe(2);
  });

  const broken: Array<[string, (p: Record<string, unknown>) => void, string]> = [
    ['an unknown provider', (p) => ((p.inference as { providers: unknown[] }).providers = [{ name: 'rocm' }]), 'inference.providers.0.name'],
    ['a provider listed twice', (p) => ((p.inference as { providers: unknown[] }).providers = [{ name: 'cpu' }, { name: 'cpu' }]), 'inference.providers'],
    [
      'a default batch above the maximum',
      (p) => ((p.inference as { batching: Record<string, unknown> }).batching.defaultBatch = 64),
      'inference.batching.defaultBatch',
    ],
    ['a size without a unit', (p) => ((p.inference as Record<string, unknown>).maxModelBytes = '2 gigs'), 'inference.maxModelBytes'],
    ['an unknown field', (p) => (p.gpuClock = 1300), '(root)'],
    ['a missing telemetry schedule', (p) => delete p.telemetry, 'telemetry'],
    ['an option another provider has', (p) => ((p.inference as { providers: unknown[] }).providers = [{ name: 'cpu', fp16: true }]), 'inference.providers.0'],
  ];

  it.each(broken)('profiles - refuses %s with PROFILE_INVALID naming the field', (_, breakIt, path) => {
    const input = generic();
    breakIt(input);
    const err = thrown(() => parseFirmwareProfile(input, 'test'));
    expect(err.code).toBe('PROFILE_INVALID');
    expect((err.details?.problems as string[]).some((p) => p.startsWith(`${path}:`))).toBe(true);
  });

  it('profiles - refuses a file whose profile name differs from its file name, and a folder without the fallbacks', () => {
    const dir = join(scratch, 'mismatch');
    rmSync(dir, { recursive: true, force: true });
    writeFileSync(join(scratch, 'edge-box.yaml'), toYaml({ ...generic(), name: 'other-box' }));
    expect(thrown(() => readFirmwareProfile(join(scratch, 'edge-box.yaml'))).code).toBe('PROFILE_INVALID');

    const only = mkdtempSync(join(scratch, 'only-'));
    writeFileSync(join(only, 'generic-x86_64-cpu.yaml'), toYaml(generic()));
    expect(thrown(() => loadFirmwareProfiles(only)).code).toBe('PROFILE_INVALID');
    writeFileSync(join(only, 'generic-arm64-cpu.yaml'), toYaml({ ...generic(), name: 'generic-arm64-cpu', arch: 'arm64' }));
    expect([...loadFirmwareProfiles(only).keys()]).toEqual(['generic-arm64-cpu', 'generic-x86_64-cpu']);
    writeFileSync(join(only, 'bad.yaml'), 'name: [unclosed');
    expect(thrown(() => loadFirmwareProfiles(only)).code).toBe('PROFILE_INVALID');
  });
});
