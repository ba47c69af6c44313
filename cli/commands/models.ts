import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { refusedWith, UPLOAD_CHUNK_BYTES } from '../../client/operator-client.js';
import { Presets, SingleBar } from 'cli-progress';
import type { Command } from 'commander';
import { systemClock } from '../../common/clock.js';
import { DriftlineError } from '../../common/errors.js';
import { REFERENCE_METADATA_KEY, referenceAndRowsFromCsv, serializeReference, withDriftPolicy } from '../../common/drift/reference.js';
import { referenceWithModelPredictions } from '../releases/prediction-reference.js';
import { assertModelName } from '../../common/ids.js';
import { parseExampleInputsFile } from '../../common/onnx/example-inputs.js';
import {
  DeployModelResponse,
  ModelServiceService,
  ModelVersion,
  UndeployModelResponse,
  type TensorSpec,
  type UploadModelHeader,
} from '../../common/proto/driftline/v1/models.js';
import { readModelSignature } from '../../common/onnx/signature.js';
import { keyFolder, releaseSigner } from '../../common/trust/key-files.js';
import type { Signer } from '../../common/trust/keys.js';
import { buildManifest, peekManifest, type ReleaseManifest, signManifestBytes } from '../../common/trust/manifest.js';
import { ReleaseServiceService, ReleaseStatus } from '../../common/proto/driftline/v1/releases.js';
import { DatasetServiceService } from '../../common/proto/driftline/v1/datasets.js';
import { integer, keyValue, repeated } from '../arguments.js';
import { DEFAULT_KEYS_DIR } from './keys.js';
import { CliError, type Connection, EXIT, usageError } from '../connection.js';
import { withConnection } from '../context.js';
import { bytes, relativeTime, restoreTerminalOnSignal } from '../output.js';

/** ONNX metadata key under which a model records its class names in output order (the demo model does). */
const MODEL_CLASSES_KEY = 'driftline.classes';
const shortSha = (sha256: string): string => sha256.slice(0, 12);
const tensors = (specs: TensorSpec[]): string => specs.map((t) => `${t.name}:${t.type}[${t.shape.map((d) => (d < 0 ? '?' : d)).join(',')}]`).join(' ') || '-';

export function registerModels(program: Command): void {
  const models = program.command('models').description('push, list and deploy ONNX models');

  models
    .command('push')
    .description('upload an ONNX file as the next version of a model')
    .argument('<file>', 'ONNX model file')
    .requiredOption('--name <name>', 'model name')
    .option('--description <text>', 'what changed in this version', '')
    .option('--reference <csv>', 'drift reference data: CSV with a header of feature names and an optional label column')
    .option('--classes <a,b,...>', "class names in the model's output order (for the reference's label column)")
    .option('--drift-policy <json>', "with --reference: this model's drift thresholds and feature importances (JSON file, see README)")
    .option('--sign', 'sign a release manifest for the assigned version (offline, with the release key in --keys-dir) and publish it')
    .option('--keys-dir <dir>', 'key folder from `driftline keys init`', DEFAULT_KEYS_DIR)
    .option('--golden <n>', 'with --sign: golden test vectors to record (from --reference rows, else seeded inputs)', integer(0, 64), 3)
    .option(
      '--examples <file.json>',
      "with --sign: example inputs the model runs on (dims and optional values per input), signed in for the device's warm-up and used for the golden vectors",
    )
    .option('--providers <list>', 'with --sign: execution providers the model needs, any of (e.g. cuda,cpu)', commaList)
    .option('--arch <list>', 'with --sign: device architectures it runs on (x86_64,arm64)', commaList)
    .option('--min-memory <bytes>', 'with --sign: device memory it needs, in bytes', integer(0))
    .option('--flag <flag>', 'with --sign: a profile flag it needs (repeatable)', repeated)
    .option('--job <id>', 'with --sign: lineage, the training job that produced it', '')
    .option('--metric <k=v>', 'with --sign: lineage, an evaluation metric (repeatable)', keyValue)
    .option(
      '--no-raw-capture',
      'mark the model "no raw capture": its captured samples are refused at ingest and no dataset is made of them, so only federated learning trains it (`datasets capture <model> --on` undoes it)',
    )
    .action((file: string, options: PushOptions, command: Command) =>
      withConnection(command, async (connection, output) => {
        assertModelName(options.name);
        await assertNotEmpty(file);
        if (options.driftPolicy && !options.reference) throw new DriftlineError('REQUEST_INVALID', '--drift-policy needs --reference');
        // Everything that can fail offline (keys, reference data, golden vectors) fails before the upload.
        const signing = options.sign ? await prepareSigning(file, options) : undefined;
        const { size, sha256 } = await fingerprint(file);
        const showProgress = Boolean(process.stderr.isTTY) && !output.json;
        const metadata = await referenceMetadata(file, options);
        // A switch of the model, not of a version. Set before the upload when the model exists, so no sample of the new version
        // is ever kept; a new model's right after it (the control plane knows no switch of a model it does not have, and no
        // device runs a model before it is deployed).
        const rawCaptureOff = options.rawCapture === false;
        const captureOff = (): Promise<unknown> => connection.api.service(DatasetServiceService).setRawCapture({ model: options.name, rawCapture: false });
        const captureOffSet = rawCaptureOff
          ? await captureOff().then(
              () => true,
              (err: unknown) => {
                if (refusedWith(err, 'MODEL_NOT_FOUND')) return false;
                throw err;
              },
            )
          : true;
        const captured = rawCaptureOff ? { rawCapture: false } : {};
        const captureNote = rawCaptureOff ? '; raw capture off (federated learning only)' : '';
        // The control plane keeps one version per content: the same bytes again return that version.
        const existing = signing ? undefined : await versionWithBytes(connection, options.name, sha256);
        if (existing) {
          const ignored = ignoredOptions(existing, options, metadata);
          const line = `unchanged: ${existing.name}@v${existing.version} already has these bytes (sha256 ${shortSha(sha256)})`;
          if (ignored.length) {
            throw new CliError(
              'MODEL_UNCHANGED',
              `${line}; ignored ${ignored.join(', ')}: a version never changes (its manifest is signed), so make the next version from these bytes with the corrected metadata: ` +
                `\`driftline models amend ${existing.name}@v${existing.version} ${file}\` with those options`,
              EXIT.conflict,
            );
          }
          output.result({ ...(ModelVersion.toJSON(existing) as object), unchanged: true, ...captured }, () => output.line(line + captureNote));
          return;
        }
        const version = await upload(
          connection,
          file,
          { name: options.name, sizeBytes: size, sha256, description: options.description, metadata },
          showProgress,
        ).catch((err: unknown) => {
          throw notAModel(file, err) ?? err;
        });
        if (!captureOffSet) await captureOff();
        if (!signing) {
          output.result({ ...(ModelVersion.toJSON(version) as object), ...captured }, () =>
            output.line(`pushed ${version.name}@v${version.version} (${bytes(version.sizeBytes)}, sha256 ${version.sha256})${captureNote}`),
          );
          return;
        }
        // The server assigned the version at upload; the manifest is signed for exactly that version.
        const release = await connection.api.service(ReleaseServiceService).publishRelease({
          name: version.name,
          version: version.version,
          envelope: signing.sign(version.version),
        });
        output.result({ ...(ModelVersion.toJSON(version) as object), signedBy: release.keyIds, ...captured }, () =>
          output.line(
            `pushed ${version.name}@v${version.version} (${bytes(version.sizeBytes)}, sha256 ${version.sha256}), signed by ${release.keyIds.map((k) => k.slice(0, 12)).join(', ')}${captureNote}`,
          ),
        );
      }),
    );

  models
    .command('amend')
    .description(
      'make the next version from the bytes of an existing one, with corrected metadata (a version never changes: devices may run it and its release is signed). ' +
        'Nothing is uploaded again; the new version records the one it amends, and so does its signed release',
    )
    .argument('<name@vN>', 'the version to correct, e.g. vibration@v2')
    .argument('[file]', "that version's ONNX file (checked against its sha256); needed with --reference and --sign, which run the model")
    .option('--description <text>', "the new version's description (default: the amended version's)", '')
    .option('--reference <csv>', 'corrected drift reference data: CSV with a header of feature names and an optional label column')
    .option('--classes <a,b,...>', "class names in the model's output order (for the reference's label column)")
    .option('--drift-policy <json>', "with --reference: this model's drift thresholds and feature importances (JSON file, see README)")
    .option(
      '--sign',
      'sign a release manifest for the new version (needed when the amended version is signed); constraints, examples and lineage not given again are taken from its release',
    )
    .option('--keys-dir <dir>', 'key folder from `driftline keys init`', DEFAULT_KEYS_DIR)
    .option('--golden <n>', 'with --sign: golden test vectors to record (from --reference rows, else seeded inputs)', integer(0, 64), 3)
    .option('--examples <file.json>', "with --sign: example inputs the model runs on (default: the amended release's)")
    .option('--providers <list>', "with --sign: execution providers the model needs (default: the amended release's)", commaList)
    .option('--arch <list>', "with --sign: device architectures it runs on (default: the amended release's)", commaList)
    .option('--min-memory <bytes>', "with --sign: device memory it needs, in bytes (default: the amended release's)", integer(0))
    .option('--flag <flag>', "with --sign: a profile flag it needs (repeatable; default: the amended release's)", repeated)
    .option('--job <id>', "with --sign: lineage, the training job that produced it (default: the amended release's)", '')
    .option('--metric <k=v>', "with --sign: lineage, an evaluation metric (repeatable; default: the amended release's)", keyValue)
    .action((target: string, file: string | undefined, options: Omit<PushOptions, 'name'>, command: Command) =>
      withConnection(command, async (connection, output) => {
        const { name, version } = parseVersionRef(target);
        if (options.driftPolicy && !options.reference) throw new DriftlineError('REQUEST_INVALID', '--drift-policy needs --reference');
        if (!file && (options.reference || options.sign))
          throw usageError(`--reference and --sign run the model: pass ${name} v${version}'s ONNX file after ${target}`);
        const source = (await connection.api.service(ModelServiceService).getModel({ name })).versions.find((v) => v.version === version);
        if (!source) throw new CliError('MODEL_NOT_FOUND', `model ${name} has no version ${version} (see \`driftline models get ${name}\`)`, EXIT.notFound);
        if (file) {
          await assertNotEmpty(file);
          const { sha256 } = await fingerprint(file);
          if (sha256 !== source.sha256) {
            throw new CliError(
              'MODEL_CHECKSUM_MISMATCH',
              `${file} (sha256 ${shortSha(sha256)}) is not the file of ${name}@v${version} (sha256 ${shortSha(source.sha256)}): amend corrects metadata; push changed bytes with \`driftline models push\``,
              EXIT.usage,
            );
          }
        }
        // A signed version's devices pin a root and refuse an unsigned successor: sign the amendment too.
        const amendedRelease = await releaseOf(connection, name, version);
        if (amendedRelease && !options.sign) {
          throw usageError(
            `${name}@v${version} is signed, and devices that pin the root refuse an unsigned version: add --sign (and --keys-dir if not ${DEFAULT_KEYS_DIR})`,
          );
        }
        const pushOptions: PushOptions = { ...options, name };
        const signing = options.sign
          ? await prepareSigning(file!, { ...pushOptions, ...(amendedRelease ? { carried: amendedRelease } : {}) }, version)
          : undefined;
        const metadata = file ? await referenceMetadata(file, pushOptions) : {};
        const amended = await connection.api.service(ModelServiceService).amendModel({ name, version, description: options.description, metadata });
        const line = `amended ${name}@v${version} as ${amended.name}@v${amended.version} (same bytes, sha256 ${shortSha(amended.sha256)})`;
        if (!signing) {
          output.result(ModelVersion.toJSON(amended), () => output.line(line));
          return;
        }
        const release = await connection.api.service(ReleaseServiceService).publishRelease({
          name: amended.name,
          version: amended.version,
          envelope: signing.sign(amended.version),
        });
        output.result({ ...(ModelVersion.toJSON(amended) as object), signedBy: release.keyIds }, () =>
          output.line(`${line}, signed by ${release.keyIds.map((k) => k.slice(0, 12)).join(', ')}`),
        );
      }),
    );

  models
    .command('sign')
    .description(
      'sign a pushed version offline with the release key in --keys-dir and publish it: the draft the control plane proposes for it ' +
        '(a released candidate awaiting a signature, or a canary an automation key signed, which this makes fleet-wide), else a manifest built from its ONNX file',
    )
    .argument('<name>', 'model name')
    .argument('<version>', 'the version to sign', integer(1))
    .argument('[file]', "the version's ONNX file (checked against its sha256): needed when the control plane has no draft for it")
    .option('--keys-dir <dir>', 'key folder from `driftline keys init`', DEFAULT_KEYS_DIR)
    .option('--golden <n>', 'with a file: golden test vectors to record (seeded inputs)', integer(0, 64), 3)
    .option('--examples <file.json>', "with a file: example inputs the model runs on, for the device's warm-up and the golden vectors")
    .option('--providers <list>', 'with a file: execution providers the model needs, any of (e.g. cuda,cpu)', commaList)
    .option('--arch <list>', 'with a file: device architectures it runs on (x86_64,arm64)', commaList)
    .option('--min-memory <bytes>', 'with a file: device memory it needs, in bytes', integer(0))
    .option('--flag <flag>', 'with a file: a profile flag it needs (repeatable)', repeated)
    .option('--job <id>', 'with a file: lineage, the training job that produced it', '')
    .option('--metric <k=v>', 'with a file: lineage, an evaluation metric (repeatable)', keyValue)
    .action((name: string, version: number, file: string | undefined, options: Omit<PushOptions, 'name' | 'description'>, command: Command) =>
      withConnection(command, async (connection, output) => {
        assertModelName(name);
        // The key first: a signing problem fails before anything is asked of the control plane.
        const signer = releaseSigner(keyFolder(options.keysDir));
        const stored = (await connection.api.service(ModelServiceService).getModel({ name })).versions.find((v) => v.version === version);
        if (!stored) throw new CliError('MODEL_NOT_FOUND', `model ${name} has no version ${version} (see \`driftline models get ${name}\`)`, EXIT.notFound);
        const before = (await signatureStatuses(connection, [stored])).get(`${name}@${version}`);
        const draft = await releaseDraft(connection, name, version);
        let envelope: Buffer;
        if (file) {
          await assertNotEmpty(file);
          const { sha256 } = await fingerprint(file);
          if (sha256 !== stored.sha256) {
            throw new CliError(
              'MODEL_CHECKSUM_MISMATCH',
              `${file} (sha256 ${shortSha(sha256)}) is not the file of ${name}@v${version} (sha256 ${shortSha(stored.sha256)})`,
              EXIT.usage,
            );
          }
          // Built here from the file; what the draft knows (lineage, constraints, examples, golden vectors) is kept unless given again.
          const signing = await prepareSigning(
            file,
            { ...options, name, description: '', ...(draft ? { carried: draft } : {}) },
            stored.amendsVersion || undefined,
            signer,
          );
          envelope = signing.sign(version);
        } else {
          if (!draft) {
            throw usageError(
              `the control plane has no draft for ${name}@v${version} (it proposes one for released candidates): pass the version's ONNX file, \`driftline models sign ${name} ${version} <file.onnx>\``,
            );
          }
          if (
            draft.name !== stored.name ||
            draft.version !== stored.version ||
            draft.artifact.sha256 !== stored.sha256 ||
            draft.artifact.sizeBytes !== stored.sizeBytes
          ) {
            throw new CliError('RELEASE_MISMATCH', `the control plane's draft does not describe the stored ${name}@v${version}: not signed`, EXIT.conflict);
          }
          // A release key's signature without an audience: fleet-wide.
          envelope = signManifestBytes(buildManifest({ ...draft, audience: undefined }), signer);
        }
        const release = await connection.api.service(ReleaseServiceService).publishRelease({ name, version, envelope });
        const promoted = before?.status === 'canary';
        output.result({ name, version, status: 'signed', signedBy: release.keyIds, promoted, from: draft && !file ? 'draft' : 'file' }, () =>
          output.line(
            `signed ${name}@v${version} with release key ${release.keyIds.map((k) => k.slice(0, 12)).join(', ')}${promoted ? ': the canary is now fleet-wide' : ''}`,
          ),
        );
      }),
    );

  models
    .command('list')
    .description('list models with their latest version')
    .action((_options: unknown, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.api.service(ModelServiceService);
        const response = await client.listModels({});
        const signatures = await signatureStatuses(connection, response.latest);
        output.result({ models: response.latest.map((v) => withSignature(v, signatures)) }, () => {
          const now = systemClock.now();
          output.table(
            ['NAME', 'VERSION', 'SIZE', 'SHA256', 'OPSET', 'SIGNATURE', 'CREATED', 'DESCRIPTION'],
            response.latest.map((v) => [
              v.name,
              v.version,
              bytes(v.sizeBytes),
              shortSha(v.sha256),
              v.opset,
              signatureCell(signatures.get(`${v.name}@${v.version}`)),
              relativeTime(v.createdAtMs, now),
              v.description || '-',
            ]),
            'No models found (push one with `driftline models push model.onnx --name <name>`)',
          );
        });
      }),
    );

  models
    .command('get')
    .description('show every version of a model')
    .argument('<name>', 'model name')
    .action((name: string, _options: unknown, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.api.service(ModelServiceService);
        // The "no raw capture" switch is kept with the samples (`models push --no-raw-capture`, `datasets capture`); on unless set.
        // Left out when the control plane cannot say (one without the datasets service): the versions are what was asked for.
        const [model, rawCapture] = await Promise.all([
          client.getModel({ name }),
          connection.api
            .service(DatasetServiceService)
            .getSampleStats({ model: name })
            .then(
              (stats) => stats.models.find((m) => m.model === name)?.rawCapture ?? true,
              () => undefined,
            ),
        ]);
        const signatures = await signatureStatuses(connection, model.versions);
        output.result(
          { name: model.name, ...(rawCapture === undefined ? {} : { rawCapture }), versions: model.versions.map((v) => withSignature(v, signatures)) },
          () => {
            const now = systemClock.now();
            output.table(
              ['VERSION', 'SIZE', 'SHA256', 'OPSET', 'INPUTS', 'OUTPUTS', 'SIGNATURE', 'CREATED', 'DESCRIPTION'],
              model.versions.map((v) => [
                v.version,
                bytes(v.sizeBytes),
                shortSha(v.sha256),
                v.opset,
                tensors(v.inputs),
                tensors(v.outputs),
                signatureCell(signatures.get(`${v.name}@${v.version}`)),
                relativeTime(v.createdAtMs, now),
                [v.amendsVersion ? `amends v${v.amendsVersion}` : '', v.description].filter(Boolean).join(': ') || '-',
              ]),
            );
            if (rawCapture !== undefined) output.line(`raw capture: ${rawCapture ? 'on' : 'off (no samples kept, no datasets: federated learning only)'}`);
          },
        );
      }),
    );

  models
    .command('deploy')
    .description("add a model to the devices' sets, or replace the version of the same name (every enrolled device unless narrowed); their other models stay")
    .argument('<name>', 'model name')
    .option('--version <n>', 'version to deploy (default: the latest)', integer(1))
    .option('--device <id>', 'target this device (repeatable)', repeated)
    .option('--selector <k=v,...>', 'target devices whose labels match', '')
    .action((name: string, options: { version?: number; device?: string[]; selector: string }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.api.service(ModelServiceService);
        const response = await client.deployModel({
          name,
          version: options.version ?? 0,
          deviceIds: options.device ?? [],
          selector: options.selector,
        });
        if (response.devices === 0) {
          // As `rollout start` refuses with ROLLOUT_NO_TARGETS: a deploy that reached nobody is not a success.
          const target = options.device?.length
            ? `device(s) ${options.device.join(', ')}`
            : options.selector
              ? `selector ${options.selector}`
              : 'the fleet (no device is enrolled)';
          throw new CliError('DEPLOY_NO_TARGETS', `no device matches ${target}: nothing was deployed (see \`driftline devices list\`)`, EXIT.usage);
        }
        output.result(DeployModelResponse.toJSON(response), () =>
          output.line(`deployed ${response.model?.name ?? name}@v${response.model?.version ?? '?'} to ${response.devices} device(s)`),
        );
      }),
    );

  models
    .command('undeploy')
    .description("remove a model from the devices' sets (every enrolled device holding it unless narrowed); their other models keep serving")
    .argument('<name>', 'model name')
    .option('--device <id>', 'only this device (repeatable)', repeated)
    .option('--selector <k=v,...>', 'only devices whose labels match', '')
    .action((name: string, options: { device?: string[]; selector: string }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const client = connection.api.service(ModelServiceService);
        const response = await client.undeployModel({ name, deviceIds: options.device ?? [], selector: options.selector });
        output.result(UndeployModelResponse.toJSON(response), () => output.line(`removed ${name} from ${response.devices} device(s)`));
      }),
    );
}

/**
 * The class order of a reference's label column without --classes: the model's own
 * (metadata `driftline.classes`), or the labels' values when they are class indexes.
 * Names in order of first appearance would measure prediction drift against the wrong
 * classes, so name labels without either are refused.
 */
async function classOrder(modelFile: string, referenceFile: string, csv: string): Promise<string[] | undefined> {
  // A file that is not a model is reported by the upload, in words; here it only has no classes.
  const fromModel = await readFile(modelFile)
    .then((bytes) => readModelSignature(bytes).metadata[MODEL_CLASSES_KEY])
    .catch(() => undefined);
  if (fromModel) return fromModel.split(',').map((c) => c.trim());
  const lines = csv.split(/\r?\n/).filter((l) => l.trim() !== '');
  const labelAt = (lines[0] ?? '')
    .split(',')
    .map((h) => h.trim())
    .indexOf('label');
  if (labelAt < 0) return undefined;
  const labels = lines.slice(1).map((l) => (l.split(',')[labelAt] ?? '').trim());
  if (labels.every((l) => /^\d+$/.test(l))) return Array.from({ length: Math.max(...labels.map(Number)) + 1 }, (_, i) => String(i));
  throw new CliError(
    'DRIFT_REFERENCE_INVALID',
    `${referenceFile} names its classes, but ${modelFile} does not record its output order (metadata ${MODEL_CLASSES_KEY}): pass --classes a,b,... in the order of the model's outputs`,
    EXIT.usage,
  );
}

/** The drift reference metadata entry of a push or an amendment (empty without --reference). */
async function referenceMetadata(file: string, options: PushOptions): Promise<Record<string, string>> {
  if (!options.reference) return {};
  const text = await readFile(options.reference, 'utf8').catch((err: unknown) => {
    throw usageError(`cannot read ${options.reference}: ${(err as Error).message}`);
  });
  const classNames = options.classes ? options.classes.split(',').map((c) => c.trim()) : await classOrder(file, options.reference, text);
  const csv = referenceAndRowsFromCsv(text, classNames ? { classNames } : {});
  // The class and confidence references are the model's own predictions on the reference rows.
  const reference = await referenceWithModelPredictions(await readFile(file), csv.reference, csv.rows);
  return {
    [REFERENCE_METADATA_KEY]: serializeReference(options.driftPolicy ? withDriftPolicy(reference, await readFile(options.driftPolicy, 'utf8')) : reference),
  };
}

/** `name@vN` (or `name@N`) as the CLI writes versions. */
function parseVersionRef(text: string): { name: string; version: number } {
  const match = /^(.+)@v?(\d+)$/.exec(text);
  if (!match || Number(match[2]) < 1) throw usageError(`${text}: name the version to amend as <name>@v<N>, e.g. vibration@v2`);
  return { name: assertModelName(match[1]!), version: Number(match[2]) };
}

/** The signed release of a version, if it has one (none without a trust root, too). */
async function releaseOf(connection: Connection, name: string, version: number): Promise<ReleaseManifest | undefined> {
  try {
    const release = await connection.api.service(ReleaseServiceService).getRelease({ name, version });
    return peekManifest(release.envelope);
  } catch (err) {
    if (refusedWith(err, 'MODEL_NOT_FOUND', 'TRUST_NOT_CONFIGURED')) return undefined;
    throw err;
  }
}

/** The draft the control plane proposes for a version awaiting a signature, if it has one. */
async function releaseDraft(connection: Connection, name: string, version: number): Promise<ReleaseManifest | undefined> {
  try {
    const draft = await connection.api.service(ReleaseServiceService).getReleaseDraft({ name, version });
    return buildManifest(JSON.parse(Buffer.from(draft.manifest).toString('utf8')) as ReleaseManifest);
  } catch (err) {
    // A control plane from before drafts has none: the version is signed from its file.
    if (refusedWith(err, 'MODEL_NOT_FOUND', 'TRUST_NOT_CONFIGURED', 'NOT_IMPLEMENTED')) return undefined;
    if (err instanceof SyntaxError) throw new CliError('RELEASE_INVALID', `the control plane's draft for ${name}@v${version} is not JSON`, EXIT.conflict);
    throw err;
  }
}

/** The signature status of each version, by `name@version`; empty when the control plane cannot say (one from before signature statuses). */
async function signatureStatuses(connection: Connection, versions: readonly ModelVersion[]): Promise<Map<string, ReleaseStatus>> {
  const statuses = new Map<string, ReleaseStatus>();
  for (let i = 0; i < versions.length; i += 1000) {
    const chunk = versions.slice(i, i + 1000).map((v) => ({ name: v.name, version: v.version }));
    try {
      const response = await connection.api.service(ReleaseServiceService).listReleaseStatuses({ versions: chunk });
      for (const s of response.statuses) statuses.set(`${s.name}@${s.version}`, s);
    } catch (err) {
      if (refusedWith(err, 'NOT_IMPLEMENTED', 'TRUST_NOT_CONFIGURED')) return statuses;
      throw err;
    }
  }
  return statuses;
}

const withSignature = (v: ModelVersion, statuses: Map<string, ReleaseStatus>): object => {
  const s = statuses.get(`${v.name}@${v.version}`);
  if (!s) return ModelVersion.toJSON(v) as object;
  const { name: _n, version: _v, ...signature } = ReleaseStatus.toJSON(s) as Record<string, unknown>;
  return { ...(ModelVersion.toJSON(v) as object), signature };
};

/** unsigned / awaiting signature / signed (release key) / canary (automation key, N devices) / refused (code). */
function signatureCell(status: ReleaseStatus | undefined): string {
  if (!status) return '-';
  switch (status.status) {
    case 'awaiting-signature':
      return 'awaiting signature';
    case 'signed':
      return 'signed (release key)';
    case 'canary':
      return `canary (${status.signedBy === 'automation-key' ? 'automation key' : 'release key'}, ${status.audience.length} device${status.audience.length === 1 ? '' : 's'})`;
    case 'refused':
      return `refused (${status.reason})`;
    default:
      return status.status;
  }
}

/** The version of `name` whose bytes hash to sha256, if there is one (none while the model does not exist). */
async function versionWithBytes(connection: Connection, name: string, sha256: string): Promise<ModelVersion | undefined> {
  try {
    const model = await connection.api.service(ModelServiceService).getModel({ name });
    return model.versions.find((v) => v.sha256 === sha256);
  } catch (err) {
    if (refusedWith(err, 'MODEL_NOT_FOUND')) return undefined;
    throw err;
  }
}

/** The push options that would have changed the existing version's metadata. */
function ignoredOptions(existing: ModelVersion, options: PushOptions, metadata: Record<string, string>): string[] {
  const ignored: string[] = [];
  if (options.description && options.description !== existing.description) ignored.push('--description');
  const reference = metadata[REFERENCE_METADATA_KEY];
  if (reference !== undefined && reference !== existing.metadata[REFERENCE_METADATA_KEY])
    ignored.push(options.classes ? '--reference, --classes' : '--reference');
  else if (options.classes && reference === undefined) ignored.push('--classes');
  return ignored;
}

async function assertNotEmpty(file: string): Promise<void> {
  const size = await stat(file).then(
    (s) => (s.isFile() ? s.size : -1),
    (err: unknown) => {
      throw usageError(`cannot read ${file}: ${(err as Error).message}`);
    },
  );
  if (size < 0) throw new CliError('MODEL_INVALID', `${file} is not a file: push an .onnx model file`, EXIT.usage);
  if (size === 0)
    throw new CliError('MODEL_INVALID', `${file} is empty (0 bytes): push an .onnx model file (e.g. exported with torch.onnx.export)`, EXIT.usage);
}

/** The control plane's MODEL_INVALID, said about the file the operator named. */
function notAModel(file: string, err: unknown): CliError | undefined {
  if (!refusedWith(err, 'MODEL_INVALID')) return undefined;
  const what =
    err.message === 'bytes are not an ONNX model' ? 'is not an ONNX model (its bytes do not parse as one)' : `is not a usable ONNX model: ${err.message}`;
  return new CliError('MODEL_INVALID', `${file} ${what}; push an .onnx model file`, EXIT.usage);
}

/** The server recomputes the hash and refuses a mismatch, so a file changed mid-upload is caught. */
async function fingerprint(file: string): Promise<{ size: number; sha256: string }> {
  try {
    const { size } = await stat(file);
    const hash = createHash('sha256');
    await pipeline(createReadStream(file), hash);
    return { size, sha256: hash.digest('hex') };
  } catch (err) {
    throw usageError(`cannot read ${file}: ${(err as Error).message}`);
  }
}

async function upload(connection: Connection, file: string, header: UploadModelHeader, showProgress: boolean): Promise<ModelVersion> {
  const bar = showProgress
    ? new SingleBar(
        { stream: process.stderr, format: 'uploading [{bar}] {percentage}% {sent} of {size} at {rate}, ETA {eta_formatted}' },
        Presets.shades_classic,
      )
    : undefined;
  const startedAt = systemClock.now();
  let sentBytes = 0;
  const progress = () => ({
    sent: bytes(sentBytes),
    size: bytes(header.sizeBytes),
    rate: `${bytes(Math.round(sentBytes / Math.max(0.001, (systemClock.now() - startedAt) / 1000)))}/s`,
  });
  bar?.start(header.sizeBytes, 0, progress());
  const release = bar ? restoreTerminalOnSignal(() => bar.stop()) : () => undefined;

  // A read failure cancels the upload and is what the operator sees (a usage error naming the file).
  async function* chunks(): AsyncGenerator<Buffer> {
    try {
      yield* createReadStream(file, { highWaterMark: UPLOAD_CHUNK_BYTES }) as AsyncIterable<Buffer>;
    } catch (err) {
      throw usageError(`cannot read ${file}: ${(err as Error).message}`);
    }
  }
  try {
    return await connection.api.uploadModel(header, chunks(), {
      onChunk: (n) => {
        sentBytes += n;
        bar?.increment(n, progress());
      },
    });
  } finally {
    release();
    bar?.stop();
  }
}

interface PushOptions {
  name: string;
  description: string;
  reference?: string;
  classes?: string;
  driftPolicy?: string;
  sign?: boolean;
  keysDir: string;
  golden: number;
  examples?: string;
  providers?: string[];
  arch?: string[];
  minMemory?: number;
  flag?: string[];
  job: string;
  metric?: Record<string, string>;
  /** false with --no-raw-capture (commander's default for a --no- option is true). */
  rawCapture?: boolean;
}

function commaList(value: string): string[] {
  return value
    .split(',')
    .map((v) => v.trim())
    .filter(Boolean);
}

/**
 * Builds the manifest (all but the version) and loads the release key before anything is
 * uploaded; `sign(version)` then signs it for the version the server assigned.
 * `carried`: the amended version's release, whose constraints, examples, lineage (and, without
 * --reference, reference and golden vectors) an amendment keeps unless given again.
 */
async function prepareSigning(
  file: string,
  options: PushOptions & { carried?: ReleaseManifest },
  amendsVersion?: number,
  loadedSigner?: Signer,
): Promise<{ sign(version: number): Buffer }> {
  const signer = loadedSigner ?? releaseSigner(keyFolder(options.keysDir));
  const carried = options.carried;
  let modelBytes: Buffer;
  let referenceCsv: string | undefined;
  let examplesJson: string | undefined;
  try {
    modelBytes = await readFile(file);
    referenceCsv = options.reference ? await readFile(options.reference, 'utf8') : undefined;
    examplesJson = options.examples ? await readFile(options.examples, 'utf8') : undefined;
  } catch (err) {
    throw usageError(`cannot read ${(err as NodeJS.ErrnoException).path ?? file}: ${(err as Error).message}`);
  }
  const metrics = Object.fromEntries(
    Object.entries(options.metric ?? {}).map(([k, v]) => {
      const n = Number(v);
      if (!Number.isFinite(n)) throw usageError(`--metric ${k}=${v}: the value must be a number`);
      return [k, n];
    }),
  );
  // Loaded only here: onnxruntime runs the model to record its golden vectors.
  const { buildReleaseManifest } = await import('../releases/manifest-builder.js');
  const draft = await buildReleaseManifest({
    bytes: modelBytes,
    name: options.name,
    version: 1,
    createdAtMs: systemClock.now(),
    referenceCsv,
    goldenVectors: options.golden,
    ...(examplesJson !== undefined
      ? { examples: parseExampleInputsFile(examplesJson, options.examples!) }
      : carried?.examples
        ? { examples: carried.examples }
        : {}),
    constraints: {
      providers: options.providers ?? carried?.constraints.providers ?? [],
      arch: options.arch ?? carried?.constraints.arch ?? [],
      minMemoryBytes: options.minMemory ?? carried?.constraints.minMemoryBytes ?? 0,
      flags: options.flag ?? carried?.constraints.flags ?? [],
    },
    lineage: {
      job: options.job || carried?.lineage.job || '',
      metrics: options.metric ? metrics : (carried?.lineage.metrics ?? {}),
      ...(carried ? { parentVersion: carried.lineage.parentVersion } : {}),
      ...(amendsVersion ? { amendsVersion } : {}),
    },
  });
  // Without a corrected reference, an amendment keeps the amended release's reference and its golden vectors (same bytes, same outputs).
  const kept = carried && !options.reference ? { reference: carried.reference, golden: carried.golden, dataSha256: carried.lineage.dataSha256 } : undefined;
  const manifest = kept
    ? { ...draft, ...(kept.reference ? { reference: kept.reference } : {}), golden: kept.golden, lineage: { ...draft.lineage, dataSha256: kept.dataSha256 } }
    : draft;
  // A push descends from the version before it; an amendment from what the amended version descends from.
  const parentOf = (version: number): number => manifest.lineage.parentVersion || (amendsVersion ? amendsVersion - 1 : version - 1);
  return {
    sign: (version) => signManifestBytes(buildManifest({ ...manifest, version, lineage: { ...manifest.lineage, parentVersion: parentOf(version) } }), signer),
  };
}
