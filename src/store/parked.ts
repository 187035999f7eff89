/**
 * Ops parked until a missing base op arrives, by the id they wait for: an in-memory mirror of
 * the `waiting` table, so that applying an op asks a map, not the disk, whether anyone waits
 * for it. It follows the newest batch built; after a failed batch the store reloads it from disk.
 */
import type { OpId } from '../core/op.ts';

export class ParkedIndex {
  private readonly byMissing = new Map<OpId, OpId[]>();

  /** Builds the index from (missing, waiter) pairs, e.g. a scan of the `waiting` table. */
  static async load(pairs: AsyncIterable<readonly [OpId, OpId]>): Promise<ParkedIndex> {
    const index = new ParkedIndex();
    for await (const [missing, waiter] of pairs) index.park(missing, waiter);
    return index;
  }

  park(missing: OpId, waiter: OpId): void {
    const waiters = this.byMissing.get(missing);
    if (waiters === undefined) this.byMissing.set(missing, [waiter]);
    else waiters.push(waiter);
  }

  /** Removes and returns the ops waiting for `missing`. */
  release(missing: OpId): readonly OpId[] {
    const waiters = this.byMissing.get(missing);
    if (waiters === undefined) return [];
    this.byMissing.delete(missing);
    return waiters;
  }
}
