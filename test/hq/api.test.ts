/**
 * HQ's HTTP API, served by buildApi on 127.0.0.1 (port 0) over a real HQ FieldNode, called with
 * fetch: every endpoint's happy path, enrollment of a device that then syncs with HQ over
 * loopback libp2p, the OpenAPI document, bad requests (auth, malformed bodies, unknown fields, bad
 * query values, unknown entities, stale conflicts) and the Server-Sent Events stream; then the
 * edges: close() with event clients connected, values nested far past the depth limit, unknown
 * routes (404) and wrong methods (405), unknown domains and devices, revocation without a body
 * and twice, 201 on create, content types (415) and malformed base64.
 */
import { cp, mkdir, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import type { EntityOp } from '../../src/core/op.ts';
import type { Role } from '../../src/core/cert.ts';
import { buildApi } from '../../src/hq/api.ts';
import { Policy } from '../../src/hq/policy.ts';
import type { ReceiptIssuer } from '../../src/hq/receipts.ts';
import { loadOrCreateDeviceKey } from '../../src/node/device-key.ts';
import { FieldNode } from '../../src/node/field-node.ts';
import { allSynced, startMesh, useHq, waitFor, within } from './helpers.ts';

const DOMAINS = { case: 'manual', evidence: 'merge', task: 'server-wins', note: 'client-wins' } as const;
const TOKEN = 'test-token-0123456789abcdef';

const hq = useHq();

interface Reply {
  readonly status: number;
  readonly body: any;
  readonly headers: Headers;
}

/** HQ with its receipt issuer and its API listening on 127.0.0.1 (closed after the test). */
async function setup(options: { policy?: Policy; startIssuer?: boolean; maxEventClients?: number } = {}) {
  const team = await hq.team(DOMAINS);
  const server = await team.hq();
  const policy = options.policy ?? new Policy({ case: {}, evidence: {}, task: {}, note: {} });
  let issuer: ReceiptIssuer | null = null;
  const startIssuer = () => (issuer = hq.issuer(server, policy, { retryMinMs: 60_000, retryMaxMs: 60_000 }));
  if (options.startIssuer !== false) startIssuer();
  const app = hq.closeLater(await buildApi(server, { token: TOKEN, ...(issuer !== null ? { receipts: issuer } : {}), ...(options.maxEventClients !== undefined ? { maxEventClients: options.maxEventClients } : {}) }));
  await app.listen({ host: '127.0.0.1', port: 0 });
  // Teardown drops the clients' idle keep-alive connections rather than waiting for them.
  hq.closeLater({ close: async () => app.server.closeAllConnections() });
  const address = app.server.address();
  if (address === null || typeof address !== 'object') throw new Error('API did not listen on TCP');
  expect(address.address).toBe('127.0.0.1');
  const base = `http://127.0.0.1:${address.port}`;
  const call = async (method: string, path: string, init: { body?: unknown; raw?: string; token?: string | null; headers?: Record<string, string> } = {}): Promise<Reply> => {
    const headers: Record<string, string> = { ...init.headers };
    const token = init.token === undefined ? TOKEN : init.token;
    if (token !== null) headers.authorization = `Bearer ${token}`;
    let body: string | undefined;
    if (init.raw !== undefined) {
      body = init.raw;
      headers['content-type'] ??= 'application/json';
    } else if (init.body !== undefined) {
      body = JSON.stringify(init.body);
      headers['content-type'] = 'application/json';
    }
    const response = await fetch(base + path, { method, headers, body, signal: AbortSignal.timeout(15_000) });
    const text = await response.text();
    let parsed: unknown = text;
    try {
      parsed = text === '' ? null : JSON.parse(text);
    } catch {
      /* not JSON */
    }
    return { status: response.status, body: parsed, headers: response.headers };
  };
  return { team, server, policy, issuer: () => issuer, startIssuer, app, base, call };
}

/** A field device of the team, writing offline; its data reaches HQ as a bundle (the USB path). */
async function fieldDevice(team: Awaited<ReturnType<typeof setup>>['team'], id: string) {
  return team.node(id);
}

const expectError = (reply: Reply, status: number, code?: string) => {
  expect(reply.status, JSON.stringify(reply.body)).toBe(status);
  expect(reply.body).toEqual({ error: { code: expect.any(String), message: expect.any(String) } });
  expect(reply.body.error.message.length).toBeGreaterThan(0);
  if (code !== undefined) expect(reply.body.error.code).toBe(code);
};

describe('the token', () => {
  it('buildApi refuses an empty token, or one with spaces around it, that no request could send', async () => {
    const team = await hq.team(DOMAINS);
    const server = await team.hq();
    for (const token of ['', '  ', ' secret', 'secret\n']) {
      await expect(buildApi(server, { token })).rejects.toMatchObject({ code: 'BAD_TOKEN' });
    }
  });
});

describe('entities and status', () => {
  it('status, PUT create and update, entity lists with where and limit, one entity, history, DELETE', async () => {
    const { server, call } = await setup();

    const status0 = await call('GET', '/v1/status');
    expect(status0.status).toBe(200);
    expect(status0.body).toMatchObject({ device: server.device, team: server.team, counts: { pending: 0, synced: 0, failed: 0, conflict: 0 }, stateHash: await server.stateHash() });
    expect(status0.body.receipts).toMatchObject({ receipts: 0, accepted: 0, rejected: 0, transient: 0 });
    expect(status0.body.clockSkews).toEqual([]);

    const created = await call('PUT', '/v1/entities/case/c-1', { body: { fields: { title: 'Fire', status: 'open' } } });
    expect(created.status).toBe(201);
    expect(created.body).toEqual({ id: expect.stringMatching(/^[0-9a-f]{64}$/), seq: 1, type: 'create', status: 'synced' });
    const updated = await call('PUT', '/v1/entities/case/c-1', { body: { fields: { status: 'closed', tags: ['a', 'b'], n: 3 } } });
    expect(updated.status).toBe(200);
    expect(updated.body).toEqual({ id: expect.any(String), seq: 2, type: 'update', status: 'synced' });
    await call('PUT', '/v1/entities/case/c-2', { body: { fields: { title: 'Flood', status: 'open' } } });
    await call('PUT', '/v1/entities/case/c-3', { body: { fields: { title: 'Storm', status: 'open' } } });

    const one = await call('GET', '/v1/entities/case/c-1');
    expect(one.status).toBe(200);
    expect(one.body).toMatchObject({ domain: 'case', entity: 'c-1', exists: true, fields: { title: 'Fire', status: 'closed', tags: ['a', 'b'], n: 3 }, conflict: null });
    expect(one.body.heads).toEqual([updated.body.id]);

    const all = await call('GET', '/v1/entities/case');
    expect(all.status).toBe(200);
    expect(all.body.map((v: { entity: string }) => v.entity)).toEqual(['c-1', 'c-2', 'c-3']);
    const open = await call('GET', `/v1/entities/case?where=${encodeURIComponent(JSON.stringify({ status: 'open' }))}`);
    expect(open.body.map((v: { entity: string }) => v.entity)).toEqual(['c-2', 'c-3']);
    const limited = await call('GET', `/v1/entities/case?limit=1&where=${encodeURIComponent(JSON.stringify({ status: 'open' }))}`);
    expect(limited.body.map((v: { entity: string }) => v.entity)).toEqual(['c-2']);
    expect((await call('GET', '/v1/entities/evidence')).body).toEqual([]);

    const history = await call('GET', '/v1/entities/case/c-1/history');
    expect(history.status).toBe(200);
    expect(history.body.map((o: { id: string; type: string; status: string }) => [o.id, o.type, o.status])).toEqual([
      [created.body.id, 'create', 'synced'],
      [updated.body.id, 'update', 'synced'],
    ]);
    expect((await call('GET', '/v1/entities/case/c-1/history?limit=1')).body).toHaveLength(1);

    const deleted = await call('DELETE', '/v1/entities/case/c-2');
    expect(deleted.status).toBe(200);
    expect(deleted.body).toEqual({ id: expect.any(String), seq: 5, status: 'synced' });
    expectError(await call('GET', '/v1/entities/case/c-2'), 404, 'ENTITY_NOT_FOUND');
    expect((await call('GET', '/v1/entities/case')).body.map((v: { entity: string }) => v.entity)).toEqual(['c-1', 'c-3']);

    const status1 = await call('GET', '/v1/status');
    expect(status1.body.counts).toEqual({ pending: 0, synced: 5, failed: 0, conflict: 0 });
    expect(status1.body.stateHash).toBe(await server.stateHash());
    expect(status1.body.stateHash).not.toBe(status0.body.stateHash);
    // The API's edits are HQ's ops, as the node shows them.
    expect((await server.get('case', 'c-3'))?.fields).toEqual({ title: 'Storm', status: 'open' });
  });
});

describe('ops, devices and queues', () => {
  it('PUTs racing on a missing entity: one creates (201), the others update (200), none fails ENTITY_EXISTS', async () => {
    const { call } = await setup();
    const racing = await Promise.all(Array.from({ length: 8 }, (_, i) => call('PUT', '/v1/entities/note/n-race', { body: { fields: { n: i } } })));
    expect(racing.map((r) => r.status).sort()).toEqual([200, 200, 200, 200, 200, 200, 200, 201]);
    expect(racing.filter((r) => r.body.type === 'create')).toHaveLength(1);
  });

  it('lists ops by every filter, devices with roles and counts, and a device\'s queue until HQ gives its verdicts', async () => {
    const ctx = await setup({ startIssuer: false });
    const { server, call } = ctx;
    const alice = await fieldDevice(ctx.team, 'alice');
    const a1 = await alice.mutate({ type: 'create', domain: 'note', entity: 'n-1', fields: { text: 'one' } });
    const a2 = await alice.mutate({ type: 'create', domain: 'note', entity: 'n-2', fields: { text: 'two' } });
    const a3 = await alice.mutate({ type: 'update', domain: 'note', entity: 'n-1', fields: { text: 'one, again' } });
    await server.importBundle(await alice.exportBundle(server.versionVector()));
    const h1 = await call('PUT', '/v1/entities/case/c-1', { body: { fields: { title: 'Fire' } } });

    const queue = await call('GET', `/v1/devices/${alice.device}/queue`);
    expect(queue.status).toBe(200);
    expect(queue.body.map((o: { id: string; seq: number; status: string }) => [o.id, o.seq, o.status])).toEqual([
      [a1.id, 1, 'pending'],
      [a2.id, 2, 'pending'],
      [a3.id, 3, 'pending'],
    ]);
    expect((await call('GET', `/v1/devices/${alice.device}/queue?limit=2`)).body).toHaveLength(2);

    const ids = async (query: string) => {
      const reply = await call('GET', `/v1/ops${query}`);
      expect(reply.status, JSON.stringify(reply.body)).toBe(200);
      return reply.body.map((o: { id: string }) => o.id);
    };
    expect(await ids('')).toEqual(expect.arrayContaining([a1.id, a2.id, a3.id, h1.body.id]));
    expect(await ids('')).toHaveLength(4);
    expect(await ids('?status=pending')).toEqual([a1.id, a2.id, a3.id]);
    expect(await ids('?status=synced')).toEqual([h1.body.id]);
    expect(await ids('?type=update')).toEqual([a3.id]);
    expect(await ids('?domain=note')).toEqual([a1.id, a3.id, a2.id]);
    expect(await ids('?domain=note&entity=n-1')).toEqual([a1.id, a3.id]);
    expect(await ids(`?device=${alice.device}`)).toEqual([a1.id, a2.id, a3.id]);
    expect(await ids(`?device=${alice.device}&type=create&status=pending`)).toEqual([a1.id, a2.id]);
    expect(await ids('?limit=1&status=pending')).toEqual([a1.id]);

    const devices = await call('GET', '/v1/devices');
    expect(devices.status).toBe(200);
    const byDevice = new Map(devices.body.map((d: { device: string }) => [d.device, d]));
    expect(byDevice.get(alice.device)).toMatchObject({ device: alice.device, lastSeq: 3, lastSyncedSeq: 0, role: 'field', revoked: false, connected: false, counts: { pending: 3, synced: 0, failed: 0, conflict: 0 } });
    expect(byDevice.get(server.device)).toMatchObject({ role: 'server', lastSeq: 1, lastSyncedSeq: 1, counts: { synced: 1 } });

    // HQ judges: the queue empties, the ops turn synced.
    const issuer = ctx.startIssuer();
    await issuer.flush();
    expect((await call('GET', `/v1/devices/${alice.device}/queue`)).body).toEqual([]);
    expect(await ids(`?device=${alice.device}&status=synced`)).toEqual([a1.id, a2.id, a3.id]);
    expect(await ids('?type=receipt')).toHaveLength(1);
  });

  it('retries lists ops whose judging failed transiently, with attempts and last error', async () => {
    class FlakyPolicy extends Policy {
      override judge(op: EntityOp, role: Role | null) {
        if (op.entity === 'flaky') throw new Error('schema registry unreachable');
        return super.judge(op, role);
      }
    }
    const ctx = await setup({ policy: new FlakyPolicy({ note: {} }) });
    const alice = await fieldDevice(ctx.team, 'alice');
    await alice.mutate({ type: 'create', domain: 'note', entity: 'fine', fields: { text: 'ok' } });
    const flaky = await alice.mutate({ type: 'create', domain: 'note', entity: 'flaky', fields: { text: '?' } });
    expect((await ctx.call('GET', '/v1/retries')).body).toEqual([]);
    await ctx.server.importBundle(await alice.exportBundle());
    await ctx.issuer()!.flush();
    const retries = await ctx.call('GET', '/v1/retries');
    expect(retries.status).toBe(200);
    expect(retries.body).toEqual([{ op: flaky.id, attempts: 1, lastError: 'schema registry unreachable', nextAttemptMs: expect.any(Number) }]);
    expect(retries.body[0].nextAttemptMs).toBeGreaterThan(Date.now());
    expect((await ctx.call('GET', '/v1/status')).body.receipts).toMatchObject({ accepted: 1, transient: 1 });
    expect((await ctx.call('GET', '/v1/ops?status=pending')).body.map((o: { id: string }) => o.id)).toEqual([flaky.id]);
  });
});

describe('enrollment and revocation', () => {
  it('POST /v1/devices returns a certificate a device stores as device.cert and then syncs with; revoke refuses it', async () => {
    const ctx = await setup();
    const { server, call } = ctx;
    await startMesh(server);

    // The device makes its key on the device; HQ signs its certificate.
    const dir = join(ctx.team.root, 'dora');
    await mkdir(dir, { recursive: true });
    await mkdir(join(ctx.team.root, 'gw'), { recursive: true });
    const { key } = await loadOrCreateDeviceKey(dir);
    const before = Date.now();
    const enrolled = await call('POST', '/v1/devices', { body: { device: key.signer.device, user: 'dora', role: 'field' } });
    expect(enrolled.status, JSON.stringify(enrolled.body)).toBe(201);
    expect(enrolled.body).toEqual({ device: key.signer.device, role: 'field', user: 'dora', expiresMs: expect.any(Number), certificate: expect.any(String) });
    expect(enrolled.body.expiresMs).toBeGreaterThanOrEqual(before + 365 * 86_400_000);
    expect(enrolled.body.expiresMs).toBeLessThanOrEqual(Date.now() + 365 * 86_400_000);
    const shortLived = await call('POST', '/v1/devices', { body: { device: (await loadOrCreateDeviceKey(join(ctx.team.root, 'gw'))).key.signer.device, user: 'camp', role: 'gateway', validDays: 2 } });
    expect(shortLived.status).toBe(201);
    expect(shortLived.body.role).toBe('gateway');
    expect(shortLived.body.expiresMs - Date.now()).toBeLessThanOrEqual(2 * 86_400_000);

    await writeFile(join(dir, 'device.cert'), Buffer.from(enrolled.body.certificate, 'base64'));
    const dora = hq.track(await FieldNode.open({ dataDir: dir, team: ctx.team.name, user: 'dora', domains: DOMAINS }));
    expect(dora.certificate).toMatchObject({ device: dora.device, team: ctx.team.name, user: 'dora', role: 'field', issuer: server.device });
    expect(dora.hqDevice).toBe(server.device);
    await startMesh(dora, [server]);
    const note = await dora.mutate({ type: 'create', domain: 'note', entity: 'from-dora', fields: { text: 'hello HQ' } });
    await waitFor("dora's op to be synced", async () => (await dora.ops({ device: dora.device }))[0]?.status === 'synced');
    await waitFor('convergence', () => allSynced([server, dora]));

    const devices = await call('GET', '/v1/devices');
    const doraRow = devices.body.find((d: { device: string }) => d.device === dora.device);
    expect(doraRow).toMatchObject({ role: 'field', revoked: false, connected: true, lastSeq: 1, lastSyncedSeq: 1, counts: { synced: 1 } });
    expect((await call('GET', `/v1/entities/note/from-dora`)).body.fields).toEqual({ text: 'hello HQ' });
    expect((await call('GET', `/v1/ops?device=${dora.device}`)).body.map((o: { id: string }) => o.id)).toEqual([note.id]);

    const revoked = await call('POST', `/v1/devices/${dora.device}/revoke`, { body: { reason: 'lost in the river' } });
    expect(revoked.status, JSON.stringify(revoked.body)).toBe(200);
    expect(revoked.body).toEqual({ id: expect.any(String), target: dora.device, afterSeq: 1 });
    expect(server.isRevoked(dora.device)).toBe(true);
    await waitFor('HQ to drop the revoked device', async () => (await call('GET', '/v1/devices')).body.find((d: { device: string }) => d.device === dora.device)?.connected === false);
    const after = (await call('GET', '/v1/devices')).body.find((d: { device: string }) => d.device === dora.device);
    expect(after).toMatchObject({ revoked: true, connected: false });
    expect((await call('GET', '/v1/ops?type=revoke')).body.map((o: { id: string; status: string }) => [o.id, o.status])).toEqual([[revoked.body.id, 'synced']]);
    // Its ops up to afterSeq stand; a later one is refused.
    await dora.mutate({ type: 'create', domain: 'note', entity: 'after-revoke', fields: { text: 'x' } });
    expect(await server.importBundle(await dora.exportBundle(server.versionVector()))).toMatchObject({ added: 0, refused: 1 });
    expectError(await call('GET', '/v1/entities/note/after-revoke'), 404, 'ENTITY_NOT_FOUND');
    expect((await call('GET', '/v1/entities/note/from-dora')).status).toBe(200);
    // Revoking with an explicit afterSeq.
    const gwRevoked = await call('POST', `/v1/devices/${shortLived.body.device}/revoke`, { body: { afterSeq: 0 } });
    expect(gwRevoked.body).toMatchObject({ target: shortLived.body.device, afterSeq: 0 });
  });
});

describe('devices and byte values', () => {
  it('lists a device enrolled through the API, with its user and role, before its first op', async () => {
    const { call, team } = await setup();
    const dir = join(team.root, 'erin');
    await mkdir(dir, { recursive: true });
    const { key } = await loadOrCreateDeviceKey(dir);
    expect((await call('POST', '/v1/devices', { body: { device: key.signer.device, user: 'erin', role: 'gateway' } })).status).toBe(201);
    // The endpoint's summary: "Devices: role, user, last op, counts per status, connection".
    const devices = await call('GET', '/v1/devices');
    expect(devices.body.find((d: { device: string }) => d.device === key.signer.device)).toMatchObject({ device: key.signer.device, user: 'erin', role: 'gateway', revoked: false, connected: false, lastSeq: 0 });
  });

  it('byte strings travel as {"$bytes": base64} both ways: a PUT stores bytes, as a field device writes them', async () => {
    const { server, call } = await setup();
    await server.mutate({ type: 'create', domain: 'evidence', entity: 'from-node', fields: { photo: Uint8Array.of(0, 1, 2) } });
    const read = await call('GET', '/v1/entities/evidence/from-node');
    expect(read.body.fields).toEqual({ photo: { $bytes: 'AAEC' } });
    // Writing back what was read must give the same value, not a map with a "$bytes" key.
    expect((await call('PUT', '/v1/entities/evidence/from-api', { body: { fields: read.body.fields } })).status).toBe(201);
    const stored = await server.get('evidence', 'from-api');
    expect(stored?.fields.photo).toBeInstanceOf(Uint8Array);
    expect(Buffer.from(stored!.fields.photo as Uint8Array).toString('hex')).toBe('000102');
  });
});

describe('revoking HQ itself', () => {
  it('refuses to revoke the team\'s HQ device (it would void every later HQ op and cut HQ off everywhere)', async () => {
    const { server, call } = await setup();
    const reply = await call('POST', `/v1/devices/${server.device}/revoke`, { body: { reason: 'slip of the mouse' } });
    expect([400, 409], JSON.stringify(reply.body)).toContain(reply.status);
    expect(reply.body).toEqual({ error: { code: expect.any(String), message: expect.any(String) } });
    expect(server.isRevoked(server.device)).toBe(false);
    // HQ's edits still count.
    expect((await call('PUT', '/v1/entities/case/c-1', { body: { fields: { title: 'Fire' } } })).body.status).toBe('synced');
    expect((await call('GET', '/v1/entities/case/c-1')).status).toBe(200);
  });
});

describe('conflicts and forks', () => {
  it('lists a manual conflict with its candidates, resolves it, and answers 404 for the stale conflict', async () => {
    const { server, team, call } = await setup();
    const alice = await team.node('alice');
    await alice.mutate({ type: 'create', domain: 'case', entity: 'case-7', fields: { title: 'Warehouse fire', status: 'open' } });
    await server.importBundle(await alice.exportBundle());
    // Concurrent: the field closes the case while HQ staff escalate it.
    await alice.mutate({ type: 'update', domain: 'case', entity: 'case-7', fields: { status: 'closed' } });
    expect((await call('PUT', '/v1/entities/case/case-7', { body: { fields: { status: 'escalated' } } })).body.type).toBe('update');
    await server.importBundle(await alice.exportBundle(server.versionVector()));

    const conflicts = await call('GET', '/v1/conflicts');
    expect(conflicts.status).toBe(200);
    expect(conflicts.body).toHaveLength(1);
    const conflict = conflicts.body[0];
    expect(conflict).toMatchObject({ id: expect.stringMatching(/^[0-9a-f]{64}$/), domain: 'case', entity: 'case-7' });
    expect(conflict.fields).toHaveLength(1);
    expect(conflict.fields[0].field).toBe('status');
    expect(conflict.fields[0].candidates.map((c: { value: string; user: string }) => [c.value, c.user]).sort()).toEqual([
      ['closed', 'alice'],
      ['escalated', 'hq-staff'],
    ]);
    expect((await call('GET', '/v1/entities/case/case-7')).body.conflict.id).toBe(conflict.id);

    // A choice that leaves a conflicting field open is refused.
    expectError(await call('POST', `/v1/conflicts/${conflict.id}/resolve`, { body: { fields: { title: 'x' } } }), 400, 'BAD_RESOLUTION');
    const resolved = await call('POST', `/v1/conflicts/${conflict.id}/resolve`, { body: { fields: { status: 'escalated' } } });
    expect(resolved.status, JSON.stringify(resolved.body)).toBe(200);
    expect(resolved.body).toEqual({ id: expect.any(String), seq: expect.any(Number), status: 'synced' });
    expect((await call('GET', '/v1/conflicts')).body).toEqual([]);
    expect((await call('GET', '/v1/entities/case/case-7')).body).toMatchObject({ fields: { title: 'Warehouse fire', status: 'escalated' }, conflict: null });
    // The conflict is gone: resolving it again is a stale request.
    expectError(await call('POST', `/v1/conflicts/${conflict.id}/resolve`, { body: { fields: { status: 'closed' } } }), 404, 'CONFLICT_NOT_FOUND');
    expectError(await call('POST', `/v1/conflicts/${'0'.repeat(64)}/resolve`, { body: { delete: true } }), 404, 'CONFLICT_NOT_FOUND');
  });

  it('resolves a conflict by deleting the entity', async () => {
    const { server, team, call } = await setup();
    const alice = await team.node('alice');
    await alice.mutate({ type: 'create', domain: 'case', entity: 'dup', fields: { title: 'A' } });
    await call('PUT', '/v1/entities/case/dup', { body: { fields: { title: 'B' } } }); // a concurrent create at HQ
    await server.importBundle(await alice.exportBundle());
    const [conflict] = (await call('GET', '/v1/conflicts')).body;
    expect(conflict.entity).toBe('dup');
    const resolved = await call('POST', `/v1/conflicts/${conflict.id}/resolve`, { body: { delete: true } });
    expect(resolved.status, JSON.stringify(resolved.body)).toBe(200);
    expect((await call('GET', '/v1/conflicts')).body).toEqual([]);
    expectError(await call('GET', '/v1/entities/case/dup'), 404, 'ENTITY_NOT_FOUND');
  });

  it('lists fork proofs: a device that wrote two different ops at one seq', async () => {
    const { server, team, call } = await setup();
    expect((await call('GET', '/v1/forks')).body).toEqual([]);
    const alice = await team.node('alice');
    await alice.close();
    // A cloned data dir: the same key writing its own seq 1.
    const cloneDir = join(team.root, 'alice-clone');
    await cp(alice.dataDir, cloneDir, { recursive: true });
    const original = await team.reopen(alice);
    const clone = hq.track(await FieldNode.open({ dataDir: cloneDir, team: team.name, user: 'alice', domains: DOMAINS }));
    expect(clone.device).toBe(original.device);
    await original.mutate({ type: 'create', domain: 'note', entity: 'n', fields: { text: 'original' } });
    await clone.mutate({ type: 'create', domain: 'note', entity: 'n', fields: { text: 'clone' } });
    await server.importBundle(await original.exportBundle());
    const second = await server.importBundle(await clone.exportBundle());
    expect(second.forks).toEqual([{ device: original.device, seq: 1 }]);

    const forks = await call('GET', '/v1/forks');
    expect(forks.status).toBe(200);
    expect(forks.body).toEqual([{ device: original.device, seq: 1, ops: [expect.any(String), expect.any(String)] }]);
    const bytes = forks.body[0].ops.map((b: string) => Buffer.from(b, 'base64'));
    const ids = [(await original.ops())[0]!.id, (await clone.ops())[0]!.id];
    const { opIdOf } = await import('../../src/core/op.ts');
    expect(bytes.map((b: Buffer) => opIdOf(b)).sort()).toEqual(ids.sort());
  });
});

describe('OpenAPI', () => {
  it('serves a valid OpenAPI 3 document describing every endpoint', async () => {
    const { call } = await setup();
    const reply = await call('GET', '/v1/openapi.json');
    expect(reply.status).toBe(200);
    const doc = reply.body;

    // The document's structure, checked against the shape OpenAPI 3.x requires.
    const ajv = new Ajv({ strict: false, allErrors: true });
    const operation = {
      type: 'object',
      required: ['responses'],
      properties: {
        summary: { type: 'string' },
        parameters: {
          type: 'array',
          items: { type: 'object', required: ['name', 'in'], properties: { name: { type: 'string' }, in: { enum: ['path', 'query', 'header', 'cookie'] }, required: { type: 'boolean' }, schema: { type: 'object' } } },
        },
        requestBody: { type: 'object', required: ['content'], properties: { content: { type: 'object' } } },
        responses: { type: 'object', minProperties: 1, propertyNames: { pattern: '^([1-5][0-9X]{2}|default)$' } },
      },
    };
    const valid = ajv.validate(
      {
        type: 'object',
        required: ['openapi', 'info', 'paths'],
        properties: {
          openapi: { type: 'string', pattern: '^3\\.[0-9]+\\.[0-9]+$' },
          info: { type: 'object', required: ['title', 'version'], properties: { title: { type: 'string' }, version: { type: 'string' } } },
          paths: {
            type: 'object',
            propertyNames: { pattern: '^/' },
            additionalProperties: {
              type: 'object',
              propertyNames: { enum: ['get', 'put', 'post', 'delete', 'patch', 'head', 'options', 'trace', 'summary', 'description', 'parameters', 'servers'] },
              properties: { get: operation, put: operation, post: operation, delete: operation },
            },
          },
          components: { type: 'object', properties: { securitySchemes: { type: 'object' } } },
          security: { type: 'array' },
        },
      },
      doc,
    );
    expect(ajv.errors ?? [], JSON.stringify(ajv.errors)).toEqual([]);
    expect(valid).toBe(true);

    const expected: Record<string, string[]> = {
      '/v1/status': ['get'],
      '/v1/entities/{domain}': ['get'],
      '/v1/entities/{domain}/{entity}': ['get', 'put', 'delete'],
      '/v1/entities/{domain}/{entity}/history': ['get'],
      '/v1/ops': ['get'],
      '/v1/devices': ['get', 'post'],
      '/v1/devices/{device}/queue': ['get'],
      '/v1/devices/{device}/revoke': ['post'],
      '/v1/conflicts': ['get'],
      '/v1/conflicts/{id}/resolve': ['post'],
      '/v1/forks': ['get'],
      '/v1/retries': ['get'],
      '/v1/events': ['get'],
      '/v1/openapi.json': ['get'],
    };
    for (const [path, methods] of Object.entries(expected)) {
      expect(Object.keys(doc.paths), path).toContain(path);
      expect(Object.keys(doc.paths[path]).sort(), path).toEqual(expect.arrayContaining(methods));
      // Every operation documents its success answer, not only its errors.
      for (const method of methods) expect(Object.keys(doc.paths[path][method].responses).filter((s) => s.startsWith('2')), `${method} ${path}`).not.toEqual([]);
      // Every {param} of the template is declared as a required path parameter, and no other.
      const templated = [...path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]).sort();
      for (const method of methods) {
        const op = doc.paths[path][method];
        const declared = (op.parameters ?? []).filter((p: { in: string }) => p.in === 'path');
        expect(declared.map((p: { name: string }) => p.name).sort(), `${method} ${path}`).toEqual(templated);
        expect(declared.every((p: { required: boolean }) => p.required === true), `${method} ${path}`).toBe(true);
      }
    }
    expect(doc.paths['/v1/ops'].get.parameters.find((p: { name: string }) => p.name === 'status').schema.enum).toEqual(['pending', 'synced', 'failed', 'conflict']);
    expect(doc.paths['/v1/devices'].post.requestBody.content['application/json'].schema.required).toEqual(['device', 'user', 'role']);
    expect(doc.components.securitySchemes.bearer).toMatchObject({ type: 'http', scheme: 'bearer' });
    // Every $ref resolves inside the document.
    const refs = JSON.stringify(doc).match(/"\$ref":"[^"]+"/g) ?? [];
    for (const ref of refs) {
      const pointer = ref.slice(8, -1);
      expect(pointer.startsWith('#/'), pointer).toBe(true);
      const target = pointer.slice(2).split('/').reduce((node: any, part) => node?.[part.replace(/~1/g, '/').replace(/~0/g, '~')], doc);
      expect(target, pointer).toBeDefined();
    }
  });
});

describe('bad requests', () => {
  it('answers 401 without the right bearer token, on every endpoint', async () => {
    const { call } = await setup();
    for (const [method, path] of [
      ['GET', '/v1/status'],
      ['GET', '/v1/openapi.json'],
      ['GET', '/v1/entities/case'],
      ['PUT', '/v1/entities/case/x'],
      ['POST', '/v1/devices'],
      ['GET', '/v1/events'],
    ] as const) {
      const body = method === 'GET' ? undefined : { fields: {} };
      for (const token of [null, 'wrong', TOKEN + 'x', TOKEN.toUpperCase()]) {
        const reply = await call(method, path, { token, body });
        expectError(reply, 401, 'UNAUTHORIZED');
        expect(reply.headers.get('www-authenticate')).toBe('Bearer');
      }
      for (const authorization of [`Basic ${TOKEN}`, `Bearer${TOKEN}`, `Bearer  ${TOKEN}`, TOKEN]) {
        expect((await call(method, path, { token: null, body, headers: { authorization } })).status, authorization).toBe(401);
      }
    }
    // The scheme is case-insensitive (RFC 9110), the token is not.
    for (const scheme of ['bearer', 'BEARER']) expect((await call('GET', '/v1/devices', { token: null, headers: { authorization: `${scheme} ${TOKEN}` } })).status).toBe(200);
    // Nothing was written by the refused requests.
    expect((await call('GET', '/v1/entities/case/x')).status).toBe(404);
  });

  it('answers 400 with {error:{code,message}} for malformed JSON, unknown fields and bad query values', async () => {
    const { server, call } = await setup();
    await call('PUT', '/v1/entities/case/c-1', { body: { fields: { title: 'Fire' } } });
    const hash = await server.stateHash();

    expectError(await call('PUT', '/v1/entities/case/c-1', { raw: '{"fields": {"title": ' }), 400);
    expectError(await call('PUT', '/v1/entities/case/c-1', { raw: 'not json at all' }), 400);
    expectError(await call('POST', '/v1/devices', { raw: '{"device":' }), 400);
    expectError(await call('PUT', '/v1/entities/case/c-1', { body: {} }), 400, 'BAD_REQUEST');
    expectError(await call('PUT', '/v1/entities/case/c-1', { body: { fields: 'title=x' } }), 400, 'BAD_REQUEST');
    expectError(await call('PUT', '/v1/entities/nope/c-1', { body: { fields: { a: 1 } } }), 400, 'UNKNOWN_DOMAIN');
    expectError(await call('POST', '/v1/devices', { body: { device: 'not-a-peer-id', user: 'x', role: 'field' } }), 400, 'BAD_DEVICE_ID');
    expectError(await call('POST', '/v1/devices', { body: { device: server.device, user: 'x', role: 'server' } }), 400, 'BAD_REQUEST');
    expectError(await call('POST', '/v1/devices', { body: { device: server.device, role: 'field' } }), 400, 'BAD_REQUEST');
    expectError(await call('POST', '/v1/devices', { body: { device: server.device, user: 'x', role: 'field', validDays: 0 } }), 400, 'BAD_REQUEST');
    expectError(await call('POST', '/v1/devices/not-a-peer-id/revoke', { body: {} }), 400, 'BAD_DEVICE_ID');
    expectError(await call('POST', `/v1/devices/${server.device}/revoke`, { body: { afterSeq: -1 } }), 400, 'BAD_REQUEST');

    // Bad values in the query string.
    expectError(await call('GET', '/v1/ops?status=bogus'), 400, 'BAD_REQUEST');
    expectError(await call('GET', '/v1/ops?type=explode'), 400, 'BAD_REQUEST');
    expectError(await call('GET', '/v1/ops?limit=0'), 400, 'BAD_REQUEST');
    expectError(await call('GET', '/v1/ops?limit=many'), 400, 'BAD_REQUEST');
    for (const filter of ['entity', 'domain', 'device']) expectError(await call('GET', `/v1/ops?${filter}=`), 400, 'BAD_REQUEST');
    expectError(await call('GET', '/v1/entities/case?limit=100000'), 400, 'BAD_REQUEST');
    expectError(await call('GET', `/v1/entities/case?where=${encodeURIComponent('{status:open}')}`), 400, 'BAD_REQUEST');
    expectError(await call('GET', `/v1/entities/case?where=${encodeURIComponent('["a"]')}`), 400, 'BAD_REQUEST');

    // Not found.
    expectError(await call('GET', '/v1/entities/case/missing'), 404, 'ENTITY_NOT_FOUND');
    expectError(await call('DELETE', '/v1/entities/case/missing'), 404, 'ENTITY_NOT_FOUND');
    expect((await call('GET', '/v1/nowhere')).status).toBe(404);
    expect(await server.stateHash()).toBe(hash);
  });

  // The route schemas say additionalProperties: false: a typo must be refused, not dropped silently
  // (a misspelt field of a PUT, an extra field of an enrollment, a misspelt afterSeq of a revocation,
  // a misspelt filter of /v1/ops that would otherwise list every op).
  it.each([
    ['PUT /v1/entities/:domain/:entity with a misspelt "feilds"', 'PUT', '/v1/entities/case/c-1', { fields: { title: 'Flood' }, feilds: { status: 'closed' } }],
    ['POST /v1/devices with an extra "admin"', 'POST', '/v1/devices', { device: '$device', user: 'x', role: 'field', admin: true }],
    ['POST /v1/devices/:device/revoke with a misspelt "after_seq"', 'POST', '/v1/devices/$device/revoke', { reason: 'x', after_seq: 3 }],
    ['GET /v1/ops with a misspelt filter "stauts"', 'GET', '/v1/ops?stauts=failed', undefined],
  ] as const)('refuses unknown fields with 400: %s', async (_name, method, path, body) => {
    const { server, call } = await setup();
    await call('PUT', '/v1/entities/case/c-1', { body: { fields: { title: 'Fire' } } });
    const hash = await server.stateHash();
    const before = await server.ops();
    const { key } = await loadOrCreateDeviceKey(await hq.dir());
    const device = key.signer.device;
    const withDevice = body === undefined ? undefined : JSON.parse(JSON.stringify(body).replaceAll('$device', device));

    const reply = await call(method, path.replace('$device', device), withDevice === undefined ? {} : { body: withDevice });
    expectError(reply, 400, 'BAD_REQUEST');
    expect(await server.stateHash()).toBe(hash);
    expect(await server.ops()).toEqual(before);
    expect(server.isRevoked(device)).toBe(false);
    expect(server.roleOf(device)).toBeNull();
  });
});

describe('events', () => {
  it('frees an event stream\'s slot when its client goes away (maxEventClients)', async () => {
    const { base } = await setup({ maxEventClients: 1 });
    const open = async () => {
      const controller = new AbortController();
      hq.closeLater({ close: async () => controller.abort() });
      const response = await fetch(`${base}/v1/events`, { headers: { authorization: `Bearer ${TOKEN}` }, signal: controller.signal });
      return { response, controller };
    };
    const first = await open();
    expect(first.response.status).toBe(200);
    const second = await open();
    expect(second.response.status).toBe(503);
    expect(await second.response.json()).toEqual({ error: { code: 'TOO_MANY_CLIENTS', message: expect.any(String) } });
    first.controller.abort();
    await waitFor('the slot to be freed', async () => {
      const next = await open();
      if (next.response.status !== 200) {
        await next.response.body?.cancel();
        return false;
      }
      next.controller.abort();
      return true;
    }, 10_000, 100);
  });

  it('streams a status event for a new op over Server-Sent Events', async () => {
    const { call, base } = await setup();
    const controller = new AbortController();
    hq.closeLater({ close: async () => controller.abort() });
    const response = await fetch(`${base}/v1/events`, { headers: { authorization: `Bearer ${TOKEN}` }, signal: controller.signal });
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const reader = response.body!.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    let raw = '';
    const messages: { event: string; data: any }[] = [];
    /** Reads SSE messages into `messages` until `done` holds, with a deadline. */
    const readUntil = async (done: () => boolean, ms = 10_000) => {
      const deadline = Date.now() + ms;
      for (;;) {
        let end: number;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = /^event: (.*)$/m.exec(block)?.[1];
          const data = /^data: (.*)$/m.exec(block)?.[1];
          if (event !== undefined && data !== undefined) messages.push({ event, data: JSON.parse(data) });
        }
        if (done()) return;
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`no matching event within ${ms} ms (saw ${messages.map((m) => m.event).join(', ')})`);
        const chunk = await within('reading the event stream', reader.read(), left);
        if (chunk.done) throw new Error('event stream ended');
        const text = decoder.decode(chunk.value, { stream: true });
        raw += text;
        buffer += text;
      }
    };
    // The stream opens with a comment before any event.
    await readUntil(() => raw.startsWith(': fieldmesh events\n\n'));

    const put = await call('PUT', '/v1/entities/case/live', { body: { fields: { title: 'Live' } } });
    const statusOf = () => messages.find((m) => m.event === 'status' && m.data.op === put.body.id);
    const entityOf = () => messages.find((m) => m.event === 'entity' && m.data.view?.entity === 'live');
    await readUntil(() => statusOf() !== undefined && entityOf() !== undefined);
    expect(statusOf()!.data).toMatchObject({ kind: 'status', op: put.body.id, seq: put.body.seq, status: { status: 'synced' } });
    expect(entityOf()!.data.view).toMatchObject({ domain: 'case', entity: 'live', fields: { title: 'Live' } });
    controller.abort();
    await reader.cancel().catch(() => undefined);
  });
});

describe('shutting down with event clients connected', () => {
  it('close() ends every open event stream (and idle keep-alive connections): it resolves and the client sees its stream end', async () => {
    const { app, base, call } = await setup();
    const controller = new AbortController();
    hq.closeLater({ close: async () => controller.abort() });
    const response = await fetch(`${base}/v1/events`, { headers: { authorization: `Bearer ${TOKEN}` }, signal: controller.signal });
    expect(response.status).toBe(200);
    const reader = response.body!.getReader();
    const decoder = new TextDecoder();
    let text = '';
    for (let i = 0; i < 100 && !text.includes('\n\n'); i++) {
      const chunk = await reader.read();
      if (chunk.done) break;
      text += decoder.decode(chunk.value, { stream: true });
    }
    expect(text).toBe(': fieldmesh events\n\n');
    // A plain request too, whose keep-alive connection stays open after it.
    expect((await call('GET', '/v1/status')).status).toBe(200);

    // Without ending the stream, close() never resolves (the server waits for every connection).
    await app.close();

    let ended = false;
    for (let i = 0; i < 1000 && !ended; i++) ended = (await reader.read()).done;
    expect(ended).toBe(true);
  });
});

/** `[[[ ... ]]]` nested `depth` deep around `inner`, as JSON text (never built as a value). */
const nestedArrays = (depth: number, inner = '1') => '['.repeat(depth) + inner + ']'.repeat(depth);

describe('deeply nested values', () => {
  it.each([
    ['an array nested 5 000 deep (10 KB)', `{"fields":{"a":${nestedArrays(5_000)}}}`],
    ['an array nested 3 000 deep', `{"fields":{"a":${nestedArrays(3_000)}}}`],
    ['an array nested 200 000 deep (400 KB)', `{"fields":{"a":${nestedArrays(200_000)}}}`],
    ['maps nested 5 000 deep', `{"fields":{"a":${'{"a":'.repeat(5_000)}1${'}'.repeat(5_000)}}}`],
    ['a $bytes value under 5 000 arrays', `{"fields":{"a":${nestedArrays(5_000, '{"$bytes":"AAEC"}')}}}`],
    ['a value one level past the limit (17 arrays)', `{"fields":{"a":${nestedArrays(17)}}}`],
    ['a deep value beside the fields', `{"fields":{"a":1},"extra":${nestedArrays(5_000)}}`],
  ])('PUT with %s is a 400 VALUE_TOO_DEEP, and nothing is written', async (_name, raw) => {
    const { server, call } = await setup();
    const hash = await server.stateHash();
    expectError(await call('PUT', '/v1/entities/case/deep', { raw }), 400, 'VALUE_TOO_DEEP');
    expect(await server.stateHash()).toBe(hash);
    expect(await server.ops()).toEqual([]);
  });

  it('accepts values right at the limit: 16 nested arrays, and a byte string inside 16 arrays', async () => {
    const { server, call } = await setup();
    expect((await call('PUT', '/v1/entities/evidence/at-limit', { raw: `{"fields":{"a":${nestedArrays(16)},"b":${nestedArrays(16, '{"$bytes":"AAEC"}')}}}` })).status).toBe(201);
    let b = (await server.get('evidence', 'at-limit'))!.fields.b;
    for (let depth = 0; depth < 16; depth++) b = (b as readonly unknown[])[0] as typeof b;
    expect(b).toEqual(Uint8Array.of(0, 1, 2));
  });

  it('refuses deep values in a conflict resolution and in a where query with VALUE_TOO_DEEP, not a 500', async () => {
    const { call } = await setup();
    await call('PUT', '/v1/entities/case/c-1', { body: { fields: { title: 'Fire' } } });
    expectError(await call('POST', `/v1/conflicts/${'0'.repeat(64)}/resolve`, { raw: `{"fields":{"a":${nestedArrays(5_000)}}}` }), 400, 'VALUE_TOO_DEEP');
    expectError(await call('GET', `/v1/entities/case?where=${encodeURIComponent(`{"title":${nestedArrays(1_500)}}`)}`), 400, 'VALUE_TOO_DEEP');
    expect((await call('GET', `/v1/entities/case?where=${encodeURIComponent('{"title":"Fire"}')}`)).body).toHaveLength(1);
  });
});

describe('unknown routes and wrong methods', () => {
  it('answers HEAD on every GET route, /v1/events included (headers only, no stream left open)', async () => {
    const { call } = await setup();
    const status = await call('HEAD', '/v1/status');
    expect([status.status, status.body]).toEqual([200, null]);
    const events = await call('HEAD', '/v1/events');
    expect([events.status, events.body]).toEqual([200, null]);
    expect(events.headers.get('content-type')).toMatch(/^text\/event-stream/);
  });

  it('answers 404 NOT_FOUND for an unknown route, in the API\'s error shape', async () => {
    const { call } = await setup();
    for (const [method, path] of [
      ['GET', '/v1/nothing'],
      ['GET', '/v1/entities/case/c-7/nothing'],
      ['POST', '/v2/status'],
      ['GET', '/'],
    ] as const) {
      const reply = await call(method, path);
      expectError(reply, 404, 'NOT_FOUND');
      expect(reply.body.error.message).toContain(path);
    }
    // Without the token it is a 401 all the same: which routes exist is not told to strangers.
    expectError(await call('GET', '/v1/nothing', { token: null }), 401, 'UNAUTHORIZED');
  });

  it.each([
    ['PATCH', '/v1/entities/case/c-7', 'GET, HEAD, PUT, DELETE', { fields: { title: 'x' } }],
    ['POST', '/v1/status', 'GET, HEAD', undefined],
    ['DELETE', '/v1/devices', 'GET, HEAD, POST', undefined],
    ['GET', '/v1/conflicts/abc/resolve', 'POST', undefined],
    ['PUT', '/v1/entities/case', 'GET, HEAD', { fields: {} }],
  ] as const)('answers 405 METHOD_NOT_ALLOWED with an Allow header: %s %s', async (method, path, allow, body) => {
    const { server, call } = await setup();
    const reply = await call(method, path, body === undefined ? {} : { body });
    expectError(reply, 405, 'METHOD_NOT_ALLOWED');
    expect(reply.headers.get('allow')).toBe(allow);
    expect(await server.ops()).toEqual([]);
  });
});

describe('unknown domains, entities and devices', () => {
  it('GET on an undeclared domain is a 400 UNKNOWN_DOMAIN, as PUT is', async () => {
    const { call } = await setup();
    expectError(await call('PUT', '/v1/entities/nope/x', { body: { fields: { a: 1 } } }), 400, 'UNKNOWN_DOMAIN');
    expectError(await call('GET', '/v1/entities/nope'), 400, 'UNKNOWN_DOMAIN');
    expectError(await call('GET', '/v1/entities/nope/x'), 400, 'UNKNOWN_DOMAIN');
    expectError(await call('GET', '/v1/entities/nope/x/history'), 400, 'UNKNOWN_DOMAIN');
    expectError(await call('GET', '/v1/ops?domain=nope'), 400, 'UNKNOWN_DOMAIN');
    expect((await call('GET', '/v1/entities/case')).body).toEqual([]);
  });

  it('history: 404 ENTITY_NOT_FOUND when no op names the entity; a deleted entity keeps its history', async () => {
    const { call } = await setup();
    expectError(await call('GET', '/v1/entities/case/nope/history'), 404, 'ENTITY_NOT_FOUND');
    await call('PUT', '/v1/entities/case/gone', { body: { fields: { title: 'x' } } });
    await call('DELETE', '/v1/entities/case/gone');
    const history = await call('GET', '/v1/entities/case/gone/history');
    expect(history.status).toBe(200);
    expect(history.body.map((o: { type: string }) => o.type)).toEqual(['create', 'delete']);
  });

  it('queue: 400 BAD_DEVICE_ID for a malformed id, 404 DEVICE_NOT_FOUND for a device HQ never enrolled, [] for an enrolled one with nothing pending', async () => {
    const { server, call } = await setup();
    expectError(await call('GET', '/v1/devices/not-a-device/queue'), 400, 'BAD_DEVICE_ID');
    expectError(await call('GET', '/v1/devices/not-a-device/queue?limit=0'), 400, 'BAD_DEVICE_ID');
    expectError(await call('GET', '/v1/ops?device=not-a-device'), 400, 'BAD_DEVICE_ID');
    const { key } = await loadOrCreateDeviceKey(await hq.dir());
    expectError(await call('GET', `/v1/devices/${key.signer.device}/queue`), 404, 'DEVICE_NOT_FOUND');
    expect((await call('POST', '/v1/devices', { body: { device: key.signer.device, user: 'erin', role: 'field' } })).status).toBe(201);
    const queue = await call('GET', `/v1/devices/${key.signer.device}/queue`);
    expect(queue.status).toBe(200);
    expect(queue.body).toEqual([]);
    expect((await call('GET', `/v1/devices/${server.device}/queue`)).body).toEqual([]);
  });
});

describe('revocation edge cases', () => {
  /** A device enrolled through the API (its key made in a temp dir). */
  const enrolled = async (call: Awaited<ReturnType<typeof setup>>['call'], user: string) => {
    const { key } = await loadOrCreateDeviceKey(await hq.dir());
    expect((await call('POST', '/v1/devices', { body: { device: key.signer.device, user, role: 'field' } })).status).toBe(201);
    return key.signer.device;
  };
  const revokeOps = async (call: Awaited<ReturnType<typeof setup>>['call']) => (await call('GET', '/v1/ops?type=revoke')).body.map((o: { id: string }) => o.id);

  it('takes a revocation with no body at all (or an empty JSON body); a malformed id is a 400 BAD_DEVICE_ID', async () => {
    const { server, call } = await setup();
    expectError(await call('POST', '/v1/devices/junk/revoke'), 400, 'BAD_DEVICE_ID');
    expectError(await call('POST', '/v1/devices/junk/revoke', { body: { after_seq: 1 } }), 400, 'BAD_DEVICE_ID');
    const first = await enrolled(call, 'frank');
    const noBody = await call('POST', `/v1/devices/${first}/revoke`);
    expect(noBody.status, JSON.stringify(noBody.body)).toBe(200);
    expect(noBody.body).toEqual({ id: expect.any(String), target: first, afterSeq: 0 });
    const second = await enrolled(call, 'gina');
    const emptyJson = await call('POST', `/v1/devices/${second}/revoke`, { raw: '' });
    expect(emptyJson.status, JSON.stringify(emptyJson.body)).toBe(200);
    expect(server.isRevoked(first) && server.isRevoked(second)).toBe(true);
  });

  it('is idempotent: revoking again returns the first revocation (200) and appends nothing, also when two requests race', async () => {
    const { server, call } = await setup();
    const device = await enrolled(call, 'hal');
    const first = await call('POST', `/v1/devices/${device}/revoke`, { body: { reason: 'lost' } });
    expect(first.status).toBe(200);
    const again = await call('POST', `/v1/devices/${device}/revoke`, { body: { reason: 'lost again', afterSeq: 5 } });
    expect(again.status).toBe(200);
    expect(again.body).toEqual(first.body);
    expect(await revokeOps(call)).toEqual([first.body.id]);

    const other = await enrolled(call, 'ivy');
    const [a, b] = await Promise.all([call('POST', `/v1/devices/${other}/revoke`), call('POST', `/v1/devices/${other}/revoke`)]);
    expect([a.status, b.status]).toEqual([200, 200]);
    expect(a.body).toEqual(b.body);
    expect(await revokeOps(call)).toEqual([first.body.id, a.body.id]);
    expect(server.isRevoked(other)).toBe(true);
  });

  it('refuses to revoke a device HQ never enrolled: 404 DEVICE_NOT_FOUND, nothing appended', async () => {
    const { server, call } = await setup();
    const { key } = await loadOrCreateDeviceKey(await hq.dir());
    expectError(await call('POST', `/v1/devices/${key.signer.device}/revoke`, { body: { reason: 'who?' } }), 404, 'DEVICE_NOT_FOUND');
    expect(server.isRevoked(key.signer.device)).toBe(false);
    expect(await server.ops()).toEqual([]);
  });
});

describe('status codes, content types and byte strings', () => {
  it('PUT answers 201 when it creates the entity and 200 when it updates it (also after a delete: 201 again)', async () => {
    const { call } = await setup();
    const created = await call('PUT', '/v1/entities/note/n-1', { body: { fields: { text: 'a' } } });
    expect([created.status, created.body.type]).toEqual([201, 'create']);
    const updated = await call('PUT', '/v1/entities/note/n-1', { body: { fields: { text: 'b' } } });
    expect([updated.status, updated.body.type]).toEqual([200, 'update']);
    await call('DELETE', '/v1/entities/note/n-1');
    const again = await call('PUT', '/v1/entities/note/n-1', { body: { fields: { text: 'c' } } });
    expect([again.status, again.body.type]).toEqual([201, 'create']);
  });

  it('answers 415 UNSUPPORTED_MEDIA_TYPE for a body that is not JSON, and takes JSON with a charset', async () => {
    const { server, call } = await setup();
    for (const type of ['text/plain', 'application/x-www-form-urlencoded', 'application/octet-stream']) {
      expectError(await call('PUT', '/v1/entities/case/c-1', { raw: '{"fields":{"title":"Fire"}}', headers: { 'content-type': type } }), 415, 'UNSUPPORTED_MEDIA_TYPE');
      expectError(await call('POST', `/v1/devices/${server.device}/revoke`, { raw: '{}', headers: { 'content-type': type } }), 415, 'UNSUPPORTED_MEDIA_TYPE');
    }
    expect(await server.ops()).toEqual([]);
    expect((await call('PUT', '/v1/entities/case/c-1', { raw: '{"fields":{"title":"Fire"}}', headers: { 'content-type': 'application/json; charset=utf-8' } })).status).toBe(201);
  });

  it('answers 413 TOO_LARGE in the API\'s shape for a body over the limit', async () => {
    const { call } = await setup();
    expectError(await call('PUT', '/v1/entities/note/big', { body: { fields: { text: 'x'.repeat(1024 * 1024) } } }), 413, 'TOO_LARGE');
  });

  it.each([
    ['characters outside base64', '!!!notbase64'],
    ['missing padding', 'AAE'],
    ['base64url characters', 'AA-_'],
    ['whitespace', 'AA EC'],
    ['a number', 5],
    ['null', null],
  ])('refuses {"$bytes": ...} with %s: 400 BAD_BYTES, nothing written', async (_name, encoded) => {
    const { server, call } = await setup();
    const reply = await call('PUT', '/v1/entities/evidence/e-1', { body: { fields: { photo: { $bytes: encoded } } } });
    expectError(reply, 400, 'BAD_BYTES');
    expect(reply.body.error.message).toContain('photo');
    expect(await server.ops()).toEqual([]);
  });

  it('takes well-formed base64 of every length, and the empty byte string', async () => {
    const { server, call } = await setup();
    const fields = { a: { $bytes: '' }, b: { $bytes: 'AA==' }, c: { $bytes: 'AAE=' }, d: { $bytes: 'AAEC' }, e: [{ $bytes: '/+8=' }] };
    expect((await call('PUT', '/v1/entities/evidence/e-1', { body: { fields } })).status).toBe(201);
    expect((await server.get('evidence', 'e-1'))!.fields).toEqual({ a: new Uint8Array(), b: Uint8Array.of(0), c: Uint8Array.of(0, 1), d: Uint8Array.of(0, 1, 2), e: [Uint8Array.of(0xff, 0xef)] });
    expect((await call('GET', '/v1/entities/evidence/e-1')).body.fields).toEqual(fields);
  });
});

describe('enrollment edge cases', () => {
  it('refuses to enroll HQ\'s own device id (409 CANNOT_ENROLL_HQ: it would replace HQ\'s root certificate) and a revoked device (409 DEVICE_REVOKED); enrolling again replaces the certificate', async () => {
    const { server, call } = await setup();
    expectError(await call('POST', '/v1/devices', { body: { device: server.device, user: 'x', role: 'field' } }), 409, 'CANNOT_ENROLL_HQ');
    expect(server.roleOf(server.device)).toBe('server');

    const { key } = await loadOrCreateDeviceKey(await hq.dir());
    const device = key.signer.device;
    expect((await call('POST', '/v1/devices', { body: { device, user: 'jo', role: 'field' } })).status).toBe(201);
    const renewed = await call('POST', '/v1/devices', { body: { device, user: 'jo', role: 'gateway', validDays: 30 } });
    expect(renewed.status).toBe(201);
    expect(server.roleOf(device)).toBe('gateway');

    expect((await call('POST', `/v1/devices/${device}/revoke`)).status).toBe(200);
    expectError(await call('POST', '/v1/devices', { body: { device, user: 'jo', role: 'field' } }), 409, 'DEVICE_REVOKED');
    expect(server.roleOf(device)).toBe('gateway');
  });
});

describe('hostile input from an acceptance run', () => {
  // A JSON body is never coerced: "3" is not 3 and 5 is not "5". A coerced afterSeq revoked a
  // device, and a coerced "true" resolved a conflict by deleting its entity.
  it.each([
    ['a revocation\'s afterSeq as a string', 'POST', '/v1/devices/$device/revoke', { afterSeq: '3' }],
    ['a revocation\'s reason as a number', 'POST', '/v1/devices/$device/revoke', { reason: 5 }],
    ['an enrollment\'s validDays as a string', 'POST', '/v1/devices', { device: '$device', user: 'x', role: 'field', validDays: '30' }],
    ['an enrollment\'s user as a number', 'POST', '/v1/devices', { device: '$device', user: 7, role: 'field' }],
    ['a resolution\'s delete as a string', 'POST', '/v1/conflicts/$conflict/resolve', { delete: 'true' }],
  ] as const)('refuses a body member of the wrong type with 400 BAD_REQUEST, nothing changed: %s', async (_name, method, path, body) => {
    // No receipt issuer: nothing but the request may change HQ's ops.
    const { server, team, call } = await setup({ startIssuer: false });
    const { key } = await loadOrCreateDeviceKey(await hq.dir());
    const device = key.signer.device;
    expect((await call('POST', '/v1/devices', { body: { device, user: 'x', role: 'field' } })).status).toBe(201);
    // An open conflict on case c-1: the field closes it while HQ staff escalate it.
    const alice = await team.node('alice');
    await alice.mutate({ type: 'create', domain: 'case', entity: 'c-1', fields: { title: 'Fire', status: 'open' } });
    await server.importBundle(await alice.exportBundle());
    await alice.mutate({ type: 'update', domain: 'case', entity: 'c-1', fields: { status: 'closed' } });
    await call('PUT', '/v1/entities/case/c-1', { body: { fields: { status: 'escalated' } } });
    await server.importBundle(await alice.exportBundle(server.versionVector()));
    const [conflict] = await server.conflicts();
    expect(conflict).toBeDefined();
    const hash = await server.stateHash();
    const ops = await server.ops();
    const certificates = server.certificates();
    const resolved = (text: string) => text.replaceAll('$device', device).replaceAll('$conflict', conflict!.id);

    expectError(await call(method, resolved(path), { body: JSON.parse(resolved(JSON.stringify(body))) }), 400, 'BAD_REQUEST');
    expect(await server.stateHash()).toBe(hash);
    expect(await server.ops()).toEqual(ops);
    expect(server.isRevoked(device)).toBe(false);
    expect(server.certificates()).toEqual(certificates);
    expect((await server.conflicts()).map((c) => c.id)).toEqual([conflict!.id]);
  });

  it.each([
    ['GET /v1/entities/:domain', '/v1/entities/case?limt=5'],
    ['GET /v1/entities/:domain/:entity/history', '/v1/entities/case/c-1/history?lmit=1'],
    ['GET /v1/devices/:device/queue', '/v1/devices/$hq/queue?lmit=1'],
    ['GET /v1/status', '/v1/status?verbose=1'],
    ['GET /v1/devices', '/v1/devices?role=field'],
    ['GET /v1/conflicts', '/v1/conflicts?domain=case'],
  ])('refuses an unknown query parameter with 400 BAD_REQUEST: %s', async (_name, path) => {
    const { server, call } = await setup();
    await call('PUT', '/v1/entities/case/c-1', { body: { fields: { title: 'Fire' } } });
    expectError(await call('GET', path.replace('$hq', server.device)), 400, 'BAD_REQUEST');
  });

  it('serves entity ids of every valid length (up to 128 chars); a longer path parameter or a malformed path is a 400 in the API\'s shape, behind the token', async () => {
    const { server, call } = await setup();
    const longest = 'e'.repeat(128);
    expect((await call('PUT', `/v1/entities/note/${longest}`, { body: { fields: { text: 'a' } } })).status).toBe(201);
    expect((await call('GET', `/v1/entities/note/${longest}`)).body).toMatchObject({ entity: longest, fields: { text: 'a' } });
    expect((await call('GET', `/v1/entities/note/${longest}/history`)).body).toHaveLength(1);
    expect((await call('DELETE', `/v1/entities/note/${longest}`)).status).toBe(200);
    expectError(await call('PUT', `/v1/entities/note/${'e'.repeat(129)}`, { body: { fields: { text: 'a' } } }), 400, 'BAD_OP_FIELD');
    const ops = await server.ops();

    for (const path of [`/v1/entities/note/${'e'.repeat(201)}`, '/v1/entities/note/%ZZ']) {
      expectError(await call('GET', path), 400, 'BAD_REQUEST');
      expectError(await call('PUT', path, { body: { fields: { text: 'a' } } }), 400, 'BAD_REQUEST');
      expectError(await call('GET', path, { token: null }), 401, 'UNAUTHORIZED');
    }
    expect(await server.ops()).toEqual(ops);
  });

  // Node's HTTP parser refuses these before Fastify sees a request; the answer is still ours.
  it.each([
    ['an unknown method', 'FROB /v1/status HTTP/1.1'],
    ['a malformed request line', 'GET /v1/status HTTP/9.9 extra'],
  ])('answers %s with 400 BAD_REQUEST in the API\'s error shape', async (_name, requestLine) => {
    const { base } = await setup();
    const { hostname, port } = new URL(base);
    const answer = await within('the answer to a malformed request', new Promise<string>((resolve, reject) => {
      let text = '';
      const socket = connect(Number(port), hostname, () => socket.write(`${requestLine}\r\nhost: x\r\nauthorization: Bearer ${TOKEN}\r\n\r\n`));
      socket.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
      socket.on('close', () => resolve(text));
      socket.on('error', reject);
    }));
    const [head, body] = answer.split('\r\n\r\n');
    expect(head).toMatch(/^HTTP\/1\.1 400 /);
    expect(JSON.parse(body!)).toEqual({ error: { code: 'BAD_REQUEST', message: expect.any(String) } });
  });

  it('refuses a string that is not well-formed UTF-16 (a lone surrogate) with 400 BAD_VALUE: HQ would show it as written, every other node as U+FFFD', async () => {
    const { server, call } = await setup();
    expectError(await call('PUT', '/v1/entities/note/n-1', { raw: '{"fields":{"text":"fire \\ud800"}}' }), 400, 'BAD_VALUE');
    expectError(await call('PUT', '/v1/entities/note/n-1', { raw: '{"fields":{"meta":{"\\udc00":1}}}' }), 400, 'BAD_VALUE');
    expect(await server.ops()).toEqual([]);
    expect((await call('PUT', '/v1/entities/note/n-1', { raw: '{"fields":{"text":"fire \\ud83d\\ude92"}}' })).status).toBe(201);
    expect((await call('GET', '/v1/entities/note/n-1')).body.fields).toEqual({ text: 'fire 🚒' });
  });
});
