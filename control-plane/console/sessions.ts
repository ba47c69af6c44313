import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { Clock } from '../../common/clock.js';
import type { TokenRole } from '../fleet/operator-tokens.js';

/** A signed-in console user: the operator token it signed in with is named by id only, its secret is never kept. */
export interface ConsoleSession {
  readonly id: string;
  readonly tokenId: string;
  readonly tokenName: string;
  readonly role: TokenRole;
  /** Sent in every form as a hidden field, compared on every POST. */
  readonly csrf: string;
  readonly createdAtMs: number;
  lastUsedMs: number;
}

export interface ConsoleSessionLimits {
  sessionTtlMs: number;
  idleTimeoutMs: number;
  /** Sessions held at once; past it the least recently used goes (memory stays bounded). */
  maxSessions?: number;
}

const DEFAULT_MAX_SESSIONS = 10_000;

/**
 * Console sessions in memory: an unguessable id (the cookie), an expiry on both the session's
 * age and its idleness, a CSRF token of its own. A restart signs everyone out, which is the
 * safe direction for a credential that only lives in a browser.
 */
export class ConsoleSessions {
  private readonly sessions = new Map<string, ConsoleSession>();
  private readonly maxSessions: number;

  constructor(
    private readonly clock: Clock,
    private readonly limits: ConsoleSessionLimits,
  ) {
    this.maxSessions = limits.maxSessions ?? DEFAULT_MAX_SESSIONS;
  }

  create(token: { id: string; name: string; role: TokenRole }): ConsoleSession {
    const now = this.clock.now();
    this.prune(now);
    while (this.sessions.size >= this.maxSessions) this.sessions.delete(this.sessions.keys().next().value!);
    const session: ConsoleSession = {
      id: randomBytes(32).toString('base64url'),
      tokenId: token.id,
      tokenName: token.name,
      role: token.role,
      csrf: randomBytes(32).toString('base64url'),
      createdAtMs: now,
      lastUsedMs: now,
    };
    this.sessions.set(session.id, session);
    return session;
  }

  /** The live session a cookie names (its idle time restarts), or undefined when unknown or expired. */
  get(id: string | undefined): ConsoleSession | undefined {
    if (!id) return undefined;
    const session = this.sessions.get(id);
    if (!session) return undefined;
    const now = this.clock.now();
    if (this.expired(session, now)) {
      this.sessions.delete(id);
      return undefined;
    }
    session.lastUsedMs = now;
    // Re-inserted so the map's order is least recently used first.
    this.sessions.delete(id);
    this.sessions.set(id, session);
    return session;
  }

  delete(id: string): void {
    this.sessions.delete(id);
  }

  /** Every session of a token (when it was revoked). */
  deleteByToken(tokenId: string): void {
    for (const [id, s] of this.sessions) if (s.tokenId === tokenId) this.sessions.delete(id);
  }

  get size(): number {
    return this.sessions.size;
  }

  private expired(session: ConsoleSession, now: number): boolean {
    return now - session.createdAtMs >= this.limits.sessionTtlMs || now - session.lastUsedMs >= this.limits.idleTimeoutMs;
  }

  private prune(now: number): void {
    for (const [id, s] of this.sessions) if (this.expired(s, now)) this.sessions.delete(id);
  }
}

/** Constant-time comparison of a submitted CSRF token with the session's. */
export function csrfMatches(session: ConsoleSession, submitted: string | undefined): boolean {
  if (!submitted) return false;
  const a = Buffer.from(session.csrf);
  const b = Buffer.from(submitted);
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * Failed sign-ins per client address in a fixed window: past the limit the address is refused
 * until its window ends. Bounded: at most maxAddresses are tracked (the oldest forgotten first).
 */
export class LoginLimiter {
  private readonly failures = new Map<string, { count: number; windowStartMs: number }>();

  constructor(
    private readonly clock: Clock,
    private readonly options: { maxFailures: number; windowMs: number; maxAddresses?: number },
  ) {}

  /** Milliseconds until this address may try again; 0 when it may now. */
  blockedFor(address: string): number {
    const entry = this.failures.get(address);
    if (!entry) return 0;
    const left = entry.windowStartMs + this.options.windowMs - this.clock.now();
    if (left <= 0) {
      this.failures.delete(address);
      return 0;
    }
    return entry.count >= this.options.maxFailures ? left : 0;
  }

  recordFailure(address: string): void {
    const now = this.clock.now();
    const entry = this.failures.get(address);
    if (entry && now - entry.windowStartMs < this.options.windowMs) {
      entry.count++;
      return;
    }
    this.failures.delete(address);
    const max = this.options.maxAddresses ?? 10_000;
    while (this.failures.size >= max) this.failures.delete(this.failures.keys().next().value!);
    this.failures.set(address, { count: 1, windowStartMs: now });
  }

  recordSuccess(address: string): void {
    this.failures.delete(address);
  }
}
