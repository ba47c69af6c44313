import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { HostSensors } from '../agent/telemetry/host-sensors.js';

const root = mkdtempSync(join(tmpdir(), 'driftline-host-sensors-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let hosts = 0;

/** A folder laid out like the sysfs of the device being imitated. */
function sysfs(files: Record<string, string>): string {
  const dir = join(root, `sys-${++hosts}`);
  mkdirSync(dir);
  for (const [path, content] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, path)), { recursive: true });
    writeFileSync(join(dir, path), content);
  }
  return dir;
}

function script(name: string, body: string): string {
  const file = join(root, name);
  writeFileSync(file, `#!/bin/sh\n${body}\n`);
  chmodSync(file, 0o755);
  return file;
}

describe('host sensors', () => {
  it('reads a Jetson Orin: GPU load in per mille under the platform bus, the hottest sane thermal zone', async () => {
    const sysRoot = sysfs({
      'class/thermal/thermal_zone0/temp': '48500\n',
      'class/thermal/thermal_zone1/temp': '52250\n',
      'class/thermal/thermal_zone2/temp': '-274000\n', // an unpopulated zone
      'devices/platform/bus@0/17000000.gpu/load': '873\n',
    });
    expect(await new HostSensors({ accelerator: 'nvidia-jetson', sysRoot }).read()).toEqual({ gpuPercent: 87.3, temperatureC: 52.25 });
  });

  it('reads an older Jetson from /sys/devices/gpu.0/load', async () => {
    const sysRoot = sysfs({ 'devices/gpu.0/load': '120\n' });
    expect(await new HostSensors({ accelerator: 'nvidia-jetson', sysRoot }).read()).toEqual({ gpuPercent: 12 });
  });

  it('asks nvidia-smi on a discrete GPU host and reports the busiest and hottest GPU', async () => {
    const sysRoot = sysfs({ 'class/thermal/thermal_zone0/temp': '41000\n' });
    const nvidiaSmi = script('nvidia-smi-two-gpus', 'echo "35, 61"\necho "80, 58"');
    expect(await new HostSensors({ accelerator: 'nvidia-gpu', sysRoot, nvidiaSmi }).read()).toEqual({ gpuPercent: 80, temperatureC: 61 });
  });

  it('leaves out what the hardware does not expose instead of reporting 0', async () => {
    const sysRoot = sysfs({});
    expect(await new HostSensors({ accelerator: 'none', sysRoot }).read()).toEqual({});
    // A broken or hanging nvidia-smi costs the GPU figures, nothing else.
    const failing = script('nvidia-smi-failing', 'echo "NVIDIA-SMI has failed" >&2; exit 9');
    const hanging = script('nvidia-smi-hanging', 'exec sleep 30');
    const cpuWarm = sysfs({ 'class/thermal/thermal_zone0/temp': '45000\n' });
    expect(await new HostSensors({ accelerator: 'nvidia-gpu', sysRoot: cpuWarm, nvidiaSmi: failing }).read()).toEqual({ temperatureC: 45 });
    expect(await new HostSensors({ accelerator: 'nvidia-gpu', sysRoot: cpuWarm, nvidiaSmi: hanging, commandTimeoutMs: 200 }).read()).toEqual({
      temperatureC: 45,
    });
    expect(await new HostSensors({ accelerator: 'nvidia-gpu', sysRoot: cpuWarm, nvidiaSmi: join(root, 'absent') }).read()).toEqual({ temperatureC: 45 });
  });
});
