import { execFile } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';

/** nvidia-smi answers in well under a second on a healthy driver; a wedged one must not stall the sample. */
const NVIDIA_SMI_TIMEOUT_MS = 2_000;

/** What the hardware tells about itself; a field is absent where the hardware does not expose it. */
export interface HostReading {
  /** GPU busy share, 0-100. */
  gpuPercent?: number;
  /** Hottest thermal zone (or the GPU's own sensor), in °C. */
  temperatureC?: number;
}

export interface HostSensorOptions {
  /** From the firmware profile: which GPU interface to ask. */
  accelerator: 'none' | 'nvidia-gpu' | 'nvidia-jetson';
  /** Root of sysfs, replaced in tests by a folder laid out like it. */
  sysRoot?: string;
  /** The nvidia-smi to run on hosts with a discrete NVIDIA GPU. */
  nvidiaSmi?: string;
  /** nvidia-smi can hang on a wedged driver; a sample never waits longer than this. */
  commandTimeoutMs?: number;
}

/**
 * Reads GPU load and temperature the way each kind of device exposes them: Jetson's GPU
 * load in sysfs (per mille), discrete NVIDIA GPUs through nvidia-smi, and the kernel's
 * thermal zones everywhere (millidegrees). A sensor that is missing or unreadable is left
 * out rather than reported as 0, so the fleet can tell "cold and idle" from "unknown".
 */
export class HostSensors {
  private readonly sysRoot: string;

  constructor(private readonly options: HostSensorOptions) {
    this.sysRoot = options.sysRoot ?? '/sys';
  }

  async read(): Promise<HostReading> {
    const reading: HostReading = {};
    const thermal = await this.hottestThermalZone();
    if (thermal !== undefined) reading.temperatureC = thermal;
    if (this.options.accelerator === 'nvidia-jetson') {
      const load = await this.jetsonGpuLoad();
      if (load !== undefined) reading.gpuPercent = load;
    } else if (this.options.accelerator === 'nvidia-gpu') {
      const smi = await this.nvidiaSmi();
      if (smi?.gpuPercent !== undefined) reading.gpuPercent = smi.gpuPercent;
      if (smi?.temperatureC !== undefined) reading.temperatureC = Math.max(reading.temperatureC ?? -Infinity, smi.temperatureC);
    }
    return reading;
  }

  private async hottestThermalZone(): Promise<number | undefined> {
    const dir = join(this.sysRoot, 'class', 'thermal');
    let zones: string[];
    try {
      zones = (await readdir(dir)).filter((z) => z.startsWith('thermal_zone'));
    } catch {
      return undefined;
    }
    let hottest: number | undefined;
    for (const zone of zones) {
      const milli = await readNumber(join(dir, zone, 'temp'));
      // Unpopulated zones report nonsense such as -274000 or 0 on some boards.
      if (milli === undefined || milli <= 0 || milli > 200_000) continue;
      hottest = Math.max(hottest ?? -Infinity, milli / 1000);
    }
    return hottest;
  }

  /** Jetson publishes GPU load in per mille; the node moved between L4T releases. */
  private async jetsonGpuLoad(): Promise<number | undefined> {
    const candidates = [join(this.sysRoot, 'devices', 'gpu.0', 'load'), join(this.sysRoot, 'devices', 'platform', 'gpu.0', 'load')];
    const platform = join(this.sysRoot, 'devices', 'platform');
    try {
      // Orin (L4T R35+): /sys/devices/platform/bus@0/17000000.gpu/load
      for (const bus of (await readdir(platform)).filter((d) => d.startsWith('bus@'))) {
        for (const dev of (await readdir(join(platform, bus))).filter((d) => d.endsWith('.gpu'))) candidates.push(join(platform, bus, dev, 'load'));
      }
    } catch {
      // No platform bus: only the fixed paths apply.
    }
    for (const file of candidates) {
      const perMille = await readNumber(file);
      if (perMille !== undefined && perMille >= 0 && perMille <= 1000) return perMille / 10;
    }
    return undefined;
  }

  private nvidiaSmi(): Promise<HostReading | undefined> {
    const command = this.options.nvidiaSmi ?? 'nvidia-smi';
    return new Promise((resolve) => {
      execFile(
        command,
        ['--query-gpu=utilization.gpu,temperature.gpu', '--format=csv,noheader,nounits'],
        { timeout: this.options.commandTimeoutMs ?? NVIDIA_SMI_TIMEOUT_MS, windowsHide: true },
        (err, stdout) => {
          if (err) return resolve(undefined);
          // One line per GPU: report the busiest and the hottest.
          const rows = stdout
            .trim()
            .split('\n')
            .map((line) => line.split(',').map((v) => Number(v.trim())))
            .filter((row) => row.length === 2 && row.every(Number.isFinite));
          if (rows.length === 0) return resolve(undefined);
          resolve({ gpuPercent: Math.max(...rows.map((r) => r[0]!)), temperatureC: Math.max(...rows.map((r) => r[1]!)) });
        },
      );
    });
  }
}

async function readNumber(file: string): Promise<number | undefined> {
  try {
    const value = Number((await readFile(file, 'utf8')).trim());
    return Number.isFinite(value) ? value : undefined;
  } catch {
    return undefined;
  }
}
