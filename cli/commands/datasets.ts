import { createWriteStream, mkdirSync, renameSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { Presets, SingleBar } from 'cli-progress';
import { Option, type Command } from 'commander';
import { x as extractTar } from 'tar';
import type { ByteSink } from '../../client/operator-client.js';
import { systemClock } from '../../common/clock.js';
import { datasetManifestSchema, readSnapshotFolder, SPLITS, type DatasetManifest } from '../../common/datasets/snapshot-layout.js';
import { DatasetServiceService, type Dataset, type ModelSampleStats } from '../../common/proto/driftline/v1/datasets.js';
import { durationMs, integer } from '../arguments.js';
import { withConnection } from '../context.js';
import { bytes, relativeTime, restoreTerminalOnSignal } from '../output.js';

/** Feature statistics `datasets show` prints (the manifest holds up to 256; --json has them all). */
const SHOWN_FEATURES = 10;

export function registerDatasets(program: Command): void {
  const datasets = program.command('datasets').description('captured samples and their immutable, content-addressed snapshots (driftline-dataset/1)');

  datasets
    .command('create')
    .description('snapshot the captured samples of a model, split train/validation/test by a hash of each sample id')
    .requiredOption('--model <name>', 'the model whose samples it holds')
    .option('--version <n>', 'only samples this version answered (default: every version)', integer(1))
    .option('--selector <labels>', 'only samples from devices whose labels match, e.g. cohort=plant-3')
    .option('--since <duration>', 'only samples captured this long ago or later, e.g. 7d', durationMs)
    .option('--labelled-only', 'only samples whose label came back through /feedback')
    .addOption(
      new Option(
        '--replay-parent [dataset]',
        'include the training split of this dataset, or (no value) of the one the parent version (--version, or the latest) was trained on',
      ),
    )
    .action(
      (
        options: { model: string; version?: number; selector?: string; since?: number; labelledOnly?: boolean; replayParent?: string | boolean },
        command: Command,
      ) =>
        withConnection(command, async (connection, output) => {
          const dataset = await connection.api.service(DatasetServiceService).createDataset({
            model: options.model,
            version: options.version ?? 0,
            selector: options.selector ?? '',
            sinceMsAgo: options.since ?? 0,
            labelledOnly: options.labelledOnly ?? false,
            replayParentId: typeof options.replayParent === 'string' ? options.replayParent : '',
            replayParent: options.replayParent === true,
          });
          const manifest = manifestOf(dataset);
          output.result(datasetJson(dataset, manifest), () => {
            output.line(`dataset ${dataset.id}: ${dataset.rows} rows of ${dataset.model}, tar ${bytes(dataset.sizeBytes)} sha256 ${dataset.sha256}`);
            printSplits(output, manifest);
          });
        }),
    );

  datasets
    .command('list')
    .description('dataset snapshots, newest first')
    .option('--model <name>', 'only this model')
    .option('--limit <n>', 'at most this many (default 100)', integer(1, 1000))
    .option('--page-token <token>', 'the next page, as the previous one printed it')
    .action((options: { model?: string; limit?: number; pageToken?: string }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const page = await connection.api
          .service(DatasetServiceService)
          .listDatasets({ model: options.model ?? '', limit: options.limit ?? 0, pageToken: options.pageToken ?? '' });
        const now = systemClock.now();
        output.result({ datasets: page.datasets.map((d) => datasetJson(d, manifestOf(d))), nextPageToken: page.nextPageToken || null }, () => {
          output.table(
            ['ID', 'MODEL', 'VERSIONS', 'ROWS', 'LABELLED', 'SIZE', 'CREATED', 'PARENT'],
            page.datasets.map((d) => {
              const m = manifestOf(d);
              return [
                d.id.slice(0, 12),
                d.model,
                m.versions.join(','),
                d.rows,
                SPLITS.reduce((n, s) => n + m.splits[s].labelled, 0),
                bytes(d.sizeBytes),
                relativeTime(d.createdAtMs, now),
                m.parent?.id.slice(0, 12) ?? '-',
              ];
            }),
            'No datasets found',
          );
          if (page.nextPageToken) output.line(`more: --page-token ${page.nextPageToken}`);
        });
      }),
    );

  datasets
    .command('show <id>')
    .description('one snapshot: rows and label balance per split, feature statistics')
    .action((id: string, _options: unknown, command: Command) =>
      withConnection(command, async (connection, output) => {
        const dataset = await connection.api.service(DatasetServiceService).getDataset({ id });
        const manifest = manifestOf(dataset);
        output.result({ ...datasetJson(dataset, manifest), manifest }, () => {
          output.line(`dataset ${dataset.id}`);
          output.line(
            `model ${manifest.model} versions ${manifest.versions.join(',')}, input ${manifest.input.name} [${manifest.input.shape.join(', ')}], ${manifest.classes} classes`,
          );
          output.line(`tar ${bytes(dataset.sizeBytes)} sha256 ${dataset.sha256}${manifest.parent ? `, replays ${manifest.parent.id}` : ''}`);
          printSplits(output, manifest);
          output.table(
            ['FEATURE', 'MEAN', 'STD', 'MIN', 'MAX'],
            manifest.features.slice(0, SHOWN_FEATURES).map((f) => [f.index, fixed(f.mean), fixed(f.std), fixed(f.min), fixed(f.max)]),
            'No feature statistics (the training split is empty)',
          );
          if (manifest.features.length > SHOWN_FEATURES) output.line(`(${manifest.features.length - SHOWN_FEATURES} more features in --json)`);
        });
      }),
    );

  datasets
    .command('export <id>')
    .description('download a snapshot: a .tar file, or a folder it is extracted into (verified against its manifest)')
    .requiredOption('--out <path>', 'FILE.tar, or a folder')
    .action((id: string, options: { out: string }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const asTar = options.out.endsWith('.tar');
        const partial = `${options.out}.partial`;
        if (asTar) mkdirSync(dirname(options.out), { recursive: true });
        else mkdirSync(options.out, { recursive: true });
        const sink: ByteSink & { once(event: string, listener: (...args: unknown[]) => void): unknown } = asTar
          ? createWriteStream(partial)
          : extractTar({ cwd: options.out, strict: true });
        const bar =
          Boolean(process.stderr.isTTY) && !output.json
            ? new SingleBar(
                { stream: process.stderr, format: 'downloading [{bar}] {percentage}% {value}/{total} bytes, ETA {eta_formatted}' },
                Presets.shades_classic,
              )
            : undefined;
        const release = bar ? restoreTerminalOnSignal(() => bar.stop()) : () => undefined;
        const closed = new Promise<void>((resolve, reject) => {
          sink.once('close', () => resolve());
          sink.once('error', reject);
        });
        let result: { sha256: string; sizeBytes: number };
        try {
          result = await connection.api.exportDataset(id, sink, { onStart: (size) => bar?.start(size, 0), onChunk: (n) => bar?.increment(n) });
          await closed;
        } catch (err) {
          if (asTar) rmSync(partial, { force: true });
          throw err;
        } finally {
          release();
          bar?.stop();
        }
        if (asTar) renameSync(partial, options.out);
        else readSnapshotFolder(options.out);
        output.result({ id, out: options.out, sha256: result.sha256, sizeBytes: result.sizeBytes }, () =>
          output.line(`dataset ${id} written to ${options.out} (${bytes(result.sizeBytes)}, sha256 ${result.sha256})`),
        );
      }),
    );

  datasets
    .command('samples')
    .description('captured samples kept per model, and those dropped (retention, budget) or refused at ingest')
    .option('--model <name>', 'only this model')
    .action((options: { model?: string }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const stats = await connection.api.service(DatasetServiceService).getSampleStats({ model: options.model ?? '' });
        output.result(stats, () => {
          output.table(
            ['MODEL', 'SAMPLES', 'LABELLED', 'BYTES', 'DROPPED (AGE)', 'DROPPED (BUDGET)', 'REFUSED', 'RAW CAPTURE'],
            stats.models.map((m: ModelSampleStats) => [
              m.model,
              m.rows,
              m.labelled,
              bytes(m.bytes),
              m.droppedRetention,
              m.droppedBudget,
              Object.entries(m.refused)
                .map(([code, n]) => `${code} ${n}`)
                .join(', ') || '-',
              m.rawCapture ? 'on' : 'off',
            ]),
            'No captured samples',
          );
          output.line(
            `${stats.rows} samples, ${bytes(stats.bytes)} of ${bytes(stats.budgetBytes)} budget, ${stats.pendingLabels} labels waiting for their sample`,
          );
        });
      }),
    );

  datasets
    .command('capture <model>')
    .description('turn raw capture of a model on or off; off: its samples are refused and only federated learning trains it')
    .addOption(new Option('--off', 'refuse its samples (no raw capture)').conflicts('on'))
    .addOption(new Option('--on', 'keep its samples again'))
    .action((model: string, options: { off?: boolean; on?: boolean }, command: Command) =>
      withConnection(command, async (connection, output) => {
        const policy = await connection.api.service(DatasetServiceService).setRawCapture({ model, rawCapture: !options.off });
        output.result(policy, () => output.line(`${model}: raw capture ${policy.rawCapture ? 'on' : 'off (federated learning only)'}`));
      }),
    );
}

const fixed = (v: number): string => (Math.abs(v) >= 1e5 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(3) : v.toFixed(4));

function manifestOf(dataset: Dataset): DatasetManifest {
  return datasetManifestSchema.parse(JSON.parse(dataset.manifestJson));
}

function datasetJson(dataset: Dataset, manifest: DatasetManifest) {
  return {
    id: dataset.id,
    model: dataset.model,
    versions: manifest.versions,
    rows: dataset.rows,
    sha256: dataset.sha256,
    sizeBytes: dataset.sizeBytes,
    createdAtMs: dataset.createdAtMs,
    parent: manifest.parent?.id ?? null,
    splits: manifest.splits,
  };
}

function printSplits(output: { table(head: string[], rows: Array<Array<string | number>>): void }, manifest: DatasetManifest): void {
  output.table(
    ['SPLIT', 'ROWS', 'LABELLED', 'LABEL BALANCE'],
    SPLITS.map((split) => {
      const s = manifest.splits[split];
      const balance = Object.entries(s.labelCounts)
        .sort(([a], [b]) => Number(a) - Number(b))
        .map(([label, n]) => `${label}: ${n} (${((n / Math.max(1, s.labelled)) * 100).toFixed(0)}%)`)
        .join(', ');
      return [split, s.rows, s.labelled, balance || '-'];
    }),
  );
}
