import { randomBytes } from 'node:crypto';
import { closeSync, fchmodSync, fsyncSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { systemClock, type Clock } from '../../common/clock.js';
import { DriftlineError } from '../../common/errors.js';
import { newSecret, sha256Hex } from '../../common/hashing.js';
import type { OperatorTokenRepository, StoredOperatorToken } from './ports.js';

/** Ordered: each role may do everything the roles before it may. */
export const ROLES = ['viewer', 'operator', 'admin'] as const;
export type OperatorRole = (typeof ROLES)[number];

/**
 * Every role a token may have: the operator roles, and `worker` outside their order. A worker
 * token (a training worker's, `driftline worker`) may call WorkerService and nothing else, and
 * WorkerService takes no other token, admin included: the credential that sits on a GPU host
 * reaches no operator call, and an operator's credential never acts as a worker.
 */
export const TOKEN_ROLES = [...ROLES, 'worker'] as const;
export type TokenRole = (typeof TOKEN_ROLES)[number];

/** Whether a token of `role` may make a call that needs the operator role `required`: a worker token never may. */
export const roleAtLeast = (role: TokenRole, required: OperatorRole): boolean => role !== 'worker' && ROLES.indexOf(role) >= ROLES.indexOf(required);

export interface OperatorToken {
  id: string;
  name: string;
  role: TokenRole;
  createdAtMs: number;
  revoked: boolean;
}

/** Operator bearer tokens; only their sha256 is stored (the OperatorTokenRepository port), the token itself is shown once. */
export class OperatorTokenStore {
  constructor(private readonly repository: OperatorTokenRepository) {}

  async create(name: string, role: TokenRole, nowMs: number): Promise<{ token: OperatorToken; secret: string }> {
    const id = `tok_${randomBytes(8).toString('hex')}`;
    const secret = newSecret('dlt');
    await this.repository.insert({ id, name, role, tokenHash: sha256Hex(secret), createdAtMs: nowMs });
    return { token: { id, name, role, createdAtMs: nowMs, revoked: false }, secret };
  }

  /** The live token a bearer secret names, or undefined when it is unknown or revoked. */
  async authenticate(secret: string): Promise<OperatorToken | undefined> {
    const stored = await this.repository.byHash(sha256Hex(secret));
    return stored && stored.revokedAtMs === null ? toToken(stored) : undefined;
  }

  async list(): Promise<OperatorToken[]> {
    return (await this.repository.list()).map(toToken);
  }

  async revoke(id: string, nowMs: number): Promise<void> {
    if (!(await this.repository.revoke(id, nowMs))) throw new DriftlineError('TOKEN_NOT_FOUND', `no operator token ${id}`, { details: { id } });
  }

  hasLiveAdmin(): Promise<boolean> {
    return this.repository.hasLiveAdmin();
  }
}

const toToken = (stored: StoredOperatorToken): OperatorToken => ({
  id: stored.id,
  name: stored.name,
  role: stored.role,
  createdAtMs: stored.createdAtMs,
  revoked: stored.revokedAtMs !== null,
});

/**
 * First start (or every admin token revoked): mint an admin token and leave it in
 * `<dataDir>/admin.token`, readable by the owner only, so the operator can bootstrap
 * the CLI without the secret ever reaching a log.
 */
export async function ensureAdminToken(
  store: OperatorTokenStore,
  dataDir: string,
  clock: Clock = systemClock,
): Promise<{ created: boolean; token?: string; file: string }> {
  const file = join(dataDir, 'admin.token');
  if (await store.hasLiveAdmin()) return { created: false, file };
  const { secret } = await store.create('bootstrap-admin', 'admin', clock.now());
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
