import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { detectGpus, detectResources, parseNvidiaSmi } from '../worker/resources.js';

const MIB = 1024 * 1024;
const scratch = mkdtempSync(join(tmpdir(), 'driftline-nvidia-smi-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

function fakeNvidiaSmi(script: string): string {
  const path = join(scratch, `nvidia-smi-${Math.random().toString(36).slice(2)}`);
  writeFileSync(path, `#!/bin/sh\n${script}\n`);
  chmodSync(path, 0o755);
  return path;
}

describe('training worker - resources', () => {
  it('reads GPU names and memory from nvidia-smi csv lines', () => {
    expect(parseNvidiaSmi('NVIDIA H200, 143771\nNVIDIA H200, 143771\n')).toEqual([
      { name: 'NVIDIA H200', memoryBytes: 143771 * MIB },
      { name: 'NVIDIA H200', memoryBytes: 143771 * MIB },
    ]);
    expect(parseNvidiaSmi('Tesla T4, 15360\r\n')).toEqual([{ name: 'Tesla T4', memoryBytes: 15360 * MIB }]);
    // Orin reports its shared memory; some drivers print fractions.
    expect(parseNvidiaSmi('  Orin (nvgpu) ,  30697.5 ')).toEqual([{ name: 'Orin (nvgpu)', memoryBytes: Math.round(30697.5 * MIB) }]);
  });

  it('keeps commas in a name, and skips what is not a GPU line: warnings, [N/A] memory, blank lines, error text', () => {
    expect(
      parseNvidiaSmi(
        [
          'WARNING: infoROM is corrupted at gpu 0000:65:00.0',
          'NVIDIA A100-SXM4-80GB, 81920',
          'Some GPU, rev 2, 24576',
          'NVIDIA GeForce RTX 3060, [N/A]',
          '',
          'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.',
          ', 1024',
          'GPU, 0',
        ].join('\n'),
      ),
    ).toEqual([
      { name: 'NVIDIA A100-SXM4-80GB', memoryBytes: 81920 * MIB },
      { name: 'Some GPU, rev 2', memoryBytes: 24576 * MIB },
    ]);
    expect(parseNvidiaSmi('')).toEqual([]);
    expect(parseNvidiaSmi('x, 1\n'.repeat(100))).toHaveLength(64);
  });

  it('offers no GPU when nvidia-smi is absent or fails, and says why', async () => {
    expect(await detectGpus(join(scratch, 'no-such-nvidia-smi'))).toEqual({ gpus: [], note: expect.stringContaining('not found') });
    const failing = fakeNvidiaSmi('echo "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver." ; exit 9');
    expect(await detectGpus(failing)).toEqual({ gpus: [], note: expect.stringContaining('failed') });
    const two = fakeNvidiaSmi('echo "NVIDIA L4, 23034"; echo "NVIDIA L4, 23034"');
    expect((await detectGpus(two)).gpus).toHaveLength(2);
  });

  it('counts this host: CPU cores and RAM, GPUs from nvidia-smi', async () => {
    const resources = await detectResources({ nvidiaSmi: fakeNvidiaSmi('echo "NVIDIA H200, 143771"') });
    expect(resources.cpu).toBeGreaterThan(0);
    expect(resources.memoryBytes).toBeGreaterThan(100 * MIB);
    expect(resources.gpus).toEqual([{ name: 'NVIDIA H200', memoryBytes: 143771 * MIB }]);
  });
});
