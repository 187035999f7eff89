/**
 * The FieldNode facade: mutation validation, subscriptions, op listings and filters, queues and
 * counts, several devices of one user, manual conflicts and their resolution, HQ receipts, and
 * the device key file.
 */
import { chmod, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InvalidInputError, RuleViolationError } from '../../src/core/errors.ts';
import { issueCertificate } from '../../src/core/cert.ts';
import { deviceIdFromPublicKey } from '../../src/core/keys.ts';
import { Policy } from '../../src/hq/policy.ts';
import { FieldNode, type NodeEvent } from '../../src/node/field-node.ts';
import { SubscriptionOverflowError, type Subscription } from '../../src/node/subscription.ts';
import { StoreClosedError } from '../../src/store/errors.ts';
import { accept, DOMAINS, expectRejects, HQ, introduce, logOf, reject, signerOf, TEAM, TestAuthor, useTemp } from './helpers.ts';

const temp = useTemp();

/** The next event of a subscription, or a failure after `ms`. */
async function nextEvent(sub: Subscription<NodeEvent>, ms = 2000): Promise<IteratorResult<NodeEvent>> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([sub.next(), new Promise<never>((_, rej) => (timer = setTimeout(() => rej(new Error(`no event within ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Every event delivered so far that nobody consumed yet. Never leaves a next() call pending (a
 * pending next() would take the following event), so it checks the buffer via a zero-wait probe:
 * it only reads while the subscription has something queued.
 */
class Collector {
  readonly events: NodeEvent[] = [];
  done = false;
  private readonly loop: Promise<void>;
  constructor(sub: Subscription<NodeEvent>) {
    this.loop = (async () => {
      for await (const e of sub) this.events.push(e);
      this.done = true;
    })();
  }
  /** Events collected since the last take (after letting pending deliveries land). */
  async take(): Promise<NodeEvent[]> {
    await new Promise((r) => setTimeout(r, 20));
    return this.events.splice(0);
  }
  async finished(): Promise<void> {
    await this.loop;
  }
}

describe('mutate validation', () => {
  it('refuses invalid mutations with typed errors and stores nothing of them', async () => {
    const node = await temp.open(await temp.dir());
    await node.mutate({ type: 'create', domain: 'case', entity: 'c1', fields: { title: 't' } });
    const hash = await node.stateHash();
    const cases: [string, () => Promise<unknown>, typeof InvalidInputError | typeof RuleViolationError, string][] = [
      ['unknown domain', () => node.mutate({ type: 'create', domain: 'nope', entity: 'x', fields: {} }), InvalidInputError, 'UNKNOWN_DOMAIN'],
      ['empty entity id', () => node.mutate({ type: 'create', domain: 'case', entity: '', fields: {} }), InvalidInputError, 'BAD_OP_FIELD'],
      ['entity id with a space', () => node.mutate({ type: 'create', domain: 'case', entity: 'a b', fields: {} }), InvalidInputError, 'BAD_OP_FIELD'],
      ['entity id with a slash', () => node.mutate({ type: 'create', domain: 'case', entity: 'a/b', fields: {} }), InvalidInputError, 'BAD_OP_FIELD'],
      ['entity id with a NUL', () => node.mutate({ type: 'create', domain: 'case', entity: 'a\u0000b', fields: {} }), InvalidInputError, 'BAD_OP_FIELD'],
      ['entity id too long', () => node.mutate({ type: 'create', domain: 'case', entity: 'x'.repeat(129), fields: {} }), InvalidInputError, 'BAD_OP_FIELD'],
      ['a function value', () => node.mutate({ type: 'update', domain: 'case', entity: 'c1', fields: { f: (() => 1) as never } }), InvalidInputError, 'BAD_VALUE'],
      ['an undefined value', () => node.mutate({ type: 'update', domain: 'case', entity: 'c1', fields: { f: undefined as never } }), InvalidInputError, 'BAD_VALUE'],
      ['a Date value', () => node.mutate({ type: 'update', domain: 'case', entity: 'c1', fields: { f: new Date() as never } }), InvalidInputError, 'BAD_VALUE'],
      ['a nested Map', () => node.mutate({ type: 'update', domain: 'case', entity: 'c1', fields: { f: { m: new Map() as never } } }), InvalidInputError, 'BAD_VALUE'],
      ['NaN', () => node.mutate({ type: 'update', domain: 'case', entity: 'c1', fields: { f: Number.NaN } }), InvalidInputError, 'BAD_VALUE'],
      ['an unsafe integer', () => node.mutate({ type: 'update', domain: 'case', entity: 'c1', fields: { f: 2 ** 60 } }), InvalidInputError, 'BAD_VALUE'],
      ['a bad field name', () => node.mutate({ type: 'update', domain: 'case', entity: 'c1', fields: { 'no-dash': 1 } }), InvalidInputError, 'BAD_FIELD_NAME'],
      ['fields not an object', () => node.mutate({ type: 'update', domain: 'case', entity: 'c1', fields: [1] as never }), InvalidInputError, 'BAD_FIELDS'],
      ['an oversized value', () => node.mutate({ type: 'update', domain: 'case', entity: 'c1', fields: { blob: 'x'.repeat(70_000) } }), InvalidInputError, 'TOO_LARGE'],
      ['an oversized op just over the limit', () => node.mutate({ type: 'update', domain: 'case', entity: 'c1', fields: { blob: new Uint8Array(65_400) } }), InvalidInputError, 'TOO_LARGE'],
      ['delete with fields', () => node.mutate({ type: 'delete', domain: 'case', entity: 'c1', fields: { a: 1 } }), InvalidInputError, 'BAD_FIELDS'],
      ['an unknown type', () => node.mutate({ type: 'resolve' as never, domain: 'case', entity: 'c1', fields: {} }), InvalidInputError, 'BAD_OP_TYPE'],
      ['create on existing', () => node.mutate({ type: 'create', domain: 'case', entity: 'c1', fields: {} }), RuleViolationError, 'ENTITY_EXISTS'],
      ['update on missing', () => node.mutate({ type: 'update', domain: 'case', entity: 'c2', fields: { a: 1 } }), RuleViolationError, 'ENTITY_NOT_FOUND'],
      ['delete on missing', () => node.mutate({ type: 'delete', domain: 'case', entity: 'c2' }), RuleViolationError, 'ENTITY_NOT_FOUND'],
      // A limit that is not a whole number of at least 1 would silently list everything or nothing.
      ['a null mutation', () => node.mutate(null as never), InvalidInputError, 'BAD_MUTATION'],
      ['ops with limit NaN', () => node.ops({ limit: Number.NaN }), InvalidInputError, 'BAD_LIMIT'],
      ['ops with limit 0', () => node.ops({ limit: 0 }), InvalidInputError, 'BAD_LIMIT'],
      ['queue with limit 1.5', () => node.queue(node.device, 1.5), InvalidInputError, 'BAD_LIMIT'],
      ['query with limit -1', () => node.query('case', { limit: -1 }), InvalidInputError, 'BAD_LIMIT'],
    ];
    for (const [what, attempt, cls, code] of cases) {
      const err = await expectRejects(attempt(), cls, code);
      expect(err.message.length, what).toBeGreaterThan(0);
    }
    expect(node.versionVector()).toEqual({ [node.device]: 1 });
    expect(await node.stateHash()).toBe(hash);
    expect((await node.ops()).length).toBe(1);
    expect((await node.verify()).problems).toEqual([]);

    // Deleted entities are missing for update, and may be created again.
    await node.mutate({ type: 'delete', domain: 'case', entity: 'c1' });
    expect(await node.get('case', 'c1')).toBeNull();
    await expectRejects(node.mutate({ type: 'update', domain: 'case', entity: 'c1', fields: { a: 1 } }), RuleViolationError, 'ENTITY_NOT_FOUND');
    await node.mutate({ type: 'create', domain: 'case', entity: 'c1', fields: { again: true } });
    expect((await node.get('case', 'c1'))!.fields).toEqual({ again: true });
    // A value just under the limit goes through.
    const big = await node.mutate({ type: 'update', domain: 'case', entity: 'c1', fields: { blob: new Uint8Array(60_000) } });
    expect(big.op.bytes.length).toBeLessThanOrEqual(64 * 1024);
    expect(((await node.get('case', 'c1'))!.fields.blob as Uint8Array).length).toBe(60_000);
  });

  it('checks changes against the team\'s domain rules before signing them (checkChange)', async () => {
    const policy = new Policy({ case: { schema: { type: 'object', properties: { title: { type: 'string' }, status: { enum: ['open', 'closed'] } }, required: ['title'] } }, evidence: { writers: ['server'] } });
    const node = await temp.open(await temp.dir(), { checkChange: policy.checker('field') });
    await node.mutate({ type: 'create', domain: 'case', entity: 'c1', fields: { title: 't', status: 'open' } });
    const hash = await node.stateHash();
    await expectRejects(node.mutate({ type: 'update', domain: 'case', entity: 'c1', fields: { status: 'lost' } }), InvalidInputError, 'SCHEMA');
    await expectRejects(node.mutate({ type: 'create', domain: 'case', entity: 'c2', fields: { status: 'open' } }), InvalidInputError, 'SCHEMA');
    await expectRejects(node.mutate({ type: 'create', domain: 'evidence', entity: 'e1', fields: {} }), RuleViolationError, 'ROLE_NOT_ALLOWED');
    // An update need not repeat required fields; a delete writes none.
    await node.mutate({ type: 'update', domain: 'case', entity: 'c1', fields: { status: 'closed' } });
    await node.mutate({ type: 'delete', domain: 'case', entity: 'c1' });
    expect(await node.stateHash()).not.toBe(hash);
    expect((await node.ops({})).map((o) => o.type)).toEqual(['create', 'update', 'delete']);
  });

  it('requires a certificate or hqDevice on field nodes', async () => {
    await expectRejects(FieldNode.open({ dataDir: await temp.dir(), team: TEAM, user: 'u', domains: DOMAINS }), InvalidInputError, 'NOT_ENROLLED');
  });

  it('refuses an unknown strategy', async () => {
    await expectRejects(temp.open(await temp.dir(), { domains: { case: 'coin-flip' as never } }), InvalidInputError, 'BAD_STRATEGY');
  });
});

describe('what a node shows is what it signed', () => {
  it('keeps the signed values, not the caller\'s objects: changing them after mutate() changes nothing', async () => {
    const writer = await temp.open(await temp.dir());
    const fields = { tags: ['exterior'], where: { site: 'north', bay: 2 }, zero: -0, scan: Buffer.from('hi') };
    const r = await writer.mutate({ type: 'create', domain: 'evidence', entity: 'e1', fields });
    fields.tags.push('never signed');
    fields.where.site = 'south';
    const shown = (await writer.get('evidence', 'e1'))!.fields;
    expect(shown).toEqual({ tags: ['exterior'], where: { site: 'north', bay: 2 }, zero: 0, scan: new Uint8Array([104, 105]) });
    // -0 is signed as 0 and a Buffer as plain bytes: the writer shows what every other node decodes.
    expect(Object.is(shown.zero, 0)).toBe(true);
    expect(Object.getPrototypeOf(shown.scan)).toBe(Uint8Array.prototype);
    expect(r.op).toMatchObject({ fields: shown });

    const reader = await temp.open(await temp.dir());
    await reader.ingest(await logOf(writer));
    expect(await reader.get('evidence', 'e1')).toEqual(await writer.get('evidence', 'e1'));
    expect(await reader.stateHash()).toBe(await writer.stateHash());
  });

  it('finds a map value by query() whatever the order of its keys', async () => {
    const writer = await temp.open(await temp.dir());
    await writer.mutate({ type: 'create', domain: 'evidence', entity: 'e1', fields: { where: { site: 'north', bay: 2 } } });
    const reader = await temp.open(await temp.dir());
    await reader.ingest(await logOf(writer));
    for (const node of [writer, reader]) {
      expect(await node.query('evidence', { where: { where: { site: 'north', bay: 2 } } })).toHaveLength(1);
      expect(await node.query('evidence', { where: { where: { bay: 2, site: 'north' } } })).toHaveLength(1);
      expect(await node.query('evidence', { where: { where: { bay: 2 } } })).toHaveLength(0);
      // Bytes match bytes only, not a map that JSON would print alike.
      expect(await node.query('evidence', { where: { where: { site: 'north', bay: 2 }, missing: null } })).toHaveLength(0);
    }
  });
});

describe('facade input checks', () => {
  it('refuses a domain that only Object.prototype declares (constructor)', async () => {
    const node = await temp.open(await temp.dir());
    await expectRejects(node.mutate({ type: 'create', domain: 'constructor', entity: 'x', fields: {} }), InvalidInputError, 'UNKNOWN_DOMAIN');
    expect(node.versionVector()).toEqual({});
  });

  it('put creates a missing entity and updates an existing one, atomically: of 20 racing puts one creates', async () => {
    const node = await temp.open(await temp.dir());
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => node.mutate({ type: 'put', domain: 'case', entity: 'k', fields: { n: i } })));
    expect(results.map((r) => r.op.type)).toEqual(['create', ...Array.from({ length: 19 }, () => 'update')]);
    expect((await node.get('case', 'k'))!.fields).toEqual({ n: 19 });
    await expectRejects(node.mutate({ type: 'put', domain: 'nope', entity: 'k', fields: {} }), InvalidInputError, 'UNKNOWN_DOMAIN');
  });

  it('refuses a resolution that is neither {fields} nor {delete: true}, and deletes nothing', async () => {
    const a = await temp.open(await temp.dir(), { user: 'alice' });
    const b = await temp.open(await temp.dir(), { user: 'bob' });
    await introduce(a, b);
    const c = await a.mutate({ type: 'create', domain: 'case', entity: 'k', fields: { s: 'open' } });
    await b.ingest([c.op.bytes]);
    const mine = await a.mutate({ type: 'update', domain: 'case', entity: 'k', fields: { s: 'A' } });
    await a.ingest([(await b.mutate({ type: 'update', domain: 'case', entity: 'k', fields: { s: 'B' } })).op.bytes]);
    const [conflict] = await a.conflicts();
    expect(conflict).toBeDefined();
    for (const choice of [null, {}, { delete: false }, { delete: 'yes' }, { delete: true, fields: { s: 'A' } }, { fields: { s: 'A' }, extra: 1 }]) {
      await expectRejects(a.resolve(conflict!.id, choice as never), InvalidInputError, 'BAD_RESOLUTION');
    }
    expect(a.versionVector()[a.device]).toBe(mine.op.seq);
    expect((await a.get('case', 'k'))!.conflict?.id).toBe(conflict!.id);
    await a.resolve(conflict!.id, { fields: { s: 'A' } });
    expect((await a.get('case', 'k'))!.fields).toEqual({ s: 'A' });
  });
});

describe('after close', () => {
  it('rejects every call with STORE_CLOSED, subscribe() included', async () => {
    const node = await temp.open(await temp.dir());
    await node.mutate({ type: 'create', domain: 'case', entity: 'c1', fields: { a: 1 } });
    await node.close();
    const calls: [string, () => Promise<unknown>][] = [
      ['mutate', () => node.mutate({ type: 'create', domain: 'case', entity: 'c2', fields: {} })],
      ['get', () => node.get('case', 'c1')],
      ['query', () => node.query('case')],
      ['ops', () => node.ops()],
      ['queue', () => node.queue()],
      ['counts', () => node.counts()],
      ['devices', () => node.devices()],
      ['conflicts', () => node.conflicts()],
      ['resolve', () => node.resolve('0'.repeat(64), { fields: {} })],
      ['op', () => node.op('0'.repeat(64))],
      ['stateHash', () => node.stateHash()],
      ['verify', () => node.verify()],
      ['ingest', () => node.ingest([])],
      ['exportBundle', () => node.exportBundle()],
    ];
    for (const [what, call] of calls) {
      const err = await expectRejects(call(), StoreClosedError, 'STORE_CLOSED');
      expect(err.message, what).toContain('closed');
    }
    expect(() => node.subscribe()).toThrow(StoreClosedError);
  });

  it('releases the data dir only when every close() call resolves', async () => {
    const dir = await temp.dir();
    const node = await temp.open(dir);
    for (let i = 0; i < 50; i++) void node.mutate({ type: 'create', domain: 'note', entity: `n${i}`, fields: {} });
    const first = node.close();
    await node.close();
    const again = await temp.open(dir);
    expect(again.versionVector()[again.device]).toBe(50);
    await first;
  });
});

describe('subscribe', () => {
  it('yields status and entity events as mutations become durable, and stops after close', async () => {
    const node = await temp.open(await temp.dir());
    const first = node.subscribe();
    const cases = node.subscribe({ kinds: ['entity'], domain: 'case' });
    const next = first.next();
    const r = await node.mutate({ type: 'create', domain: 'case', entity: 'c1', fields: { title: 'fire' } });
    // Delivered in real time: the status first, then the entity's new view.
    const status = await Promise.race([next, new Promise<'late'>((res) => setTimeout(() => res('late'), 1000))]);
    expect(status, 'no status event within 1 s of the mutation resolving').not.toBe('late');
    expect((status as IteratorResult<NodeEvent>).value).toEqual({ kind: 'status', op: r.id, device: node.device, seq: 1, status: { status: 'pending' } });
    const entity = await nextEvent(first);
    expect(entity.value).toEqual({ kind: 'entity', view: await node.get('case', 'c1') });
    expect((await nextEvent(cases)).value).toEqual(entity.value);
    first.close();

    const all = new Collector(node.subscribe());
    const caseViews = new Collector(cases);
    await node.mutate({ type: 'create', domain: 'evidence', entity: 'e1', fields: { kind: 'photo' } });
    expect((await all.take()).map((e) => e.kind)).toEqual(['status', 'entity']);
    expect(await caseViews.take()).toEqual([]); // other domain

    // HQ's receipt changes the status: a status event with the new status, no entity change.
    const hq = new TestAuthor(HQ);
    await node.ingest([hq.receipt([accept(r.id)]).bytes]);
    const events = await all.take();
    expect(events.filter((e) => e.kind === 'status' && e.op === r.id)).toEqual([{ kind: 'status', op: r.id, device: node.device, seq: 1, status: { status: 'synced' } }]);
    expect(events.filter((e) => e.kind === 'entity')).toEqual([]);

    // A closed subscription ends and receives nothing more.
    cases.close();
    await caseViews.finished();
    await node.mutate({ type: 'update', domain: 'case', entity: 'c1', fields: { title: 'big fire' } });
    expect(await caseViews.take()).toEqual([]);
    expect(await cases.next()).toEqual({ value: undefined, done: true });
    const update = await all.take();
    expect(update.map((e) => e.kind)).toEqual(['status', 'entity']);
    expect(update[1]).toMatchObject({ kind: 'entity', view: { fields: { title: 'big fire' } } });

    // Closing the node ends every subscription.
    expect(all.done).toBe(false);
    await node.close();
    await all.finished();
    expect(all.done).toBe(true);
  });

  it('answers next() calls made before earlier ones resolved, in order (async iterator protocol)', async () => {
    const node = await temp.open(await temp.dir());
    const sub = node.subscribe();
    const a = sub.next();
    const b = sub.next();
    const r = await node.mutate({ type: 'create', domain: 'note', entity: 'n1', fields: {} });
    const settled = await Promise.race([Promise.all([a, b]), new Promise<'stuck'>((res) => setTimeout(() => res('stuck'), 500))]);
    expect(settled, 'the first of two concurrent next() calls never resolved: its event went to the second').not.toBe('stuck');
    const [ea, eb] = settled as IteratorResult<NodeEvent>[];
    expect(ea!.value).toMatchObject({ kind: 'status', op: r.id });
    expect(eb!.value).toMatchObject({ kind: 'entity' });
  });

  it('works as an async iterator and filters by device for status events', async () => {
    const node = await temp.open(await temp.dir());
    const other = new TestAuthor(HQ);
    const mine = node.subscribe({ kinds: ['status'], device: node.device });
    const seen: NodeEvent[] = [];
    const loop = (async () => {
      for await (const e of mine) {
        seen.push(e);
        if (seen.length === 3) break;
      }
    })();
    await node.ingest([other.create('case', 'hq-case', { by: 'hq' }).bytes]);
    for (let i = 0; i < 3; i++) await node.mutate({ type: 'create', domain: 'note', entity: `n${i}`, fields: { i } });
    await loop;
    expect(seen.map((e) => (e.kind === 'status' ? [e.device, e.seq] : null))).toEqual([
      [node.device, 1],
      [node.device, 2],
      [node.device, 3],
    ]);
    // Breaking out of the loop closed the subscription.
    expect(await mine.next()).toEqual({ value: undefined, done: true });
  });

  it('fails a subscriber that falls too far behind instead of buffering without bound', async () => {
    const node = await temp.open(await temp.dir(), { maxSubscriberBacklog: 5 });
    const sub = node.subscribe();
    for (let i = 0; i < 5; i++) await node.mutate({ type: 'create', domain: 'note', entity: `n${i}`, fields: {} });
    for (let i = 0; i < 5; i++) expect((await sub.next()).done).toBe(false);
    await expectRejects(sub.next(), SubscriptionOverflowError, 'SUBSCRIPTION_OVERFLOW');
  });
});

describe('ops, queue and counts', () => {
  it('lists ops filtered by type, domain, entity, device and status, and queues in seq order', async () => {
    const node = await temp.open(await temp.dir());
    const hq = new TestAuthor(HQ, { user: 'hq', startMs: Date.now() });
    const m = async (type: 'create' | 'update' | 'delete', domain: string, entity: string, fields?: Record<string, number>) =>
      (await node.mutate({ type, domain, entity, ...(fields ? { fields } : {}) })).id;
    const c1 = await m('create', 'case', 'c1', { a: 1 });
    const e1 = await m('create', 'evidence', 'e1', { a: 1 });
    const c1u = await m('update', 'case', 'c1', { a: 2 });
    const c2 = await m('create', 'case', 'c2', { a: 1 });
    const e1d = await m('delete', 'evidence', 'e1');
    const c1u2 = await m('update', 'case', 'c1', { a: 3 });
    const hqCase = hq.create('case', 'c3', { by: 1 });
    const receipt = hq.receipt([accept(c1), reject(c1u, 'STALE'), accept(e1)]);
    await node.ingest([hqCase.bytes, receipt.bytes]);

    const ids = async (filter: Parameters<FieldNode['ops']>[0]) => (await node.ops(filter)).map((o) => o.id);
    const mine = [c1, e1, c1u, c2, e1d, c1u2];
    expect(await ids({ device: node.device })).toEqual(mine);
    expect(await ids({ device: HQ.device })).toEqual([hqCase.id, receipt.id]);
    expect((await ids({})).sort()).toEqual([...mine, hqCase.id, receipt.id].sort());
    expect(await ids({ type: 'create', device: node.device })).toEqual([c1, e1, c2]);
    expect(await ids({ type: 'update' })).toEqual([c1u, c1u2]);
    expect(await ids({ type: 'delete' })).toEqual([e1d]);
    expect(await ids({ type: 'receipt' })).toEqual([receipt.id]);
    expect((await ids({ domain: 'case' })).sort()).toEqual([c1, c1u, c2, c1u2, hqCase.id].sort());
    expect(await ids({ domain: 'case', entity: 'c1' })).toEqual([c1, c1u, c1u2]);
    expect(await ids({ domain: 'case', entity: 'c1', type: 'update' })).toEqual([c1u, c1u2]);
    expect(await ids({ domain: 'evidence', device: HQ.device })).toEqual([]);
    expect(await ids({ entity: 'c1' })).toEqual([c1, c1u, c1u2]);
    expect(await ids({ status: 'synced', device: node.device })).toEqual([c1, e1]);
    expect((await ids({ status: 'synced' })).sort()).toEqual([c1, e1, hqCase.id, receipt.id].sort());
    expect(await ids({ status: 'failed' })).toEqual([c1u]);
    expect(await ids({ status: 'pending' })).toEqual([c2, e1d, c1u2]);
    expect(await ids({ status: 'pending', domain: 'case' })).toEqual([c2, c1u2]);
    expect(await ids({ status: 'pending', type: 'delete' })).toEqual([e1d]);
    expect(await ids({ status: 'conflict' })).toEqual([]);
    expect(await ids({ device: node.device, limit: 2 })).toEqual([c1, e1]);
    expect(await ids({ domain: 'case', limit: 1 })).toHaveLength(1);

    const failed = (await node.ops({ status: 'failed' }))[0]!;
    expect(failed).toMatchObject({ id: c1u, status: 'failed', reason: 'REJECTED:STALE', detail: 'refused by HQ', seq: 3, type: 'update', domain: 'case', entity: 'c1', user: 'alice', waiting: false });
    expect(await node.history('case', 'c1')).toEqual(await node.ops({ domain: 'case', entity: 'c1' }));

    const queue = await node.queue();
    expect(queue.map((o) => o.seq)).toEqual([4, 5, 6]);
    expect(queue.map((o) => o.id)).toEqual([c2, e1d, c1u2]);
    expect(await node.queue(node.device, 2)).toEqual(queue.slice(0, 2));
    expect(await node.queue(HQ.device)).toEqual([]);

    expect(await node.counts(node.device)).toEqual({ pending: 3, synced: 2, failed: 1, conflict: 0 });
    expect(await node.counts(HQ.device)).toEqual({ pending: 0, synced: 2, failed: 0, conflict: 0 });
    expect(await node.counts()).toEqual({ pending: 3, synced: 4, failed: 1, conflict: 0 });
    const devices = await node.devices();
    expect(devices.sort((x, y) => (x.device < y.device ? -1 : 1))).toEqual(
      [
        { device: node.device, lastSeq: 6, lastSyncedSeq: 2, counts: { pending: 3, synced: 2, failed: 1, conflict: 0 } },
        { device: HQ.device, lastSeq: 2, lastSyncedSeq: 2, counts: { pending: 0, synced: 2, failed: 0, conflict: 0 } },
      ].sort((x, y) => (x.device < y.device ? -1 : 1)),
    );

    // HQ's rejection dropped the update out of the state: c1 shows seq 1's value... then seq 6's.
    expect((await node.get('case', 'c1'))!.fields).toEqual({ a: 3 });
    expect(await node.query('case', { where: { a: 3 } })).toHaveLength(1);
    expect((await node.query('case')).map((v) => v.entity)).toEqual(['c1', 'c2', 'c3']);
    expect(await node.query('case', { limit: 2 })).toHaveLength(2);
    expect(await node.query('evidence')).toEqual([]);
  });
});

describe('several devices of one user', () => {
  it('keeps a queue per device and shows both queues, in seq order, on both devices', async () => {
    const laptop = await temp.open(await temp.dir(), { user: 'alice' });
    const tablet = await temp.open(await temp.dir(), { user: 'alice' });
    await introduce(laptop);
    expect(laptop.device).not.toBe(tablet.device);
    const l1 = await laptop.mutate({ type: 'create', domain: 'evidence', entity: 'e1', fields: { from: 'laptop' } });
    const t1 = await tablet.mutate({ type: 'create', domain: 'evidence', entity: 'e2', fields: { from: 'tablet' } });
    const l2 = await laptop.mutate({ type: 'update', domain: 'evidence', entity: 'e1', fields: { n: 2 } });
    const t2 = await tablet.mutate({ type: 'create', domain: 'note', entity: 'n1', fields: {} });
    const t3 = await tablet.mutate({ type: 'update', domain: 'evidence', entity: 'e2', fields: { n: 3 } });
    expect((await laptop.queue()).map((o) => o.id)).toEqual([l1.id, l2.id]);
    expect((await tablet.queue()).map((o) => o.id)).toEqual([t1.id, t2.id, t3.id]);
    expect(await laptop.queue(tablet.device)).toEqual([]);

    await laptop.ingest(await logOf(tablet));
    await tablet.ingest(await logOf(laptop));
    for (const node of [laptop, tablet]) {
      expect((await node.queue(laptop.device)).map((o) => [o.seq, o.id, o.user])).toEqual([
        [1, l1.id, 'alice'],
        [2, l2.id, 'alice'],
      ]);
      expect((await node.queue(tablet.device)).map((o) => [o.seq, o.id])).toEqual([
        [1, t1.id],
        [2, t2.id],
        [3, t3.id],
      ]);
      expect(await node.counts()).toEqual({ pending: 5, synced: 0, failed: 0, conflict: 0 });
    }
    expect(await laptop.stateHash()).toBe(await tablet.stateHash());
    expect(await laptop.query('evidence')).toEqual(await tablet.query('evidence'));
    // A later op on the tablet extends the tablet's queue on the laptop too.
    const t4 = await tablet.mutate({ type: 'update', domain: 'evidence', entity: 'e1', fields: { seenBy: 'tablet' } });
    await laptop.ingest(await logOf(tablet, tablet.device, 4));
    expect((await laptop.queue(tablet.device)).map((o) => o.id)).toEqual([t1.id, t2.id, t3.id, t4.id]);
    expect((await laptop.get('evidence', 'e1'))!.fields).toEqual({ from: 'laptop', n: 2, seenBy: 'tablet' });
  });
});

describe('manual conflicts', () => {
  async function conflicted() {
    const a = await temp.open(await temp.dir(), { user: 'alice' });
    const b = await temp.open(await temp.dir(), { user: 'bob' });
    await introduce(a);
    await a.mutate({ type: 'create', domain: 'case', entity: 'c1', fields: { title: 'fire', status: 'open' } });
    await b.ingest(await logOf(a));
    const fromA = await a.mutate({ type: 'update', domain: 'case', entity: 'c1', fields: { status: 'closed' } });
    const fromB = await b.mutate({ type: 'update', domain: 'case', entity: 'c1', fields: { status: 'escalated', lead: 'bob' } });
    await a.ingest(await logOf(b));
    await b.ingest(await logOf(a, a.device, 2));
    return { a, b, fromA, fromB };
  }

  it('lists an open conflict with its candidates, and resolve() closes it on every node', async () => {
    const { a, b, fromA, fromB } = await conflicted();
    const [conflict] = await a.conflicts();
    expect(await b.conflicts()).toEqual([conflict]);
    expect(conflict).toMatchObject({ domain: 'case', entity: 'c1' });
    expect(conflict!.fields).toHaveLength(1);
    expect(conflict!.fields[0]!.field).toBe('status');
    expect(conflict!.fields[0]!.candidates.map((c) => [c.op, c.value, c.user]).sort()).toEqual(
      [
        [fromA.id, 'closed', 'alice'],
        [fromB.id, 'escalated', 'bob'],
      ].sort(),
    );
    expect((await a.ops({ status: 'conflict' })).map((o) => o.id).sort()).toEqual([fromA.id, fromB.id].sort());
    expect(await a.counts()).toEqual({ pending: 1, synced: 0, failed: 0, conflict: 2 });
    const view = await a.get('case', 'c1');
    expect(view!.conflict).toEqual(conflict);
    expect(view!.fields.lead).toBe('bob'); // no conflict on a field only bob wrote

    await expectRejects(a.resolve(conflict!.id, { fields: {} }), InvalidInputError, 'BAD_RESOLUTION');
    const resolved = await a.resolve(conflict!.id, { fields: { status: 'escalated' } });
    expect(resolved.op.type).toBe('resolve');
    expect(resolved.status).toBe('pending');
    expect(await a.conflicts()).toEqual([]);
    expect((await a.get('case', 'c1'))!).toMatchObject({ fields: { title: 'fire', status: 'escalated', lead: 'bob' }, conflict: null, heads: [resolved.id] });
    expect(await a.ops({ status: 'conflict' })).toEqual([]);
    expect(await a.counts()).toEqual({ pending: 4, synced: 0, failed: 0, conflict: 0 });

    // The conflict id is stale now.
    await expectRejects(a.resolve(conflict!.id, { fields: { status: 'x' } }), RuleViolationError, 'CONFLICT_NOT_FOUND');
    await expectRejects(a.resolve('ab'.repeat(32), { fields: { status: 'x' } }), RuleViolationError, 'CONFLICT_NOT_FOUND');

    // Bob learns the resolution: same state, no conflict.
    await b.ingest(await logOf(a, a.device, 3));
    expect(await b.conflicts()).toEqual([]);
    expect(await b.stateHash()).toBe(await a.stateHash());
  });

  it('resolves a conflict by deleting the entity', async () => {
    const { a } = await conflicted();
    const [conflict] = await a.conflicts();
    await a.resolve(conflict!.id, { delete: true });
    expect(await a.get('case', 'c1')).toBeNull();
    expect(await a.conflicts()).toEqual([]);
    expect(await a.query('case')).toEqual([]);
  });

  it('changes the conflict id when a new candidate arrives, making the old id stale', async () => {
    const { a } = await conflicted();
    const [before] = await a.conflicts();
    const c = await temp.open(await temp.dir(), { user: 'carol' });
    await introduce(a);
    await c.ingest((await logOf(a)).slice(0, 1));
    await c.mutate({ type: 'update', domain: 'case', entity: 'c1', fields: { status: 'archived' } });
    await a.ingest(await logOf(c));
    const [after] = await a.conflicts();
    expect(after!.id).not.toBe(before!.id);
    expect(after!.fields[0]!.candidates).toHaveLength(3);
    await expectRejects(a.resolve(before!.id, { fields: { status: 'x' } }), RuleViolationError, 'CONFLICT_NOT_FOUND');
    await a.resolve(after!.id, { fields: { status: 'x' } });
    expect((await a.get('case', 'c1'))!.fields.status).toBe('x');
  });
});

describe('HQ receipts', () => {
  it('a rejected op turns failed with REJECTED:<code> and its effect drops out of get()', async () => {
    const node = await temp.open(await temp.dir());
    const hq = new TestAuthor(HQ, { startMs: Date.now() });
    const created = await node.mutate({ type: 'create', domain: 'evidence', entity: 'e1', fields: { kind: 'photo', size: 1 } });
    const updated = await node.mutate({ type: 'update', domain: 'evidence', entity: 'e1', fields: { kind: 'forgery', note: 'x' } });
    expect((await node.get('evidence', 'e1'))!.fields).toEqual({ kind: 'forgery', size: 1, note: 'x' });
    const status = new Collector(node.subscribe({ kinds: ['status'] }));

    await node.ingest([hq.receipt([accept(created.id), reject(updated.id, 'INVALID', 'kind may not change')]).bytes]);
    const ops = await node.ops({ device: node.device });
    expect(ops.map((o) => [o.id, o.status, o.reason, o.detail])).toEqual([
      [created.id, 'synced', undefined, undefined],
      [updated.id, 'failed', 'REJECTED:INVALID', 'kind may not change'],
    ]);
    expect((await node.get('evidence', 'e1'))!.fields).toEqual({ kind: 'photo', size: 1 });
    expect(await node.queue()).toEqual([]);
    const events = await status.take();
    expect(events).toContainEqual({ kind: 'status', op: updated.id, device: node.device, seq: 2, status: { status: 'failed', reason: 'REJECTED:INVALID', detail: 'kind may not change' } });

    // The rejected op stays in causal history: a later local update builds on it (heads include it).
    const later = await node.mutate({ type: 'update', domain: 'evidence', entity: 'e1', fields: { size: 2 } });
    if (later.op.type !== 'update') throw new Error('expected an update');
    expect(later.op.base).toEqual([updated.id]);
    expect((await node.get('evidence', 'e1'))!.fields).toEqual({ kind: 'photo', size: 2 });

    // HQ's later receipt overrides: the op is accepted after all and its value comes back.
    await node.ingest([hq.receipt([accept(updated.id)]).bytes]);
    expect((await node.ops({ device: node.device })).map((o) => o.status)).toEqual(['synced', 'synced', 'pending']);
    expect((await node.get('evidence', 'e1'))!.fields).toEqual({ kind: 'forgery', size: 2, note: 'x' });
  });

  it('a receipt that arrives before the op it judges applies once the op arrives', async () => {
    const node = await temp.open(await temp.dir());
    const other = new TestAuthor(signerOf('early-bird'), { user: 'bob', startMs: Date.now() });
    const hq = new TestAuthor(HQ, { startMs: Date.now() });
    await introduce(node);
    const op = other.create('note', 'n1', { text: 'bad' });
    await node.ingest([hq.receipt([reject(op.id, 'SPAM')]).bytes]);
    await node.ingest([op.bytes]);
    expect((await node.ops({ device: other.device }))[0]).toMatchObject({ status: 'failed', reason: 'REJECTED:SPAM' });
    expect(await node.get('note', 'n1')).toBeNull();
  });
});

describe('certificates', () => {
  it('keeps each device\'s newest certificate, whatever order they arrive in', async () => {
    const node = await temp.open(await temp.dir());
    const device = signerOf('re-enrolled').device;
    const issue = (user: string, issuedMs: number) => issueCertificate({ team: TEAM, device, user, role: 'field', issuedMs, expiresMs: issuedMs + 86_400_000 }, HQ);
    const [old, renewed] = [issue('first-name', Date.now() - 7200_000), issue('second-name', Date.now() - 3600_000)];
    expect(await node.addCertificates([renewed.bytes])).toEqual([device]);
    // The old certificate, gossiped late, changes nothing; both in one call keep the newer.
    expect(await node.addCertificates([old.bytes])).toEqual([]);
    expect(node.certificateOf(device)?.user).toBe('second-name');
    const other = await temp.open(await temp.dir());
    await other.addCertificates([renewed.bytes, old.bytes]);
    expect(other.certificateOf(device)?.user).toBe('second-name');
  });
});

describe('device key', () => {
  it('is created with mode 0600 in a 0700 data dir, kept across reopen, and tightened if loosened', async () => {
    const dataDir = join(await temp.dir(), 'node');
    const node = await temp.open(dataDir);
    const keyPath = join(dataDir, 'device.key');
    expect((await stat(keyPath)).mode & 0o777).toBe(0o600);
    expect((await stat(dataDir)).mode & 0o777).toBe(0o700);
    const device = node.device;
    await node.close();
    await chmod(keyPath, 0o644);
    const again = await temp.open(dataDir);
    expect(again.device).toBe(device);
    expect((await stat(keyPath)).mode & 0o777).toBe(0o600);
  });

  it('derives the device id (the PeerId) from the same key libp2p uses', async () => {
    const node = await temp.open(await temp.dir());
    expect(deviceIdFromPublicKey(node.privateKey.publicKey.raw)).toBe(node.device);
    expect(node.privateKey.type).toBe('Ed25519');
  });
});
