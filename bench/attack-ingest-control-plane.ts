/**
 * The control plane of bench:attack-ingest, in a child process of its own so its RSS is
 * its own: `driftline serve`'s composition root on OS-chosen ports with default
 * configuration. Tells the parent its addresses over IPC and stops when told.
 */
import { silentLogger } from '../common/logger.js';
import { startControlPlane } from '../control-plane/server.js';

const dataDir = process.argv[2]!;
const cp = await startControlPlane({ dataDir, grpc: { port: 0 }, http: { port: 0 }, mqtt: { port: 0 } }, { logger: silentLogger() });
process.send!({ addresses: cp.addresses, adminTokenFile: cp.adminTokenFile });
// The bench gone (crashed or killed): stop with it.
process.on('disconnect', () => process.exit(1));
process.on('message', (message: unknown) => {
  if (message !== 'stop') return;
  void cp.shutdown().then(() => process.exit(0));
});
