import type { Database } from 'better-sqlite3';
import type { OperatorRoleName, OperatorTokenRepository, StoredOperatorToken } from '../../fleet/ports.js';
import { applyMigrations, connectionOf, type SqliteConnection } from './database.js';

const MIGRATIONS = [
  `CREATE TABLE operator_tokens (
     id TEXT PRIMARY KEY,
     name TEXT NOT NULL,
     role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
     token_hash TEXT NOT NULL UNIQUE,
     created_at_ms INTEGER NOT NULL,
     revoked_at_ms INTEGER
   );`,
  // 2: the worker role (training workers). SQLite cannot change a CHECK constraint in place, so
  // the table is rebuilt under its name with every row kept (no table references it). Runs in
  // the migration's own transaction: a crash leaves version 1 as it was.
  `CREATE TABLE operator_tokens_v2 (
     id TEXT PRIMARY KEY,
     name TEXT NOT NULL,
     role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin', 'worker')),
     token_hash TEXT NOT NULL UNIQUE,
     created_at_ms INTEGER NOT NULL,
     revoked_at_ms INTEGER
   );
   INSERT INTO operator_tokens_v2 (rowid, id, name, role, token_hash, created_at_ms, revoked_at_ms)
     SELECT rowid, id, name, role, token_hash, created_at_ms, revoked_at_ms FROM operator_tokens;
   DROP TABLE operator_tokens;
   ALTER TABLE operator_tokens_v2 RENAME TO operator_tokens;`,
];

interface TokenRow {
  id: string;
  name: string;
  role: OperatorRoleName;
  created_at_ms: number;
  revoked_at_ms: number | null;
}

const toToken = (row: TokenRow): StoredOperatorToken => ({
  id: row.id,
  name: row.name,
  role: row.role,
  createdAtMs: row.created_at_ms,
  revokedAtMs: row.revoked_at_ms,
});

/** Operator tokens (their hashes) in SQLite. */
export class SqliteOperatorTokenRepository implements OperatorTokenRepository {
  private readonly connection: SqliteConnection;

  constructor(db: Database) {
    applyMigrations(db, 'operator_tokens', MIGRATIONS);
    this.connection = connectionOf(db);
  }

  insert(t: { id: string; name: string; role: OperatorRoleName; tokenHash: string; createdAtMs: number }): Promise<void> {
    return this.connection.run((db) => {
      db.prepare('INSERT INTO operator_tokens (id, name, role, token_hash, created_at_ms) VALUES (?, ?, ?, ?, ?)').run(
        t.id,
        t.name,
        t.role,
        t.tokenHash,
        t.createdAtMs,
      );
    });
  }

  byHash(tokenHash: string): Promise<StoredOperatorToken | undefined> {
    return this.connection.run((db) => {
      const row = db.prepare('SELECT * FROM operator_tokens WHERE token_hash = ?').get(tokenHash) as TokenRow | undefined;
      return row ? toToken(row) : undefined;
    });
  }

  list(): Promise<StoredOperatorToken[]> {
    return this.connection.run((db) => (db.prepare('SELECT * FROM operator_tokens ORDER BY created_at_ms, rowid').all() as TokenRow[]).map(toToken));
  }

  revoke(id: string, atMs: number): Promise<boolean> {
    return this.connection.run(
      (db) => db.prepare('UPDATE operator_tokens SET revoked_at_ms = coalesce(revoked_at_ms, ?) WHERE id = ?').run(atMs, id).changes > 0,
    );
  }

  hasLiveAdmin(): Promise<boolean> {
    return this.connection.run((db) => db.prepare(`SELECT 1 FROM operator_tokens WHERE role = 'admin' AND revoked_at_ms IS NULL LIMIT 1`).get() !== undefined);
  }
}
