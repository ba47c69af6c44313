import { Metadata, type ServiceError, status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { DriftlineError } from '../common/errors.js';
import { EXIT, toCliError } from '../cli/connection.js';
import { relativeTime } from '../cli/output.js';

function serviceError(code: status, trailer?: string): ServiceError {
  const metadata = new Metadata();
  if (trailer) metadata.set('driftline-error-code', trailer);
  return Object.assign(new Error(`${code}: refused`), { code, details: 'refused', metadata });
}

describe('CLI error reporting', () => {
  it('takes the code and exit code from the driftline-error-code trailer', () => {
    const error = toCliError(serviceError(status.NOT_FOUND, 'DEVICE_NOT_FOUND'), 'cp:7443');
    expect([error.code, error.exitCode]).toEqual(['DEVICE_NOT_FOUND', EXIT.notFound]);
    expect(toCliError(serviceError(status.PERMISSION_DENIED, 'ROLE_INSUFFICIENT'), 'cp:7443').exitCode).toBe(EXIT.auth);
    expect(toCliError(serviceError(status.ALREADY_EXISTS, 'DEVICE_ALREADY_ENROLLED'), 'cp:7443').exitCode).toBe(EXIT.conflict);
  });

  it('falls back to the gRPC status for a code it does not know yet', () => {
    const error = toCliError(serviceError(status.ALREADY_EXISTS, 'ROLLOUT_ALREADY_RUNNING'), 'cp:7443');
    expect([error.code, error.exitCode]).toEqual(['ROLLOUT_ALREADY_RUNNING', EXIT.conflict]);
  });

  it('names the gRPC status when there is no trailer', () => {
    expect(toCliError(serviceError(status.UNAUTHENTICATED), 'cp:7443')).toMatchObject({ code: 'UNAUTHENTICATED', exitCode: EXIT.auth });
    expect(toCliError(serviceError(status.DEADLINE_EXCEEDED), 'cp:7443')).toMatchObject({ code: 'DEADLINE_EXCEEDED', exitCode: EXIT.unavailable });
    expect(toCliError(serviceError(status.UNKNOWN), 'cp:7443')).toMatchObject({ code: 'UNKNOWN', exitCode: EXIT.internal });
  });

  it('keeps the code of a local DriftlineError', () => {
    expect(toCliError(new DriftlineError('CONFIG_INVALID', 'bad'), 'cp:7443')).toMatchObject({ code: 'CONFIG_INVALID', exitCode: EXIT.usage });
  });
});

describe('CLI relative times', () => {
  const now = 1_700_000_000_000;
  it('reads like "3m ago", "in 2h" for a clock ahead, and "-" for never', () => {
    expect(relativeTime(now - 5_000, now)).toBe('5s ago');
    expect(relativeTime(now - 3 * 60_000, now)).toBe('3m ago');
    expect(relativeTime(now + 2 * 3_600_000, now)).toBe('in 2h');
    expect(relativeTime(now - 3 * 86_400_000, now)).toBe('3d ago');
    expect(relativeTime(0, now)).toBe('-');
  });
});
