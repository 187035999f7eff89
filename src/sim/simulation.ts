/**
 * One simulated run: build the team and its network from the config, let the team work through
 * the fault phase, heal everything, run until no event is left (or the settle limit passes), then
 * check every invariant. A run is a function of its config: the same config replays the same
 * events and gives the same result.
 */
import { createHash } from 'node:crypto';
import { simConfig, type SimConfig } from './config.ts';
import { SimContext, type SimStats, type Violation } from './context.ts';
import { ArrivalOrderState } from './broken.ts';
import { checkSettled, storeStateHash, type HashOf } from './checkers.ts';
import { healAll, scheduleFaults } from './faults.ts';
import { SimNetwork } from './network.ts';
import { SimNode } from './node.ts';
import { HqReceipts } from './receipts.ts';
import { createTeam } from './team.ts';
import { scheduleMutations } from './workload.ts';

export interface SimResult {
  readonly config: SimConfig;
  readonly ok: boolean;
  /** Every violation found, the first one first (at most 20). */
  readonly violations: readonly Violation[];
  readonly stats: SimStats;
  readonly events: number;
  /** Virtual ms from healing to the last time any log grew. */
  readonly convergenceMs: number;
  /** Ops in every node's logs at the end (receipts included). */
  readonly ops: number;
  readonly links: number;
  readonly maxQueuedEvents: number;
  /** Hash of what the run produced (state hashes, events, bytes): equal for equal configs. */
  readonly fingerprint: string;
  readonly wallMs: number;
}

/** One HQ, about one gateway per five field devices (at least one), the rest field devices. */
export const gatewaysFor = (nodes: number): number => Math.max(1, Math.round((nodes - 1) / 6));

export async function runSimulation(options: Partial<SimConfig> = {}): Promise<SimResult> {
  const started = performance.now();
  const config = simConfig(options);
  const sim = new SimContext(config);
  const team = createTeam(config.seed, config.nodes, gatewaysFor(config.nodes));
  const network = new SimNetwork(sim);
  const nodes = team.members.map((member) => new SimNode(sim, team, member, network));
  network.build(nodes);
  const receipts = new HqReceipts(sim, nodes[0]!, team);
  network.onHqAdvanced = () => receipts.kick();
  const broken = config.variant === 'arrival-order-state' ? new Map(nodes.map((n) => [n, new ArrivalOrderState(n)])) : null;
  const hashOf: HashOf = (node, skip) => (broken === null ? storeStateHash(node.store, skip) : Promise.resolve(broken.get(node)!.hash()));

  sim.scheduler.at(0, 'start every node', () => {
    for (const node of nodes) node.start();
    if (config.blackout) network.isolateAll();
  });
  scheduleMutations(sim, nodes);
  scheduleFaults(sim, nodes, network);
  sim.scheduler.at(config.faultPhaseMs, 'heal everything', () => healAll(nodes, network));

  const stopped = await sim.scheduler.run({ untilMs: config.faultPhaseMs + config.settleLimitMs, maxEvents: config.maxEvents });
  if (stopped === 'until') sim.violate('convergence', `still busy ${config.settleLimitMs} virtual ms after healing (${sim.scheduler.queued} events queued)`);
  if (stopped === 'max-events') sim.violate('bounded-events', `more than ${config.maxEvents} events: runaway`);
  if (stopped === 'empty') await checkSettled(sim, nodes, hashOf);

  const up = nodes.filter((n) => n.state === 'up');
  const hashes = await Promise.all(up.map((node) => hashOf(node)));
  const ops = up.length === 0 ? 0 : Object.values(up[0]!.store.versionVector()).reduce((a, b) => a + b, 0);
  const fingerprint = createHash('sha256')
    .update(JSON.stringify([hashes, sim.scheduler.processed, sim.stats, sim.now, sim.violations.map((v) => [v.invariant, v.message, v.event])]))
    .digest('hex');
  return {
    config,
    ok: sim.violations.length === 0,
    violations: sim.violations,
    stats: sim.stats,
    events: sim.scheduler.processed,
    convergenceMs: Math.max(0, network.lastProgressMs - config.faultPhaseMs),
    ops,
    links: network.links.length,
    maxQueuedEvents: sim.scheduler.maxQueued,
    fingerprint,
    wallMs: performance.now() - started,
  };
}
