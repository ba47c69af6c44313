import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Clock } from '../../common/clock.js';
import { DriftlineError } from '../../common/errors.js';
import { peekRoot, rootMetadataSchema, updateRoot, verifyInitialRoot, type TrustedRoot } from '../../common/trust/root.js';
import type { TrustAnchor } from '../models/model-manager.js';
import { agentPaths } from '../paths.js';

/**
 * The device's pinned root metadata: `<dataDir>/trust/root.json`, the exact signed envelope
 * of the newest root version it has verified. Pinned at enrollment; replaced (atomically:
 * temp file, fsync, rename, fsync of the folder) only by a newer version that verifies
 * against it, so a refused update leaves the file as it was.
 */
export class PinnedRoot implements TrustAnchor {
  private trusted: TrustedRoot | undefined;

  private constructor(private readonly file: string) {}

  static open(dataDir: string): PinnedRoot {
    const store = new PinnedRoot(agentPaths(dataDir).trustRoot);
    if (existsSync(store.file)) {
      const envelope = readFileSync(store.file);
      // Trusted because we verified it before writing it; expiry is checked on every use.
      store.trusted = { metadata: rootMetadataSchema.parse(peekRoot(envelope)), envelope };
    }
    return store;
  }

  current(): TrustedRoot | undefined {
    return this.trusted;
  }

  /** Checks a root for pinning without writing it; returns its bytes for pin(). */
  verifyForPinning(envelope: Uint8Array, clock: Clock): Buffer {
    return verifyInitialRoot(envelope, clock).envelope;
  }

  /** Pins the root handed out at enrollment (it must verify by its own threshold and be unexpired). */
  pin(envelope: Uint8Array, clock: Clock): TrustedRoot {
    if (this.trusted) throw new DriftlineError('TRUST_ROOT_INVALID', 'a root is already pinned; newer versions must chain from it');
    const trusted = verifyInitialRoot(envelope, clock);
    this.persist(trusted);
    return trusted;
  }

  /** Walks to the newest version in `chain` (all or nothing) and persists it; checks expiry either way. */
  advance(chain: readonly Uint8Array[], clock: Clock): TrustedRoot {
    const current = this.trusted;
    if (!current) throw new DriftlineError('TRUST_NOT_CONFIGURED', 'no root is pinned on this device');
    const next = updateRoot(current, chain, clock);
    if (next.metadata.version !== current.metadata.version) this.persist(next);
    return next;
  }

  private persist(trusted: TrustedRoot): void {
    mkdirSync(dirname(this.file), { recursive: true, mode: 0o700 });
    const tmp = `${this.file}.tmp`;
    writeFileSync(tmp, trusted.envelope, { mode: 0o600 });
    const fd = openSync(tmp, 'r');
    fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, this.file);
    const dirFd = openSync(dirname(this.file), 'r');
    fsyncSync(dirFd);
    closeSync(dirFd);
    this.trusted = trusted;
  }
}
