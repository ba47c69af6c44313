import type { Command } from 'commander';
import { Connection, type ConnectionOptions } from './connection.js';
import { createOutput, type Output } from './output.js';

export interface GlobalOptions extends ConnectionOptions {
  json?: boolean;
}

/** Runs one client command with a connection built from the global options, closed afterwards. */
export async function withConnection(command: Command, run: (connection: Connection, output: Output) => Promise<void>): Promise<void> {
  const globals = command.optsWithGlobals<GlobalOptions>();
  const connection = new Connection(globals);
  try {
    await run(connection, createOutput(Boolean(globals.json)));
  } finally {
    connection.close();
  }
}
