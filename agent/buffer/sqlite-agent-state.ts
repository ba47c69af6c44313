import type { Database as Db, Statement } from 'better-sqlite3';
import type { AgentStateStore } from './ports.js';

/**
 * The agent's key-value state in the buffer's SQLite file (table agent_state): in the same
 * database so that the buffer's drop counts commit in the same transaction as its deletes.
 */
export class SqliteAgentState implements AgentStateStore {
  private readonly select: Statement;
  private readonly upsert: Statement;

  constructor(db: Db) {
    db.exec('CREATE TABLE IF NOT EXISTS agent_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)');
    this.select = db.prepare('SELECT value FROM agent_state WHERE key = ?');
    this.upsert = db.prepare('INSERT INTO agent_state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value');
  }

  getState(key: string): string | undefined {
    return (this.select.get(key) as { value: string } | undefined)?.value;
  }

  setState(key: string, value: string): void {
    this.upsert.run(key, value);
  }
}
