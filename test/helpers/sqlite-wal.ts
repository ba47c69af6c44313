import { existsSync, readFileSync } from 'node:fs';

/**
 * Transactions committed to a WAL-mode SQLite database since its WAL last restarted, read from
 * the `-wal` file itself: every commit ends with a frame whose header carries the database size
 * (non-zero only on commit frames), each one fsync'd at synchronous=FULL. Frames left over from
 * before a restart carry other salts than the WAL header and are not counted.
 */
export function walCommits(databaseFile: string): number {
  const path = `${databaseFile}-wal`;
  if (!existsSync(path)) return 0;
  const wal = readFileSync(path);
  if (wal.length < 32) return 0;
  const pageSize = wal.readUInt32BE(8);
  const salt1 = wal.readUInt32BE(16);
  const salt2 = wal.readUInt32BE(20);
  let commits = 0;
  for (let offset = 32; offset + 24 + pageSize <= wal.length; offset += 24 + pageSize) {
    if (wal.readUInt32BE(offset + 8) !== salt1 || wal.readUInt32BE(offset + 12) !== salt2) break;
    if (wal.readUInt32BE(offset + 4) !== 0) commits++;
  }
  return commits;
}
