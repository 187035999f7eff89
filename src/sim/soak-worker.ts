/**
 * A worker thread of a parallel soak: runs the seeds it is given, one at a time, and posts each
 * result back. Seeds are independent, so spreading them over threads changes no result.
 */
import { parentPort } from 'node:worker_threads';
import { runSimulation } from './simulation.ts';
import { scenarioOf, type SoakOptions } from './soak.ts';

export interface SoakJob {
  readonly seeds: readonly number[];
  readonly scenario: Pick<SoakOptions, 'nodes' | 'mutations' | 'base'>;
}

parentPort?.once('message', async (job: SoakJob) => {
  for (const seed of job.seeds) parentPort!.postMessage(await runSimulation(scenarioOf(seed, job.scenario)));
  parentPort!.close();
});
