import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, promises as fs } from 'node:fs';
import { DriftlineError, isErrorCode } from '../../common/errors.js';

export interface DownloadRequest {
  url: string;
  username: string;
  password: string;
  expectedSha256: string;
  expectedBytes: number;
  destination: string;
  /** The whole attempt, resumed bytes not counted; an endlessly slow server is cut off here. */
  timeoutMs: number;
}

/**
 * Streams an artifact to `destination` through `<destination>.part`, hashing as it goes.
 * Resumable: a `.part` left by an interrupted attempt is kept and continued with a Range
 * request from its size (a server that ignores Range starts it over). It never reads past
 * the expected size (an endless or padded response is cut off and its `.part` dropped) and
 * only renames into place once size and sha256 both match, so a model file that exists is
 * always complete and verified.
 */
export async function downloadArtifact(request: DownloadRequest): Promise<void> {
  const partial = `${request.destination}.part`;
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, request.timeoutMs);
  let keepPartial = true;
  try {
    const hash = createHash('sha256');
    let offset = await existingSize(partial);
    if (offset > request.expectedBytes) {
      await fs.rm(partial, { force: true });
      offset = 0;
    }
    if (offset > 0) {
      for await (const chunk of createReadStream(partial) as AsyncIterable<Buffer>) hash.update(chunk);
    }
    const auth = Buffer.from(`${request.username}:${request.password}`).toString('base64');
    const headers: Record<string, string> = { authorization: `Basic ${auth}` };
    if (offset > 0 && offset < request.expectedBytes) headers.range = `bytes=${offset}-`;
    let response: Response | undefined;
    if (offset < request.expectedBytes) {
      try {
        response = await fetch(request.url, { headers, signal: controller.signal });
      } catch (err) {
        throw timedOut ? timeout(request) : new DriftlineError('DOWNLOAD_FAILED', `cannot download ${request.url}`, { cause: err });
      }
      if (response.status === 416 || !(response.ok || response.status === 206) || !response.body) {
        if (response.status === 416) keepPartial = false;
        // The control plane names its refusal (ARTIFACT_FORBIDDEN, ARTIFACT_NOT_FOUND, ...); another server gets the status's reading.
        const named = response.headers.get('driftline-error-code') ?? '';
        const code = isErrorCode(named) ? named : response.status === 404 ? 'ARTIFACT_NOT_FOUND' : 'DOWNLOAD_FAILED';
        throw new DriftlineError(code, `download of ${request.url} failed with HTTP ${response.status}`);
      }
      if (offset > 0 && response.status !== 206) {
        // The server sent the whole file: start over.
        offset = 0;
        hash.destroy();
        return await restart(request, response, partial, controller, () => timedOut);
      }
      await receive(request, response, partial, offset, hash, controller, () => timedOut);
    }
    keepPartial = false;
    await finish(request, partial, hash.digest('hex'));
  } catch (err) {
    if (err instanceof DriftlineError && (err.code === 'MODEL_CHECKSUM_MISMATCH' || err.code === 'ARTIFACT_NOT_FOUND')) keepPartial = false;
    if (!keepPartial) await fs.rm(partial, { force: true });
    if (err instanceof DriftlineError) throw err;
    if (timedOut) throw timeout(request);
    throw new DriftlineError('DOWNLOAD_FAILED', `download of ${request.url} failed`, { cause: err });
  } finally {
    clearTimeout(timer);
  }
}

async function restart(request: DownloadRequest, response: Response, partial: string, controller: AbortController, timedOut: () => boolean): Promise<void> {
  const hash = createHash('sha256');
  await receive(request, response, partial, 0, hash, controller, timedOut);
  await finish(request, partial, hash.digest('hex'));
}

async function receive(
  request: DownloadRequest,
  response: Response,
  partial: string,
  offset: number,
  hash: ReturnType<typeof createHash>,
  controller: AbortController,
  timedOut: () => boolean,
): Promise<void> {
  const out = createWriteStream(partial, { mode: 0o600, flags: offset > 0 ? 'a' : 'w' });
  let received = offset;
  try {
    for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
      received += chunk.byteLength;
      if (received > request.expectedBytes) {
        controller.abort();
        throw new DriftlineError('MODEL_CHECKSUM_MISMATCH', `artifact is larger than the ${request.expectedBytes} bytes expected`);
      }
      hash.update(chunk);
      if (!out.write(chunk)) await new Promise<void>((resolve) => out.once('drain', () => resolve()));
    }
  } catch (err) {
    if (err instanceof DriftlineError) throw err;
    if (timedOut()) throw timeout(request);
    throw new DriftlineError('DOWNLOAD_FAILED', `download of ${request.url} was interrupted after ${received} bytes`, { cause: err });
  } finally {
    await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
  }
  if (received !== request.expectedBytes) {
    throw new DriftlineError('DOWNLOAD_FAILED', `artifact ended after ${received} of ${request.expectedBytes} bytes`);
  }
}

async function finish(request: DownloadRequest, partial: string, actual: string): Promise<void> {
  if (actual !== request.expectedSha256) {
    throw new DriftlineError('MODEL_CHECKSUM_MISMATCH', `artifact sha256 ${actual} does not match ${request.expectedSha256}`);
  }
  const handle = await fs.open(partial, 'r');
  await handle.sync();
  await handle.close();
  await fs.rename(partial, request.destination);
}

async function existingSize(file: string): Promise<number> {
  try {
    return (await fs.stat(file)).size;
  } catch {
    return 0;
  }
}

const timeout = (request: DownloadRequest): DriftlineError =>
  new DriftlineError('DOWNLOAD_TIMEOUT', `download of ${request.url} did not finish within ${request.timeoutMs} ms`, {
    details: { timeoutMs: request.timeoutMs },
  });
