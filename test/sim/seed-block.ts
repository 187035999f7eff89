/**
 * One block of the CI seed budget: seeds first..first+count-1, each with its own scenario
 * (3..20 nodes, 10..30 mutations, every fault type enabled). The blocks are split over several
 * test files so that vitest runs them in parallel; together they cover seeds 1..1000.
 */
import { expect, it } from 'vitest';
import { DEFAULT_FAULTS } from '../../src/sim/config.ts';
import { formatFailure } from '../../src/sim/report.ts';
import { defaultWorkers, soak } from '../../src/sim/soak.ts';

/** Wall-clock limit of one block (2 shared cores in CI run every block and the other suites). */
const BLOCK_TIMEOUT_MS = 9 * 60 * 1000;

export function seedBlock(first: number, count: number): void {
  it(`seeds ${first}..${first + count - 1}: every invariant holds after faults, healing and settling`, async () => {
    // Worker threads use every core even when vitest runs one test file at a time (it does on 2 cores).
    const summary = await soak({ firstSeed: first, seeds: count, stopOnFailure: false, workers: defaultWorkers() });
    const failures = summary.failed.map(formatFailure);
    expect(failures, failures.join('\n\n')).toEqual([]);
    expect(summary.seeds).toBe(count);
    // Every fault type was injected across the block, and the team did work.
    for (const fault of DEFAULT_FAULTS) expect(summary.faults[fault], fault).toBeGreaterThan(0);
    expect(summary.mutations).toBeGreaterThan(count * 5);
  }, BLOCK_TIMEOUT_MS);
}
