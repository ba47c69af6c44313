// What every command shares without loading gRPC: exit codes, defaults, the error the CLI prints.
// (connection.ts re-exports these; `driftline --version` and `--help` load only this.)

/** Exit codes are part of the CLI's contract: scripts branch on them. */
export const EXIT = {
  ok: 0,
  internal: 1,
  usage: 2,
  auth: 3,
  notFound: 4,
  unavailable: 5,
  conflict: 6,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

export const EXIT_CODES_HELP = `Exit codes:
  0  ok
  1  internal or unknown error
  2  usage error or invalid input
  3  authentication or permission denied
  4  not found
  5  control plane unavailable or timed out
  6  conflict (already exists, already used, wrong state)`;

export const DEFAULT_SERVER = '127.0.0.1:7443';
export const DEFAULT_TOKEN_FILE = '.driftline/admin.token';

/** What the CLI reports: `error [code]: message` on stderr and the exit code. */
export class CliError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly exitCode: ExitCode,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

export function usageError(message: string): CliError {
  return new CliError('USAGE', message, EXIT.usage);
}
