/**
 * Property: applying ops incrementally in the real store gives what core/materialize computes
 * from scratch over the same set of ops: the same state hash, the same status (and reason) for
 * every op, the same waiting ops and the same open conflicts, whatever the arrival order (each
 * device's log in seq order, logs interleaved at random, in random batch sizes), and again after
 * a reopen.
 *
 * The ops come from a small simulated team: HQ and three field devices write creates, updates,
 * deletes and resolutions on a few entities across domains with every strategy, each basing its
 * writes on its own materialized view (realistic causality), exchanging ops now and then; HQ
 * sends receipts accepting or rejecting some ops, and sometimes changes its mind.
 */
import { rm, mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { OpDraft } from '../../src/core/author.ts';
import { issueCertificate } from '../../src/core/cert.ts';
import { materialize, stateHash, type Materialized } from '../../src/core/materialize.ts';
import type { Op, OpId } from '../../src/core/op.ts';
import { MERGE_FUNCTIONS, type DomainPolicy, type ResolutionConfig, type Strategy } from '../../src/core/strategies.ts';
import type { Fields, Value } from '../../src/core/value.ts';
import { FieldNode } from '../../src/node/field-node.ts';
import { pick, rng, signerOf, TEAM, TestAuthor } from '../node/helpers.ts';

const HQ_SIGNER = signerOf('prop-hq');
const DOMAINS: Readonly<Record<string, DomainPolicy | Strategy>> = {
  case: 'manual',
  evidence: { strategy: 'merge', merge: { tags: MERGE_FUNCTIONS.union } },
  asset: 'server-wins',
  note: 'client-wins',
};
const CONFIG: ResolutionConfig = { hqDevice: HQ_SIGNER.device, domains: DOMAINS };
const ENTITIES = Object.keys(DOMAINS).flatMap((d) => [0, 1].map((i) => [d, `${d}-${i}`] as const));
const FIELDS = ['status', 'title', 'tags', 'n'];
const START = Date.UTC(2026, 5, 1);

class SimDevice {
  readonly author: TestAuthor;
  readonly known = new Map<OpId, Op>();
  clock: number;
  constructor(name: string, signer = signerOf(name), start = START) {
    this.author = new TestAuthor(signer, { user: `user-${name}`, startMs: start, enrolled: false });
    this.clock = start;
  }
  get device() {
    return this.author.device;
  }
  write(draft: OpDraft, rand: () => number): Op {
    this.clock += 1 + Math.floor(rand() * 50);
    // Now and then a clock that lags (HLC keeps causality, not wall time).
    const physical = rand() < 0.1 ? this.clock - 5000 : this.clock;
    const op = this.author.write(draft, physical);
    this.known.set(op.id, op);
    return op;
  }
  view(): Materialized {
    return materialize(this.known.values(), CONFIG);
  }
}

function randomValue(rand: () => number, field: string): Value {
  if (field === 'tags') return [pick(rand, ['a', 'b', 'c', 'd'])];
  if (field === 'n') return Math.floor(rand() * 5);
  return pick(rand, ['open', 'closed', 'escalated', 'x']);
}

function randomFields(rand: () => number): Fields {
  const out: Record<string, Value> = {};
  for (const f of FIELDS) if (rand() < 0.5) out[f] = randomValue(rand, f);
  if (Object.keys(out).length === 0) out.status = randomValue(rand, 'status');
  return out;
}

/** One simulated team history: every device's log, in seq order. */
function simulate(seed: number, steps: number): { logs: Op[][]; all: Op[] } {
  const rand = rng(seed);
  const hq = new SimDevice('prop-hq', HQ_SIGNER);
  const devices = [hq, new SimDevice('prop-f1'), new SimDevice('prop-f2', undefined, START + 20_000), new SimDevice('prop-f3', undefined, START - 20_000)];
  const judged = new Set<OpId>();
  for (let step = 0; step < steps; step++) {
    const r = rand();
    if (r < 0.2) {
      // Exchange: one device learns everything another knows (knowledge stays causally closed).
      const [to, from] = [pick(rand, devices), pick(rand, devices)];
      for (const [id, op] of from.known) to.known.set(id, op);
      continue;
    }
    if (r < 0.3) {
      const candidates = [...hq.known.values()].filter((o) => o.device !== hq.device && o.type !== 'receipt');
      if (candidates.length === 0) continue;
      const verdicts = new Map<OpId, { op: OpId; accepted: boolean; reason: string; detail: string }>();
      for (let k = 0; k < 1 + Math.floor(rand() * 4); k++) {
        const target = pick(rand, candidates);
        // Mostly ops not judged yet; sometimes HQ changes its mind about one it judged.
        if (judged.has(target.id) && rand() < 0.6) continue;
        const accepted = rand() < 0.6;
        verdicts.set(target.id, { op: target.id, accepted, reason: accepted ? '' : pick(rand, ['INVALID', 'STALE']), detail: accepted ? '' : 'refused' });
        judged.add(target.id);
      }
      if (verdicts.size > 0) hq.write({ type: 'receipt', verdicts: [...verdicts.values()].sort((a, b) => (a.op < b.op ? -1 : 1)) }, rand);
      continue;
    }
    const device = pick(rand, devices);
    const [domain, entity] = pick(rand, ENTITIES);
    const view = device.view().entities.get(`${domain}/${entity}`)?.view;
    const base = [...(view?.heads ?? [])].sort();
    if (view?.conflict != null && rand() < 0.5) {
      const deleting = rand() < 0.2;
      const fields: Record<string, Value> = {};
      if (!deleting) for (const f of view.conflict.fields) if (f.field !== '$exists') fields[f.field] = pick(rand, f.candidates).value ?? 'chosen';
      device.write({ type: 'resolve', domain, entity, base, conflict: view.conflict.id, exists: !deleting, fields }, rand);
    } else if (view === undefined || !view.exists) {
      device.write({ type: 'create', domain, entity, base, fields: randomFields(rand) }, rand);
    } else if (rand() < 0.8) {
      device.write({ type: 'update', domain, entity, base, fields: randomFields(rand) }, rand);
    } else {
      device.write({ type: 'delete', domain, entity, base, fields: {} }, rand);
    }
  }
  const logs = devices.map((d) => d.author.written).filter((l) => l.length > 0);
  return { logs, all: logs.flat() };
}

/** What the node shows, in the shape of materialize's result. */
async function observed(node: FieldNode) {
  const ops = await node.ops({ limit: 1_000_000 });
  return {
    hash: await node.stateHash(),
    statuses: Object.fromEntries(ops.map((o) => [o.id, o.reason === undefined ? { status: o.status } : { status: o.status, reason: o.reason }])),
    waiting: ops.filter((o) => o.waiting).map((o) => o.id).sort(),
    conflicts: (await node.conflicts()).map((c) => c.id).sort(),
  };
}

function expected(ops: Iterable<Op>) {
  const m = materialize(ops, CONFIG);
  const views = [...m.entities.values()].map((e) => e.view);
  return {
    hash: stateHash(views),
    statuses: Object.fromEntries([...m.statuses].map(([id, s]) => [id, s.reason === undefined ? { status: s.status } : { status: s.status, reason: s.reason }])),
    waiting: [...m.waiting].sort(),
    conflicts: views.flatMap((v) => (v.conflict === null ? [] : [v.conflict.id])).sort(),
  };
}

/**
 * Feeds the logs to a fresh node in a random interleaving that keeps each log's seq order,
 * comparing with materialize after every ingest call. With `receiptsLast`, a receipt is fed only
 * once every op it judges has been.
 */
async function check(seed: number, steps: number, receiptsLast: boolean, parkedOpsInMemory?: number): Promise<void> {
  const { logs, all } = simulate(seed, steps);
  const rand = rng(seed ^ 0x5bd1e995);
  const root = await mkdtemp(join(tmpdir(), 'fm-prop-'));
  const storeLimits = parkedOpsInMemory === undefined ? {} : { parkedOpsInMemory };
  const open = () => FieldNode.open({ dataDir: root, team: TEAM, user: 'observer', hqDevice: HQ_SIGNER.device, domains: DOMAINS, storeLimits });
  let node = await open();
  // The observer holds HQ's certificate of every field device (else it refuses their ops).
  const issuedMs = Date.now() - 3600_000;
  const certs = logs.map((l) => l[0]!).filter((op) => op.device !== HQ_SIGNER.device);
  await node.addCertificates(certs.map((op) => issueCertificate({ team: TEAM, device: op.device, user: op.user, role: 'field', issuedMs, expiresMs: issuedMs + 3600_000 * 24 }, HQ_SIGNER).bytes));
  try {
    const next = logs.map(() => 0);
    const fed: Op[] = [];
    const fedIds = new Set<OpId>();
    const eligible = (i: number) => {
      const op = logs[i]![next[i]!];
      if (op === undefined) return false;
      return !receiptsLast || op.type !== 'receipt' || op.verdicts.every((v) => fedIds.has(v.op));
    };
    let calls = 0;
    while (fed.length < all.length) {
      const batch: Op[] = [];
      const runs = 1 + Math.floor(rand() * 3);
      for (let r = 0; r < runs; r++) {
        const open = logs.map((_, i) => i).filter(eligible);
        if (open.length === 0) break;
        const i = pick(rand, open);
        const take = 1 + Math.floor(rand() * 6);
        for (let k = 0; k < take && eligible(i); k++) {
          const op = logs[i]![next[i]!++]!;
          batch.push(op);
          fedIds.add(op.id);
        }
      }
      if (batch.length === 0) throw new Error('interleaving stuck');
      const result = await node.ingest(batch.map((o) => o.bytes));
      expect(result.added).toBe(batch.length);
      fed.push(...batch);
      calls++;
      expect(await observed(node), `seed ${seed}: after ingest call ${calls} (${fed.length}/${all.length} ops)`).toEqual(expected(fed));
    }
    const final = await observed(node);
    expect(final).toEqual(expected(all));
    expect((await node.verify()).problems).toEqual([]);
    await node.close();
    node = await open();
    expect(await observed(node), `seed ${seed}: after reopen`).toEqual(final);
  } finally {
    await node.close();
    await rm(root, { recursive: true, force: true });
  }
}

describe('incremental store == materialize from scratch', () => {
  it('for random team histories fed in random interleavings, receipts after the ops they judge', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 2 ** 31 - 1 }), fc.integer({ min: 20, max: 120 }), (seed, steps) => check(seed, steps, true)),
      { numRuns: 25 },
    );
  }, 120_000);

  it('for random team histories fed in random interleavings, receipts possibly before the ops they judge', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 2 ** 31 - 1 }), fc.integer({ min: 20, max: 120 }), (seed, steps) => check(seed, steps, false)),
      { numRuns: 25 },
    );
  }, 120_000);

  it('the same when parked ops are read back from the log instead of kept in memory', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 2 ** 31 - 1 }), fc.integer({ min: 20, max: 120 }), fc.integer({ min: 0, max: 3 }), (seed, steps, kept) => check(seed, steps, false, kept)),
      { numRuns: 15 },
    );
  }, 120_000);

  it('simulated histories exercise every status, waiting ops, conflicts and resolutions', () => {
    // Guards the generator: the property is only as good as the histories it sees.
    const seen = { types: new Set<string>(), statuses: new Set<string>(), waiting: 0, conflicts: 0 };
    for (let seed = 1; seed <= 20; seed++) {
      const { all } = simulate(seed, 60);
      for (const op of all) seen.types.add(op.type);
      const m = materialize(all, CONFIG);
      for (const s of m.statuses.values()) seen.statuses.add(s.reason ?? s.status);
      seen.conflicts += [...m.entities.values()].filter((e) => e.view.conflict !== null).length;
      // A prefix of one log without the others leaves ops waiting.
      seen.waiting += materialize(all.filter((o) => o.device !== all[0]!.device || o.seq < 3), CONFIG).waiting.length;
    }
    expect([...seen.types].sort()).toEqual(['create', 'delete', 'receipt', 'resolve', 'update']);
    expect([...seen.statuses].sort()).toEqual(expect.arrayContaining(['pending', 'synced', 'conflict', 'REJECTED:INVALID', 'REJECTED:STALE']));
    expect(seen.conflicts).toBeGreaterThan(0);
    expect(seen.waiting).toBeGreaterThan(0);
  });
});
