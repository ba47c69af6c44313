import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { arch, tmpdir } from 'node:os';
import { join } from 'node:path';
import { asDriftlineError, DriftlineError, type ErrorCode } from '../common/errors.js';
import { FALLBACK_PROFILES, loadFirmwareProfiles, type FirmwareProfile } from '../common/firmware-profile.js';
import { sha256Hex } from '../common/hashing.js';
import { silentLogger } from '../common/logger.js';
import { Stream } from '../common/proto/driftline/v1/device_link.js';
import { DRIFTLINE_VERSION } from '../common/version.js';
import { SqliteBuffer } from './buffer/sqlite-buffer.js';
import { agentPaths } from './paths.js';
import { candidateExamples, parseExampleInputsFile, type ExampleInput, type ExampleInputs } from '../common/onnx/example-inputs.js';
import { datatypeOf } from './inference/datatypes.js';
import { InferenceEngine, type InferInput, type InferResult, type ActiveModelInfo } from './inference/engine.js';
import { createOnnxRuntime } from './inference/onnxruntime-runtime.js';
import { isSingleExecutable, prepareNativeAddons, readEmbeddedAsset } from './native-addons.js';

/** The SEA asset key of the demo model the build embeds for the selftest. */
export const SELFTEST_MODEL_ASSET = 'selftest/demo-model.onnx';

export interface SelftestCheck {
  name: string;
  ok: boolean;
  detail: string;
  code?: ErrorCode;
}

export interface SelftestReport {
  ok: boolean;
  version: string;
  packaged: boolean;
  /** The runtime it ran on: the Node the binary carries when packaged. */
  runtime: { node: string; platform: string; arch: string };
  checks: SelftestCheck[];
}

export interface SelftestOptions {
  /** Open (or create) the buffer here; a temporary folder otherwise. */
  dataDir?: string | undefined;
  /** A model file instead of the embedded demo model. */
  model?: string | undefined;
  /** A firmware profile name, or auto. */
  profile?: string | undefined;
  /** A JSON file of example inputs for --model (the format `driftline models push --examples` takes). */
  examples?: string | undefined;
}

/** A row of the demo model's features (the README's example request). */
const SAMPLE_ROW = [4.1, 12.0, 2.9, 3.2, 2.5, 0.9, 0.4, 41.0];

/**
 * Checks an installation the way the agent will use it: the native addons load, the
 * firmware profile resolves for this machine, a model runs one inference through the same
 * engine and provider chain the agent uses, and the buffer opens. Every check runs even
 * when an earlier one failed, so one run shows everything that is wrong.
 */
export async function runSelftest(options: SelftestOptions = {}): Promise<SelftestReport> {
  const packaged = isSingleExecutable();
  const checks: SelftestCheck[] = [];
  const scratch = mkdtempSync(join(tmpdir(), 'driftline-selftest-'));
  const check = async (name: string, fn: () => Promise<string> | string): Promise<void> => {
    try {
      checks.push({ name, ok: true, detail: await fn() });
    } catch (err) {
      const e = asDriftlineError(err);
      checks.push({ name, ok: false, detail: e.message.split('\n')[0]!, code: e.code });
    }
  };
  let profile: FirmwareProfile | undefined;
  try {
    await check('native addons', () => {
      if (!packaged) return 'not packaged: loaded from node_modules';
      const info = prepareNativeAddons();
      return `${info.extracted ? 'extracted to' : 'verified in'} ${info.dir} (${info.files.length} files)`;
    });
    await check('firmware profile', () => {
      const profiles = loadFirmwareProfiles();
      const hostArch = arch() === 'arm64' ? 'arm64' : 'x86_64';
      const name = !options.profile || options.profile === 'auto' ? FALLBACK_PROFILES[hostArch] : options.profile;
      profile = profiles.get(name);
      if (!profile) throw new DriftlineError('PROFILE_INVALID', `no firmware profile named ${name} (have: ${[...profiles.keys()].join(', ')})`);
      if (profile.arch !== hostArch) throw new DriftlineError('PROFILE_INVALID', `profile ${name} is for ${profile.arch}, this machine is ${hostArch}`);
      return `${name} (${profiles.size} profiles valid; providers ${profile.inference.providers.map((p) => p.name).join(' > ')})`;
    });
    await check('inference', async () => {
      const bytes = options.model ? readFileSync(options.model) : readEmbeddedAsset(SELFTEST_MODEL_ASSET);
      if (!bytes) throw new DriftlineError('MODEL_NOT_FOUND', 'no demo model is bundled outside the packaged binary; pass --model <file.onnx>');
      const path = join(scratch, 'selftest.onnx');
      writeFileSync(path, bytes);
      const providers = profile?.inference.providers.map((p) => p.name) ?? ['cpu'];
      const engine = InferenceEngine.create({ runtime: createOnnxRuntime({ logger: silentLogger() }), providers, logger: silentLogger() });
      try {
        const examples = options.examples ? parseExampleInputsFile(readFileSync(options.examples, 'utf8'), options.examples) : undefined;
        const info = await engine.load({ name: 'selftest', version: 1, path, sha256: sha256Hex(bytes), ...(examples ? { examples } : {}) });
        const result = await inferExample(engine, info, examples);
        const outputs = result.outputs.map((o) => `${o.name}[${o.shape.join('x')}]`).join(', ');
        const probabilities = result.outputs.find((o) => o.name === 'probabilities');
        if (probabilities) {
          const sum = Array.from(probabilities.data as ArrayLike<number>).reduce((a, b) => a + b, 0);
          if (!(Math.abs(sum - 1) < 1e-3)) throw new DriftlineError('INFERENCE_FAILED', `probabilities sum to ${sum}, not 1`);
        }
        return `${options.model ?? 'bundled demo model'} on ${result.provider}: ${outputs}`;
      } finally {
        await engine.shutdown({ graceMs: 1000 });
      }
    });
    await check('buffer', async () => {
      const dir = options.dataDir ?? join(scratch, 'data');
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      const file = agentPaths(dir).buffer;
      const buffer = SqliteBuffer.open({ file, synchronous: 'FULL' });
      try {
        if (options.dataDir) return `${file}: boot ${buffer.boot}, ${buffer.depth()} records waiting`;
        // A scratch buffer can take a round trip: enqueue, read back, acknowledge.
        await buffer.enqueue({ stream: Stream.STREAM_EVENTS, timeMs: Date.now(), body: new Uint8Array([1, 2, 3]) });
        const [record] = buffer.peek(1, 0);
        if (!record) throw new DriftlineError('STORE_FAILED', 'a record written to the buffer could not be read back');
        buffer.acknowledge([{ boot: record.boot, first: record.seq, last: record.seq }]);
        if (buffer.depth() !== 0) throw new DriftlineError('STORE_FAILED', 'an acknowledged record stayed in the buffer');
        return `${file}: write, read back and acknowledge ok`;
      } finally {
        await buffer.close();
      }
    });
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  const runtime = { node: process.versions.node, platform: process.platform, arch: process.arch };
  return { ok: checks.every((c) => c.ok), version: DRIFTLINE_VERSION, packaged, runtime, checks };
}

/**
 * One inference the way the model's warm-up ran it: on its example inputs, else on the first
 * candidate size for its dynamic dims that runs; the demo model gets the README's sample row.
 */
async function inferExample(engine: InferenceEngine, info: ActiveModelInfo, examples: ExampleInputs | undefined): Promise<InferResult> {
  const tries = examples ?? candidateExamples(info.inputs);
  let lastError: unknown;
  for (const example of tries) {
    try {
      return await engine.infer('selftest', toInferInputs(example, info));
    } catch (err) {
      lastError = err;
      if (examples) break;
    }
  }
  throw lastError;
}

function toInferInputs(example: ExampleInput, info: ActiveModelInfo): InferInput[] {
  return info.inputs.map((spec) => {
    const tensor = Object.hasOwn(example, spec.name) ? example[spec.name] : undefined;
    if (!tensor) throw new DriftlineError('REQUEST_INVALID', `the example inputs give no ${spec.name}, which the model needs`);
    const datatype = datatypeOf(spec.type) ?? spec.type;
    const size = tensor.dims.reduce((a, b) => a * b, 1);
    const zero = datatype === 'BYTES' ? '' : datatype === 'BOOL' ? false : 0;
    const data =
      tensor.data ?? (info.inputs.length === 1 && datatype === 'FP32' && size === SAMPLE_ROW.length ? SAMPLE_ROW : new Array<unknown>(size).fill(zero));
    return { name: spec.name, datatype, shape: tensor.dims, data };
  });
}

/** The report as a table people read at a terminal, ending with PASS or FAIL. */
export function formatSelftest(report: SelftestReport): string {
  const width = Math.max(...report.checks.map((c) => c.name.length));
  const lines = [
    `driftline-agent ${report.version} selftest (${report.packaged ? 'packaged binary' : 'from source'}, ${report.runtime.platform}-${report.runtime.arch}, node ${report.runtime.node})`,
  ];
  for (const c of report.checks) lines.push(`  ${c.ok ? 'ok  ' : 'FAIL'}  ${c.name.padEnd(width)}  ${c.code ? `[${c.code}] ` : ''}${c.detail}`);
  const failed = report.checks.filter((c) => !c.ok).length;
  lines.push(report.ok ? 'selftest: PASS' : `selftest: FAIL (${failed} of ${report.checks.length} checks failed)`);
  return `${lines.join('\n')}\n`;
}
