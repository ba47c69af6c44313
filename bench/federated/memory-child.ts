/**
 * One process, one client count: `tsx bench/federated/memory-child.ts <clients> <params>` feeds
 * that many updates of a head of <params> parameters through the wire encoding (float32), the
 * server's validation and the streaming FedAvg aggregator, and prints its peak RSS as JSON.
 */
import { encodeUpdate } from '../../common/federated/update-codec.js';
import { createStrategy, strategySpec } from '../../control-plane/federated/strategies/create-strategy.js';
import { validateUpdate } from '../../control-plane/federated/update-validation.js';

const clients = Number(process.argv[2]);
const params = Number(process.argv[3]);
if (!(clients >= 1 && params >= 1)) throw new Error('usage: memory-child.ts <clients> <params>');

const aggregator = createStrategy(strategySpec('fedavg')).createAggregator(params);
for (let c = 0; c < clients; c++) {
  // A device's update arrives, is decoded and checked, aggregated, and dropped.
  const delta = new Float32Array(params);
  for (let i = 0; i < params; i++) delta[i] = (((c * 31 + i) % 97) - 48) * 1e-4;
  const wire = encodeUpdate(delta, 'float32');
  const decoded = validateUpdate(wire, { headLength: params, maxUpdateNorm: 0, maxBytes: params * 4 });
  aggregator.add({ deviceId: `client-${c}`, sampleCount: 1 + (c % 50), delta: decoded.delta, staleness: 0 });
}
const heldBytes = aggregator.heldBytes;
const sink = aggregator.finish()[0]!;
if (!Number.isFinite(sink)) throw new Error('aggregation diverged');
console.log(JSON.stringify({ clients, peak_rss_mb: Number((process.resourceUsage().maxRSS / 1024).toFixed(1)), held_bytes: heldBytes }));
