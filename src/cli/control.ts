/**
 * A running node's control socket: `<dataDir>/control.sock`, a Unix socket (never a network
 * port), over which other `fieldmesh` commands on the same machine reach the node that holds the
 * data dir. One JSON request per line, one JSON response per line.
 *
 *   request  := {"id": n, "method": name, "params": {...}}
 *   response := {"id": n, "result": ...} | {"id": n, "error": {"code", "message"}}
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { chmod, lstat, mkdir, rm } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { FieldmeshError, InvalidInputError } from '../core/errors.ts';
import { LIMITS } from '../core/limits.ts';
import { nestsDeeperThan } from '../core/value.ts';
import type { FieldNode } from '../node/field-node.ts';
import { COMMANDS, isCommand, toJson } from './commands.ts';

export const CONTROL_SOCKET = 'control.sock';

/** Longest Unix socket path we use (Linux allows 107 bytes). */
const MAX_SOCKET_PATH_BYTES = 100;

/** This user's directory for control sockets that do not fit in their data dir (mode 0700). */
const privateSocketDir = () => join(tmpdir(), `fieldmesh-${process.getuid?.() ?? 'user'}`);

/**
 * Where the node of `dataDir` listens: `<dataDir>/control.sock`, or, for a data dir too deep for
 * a Unix socket path, a socket named by the data dir's absolute path in this user's private
 * directory in the temp dir.
 */
export function controlSocketPath(dataDir: string): string {
  const inDir = join(dataDir, CONTROL_SOCKET);
  if (Buffer.byteLength(inDir) <= MAX_SOCKET_PATH_BYTES) return inDir;
  return join(privateSocketDir(), `${createHash('sha256').update(resolve(dataDir)).digest('hex').slice(0, 32)}.sock`);
}

/**
 * The private socket directory is used only when it is a directory of this user's that nobody
 * else can enter: in the shared temp dir, anyone could have made that path first. False when it
 * does not exist (no node made it); `create` makes it.
 */
async function privateDirReady(socketPath: string, create: boolean): Promise<boolean> {
  const dir = dirname(socketPath);
  if (dir !== privateSocketDir()) return true;
  if (create) await mkdir(dir, { recursive: true, mode: 0o700 });
  let info;
  try {
    info = await lstat(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
  const uid = process.getuid?.();
  if (!info.isDirectory() || (uid !== undefined && info.uid !== uid) || (info.mode & 0o077) !== 0) {
    throw new FieldmeshError('CONTROL_DIR_UNSAFE', `${dir} (for control sockets of deep data dirs) is not a directory of this user's closed to others: remove it`, { path: dir });
  }
  return true;
}
const MAX_REQUEST_BYTES = 1024 * 1024;
/**
 * Deepest nesting of a request's params: field values (at most LIMITS.maxValueDepth deep) sit
 * in params.fields or params.where. JSON.stringify and the commands recurse, so deeper input
 * is refused up front (checked without recursion), on both ends of the socket.
 */
const MAX_PARAMS_DEPTH = LIMITS.maxValueDepth + 2;

const tooDeep = () => new InvalidInputError('VALUE_TOO_DEEP', `request params nest deeper than ${MAX_PARAMS_DEPTH}`, { limit: MAX_PARAMS_DEPTH });

export async function serveControl(node: FieldNode, dataDir: string): Promise<Server> {
  const path = controlSocketPath(dataDir);
  await privateDirReady(path, true);
  await rm(path, { force: true }); // a stale socket of a node that crashed
  const server = createServer((socket) => {
    // The reply is flushed before the socket goes; nothing more of the request is read.
    const tooLarge = () => socket.end(toJson({ id: null, error: { code: 'TOO_LARGE', message: `request longer than ${MAX_REQUEST_BYTES} bytes` } }) + '\n', () => socket.destroy());
    boundedLines(socket, MAX_REQUEST_BYTES, tooLarge, (line) => {
      void (async () => {
        let id: unknown = null;
        try {
          let parsed: unknown;
          try {
            parsed = JSON.parse(line);
          } catch {
            throw new InvalidInputError('BAD_REQUEST', 'a request is one line of JSON: {"id", "method", "params"}');
          }
          if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new InvalidInputError('BAD_REQUEST', 'a request is a JSON object {"id", "method", "params"}');
          const request = parsed as { id?: unknown; method?: unknown; params?: unknown };
          // The request as a whole (params one level down): a deep id, echoed back, would break the reply too.
          if (nestsDeeperThan(request, MAX_PARAMS_DEPTH + 1)) throw tooDeep();
          id = request.id ?? null;
          if (typeof request.method !== 'string' || !isCommand(request.method)) throw new FieldmeshError('BAD_METHOD', `unknown method ${String(request.method)}`);
          const result = await COMMANDS[request.method](node, (request.params ?? {}) as Record<string, unknown>);
          socket.write(toJson({ id, result }) + '\n');
        } catch (err) {
          const e = err as FieldmeshError;
          socket.write(toJson({ id, error: { code: e.code ?? 'ERROR', message: e.message } }) + '\n');
        }
      })().catch(() => socket.destroy()); // a reply that cannot be written ends the connection, never the node
    });
    socket.on('error', () => socket.destroy());
  });
  await new Promise<void>((done, reject) => {
    server.once('error', reject);
    server.listen(path, () => done());
  });
  await chmod(path, 0o600); // only this user's commands
  return server;
}

/**
 * Calls `onLine` with each line the socket sends (a request ends with its newline); a line
 * growing past `maxBytes` bytes before its end calls `onTooLong` instead and nothing more is read
 * (readline would buffer it whole first).
 */
function boundedLines(socket: Socket, maxBytes: number, onTooLong: () => void, onLine: (line: string) => void): void {
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  const onData = (chunk: Buffer) => {
    let start = 0;
    for (let end = chunk.indexOf(0x0a); end !== -1; end = chunk.indexOf(0x0a, start)) {
      pending.push(chunk.subarray(start, end));
      const line = Buffer.concat(pending);
      pending = [];
      pendingBytes = 0;
      start = end + 1;
      if (line.length > maxBytes) return tooLong();
      const text = line.toString('utf8');
      onLine(text.endsWith('\r') ? text.slice(0, -1) : text);
    }
    pendingBytes += chunk.length - start;
    if (pendingBytes > maxBytes) return tooLong();
    if (start < chunk.length) pending.push(chunk.subarray(start));
  };
  const tooLong = () => {
    socket.off('data', onData);
    onTooLong();
  };
  socket.on('data', onData);
}

/** Commands that may run for minutes on a big data dir (a whole log read or written). */
const LONG_METHODS: ReadonlySet<string> = new Set(['bundleImport', 'bundleExport', 'verify', 'enrollDevice']);

/**
 * Calls a running node; resolves undefined when no node is running on this data dir. A node that
 * goes away mid-request (stopped, crashed) is reported at once, saying the command may or may not
 * have been carried out; so is one that does not answer in time.
 */
export async function callRunning(dataDir: string, method: string, params: Record<string, unknown>, timeoutMs = LONG_METHODS.has(method) ? 600_000 : 30_000): Promise<{ result: unknown } | undefined> {
  const path = controlSocketPath(dataDir);
  // Refused before connecting, with the code the node would give: JSON.stringify recurses.
  if (nestsDeeperThan(params, MAX_PARAMS_DEPTH)) throw tooDeep();
  if (!(await privateDirReady(path, false))) return undefined;
  const request = JSON.stringify({ id: 1, method, params }) + '\n';
  return new Promise((resolve, reject) => {
    const socket = createConnection(path);
    let connected = false;
    let settled = false;
    const settle = (outcome: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      outcome();
    };
    const maybeDone = `\`${method}\` may or may not have been carried out: check before repeating it`;
    const timer = setTimeout(() => settle(() => reject(new FieldmeshError('TIMEOUT', `the node on ${dataDir} did not answer within ${timeoutMs} ms; ${maybeDone}`))), timeoutMs);
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (!connected && (err.code === 'ENOENT' || err.code === 'ECONNREFUSED')) settle(() => resolve(undefined));
      else if (!connected) settle(() => reject(new FieldmeshError(err.code ?? 'CONTROL_ERROR', `cannot reach the node on ${dataDir} (${path}): ${err.message}`, { path })));
      else settle(() => reject(new FieldmeshError('NODE_GONE', `the node on ${dataDir} went away before answering (${err.code ?? err.message}); ${maybeDone}`)));
    });
    socket.on('close', () => settle(() => reject(new FieldmeshError('NODE_GONE', `the node on ${dataDir} closed the connection before answering (it stopped or crashed); ${maybeDone}`))));
    // The reply is one line, possibly of many megabytes: chunks are kept until the one holding its end.
    const chunks: string[] = [];
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      const end = chunk.indexOf('\n');
      if (end < 0) {
        chunks.push(chunk);
        return;
      }
      chunks.push(chunk.slice(0, end));
      const line = chunks.join('');
      let response: { result?: unknown; error?: { code: string; message: string } };
      try {
        response = JSON.parse(line) as typeof response;
      } catch {
        settle(() => reject(new FieldmeshError('BAD_RESPONSE', `the node on ${dataDir} answered with something other than JSON`)));
        return;
      }
      settle(() => (response.error !== undefined ? reject(new FieldmeshError(response.error.code, response.error.message)) : resolve({ result: response.result })));
    });
    socket.once('connect', () => {
      connected = true;
      socket.write(request);
    });
  });
}
