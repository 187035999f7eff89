/**
 * HQ's receipts with real FieldNodes (real LevelDB in temp dirs) syncing over real libp2p on
 * loopback, in one process, static peers only (no mDNS): the uplink through the first device
 * that reaches HQ, receipts travelling to devices that never talked to HQ, rejections by schema
 * and by role, HQ restarting in the middle of a catch-up, transient faults while judging, HQ-side
 * edits with server-wins, HQ resolving a manual conflict, and revocation.
 */
import { describe, expect, it } from 'vitest';
import { authorOp } from '../../src/core/author.ts';
import type { EntityOp, Op, ReceiptBody } from '../../src/core/op.ts';
import type { Role } from '../../src/core/cert.ts';
import { HLC_ZERO } from '../../src/core/hlc.ts';
import { MIN_FRAME_BYTES } from '../../src/core/sync/session.ts';
import { LIMITS } from '../../src/core/limits.ts';
import { Policy } from '../../src/hq/policy.ts';
import { ReceiptIssuer } from '../../src/hq/receipts.ts';
import { loadOrCreateDeviceKey } from '../../src/node/device-key.ts';
import type { FieldNode, NodeEvent } from '../../src/node/field-node.ts';
import { allSynced, freePort, LOOPBACK, sameState, sleep, startMesh, useHq, waitFor } from './helpers.ts';

const DOMAINS = { case: 'manual', evidence: 'merge', task: 'server-wins', note: 'client-wins' } as const;

const hq = useHq();

/** Accepts everything HQ declares. */
const permissive = () => new Policy({ case: {}, evidence: {}, task: {}, note: {} });

/** The op summaries of a node, keyed "type domain/entity" for the given device. */
async function opsByTarget(node: FieldNode, device: string) {
  return new Map((await node.ops({ device, limit: 100_000 })).map((o) => [`${o.type} ${o.domain}/${o.entity}`, o]));
}

/** Every verdict in HQ's receipts, in HQ log order. */
async function verdictsOf(node: FieldNode) {
  const out: ReceiptBody['verdicts'][number][] = [];
  for (const summary of await node.ops({ device: node.hqDevice, type: 'receipt', limit: 100_000 })) {
    const op = (await node.op(summary.id)) as Op<ReceiptBody>;
    out.push(...op.verdicts);
  }
  return out;
}

/** Peer events of a node, recorded as they arrive (until the node closes). */
function recordPeers(node: FieldNode): NodeEvent[] {
  const events: NodeEvent[] = [];
  const subscription = node.subscribe({ kinds: ['peer'] });
  void (async () => {
    for await (const event of subscription) events.push(event);
  })().catch(() => undefined);
  return events;
}

const admittedDevices = (events: readonly NodeEvent[]) => events.flatMap((e) => (e.kind === 'peer' && e.event.kind === 'peer:admitted' ? [e.event.device] : []));

describe('uplink', () => {
  it('field devices sync among themselves while HQ is out of reach; the first to reach HQ carries everyone, and every op turns synced everywhere', async () => {
    const team = await hq.team(DOMAINS);
    const port = await freePort();
    const hqAddress = `/ip4/127.0.0.1/tcp/${port}/p2p/${team.hqDevice}`;
    const gateway = await team.node('gateway', { role: 'gateway' });
    const alice = await team.node('alice');
    const bob = await team.node('bob');
    const aliceEvents = recordPeers(alice);
    const bobEvents = recordPeers(bob);

    // Offline writes on every field device.
    await alice.mutate({ type: 'create', domain: 'case', entity: 'case-7', fields: { title: 'Warehouse fire', status: 'open' } });
    await alice.mutate({ type: 'create', domain: 'evidence', entity: 'ev-1', fields: { case: 'case-7', tags: ['exterior'] } });
    await bob.mutate({ type: 'create', domain: 'note', entity: 'n-1', fields: { text: 'road blocked' } });
    await gateway.mutate({ type: 'create', domain: 'task', entity: 't-1', fields: { what: 'fetch generator' } });

    // Only the gateway knows HQ's address, and keeps dialling it; HQ is not up yet.
    await startMesh(gateway, [], { peers: [hqAddress] });
    await startMesh(alice, [gateway]);
    await startMesh(bob, [gateway]);
    await waitFor('the field to converge without HQ', () => sameState([gateway, alice, bob]));
    for (const node of [gateway, alice, bob]) {
      expect(await node.counts()).toEqual({ pending: 4, synced: 0, failed: 0, conflict: 0 });
      expect(node.versionVector()[team.hqDevice]).toBeUndefined();
      expect(node.peers().map((p) => p.device)).not.toContain(team.hqDevice);
    }
    expect((await bob.get('case', 'case-7'))?.fields).toEqual({ title: 'Warehouse fire', status: 'open' });

    // HQ comes up on the address the gateway keeps dialling.
    const server = await team.hq();
    const issuer = hq.issuer(server, permissive());
    await server.start({ ...LOOPBACK, listen: [`/ip4/127.0.0.1/tcp/${port}`] });
    await waitFor('every op of every device to be synced on every node', () => allSynced([server, gateway, alice, bob]), 30_000);

    expect(server.versionVector()).toMatchObject({ [alice.device]: 2, [bob.device]: 1, [gateway.device]: 1 });
    expect(issuer.stats).toMatchObject({ accepted: 4, rejected: 0, transient: 0 });
    for (const node of [server, gateway, alice, bob]) {
      const ops = await node.ops();
      expect(ops.filter((o) => o.type !== 'receipt')).toHaveLength(4);
      expect(ops.every((o) => o.status === 'synced')).toBe(true);
    }
    // The field devices never talked to HQ: the gateway carried everything both ways.
    expect(admittedDevices(aliceEvents)).not.toContain(team.hqDevice);
    expect(admittedDevices(bobEvents)).not.toContain(team.hqDevice);
    expect(admittedDevices(aliceEvents)).toContain(gateway.device);
  });

  it('receipts reach a device that never talked to HQ (field C - field A - HQ)', async () => {
    const team = await hq.team(DOMAINS);
    const server = await team.hq();
    hq.issuer(server, permissive());
    await startMesh(server);
    const a = await team.node('alice');
    const c = await team.node('carol');
    const carolEvents = recordPeers(c);
    await startMesh(a, [server]);
    await startMesh(c, [a]);

    const written = await c.mutate({ type: 'create', domain: 'note', entity: 'from-carol', fields: { text: 'bridge out' } });
    expect(written.status).toBe('pending');
    await waitFor("carol's op to turn synced on carol's device", async () => (await c.ops({ device: c.device }))[0]?.status === 'synced');

    // HQ's receipt, signed in HQ's log, reached carol through alice.
    const receipts = await c.ops({ device: team.hqDevice, type: 'receipt' });
    expect(receipts.length).toBeGreaterThan(0);
    const verdicts = await verdictsOf(c);
    expect(verdicts).toContainEqual({ op: written.id, accepted: true, reason: '', detail: '' });
    expect((await server.ops({ device: c.device }))[0]).toMatchObject({ id: written.id, status: 'synced' });
    expect(admittedDevices(carolEvents)).toEqual([a.device]);
    expect(c.peers().map((p) => p.device)).toEqual([a.device]);
    await waitFor('convergence', () => allSynced([server, a, c]));
  });
});

describe('rejections', () => {
  it('rejects by schema and by role, shows the reason on the author\'s device, and drops the rejected ops from every node\'s state', async () => {
    const team = await hq.team(DOMAINS);
    const policy = new Policy({
      case: { schema: { type: 'object', properties: { title: { type: 'string', maxLength: 200 }, status: { enum: ['open', 'escalated', 'closed'] } }, required: ['title'] } },
      evidence: { writers: ['server', 'gateway'] as Role[] },
      note: {},
      // task: not declared by HQ.
    });
    const server = await team.hq();
    const issuer = hq.issuer(server, policy);
    await startMesh(server);
    const alice = await team.node('alice');
    const gateway = await team.node('gateway', { role: 'gateway' });
    const bob = await team.node('bob'); // never talks to HQ
    await startMesh(alice, [server]);
    await startMesh(gateway, [server]);
    await startMesh(bob, [alice]);

    await alice.mutate({ type: 'create', domain: 'case', entity: 'ok', fields: { title: 'Fire', status: 'open' } });
    await alice.mutate({ type: 'create', domain: 'case', entity: 'untitled', fields: { status: 'open' } });
    await alice.mutate({ type: 'update', domain: 'case', entity: 'ok', fields: { title: 42 } });
    await alice.mutate({ type: 'create', domain: 'evidence', entity: 'ev-field', fields: { tags: ['x'] } });
    await alice.mutate({ type: 'create', domain: 'task', entity: 't-1', fields: { what: 'x' } });
    await gateway.mutate({ type: 'create', domain: 'evidence', entity: 'ev-gateway', fields: { tags: ['y'] } });

    const nodes = [server, alice, gateway, bob];
    await waitFor('every verdict on every node', async () => (await sameState(nodes)) && (await Promise.all(nodes.map((n) => n.counts()))).every((c) => c.pending === 0 && c.failed === 4));

    const mine = await opsByTarget(alice, alice.device);
    expect(mine.get('create case/ok')).toMatchObject({ status: 'synced' });
    expect(mine.get('create case/untitled')).toMatchObject({ status: 'failed', reason: 'REJECTED:SCHEMA' });
    expect(mine.get('create case/untitled')!.detail).toMatch(/title/);
    expect(mine.get('update case/ok')).toMatchObject({ status: 'failed', reason: 'REJECTED:SCHEMA' });
    expect(mine.get('update case/ok')!.detail).toMatch(/\/title.*string/);
    expect(mine.get('create evidence/ev-field')).toMatchObject({ status: 'failed', reason: 'REJECTED:ROLE_NOT_ALLOWED' });
    expect(mine.get('create evidence/ev-field')!.detail).toMatch(/role field may not write evidence/);
    expect(mine.get('create task/t-1')).toMatchObject({ status: 'failed', reason: 'REJECTED:UNKNOWN_DOMAIN' });
    expect((await opsByTarget(alice, gateway.device)).get('create evidence/ev-gateway')).toMatchObject({ status: 'synced' });
    expect(issuer.stats).toMatchObject({ accepted: 2, rejected: 4 });

    for (const node of nodes) {
      // A node that never talked to HQ shows the same reasons.
      expect((await node.ops({ device: alice.device, status: 'failed' })).map((o) => o.reason).sort()).toEqual(['REJECTED:ROLE_NOT_ALLOWED', 'REJECTED:SCHEMA', 'REJECTED:SCHEMA', 'REJECTED:UNKNOWN_DOMAIN']);
      expect(await node.get('case', 'untitled')).toBeNull();
      expect(await node.get('evidence', 'ev-field')).toBeNull();
      expect(await node.get('task', 't-1')).toBeNull();
      // The rejected update drops out: the accepted create's value stands.
      expect((await node.get('case', 'ok'))?.fields).toEqual({ title: 'Fire', status: 'open' });
      expect((await node.query('case')).map((v) => v.entity)).toEqual(['ok']);
      expect((await node.query('evidence')).map((v) => v.entity)).toEqual(['ev-gateway']);
    }
  });
});

describe('receipts of many rejections', () => {
  it('a thousand rejections at once, each with its reason and detail, are split into receipts that fit an op', async () => {
    const N = 1000;
    const team = await hq.team(DOMAINS);
    const alice = await team.node('alice');
    // Alice's offline log: N cases without a title (signed with her key, chained by authorOp).
    const { key } = await loadOrCreateDeviceKey(alice.dataDir);
    let state = { tip: { seq: 0, id: null as string | null }, clock: HLC_ZERO };
    const log: Uint8Array[] = [];
    for (let i = 0; i < N; i++) {
      const r = authorOp({ signer: key.signer, team: team.name, user: 'alice' }, state, Date.now(), { type: 'create', domain: 'case', entity: `untitled-${i}`, base: [], fields: { status: 'open' } });
      state = r.state;
      log.push(r.op.bytes);
    }
    await alice.ingest(log);
    const server = await team.hq();
    await server.importBundle(await alice.exportBundle());
    const issuer = new ReceiptIssuer(server, new Policy({ case: { schema: { type: 'object', properties: { title: { type: 'string' } }, required: ['title'] } } }));
    // flush() judges everything waiting (run by hand: started, the issuer's failure would be an unhandled rejection).
    try {
      await issuer.flush();
    } finally {
      await issuer.stop();
    }
    expect(issuer.stats).toMatchObject({ rejected: N, transient: 0 });
    const failed = await server.ops({ device: alice.device, status: 'failed', limit: 10_000 });
    expect(failed).toHaveLength(N);
    expect(failed.every((o) => o.reason === 'REJECTED:SCHEMA' && /title/.test(o.detail ?? ''))).toBe(true);
    for (const receipt of await server.ops({ device: team.hqDevice, type: 'receipt' })) expect((await server.op(receipt.id))!.bytes.length).toBeLessThanOrEqual(LIMITS.maxOpBytes);
    await alice.importBundle(await server.exportBundle(alice.versionVector()));
    expect(await alice.counts()).toMatchObject({ pending: 0, failed: N });
  });
});

describe('HQ restarts mid-sync', () => {
  it('a catch-up of thousands of ops interrupted by HQ stopping ends with everything synced, nothing lost or duplicated', async () => {
    const N = 3000;
    const team = await hq.team(DOMAINS);
    const alice = await team.node('alice');
    // Alice's offline log: N ops signed with alice's own key and chained by core's authorOp (what
    // mutate does), stored in alice's node in a few batches (much faster than N durable mutations).
    const { key } = await loadOrCreateDeviceKey(alice.dataDir);
    let state = { tip: { seq: 0, id: null as string | null }, clock: HLC_ZERO };
    const log: Uint8Array[] = [];
    const t0 = Date.now();
    for (let i = 0; i < N; i++) {
      const r = authorOp({ signer: key.signer, team: team.name, user: 'alice' }, state, t0 + i, { type: 'create', domain: 'note', entity: `n-${i}`, base: [], fields: { text: `observation ${i} `.repeat(12), i } });
      state = r.state;
      log.push(r.op.bytes);
    }
    for (let i = 0; i < N; i += 500) await alice.ingest(log.slice(i, i + 500));
    expect(alice.versionVector()).toEqual({ [alice.device]: N });
    expect((await alice.counts()).pending).toBe(N);

    // HQ takes small frames so the catch-up arrives in many batches.
    const port = await freePort();
    const meshOptions = { ...LOOPBACK, listen: [`/ip4/127.0.0.1/tcp/${port}`], limits: { maxFrameBytes: MIN_FRAME_BYTES, windowBytes: 2 * MIN_FRAME_BYTES } };
    let server = await team.hq();
    let issuer = hq.issuer(server, permissive());
    let restart: Promise<void> | null = null;
    const first = server;
    const firstIssuer = issuer;
    first.onAdvanced((tips) => {
      const seq = tips[alice.device];
      // In the middle of the catch-up: HQ's mesh stops first (so the catch-up is cut there, not after
      // the issuer's judging pass), then its issuer, then its node closes.
      if (restart === null && seq !== undefined && seq < N) {
        restart = (async () => {
          await first.stop();
          await firstIssuer.stop();
          await first.close();
        })();
      }
    });
    await server.start(meshOptions);
    await startMesh(alice, [], { peers: [`/ip4/127.0.0.1/tcp/${port}/p2p/${team.hqDevice}`] });
    await waitFor('HQ to be stopped in the middle of the catch-up', () => restart !== null, 30_000);
    await restart;

    server = await team.reopen(first);
    const heldAtRestart = server.versionVector()[alice.device] ?? 0;
    expect(heldAtRestart).toBeGreaterThan(0);
    expect(heldAtRestart).toBeLessThan(N);
    issuer = hq.issuer(server, permissive());
    await server.start(meshOptions);

    await waitFor('every op of alice to be synced on alice', async () => (await alice.counts()).pending === 0, 60_000);
    await waitFor('HQ and alice to converge', () => sameState([server, alice]));

    expect(server.versionVector()[alice.device]).toBe(N);
    const mine = await alice.ops({ device: alice.device, limit: 100_000 });
    expect(mine.map((o) => o.seq)).toEqual(Array.from({ length: N }, (_, i) => i + 1));
    expect(mine.every((o) => o.status === 'synced')).toBe(true);
    const atHq = await server.ops({ device: alice.device, limit: 100_000 });
    expect(atHq.map((o) => o.id)).toEqual(mine.map((o) => o.id));
    // One verdict per op across both HQ runs: none lost, none given twice.
    const verdicts = await verdictsOf(server);
    expect(verdicts).toHaveLength(N);
    expect(new Set(verdicts.map((v) => v.op)).size).toBe(N);
    expect(verdicts.every((v) => v.accepted)).toBe(true);
    expect(await alice.counts()).toEqual({ pending: 0, synced: N + (server.versionVector()[team.hqDevice] ?? 0), failed: 0, conflict: 0 });
    expect((await server.query('note', { limit: 10_000 })).length).toBe(N);
    expect((await server.verify()).problems).toEqual([]);
  });
});

describe('transient faults', () => {
  it('an op whose judging throws stays pending with its attempts and last error, backs off, and gets its verdict on retry', async () => {
    class FlakyPolicy extends Policy {
      failures = ['verdict store unavailable', 'verdict store still unavailable'];
      calls = 0;
      override judge(op: EntityOp, role: Role | null) {
        if (op.entity === 'flaky') {
          this.calls++;
          const failure = this.failures.shift();
          if (failure !== undefined) throw new Error(failure);
        }
        return super.judge(op, role);
      }
    }
    const team = await hq.team(DOMAINS);
    const server = await team.hq();
    const policy = new FlakyPolicy({ note: {} });
    // HQ's issuer reads a clock the test moves: a retry is due only when the test says so.
    let clock = 1_000_000;
    const issuer = hq.issuer(server, policy, { retryMinMs: 200, retryMaxMs: 5_000, random: () => 1, now: () => clock });
    await startMesh(server);
    const alice = await team.node('alice');
    await startMesh(alice, [server]);

    const steady = await alice.mutate({ type: 'create', domain: 'note', entity: 'steady', fields: { text: 'a' } });
    const flaky = await alice.mutate({ type: 'create', domain: 'note', entity: 'flaky', fields: { text: 'b' } });
    // The fault holds back only the flaky op: the other one gets its verdict.
    await waitFor('the steady op to be synced on alice', async () => (await alice.ops({ device: alice.device, status: 'synced' })).some((o) => o.id === steady.id));
    await waitFor('the first failed attempt', () => issuer.retrying().get(flaky.id));
    expect(issuer.retrying().get(flaky.id)).toEqual({ attempts: 1, lastError: 'verdict store unavailable', nextAttemptMs: clock + 200 });
    expect(issuer.stats.transient).toBe(1);
    // Not due yet: timers fire, the op stays pending everywhere.
    await sleep(700);
    expect(policy.calls).toBe(1);
    expect((await server.ops({ entity: 'flaky', domain: 'note' }))[0]).toMatchObject({ status: 'pending' });
    expect((await alice.ops({ entity: 'flaky', domain: 'note' }))[0]).toMatchObject({ status: 'pending' });

    // Due: the second attempt fails too, and backs off twice as long.
    clock += 1_000;
    await waitFor('the second failed attempt', () => issuer.retrying().get(flaky.id)?.attempts === 2);
    expect(issuer.retrying().get(flaky.id)).toEqual({ attempts: 2, lastError: 'verdict store still unavailable', nextAttemptMs: clock + 400 });
    expect((await alice.ops({ entity: 'flaky', domain: 'note' }))[0]).toMatchObject({ status: 'pending' });

    // Due again: the third attempt gives a verdict.
    clock += 1_000;
    await waitFor('the flaky op to be synced on alice', async () => (await alice.ops({ entity: 'flaky', domain: 'note' }))[0]?.status === 'synced');
    expect(issuer.retrying().has(flaky.id)).toBe(false);
    expect(policy.calls).toBe(3);
    expect(issuer.stats).toMatchObject({ accepted: 2, rejected: 0, transient: 2 });
    const verdicts = await verdictsOf(server);
    expect(verdicts.filter((v) => v.op === flaky.id)).toEqual([{ op: flaky.id, accepted: true, reason: '', detail: '' }]);
    await waitFor('convergence', () => allSynced([server, alice]));
  });
});

describe('HQ-side edits', () => {
  it('HQ staff edits reach devices as synced ops; with server-wins, HQ\'s concurrent write wins even when the field\'s is later', async () => {
    const team = await hq.team(DOMAINS);
    const server = await team.hq();
    hq.issuer(server, permissive());
    await startMesh(server);
    const alice = await team.node('alice');
    await startMesh(alice, [server]);

    await alice.mutate({ type: 'create', domain: 'task', entity: 't-1', fields: { state: 'open', owner: 'alice' } });
    const edit = await server.mutate({ type: 'create', domain: 'case', entity: 'hq-case', fields: { title: 'Opened at HQ' } });
    expect(edit.status).toBe('synced');
    await waitFor('both to sync', () => allSynced([server, alice]));
    expect((await alice.get('case', 'hq-case'))?.fields).toEqual({ title: 'Opened at HQ' });
    expect((await alice.ops({ device: team.hqDevice, type: 'create' }))[0]).toMatchObject({ id: edit.id, status: 'synced', user: 'hq-staff' });

    // Concurrent writes to t-1's state while alice is offline; alice writes last.
    await alice.stop();
    await server.mutate({ type: 'update', domain: 'task', entity: 't-1', fields: { state: 'cancelled' } });
    await sleep(20);
    await alice.mutate({ type: 'update', domain: 'task', entity: 't-1', fields: { state: 'done', note: 'finished early' } });
    expect((await alice.get('task', 't-1'))?.fields.state).toBe('done');
    expect((await server.get('task', 't-1'))?.fields.state).toBe('cancelled');

    await startMesh(alice, [server]);
    await waitFor('both to sync after the edits', () => allSynced([server, alice]));
    for (const node of [server, alice]) {
      expect((await node.get('task', 't-1'))?.fields).toEqual({ state: 'cancelled', owner: 'alice', note: 'finished early' });
      expect(await node.conflicts()).toEqual([]);
    }
  });

  it('HQ resolves a manual conflict; the resolution reaches every device and closes the conflict everywhere', async () => {
    const team = await hq.team(DOMAINS);
    const server = await team.hq();
    hq.issuer(server, permissive());
    await startMesh(server);
    const alice = await team.node('alice');
    const bob = await team.node('bob');
    await startMesh(alice, [server]);
    await startMesh(bob, [alice]);

    await alice.mutate({ type: 'create', domain: 'case', entity: 'case-7', fields: { title: 'Warehouse fire', status: 'open' } });
    await waitFor('the create to sync everywhere', () => allSynced([server, alice, bob]));

    await alice.stop();
    await server.mutate({ type: 'update', domain: 'case', entity: 'case-7', fields: { status: 'escalated' } });
    const fieldWrite = await alice.mutate({ type: 'update', domain: 'case', entity: 'case-7', fields: { status: 'closed' } });
    await startMesh(alice, [server]);
    await bob.dial(alice.addresses()[0]!); // alice came back on a new port
    const nodes = [server, alice, bob];
    await waitFor('the conflict to show on every node', async () => (await sameState(nodes)) && (await Promise.all(nodes.map((n) => n.conflicts()))).every((c) => c.length === 1));

    const [conflict] = await bob.conflicts();
    expect(conflict).toMatchObject({ domain: 'case', entity: 'case-7' });
    expect(conflict!.fields.map((f) => f.field)).toEqual(['status']);
    expect(conflict!.fields[0]!.candidates.map((c) => c.value).sort()).toEqual(['closed', 'escalated']);
    expect((await server.conflicts())[0]!.id).toBe(conflict!.id);
    expect((await bob.ops({ device: alice.device })).find((o) => o.id === fieldWrite.id)?.status).toBe('conflict');

    const resolution = await server.resolve(conflict!.id, { fields: { status: 'escalated' } });
    expect(resolution.status).toBe('synced');
    await waitFor('the resolution to settle everywhere', () => allSynced(nodes));
    for (const node of nodes) {
      expect(await node.conflicts()).toEqual([]);
      expect((await node.get('case', 'case-7'))?.fields).toEqual({ title: 'Warehouse fire', status: 'escalated' });
      expect((await node.ops({ type: 'resolve' })).map((o) => [o.id, o.status])).toEqual([[resolution.id, 'synced']]);
    }
  });
});

describe('revocation', () => {
  it('a revocation appended by HQ reaches every device, excludes the device\'s ops past afterSeq and refuses its later ones', async () => {
    const team = await hq.team(DOMAINS);
    const server = await team.hq();
    hq.issuer(server, permissive());
    await startMesh(server);
    const alice = await team.node('alice');
    const lost = await team.node('lost-tablet');
    await startMesh(alice, [server]);
    await startMesh(lost, [server]);

    await lost.mutate({ type: 'create', domain: 'note', entity: 'n-1', fields: { text: 'one' } });
    await lost.mutate({ type: 'create', domain: 'note', entity: 'n-2', fields: { text: 'two' } });
    await waitFor('the first two ops to sync', () => allSynced([server, alice, lost]));
    await lost.mutate({ type: 'create', domain: 'note', entity: 'n-3', fields: { text: 'three (after the theft)' } });
    await waitFor('op 3 to reach alice and HQ', () => server.versionVector()[lost.device] === 3 && alice.versionVector()[lost.device] === 3);

    const revocation = await server.appendHqOp({ type: 'revoke', target: lost.device, afterSeq: 2, reason: 'tablet reported stolen' });
    expect(revocation.device).toBe(team.hqDevice);
    await waitFor('the revocation to reach alice', () => alice.isRevoked(lost.device));
    await waitFor('the revoked device to be dropped by alice and HQ', () => !alice.peers().some((p) => p.device === lost.device) && !server.peers().some((p) => p.device === lost.device));

    for (const node of [server, alice]) {
      const ops = await node.ops({ device: lost.device });
      expect(ops.map((o) => [o.seq, o.status, o.reason ?? null])).toEqual([
        [1, 'synced', null],
        [2, 'synced', null],
        [3, 'failed', 'DEVICE_REVOKED'],
      ]);
      expect((await node.query('note')).map((v) => v.entity)).toEqual(['n-1', 'n-2']);
      expect(await node.get('note', 'n-3')).toBeNull();
    }

    // Later ops of the revoked device are refused, by any path.
    await lost.mutate({ type: 'create', domain: 'note', entity: 'n-4', fields: { text: 'four' } });
    const aliceVV = alice.versionVector();
    const aliceHash = await alice.stateHash();
    const result = await alice.importBundle(await lost.exportBundle(aliceVV));
    expect(result).toMatchObject({ added: 0, refused: 1 });
    expect(alice.versionVector()).toEqual(aliceVV);
    expect(await alice.stateHash()).toBe(aliceHash);
    expect(await alice.get('note', 'n-4')).toBeNull();
    // Nobody admits it again.
    await lost.dial(server.addresses()[0]!).catch(() => undefined);
    await sleep(300);
    expect(server.peers().map((p) => p.device)).not.toContain(lost.device);
    expect(server.versionVector()[lost.device]).toBe(3);

    // The revoked device learns its standing (here from a bundle of HQ's log): its own ops past
    // afterSeq show failed with the reason.
    await lost.importBundle(await server.exportBundle(lost.versionVector()));
    expect(lost.isRevoked(lost.device)).toBe(true);
    expect((await lost.ops({ device: lost.device })).map((o) => [o.seq, o.status, o.reason ?? null])).toEqual([
      [1, 'synced', null],
      [2, 'synced', null],
      [3, 'failed', 'DEVICE_REVOKED'],
      [4, 'failed', 'DEVICE_REVOKED'],
    ]);
  });
});
