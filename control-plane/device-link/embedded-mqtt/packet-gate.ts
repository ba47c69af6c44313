import { Duplex } from 'node:stream';

/**
 * What the gate refuses, and why. `oversized`: a fixed header claims a remaining length
 * over the limit for the connection's state; `unauthenticated_budget`: a connection that has
 * not logged in sent more bytes in all than one CONNECT may take; `malformed_length`: a
 * remaining length longer than MQTT's four bytes.
 */
export type GateRefusalReason = 'oversized' | 'unauthenticated_budget' | 'malformed_length';

export interface GateRefusal {
  reason: GateRefusalReason;
  /** MQTT control packet type of the refused packet (1 CONNECT, 3 PUBLISH, ...). */
  packetType: number;
  remainingLength: number;
  limit: number;
  authenticated: boolean;
}

export interface PacketGateLimits {
  /** Largest remaining length, and total bytes, a connection may send before it has logged in. */
  unauthenticatedBytes: number;
  /** Largest remaining length of one packet after login. */
  authenticatedPacketBytes: number;
}

/** MQTT's variable byte integer: at most four bytes of seven bits each. */
const MAX_LENGTH_BYTES = 4;

/**
 * Sits between a raw socket and the broker (aedes), reading MQTT framing as it goes by:
 * each fixed header's remaining length is checked the moment its last byte arrives, so an
 * oversized packet is refused before one byte of its body is passed on or buffered, and a
 * connection that has not logged in may send no more than one CONNECT's worth of bytes in
 * all. aedes' own parser buffers a whole packet, whatever length its header claims, before
 * it looks at it. Bodies are counted, never copied; reads keep the socket's backpressure.
 */
export class MqttPacketGate extends Duplex {
  private authenticated = false;
  private bytesBeforeLogin = 0;
  private phase: 'type' | 'length' | 'body' = 'type';
  private packetType = 0;
  private length = 0;
  private lengthBytes = 0;
  private bodyLeft = 0;

  constructor(
    private readonly socket: Duplex,
    private readonly limits: PacketGateLimits,
    private readonly onRefused: (refusal: GateRefusal) => void,
  ) {
    super({ allowHalfOpen: false });
    socket.on('data', (chunk: Buffer) => {
      if (!this.inspect(chunk)) return;
      if (!this.push(chunk)) socket.pause();
    });
    socket.once('end', () => this.push(null));
    socket.on('error', (err) => this.destroy(err));
    socket.once('close', () => this.destroy());
  }

  /** The connection logged in: packets up to the authenticated limit may follow. */
  markAuthenticated(): void {
    this.authenticated = true;
  }

  override _read(): void {
    this.socket.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (this.socket.write(chunk)) callback();
    else this.socket.once('drain', () => callback());
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.socket.end(() => callback());
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.socket.destroy();
    callback(error);
  }

  /** Walks the chunk's framing; false (and the socket destroyed) when it holds something to refuse. */
  private inspect(chunk: Buffer): boolean {
    let i = 0;
    while (i < chunk.length) {
      if (this.phase === 'body') {
        const skip = Math.min(this.bodyLeft, chunk.length - i);
        this.bodyLeft -= skip;
        i += skip;
        if (this.bodyLeft === 0) this.phase = 'type';
        continue;
      }
      const byte = chunk[i++]!;
      if (this.phase === 'type') {
        this.packetType = byte >> 4;
        this.length = 0;
        this.lengthBytes = 0;
        this.phase = 'length';
        continue;
      }
      this.length += (byte & 0x7f) * 128 ** this.lengthBytes;
      this.lengthBytes++;
      if (byte & 0x80) {
        if (this.lengthBytes === MAX_LENGTH_BYTES) return this.refuse('malformed_length', this.length, this.limit());
        continue;
      }
      if (this.length > this.limit()) return this.refuse('oversized', this.length, this.limit());
      this.bodyLeft = this.length;
      this.phase = this.length > 0 ? 'body' : 'type';
    }
    if (!this.authenticated) {
      this.bytesBeforeLogin += chunk.length;
      if (this.bytesBeforeLogin > this.limits.unauthenticatedBytes) {
        return this.refuse('unauthenticated_budget', this.bytesBeforeLogin, this.limits.unauthenticatedBytes);
      }
    }
    return true;
  }

  private limit(): number {
    return this.authenticated ? this.limits.authenticatedPacketBytes : this.limits.unauthenticatedBytes;
  }

  private refuse(reason: GateRefusalReason, remainingLength: number, limit: number): false {
    this.onRefused({ reason, packetType: this.packetType, remainingLength, limit, authenticated: this.authenticated });
    this.socket.destroy();
    this.destroy();
    return false;
  }
}
