/**
 * One simulated libp2p connection carrying one sync session, and the driver of each end. It is
 * net/session-driver.ts without sockets: the same SyncSession, the same commands carried out the
 * same way against the node (loads and reads, ingests in arrival order behind certificates,
 * certificates and fork proofs that blame the peer when refused, proofs the session built), with
 * frames delivered in order per direction after a latency, as a reliable stream delivers them. A connection is never lossy frame by
 * frame: it either delivers everything in order or dies (a reset), and both ends then see it end.
 */
import type { ForkProof } from '../core/chain.ts';
import { FieldmeshError } from '../core/errors.ts';
import { encodingLength } from 'uint8-varint';
import type { Tips } from '../core/sync/frames.ts';
import { DEFAULT_SYNC_LIMITS, SyncSession, type Command } from '../core/sync/session.ts';
import type { SimContext } from './context.ts';
import type { SimNode } from './node.ts';

/** What the network needs to hear from a connection. */
export interface ConnectionHooks {
  /** The connection is over for this end (the other end may learn it later). */
  ended(end: SessionEnd, code: string): void;
  /** `end`'s node learned certificates through it: pass them on to its other sessions. */
  learnedCerts(end: SessionEnd, certs: readonly Uint8Array[]): void;
}

/** The limits every simulated session uses: the defaults a real node uses. */
const SIM_SYNC_LIMITS = DEFAULT_SYNC_LIMITS;

export class SessionEnd {
  readonly node: SimNode;
  readonly session: SyncSession;
  peer!: SessionEnd;
  readonly connection: Connection;
  /** Arrival time of the last frame sent this way (a stream delivers in order). */
  private lastArrivalMs = 0;
  /** Bytes sent by this end not yet delivered. */
  inFlightBytes = 0;
  private storeQueue: Promise<void> = Promise.resolve();
  /** Outcomes of ingests in flight, reported to the session in the order they were queued. */
  private ingestReplies: Promise<void> = Promise.resolve();
  done = false;
  private readonly generation: number;

  constructor(node: SimNode, connection: Connection) {
    this.node = node;
    this.connection = connection;
    this.generation = node.generation;
    const store = node.store;
    const snapshot = connection.local.get(node)!;
    const local = {
      team: store.identity.team,
      hq: node.team.resolution.hqDevice,
      cert: node.member.cert,
      tips: snapshot.tips,
      certs: () => [...store.certificates.values()],
      forks: () => snapshot.forks,
    };
    this.session = new SyncSession(local, (bytes) => node.admit(bytes), SIM_SYNC_LIMITS);
  }

  private get sim(): SimContext {
    return this.connection.sim;
  }

  /** Whether this end's process still runs the session (its node did not crash meanwhile). */
  get alive(): boolean {
    return !this.done && this.node.generation === this.generation && this.node.state === 'up';
  }

  dispatch(commands: readonly Command[]): void {
    for (const cmd of commands) {
      if (!this.alive) return;
      switch (cmd.kind) {
        case 'send':
          this.send(cmd.bytes);
          break;
        case 'admitted':
          if (cmd.device !== this.peer.node.device) {
            this.sim.violate('honest-peers', `${this.node.name} admitted ${cmd.device} on the connection to ${this.peer.node.name}`);
            this.dispatch(this.session.close('WRONG_PEER', 'certificate does not match the connection'));
            return;
          }
          // Its certificate was checked: keep it, before any of its ops need it.
          this.stored(async () => {
            if ((await this.node.addCertificates([cmd.cert])).length > 0) this.connection.hooks.learnedCerts(this, [cmd.cert]);
          });
          // Our store may have grown between hello and admission, and proofs recorded since the
          // session read them reached no session yet (as the mesh does).
          this.dispatch(this.session.localAdvanced(this.node.versionVector()));
          this.task(this.node.store.forkProofs(), (proofs) => this.dispatch(this.session.sendForks(proofs)));
          break;
        case 'load': {
          const loaded = this.node.store.loadRange(cmd.device, cmd.fromSeq, cmd.toSeq, cmd.maxBytes);
          this.task(loaded, (ops) => this.dispatch(this.session.loaded(cmd.device, cmd.fromSeq, ops)));
          break;
        }
        case 'read': {
          const read = this.node.store.loadRange(cmd.device, cmd.seq, cmd.seq, Number.MAX_SAFE_INTEGER);
          this.task(read, ([bytes]) => this.dispatch(this.session.opRead(cmd.purpose, bytes ?? null)));
          break;
        }
        case 'proof':
          this.stored(async () => {
            await this.node.addForkProof(cmd.proof);
          });
          break;
        case 'ingest':
          // As the net driver: queued in frame order at once, outcomes reported in that order.
          this.stored(async () => {
            const outcome = this.node.ingest(cmd.ops, cmd.device).then(
              () => null,
              (err: unknown) => err,
            );
            this.ingestReplies = this.ingestReplies.then(async () => {
              const err = await outcome;
              if (!this.alive) return;
              if (err === null) this.dispatch(this.session.ingested(null));
              else if (err instanceof FieldmeshError) this.dispatch(this.session.ingested(err));
              else this.sim.unexpected(`${this.node.name} ingest for ${this.peer.node.name}`)(err);
            });
          });
          break;
        case 'certs':
          this.storedOrBlame(async () => {
            if ((await this.node.addCertificates(cmd.certs)).length > 0) this.connection.hooks.learnedCerts(this, cmd.certs);
            if (this.alive) this.dispatch(this.session.settled(cmd.frameBytes));
          });
          break;
        case 'fork':
          this.storedOrBlame(async () => {
            await this.node.addForkProof({ device: cmd.device, seq: cmd.seq, ops: cmd.ops });
            if (this.alive) this.dispatch(this.session.settled(cmd.frameBytes));
          });
          break;
        case 'missing':
          // Behind the store work queued before it, as the net driver.
          this.stored(async () => {
            const ids = await this.node.store.missingBases(cmd.limit, cmd.exclude);
            if (this.alive) this.dispatch(this.session.missing(ids));
          });
          break;
        case 'lookup':
          this.stored(async () => {
            const ops = await this.node.store.voidOps(cmd.ids);
            if (this.alive) this.dispatch(this.session.voidsRead(ops, cmd.frameBytes));
          });
          break;
        case 'voids':
          this.storedOrBlame(async () => {
            await this.node.addVoidOps(cmd.ops);
            if (this.alive) this.dispatch(this.session.settled(cmd.frameBytes));
          });
          break;
        case 'caughtUp':
          break;
        case 'close':
          // The goodbye (queued before this) goes out first; then the stream ends.
          this.finish(cmd.code, cmd.blame, cmd.message);
          this.connection.endStream(this);
          return;
      }
    }
  }

  private send(bytes: Uint8Array): void {
    const wire = bytes.length + encodingLength(bytes.length);
    const stats = this.sim.stats;
    stats.framesSent++;
    stats.wireBytes += wire;
    this.inFlightBytes += wire;
    if (this.inFlightBytes > stats.maxInFlightBytes) stats.maxInFlightBytes = this.inFlightBytes;
    const bound = SIM_SYNC_LIMITS.windowBytes + SIM_SYNC_LIMITS.maxFrameBytes;
    if (this.inFlightBytes > bound) this.sim.violate('bounded-queues', `${this.node.name} -> ${this.peer.node.name}: ${this.inFlightBytes} bytes in flight, more than window + one frame (${bound})`);
    const arrival = Math.max(this.sim.now + this.connection.latencyMs(), this.lastArrivalMs);
    this.lastArrivalMs = arrival;
    const to = this.peer;
    this.sim.scheduler.at(arrival, `frame ${this.node.name}->${to.node.name} ${bytes.length}B`, () => {
      this.inFlightBytes -= wire;
      if (this.connection.dead || !to.alive) return;
      to.dispatch(to.session.receive(bytes));
    });
  }

  /** The arrival time after every frame sent so far this way. */
  get drainedAtMs(): number {
    return Math.max(this.sim.now, this.lastArrivalMs);
  }

  /** Store work runs in arrival order: certificates before the ops that need them. */
  private stored(work: () => Promise<void>): void {
    this.storeQueue = this.storeQueue.then(async () => {
      if (!this.alive) return;
      try {
        await work();
      } catch (err) {
        if (this.alive) this.sim.unexpected(`${this.node.name} store work for ${this.peer.node.name}`)(err);
      }
    });
  }

  /** Store work whose typed failure is the peer's fault: close, blaming it. */
  private storedOrBlame(work: () => Promise<void>): void {
    this.stored(async () => {
      try {
        await work();
      } catch (err) {
        if (!(err instanceof FieldmeshError)) throw err;
        this.dispatch(this.session.close(err.code, err.message));
        this.finish(err.code ?? 'ERROR', true, err.message);
      }
    });
  }

  private task<T>(work: Promise<T>, then: (value: T) => void): void {
    work.then((value) => {
      if (this.alive) then(value);
    }, (err: unknown) => {
      if (this.alive) this.sim.unexpected(`${this.node.name} load`)(err);
    });
  }

  /** This end is over. Honest peers never blame each other: a blame is a violation. */
  finish(code: string, blame: boolean, message = ''): void {
    if (this.done) return;
    this.done = true;
    if (blame) this.sim.violate('honest-peers', `${this.node.name} blamed ${this.peer.node.name}: ${code} ${message}`.trimEnd());
    this.connection.hooks.ended(this, code);
  }
}

export class Connection {
  readonly sim: SimContext;
  readonly hooks: ConnectionHooks;
  readonly a: SessionEnd;
  readonly b: SessionEnd;
  /** Reset: nothing more is delivered either way. */
  dead = false;
  /** Each side's tips and fork proofs when the session started (read before it, as the mesh does). */
  readonly local: Map<SimNode, { readonly tips: Tips; readonly forks: readonly ForkProof[] }>;
  readonly latencyMs: () => number;

  constructor(sim: SimContext, a: SimNode, b: SimNode, local: Map<SimNode, { readonly tips: Tips; readonly forks: readonly ForkProof[] }>, latencyMs: () => number, hooks: ConnectionHooks) {
    this.sim = sim;
    this.hooks = hooks;
    this.local = local;
    this.latencyMs = latencyMs;
    this.a = new SessionEnd(a, this);
    this.b = new SessionEnd(b, this);
    this.a.peer = this.b;
    this.b.peer = this.a;
  }

  start(): void {
    this.a.dispatch(this.a.session.start());
    this.b.dispatch(this.b.session.start());
  }

  /** `from` closed its stream: the other end reads to the end, then sees it closed. */
  endStream(from: SessionEnd): void {
    const to = from.peer;
    this.sim.scheduler.at(from.drainedAtMs + 1, `stream end ${from.node.name}->${to.node.name}`, () => {
      if (to.alive) to.finish('STREAM_ENDED', false);
    });
  }

  /**
   * The connection dies (loss beyond repair, a partition, a crash): each live end notices after
   * `detectMs`; an end whose process is gone is over at once. Called again (e.g. when a node
   * crashes before it noticed), it settles the ends still open.
   */
  reset(detectMs: (end: SessionEnd) => number): void {
    this.dead = true;
    for (const end of [this.a, this.b]) {
      if (end.done) continue;
      if (!end.alive) {
        end.done = true;
        this.hooks.ended(end, 'PROCESS_GONE');
      } else if (!this.detecting.has(end)) {
        this.detecting.add(end);
        this.sim.scheduler.after(detectMs(end), `reset seen by ${end.node.name}`, () => {
          if (end.alive) end.finish('STREAM_RESET', false);
          else this.reset(() => 0);
        });
      }
    }
  }

  private readonly detecting = new Set<SessionEnd>();

}
