import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/**
 * CLI and agent tests run bin/driftline.js and bin/driftline-agent.js, which run the compiled
 * dist/: build it when it is missing or older than the sources, so `npm test` alone works.
 */
export default function setup(): void {
  const script = fileURLToPath(new URL('../packaging/build-js.mjs', import.meta.url));
  execFileSync(process.execPath, [script, '--if-stale'], { stdio: 'inherit' });
}
