/**
 * The CLI's side of `<data dir>/control.sock` when the node goes away: a node that dies
 * mid-request (SIGKILL, power) is reported at once as NODE_GONE, saying the command may or may
 * not have been carried out, not as a TIMEOUT half a minute later; one that hangs up before
 * reading gives the usual one line on stderr, never a stack trace. The dying node is a socket
 * that reads the request and closes; every server and dir is removed after each test.
 */
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { callRunning, CONTROL_SOCKET } from '../../src/cli/control.ts';
import { FieldmeshError } from '../../src/core/errors.ts';
import { useCli } from './helpers.ts';

const cli = useCli();
const servers: Server[] = [];
afterEach(async () => {
  for (const server of servers.splice(0)) await new Promise<void>((resolve) => server.close(() => resolve()));
});

/** A control socket in a fresh dir whose "node" does `onConnection` to each connection. */
async function fakeNode(onConnection: (socket: import('node:net').Socket) => void): Promise<string> {
  const dir = await cli.dir('fm-control-');
  const server = createServer(onConnection);
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(join(dir, CONTROL_SOCKET), resolve));
  return dir;
}

describe('the control socket client when the node goes away', () => {
  it('a node that dies after reading the request: NODE_GONE at once, saying the command may or may not have been done', async () => {
    const dir = await fakeNode((socket) => socket.once('data', () => socket.destroy()));
    const err = await callRunning(dir, 'put', { domain: 'note', entity: 'n1', fields: { text: 'x' } }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(FieldmeshError);
    expect((err as FieldmeshError).code).toBe('NODE_GONE');
    expect((err as FieldmeshError).message).toContain('`put` may or may not have been carried out');
  });

  it('a node that hangs up before reading: the command fails with one line on stderr, no stack trace', async () => {
    const dir = await fakeNode((socket) => socket.destroy());
    const r = await cli.run(['-d', dir, 'status']);
    expect(r.code).toBe(1);
    expect(r.stderr).not.toContain('Unhandled');
    expect(r.stderr.trim()).toMatch(/^fieldmesh: the node on \S+ (closed the connection|went away) before answering.* \[NODE_GONE\]$/);
  });
});
