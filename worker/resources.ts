/**
 * What a GPU worker offers the lease queue: its GPUs (names and memory, from nvidia-smi), CPU
 * cores and RAM. A host without nvidia-smi, or one whose nvidia-smi fails (no driver loaded,
 * a container without the device), offers no GPU: it still runs CPU jobs.
 */
import { execFile } from 'node:child_process';
import { availableParallelism, totalmem } from 'node:os';

export interface WorkerGpu {
  name: string;
  memoryBytes: number;
}

export interface WorkerResources {
  gpus: WorkerGpu[];
  cpu: number;
  memoryBytes: number;
}

export const NVIDIA_SMI_ARGS = ['--query-gpu=name,memory.total', '--format=csv,noheader,nounits'] as const;
const NVIDIA_SMI_TIMEOUT_MS = 15_000;
/** More than any host holds; a longer answer is not nvidia-smi's. */
const MAX_GPUS = 64;
const MIB = 1024 * 1024;

/**
 * nvidia-smi's `name, memory.total` lines (MiB, no units, no header) as GPUs. Lines that do not
 * parse (a warning, "[N/A]" memory, an error text on stdout) are skipped, not fatal: a name with
 * commas keeps them (the memory is the last field).
 */
export function parseNvidiaSmi(stdout: string): WorkerGpu[] {
  const gpus: WorkerGpu[] = [];
  for (const raw of stdout.split(/\r?\n/)) {
    const line = raw.trim();
    const comma = line.lastIndexOf(',');
    if (comma <= 0) continue;
    const name = line.slice(0, comma).trim();
    const memory = line.slice(comma + 1).trim();
    if (!/^\d+(\.\d+)?$/.test(memory) || name.length === 0 || name.length > 128) continue;
    const mib = Number(memory);
    if (!Number.isFinite(mib) || mib <= 0) continue;
    gpus.push({ name, memoryBytes: Math.round(mib * MIB) });
    if (gpus.length === MAX_GPUS) break;
  }
  return gpus;
}

/** Runs nvidia-smi (the command can be replaced, for tests and odd installs); no GPU when it is absent or fails. */
export function detectGpus(command = 'nvidia-smi'): Promise<{ gpus: WorkerGpu[]; note?: string }> {
  return new Promise((resolve) => {
    execFile(command, [...NVIDIA_SMI_ARGS], { timeout: NVIDIA_SMI_TIMEOUT_MS, maxBuffer: 1024 * 1024 }, (err, stdout) => {
      if (err) {
        const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? `${command} not found` : `${command} failed: ${err.message.split('\n')[0]}`;
        resolve({ gpus: [], note: `${why}; offering no GPU` });
        return;
      }
      resolve({ gpus: parseNvidiaSmi(stdout) });
    });
  });
}

/** This host's GPUs, CPU cores and RAM. */
export async function detectResources(options: { nvidiaSmi?: string } = {}): Promise<WorkerResources & { note?: string }> {
  const { gpus, note } = await detectGpus(options.nvidiaSmi);
  return { gpus, cpu: availableParallelism(), memoryBytes: totalmem(), ...(note ? { note } : {}) };
}
