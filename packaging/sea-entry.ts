/**
 * Entry point of the single executable (bundled as CommonJS by build-agent.ts). Modules that
 * read resources through import.meta.url get a URL inside the extraction folder before any
 * of them runs, which is why the agent's CLI is imported dynamically, after this line.
 */
import { extractedModuleUrl } from '../agent/native-addons.js';

(globalThis as { __driftlineModuleUrl?: (path: string) => string }).__driftlineModuleUrl = extractedModuleUrl;
void import('../agent/main.js');
