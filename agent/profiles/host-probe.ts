import { accessSync, constants, readFileSync } from 'node:fs';
import { arch, platform } from 'node:os';
import { delimiter, join } from 'node:path';
import type { HostFacts, HostProbe } from './detect.js';

export interface HostProbePaths {
  deviceTreeModel: string;
  tegraRelease: string;
  /** Folders searched for nvidia-smi. */
  path: string;
}

const DEFAULT_PATHS: HostProbePaths = {
  deviceTreeModel: '/proc/device-tree/model',
  tegraRelease: '/etc/nv_tegra_release',
  path: process.env.PATH ?? '',
};

/** Reads the host's facts from the files and tools that reveal them; nothing is executed. */
export function systemHostProbe(paths: Partial<HostProbePaths> = {}): HostProbe {
  const where = { ...DEFAULT_PATHS, ...paths };
  return {
    async facts(): Promise<HostFacts> {
      const model = readText(where.deviceTreeModel)?.replace(/\0+$/, '').trim();
      const tegra = readText(where.tegraRelease)?.split('\n', 1)[0]?.trim();
      return {
        arch: arch(),
        platform: platform(),
        ...(model ? { deviceTreeModel: model } : {}),
        ...(tegra ? { tegraRelease: tegra } : {}),
        nvidiaSmi: onPath('nvidia-smi', where.path),
      };
    },
  };
}

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

function onPath(command: string, searchPath: string): boolean {
  return searchPath
    .split(delimiter)
    .filter(Boolean)
    .some((dir) => {
      try {
        accessSync(join(dir, command), constants.X_OK);
        return true;
      } catch {
        return false;
      }
    });
}
