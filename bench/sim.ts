/**
 * Simulator suite: how sync cost grows with team size, and how fast the simulator runs.
 *  - For 5, 10, 20 and 50 nodes: every device works alone (blackout) through the fault phase,
 *    writing 4 mutations, then the whole team comes into range at once; the virtual time until
 *    every log stops growing, and the bytes on the wire for the whole run.
 *  - Simulator speed: events/s and seeds/s over the CI scenario mix (all faults), one thread.
 */
import type { Result, Suite } from './harness.ts';
import { replayCommand } from '../src/sim/config.ts';
import { runSimulation } from '../src/sim/simulation.ts';
import { soak } from '../src/sim/soak.ts';

const TEAM_SIZES = [5, 10, 20, 50] as const;
/** Seeds per team size: the median smooths out one unlucky fault schedule. */
const SEEDS = [1, 2, 3] as const;
/** Mutations per device during the fault phase. */
const MUTATIONS_PER_NODE = 4;
const SPEED_SEEDS = 40;

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

export const simSuite: Suite = {
  name: 'sim',
  description: 'deterministic simulator: convergence time and wire bytes vs team size, simulator speed',
  approxSeconds: 90,
  async run(log) {
    const results: Result[] = [];
    for (const nodes of TEAM_SIZES) {
      const runs = [];
      for (const seed of SEEDS) {
        const result = await runSimulation({ seed, nodes, mutations: nodes * MUTATIONS_PER_NODE, faults: [], blackout: true });
        // A violation is a bug to report, not a reason to lose the measurement.
        if (!result.ok) log(`  seed ${seed}, ${nodes} nodes: ${result.violations[0]!.invariant}: ${result.violations[0]!.message} (${replayCommand(result.config)})`);
        runs.push(result);
      }
      const convergence = median(runs.map((r) => r.convergenceMs / 1000));
      const wire = median(runs.map((r) => r.stats.wireBytes));
      const perOpNode = median(runs.map((r) => r.stats.wireBytes / Math.max(1, r.ops * nodes)));
      log(`${nodes} nodes: ${runs.map((r) => `${r.ops} ops, ${r.links} links, ${(r.convergenceMs / 1000).toFixed(2)} s, ${r.stats.wireBytes} B, ${r.wallMs.toFixed(0)} ms`).join(' | ')}`);
      results.push({ name: `sim.convergence_${nodes}_nodes`, value: convergence, unit: 'virtual s' });
      results.push({ name: `sim.wire_bytes_${nodes}_nodes`, value: wire, unit: 'B' });
      results.push({ name: `sim.wire_bytes_per_op_per_node_${nodes}_nodes`, value: perOpNode, unit: 'B' });
    }
    log(`simulator speed over ${SPEED_SEEDS} seeds of the CI mix (3..20 nodes) ...`);
    const summary = await soak({ firstSeed: 1, seeds: SPEED_SEEDS, stopOnFailure: false });
    for (const failed of summary.failed) log(`  seed ${failed.config.seed} violated ${failed.violations[0]!.invariant} (${replayCommand(failed.config)})`);
    const seconds = summary.wallMs / 1000;
    log(`  ${summary.events} events, ${summary.ops} ops in ${seconds.toFixed(1)} s`);
    results.push({ name: 'sim.events_per_s', value: summary.events / seconds, unit: 'events/s' });
    results.push({ name: 'sim.seeds_per_s', value: summary.seeds / seconds, unit: 'seeds/s' });
    return results;
  },
};
