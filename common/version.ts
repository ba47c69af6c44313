import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
/** The product version, from package.json (one source). */
export const DRIFTLINE_VERSION: string = (require('../package.json') as { version: string }).version;
