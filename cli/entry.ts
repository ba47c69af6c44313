import { DRIFTLINE_VERSION } from '../common/version.js';
import type { ExitCode } from './cli-error.js';

const VERSION_WORDS = new Set(['--version', '-V', 'version']);

/**
 * What bin/driftline.js runs (compiled to dist/driftline.js): `driftline --version` answers
 * before commander or any command module loads; everything else goes through main.ts, which
 * loads only the command group it runs.
 */
export async function main(argv: readonly string[]): Promise<ExitCode> {
  const args = argv.slice(2);
  if (args.length === 1 && VERSION_WORDS.has(args[0]!)) {
    process.stdout.write(`${DRIFTLINE_VERSION}\n`);
    return 0;
  }
  const cli = await import('./main.js');
  return cli.main(argv);
}
