/**
 * The checkers can fail: two deliberately broken variants (sim-only) are caught within a few
 * seeds of the CI budget, each by the invariant it breaks.
 *  - arrival-order-state: each node shows the fields of the op that arrived last (no causality,
 *    no HLC order): nodes that saw concurrent writes in different orders disagree.
 *  - ack-before-flush: the disk acknowledges a batch before it is durable: a power loss then loses
 *    mutations that had resolved (or rolls the node's clock back).
 */
import { describe, expect, it } from 'vitest';
import type { Variant } from '../../src/sim/config.ts';
import { scenarioOf } from '../../src/sim/soak.ts';
import { runSimulation, type SimResult } from '../../src/sim/simulation.ts';

/** Seeds of the CI budget to try before giving up: a small fraction of the 1000. */
const SEEDS = 20;

async function firstCaught(variant: Variant, invariants: readonly string[]): Promise<{ seed: number; result: SimResult } | null> {
  for (let seed = 1; seed <= SEEDS; seed++) {
    const result = await runSimulation({ ...scenarioOf(seed), variant });
    if (invariants.includes(result.violations[0]?.invariant ?? '')) return { seed, result };
  }
  return null;
}

describe('broken variants are caught', () => {
  it('a materializer that depends on arrival order breaks convergence', async () => {
    const caught = await firstCaught('arrival-order-state', ['convergence']);
    expect(caught, `not caught within ${SEEDS} seeds`).not.toBeNull();
    expect(caught!.result.violations[0]!.message).toMatch(/shows state .* over the same ops/);
    // The correct materializer converges on that very seed.
    expect((await runSimulation({ ...caught!.result.config, variant: 'correct' })).ok).toBe(true);
  }, 120_000);

  it('a disk that acknowledges before it is durable loses resolved mutations in a crash', async () => {
    const caught = await firstCaught('ack-before-flush', ['durable-mutations', 'clock-monotonic']);
    expect(caught, `not caught within ${SEEDS} seeds`).not.toBeNull();
    expect((await runSimulation({ ...caught!.result.config, variant: 'correct' })).ok).toBe(true);
  }, 120_000);
});
