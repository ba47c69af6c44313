import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import * as esbuild from 'esbuild';
import { REPO_ROOT } from '../../test/helpers/processes.js';

/**
 * A chaos run restarts processes a thousand times; through tsx each start spends seconds
 * loading and transforming hundreds of sources on a loaded machine. This bundles the two
 * entry points once per run into ESM files (dependencies stay external, reached through a
 * node_modules link beside them), with each source's import.meta.url kept as its own file's
 * URL so the proto folder, the firmware profiles and package.json are found where they are.
 * The bundles run the same sources as bin/driftline.js and bin/driftline-agent.js.
 */
export async function bundleEntryPoints(dir: string): Promise<{ controlPlane: string; agent: string }> {
  mkdirSync(dir, { recursive: true });
  symlinkSync(join(REPO_ROOT, 'node_modules'), join(dir, 'node_modules'), 'dir');
  const keepMetaUrl: esbuild.Plugin = {
    name: 'keep-import-meta-url',
    setup(build) {
      build.onLoad({ filter: /\.ts$/ }, (args) => {
        const source = readFileSync(args.path, 'utf8');
        return { contents: source.replaceAll('import.meta.url', JSON.stringify(pathToFileURL(args.path).href)), loader: 'ts', resolveDir: dirname(args.path) };
      });
    },
  };
  const controlPlaneEntry = join(dir, 'driftline-entry.ts');
  writeFileSync(controlPlaneEntry, `import { main } from ${JSON.stringify(join(REPO_ROOT, 'cli/main.ts'))};\nprocess.exitCode = await main(process.argv);\n`);
  const out = { controlPlane: join(dir, 'driftline.mjs'), agent: join(dir, 'driftline-agent.mjs') };
  const common: esbuild.BuildOptions = {
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    packages: 'external',
    logLevel: 'error',
    plugins: [keepMetaUrl],
  };
  await esbuild.build({ ...common, entryPoints: [controlPlaneEntry], outfile: out.controlPlane });
  await esbuild.build({ ...common, entryPoints: [join(REPO_ROOT, 'agent/main.ts')], outfile: out.agent });
  return out;
}
