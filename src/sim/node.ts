/**
 * A simulated device: the real Store on a SimDisk, written to as FieldNode writes (authorOp inside
 * Store.write, ingest through store/ingest.ts), with a physical clock derived from virtual time
 * plus its own offset and drift. It crashes (the Store is dropped without close, unflushed batches
 * are lost) and restarts (Store.open on the same disk). FieldNode itself cannot run here: it opens
 * LevelDB in a data dir and has no database seam; this class mirrors the few methods sync needs.
 */
import { authorOp, type OpDraft } from '../core/author.ts';
import { admissionTimeMs, checkAdmission, decodeCertificate } from '../core/cert.ts';
import { EMPTY_TIP, verifyForkProof, type ForkProof, type LogTip } from '../core/chain.ts';
import { RuleViolationError } from '../core/errors.ts';
import { compareHlc, type Hlc } from '../core/hlc.ts';
import type { DeviceId } from '../core/keys.ts';
import { opIdOf, parseOp, type Op } from '../core/op.ts';
import type { TipId, Tips } from '../core/sync/frames.ts';
import type { VersionVector } from '../core/version-vector.ts';
import { viewOf, type EntityView } from '../core/view.ts';
import { ingest, ingestVoids, type IngestResult } from '../store/ingest.ts';
import { Store } from '../store/store.ts';
import { TABLES } from '../store/tables.ts';
import type { SimContext } from './context.ts';
import { SimDisk } from './disk.ts';
import { SIM_EPOCH_MS, SIM_TEAM, type Member, type Team } from './team.ts';

/** As FieldNode's default: a remote clock further ahead than this is flagged. */
export const SIM_MAX_DRIFT_MS = 300_000;

export type NodeState = 'down' | 'opening' | 'up';

/** What the network hears from a node. */
export interface NodeListener {
  up(node: SimNode): void;
  down(node: SimNode): void;
  advanced(node: SimNode, tips: Readonly<Record<DeviceId, number>>): void;
  fork(node: SimNode, proof: ForkProof): void;
  voids(node: SimNode, envelopes: readonly Uint8Array[]): void;
}

export class SimNode {
  readonly member: Member;
  readonly team: Team;
  readonly disk: SimDisk;
  private readonly sim: SimContext;
  private readonly listener: NodeListener;
  private storeRef: Store | null = null;
  state: NodeState = 'down';
  /** Bumped at every crash: continuations of work started before it are ignored. */
  generation = 0;
  /** Physical clock = epoch + virtual time × (1 + driftPpm / 1e6) + offsetMs. */
  offsetMs: number;
  readonly driftPpm: number;
  /** Own ops whose mutation resolved (durable), by seq: they must never be lost. */
  readonly resolved = new Map<number, string>();
  /** The node's HLC as of its last durable batch before a crash (it may never go backwards). */
  private clockAtCrash: Hlc | null = null;
  /** Armed by the crash fault: runs (a crash) as soon as the next batch is written, before it is durable. */
  powerLossOnNextWrite: (() => void) | null = null;
  /** Set by a rollback until the restored store opens (the clock and own log may go back then). */
  private restoredFromBackup = false;
  /** Rollbacks this device suffered (the checker expects forks only of such devices). */
  rollbacks = 0;
  /** Own ops resolved before a rollback that the backup did not hold: lost with it, by seq. */
  readonly lostInRollback = new Map<number, string>();
  /** Called with ops newly stored here, in arrival order (the broken variant listens). */
  onStored: ((ops: readonly Op[]) => void) | null = null;

  constructor(sim: SimContext, team: Team, member: Member, listener: NodeListener) {
    this.sim = sim;
    this.team = team;
    this.member = member;
    this.listener = listener;
    this.disk = new SimDisk({ ackBeforeFlush: sim.config.variant === 'ack-before-flush' });
    this.offsetMs = sim.prng.int(-sim.config.clockOffsetMaxMs, sim.config.clockOffsetMaxMs);
    this.driftPpm = sim.prng.int(-200, 200);
    let flushScheduled = false;
    this.disk.onUnflushed = () => {
      const powerLoss = this.powerLossOnNextWrite;
      if (powerLoss !== null) {
        // Before the fsync completes: the batch being written is lost.
        this.powerLossOnNextWrite = null;
        sim.scheduler.after(0, `${this.name} loses power mid-write`, powerLoss);
      }
      if (flushScheduled) return;
      flushScheduled = true;
      sim.scheduler.after(sim.prng.int(1, 4), `${this.name} fsync`, () => {
        flushScheduled = false;
        this.disk.flush().catch(sim.unexpected(`${this.name} flush`));
      });
    };
  }

  get name(): string {
    return this.member.name;
  }

  get device(): DeviceId {
    return this.member.signer.device;
  }

  get isHq(): boolean {
    return this.member.index === 0;
  }

  /** The open store; only while up. */
  get store(): Store {
    if (this.storeRef === null || this.state !== 'up') throw new Error(`${this.name} is ${this.state}`);
    return this.storeRef;
  }

  physicalNow(): number {
    return SIM_EPOCH_MS + Math.floor(this.sim.now * (1 + this.driftPpm / 1e6)) + this.offsetMs;
  }

  /** Runs `then` with the result of `work` unless the node crashed in between. */
  private guard<T>(work: Promise<T>, where: string, then: (value: T) => void): void {
    const generation = this.generation;
    work.then((value) => {
      if (this.generation === generation) then(value);
    }, (err: unknown) => {
      if (this.generation === generation) this.sim.unexpected(`${this.name} ${where}`)(err);
    });
  }

  /** Opens the store on the disk (first start or restart); the node is up once its certificates are durable. */
  start(): void {
    if (this.state !== 'down') return;
    this.state = 'opening';
    const certs = this.isHq ? this.team.members.map((m) => m.cert) : [this.member.cert];
    const opened = Store.open({
      dir: `sim:${this.name}`,
      identity: { team: SIM_TEAM, device: this.device, hqDevice: this.team.resolution.hqDevice },
      resolution: this.team.resolution,
      database: this.disk,
    }).then(async (store) => {
      await store.addCertificates(certs.map((bytes) => decodeCertificate(bytes)));
      // Restored from a backup: which of its own ops the backup holds (by seq).
      const own = new Map<number, string>();
      if (this.restoredFromBackup) {
        const tip = store.tipOf(this.device).seq;
        if (tip > 0) for (const bytes of await store.loadRange(this.device, 1, tip, Number.MAX_SAFE_INTEGER)) {
          const op = parseOp(bytes).op;
          own.set(op.seq, op.id);
        }
      }
      return { store, own };
    });
    this.guard(opened, 'open', ({ store, own }) => {
      this.storeRef = store;
      this.state = 'up';
      this.checkRecovered(store, own);
      store.events.on('tips', (tips: Record<DeviceId, number>) => this.listener.advanced(this, tips));
      store.events.on('fork', (proof: ForkProof) => this.listener.fork(this, proof));
      store.events.on('voids', (envelopes: readonly Uint8Array[]) => this.listener.voids(this, envelopes));
      this.listener.up(this);
    });
  }

  /** Durability after a restart: every resolved mutation is still here, and the clock did not go back. */
  private checkRecovered(store: Store, own: ReadonlyMap<number, string>): void {
    const tip = store.tipOf(this.device).seq;
    if (this.restoredFromBackup) {
      // Restored from an old backup: own ops it did not hold are gone, and the HLC is the backup's.
      this.restoredFromBackup = false;
      this.clockAtCrash = null;
      for (const [seq, id] of this.resolved) {
        if (own.get(seq) !== id) {
          this.lostInRollback.set(seq, id);
          this.resolved.delete(seq);
        }
      }
      return;
    }
    for (const seq of this.resolved.keys()) {
      if (seq > tip) {
        this.sim.violate('durable-mutations', `${this.name} lost its own op #${seq} (resolved before the crash) in a crash: its log now ends at #${tip}`);
        break;
      }
    }
    if (this.clockAtCrash !== null && compareHlc(store.clock, this.clockAtCrash) < 0) {
      this.sim.violate('clock-monotonic', `${this.name}'s HLC went back across a restart: ${JSON.stringify(this.clockAtCrash)} -> ${JSON.stringify(store.clock)}`);
    }
  }

  /** Power loss: the store is dropped without close, unflushed batches are lost. */
  crash(): void {
    if (this.state === 'down') return;
    if (this.state === 'up') this.clockAtCrash = this.storeRef!.clock;
    this.generation++;
    this.state = 'down';
    this.powerLossOnNextWrite = null;
    this.storeRef = null;
    this.disk.crash().catch(this.sim.unexpected(`${this.name} crash`));
    this.listener.down(this);
  }

  /**
   * Restored from an old backup: the process dies, its disk is replaced by the backup's contents,
   * and it restarts after `restartAfterMs`. It then re-authors seqs it had already used.
   */
  rollBack(backup: readonly (readonly [Buffer, Buffer])[], restartAfterMs: number): boolean {
    if (backup.length === 0 || this.isHq || this.member.role !== 'field') return false;
    this.crash();
    this.rollbacks++;
    this.restoredFromBackup = true;
    const generation = this.generation;
    this.disk
      .restore(backup)
      .then(() => {
        if (this.generation === generation) this.sim.scheduler.after(restartAfterMs, `restart ${this.name} from its backup`, () => this.start());
      })
      .catch(this.sim.unexpected(`${this.name} restore`));
    return true;
  }

  jumpClock(toOffsetMs: number): void {
    this.offsetMs = toOffsetMs;
  }

  versionVector(): VersionVector {
    return this.store.versionVector();
  }

  /** As FieldNode.syncTips: tips as a session offers them, below every proven fork point. */
  async syncTips(): Promise<Tips> {
    const store = this.store;
    const out: Record<DeviceId, TipId> = {};
    for (const device of Object.keys(store.versionVector())) {
      const tip = store.tipOf(device);
      const forkedAt = store.forks.get(device) ?? Number.POSITIVE_INFINITY;
      if (tip.seq < forkedAt) out[device] = { seq: tip.seq, id: tip.id! };
      else if (forkedAt > 1) {
        const [below] = await store.loadRange(device, forkedAt - 1, forkedAt - 1, Number.MAX_SAFE_INTEGER);
        if (below !== undefined) out[device] = { seq: forkedAt - 1, id: opIdOf(below) };
      }
    }
    return out;
  }

  isEnrolled(device: DeviceId): boolean {
    return device === this.team.resolution.hqDevice || this.store.certificates.has(device);
  }

  /** The admission check a session applies to the peer's certificate (as the mesh does). */
  admit(bytes: Uint8Array): DeviceId {
    const cert = decodeCertificate(bytes);
    checkAdmission(cert, { team: SIM_TEAM, hqDevice: this.team.resolution.hqDevice }, admissionTimeMs(this.physicalNow(), this.store.hqWallMs, decodeCertificate(this.member.cert).issuedMs), (d) => this.store.revocations.has(d));
    return cert.device;
  }

  /** As FieldNode.addCertificates: HQ-signed certificates of this team; returns the new devices. */
  addCertificates(encoded: readonly Uint8Array[]): Promise<DeviceId[]> {
    const certs = encoded.map((bytes) => {
      const cert = decodeCertificate(bytes);
      checkAdmission(cert, { team: SIM_TEAM, hqDevice: this.team.resolution.hqDevice }, cert.issuedMs, () => false);
      return cert;
    });
    return this.store.addCertificates(certs);
  }

  /** As FieldNode.addForkProof. */
  async addForkProof(proof: ForkProof): Promise<boolean> {
    verifyForkProof(proof);
    if (!this.isEnrolled(proof.device)) throw new RuleViolationError('UNENROLLED', `fork proof of a device not enrolled: ${proof.device}`);
    const store = this.store;
    if ((store.forks.get(proof.device) ?? Number.POSITIVE_INFINITY) <= proof.seq) return false;
    return store.write((ctx) => ctx.recordFork(proof.device, proof.seq, { device: proof.device, seq: proof.seq, ops: proof.ops }));
  }

  /** As FieldNode.addVoidOps. */
  addVoidOps(encoded: readonly Uint8Array[]): Promise<Op[]> {
    return this.store.write((ctx) => ingestVoids(ctx, encoded, { team: SIM_TEAM, isEnrolled: (d) => this.isEnrolled(d) }));
  }

  /** As FieldNode.ingest: all or nothing. Resolves once durable. */
  ingest(encoded: readonly Uint8Array[], device?: DeviceId): Promise<IngestResult> {
    const store = this.store;
    const tracking = this.onStored !== null;
    return store
      .write(async (ctx) => {
        const ops = tracking ? encoded.map((b) => parseOp(b).op) : [];
        const before = new Map<DeviceId, number>();
        for (const op of ops) if (!before.has(op.device)) before.set(op.device, (await ctx.txn.get<LogTip>(TABLES.tip, op.device))?.seq ?? 0);
        // Devices proven forked before this batch: none of their ops at or past the fork point may be stored.
        const forkedBefore = [...ctx.forkedAt];
        const result = await ingest(ctx, encoded, { team: SIM_TEAM, nowMs: this.physicalNow(), maxDriftMs: SIM_MAX_DRIFT_MS, isEnrolled: (d) => this.isEnrolled(d), ...(device !== undefined ? { device } : {}) });
        for (const [forked, seq] of forkedBefore) {
          const moved = ctx.tips.get(forked);
          if (moved !== undefined && moved.seq >= seq) this.sim.violate('fork-point', `${this.name} stored op #${moved.seq} of ${forked.slice(-6)} after holding a proof that it forked at #${seq}`);
        }
        const fresh = ops.filter((op) => op.seq > before.get(op.device)! && (ctx.tips.get(op.device)?.seq ?? 0) >= op.seq);
        return { result, fresh };
      })
      .then(({ result, fresh }) => {
        if (fresh.length > 0) this.onStored?.(fresh);
        return result;
      });
  }

  /**
   * Writes one op to the node's own log, as FieldNode.author does: for an entity op the draft is
   * made from the entity's view inside the batch, so it sees every op stored before it; returning
   * null writes nothing. `onDurable` runs once the op is durable (never, if the node crashes first).
   * Unlike FieldNode, it keeps writing after its own fork or revocation is known: every other node
   * must refuse those ops, as it would from a device not running fieldmesh's own write path.
   */
  author(target: { readonly domain: string; readonly entity: string } | null, draftFor: (view: EntityView | null) => OpDraft | null, onDurable: (op: Op) => void): void {
    const store = this.store;
    const written = store.write(async (ctx) => {
      const view = target === null ? null : viewOf(await ctx.entityState(target.domain, target.entity), this.team.resolution);
      const draft = draftFor(view);
      if (draft === null) return null;
      const tip = (await ctx.txn.get<LogTip>(TABLES.tip, this.device)) ?? EMPTY_TIP;
      const { op, state } = authorOp({ signer: this.member.signer, team: SIM_TEAM, user: `user-${this.name}` }, { tip, clock: ctx.clock }, this.physicalNow(), draft);
      ctx.clock = state.clock;
      await ctx.addOp(op);
      return op;
    });
    this.guard(written, 'author', (op) => {
      if (op === null) return;
      this.resolved.set(op.seq, op.id);
      this.onStored?.([op]);
      onDurable(op);
    });
  }
}
