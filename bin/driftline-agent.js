#!/usr/bin/env node
// Runs the compiled agent entry point in dist/js/ (`npm run build`); the packaged binary bundles it instead.
// DRIFTLINE_FROM_SOURCE=1 runs the TypeScript sources through tsx instead (development only: tsx is a devDependency).
import { existsSync } from 'node:fs';

const compiled = new URL('../dist/js/driftline-agent.js', import.meta.url);
if (process.env.DRIFTLINE_FROM_SOURCE === '1') {
  const { register } = await import('tsx/esm/api');
  register();
  await import('../agent/main.ts');
} else if (existsSync(compiled)) {
  await import(compiled.href);
} else {
  process.stderr.write(
    'driftline-agent: error [INTERNAL]: the compiled agent (dist/js/driftline-agent.js) is missing: run `npm run build` in the driftline checkout\n',
  );
  process.exit(1);
}
