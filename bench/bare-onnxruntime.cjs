// The baseline of bench:agent-footprint: bare Node with onnxruntime-node and one session of the
// model, no agent code. Started with the same Node runtime the agent binary carries; it loads the
// model, runs one inference (as the agent's warm-up does), says "ready" and idles until killed.
'use strict';
const { readFileSync } = require('node:fs');
const ort = require('onnxruntime-node');

async function main() {
  const [modelPath, input, width] = process.argv.slice(2);
  const session = await ort.InferenceSession.create(readFileSync(modelPath));
  const n = Number(width);
  await session.run({ [input]: new ort.Tensor('float32', new Float32Array(n).fill(0.5), [1, n]) });
  process.stdout.write('ready\n');
  setInterval(() => session, 1 << 30);
}
main().catch((err) => {
  process.stderr.write(`${err.stack}\n`);
  process.exit(1);
});
