/**
 * A deliberately broken materializer, for the test that proves the checkers can fail: each entity
 * shows the fields of the op that arrived last on this node (a naive "last arrival wins"), with no
 * regard for causality or HLC order. Nodes that receive concurrent writes in different orders show
 * different data, which the convergence checker must catch. Sim-only: nothing in src/store uses it.
 */
import { createHash } from 'node:crypto';
import { encodeCanonical } from '../core/cbor.ts';
import { isEntityOp, type Op } from '../core/op.ts';
import type { Value } from '../core/value.ts';
import type { SimNode } from './node.ts';

export class ArrivalOrderState {
  private readonly entities = new Map<string, { exists: boolean; fields: Record<string, Value> }>();

  constructor(node: SimNode) {
    node.onStored = (ops) => {
      for (const op of ops) this.apply(op);
    };
  }

  private apply(op: Op): void {
    if (!isEntityOp(op)) return;
    const key = `${op.domain}/${op.entity}`;
    const entity = this.entities.get(key) ?? { exists: false, fields: {} };
    if (op.type === 'delete' || (op.type === 'resolve' && !op.exists)) this.entities.set(key, { exists: false, fields: {} });
    else this.entities.set(key, { exists: true, fields: { ...entity.fields, ...op.fields } });
  }

  hash(): string {
    const hash = createHash('sha256');
    for (const key of [...this.entities.keys()].sort()) {
      const e = this.entities.get(key)!;
      if (e.exists) hash.update(encodeCanonical([key, e.fields]));
    }
    return hash.digest('hex');
  }
}
