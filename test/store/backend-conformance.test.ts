/**
 * One suite, every backend of the storage seam: the same store behaviours (authoring, ingesting
 * runs with duplicates, gaps and forks, HQ receipts, reopening, range loads, scans, statuses,
 * verify) run against LevelDB in a temp dir and against memory-level (the simulator's backend),
 * and every observable result, down to the full key/value dump of the database, must be identical.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Level } from 'level';
import { MemoryLevel } from 'memory-level';
import { afterAll, describe, expect, it } from 'vitest';
import { authorOp, type OpDraft } from '../../src/core/author.ts';
import { issueCertificate } from '../../src/core/cert.ts';
import { EMPTY_TIP, type LogTip } from '../../src/core/chain.ts';
import { FieldmeshError } from '../../src/core/errors.ts';
import type { Op } from '../../src/core/op.ts';
import { ingest } from '../../src/store/ingest.ts';
import { Store, type OpenStoreOptions } from '../../src/store/store.ts';
import { TABLES } from '../../src/store/tables.ts';
import type { Db } from '../../src/store/txn.ts';
import { verifyStore } from '../../src/store/verify.ts';
import { accept, reject, T0, TestDevice } from '../core/helpers.ts';

const TEAM = 'team-1';
const DAY = 24 * 3600 * 1000;
/** Fresh devices (the same keys every time) for each backend, so both see the very same ops. */
const devices = () => ({ hq: new TestDevice('conformance-hq'), self: new TestDevice('conformance-self'), peer: new TestDevice('conformance-peer') });
const { hq: HQ, self: SELF, peer: PEER } = devices();

/** A backend: how to get the database for a store, the same one again after a close. */
interface Backend {
  readonly name: string;
  database(): Promise<{ dir: string; database?: Db }>;
}

const temps: string[] = [];
afterAll(async () => {
  for (const dir of temps) await rm(dir, { recursive: true, force: true });
});

const BACKENDS: readonly Backend[] = [
  {
    name: 'LevelDB in a temp dir',
    async database() {
      const dir = await mkdtemp(join(tmpdir(), 'fieldmesh-conformance-'));
      temps.push(dir);
      return { dir };
    },
  },
  {
    name: 'memory-level',
    async database() {
      return { dir: 'memory:conformance', database: new MemoryLevel<string, Uint8Array>({ keyEncoding: 'utf8', valueEncoding: 'view' }) };
    },
  },
];

/** Every row of the database, in key order (raw records: the bytes must match exactly). */
async function dump(where: { dir: string; database?: Db }): Promise<[string, string][]> {
  const db: Db = where.database ?? new Level<string, Uint8Array>(where.dir, { keyEncoding: 'utf8', valueEncoding: 'view' });
  await db.open();
  const rows: [string, string][] = [];
  for await (const [key, value] of db.iterator()) rows.push([key, Buffer.from(value).toString('hex')]);
  await db.close();
  return rows;
}

/** Runs every behaviour against one backend and returns everything observable, in order. */
async function observe(backend: Backend): Promise<unknown[]> {
  const { hq, self, peer } = devices();
  const certOf = (d: TestDevice) => issueCertificate({ team: TEAM, device: d.id, user: d.author.user, role: 'field', issuedMs: T0 - DAY, expiresMs: T0 + 365 * DAY }, hq.author.signer);
  const where = await backend.database();
  const options: OpenStoreOptions = { dir: where.dir, identity: { team: TEAM, device: self.id, hqDevice: hq.id }, resolution: { hqDevice: hq.id, domains: { case: 'manual', note: 'merge' } }, ...(where.database !== undefined ? { database: where.database } : {}) };
  const seen: unknown[] = [];
  const note = (label: string, value: unknown) => seen.push([label, value]);
  const outcome = async (label: string, work: Promise<unknown>) => {
    try {
      note(label, await work);
    } catch (err) {
      note(label, err instanceof FieldmeshError ? { error: err.constructor.name, code: err.code } : { error: String(err) });
    }
  };

  let store = await Store.open(options);
  note('fresh', { vv: store.versionVector(), clock: store.clock, rebuilt: store.rebuilt });
  await store.addCertificates([certOf(self), certOf(peer)]);
  const ingestOps = (ops: readonly Op[], s: Store = store) =>
    s.write((ctx) => ingest(ctx, ops.map((o) => o.bytes), { team: TEAM, nowMs: T0 + 60_000, maxDriftMs: 300_000, isEnrolled: (d) => d === hq.id || s.certificates.has(d) }));
  const author = (draft: OpDraft, physicalMs: number) =>
    store.write(async (ctx) => {
      const tip = (await ctx.txn.get<LogTip>(TABLES.tip, self.id)) ?? EMPTY_TIP;
      const { op, state } = authorOp(self.author, { tip, clock: ctx.clock }, physicalMs, draft);
      ctx.clock = state.clock;
      await ctx.addOp(op);
      return op;
    });

  // Authoring: group-committed writes of our own log.
  const mine = await Promise.all([
    author({ type: 'create', domain: 'case', entity: 'c1', base: [], fields: { title: 'Fire', status: 'open' } }, T0),
    author({ type: 'create', domain: 'note', entity: 'n1', base: [], fields: { text: 'hello', tags: ['a'] } }, T0 + 1),
  ]);
  note('authored', mine.map((o) => [o.seq, o.id]));

  // Ingesting a peer's run: concurrent writes to c1 (a manual conflict), duplicates, a gap, a fork.
  const p1 = peer.create(T0 + 5, 'case', 'c2', { title: 'Flood' });
  const p2 = peer.update(T0 + 6, 'case', 'c1', { status: 'closed' }, [mine[0]!.id]);
  const p3 = peer.update(T0 + 7, 'note', 'n1', { text: 'hi' }, [mine[1]!.id]);
  const c1Rival = await author({ type: 'update', domain: 'case', entity: 'c1', base: [mine[0]!.id], fields: { status: 'active' } }, T0 + 8);
  await outcome('ingest run', ingestOps([p1, p2]));
  await outcome('ingest with duplicates', ingestOps([p1, p2, p3]));
  const p5 = peer.update(T0 + 9, 'case', 'c2', { title: 'Flood 2' }, [p1.id]);
  const p6 = peer.update(T0 + 10, 'case', 'c2', { title: 'Flood 3' }, [p5.id]);
  await outcome('ingest with a gap', ingestOps([p6]));
  // A fork: another op at seq 4, signed by the same device.
  const forked = new TestDevice('conformance-peer');
  forked.state = { tip: { seq: p3.seq, id: p3.id }, clock: p3.hlc };
  const rival = forked.update(T0 + 11, 'note', 'n1', { text: 'forked' }, [p3.id]);
  await outcome('ingest the run', ingestOps([p5]));
  await outcome('ingest a fork', ingestOps([rival]));
  note('forks', [...store.forks]);
  note('rival', c1Rival.seq);

  // HQ's word: a receipt accepting one op and rejecting another.
  const receipt = hq.receipt(T0 + 20, [accept(mine[1]!), reject(p2, 'SCHEMA', 'status must be open')]);
  await outcome('ingest a receipt', ingestOps([receipt]));

  const tables = async (s: Store) => {
    const out: Record<string, unknown[]> = {};
    for (const [name, table] of Object.entries(TABLES)) {
      out[name] = [];
      for await (const row of s.scan(table)) out[name]!.push(row);
    }
    return out;
  };
  const state = async (s: Store) => ({
    vv: s.versionVector(),
    clock: s.clock,
    certs: [...s.certificates.keys()].sort(),
    forks: [...s.forks],
    forkProofs: (await s.forkProofs()).length,
    range: (await s.loadRange(peer.id, 1, 10, 600)).map((b) => b.length),
    statusPending: (await (async () => {
      const ids: unknown[] = [];
      for await (const row of s.scan(TABLES.status, { gte: 'pending\u0000', lt: 'pending\u0000\uffff' })) ids.push(row);
      return ids;
    })()),
    tables: await tables(s),
    verify: await verifyStore(s),
  });
  const before = await state(store);
  note('state', before);

  // Reopen: the same state, from the same database.
  await store.close();
  await outcome('write after close', store.write(async () => 1));
  store = await Store.open(options);
  const after = await state(store);
  note('reopened equal', JSON.stringify(after) === JSON.stringify(before));
  note('reopened', after);
  await store.close();
  note('dump', await dump(where));
  return seen;
}

describe('storage backends behave alike', () => {
  it('LevelDB and memory-level give identical results, byte for byte', async () => {
    const [level, memory] = [await observe(BACKENDS[0]!), await observe(BACKENDS[1]!)];
    const byLabel = (seen: unknown[]) => new Map(seen as [string, unknown][]);
    const l = byLabel(level);
    const m = byLabel(memory);
    expect([...m.keys()]).toEqual([...l.keys()]);
    for (const label of l.keys()) expect(m.get(label), label).toEqual(l.get(label));

    // And the behaviours themselves are the expected ones (on either backend).
    expect(l.get('ingest run')).toMatchObject({ added: 2, duplicates: 0 });
    expect(l.get('ingest with duplicates')).toMatchObject({ added: 1, duplicates: 2 });
    expect(l.get('ingest with a gap')).toMatchObject({ error: 'RuleViolationError', code: 'SEQ_GAP' });
    expect(l.get('ingest a fork')).toMatchObject({ added: 0, forks: [{ device: PEER.id, seq: 4 }] });
    expect(l.get('write after close')).toMatchObject({ code: 'STORE_CLOSED' });
    expect(l.get('reopened equal')).toBe(true);
    const state = l.get('state') as { verify: { problems: unknown[]; ops: number }; vv: Record<string, number> };
    expect(state.verify.problems).toEqual([]);
    expect(state.vv).toEqual({ [SELF.id]: 3, [PEER.id]: 4, [HQ.id]: 1 });
    expect((l.get('dump') as unknown[]).length).toBeGreaterThan(20);
  });
});
