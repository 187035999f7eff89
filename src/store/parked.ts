/**
 * Ops parked until a missing base op arrives, by the id they wait for: an in-memory mirror of
 * the `waiting` table, so that applying an op asks a map, not the disk, whether anyone waits
 * for it. It follows the newest batch built; after a failed batch the store reloads it from disk.
 *
 * It also keeps up to `maxOps` parked ops themselves, parsed: during a catch-up most ops park for
 * a moment, and waking them then costs no disk read. Beyond that bound they are read from the log.
 */
import type { EntityOp, OpId } from '../core/op.ts';

export class ParkedIndex {
  private readonly byMissing = new Map<OpId, OpId[]>();
  /** Missing ids that were not held when an op parked on them (after a load: all, unknown). */
  private readonly unheld = new Set<OpId>();
  private readonly ops = new Map<OpId, EntityOp>();
  private readonly maxOps: number;

  constructor(maxOps: number) {
    this.maxOps = maxOps;
  }

  /** Builds the index from (missing, waiter) pairs, e.g. a scan of the `waiting` table. */
  static async load(pairs: AsyncIterable<readonly [OpId, OpId]>, maxOps: number): Promise<ParkedIndex> {
    const index = new ParkedIndex(maxOps);
    for await (const [missing, waiter] of pairs) index.park(missing, waiter);
    return index;
  }

  /** `held`: the op `missing` is held (it waits in turn), as opposed to not held at all. */
  park(missing: OpId, waiter: OpId, held = false): void {
    if (!held) this.unheld.add(missing);
    const waiters = this.byMissing.get(missing);
    if (waiters === undefined) this.byMissing.set(missing, [waiter]);
    else waiters.push(waiter);
  }

  /** Removes and returns the ops waiting for `missing`. */
  release(missing: OpId): readonly OpId[] {
    const waiters = this.byMissing.get(missing);
    if (waiters === undefined) return [];
    this.byMissing.delete(missing);
    this.unheld.delete(missing);
    return waiters;
  }

  /** Ids parked ops wait for that were not held when they parked (usually few). */
  unheldIds(): IterableIterator<OpId> {
    return this.unheld.values();
  }

  /** Keeps a parked op in memory, if there is room. */
  keep(op: EntityOp): void {
    if (this.ops.size >= this.maxOps) return;
    // An op decoded from a frame may be a view into the whole frame: keep only its own bytes.
    this.ops.set(op.id, op.bytes.byteLength === op.bytes.buffer.byteLength ? op : { ...op, bytes: op.bytes.slice() });
  }

  /** The parked op, if kept in memory; it is forgotten (it is about to apply or never will). */
  take(id: OpId): EntityOp | undefined {
    const op = this.ops.get(id);
    if (op !== undefined) this.ops.delete(id);
    return op;
  }
}
