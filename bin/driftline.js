#!/usr/bin/env node
// The operator CLI runs its TypeScript sources directly through tsx (a runtime dependency).
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../control-plane/cli/main.ts');
process.exitCode = await main(process.argv);
