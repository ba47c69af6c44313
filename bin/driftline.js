#!/usr/bin/env node
// Runs the compiled CLI in dist/js/ (`npm run build`; `npm ci` builds it through `prepare`).
// DRIFTLINE_FROM_SOURCE=1 runs the TypeScript sources through tsx instead (development only: tsx is a devDependency).
import { existsSync } from 'node:fs';

const compiled = new URL('../dist/js/driftline.js', import.meta.url);
let main;
if (process.env.DRIFTLINE_FROM_SOURCE === '1') {
  const { register } = await import('tsx/esm/api');
  register();
  ({ main } = await import('../cli/entry.ts'));
} else if (existsSync(compiled)) {
  ({ main } = await import(compiled.href));
} else {
  process.stderr.write('error [INTERNAL]: the compiled CLI (dist/js/driftline.js) is missing: run `npm run build` in the driftline checkout\n');
  process.exit(1);
}
process.exitCode = await main(process.argv);
