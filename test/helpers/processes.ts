import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface RunningProcess {
  child: ChildProcess;
  /** The first stdout line that matched the ready pattern. */
  ready: RegExpMatchArray;
  stdoutLines: string[];
  stderr(): string;
  /** Resolves with the exit code once the process has exited. */
  exited: Promise<number | null>;
  /** Resolves with the first stdout line matching the pattern (past or future). */
  line(pattern: RegExp): Promise<RegExpMatchArray>;
}

/** Starts `node <script> ...args` from the repository root and waits for a stdout line matching `ready`. */
/** nodeArgs: flags for node itself, before the script (--cpu-prof, which NODE_OPTIONS refuses). */
export async function startProcess(
  script: string,
  args: string[],
  ready: RegExp,
  options: { env?: NodeJS.ProcessEnv; timeoutMs?: number; nodeArgs?: string[] } = {},
): Promise<RunningProcess> {
  const child = spawn(process.execPath, [...(options.nodeArgs ?? []), script, ...args], {
    cwd: REPO_ROOT,
    env: { ...process.env, DRIFTLINE_LOG_LEVEL: process.env.DRIFTLINE_LOG_LEVEL ?? 'warn', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const stdoutLines: string[] = [];
  const waiters: Array<{ pattern: RegExp; resolve(m: RegExpMatchArray): void }> = [];
  createInterface({ input: child.stdout! }).on('line', (text) => {
    stdoutLines.push(text);
    for (const w of [...waiters]) {
      const m = text.match(w.pattern);
      if (m) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(m);
      }
    }
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const line = (pattern: RegExp): Promise<RegExpMatchArray> => {
    for (const text of stdoutLines) {
      const m = text.match(pattern);
      if (m) return Promise.resolve(m);
    }
    return new Promise((resolve) => waiters.push({ pattern, resolve }));
  };
  const timeoutMs = options.timeoutMs ?? 30_000;
  const match = await Promise.race([
    line(ready),
    exited.then((code) => {
      throw new Error(`${script} exited with ${code} before it was ready:\n${stderr}`);
    }),
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${script} not ready after ${timeoutMs} ms:\n${stderr}`)), timeoutMs).unref()),
  ]);
  return { child, ready: match, stdoutLines, stderr: () => stderr, exited, line };
}

/** Stops a process with a signal and waits for it to exit. */
export async function stopProcess(proc: RunningProcess | undefined, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
  if (!proc) return null;
  if (proc.child.exitCode === null && proc.child.signalCode === null) proc.child.kill(signal);
  return proc.exited;
}

/** A port that was free a moment ago, for processes that must come back on the same port. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Polls until the condition holds; fails with the last observed value after the deadline. */
export async function waitFor<T>(
  read: () => T | Promise<T>,
  accept: (value: T) => boolean,
  options: { timeoutMs?: number; intervalMs?: number; what?: string } = {},
): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 30_000);
  let last: T | undefined;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      last = await read();
      if (accept(last)) return last;
    } catch (err) {
      lastError = err;
    }
    await new Promise((resolve) => setTimeout(resolve, options.intervalMs ?? 100));
  }
  throw new Error(
    `timed out waiting for ${options.what ?? 'condition'}; last value: ${JSON.stringify(last)}${lastError ? `; last error: ${String(lastError)}` : ''}`,
  );
}

/** A port held by a plain TCP listener on 127.0.0.1, as a system broker holds 1883: for tests of a taken port. */
export async function holdPort(): Promise<{ port: number; release(): Promise<void> }> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    release: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
