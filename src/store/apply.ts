/**
 * Applying ops to the store inside one transaction: the incremental twin of core/materialize.
 * For every op it writes the log entry, the op's metadata, its entity's new causal state and its
 * status rows, and it wakes ops that were waiting for it. When HQ's word or a fork proof changes
 * which ops count, the affected entities are rebuilt from their ops with core/materializeEntity.
 * The result equals materializing the same ops from scratch (a property test checks it).
 */
import type { Authority, VerdictRecord } from '../core/authority.ts';
import { exclusionOf } from '../core/authority.ts';
import { applyEntityOp, clockOf, emptyEntity, type CausalClock, type EntityState } from '../core/entity.ts';
import type { DeviceId } from '../core/keys.ts';
import type { ForkProof, LogTip } from '../core/chain.ts';
import { HLC_ZERO, type Hlc } from '../core/hlc.ts';
import { baseOmitsOwnOp, effectiveBase, isVoid, materializeEntity, withBase } from '../core/materialize.ts';
import { isEntityOp, parseOp, type EntityOp, type Op, type OpId } from '../core/op.ts';
import { statusOf, type OpStatus } from '../core/status.ts';
import { policyOf, type ResolutionConfig } from '../core/strategies.ts';
import { conflictOps, inOpenConflict, viewOf, type EntityView } from '../core/view.ts';
import { byEntityKey, countKey, entityKeyOf, logKey, statusKey, under, waitingKey, split } from './keys.ts';
import { TABLES, type Table } from './tables.ts';
import type { ParkedIndex } from './parked.ts';
import type { Txn } from './txn.ts';

/** What the store keeps per op besides its bytes. */
export interface OpMeta {
  readonly device: DeviceId;
  readonly seq: number;
  readonly type: Op['type'];
  readonly user: string;
  readonly wallMs: number;
  readonly counter: number;
  readonly domain: string | null;
  readonly entity: string | null;
  /** Causal clock once applied; null while waiting for its base (or never, with a bad base). */
  readonly clock: CausalClock | null;
  readonly badBase: boolean;
  /** How many base ops it still waits for (0 once applied). */
  readonly waitingOn: number;
  /** Seq of its author's previous op on the same entity (0 if none): its base must cover it. */
  readonly previousOwnSeq: number;
  readonly status: OpStatus;
}

export type StoreEvent =
  | { readonly kind: 'entity'; readonly view: EntityView }
  | { readonly kind: 'status'; readonly op: OpId; readonly device: DeviceId; readonly seq: number; readonly status: OpStatus };

export class ApplyContext {
  readonly txn: Txn;
  readonly resolution: ResolutionConfig;
  readonly revokedAfter: Map<DeviceId, number>;
  readonly forkedAt: Map<DeviceId, number>;
  /** Entities changed by this transaction, with their view before it. */
  readonly touched = new Map<string, EntityState | null>();
  readonly statusEvents = new Map<OpId, StoreEvent & { kind: 'status' }>();
  private readonly rebuild = new Set<string>();
  /** Parked ops by missing base (the store's index, updated as this transaction parks and wakes). */
  private readonly parked: ParkedIndex;
  /** Whether anyone listens for entity views (else they are not computed). */
  wantViews = true;
  /** Whether anyone listens for status changes (else no events are kept). */
  wantStatus = true;
  /** This device's HLC as the transaction advances it. */
  clock: Hlc = HLC_ZERO;
  /** Fork proofs this transaction recorded (announced once durable). */
  readonly newForks: ForkProof[] = [];
  /** Void ops fetched by id that this transaction kept (announced once durable). */
  readonly newVoids: Uint8Array[] = [];
  /** Log tips this transaction moved. */
  readonly tips = new Map<DeviceId, LogTip>();
  /**
   * How late it is by HQ's clock as the transaction advances it: HQ's ops ingested raise it, each
   * bounded by its arrival time plus the drift bound (see Store.hqWallMs).
   */
  hqWallMs = 0;
  private readonly afterViews: EntityView[] = [];

  constructor(txn: Txn, resolution: ResolutionConfig, revokedAfter: ReadonlyMap<DeviceId, number>, forkedAt: ReadonlyMap<DeviceId, number>, parked: ParkedIndex, orphanVerdictsCommitted: number) {
    this.txn = txn;
    this.orphanVerdictsCommitted = orphanVerdictsCommitted;
    this.parked = parked;
    this.resolution = resolution;
    this.revokedAfter = new Map(revokedAfter);
    this.forkedAt = new Map(forkedAt);
  }

  /** Only manual domains have conflicts: others skip computing views on the hot path. */
  manual(domain: string): boolean {
    let manual = this.manualDomains.get(domain);
    if (manual === undefined) {
      manual = policyOf(this.resolution, domain).strategy === 'manual';
      this.manualDomains.set(domain, manual);
    }
    return manual;
  }

  /** manual() per domain, asked for every op: the policy is looked up once per transaction. */
  private readonly manualDomains = new Map<string, boolean>();

  get hqDevice(): DeviceId {
    return this.resolution.hqDevice;
  }

  /** Verdicts received for ops not held yet: while zero, a new op cannot have one. */
  private readonly orphanVerdictsCommitted: number;
  orphanVerdictsDelta = 0;
  /** Ops added in this transaction whose verdict arrived before them. */
  private readonly verdictAhead = new Set<OpId>();
  /** Ops of manual-strategy entities whose status this transaction set: re-checked at the end. */
  private readonly statusTouched = new Map<string, Set<OpId>>();

  /** The authority of new ops without verdicts (one per transaction; its maps are this context's, so it stays current). */
  private noVerdicts: Authority | undefined;

  async authorityFor(ids: readonly OpId[], isNew = false): Promise<Authority> {
    if (isNew && !ids.some((id) => this.verdictAhead.has(id))) return (this.noVerdicts ??= { verdicts: new Map(), revokedAfter: this.revokedAfter, forkedAt: this.forkedAt });
    const verdicts = new Map<OpId, VerdictRecord>();
    for (const id of ids) {
      const v = await this.txn.get<VerdictRecord>(TABLES.verdict, id);
      if (v !== undefined) verdicts.set(id, v);
    }
    return { verdicts, revokedAfter: this.revokedAfter, forkedAt: this.forkedAt };
  }

  async entityState(domain: string, entity: string): Promise<EntityState> {
    return (await this.txn.get<EntityState>(TABLES.entity, entityKeyOf(domain, entity))) ?? emptyEntity(domain, entity);
  }

  private async touch(domain: string, entity: string): Promise<void> {
    const key = entityKeyOf(domain, entity);
    if (this.touched.has(key)) return;
    this.touched.set(key, (await this.txn.get<EntityState>(TABLES.entity, key)) ?? null);
  }

  /** Loads, in one round trip, the rows that adding these ops will read. */
  async prefetchFor(ops: readonly Op[]): Promise<void> {
    const wanted: [Table, string][] = [];
    // A receipt's verdicts on ops added by this very batch need no read: addOp declares them absent (Txn.knownAbsent).
    const adding = ops.length > 1 && ops.some((op) => op.type === 'receipt') ? new Set(ops.map((op) => op.id)) : null;
    for (const op of ops) {
      if (isEntityOp(op)) {
        wanted.push([TABLES.entity, entityKeyOf(op.domain, op.entity)], [TABLES.ownLast, byEntityKey(op.domain, op.entity, op.device, 0)]);
        for (const b of op.base) wanted.push([TABLES.op, b]);
      } else if (op.type === 'receipt') {
        for (const v of op.verdicts) {
          if (adding?.has(v.op) !== true) wanted.push([TABLES.verdict, v.op]);
          wanted.push([TABLES.op, v.op]);
        }
      }
      if (this.orphanVerdictsCommitted + this.orphanVerdictsDelta > 0) wanted.push([TABLES.verdict, op.id]);
    }
    await this.txn.prefetch(wanted);
  }

  /** Stores one op that extends its device's log (the caller checked chain and signature). */
  async addOp(op: Op): Promise<void> {
    if (this.orphanVerdictsCommitted + this.orphanVerdictsDelta > 0 && (await this.txn.get(TABLES.verdict, op.id)) !== undefined) {
      this.orphanVerdictsDelta--;
      this.verdictAhead.add(op.id);
    } else this.txn.knownAbsent(TABLES.verdict, op.id); // no verdict on disk: HQ's receipt or a status refresh reads none
    this.txn.put(TABLES.log, logKey(op.device, op.seq), op.bytes);
    const tip = { seq: op.seq, id: op.id };
    this.txn.put(TABLES.tip, op.device, tip);
    this.tips.set(op.device, tip);
    if (!isEntityOp(op)) {
      await this.putNewMeta(op, this.metaOf(op, null, false, 0));
      if (op.device === this.hqDevice) await this.recordHqOp(op);
      await this.wake(op.id); // an entity op naming it as base learns its base is bad
      return;
    }
    this.txn.put(TABLES.byEntity, byEntityKey(op.domain, op.entity, op.device, op.seq), op.id);
    // Logs arrive in seq order, so the latest op of this device on the entity so far is its previous one.
    const ownKey = byEntityKey(op.domain, op.entity, op.device, 0);
    const previousOwnSeq = (await this.txn.get<number>(TABLES.ownLast, ownKey)) ?? 0;
    this.txn.put(TABLES.ownLast, ownKey, op.seq);
    if (isVoid(op, this)) {
      // Past its device's fork point (a log replayed on rebuild): it never applies, and what
      // waits for it goes through it.
      await this.putNewMeta(op, this.metaOf(op, null, false, 0, previousOwnSeq));
      await this.wake(op.id);
      return;
    }
    await this.tryApply(op, true, previousOwnSeq);
  }

  private metaOf(op: Op, clock: CausalClock | null, badBase: boolean, waitingOn: number, previousOwnSeq = 0): Omit<OpMeta, 'status'> {
    const entityOp = isEntityOp(op);
    return { device: op.device, seq: op.seq, type: op.type, user: op.user, wallMs: op.hlc.wallMs, counter: op.hlc.counter, domain: entityOp ? op.domain : null, entity: entityOp ? op.entity : null, clock, badBase, waitingOn, previousOwnSeq };
  }

  /** Metadata of an op just added, with its status (an op that is new has no rows to replace). */
  private async putNewMeta(op: Op, meta: Omit<OpMeta, 'status'>, inConflict = false): Promise<void> {
    const status = statusOf(op, await this.authorityFor([op.id], true), this.hqDevice, inConflict, meta.badBase);
    await this.putMeta(op.id, meta, status, null);
  }

  /** Writes op metadata, keeping the status index and counters in step. */
  private async putMeta(id: OpId, meta: Omit<OpMeta, 'status'>, status: OpStatus | null, known?: OpMeta | null): Promise<void> {
    const old = known === null ? undefined : (known ?? (await this.txn.get<OpMeta>(TABLES.op, id)));
    const next: OpStatus = status ?? old?.status ?? { status: 'pending' };
    if (old !== undefined && old.status.status !== next.status) {
      this.txn.del(TABLES.status, statusKey(old.status.status, old.device, old.seq));
      await this.bump(old.device, old.status.status, -1);
    }
    if (old === undefined || old.status.status !== next.status) {
      this.txn.put(TABLES.status, statusKey(next.status, meta.device, meta.seq), id);
      await this.bump(meta.device, next.status, +1);
    }
    if (this.wantStatus && (old === undefined || old.status.status !== next.status || old.status.reason !== next.reason)) {
      this.statusEvents.set(id, { kind: 'status', op: id, device: meta.device, seq: meta.seq, status: next });
    }
    if (meta.domain !== null && meta.entity !== null && this.manual(meta.domain)) {
      const key = entityKeyOf(meta.domain, meta.entity);
      const set = this.statusTouched.get(key);
      if (set === undefined) this.statusTouched.set(key, new Set([id]));
      else set.add(id);
    }
    // A literal, not a spread of `meta`: this runs for every op (and meta may carry a stale status).
    const row: OpMeta = { device: meta.device, seq: meta.seq, type: meta.type, user: meta.user, wallMs: meta.wallMs, counter: meta.counter, domain: meta.domain, entity: meta.entity, clock: meta.clock, badBase: meta.badBase, waitingOn: meta.waitingOn, previousOwnSeq: meta.previousOwnSeq, status: next };
    this.txn.put(TABLES.op, id, row);
  }

  private async bump(device: DeviceId, status: string, delta: number): Promise<void> {
    const key = countKey(device, status);
    const count = ((await this.txn.get<number>(TABLES.count, key)) ?? 0) + delta;
    if (count === 0) this.txn.del(TABLES.count, key);
    else this.txn.put(TABLES.count, key, count);
  }

  /** Applies the op if its whole base is here, else parks it; then wakes what waited for it. */
  private async tryApply(op: EntityOp, fresh: boolean, previousOwnSeq: number): Promise<void> {
    // With no fork proven, no base can name a void op.
    const effective = this.forkedAt.size === 0 ? { base: op.base, bad: false } : effectiveBase(op, mapLookup(await this.voidsFrom(op.base)));
    const baseClocks: CausalClock[] = [];
    const missing: OpId[] = [];
    /** Missing base ops we hold (they wait in turn), as opposed to ops not held at all. */
    const held = new Set<OpId>();
    let badBase = effective.bad;
    for (const b of effective.base) {
      const meta = await this.txn.get<OpMeta>(TABLES.op, b);
      if (meta === undefined) missing.push(b);
      else if (meta.domain !== op.domain || meta.entity !== op.entity) badBase = true;
      else if (meta.clock === null) {
        missing.push(b);
        held.add(b);
      } else baseClocks.push(meta.clock);
    }
    if (!badBase && missing.length === 0) badBase = baseOmitsOwnOp(op, baseClocks, previousOwnSeq);
    if (badBase || missing.length > 0) {
      if (!badBase) {
        for (const m of missing) {
          this.txn.put(TABLES.waiting, waitingKey(m, op.id), '');
          this.parked.park(m, op.id, held.has(m));
        }
        this.parked.keep(op);
      }
      const meta = this.metaOf(op, null, badBase, badBase ? 0 : missing.length, previousOwnSeq);
      if (!fresh) {
        await this.putMeta(op.id, meta, null);
        await this.refreshStatus(op.id);
      } else await this.putNewMeta(op, meta);
      return;
    }
    await this.touch(op.domain, op.entity);
    const clock = clockOf(op, baseClocks);
    const existing = fresh ? undefined : await this.txn.get<OpMeta>(TABLES.op, op.id); // it waited for its base
    const authority = await this.authorityFor([op.id], existing === undefined);
    const state = applyEntityOp(await this.entityState(op.domain, op.entity), withBase(op, effective.base), clock, exclusionOf(op, authority) === null);
    this.txn.put(TABLES.entity, entityKeyOf(op.domain, op.entity), state);
    const inConflict = inOpenConflict(state, op.id, this.resolution);
    const meta = this.metaOf(op, clock, false, 0, previousOwnSeq);
    if (existing === undefined) await this.putNewMeta(op, meta, inConflict);
    else await this.putMeta(op.id, meta, statusOf(op, authority, this.hqDevice, inConflict, false), existing);
    await this.wake(op.id);
  }

  /** Ops parked on `id` lose one missing base each; those with none left apply now. */
  private async wake(id: OpId): Promise<void> {
    const waiters = this.parked.release(id);
    if (waiters.length === 0) return;
    // Parked long enough, their rows may have left the cache: one round trip for all of them.
    await this.txn.prefetch(waiters.flatMap((w): [Table, string][] => [[TABLES.op, w], [TABLES.verdict, w]]));
    for (const waiter of waiters) {
      this.txn.del(TABLES.waiting, waitingKey(id, waiter));
      const meta = await this.txn.get<OpMeta>(TABLES.op, waiter);
      if (meta === undefined || meta.clock !== null || meta.badBase || isVoid(meta, this)) {
        this.parked.take(waiter);
        continue;
      }
      const waitingOn = meta.waitingOn - 1;
      this.txn.put(TABLES.op, waiter, { ...meta, waitingOn });
      if (waitingOn > 0) continue;
      const op = this.parked.take(waiter) ?? (await this.loadOp(meta.device, meta.seq));
      if (isEntityOp(op)) await this.tryApply(op, false, meta.previousOwnSeq);
    }
  }

  /**
   * Held void ops (past their device's fork point, in our log or fetched by id) reachable from
   * `ids` through void ops' bases: what `effectiveBase` needs.
   */
  async voidsFrom(ids: Iterable<OpId>): Promise<Map<OpId, Op>> {
    const found = new Map<OpId, Op>();
    const seen = new Set<OpId>();
    let todo = [...ids];
    while (todo.length > 0) {
      const next: OpId[] = [];
      for (const id of todo) {
        if (seen.has(id)) continue;
        seen.add(id);
        const op = await this.voidOp(id);
        if (op === undefined) continue;
        found.set(id, op);
        if (isEntityOp(op)) next.push(...op.base);
      }
      todo = next;
    }
    return found;
  }

  private async voidOp(id: OpId): Promise<Op | undefined> {
    const bytes = await voidEnvelope(this.txn, this, id);
    return bytes === undefined ? undefined : parseOp(bytes).op;
  }

  /**
   * Keeps a void op fetched by id (the caller checked it: signed, of an enrolled device of the
   * team): ops that name it in their base apply through it. False if it is not void or held.
   */
  async addVoidOp(op: Op): Promise<boolean> {
    if (!isVoid(op, this)) return false;
    if ((await this.txn.get(TABLES.op, op.id)) !== undefined || (await this.txn.get(TABLES.voids, op.id)) !== undefined) return false;
    this.txn.put(TABLES.voids, op.id, op.bytes);
    this.newVoids.push(op.bytes);
    await this.wake(op.id);
    return true;
  }

  async loadOp(device: DeviceId, seq: number): Promise<Op> {
    const bytes = await this.txn.getRaw(TABLES.log, logKey(device, seq));
    if (bytes === undefined) throw new Error(`log entry ${device}#${seq} missing`);
    return parseOp(bytes).op;
  }

  /** Recomputes one op's status from HQ's word, proofs, its entity's conflict and its base. */
  async refreshStatus(id: OpId): Promise<void> {
    const meta = await this.txn.get<OpMeta>(TABLES.op, id);
    if (meta === undefined) return;
    let inConflict = false;
    if (meta.domain !== null && meta.entity !== null && meta.clock !== null && this.manual(meta.domain)) {
      inConflict = inOpenConflict(await this.entityState(meta.domain, meta.entity), id, this.resolution);
    }
    const status = statusOf({ id, device: meta.device, seq: meta.seq }, await this.authorityFor([id]), this.hqDevice, inConflict, meta.badBase);
    await this.putMeta(id, meta, status);
  }

  /** HQ receipts and revocations: record them and rebuild what they change. */
  private async recordHqOp(op: Op): Promise<void> {
    if (op.type === 'receipt') {
      await this.prefetchFor([op]);
      for (const v of op.verdicts) {
        const known = await this.txn.get<VerdictRecord>(TABLES.verdict, v.op);
        if (known !== undefined && known.hqSeq >= op.seq) continue;
        this.txn.put(TABLES.verdict, v.op, { accepted: v.accepted, reason: v.reason, detail: v.detail, hqSeq: op.seq });
        const meta = await this.txn.get<OpMeta>(TABLES.op, v.op);
        if (meta === undefined) {
          if (known === undefined) this.orphanVerdictsDelta++;
          continue;
        }
        const flips = known === undefined ? !v.accepted : known.accepted !== v.accepted;
        if (flips && meta.domain !== null && meta.entity !== null) this.rebuild.add(entityKeyOf(meta.domain, meta.entity));
        else await this.refreshStatus(v.op);
      }
    } else if (op.type === 'revoke') {
      const known = this.revokedAfter.get(op.target);
      if (known !== undefined && known <= op.afterSeq) return;
      this.revokedAfter.set(op.target, op.afterSeq);
      this.txn.put(TABLES.revoked, op.target, op.afterSeq);
      await this.markDevice(op.target, op.afterSeq + 1);
    }
  }

  /** A fork proof: exclude the device's ops from `seq` on. */
  async recordFork(device: DeviceId, seq: number, proof: unknown): Promise<boolean> {
    const known = this.forkedAt.get(device);
    if (known !== undefined && known <= seq) return false;
    this.forkedAt.set(device, seq);
    this.txn.put(TABLES.fork, device, proof);
    this.newForks.push(proof as ForkProof);
    await this.markDevice(device, seq, true);
    return true;
  }

  /**
   * Schedules a rebuild of every entity the device wrote from `fromSeq` on, and refreshes
   * statuses. Past a fork point its ops are void: ops parked on them go through them now.
   */
  private async markDevice(device: DeviceId, fromSeq: number, voided = false): Promise<void> {
    const tip = await this.txn.get<{ seq: number }>(TABLES.tip, device);
    for (let seq = fromSeq; seq <= (tip?.seq ?? 0); seq++) {
      const op = await this.loadOp(device, seq);
      if (isEntityOp(op)) this.rebuild.add(entityKeyOf(op.domain, op.entity));
      else await this.refreshStatus(op.id);
      if (voided) await this.wake(op.id);
    }
  }

  /** Rebuilds scheduled entities from their ops; call once before committing. */
  async finish(): Promise<void> {
    for (const key of [...this.rebuild].sort()) {
      const [domain, entity] = split(key) as [string, string];
      await this.touch(domain, entity);
      const ops: EntityOp[] = [];
      for (const k of await this.txn.keys(TABLES.byEntity, under(domain, entity))) {
        const parts = split(k);
        const op = await this.loadOp(parts[2]!, Number.parseInt(parts[3]!, 16));
        if (isEntityOp(op)) ops.push(op);
      }
      const inEntity = new Set(ops.map((o) => o.id));
      const outside = [...new Set(ops.flatMap((o) => o.base))].filter((b) => !inEntity.has(b));
      const voids = this.forkedAt.size === 0 ? new Map<OpId, Op>() : await this.voidsFrom(outside);
      // Base ops outside the entity that we hold make their dependents invalid rather than
      // waiting, also where a void op's base (standing in for it) names them.
      const elsewhere = new Set<OpId>();
      for (const b of new Set([...outside, ...[...voids.values()].flatMap((v) => (isEntityOp(v) ? v.base : []))])) {
        if (!inEntity.has(b) && (await this.txn.get(TABLES.op, b)) !== undefined) elsewhere.add(b);
      }
      const result = materializeEntity(domain, entity, ops, await this.authorityFor(ops.map((o) => o.id)), (id) => elsewhere.has(id), mapLookup(voids));
      this.txn.put(TABLES.entity, key, result.state);
      const bad = new Set(result.badBase);
      for (const op of ops) {
        const meta = await this.txn.get<OpMeta>(TABLES.op, op.id);
        await this.putMeta(op.id, { ...meta!, clock: result.clocks.get(op.id) ?? null, badBase: bad.has(op.id) }, null);
        await this.refreshStatus(op.id);
      }
    }
    this.rebuild.clear();
    await this.refreshConflictStatuses();
  }

  /** Views of the entities this transaction changed (after finish). */
  changedViews(): readonly EntityView[] {
    return this.afterViews;
  }

  /** Ops that entered or left an open conflict change status; events get the new views. */
  private async refreshConflictStatuses(): Promise<void> {
    for (const [key, beforeState] of this.touched) {
      const [domain, entity] = split(key) as [string, string];
      const manual = this.manual(domain);
      if (!manual && !this.wantViews) continue;
      const after = viewOf(await this.entityState(domain, entity), this.resolution);
      this.afterViews.push(after);
      if (!manual) continue;
      const before = beforeState === null ? null : viewOf(beforeState, this.resolution);
      if (after.conflict !== null) this.txn.put(TABLES.conflict, key, after.conflict.id);
      else if (before?.conflict != null) this.txn.del(TABLES.conflict, key);
      // Statuses set mid-transaction saw an intermediate conflict: settle them against the final one.
      const was = new Set(before === null ? [] : conflictOps(before));
      const now = new Set(conflictOps(after));
      const settle = new Set([...(this.statusTouched.get(key) ?? [])]);
      for (const id of new Set([...was, ...now])) if (was.has(id) !== now.has(id)) settle.add(id);
      for (const id of settle) await this.refreshStatus(id);
    }
  }
}

/**
 * The envelope of the void op with this id that we hold, in our log past its device's fork point
 * or fetched by id into the voids table; undefined for any other id.
 */
export async function voidEnvelope(txn: Txn, authority: { readonly forkedAt: ReadonlyMap<DeviceId, number> }, id: OpId): Promise<Uint8Array | undefined> {
  const meta = await txn.get<OpMeta>(TABLES.op, id);
  if (meta !== undefined) return isVoid(meta, authority) ? txn.getRaw(TABLES.log, logKey(meta.device, meta.seq)) : undefined;
  return txn.get<Uint8Array>(TABLES.voids, id);
}

const mapLookup =
  <K, V>(map: ReadonlyMap<K, V>) =>
  (key: K): V | undefined =>
    map.get(key);
