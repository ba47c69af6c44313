import { randomBytes } from 'node:crypto';
import { closeSync, fchmodSync, fsyncSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { Database, Statement } from 'better-sqlite3';
import { systemClock, type Clock } from '../../common/clock.js';
import { DriftlineError } from '../../common/errors.js';
import { newSecret, sha256Hex } from '../../common/hashing.js';
import { applyMigrations } from '../store/sqlite/database.js';

/** Ordered: each role may do everything the roles before it may. */
export const ROLES = ['viewer', 'operator', 'admin'] as const;
export type OperatorRole = (typeof ROLES)[number];

export const roleAtLeast = (role: OperatorRole, required: OperatorRole): boolean => ROLES.indexOf(role) >= ROLES.indexOf(required);

export interface OperatorToken {
  id: string;
  name: string;
  role: OperatorRole;
  createdAtMs: number;
  revoked: boolean;
}

const MIGRATIONS = [
  `CREATE TABLE operator_tokens (
     id TEXT PRIMARY KEY,
     name TEXT NOT NULL,
     role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
     token_hash TEXT NOT NULL UNIQUE,
     created_at_ms INTEGER NOT NULL,
     revoked_at_ms INTEGER
   );`,
];

interface TokenRow {
  id: string;
  name: string;
  role: OperatorRole;
  created_at_ms: number;
  revoked_at_ms: number | null;
}

/** Operator bearer tokens; only their sha256 is stored, the token itself is shown once. */
export class OperatorTokenStore {
  private readonly byHash: Statement<[string], TokenRow>;

  constructor(private readonly db: Database) {
    applyMigrations(db, 'operator_tokens', MIGRATIONS);
    this.byHash = db.prepare('SELECT * FROM operator_tokens WHERE token_hash = ?');
  }

  create(name: string, role: OperatorRole, nowMs: number): { token: OperatorToken; secret: string } {
    const id = `tok_${randomBytes(8).toString('hex')}`;
    const secret = newSecret('dlt');
    this.db
      .prepare('INSERT INTO operator_tokens (id, name, role, token_hash, created_at_ms) VALUES (?, ?, ?, ?, ?)')
      .run(id, name, role, sha256Hex(secret), nowMs);
    return { token: { id, name, role, createdAtMs: nowMs, revoked: false }, secret };
  }

  /** The live token a bearer secret names, or undefined when it is unknown or revoked. */
  authenticate(secret: string): OperatorToken | undefined {
    const row = this.byHash.get(sha256Hex(secret));
    return row && row.revoked_at_ms === null ? toToken(row) : undefined;
  }

  list(): OperatorToken[] {
    return (this.db.prepare('SELECT * FROM operator_tokens ORDER BY created_at_ms, rowid').all() as TokenRow[]).map(toToken);
  }

  revoke(id: string, nowMs: number): void {
    const { changes } = this.db.prepare('UPDATE operator_tokens SET revoked_at_ms = coalesce(revoked_at_ms, ?) WHERE id = ?').run(nowMs, id);
    if (changes === 0) throw new DriftlineError('TOKEN_NOT_FOUND', `no operator token ${id}`, { details: { id } });
  }

  hasLiveAdmin(): boolean {
    return this.db.prepare(`SELECT 1 FROM operator_tokens WHERE role = 'admin' AND revoked_at_ms IS NULL LIMIT 1`).get() !== undefined;
  }
}

const toToken = (row: TokenRow): OperatorToken => ({
  id: row.id,
  name: row.name,
  role: row.role,
  createdAtMs: row.created_at_ms,
  revoked: row.revoked_at_ms !== null,
});

/**
 * First start (or every admin token revoked): mint an admin token and leave it in
 * `<dataDir>/admin.token`, readable by the owner only, so the operator can bootstrap
 * the CLI without the secret ever reaching a log.
 */
export function ensureAdminToken(store: OperatorTokenStore, dataDir: string, clock: Clock = systemClock): { created: boolean; token?: string; file: string } {
  const file = join(dataDir, 'admin.token');
  if (store.hasLiveAdmin()) return { created: false, file };
  const { secret } = store.create('bootstrap-admin', 'admin', clock.now());
  mkdirSync(dataDir, { recursive: true });
  const fd = openSync(file, 'w', 0o600);
  try {
    // open's mode applies only to a new file; an older one is tightened before the secret lands in it.
    fchmodSync(fd, 0o600);
    writeSync(fd, `${secret}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return { created: true, token: secret, file };
}
