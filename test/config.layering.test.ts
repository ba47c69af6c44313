import { describe, expect, it } from 'vitest';
import { environmentLayer, layerConfig } from '../common/config.js';
import { loadAgentConfig } from '../agent/config.js';

describe('configuration layering', () => {
  it('lays flags over the environment over the file, object by object', () => {
    const merged = layerConfig({ a: 1, nested: { x: 1, y: 1 } }, { nested: { y: 2 } }, { a: 3, nested: { z: 3 } });
    expect(merged).toEqual({ a: 3, nested: { x: 1, y: 2, z: 3 } });
  });

  it('a setting left undefined does not override the layer below', () => {
    expect(layerConfig({ port: 7 }, { port: undefined, host: undefined })).toEqual({ port: 7 });
  });

  it('drops prototype keys at every depth, also inside values that replace', () => {
    const flags = JSON.parse('{"__proto__": {"polluted": true}, "constructor": 1, "nested": {"prototype": 2, "ok": 1}}') as Record<string, unknown>;
    const merged = layerConfig({}, flags) as Record<string, unknown>;
    expect(merged).toEqual({ nested: { ok: 1 } });
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.getPrototypeOf(merged)).toBe(Object.prototype);
  });

  it('a file that is not an object is handed on as it is, for validation to name', () => {
    expect(layerConfig(['a list'], { a: 1 })).toEqual(['a list']);
  });

  it('reads only the environment variables that are set and not empty', () => {
    const table = { A: (v: string) => ({ a: { value: v } }), B: (v: string) => ({ a: { other: v } }), C: (v: string) => ({ c: v }) };
    expect(environmentLayer({ A: '1', B: '2', C: '' }, table)).toEqual({ a: { value: '1', other: '2' } });
  });

  it('the agent: defaults < file < environment < flags', () => {
    const config = loadAgentConfig({
      env: { DRIFTLINE_AGENT_DATA_DIR: '/from-env', DRIFTLINE_AGENT_LOG_LEVEL: 'warn' },
      flags: { logLevel: 'debug', mqtt: { url: undefined } },
    });
    expect(config.dataDir).toBe('/from-env');
    expect(config.logLevel).toBe('debug');
    expect(config.mqtt).toMatchObject({ keepaliveSeconds: 30, connectTimeoutMs: 10_000 });
  });
});
