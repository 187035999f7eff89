/**
 * What the team does: mutations at random times of the fault phase on random nodes (mostly field
 * devices and gateways, some HQ edits), on a few hot entities of every domain so that concurrent
 * writes, deletes and manual conflicts (and their resolution) happen in every run.
 */
import type { OpDraft } from '../core/author.ts';
import type { Fields } from '../core/value.ts';
import type { EntityView } from '../core/view.ts';
import type { SimContext } from './context.ts';
import type { SimNode } from './node.ts';

const DOMAINS = ['evidence', 'case', 'asset', 'task'] as const;
/** Entities per domain: few, so that writes collide. */
const ENTITIES_PER_DOMAIN = 3;

export function scheduleMutations(sim: SimContext, nodes: readonly SimNode[]): void {
  const [hq, ...others] = nodes;
  for (let i = 0; i < sim.config.mutations; i++) {
    const at = sim.prng.int(0, sim.config.faultPhaseMs);
    const node = sim.prng.chance(0.1) ? hq! : sim.prng.pick(others);
    sim.scheduler.at(at, `mutate ${node.name}`, () => mutate(sim, node));
  }
}

function mutate(sim: SimContext, node: SimNode): void {
  // A device that is down has no user typing into it.
  if (node.state !== 'up') return;
  const prng = sim.prng;
  const domain = prng.pick(DOMAINS);
  const entity = `${domain}-${prng.int(1, ENTITIES_PER_DOMAIN)}`;
  const fields = fieldsFor(domain, prng.int(0, 9), prng.int(0, 1000), prng.pick(['exterior', 'night', 'wet']), node.name);
  const wantDelete = prng.chance(0.1);
  const wantResolve = prng.chance(0.6);
  const draftFor = (view: EntityView | null): OpDraft | null => {
    if (view === null) return null;
    const base = [...view.heads];
    if (view.conflict !== null && wantResolve) {
      const chosen: Record<string, Fields[string]> = {};
      for (const f of view.conflict.fields) if (f.field !== '$exists') chosen[f.field] = f.field === 'score' ? 5 : `resolved-by-${node.name}`;
      return { type: 'resolve', domain, entity, base, conflict: view.conflict.id, exists: true, fields: chosen };
    }
    if (!view.exists) return { type: 'create', domain, entity, base, fields };
    if (wantDelete) return { type: 'delete', domain, entity, base, fields: {} };
    return { type: 'update', domain, entity, base, fields };
  };
  node.author({ domain, entity }, draftFor, () => sim.stats.mutations++);
}

/** `score` 0 breaks HQ's schema (the op is rejected); field devices writing `asset` are rejected too. */
function fieldsFor(domain: (typeof DOMAINS)[number], score: number, n: number, tag: string, by: string): Fields {
  switch (domain) {
    case 'evidence':
      return { score, tags: [tag], note: `seen ${n} by ${by}` };
    case 'case':
      return { score, status: ['open', 'active', 'closed'][n % 3]! };
    case 'asset':
      return { holder: by, battery: n % 101 };
    case 'task':
      return { progress: n % 101, done: n % 7 === 0 };
  }
}
