#!/usr/bin/env node
// Runs the agent's TypeScript entry point through tsx (the packaged binary bundles it instead).
import { register } from 'tsx/esm/api';

register();
await import('../agent/main.ts');
