/**
 * Fault injection during the fault phase: at exponentially spaced virtual times, one fault of an
 * enabled type. Each fault that lasts (partition, uplink cut, latency spike, crash) schedules its
 * own end; at the end of the phase `healAll` ends every one of them. A rollback also schedules,
 * at a random earlier moment, the backup of its field device's disk that it later restores.
 */
import type { FaultType } from './config.ts';
import type { SimContext } from './context.ts';
import type { SimNetwork } from './network.ts';
import type { SimNode } from './node.ts';

export function scheduleFaults(sim: SimContext, nodes: readonly SimNode[], network: SimNetwork): void {
  const { faults, faultEveryMs, faultPhaseMs } = sim.config;
  if (faults.length === 0) return;
  let at = 0;
  while (true) {
    at += Math.max(1, Math.round(-Math.log(1 - sim.prng.next()) * faultEveryMs));
    if (at >= faultPhaseMs) return;
    const type = sim.prng.pick(faults);
    if (type === 'rollback') {
      scheduleRollback(sim, nodes, at);
      continue;
    }
    sim.scheduler.at(at, `fault ${type}`, () => {
      if (inject(sim, type, nodes, network)) sim.stats.faults[type]++;
    });
  }
}

/**
 * A field device restored from an old backup: its disk is copied at a random moment before `at`
 * (what is durable then), and at `at` the device dies, gets that copy back and restarts. It then
 * re-authors seqs it had already used (and maybe gossiped): a real fork of its log.
 */
function scheduleRollback(sim: SimContext, nodes: readonly SimNode[], at: number): void {
  const fieldDevices = nodes.filter((n) => n.member.role === 'field');
  if (fieldDevices.length === 0) return;
  const node = sim.prng.pick(fieldDevices);
  let backup: [Buffer, Buffer][] = [];
  sim.scheduler.at(sim.prng.int(0, at - 1), `back up ${node.name}'s disk`, () => {
    node.disk.backup().then((entries) => (backup = entries), sim.unexpected(`${node.name} backup`));
  });
  sim.scheduler.at(at, 'fault rollback', () => {
    if (node.rollBack(backup, sim.prng.int(100, 10_000))) sim.stats.faults.rollback++;
  });
}

/** Injects one fault; false when there was nothing to apply it to. */
function inject(sim: SimContext, type: FaultType, nodes: readonly SimNode[], network: SimNetwork): boolean {
  const prng = sim.prng;
  const lasting = (label: string, end: () => void) => sim.scheduler.after(prng.int(1000, 20_000), label, end);
  switch (type) {
    case 'reset': {
      const live = network.links.filter((l) => l.connection !== null && !l.connection.dead);
      if (live.length === 0) return false;
      network.reset(prng.pick(live));
      return true;
    }
    case 'delay': {
      const link = prng.pick(network.links);
      link.extraLatencyMs = prng.int(200, 5000);
      lasting('latency back to normal', () => (link.extraLatencyMs = 0));
      return true;
    }
    case 'partition': {
      const groups = prng.int(2, 3);
      for (const node of network.group.keys()) network.group.set(node, prng.int(0, groups - 1));
      network.topologyChanged();
      lasting('partition heals', () => {
        for (const node of network.group.keys()) network.group.set(node, 0);
        network.topologyChanged();
      });
      return true;
    }
    case 'uplink': {
      const up = [...network.uplinkUp];
      if (up.length === 0) return false;
      const node = prng.pick(up);
      network.uplinkUp.delete(node);
      network.topologyChanged();
      lasting(`uplink of ${node.name} restored`, () => {
        network.uplinkUp.add(node);
        network.topologyChanged();
      });
      return true;
    }
    case 'crash': {
      const up = nodes.filter((n) => n.state === 'up');
      if (up.length === 0) return false;
      const node = prng.pick(up);
      const crash = () => {
        node.crash();
        sim.scheduler.after(prng.int(100, 10_000), `restart ${node.name}`, () => node.start());
      };
      // Half the crashes are power losses in the middle of the node's next write.
      if (prng.chance(0.5)) node.powerLossOnNextWrite = crash;
      else crash();
      return true;
    }
    case 'clock': {
      const node = prng.pick(nodes);
      node.jumpClock(prng.int(-sim.config.clockJumpMaxMs, sim.config.clockJumpMaxMs));
      return true;
    }
    case 'rollback':
      return false; // scheduled apart (scheduleRollback)
    case 'duplicate': {
      const up = nodes.filter((n) => n.state === 'up');
      if (up.length < 2) return false;
      const [from, to] = prng.shuffle(up) as [SimNode, SimNode];
      carryBundle(sim, network, from, to);
      return true;
    }
  }
}

/**
 * Sneakernet: a bundle carried from one node to another (the same checks as importBundle:
 * certificates, fork proofs, then one all-or-nothing ingest). It overlaps what the receiver
 * holds, so ops arrive again by another path: duplicates the ingest must recognise.
 */
function carryBundle(sim: SimContext, network: SimNetwork, from: SimNode, to: SimNode): void {
  const [fromGen, toGen] = [from.generation, to.generation];
  const still = () => from.generation === fromGen && to.generation === toGen && from.state === 'up' && to.state === 'up';
  const theirs = to.versionVector();
  const store = from.store;
  const gather = async () => {
    const ops: Uint8Array[] = [];
    for (const [device, seq] of Object.entries(store.versionVector())) {
      const start = Math.max(1, (theirs[device] ?? 0) - 2);
      if (start <= seq) ops.push(...(await store.loadRange(device, start, seq, 4 * 1024 * 1024)));
    }
    return { ops, certs: [...store.certificates.values()], forks: await store.forkProofs() };
  };
  gather()
    .then(async (bundle) => {
      if (!still()) return;
      const fresh = await to.addCertificates(bundle.certs);
      // As FieldNode.importBundle: new certificates reach the live sessions before the ops do.
      if (fresh.length > 0 && still()) network.shareCertificates(to, fresh.map((d) => to.store.certificates.get(d)!));
      for (const proof of bundle.forks) if (still()) await to.addForkProof(proof);
      if (still() && bundle.ops.length > 0) await to.ingest(bundle.ops);
    })
    .catch((err: unknown) => {
      if (still()) sim.violate('bundles-accepted', `${to.name} refused an honest bundle from ${from.name}: ${(err as Error).message}`);
    });
}

/** End of the fault phase: every partition, cut and spike ends, and every node that is down restarts. */
export function healAll(nodes: readonly SimNode[], network: SimNetwork): void {
  for (const node of network.group.keys()) network.group.set(node, 0);
  for (const node of network.uplinkCapable) network.uplinkUp.add(node);
  for (const link of network.links) link.extraLatencyMs = 0;
  for (const node of nodes) {
    node.powerLossOnNextWrite = null;
    node.start();
  }
  network.topologyChanged();
}
