import type { TrainingJob } from './job-state-machine.js';
import type { TrainingWorker } from './ports.js';

/**
 * Which queued job a worker gets: the lease queue is the only scheduling Driftline does. Pure,
 * so the engine runs it inside the unit of work that takes the job.
 */

/** Why a worker cannot run a job, or undefined when it can. */
export function unfit(job: TrainingJob, worker: TrainingWorker): string | undefined {
  const { trainer, resources } = job.spec;
  if (!worker.trainers.includes(trainer)) return `no trainer ${trainer}`;
  const gpusWithMemory = worker.gpus.filter((g) => g.memoryBytes >= resources.gpuMemoryBytes).length;
  if (gpusWithMemory < resources.gpus) return `needs ${resources.gpus} GPU(s) with ${resources.gpuMemoryBytes} bytes each, has ${gpusWithMemory}`;
  if (resources.cpu > worker.cpu) return `needs ${resources.cpu} CPU cores, has ${worker.cpu}`;
  if (resources.memoryBytes > worker.memoryBytes) return `needs ${resources.memoryBytes} bytes of memory, has ${worker.memoryBytes}`;
  return undefined;
}

/**
 * The oldest queued job the worker can run whose model has no job leased, running or being
 * evaluated (at most one at a time per model: two candidates of one parent would race to the gate).
 */
export function pickJob(queued: readonly TrainingJob[], worker: TrainingWorker, busyModels: ReadonlySet<string>): TrainingJob | undefined {
  return queued.find((job) => !busyModels.has(job.spec.model) && unfit(job, worker) === undefined);
}
