/**
 * Many seeds in a row: the scenario of each seed (how many nodes, how many mutations, unless
 * fixed), the run, and a summary for soaks, CI and the benchmark.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { FaultType, SimConfig } from './config.ts';
import { FAULT_TYPES, simConfig } from './config.ts';
import { runSimulation, type SimResult } from './simulation.ts';
import type { SoakJob } from './soak-worker.ts';

export interface SoakOptions {
  /** First seed and number of seeds. */
  readonly firstSeed: number;
  readonly seeds: number;
  /** Fixed node count; by default each seed draws 3..20. */
  readonly nodes?: number;
  /** Fixed mutation count; by default each seed draws 10..30. */
  readonly mutations?: number;
  /** Every other option, the same for every seed. */
  readonly base?: Partial<SimConfig>;
  /** Called after every seed. */
  readonly onResult?: (result: SimResult, done: number) => void;
  /** Stop at the first failing seed. @default true */
  readonly stopOnFailure?: boolean;
  /**
   * Worker threads to spread the seeds over (seeds are independent: results are the same). With
   * 1 the seeds run in this thread, in order. @default 1
   */
  readonly workers?: number;
}

/** As many workers as the machine has cores. */
export const defaultWorkers = (): number => Math.max(1, availableParallelism());

export interface SoakSummary {
  readonly seeds: number;
  readonly failed: readonly SimResult[];
  readonly events: number;
  readonly faults: Record<FaultType, number>;
  readonly ops: number;
  readonly mutations: number;
  readonly wireBytes: number;
  /** Void ops fetched by id (held after settling, over all nodes), and in how many seeds. */
  readonly voidsFetched: number;
  readonly voidsFetchedSeeds: number;
  /** Largest virtual time from healing to convergence, in ms, and its seed. */
  readonly maxConvergenceMs: number;
  readonly maxConvergenceSeed: number | null;
  readonly wallMs: number;
}

/** The scenario a seed gets when the soak does not fix it: spread over 3..20 nodes and 10..30 mutations. */
export function scenarioOf(seed: number, options: Pick<SoakOptions, 'nodes' | 'mutations' | 'base'> = {}): Partial<SimConfig> {
  return {
    ...options.base,
    seed,
    nodes: options.nodes ?? 3 + (seed % 18),
    mutations: options.mutations ?? 10 + ((seed * 7) % 21),
  };
}

/** Accumulates results into a summary. */
class Tally {
  readonly faults = Object.fromEntries(FAULT_TYPES.map((f) => [f, 0])) as Record<FaultType, number>;
  readonly failed: SimResult[] = [];
  events = 0;
  ops = 0;
  mutations = 0;
  wireBytes = 0;
  voidsFetched = 0;
  voidsFetchedSeeds = 0;
  maxConvergenceMs = 0;
  maxConvergenceSeed: number | null = null;
  done = 0;

  add(result: SimResult): void {
    this.done++;
    this.events += result.events;
    this.ops += result.ops;
    this.mutations += result.stats.mutations;
    this.wireBytes += result.stats.wireBytes;
    this.voidsFetched += result.stats.voidsFetched;
    if (result.stats.voidsFetched > 0) this.voidsFetchedSeeds++;
    for (const f of FAULT_TYPES) this.faults[f] += result.stats.faults[f];
    if (result.convergenceMs > this.maxConvergenceMs) {
      this.maxConvergenceMs = result.convergenceMs;
      this.maxConvergenceSeed = result.config.seed;
    }
    if (!result.ok) this.failed.push(result);
  }

  summary(wallMs: number): SoakSummary {
    const failed = [...this.failed].sort((a, b) => a.config.seed - b.config.seed);
    const { events, faults, ops, mutations, wireBytes, voidsFetched, voidsFetchedSeeds, maxConvergenceMs, maxConvergenceSeed } = this;
    return { seeds: this.done, failed, events, faults, ops, mutations, wireBytes, voidsFetched, voidsFetchedSeeds, maxConvergenceMs, maxConvergenceSeed, wallMs };
  }
}

export async function soak(options: SoakOptions): Promise<SoakSummary> {
  const started = performance.now();
  const tally = new Tally();
  const stop = options.stopOnFailure ?? true;
  // Bad options fail here, as a typed error, rather than inside a worker.
  simConfig(scenarioOf(options.firstSeed, options));
  const seeds = Array.from({ length: options.seeds }, (_, i) => options.firstSeed + i);
  const workers = Math.min(options.workers ?? 1, seeds.length);
  if (workers <= 1) {
    for (const seed of seeds) {
      const result = await runSimulation(scenarioOf(seed, options));
      tally.add(result);
      options.onResult?.(result, tally.done);
      if (!result.ok && stop) break;
    }
    return tally.summary(performance.now() - started);
  }
  const scenario: SoakJob['scenario'] = { ...(options.nodes !== undefined ? { nodes: options.nodes } : {}), ...(options.mutations !== undefined ? { mutations: options.mutations } : {}), ...(options.base !== undefined ? { base: options.base } : {}) };
  const threads = Array.from({ length: workers }, () => new Worker(new URL('./soak-worker.ts', import.meta.url)));
  await Promise.all(
    threads.map(
      (thread, w) =>
        new Promise<void>((resolve, reject) => {
          thread.on('message', (result: SimResult) => {
            tally.add(result);
            options.onResult?.(result, tally.done);
            if (!result.ok && stop) for (const t of threads) void t.terminate();
          });
          thread.on('error', reject);
          thread.on('exit', () => resolve());
          // Interleaved shares, so every worker gets small and large teams alike.
          thread.postMessage({ seeds: seeds.filter((_, i) => i % workers === w), scenario } satisfies SoakJob);
        }),
    ),
  );
  return tally.summary(performance.now() - started);
}
