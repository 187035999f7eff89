/**
 * The control socket of a running node (src/cli/control.ts), served by a real FieldNode in a temp
 * dir: a request line longer than the 1 MiB limit is refused as soon as it grows past it (not
 * read whole first), and the node keeps answering other connections.
 */
import { mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { callRunning, CONTROL_SOCKET, controlSocketPath, serveControl } from '../../src/cli/control.ts';
import { FieldNode } from '../../src/node/field-node.ts';

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step();
});

async function running(subdir = ''): Promise<string> {
  const dir = join(await mkdtemp(join(tmpdir(), 'fm-control-')), subdir);
  await mkdir(dir, { recursive: true });
  cleanup.push(() => rm(dir, { recursive: true, force: true }));
  const node = await FieldNode.open({ dataDir: dir, team: 'control-t', user: 'alice', role: 'server', domains: { note: 'merge' } });
  cleanup.push(() => node.close());
  const server = await serveControl(node, dir);
  cleanup.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return dir;
}

describe('control socket', () => {
  it('answers one JSON request per line, several on one connection (CRLF too)', async () => {
    const dir = await running();
    const put = await callRunning(dir, 'put', { domain: 'note', entity: 'n1', fields: { text: 'hello' } });
    expect(put).toMatchObject({ result: { status: 'synced' } }); // HQ's own writes need no receipt
    const socket = createConnection(join(dir, CONTROL_SOCKET));
    const replies: string[] = [];
    const done = new Promise<void>((resolve) => {
      let buffered = '';
      socket.on('data', (chunk: Buffer) => {
        buffered += chunk.toString('utf8');
        const lines = buffered.split('\n');
        buffered = lines.pop()!;
        replies.push(...lines);
        if (replies.length === 5) resolve();
      });
    });
    socket.write('{"id":1,"method":"get","params":{"domain":"note","entity":"n1"}}\r\n{"id":2,"method":"nope"}\nnot json\nnull\n[1]\n');
    await done;
    socket.destroy();
    // Each reply carries its request's id; a quick one may overtake a slow one.
    const parsed = replies.map((r) => JSON.parse(r) as { id: number | null });
    const byId = parsed.filter((r) => r.id !== null).sort((a, b) => a.id! - b.id!);
    expect(byId[0]).toMatchObject({ id: 1, result: { fields: { text: 'hello' } } });
    expect(byId[1]).toMatchObject({ id: 2, error: { code: 'BAD_METHOD' } });
    // Lines that are no request get a typed refusal, and the node's own words only.
    expect(parsed.filter((r) => r.id === null)).toEqual([
      { id: null, error: { code: 'BAD_REQUEST', message: 'a request is one line of JSON: {"id", "method", "params"}' } },
      { id: null, error: { code: 'BAD_REQUEST', message: 'a request is a JSON object {"id", "method", "params"}' } },
      { id: null, error: { code: 'BAD_REQUEST', message: 'a request is a JSON object {"id", "method", "params"}' } },
    ]);
  });

  it('refuses a request line past 1 MiB before its end arrives, and keeps serving', async () => {
    const dir = await running();
    const socket = createConnection(join(dir, CONTROL_SOCKET));
    const reply = new Promise<string>((resolve) => {
      let text = '';
      socket.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
      socket.on('close', () => resolve(text));
    });
    socket.on('error', () => undefined); // the node hangs up while we still write
    // 2 MiB with no newline: a reader that waited for the line's end would hold it all.
    const chunk = Buffer.alloc(64 * 1024, 'x');
    for (let i = 0; i < 32 && !socket.destroyed; i++) socket.write(chunk);
    expect(JSON.parse((await reply).trim())).toMatchObject({ id: null, error: { code: 'TOO_LARGE' } });
    expect(await callRunning(dir, 'get', { domain: 'note', entity: 'missing' })).toEqual({ result: null });
  });

  // As HQ's API refuses them (400): a typo in `fieldmesh ops --domain/--device/--type` must not
  // pass for "no such ops". The command table is the same with or without a running node.
  it('refuses an ops filter that can never match: an undeclared domain, a malformed device id, an unknown type or status', async () => {
    const dir = await running();
    await callRunning(dir, 'put', { domain: 'note', entity: 'n1', fields: { text: 'hello' } });
    await expect(callRunning(dir, 'ops', { domain: 'nope' })).rejects.toMatchObject({ code: 'UNKNOWN_DOMAIN' });
    await expect(callRunning(dir, 'ops', { device: 'junk' })).rejects.toMatchObject({ code: 'BAD_DEVICE_ID' });
    await expect(callRunning(dir, 'ops', { type: 'explode' })).rejects.toMatchObject({ code: 'BAD_ARGUMENT' });
    await expect(callRunning(dir, 'ops', { status: 'done' })).rejects.toMatchObject({ code: 'BAD_ARGUMENT' });
    const { result: [op] } = (await callRunning(dir, 'ops', { type: 'create', domain: 'note', status: 'synced' })) as { result: { device: string }[] };
    expect((await callRunning(dir, 'ops', { device: op!.device, type: 'create', domain: 'note', status: 'synced' }))!.result).toHaveLength(1);
  });

  it('serves a data dir too deep for a Unix socket path from a socket in this user\'s private dir in the temp dir, named by the dir', async () => {
    const dir = await running('d'.repeat(110));
    const path = controlSocketPath(dir);
    expect(path.startsWith(tmpdir())).toBe(true);
    expect((await stat(dirname(path))).mode & 0o777).toBe(0o700);
    expect(Buffer.byteLength(path)).toBeLessThanOrEqual(100);
    expect(controlSocketPath(dir + '/')).toBe(path); // the same dir, however it is written
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    expect(await callRunning(dir, 'get', { domain: 'note', entity: 'missing' })).toEqual({ result: null });
    expect(controlSocketPath(join(tmpdir(), 'short'))).toBe(join(tmpdir(), 'short', CONTROL_SOCKET));
  });
});
