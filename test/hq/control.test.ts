/**
 * The control socket (src/cli/control.ts) of a real HQ FieldNode in a temp dir, called through
 * callRunning and through a raw Unix-socket client: values nested far past the value depth
 * limit are refused with VALUE_TOO_DEEP on both ends, never a RangeError that kills the CLI or
 * the node.
 */
import { createConnection, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, expect, it } from 'vitest';
import { FieldmeshError } from '../../src/core/errors.ts';
import { callRunning, CONTROL_SOCKET, serveControl } from '../../src/cli/control.ts';
import { expectRejects, useHq, within } from './helpers.ts';

const hq = useHq();

/** Arrays nested `depth` deep around 1, built without recursion. */
function nested(depth: number): unknown {
  let value: unknown = 1;
  for (let i = 0; i < depth; i++) value = [value];
  return value;
}

/** HQ's node with its control socket served (closed after the test, before the node). */
async function running() {
  const team = await hq.team({ case: 'manual', note: 'client-wins' });
  const node = await team.hq();
  const server: Server = await serveControl(node, node.dataDir);
  const sockets = new Set<Socket>();
  hq.closeLater({
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  });
  /** Sends raw lines on one connection and reads as many reply lines (bounded by `within`). */
  const raw = async (lines: readonly string[]): Promise<any[]> => {
    const socket = createConnection(join(node.dataDir, CONTROL_SOCKET));
    sockets.add(socket);
    const replies: any[] = [];
    const reader = createInterface({ input: socket });
    const done = new Promise<void>((resolve, reject) => {
      reader.on('line', (line) => {
        replies.push(JSON.parse(line));
        if (replies.length === lines.length) resolve();
      });
      socket.once('close', () => reject(new Error(`connection closed after ${replies.length} of ${lines.length} replies`)));
      socket.once('error', reject);
    });
    for (const line of lines) socket.write(line + '\n');
    await within('the control socket\'s replies', done);
    socket.destroy();
    return replies;
  };
  return { node, dataDir: node.dataDir, raw };
}

describe('control socket: deeply nested values', () => {
  it('callRunning refuses params nested 5 000 deep with VALUE_TOO_DEEP (it threw a RangeError from JSON.stringify)', async () => {
    const { node, dataDir } = await running();
    await expectRejects(callRunning(dataDir, 'put', { domain: 'case', entity: 'c-1', fields: { a: nested(5_000) } }), FieldmeshError, 'VALUE_TOO_DEEP');
    await expectRejects(callRunning(dataDir, 'query', { domain: 'case', where: { a: nested(5_000) } }), FieldmeshError, 'VALUE_TOO_DEEP');
    // One past the node's limit passes the socket's own check and is refused by the node, with the same code.
    await expectRejects(callRunning(dataDir, 'put', { domain: 'case', entity: 'c-1', fields: { a: nested(17) } }), FieldmeshError, 'VALUE_TOO_DEEP');
    expect(await node.ops()).toEqual([]);
    // At the limit it is written.
    expect(await callRunning(dataDir, 'put', { domain: 'case', entity: 'c-1', fields: { a: nested(16) } })).toMatchObject({ result: { type: 'create', status: 'synced' } });
  });

  it('a raw request nested 5 000 deep (in params, or in its id) gets VALUE_TOO_DEEP and the node keeps answering', async () => {
    const { node, raw } = await running();
    const deep = '['.repeat(5_000) + '1' + ']'.repeat(5_000);
    const replies = await raw([
      `{"id":1,"method":"put","params":{"domain":"case","entity":"c-1","fields":{"a":${deep}}}}`,
      `{"id":2,"method":"query","params":{"domain":"case","where":{"a":${deep}}}}`,
      `{"id":${deep},"method":"status"}`,
      '{"id":4,"method":"vv"}',
    ]);
    expect(replies.slice(0, 3)).toEqual([
      { id: null, error: { code: 'VALUE_TOO_DEEP', message: expect.any(String) } },
      { id: null, error: { code: 'VALUE_TOO_DEEP', message: expect.any(String) } },
      { id: null, error: { code: 'VALUE_TOO_DEEP', message: expect.any(String) } },
    ]);
    expect(replies[3]).toEqual({ id: 4, result: node.versionVector() });
    expect(await node.ops()).toEqual([]);
  });
});
