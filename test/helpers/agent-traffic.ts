import { vibrationRowSampler } from '../../demo/model/vibration-data.js';

/** Sends one realistic inference request to an agent's local API; resolves with the HTTP status and body. */
export async function inferOnce(localApiUrl: string, row: number[], model = 'vibration'): Promise<{ status: number; body: any }> {
  const response = await fetch(`${localApiUrl}/v2/models/${model}/infer`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ inputs: [{ name: 'features', shape: [1, row.length], datatype: 'FP32', data: row }] }),
  });
  return { status: response.status, body: await response.json() };
}

/** Sends `count` inferences one after another; returns how many succeeded. */
export async function driveInferences(localApiUrl: string, count: number, seed = 7): Promise<number> {
  const next = vibrationRowSampler(seed);
  let ok = 0;
  for (let i = 0; i < count; i++) {
    const { status } = await inferOnce(localApiUrl, next().features);
    if (status === 200) ok++;
  }
  return ok;
}
