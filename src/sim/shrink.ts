/**
 * Shrinking a failing run: greedily tries smaller configs with the same seed (fewer nodes, fewer
 * mutations, a shorter fault phase, one fault type less) and keeps each one that still fails the
 * same invariant first. Every config replays exactly, so the smallest one found is a small
 * failing case with its own replay command.
 */
import type { SimConfig } from './config.ts';
import { runSimulation, type SimResult } from './simulation.ts';

/** Configs one step smaller than `c`, most shrinking first. */
function smaller(c: SimConfig): SimConfig[] {
  const out: SimConfig[] = [];
  if (c.nodes > 3) out.push({ ...c, nodes: Math.max(3, Math.floor(c.nodes / 2)) }, { ...c, nodes: c.nodes - 1 });
  if (c.mutations > 0) out.push({ ...c, mutations: Math.floor(c.mutations / 2) }, { ...c, mutations: c.mutations - 1 });
  if (c.faultPhaseMs > 1000) out.push({ ...c, faultPhaseMs: Math.max(1000, Math.floor(c.faultPhaseMs / 2)) });
  for (const fault of c.faults) out.push({ ...c, faults: c.faults.filter((f) => f !== fault) });
  return out;
}

export async function shrink(failing: SimResult, options: { maxRuns?: number; onStep?: (result: SimResult) => void } = {}): Promise<SimResult> {
  const first = failing.violations[0];
  if (first === undefined) return failing;
  const stillFails = (r: SimResult) => r.violations[0]?.invariant === first.invariant;
  const maxRuns = options.maxRuns ?? 60;
  let best = failing;
  let runs = 0;
  let improved = true;
  while (improved && runs < maxRuns) {
    improved = false;
    for (const config of smaller(best.config)) {
      if (runs++ >= maxRuns) break;
      const result = await runSimulation(config);
      if (stillFails(result)) {
        best = result;
        improved = true;
        options.onStep?.(result);
        break;
      }
    }
  }
  return best;
}
