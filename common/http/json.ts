import type { ServerResponse } from 'node:http';
import type { DriftlineError, ErrorKind } from '../errors.js';

/** The one place an error kind becomes an HTTP status. */
const STATUS_BY_KIND: Record<ErrorKind, number> = {
  invalid: 400,
  unauthenticated: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  exhausted: 429,
  unavailable: 503,
  deadline: 504,
  internal: 500,
};

/** The HTTP status of an error: by its kind, except a body over its limit (413). */
export function httpStatusOf(error: DriftlineError): number {
  return error.code === 'PAYLOAD_TOO_LARGE' ? 413 : STATUS_BY_KIND[error.kind];
}

/** A JSON response with its length; closeConnection when the rest of the request is left unread. */
export function sendJson(res: ServerResponse, status: number, body: unknown, closeConnection = false): void {
  const text = JSON.stringify(body);
  const headers: Record<string, string | number> = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) };
  if (closeConnection) headers.connection = 'close';
  res.writeHead(status, headers);
  res.end(text);
}
