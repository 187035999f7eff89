/**
 * A running node's control socket: `<dataDir>/control.sock`, a Unix socket (never a network
 * port), over which other `fieldmesh` commands on the same machine reach the node that holds the
 * data dir. One JSON request per line, one JSON response per line.
 *
 *   request  := {"id": n, "method": name, "params": {...}}
 *   response := {"id": n, "result": ...} | {"id": n, "error": {"code", "message"}}
 */
import { createConnection, createServer, type Server } from 'node:net';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { FieldmeshError } from '../core/errors.ts';
import type { FieldNode } from '../node/field-node.ts';
import { COMMANDS, isCommand, toJson } from './commands.ts';

export const CONTROL_SOCKET = 'control.sock';
const MAX_REQUEST_BYTES = 1024 * 1024;

export async function serveControl(node: FieldNode, dataDir: string): Promise<Server> {
  const path = join(dataDir, CONTROL_SOCKET);
  await rm(path, { force: true }); // a stale socket of a node that crashed
  const server = createServer((socket) => {
    const lines = createInterface({ input: socket, crlfDelay: Infinity });
    lines.on('line', (line) => {
      void (async () => {
        let id: unknown = null;
        try {
          if (line.length > MAX_REQUEST_BYTES) throw new FieldmeshError('TOO_LARGE', 'request too large');
          const request = JSON.parse(line) as { id?: unknown; method?: unknown; params?: unknown };
          id = request.id ?? null;
          if (typeof request.method !== 'string' || !isCommand(request.method)) throw new FieldmeshError('BAD_METHOD', `unknown method ${String(request.method)}`);
          const result = await COMMANDS[request.method](node, (request.params ?? {}) as Record<string, unknown>);
          socket.write(toJson({ id, result }) + '\n');
        } catch (err) {
          const e = err as FieldmeshError;
          socket.write(toJson({ id, error: { code: e.code ?? 'ERROR', message: e.message } }) + '\n');
        }
      })();
    });
    socket.on('error', () => socket.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve());
  });
  return server;
}

/** Calls a running node; resolves undefined when no node is running on this data dir. */
export async function callRunning(dataDir: string, method: string, params: Record<string, unknown>, timeoutMs = 30_000): Promise<{ result: unknown } | undefined> {
  const path = join(dataDir, CONTROL_SOCKET);
  return new Promise((resolve, reject) => {
    const socket = createConnection(path);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new FieldmeshError('TIMEOUT', `the node on ${dataDir} did not answer within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') resolve(undefined);
      else reject(err);
    });
    socket.once('connect', () => {
      const lines = createInterface({ input: socket });
      lines.once('line', (line) => {
        clearTimeout(timer);
        socket.end();
        const response = JSON.parse(line) as { result?: unknown; error?: { code: string; message: string } };
        if (response.error !== undefined) reject(new FieldmeshError(response.error.code, response.error.message));
        else resolve({ result: response.result });
      });
      socket.write(JSON.stringify({ id: 1, method, params }) + '\n');
    });
  });
}
