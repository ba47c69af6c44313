import { createHash } from 'node:crypto';
import { createWriteStream, promises as fs } from 'node:fs';
import { DriftlineError } from '../../common/errors.js';

export interface DownloadRequest {
  url: string;
  username: string;
  password: string;
  expectedSha256: string;
  expectedBytes: number;
  destination: string;
  timeoutMs: number;
}

/**
 * Streams an artifact to `destination` through a temporary file, hashing as it goes.
 * It never reads past the expected size (an endless or padded response is cut off) and
 * only renames into place once size and sha256 both match, so a model file that exists
 * is always complete and verified.
 */
export async function downloadArtifact(request: DownloadRequest): Promise<void> {
  const partial = `${request.destination}.part`;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), request.timeoutMs);
  try {
    const auth = Buffer.from(`${request.username}:${request.password}`).toString('base64');
    let response: Response;
    try {
      response = await fetch(request.url, { headers: { authorization: `Basic ${auth}` }, signal: controller.signal });
    } catch (err) {
      throw new DriftlineError('DOWNLOAD_FAILED', `cannot download ${request.url}`, { cause: err });
    }
    if (!response.ok || !response.body) {
      throw new DriftlineError(response.status === 404 ? 'ARTIFACT_NOT_FOUND' : 'DOWNLOAD_FAILED', `download of ${request.url} failed with HTTP ${response.status}`);
    }
    const hash = createHash('sha256');
    const out = createWriteStream(partial, { mode: 0o600 });
    let received = 0;
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
    } finally {
      await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
    }
    if (received !== request.expectedBytes) {
      throw new DriftlineError('DOWNLOAD_FAILED', `artifact ended after ${received} of ${request.expectedBytes} bytes`);
    }
    const actual = hash.digest('hex');
    if (actual !== request.expectedSha256) {
      throw new DriftlineError('MODEL_CHECKSUM_MISMATCH', `artifact sha256 ${actual} does not match ${request.expectedSha256}`);
    }
    const handle = await fs.open(partial, 'r');
    await handle.sync();
    await handle.close();
    await fs.rename(partial, request.destination);
  } catch (err) {
    await fs.rm(partial, { force: true });
    if (err instanceof DriftlineError) throw err;
    throw new DriftlineError('DOWNLOAD_FAILED', `download of ${request.url} failed`, { cause: err });
  } finally {
    clearTimeout(timer);
  }
}
