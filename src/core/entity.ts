/**
 * Per-entity causal state, updated one op at a time. Everything here is order-independent given
 * causal delivery (an op is applied only after every op in its `base`):
 *
 * - Each op gets a clock: the pointwise max of its base ops' clocks plus its own (device, seq).
 *   Op c is in the causal past of op n exactly when clock(n)[c.device] >= c.seq.
 * - `heads` are the maximal ops (what a new local op names as its base): the ops no other op's
 *   base names. They follow `base` rather than clocks, since a forked device has two ops at one
 *   seq that a clock cannot tell apart (for unforked logs the two agree).
 * - A register per field holds the maximal writes to that field, where a delete counts as a write
 *   of "absent" to every field. Superseded writes drop out; concurrent writes stay side by side for
 *   the domain's strategy to resolve (see strategies.ts). Ops that do not write (rejected by HQ,
 *   past a revocation) still take part in causality: they are heads and clocks, not values. Ops
 *   past a fork point take no part at all (void, see materialize.ts `effectiveBase`).
 */
import type { Hlc } from './hlc.ts';
import type { DeviceId } from './keys.ts';
import type { EntityOp, OpId } from './op.ts';
import type { Value } from './value.ts';
import type { VersionVector } from './version-vector.ts';

/** The register recording whether the entity exists: create/update/resolve write true, delete writes absent. */
export const EXISTS = '$exists';

export type CausalClock = VersionVector;

export interface OpRef {
  readonly op: OpId;
  readonly device: DeviceId;
  readonly seq: number;
}

/** One candidate value of a register. */
export interface Write extends OpRef {
  readonly hlc: Hlc;
  readonly user: string;
  /** True for a delete: the field is absent. */
  readonly deleted: boolean;
  /** The written value (null when deleted). */
  readonly value: Value;
}

export interface EntityState {
  readonly domain: string;
  readonly entity: string;
  /** Maximal ops of the entity, sorted by op id. */
  readonly heads: readonly OpRef[];
  /** Maximal deletes, sorted by op id: the seed of any register first written later. */
  readonly deletes: readonly Write[];
  /** Field name -> maximal writes (sorted by op id). Registers holding only deletes are dropped (they equal `deletes`). */
  readonly registers: Readonly<Record<string, readonly Write[]>>;
}

export const emptyEntity = (domain: string, entity: string): EntityState => ({ domain, entity, heads: [], deletes: [], registers: {} });

const inPast = (ref: OpRef, clock: CausalClock): boolean => (clock[ref.device] ?? 0) >= ref.seq;
const byOp = (a: OpRef, b: OpRef): number => (a.op < b.op ? -1 : a.op > b.op ? 1 : 0);

/** The causal clock of `op`, from the clocks of its base ops (all of which must be known). */
export function clockOf(op: EntityOp, baseClocks: readonly CausalClock[]): CausalClock {
  // A copy of the first base clock (a fast clone), then the others merged in: the same keys in the same order.
  const out: Record<DeviceId, number> = baseClocks.length > 0 ? { ...baseClocks[0] } : {};
  for (let i = 1; i < baseClocks.length; i++) {
    const clock = baseClocks[i]!;
    for (const device in clock) {
      const seq = clock[device]!;
      if ((out[device] ?? 0) < seq) out[device] = seq;
    }
  }
  if ((out[op.device] ?? 0) < op.seq) out[op.device] = op.seq;
  return out;
}

function insertMaximal<T extends OpRef>(set: readonly T[], item: T, clock: CausalClock): T[] {
  const out = set.filter((c) => !inPast(c, clock)); // one array, not a filtered one and a spread copy
  out.push(item);
  return out.sort(byOp);
}

/** True when the op deletes the entity (a delete, or a resolution choosing deletion). */
export const isDeletion = (op: EntityOp): boolean => op.type === 'delete' || (op.type === 'resolve' && !op.exists);

/**
 * Applies one op whose base ops have all been applied. `writes` is false for ops that stay in
 * the causal history but must not contribute values (see module comment).
 */
export function applyEntityOp(state: EntityState, op: EntityOp, clock: CausalClock, writes: boolean): EntityState {
  const ref: OpRef = { op: op.id, device: op.device, seq: op.seq };
  const heads = state.heads.filter((h) => !op.base.includes(h.op));
  heads.push(ref);
  heads.sort(byOp);
  if (!writes) return { ...state, heads };
  const write = (deleted: boolean, value: Value): Write => ({ op: ref.op, device: ref.device, seq: ref.seq, hlc: op.hlc, user: op.user, deleted, value });
  const registers: Record<string, readonly Write[]> = { ...state.registers };
  if (isDeletion(op)) {
    const tombstone = write(true, null);
    for (const field of Object.keys(registers)) {
      const next = insertMaximal(registers[field]!, tombstone, clock);
      if (next.every((w) => w.deleted)) delete registers[field];
      else registers[field] = next;
    }
    return { ...state, heads, deletes: insertMaximal(state.deletes, tombstone, clock), registers };
  }
  const assign = (field: string, value: Value): void => {
    // Own registers only: a field named like an Object.prototype member ('constructor', 'toString')
    // must not pick up the inherited function as its register.
    const current = Object.hasOwn(registers, field) ? registers[field]! : state.deletes;
    registers[field] = insertMaximal(current, write(false, value), clock);
  };
  assign(EXISTS, true);
  const fields = op.fields;
  for (const field of Object.keys(fields)) assign(field, fields[field]!);
  return { ...state, heads, registers };
}
