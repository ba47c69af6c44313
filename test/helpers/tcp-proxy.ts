import { connect, createServer, type AddressInfo, type Socket } from 'node:net';

/**
 * What the link does:
 * - pass: bytes flow both ways;
 * - drop: open connections are destroyed, new ones are accepted and destroyed at once;
 * - stall: connections stay open but nothing is forwarded (both sides paused, so bytes pile
 *   up in the kernel like on a dead radio link); new ones are accepted and held the same way;
 * - flap: bytes flow, but every connection is cut every `flapEveryMs`.
 */
export type LinkMode = 'pass' | 'drop' | 'stall' | 'flap';

export interface ProxyStats {
  /** Connections the proxy accepted from the client side. */
  accepted: number;
  /** Connections the proxy cut (drop, flap, or the other side closing). */
  cut: number;
  /** Connections accepted while stalled. */
  stalledAccepts: number;
  /** Bytes forwarded client to upstream and back. */
  bytesUp: number;
  bytesDown: number;
}

export interface TcpProxy {
  /** host:port to give the client instead of the upstream's. */
  readonly address: string;
  readonly stats: ProxyStats;
  setMode(mode: LinkMode, options?: { flapEveryMs?: number }): void;
  close(): Promise<void>;
}

interface Pair {
  client: Socket;
  upstream: Socket;
}

/** A loopback TCP proxy in front of `upstreamPort` whose link can drop, stall and flap on command. */
export async function startTcpProxy(upstreamPort: number): Promise<TcpProxy> {
  let mode: LinkMode = 'pass';
  let flapTimer: NodeJS.Timeout | undefined;
  const pairs = new Set<Pair>();
  const stats: ProxyStats = { accepted: 0, cut: 0, stalledAccepts: 0, bytesUp: 0, bytesDown: 0 };

  const cut = (pair: Pair): void => {
    if (!pairs.delete(pair)) return;
    stats.cut++;
    pair.client.destroy();
    pair.upstream.destroy();
  };
  const pause = (pair: Pair): void => {
    pair.client.pause();
    pair.upstream.pause();
  };
  const resume = (pair: Pair): void => {
    pair.client.resume();
    pair.upstream.resume();
  };

  const server = createServer((client) => {
    stats.accepted++;
    if (mode === 'drop') {
      stats.cut++;
      client.destroy();
      return;
    }
    const upstream = connect(upstreamPort, '127.0.0.1');
    const pair: Pair = { client, upstream };
    pairs.add(pair);
    client.on('data', (chunk: Buffer) => {
      stats.bytesUp += chunk.length;
      upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      stats.bytesDown += chunk.length;
      client.write(chunk);
    });
    // Either side going away takes the other with it, like a real connection through a NAT.
    for (const socket of [client, upstream]) {
      socket.on('error', () => cut(pair));
      socket.on('close', () => cut(pair));
    }
    if (mode === 'stall') {
      stats.stalledAccepts++;
      pause(pair);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const { port } = server.address() as AddressInfo;

  return {
    address: `127.0.0.1:${port}`,
    stats,
    setMode(next, options = {}) {
      clearInterval(flapTimer);
      flapTimer = undefined;
      mode = next;
      if (next === 'drop') for (const pair of [...pairs]) cut(pair);
      else if (next === 'stall') for (const pair of pairs) pause(pair);
      else for (const pair of pairs) resume(pair);
      if (next === 'flap') {
        flapTimer = setInterval(() => {
          for (const pair of [...pairs]) cut(pair);
        }, options.flapEveryMs ?? 300);
      }
    },
    async close() {
      clearInterval(flapTimer);
      for (const pair of [...pairs]) cut(pair);
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
