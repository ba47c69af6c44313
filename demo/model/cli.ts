import { mkdir, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { writeDemoModel } from './demo-model.js';
import { generateVibrationData, toCsv, type DriftOption } from './vibration-data.js';

const nonNegative = (value: string): number => {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0) throw new InvalidArgumentError('expected a number >= 0');
  return n;
};

const count = (value: string): number => {
  const n = nonNegative(value);
  if (!Number.isInteger(n)) throw new InvalidArgumentError('expected a whole number');
  return n;
};

const program = new Command('model:demo')
  .description('Train the vibration-fault demo classifier, write it as ONNX, and optionally write sample data as CSV')
  .requiredOption('--out <path>', 'where to write the ONNX model')
  .option('--seed <n>', 'seed for training data and weights', count, 1)
  .option('--data <path>', 'also write sample rows as CSV')
  .option('--rows <n>', 'rows of sample data', count, 2000)
  .option('--data-seed <n>', 'seed for the sample data', count, 2)
  .option('--drift [severity]', 'age the sensors in the sample data (severity 1 unless given)', nonNegative)
  .action(async (opts: { out: string; seed: number; data?: string; rows: number; dataSeed: number; drift?: true | number }) => {
    const model = await writeDemoModel(opts.out, { seed: opts.seed });
    console.log(`model ${model.path}  sha256 ${model.sha256}  held-out accuracy ${model.accuracy.toFixed(3)}`);
    if (opts.data) {
      const drift: DriftOption = opts.drift === undefined ? false : opts.drift === true ? true : { severity: opts.drift };
      const data = generateVibrationData({ rows: opts.rows, seed: opts.dataSeed, drift });
      await mkdir(dirname(opts.data), { recursive: true });
      await writeFile(opts.data, toCsv(data));
      const how = opts.drift === undefined ? 'undrifted' : `drifted, severity ${opts.drift === true ? 1 : opts.drift}`;
      console.log(`data  ${opts.data}  ${opts.rows} rows (${how})`);
    }
  });

await program.parseAsync();
