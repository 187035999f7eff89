/**
 * The simulated network: which nodes can reach which (a local mesh among field devices and
 * gateways, partitioned into groups and healed; uplinks from gateways, and some field devices
 * with a cellular modem, to HQ, cut and restored), one connection per pair at most, redialled
 * with capped, jittered exponential back-off as the mesh redials, and the routing of every node
 * event (new ops, fork proofs, certificates) to that node's live sessions.
 */
import type { ForkProof } from '../core/chain.ts';
import type { DeviceId } from '../core/keys.ts';
import { Connection, type SessionEnd } from './connection.ts';
import type { SimContext } from './context.ts';
import type { NodeListener, SimNode } from './node.ts';

export interface Link {
  readonly a: SimNode;
  readonly b: SimNode;
  /** A link to HQ: up only while the other end's uplink is. */
  readonly uplink: boolean;
  connection: Connection | null;
  /** Between reading fork proofs and starting the session. */
  connecting: boolean;
  /** Failed dials in a row (the back-off exponent). */
  attempt: number;
  /** When the next dial is due (Infinity: none scheduled), and the token of that dial event. */
  dialAtMs: number;
  dialToken: number;
  /** A latency spike (the `delay` fault), added to every frame. */
  extraLatencyMs: number;
}

/** Added to every frame over an uplink (satellite or cellular round trip). */
const UPLINK_LATENCY_MS = 150;
const REDIAL_MIN_MS = 500;
const REDIAL_MAX_MS = 30_000;
/** How long a dead connection may go unnoticed (keep-alive / write timeout). */
const DETECT_MAX_MS = 5000;

export class SimNetwork implements NodeListener {
  readonly links: Link[] = [];
  private readonly linksOf = new Map<SimNode, Link[]>();
  /** Partition group of every non-HQ node; one group when healed. */
  readonly group = new Map<SimNode, number>();
  /** Nodes with an uplink radio, and those whose uplink is up now. */
  readonly uplinkCapable = new Set<SimNode>();
  readonly uplinkUp = new Set<SimNode>();
  /** Virtual time of the last time any node's logs grew. */
  lastProgressMs = 0;
  /** HQ's receipt issuer listens for new ops here. */
  onHqAdvanced: (tips: Readonly<Record<DeviceId, number>>) => void = () => undefined;
  private readonly sim: SimContext;

  constructor(sim: SimContext) {
    this.sim = sim;
  }

  /** A local ring through the shuffled non-HQ nodes plus one chord each, and uplinks to HQ. */
  build(nodes: readonly SimNode[]): void {
    const prng = this.sim.prng;
    const [hq, ...others] = nodes;
    const ring = prng.shuffle(others);
    const seen = new Set<string>();
    const add = (a: SimNode, b: SimNode, uplink: boolean) => {
      const key = a.device < b.device ? `${a.device}|${b.device}` : `${b.device}|${a.device}`;
      if (a === b || seen.has(key)) return;
      seen.add(key);
      const link: Link = { a, b, uplink, connection: null, connecting: false, attempt: 0, dialAtMs: Number.POSITIVE_INFINITY, dialToken: 0, extraLatencyMs: 0 };
      this.links.push(link);
      for (const n of [a, b]) this.linksOf.set(n, [...(this.linksOf.get(n) ?? []), link]);
    };
    for (let i = 0; i < ring.length; i++) add(ring[i]!, ring[(i + 1) % ring.length]!, false);
    for (const node of ring) add(node, prng.pick(ring), false);
    for (const node of others) {
      this.group.set(node, 0);
      if (node.member.role === 'gateway' || prng.chance(0.2)) {
        this.uplinkCapable.add(node);
        this.uplinkUp.add(node);
        add(hq!, node, true);
      }
    }
  }

  /** Every node in a group of its own and every uplink down (until healed). */
  isolateAll(): void {
    let group = 0;
    for (const node of this.group.keys()) this.group.set(node, group++);
    this.uplinkUp.clear();
    this.topologyChanged();
  }

  linksOfNode(node: SimNode): readonly Link[] {
    return this.linksOf.get(node) ?? [];
  }

  reachable(link: Link): boolean {
    if (link.a.state !== 'up' || link.b.state !== 'up') return false;
    if (link.uplink) return this.uplinkUp.has(link.a.isHq ? link.b : link.a);
    return this.group.get(link.a) === this.group.get(link.b);
  }

  latencyMs(link: Link): number {
    const { latencyMinMs, latencyMaxMs } = this.sim.config;
    return this.sim.prng.int(latencyMinMs, latencyMaxMs) + link.extraLatencyMs + (link.uplink ? UPLINK_LATENCY_MS : 0);
  }

  /** Kills the link's connection; each live end notices within DETECT_MAX_MS. */
  reset(link: Link): void {
    link.connection?.reset(() => this.sim.prng.int(this.sim.config.latencyMaxMs, DETECT_MAX_MS));
  }

  /** Resets every connection that is no longer reachable, and dials the links that became reachable. */
  topologyChanged(): void {
    for (const link of this.links) {
      if (link.connection !== null && !link.connection.dead && !this.reachable(link)) this.reset(link);
      // mDNS answers (local) or the redial timer (uplink) find the peer again soon.
      if (link.connection === null && this.reachable(link)) this.kick(link, this.sim.prng.int(100, 2000));
    }
  }

  /** Schedules a dial of `link` in `delayMs` unless one is due sooner or a session runs. */
  kick(link: Link, delayMs: number): void {
    if (link.connection !== null || link.connecting) return;
    const at = this.sim.now + delayMs;
    if (link.dialAtMs <= at) return;
    link.dialAtMs = at;
    const token = ++link.dialToken;
    this.sim.scheduler.at(at, `dial ${link.a.name}-${link.b.name}`, () => {
      if (token !== link.dialToken) return;
      link.dialAtMs = Number.POSITIVE_INFINITY;
      this.dial(link);
    });
  }

  private dial(link: Link): void {
    if (link.connection !== null || link.connecting) return;
    if (!this.reachable(link)) {
      // Nobody answers: back off, unless one end is down (its restart dials again).
      if (link.a.state !== 'up' || link.b.state !== 'up') return;
      link.attempt = Math.min(link.attempt + 1, 30);
      const backoff = Math.min(REDIAL_MAX_MS, REDIAL_MIN_MS * 2 ** link.attempt);
      this.kick(link, Math.round(backoff / 2 + this.sim.prng.next() * (backoff / 2)));
      return;
    }
    link.connecting = true;
    const { a, b } = link;
    const generations = [a.generation, b.generation];
    // As the mesh: each side reads its tips, then its fork proofs, before its session starts.
    const local = async (node: SimNode) => {
      const tips = await node.syncTips();
      return { tips, forks: await node.store.forkProofs() };
    };
    const both = Promise.all([local(a), local(b)]);
    both.then(([la, lb]) => {
      link.connecting = false;
      if (a.generation !== generations[0] || b.generation !== generations[1] || !this.reachable(link)) {
        this.kick(link, REDIAL_MIN_MS);
        return;
      }
      link.attempt = 0;
      const connection = new Connection(this.sim, a, b, new Map([[a, la], [b, lb]]), () => this.latencyMs(link), this.hooks);
      link.connection = connection;
      this.sim.stats.sessionsOpened++;
      connection.start();
    }, this.sim.unexpected(`dial ${a.name}-${b.name}`));
  }

  private liveEnds(node: SimNode): SessionEnd[] {
    const out: SessionEnd[] = [];
    for (const link of this.linksOfNode(node)) {
      const c = link.connection;
      if (c === null) continue;
      const end = c.a.node === node ? c.a : c.b;
      if (end.alive) out.push(end);
    }
    return out;
  }

  private readonly hooks = {
    ended: (end: SessionEnd): void => {
      const connection = end.connection;
      if (!connection.a.done || !connection.b.done) return;
      const link = this.linksOfNode(end.node).find((l) => l.connection === connection);
      if (link === undefined) return;
      link.connection = null;
      this.kick(link, REDIAL_MIN_MS);
    },
    learnedCerts: (from: SessionEnd, certs: readonly Uint8Array[]): void => this.shareCertificates(from.node, certs, from),
  };

  /** As Mesh.shareCertificates: certificates a node learned go to all its live sessions but their origin. */
  shareCertificates(node: SimNode, certs: readonly Uint8Array[], from?: SessionEnd): void {
    for (const end of this.liveEnds(node)) if (end !== from) end.dispatch(end.session.sendCerts(certs));
  }

  up(node: SimNode): void {
    for (const link of this.linksOfNode(node)) if (this.reachable(link)) this.kick(link, this.sim.prng.int(100, 2000));
    // As hq/receipts.ts at start: HQ judges what it already holds (a crash may have cut a pass short).
    if (node.isHq) this.onHqAdvanced({});
  }

  down(node: SimNode): void {
    for (const link of this.linksOfNode(node)) this.reset(link);
  }

  advanced(node: SimNode, tips: Readonly<Record<DeviceId, number>>): void {
    this.lastProgressMs = this.sim.now;
    for (const end of this.liveEnds(node)) end.dispatch(end.session.localAdvanced(tips));
    if (node.isHq) this.onHqAdvanced(tips);
  }

  fork(node: SimNode, proof: ForkProof): void {
    for (const end of this.liveEnds(node)) end.dispatch(end.session.sendForks([proof]));
  }

  voids(node: SimNode, envelopes: readonly Uint8Array[]): void {
    for (const end of this.liveEnds(node)) end.dispatch(end.session.voidsLearned(envelopes));
  }
}
