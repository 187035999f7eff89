/**
 * From-scratch materialization: a set of ops (and fork proofs) in, entity views and op statuses
 * out. The result depends only on the set, never on the order ops are given in: entity ops are
 * applied in causal order (Kahn's algorithm over `base`), HQ ops are folded into an Authority
 * first, and ops whose base has not arrived wait (causal buffering). Ops of a device at or past
 * its proven fork point are void: outside causal history (see `effectiveBase`).
 */
import { hash } from 'node:crypto';
import { AuthorityBuilder, exclusionOf, type Authority } from './authority.ts';
import { encodeCanonical } from './cbor.ts';
import { applyEntityOp, clockOf, emptyEntity, type CausalClock, type EntityState } from './entity.ts';
import type { DeviceId } from './keys.ts';
import { isEntityOp, type EntityOp, type Op, type OpId } from './op.ts';
import { statusOf, type OpStatus } from './status.ts';
import type { ResolutionConfig } from './strategies.ts';
import { conflictOps, viewOf, type EntityView } from './view.ts';

export const entityKey = (domain: string, entity: string): string => `${domain}/${entity}`;

export interface EntityResult {
  readonly state: EntityState;
  /** Causal clock of every applied op. */
  readonly clocks: ReadonlyMap<OpId, CausalClock>;
  /** Ops not applied because a base op is missing (causally buffered). */
  readonly waiting: readonly OpId[];
  /** Ops never applied because their base is invalid (see `baseOmitsOwnOp` and BAD_BASE). */
  readonly badBase: readonly OpId[];
}

/**
 * For each op, the seq of its author's latest earlier op on the same entity (0 if none).
 * Devices write their log in seq order, so by the time an op arrives its author's earlier ops
 * have arrived too: the store can compute this on arrival, and it depends only on the set.
 */
export function previousOwnSeqs(ops: Iterable<EntityOp>): Map<OpId, number> {
  const byDevice = new Map<string, EntityOp[]>();
  for (const op of ops) {
    const list = byDevice.get(op.device);
    if (list === undefined) byDevice.set(op.device, [op]);
    else list.push(op);
  }
  const out = new Map<OpId, number>();
  for (const list of byDevice.values()) {
    const seqs = [...new Set(list.map((o) => o.seq))].sort((a, b) => a - b);
    for (const op of list) {
      const i = seqs.indexOf(op.seq);
      out.set(op.id, i > 0 ? seqs[i - 1]! : 0);
    }
  }
  return out;
}

/**
 * Causal clocks assume a device's ops on one entity form a chain through `base` (every honest
 * author has applied its own earlier ops). An op whose base leaves out its author's previous op
 * on the entity breaks that assumption, and with it order-independence: it is never applied
 * (status failed, BAD_BASE), on every node alike.
 */
export const baseOmitsOwnOp = (op: EntityOp, baseClocks: readonly CausalClock[], previousOwnSeq: number): boolean =>
  previousOwnSeq > 0 && !baseClocks.some((c) => (c[op.device] ?? 0) >= previousOwnSeq);

/** An op at or past its device's proven fork point: it counts nowhere, not even in causal history. */
export const isVoid = (op: Pick<Op, 'device' | 'seq'>, authority: Pick<Authority, 'forkedAt'>): boolean => op.seq >= (authority.forkedAt.get(op.device) ?? Number.POSITIVE_INFINITY);

/**
 * The base an op applies with. A base id naming a void op stands for that op's own base, as far
 * as it is held (recursively): an honest device that saw an op of a forked device before the
 * proof reached it built on it, and every node must apply its op alike, whether it holds that
 * void op or not (a node that does not fetches it by id, docs/protocol.md "Forks"). `voidOp`
 * returns the held void op with an id, if any. A void op that is not an op of the same entity
 * makes the base bad, as naming any other entity's op does.
 */
export function effectiveBase(op: EntityOp, voidOp: (id: OpId) => Op | undefined): { readonly base: readonly OpId[]; readonly bad: boolean } {
  if (!op.base.some((id) => voidOp(id) !== undefined)) return { base: op.base, bad: false };
  const base = new Set<OpId>();
  const seen = new Set<OpId>();
  const todo = [...op.base];
  let bad = false;
  while (todo.length > 0) {
    const id = todo.pop()!;
    if (seen.has(id)) continue;
    seen.add(id);
    const v = voidOp(id);
    if (v === undefined) base.add(id);
    else if (!isEntityOp(v) || v.domain !== op.domain || v.entity !== op.entity) bad = true;
    else todo.push(...v.base);
  }
  return { base: [...base].sort(), bad };
}

/** The op with its effective base in place of its own (heads follow the base it applies with). */
export const withBase = (op: EntityOp, base: readonly OpId[]): EntityOp => (base === op.base ? op : { ...op, base });

/**
 * Applies one entity's ops in causal order. `isOtherEntityOp` tells whether an id names a known
 * op of another entity (making the op invalid rather than waiting); `voidOp` finds held void ops
 * outside `ops` (void ops among `ops` are found without it).
 */
export function materializeEntity(
  domain: string,
  entity: string,
  ops: Iterable<EntityOp>,
  authority: Authority,
  isOtherEntityOp: (id: OpId) => boolean = () => false,
  voidOp: (id: OpId) => Op | undefined = () => undefined,
): EntityResult {
  const byId = new Map<OpId, EntityOp>();
  const voids = new Map<OpId, EntityOp>();
  for (const op of ops) (isVoid(op, authority) ? voids : byId).set(op.id, op);
  const voidOf = (id: OpId): Op | undefined => voids.get(id) ?? voidOp(id);
  const effective = new Map<OpId, EntityOp>();
  const missing = new Map<OpId, number>();
  const dependents = new Map<OpId, OpId[]>();
  const badBase: OpId[] = [];
  const ready: OpId[] = [];
  for (const original of byId.values()) {
    const { base, bad: badVoid } = effectiveBase(original, voidOf);
    const op = withBase(original, base);
    effective.set(op.id, op);
    let count = 0;
    let bad = badVoid;
    for (const b of op.base) {
      if (byId.has(b)) {
        count++;
        const list = dependents.get(b);
        if (list === undefined) dependents.set(b, [op.id]);
        else list.push(op.id);
      } else {
        count = Number.POSITIVE_INFINITY;
        if (isOtherEntityOp(b)) bad = true;
      }
    }
    // Once per op, however many of its base ops belong to other entities.
    if (bad) badBase.push(op.id);
    missing.set(op.id, count);
    if (count === 0) ready.push(op.id);
  }
  ready.sort();
  const previousOwn = previousOwnSeqs(byId.values());
  let state = emptyEntity(domain, entity);
  const clocks = new Map<OpId, CausalClock>();
  for (let i = 0; i < ready.length; i++) {
    const op = effective.get(ready[i]!)!;
    const baseClocks = op.base.map((b) => clocks.get(b)!);
    if (baseOmitsOwnOp(op, baseClocks, previousOwn.get(op.id)!)) {
      badBase.push(op.id);
      continue;
    }
    const clock = clockOf(op, baseClocks);
    clocks.set(op.id, clock);
    state = applyEntityOp(state, op, clock, exclusionOf(op, authority) === null);
    for (const d of dependents.get(op.id) ?? []) {
      const left = missing.get(d)! - 1;
      missing.set(d, left);
      if (left === 0) ready.push(d);
    }
  }
  const bad = new Set(badBase);
  const waiting = [...byId.keys()].filter((id) => !clocks.has(id) && !bad.has(id)).sort();
  return { state, clocks, waiting, badBase: badBase.sort() };
}

export interface Materialized {
  readonly entities: ReadonlyMap<string, { readonly state: EntityState; readonly view: EntityView }>;
  readonly statuses: ReadonlyMap<OpId, OpStatus>;
  readonly waiting: readonly OpId[];
  readonly authority: Authority;
}

export interface ForkPoint {
  readonly device: DeviceId;
  readonly seq: number;
}

export function materialize(ops: Iterable<Op>, config: ResolutionConfig, forks: Iterable<ForkPoint> = []): Materialized {
  const authority = new AuthorityBuilder(config.hqDevice);
  const all = new Map<OpId, Op>();
  for (const op of ops) all.set(op.id, op);
  for (const fork of forks) authority.addFork(fork.device, fork.seq);
  const groups = new Map<string, EntityOp[]>();
  for (const op of all.values()) {
    if (!isEntityOp(op)) {
      authority.addHqOp(op);
      continue;
    }
    const key = entityKey(op.domain, op.entity);
    const group = groups.get(key);
    if (group === undefined) groups.set(key, [op]);
    else group.push(op);
  }
  const voidOf = (id: OpId): Op | undefined => {
    const op = all.get(id);
    return op !== undefined && isVoid(op, authority) ? op : undefined;
  };
  const entities = new Map<string, { state: EntityState; view: EntityView }>();
  const statuses = new Map<OpId, OpStatus>();
  const waiting: OpId[] = [];
  for (const key of [...groups.keys()].sort()) {
    const group = groups.get(key)!;
    const { domain, entity } = group[0]!;
    const result = materializeEntity(domain, entity, group, authority, (id) => all.has(id), voidOf);
    const view = viewOf(result.state, config);
    entities.set(key, { state: result.state, view });
    const inConflict = new Set(conflictOps(view));
    const bad = new Set(result.badBase);
    // Waiting ops have a status too: HQ may already have answered for them.
    for (const op of group) {
      statuses.set(op.id, statusOf(op, authority, config.hqDevice, inConflict.has(op.id), bad.has(op.id)));
    }
    waiting.push(...result.waiting);
  }
  for (const op of all.values()) if (!isEntityOp(op)) statuses.set(op.id, statusOf(op, authority, config.hqDevice, false));
  return { entities, statuses, waiting: waiting.sort(), authority };
}

/** One entity's contribution to the state hash (visible entities and open conflicts only). */
export const viewDigestBytes = (view: EntityView): Uint8Array =>
  encodeCanonical([view.domain, view.entity, view.exists, view.fields, view.conflict?.id ?? null]);

export const isVisible = (view: EntityView): boolean => view.exists || view.conflict !== null;

/**
 * SHA-256 (hex) over the digests of every visible entity, in (domain, entity) order: two nodes
 * with the same hash show the same data. Store implementations stream the same bytes.
 */
export function stateHash(views: Iterable<EntityView>): string {
  const sorted = [...views].filter(isVisible).sort((a, b) => (a.domain !== b.domain ? (a.domain < b.domain ? -1 : 1) : a.entity < b.entity ? -1 : a.entity > b.entity ? 1 : 0));
  return hash('sha256', Buffer.concat(sorted.map(viewDigestBytes)), 'hex');
}
