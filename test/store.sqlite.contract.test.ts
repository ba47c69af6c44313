import { openDatabase } from '../control-plane/store/sqlite/database.js';
import { SqliteDriftEvents } from '../control-plane/store/sqlite/drift-events.js';
import { SqliteFleetRepository } from '../control-plane/store/sqlite/fleet-repository.js';
import { SqliteModelVersionRepository } from '../control-plane/store/sqlite/model-version-repository.js';
import { SqliteOperatorTokenRepository } from '../control-plane/store/sqlite/operator-token-repository.js';
import { SqliteReleaseRepository } from '../control-plane/store/sqlite/release-repository.js';
import { SqliteRolloutRepository } from '../control-plane/store/sqlite/rollout-repository.js';
import { SqliteTelemetryRepository } from '../control-plane/store/sqlite/telemetry-repository.js';
import { describeRepositoryContract } from './helpers/repository-contract.js';

describeRepositoryContract('sqlite', () => {
  const db = openDatabase(':memory:');
  return {
    rollouts: new SqliteRolloutRepository(db),
    fleet: new SqliteFleetRepository(db),
    operatorTokens: new SqliteOperatorTokenRepository(db),
    telemetry: new SqliteTelemetryRepository(db),
    driftEvents: new SqliteDriftEvents(db),
    modelVersions: new SqliteModelVersionRepository(db),
    releases: new SqliteReleaseRepository(db),
    close: () => void db.close(),
  };
});
