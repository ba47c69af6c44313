/** Re-cuts a byte stream into chunks of `size` bytes (the last one shorter): streamed replies stay well under grpc-js's 4 MiB message limit. */
export async function* rechunk(source: AsyncIterable<unknown>, size: number): AsyncGenerator<Buffer> {
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  for await (const part of source) {
    let buf = part as Buffer;
    while (buf.length > 0) {
      const take = Math.min(size - pendingBytes, buf.length);
      pending.push(buf.subarray(0, take));
      pendingBytes += take;
      buf = buf.subarray(take);
      if (pendingBytes === size) {
        yield Buffer.concat(pending);
        pending = [];
        pendingBytes = 0;
      }
    }
  }
  if (pendingBytes > 0) yield Buffer.concat(pending);
}
