/**
 * The invariants checked once a run has healed and settled (docs/testing.md lists them all):
 *  - convergence: every node is up and holds the same logs, byte for byte, and the same state hash;
 *  - from-scratch agreement: that state and every op's status equal core/materialize over the same ops;
 *  - nothing lost: every mutation that resolved on its device is present on every node;
 *  - receipts: HQ judged every op, and every node's status agrees with HQ's verdict;
 *  - forks only of devices restored from a backup (the rollback fault), every node holding the
 *    same proof (one fork point) once healed, and nothing at or past a fork point counts: logs
 *    may differ only there, and each node's state and statuses equal materialize over its own ops
 *    and the fork points;
 *  - causal order: no op waits for its base (but void ops, past a fork point, which never apply),
 *    and every applied op's effective base ops are applied (a void op in a base stands for its
 *    own base: ops built on a void op apply on every node, which fetches the void op by id).
 * Violations are reported to the run's context; the first one fails the seed.
 */
import { createHash } from 'node:crypto';
import { effectiveBase, isVisible, materialize, stateHash, viewDigestBytes } from '../core/materialize.ts';
import { isEntityOp, parseOp, type Op, type OpId } from '../core/op.ts';
import type { OpStatus } from '../core/status.ts';
import type { EntityState } from '../core/entity.ts';
import { viewOf } from '../core/view.ts';
import type { OpMeta } from '../store/apply.ts';
import type { Store } from '../store/store.ts';
import { split } from '../store/keys.ts';
import { TABLES } from '../store/tables.ts';
import type { SimContext } from './context.ts';
import type { SimNode } from './node.ts';

/** What one node holds, read from its store. */
interface Snapshot {
  readonly node: SimNode;
  readonly logs: Map<string, Uint8Array>;
  readonly hash: string;
  readonly ops: Map<OpId, Op>;
  /** Void ops fetched by id (the `voids` table). */
  readonly voids: Map<OpId, Op>;
  readonly metas: Map<OpId, OpMeta>;
  /** Ops waiting for a base, from the `waiting` table. */
  readonly waiting: Set<OpId>;
  /** Device -> the fork point (lowest forked seq) of every fork proof held. */
  readonly forks: ReadonlyMap<string, number>;
}

/** How a run hashes a node's state; `skip` leaves entities out (keys `domain/entity`). */
export type HashOf = (node: SimNode, skip?: ReadonlySet<string>) => Promise<string>;

/** FieldNode.stateHash over a store: every visible entity's digest in key order (but those skipped). */
export async function storeStateHash(store: Store, skip: ReadonlySet<string> = new Set()): Promise<string> {
  const hash = createHash('sha256');
  for await (const [, state] of store.scan<EntityState>(TABLES.entity)) {
    if (skip.has(`${state.domain}/${state.entity}`)) continue;
    const view = viewOf(state, store.resolution);
    if (isVisible(view)) hash.update(viewDigestBytes(view));
  }
  return hash.digest('hex');
}

async function snapshot(node: SimNode, hashOf: HashOf): Promise<Snapshot> {
  const store = node.store;
  const logs = new Map<string, Uint8Array>();
  const ops = new Map<OpId, Op>();
  for await (const [key, bytes] of store.scan<Uint8Array>(TABLES.log)) {
    logs.set(key, bytes);
    const op = parseOp(bytes).op;
    ops.set(op.id, op);
  }
  const metas = new Map<OpId, OpMeta>();
  for await (const [id, meta] of store.scan<OpMeta>(TABLES.op)) metas.set(id, meta);
  const waiting = new Set<OpId>();
  for await (const [key] of store.scan(TABLES.waiting)) waiting.add(split(key)[1]!);
  const voids = new Map<OpId, Op>();
  for await (const [id, bytes] of store.scan<Uint8Array>(TABLES.voids)) voids.set(id, parseOp(bytes).op);
  return { node, logs, ops, voids, hash: await hashOf(node), metas, waiting, forks: new Map(store.forks) };
}

const sameBytes = (a: Uint8Array, b: Uint8Array): boolean => Buffer.from(a.buffer, a.byteOffset, a.length).equals(b);
const statusText = (s: OpStatus | undefined): string => (s === undefined ? 'none' : s.reason === undefined ? s.status : `${s.status}(${s.reason})`);

export async function checkSettled(sim: SimContext, nodes: readonly SimNode[], hashOf: HashOf): Promise<void> {
  const down = nodes.filter((n) => n.state !== 'up');
  if (down.length > 0) {
    sim.violate('convergence', `nodes still down after healing: ${down.map((n) => n.name).join(', ')}`);
    return;
  }
  const snaps: Snapshot[] = [];
  for (const node of nodes) snaps.push(await snapshot(node, hashOf));
  const first = snaps[0]!;

  // Forks: only of devices restored from a backup, and once healed every node holds the same proof.
  const rolledBack = new Set(nodes.filter((n) => n.rollbacks > 0).map((n) => n.device));
  const nameOf = new Map(nodes.map((n) => [n.device as string, n.name]));
  const forkAt = new Map<string, number>();
  const violationsBefore = sim.violations.length;
  for (const s of snaps) {
    for (const [device, seq] of s.forks) {
      if (!rolledBack.has(device)) sim.violate('no-honest-forks', `${s.node.name} holds a fork proof of ${nameOf.get(device) ?? device} at #${seq}, a device never restored from a backup`);
      forkAt.set(device, Math.min(seq, forkAt.get(device) ?? Number.POSITIVE_INFINITY));
    }
  }
  for (const [device, seq] of forkAt) {
    for (const s of snaps) {
      const held = s.forks.get(device);
      if (held === undefined) sim.violate('fork-proofs', `${s.node.name} holds no proof that ${nameOf.get(device)} forked (others prove it forked at #${seq}) after healing`);
      else if (held !== seq) sim.violate('fork-proofs', `${s.node.name} puts ${nameOf.get(device)}'s fork point at #${held}, another node at #${seq}`);
    }
  }
  if (sim.violations.length > violationsBefore) return;
  /** Log entries at or past a fork point: they may differ from node to node (stored before the proof). */
  const pastFork = (key: string): boolean => {
    const [device, seqHex] = key.split('\u0000') as [string, string];
    const seq = forkAt.get(device);
    return seq !== undefined && Number.parseInt(seqHex, 16) >= seq;
  };

  for (const s of snaps) sim.stats.voidsFetched += s.voids.size;

  for (const s of snaps.slice(1)) {
    const missing = [...first.logs.keys()].filter((k) => !s.logs.has(k) && !pastFork(k));
    const extra = [...s.logs.keys()].filter((k) => !first.logs.has(k) && !pastFork(k));
    if (missing.length > 0 || extra.length > 0) {
      sim.violate('convergence', `${s.node.name} holds ${s.logs.size} ops, ${first.node.name} ${first.logs.size} (${missing.length} missing, ${extra.length} extra)`);
      return;
    }
    for (const [key, bytes] of first.logs) {
      if (pastFork(key)) continue;
      if (!sameBytes(bytes, s.logs.get(key)!)) {
        sim.violate('convergence', `${s.node.name} and ${first.node.name} hold different ops at ${key.replace('\u0000', '#')}`);
        return;
      }
    }
    if (s.hash !== first.hash) {
      sim.violate('convergence', `${s.node.name} shows state ${s.hash.slice(0, 12)}, ${first.node.name} ${first.hash.slice(0, 12)}, over the same ops${forkAt.size > 0 ? ' (past fork points apart)' : ''}`);
      return;
    }
  }

  // From-scratch agreement: each node against materialize over the ops it holds (void ops it
  // fetched included) and the fork points. Nodes that hold the same ops past fork points share
  // one materialization.
  const forkPoints = [...forkAt].map(([device, seq]) => ({ device, seq }));
  const expectations = new Map<string, { ops: Op[]; expected: ReturnType<typeof materialize> }>();
  const expectationOf = (s: Snapshot) => {
    const signature = [...[...s.logs.keys()].filter(pastFork).map((k) => `${k}=${createHash('sha256').update(s.logs.get(k)!).digest('hex')}`), ...[...s.voids.keys()].sort()].join(',');
    let found = expectations.get(signature);
    if (found === undefined) {
      const ops = [...s.ops.values()];
      const expected = materialize([...ops, ...s.voids.values()], nodes[0]!.team.resolution, forkPoints);
      const expectedHash = stateHash([...expected.entities.values()].map((e) => e.view));
      if (s.hash !== expectedHash) sim.violate('matches-materialize', `${s.node.name} shows state ${s.hash.slice(0, 12)}, materialize over the same ops gives ${expectedHash.slice(0, 12)}`);
      found = { ops, expected };
      expectations.set(signature, found);
    }
    return found;
  };
  const ownOps = new Map(snaps.map((s) => [s, expectationOf(s)]));
  const { expected } = ownOps.get(first)!;
  const byId = new Set<OpId>();
  for (const { ops } of ownOps.values()) for (const op of ops) byId.add(op.id);
  const forkedOp = (op: Op): boolean => (forkAt.get(op.device) ?? Number.POSITIVE_INFINITY) <= op.seq;

  for (const node of nodes) {
    const forkedFrom = forkAt.get(node.device) ?? Number.POSITIVE_INFINITY;
    for (const [seq, id] of node.resolved) {
      // A restored device's mutations from its fork point on are refused everywhere, by the rules.
      if (seq >= forkedFrom) continue;
      if (!byId.has(id)) sim.violate('nothing-lost', `${node.name}'s op #${seq} (${id.slice(0, 12)}) resolved on its device but is on no node`);
    }
  }

  const hqDevice = nodes[0]!.device;
  const verdicts = expected.authority.verdicts;
  for (const s of snaps) {
    const { ops, expected } = ownOps.get(s)!;
    const waiting = [...s.waiting].filter((id) => !forkedOp(s.ops.get(id)!));
    if (waiting.length > 0) sim.violate('causal-order', `${s.node.name} still has ${waiting.length} op(s) waiting for their base after convergence`);
    for (const op of ops) {
      const meta = s.metas.get(op.id);
      const want = expected.statuses.get(op.id);
      if (meta === undefined) {
        sim.violate('convergence', `${s.node.name} has no metadata for op ${op.device.slice(-6)}#${op.seq}`);
        return;
      }
      if (statusText(meta.status) !== statusText(want)) {
        sim.violate('matches-materialize', `${s.node.name}: op ${op.id.slice(0, 12)} is ${statusText(meta.status)}, materialize says ${statusText(want)}`);
        return;
      }
      // HQ never judges (or no longer counts) ops at or past their device's fork point.
      if (isEntityOp(op) && op.device !== hqDevice && !forkedOp(op)) {
        const verdict = verdicts.get(op.id);
        if (verdict === undefined) sim.violate('receipts', `HQ never judged op ${op.id.slice(0, 12)} of ${op.device.slice(-6)}#${op.seq}`);
        else if (!verdict.accepted && meta.status.reason !== `REJECTED:${verdict.reason}`) sim.violate('receipts', `${s.node.name}: op ${op.id.slice(0, 12)} rejected by HQ (${verdict.reason}) is ${statusText(meta.status)}`);
        else if (verdict.accepted && meta.status.status !== 'synced' && meta.status.status !== 'conflict' && meta.status.reason !== 'BAD_BASE') sim.violate('receipts', `${s.node.name}: op ${op.id.slice(0, 12)} accepted by HQ is ${statusText(meta.status)}`);
        if (meta.status.status === 'pending') sim.violate('receipts', `${s.node.name}: op ${op.id.slice(0, 12)} still pending after HQ judged everything`);
      }
      if (isEntityOp(op) && meta.clock !== null) {
        const voidOp = (id: OpId): Op | undefined => {
          const held = s.voids.get(id) ?? s.ops.get(id);
          return held !== undefined && forkedOp(held) ? held : undefined;
        };
        for (const b of effectiveBase(op, voidOp).base) {
          if (s.metas.get(b)?.clock == null) sim.violate('causal-order', `${s.node.name} applied ${op.id.slice(0, 12)} but not its base ${b.slice(0, 12)}`);
        }
      }
    }
  }
}
