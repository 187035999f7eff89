/**
 * One sync session with one peer, as a sans-I/O state machine: frames and completions in,
 * commands out. It never touches a socket, a disk or a clock; the driver (src/net) executes
 * its commands and reports back.
 *
 * Flow: both sides send hello (certificate, log tips with their op ids, limits) and then their
 * certificates and fork proofs. Each side then sends the other the missing suffix of every log,
 * oldest first, one chained run per frame, while it has credit: the receiver grants credit for
 * every frame it has durably ingested, so a slow peer never makes the sender buffer without
 * bound. After the initial suffixes a side sends caughtUp; from then on new ops are pushed as
 * they arrive.
 *
 * Forks: where the peer's log of a device and ours hold different ops at one seq (its tip id
 * differs from our op there, or an op it sends does not chain to ours), the session asks the
 * peer for its ops (query/answer) to find the first seq where the branches part, and stores the
 * proof instead of blaming the peer (fork-search.ts). Nothing at or past a device's fork point
 * is offered, and ingest waits while a search runs.
 */
import type { ForkProof } from '../chain.ts';
import { FieldmeshError, InvalidInputError, RuleViolationError } from '../errors.ts';
import type { DeviceId } from '../keys.ts';
import { LIMITS } from '../limits.ts';
import { opIdOf, parseOp, type OpId } from '../op.ts';
import { seqOf, type VersionVector } from '../version-vector.ts';
import { ForkSearch, type SearchStart } from './fork-search.ts';
import { decodeFrame, encodeFrame, MAX_WANT_IDS, SYNC_VERSION, type Frame, type TipId, type Tips } from './frames.ts';

export interface SyncLimits {
  /** Largest frame we accept (and the most we ever send the peer its own limit permitting). @default 1 MiB */
  readonly maxFrameBytes: number;
  /** Op-frame bytes we accept before granting more credit: our inbound buffer bound. @default 4 MiB */
  readonly windowBytes: number;
  /** Most certificates in one certs frame. @default 1024 */
  readonly maxCertsPerFrame: number;
}

export const DEFAULT_SYNC_LIMITS: SyncLimits = { maxFrameBytes: 1024 * 1024, windowBytes: 4 * 1024 * 1024, maxCertsPerFrame: 1024 };
/** The smallest frame limit a peer may declare: a fork proof of two ops of the largest size, plus framing. */
export const MIN_FRAME_BYTES = 2 * LIMITS.maxOpBytes + 1024;
/** Bytes of an ops frame besides the ops themselves (type, device id, array heads), bounded. */
export const OPS_FRAME_OVERHEAD = 128;
/**
 * Largest run of one device's log in a frame while other devices' logs wait too. Catching up
 * log after log, whole, would deliver each device's ops long before the other devices' ops
 * they build on (which the receiver must park until those arrive); runs this size, taken from
 * the log that is least far along, deliver the logs side by side, about as they were written.
 */
export const INTERLEAVED_RUN_BYTES = 64 * 1024;
/** Ingests handed to the driver at once (each one frame; the store commits them together). */
export const MAX_INGESTS_IN_FLIGHT = 64;
/**
 * Op ids a session remembers asking its peer for by id, and ids the peer asked for that we could
 * not send yet (sent if we come to hold them). Beyond it the oldest are forgotten: memory stays
 * bounded, and an id forgotten on our side is asked again if still missing.
 */
export const MAX_WANTED_IDS = 4096;

export interface LocalState {
  readonly team: string;
  readonly hq: DeviceId;
  readonly cert: Uint8Array;
  /** Our tips as offered: below the fork point of every device we hold a proof against. */
  readonly tips: Tips;
  /** Certificates we hold, read when the peer is admitted (they may grow meanwhile). */
  readonly certs: () => readonly Uint8Array[];
  /** Fork proofs we hold (read at the start and at admission; the driver passes later ones to sendForks). */
  readonly forks: () => readonly ForkProof[];
}

export type Command =
  | { readonly kind: 'send'; readonly bytes: Uint8Array; readonly frame: Frame }
  /** Read up to maxBytes of `device`'s log from fromSeq (at most to toSeq) and call `loaded`. */
  | { readonly kind: 'load'; readonly device: DeviceId; readonly fromSeq: number; readonly toSeq: number; readonly maxBytes: number }
  /** Ingest these ops (validated all-or-nothing) and call `ingested`. */
  | { readonly kind: 'ingest'; readonly device: DeviceId; readonly ops: readonly Uint8Array[] }
  /** Store these certificates, then call `settled(frameBytes)`. */
  | { readonly kind: 'certs'; readonly certs: readonly Uint8Array[]; readonly frameBytes: number }
  /** Check and store this fork proof, then call `settled(frameBytes)`. */
  | { readonly kind: 'fork'; readonly device: DeviceId; readonly seq: number; readonly ops: readonly [Uint8Array, Uint8Array]; readonly frameBytes: number }
  /** Read our op of `device` at `seq` (null if not held) and call `opRead(purpose, bytes)`. */
  | { readonly kind: 'read'; readonly device: DeviceId; readonly seq: number; readonly purpose: ReadPurpose }
  /** Find ids of ops we do not hold that parked ops wait for (not in `exclude`), and call `missing(ids)`. */
  | { readonly kind: 'missing'; readonly limit: number; readonly exclude: ReadonlySet<OpId> }
  /**
   * After the store work queued before it (a fork proof may make ops void), read the void ops
   * among `ids` that we hold, and call `voidsRead(ops, frameBytes)`.
   */
  | { readonly kind: 'lookup'; readonly ids: readonly OpId[]; readonly frameBytes: number }
  /** Check and keep these void ops, then call `settled(frameBytes)` (a bad op is the peer's fault). */
  | { readonly kind: 'voids'; readonly ops: readonly Uint8Array[]; readonly frameBytes: number }
  /** Store a fork proof this session built (it reaches every peer like any new proof). */
  | { readonly kind: 'proof'; readonly proof: ForkProof }
  /** The peer is admitted: `device` from its certificate. */
  | { readonly kind: 'admitted'; readonly device: DeviceId; readonly cert: Uint8Array }
  | { readonly kind: 'caughtUp' }
  /** Close the stream. `blame` means the peer broke the protocol: back off before accepting it again. */
  /** `byPeer`: the peer ended the session (its goodbye); else we did. */
  | { readonly kind: 'close'; readonly code: string; readonly message: string; readonly blame: boolean; readonly byPeer?: boolean };

/** Checks a peer's certificate; returns its device or throws a FieldmeshError. Supplied by the driver. */
export type Admit = (cert: Uint8Array) => DeviceId;

/** A read answers the peer's query, or gives our side of a fork search's comparison. */
export type ReadPurpose = 'answer' | 'compare';

type Phase = 'hello' | 'open' | 'closed';

export class SyncSession {
  private readonly local: LocalState;
  private readonly limits: SyncLimits;
  private readonly admit: Admit;
  private phase: Phase = 'hello';
  private peerMaxFrame = MIN_FRAME_BYTES;
  private credit = 0;
  /** What we know the peer holds: its hello, plus what went either way since. */
  private peerVV: Record<DeviceId, number> = {};
  /** What we offer, as far as this session knows (never at or past a fork point). */
  private ourVV: Record<DeviceId, number> = {};
  /** Our tips as sent in hello, to compare with the peer's. */
  private readonly ourTips: ReadonlyMap<DeviceId, TipId>;
  /** The peer's tips from its hello: the op it holds at each, a fact for the whole session. */
  private peerTips: ReadonlyMap<DeviceId, TipId> = new Map();
  /** Lowest fork point we hold a proof of, per device. */
  private readonly forkAt = new Map<DeviceId, number>();
  /** Fork proofs sent to the peer (`device#seq`): the driver may offer one again after admission. */
  private readonly forksSent = new Set<string>();
  /** Highest seq at which the peer's op of a device is known to be ours. */
  private readonly agreed = new Map<DeviceId, number>();
  /** Fork searches waiting to run, the one running, and the two ops of its comparison so far. */
  private readonly searches: SearchStart[] = [];
  private search: ForkSearch | null = null;
  private theirs: Uint8Array | null | undefined;
  private ours: Uint8Array | null | undefined;
  /** The peer's query we are answering (it may have one at a time). */
  private answering: { device: DeviceId; seq: number } | null = null;
  private loading = false;
  /** Frames at the head of `inbound` handed to the driver to ingest (replies come in order). */
  private ingesting = 0;
  /** Per device, frames in flight behind one of its frames that was refused: they cannot chain either. */
  private readonly doomed = new Map<DeviceId, number>();
  /** The peer's log tips when the session opened: how far along each log's catch-up is. */
  private readonly peerStart = new Map<DeviceId, number>();
  private readonly inbound: { device: DeviceId; ops: readonly Uint8Array[]; bytes: number; lastSeq: number }[] = [];
  private inboundBytes = 0;
  private initialPending = true;
  private peerDevice: DeviceId | null = null;
  /** Ops frames sent and received, op bytes sent and received. */
  readonly stats = { framesOut: 0, framesIn: 0, opsOut: 0, opsIn: 0, bytesOut: 0, bytesIn: 0, queriesOut: 0 };
  peerCaughtUp = false;
  /** Ids we asked the peer for (each once, while remembered). */
  private readonly asked = new Set<OpId>();
  /** Ids the peer asked for that we do not hold yet: sent if we come to hold them. */
  private readonly peerWants = new Set<OpId>();
  /** Certificate and fork frames waiting for credit, in order. */
  private readonly framesOut: (Command & { kind: 'send' })[] = [];
  /** Ids to ask for, and void ops to send, as credit allows; the void ops sent. */
  private readonly wantsOut: OpId[] = [];
  private readonly voidsOut: Uint8Array[] = [];
  private voidsOutBytes = 0;
  private readonly voidsSent = new Set<OpId>();
  /** Some void ops the peer wants were left in peerWants for want of room in voidsOut: look again when it drains. */
  private lookAgain = false;
  /** A `missing` command is out; another is due once it returns. */
  private seeking = false;
  private seekAgain = false;

  constructor(local: LocalState, admit: Admit, limits: SyncLimits = DEFAULT_SYNC_LIMITS) {
    if (limits.windowBytes < limits.maxFrameBytes || limits.maxFrameBytes < MIN_FRAME_BYTES) {
      throw new InvalidInputError('BAD_SYNC_LIMITS', `need windowBytes >= maxFrameBytes >= ${MIN_FRAME_BYTES}`);
    }
    this.local = local;
    this.admit = admit;
    this.limits = limits;
    for (const proof of local.forks()) this.forkAt.set(proof.device, Math.min(proof.seq, this.forkAt.get(proof.device) ?? Number.POSITIVE_INFINITY));
    this.ourTips = new Map(Object.entries(local.tips));
    for (const [device, tip] of this.ourTips) this.ourVV[device] = Math.min(tip.seq, this.capOf(device));
  }

  get device(): DeviceId | null {
    return this.peerDevice;
  }

  get closed(): boolean {
    return this.phase === 'closed';
  }

  /** Whether our last query is still unanswered (the driver bounds the wait). */
  get awaitingAnswer(): boolean {
    return this.search !== null && this.ours != null && this.theirs === undefined;
  }

  /** How many ops of ours the peer lacks, as far as we know. */
  get peerBehind(): number {
    let n = 0;
    for (const [device, seq] of Object.entries(this.ourVV)) n += Math.max(0, seq - seqOf(this.peerVV, device));
    return n;
  }

  /** How many ops the peer has that we lack, as of what it told us (past fork points apart). */
  get weAreBehind(): number {
    let n = 0;
    for (const [device, seq] of Object.entries(this.peerVV)) n += Math.max(0, Math.min(seq, this.capOf(device)) - seqOf(this.ourVV, device));
    return n;
  }

  start(): Command[] {
    const { team, hq, cert, tips } = this.local;
    return [this.send({ type: 'hello', version: SYNC_VERSION, team, hq, cert, tips, maxFrameBytes: this.limits.maxFrameBytes, windowBytes: this.limits.windowBytes })];
  }

  /** One frame from the peer (without its length prefix). */
  receive(bytes: Uint8Array): Command[] {
    if (this.phase === 'closed') return [];
    let frame: Frame;
    try {
      frame = decodeFrame(bytes, this.limits.maxFrameBytes);
    } catch (err) {
      return this.fail(err as FieldmeshError);
    }
    this.stats.framesIn++;
    if (this.phase === 'hello') {
      if (frame.type !== 'hello') return this.violation('EXPECTED_HELLO', `first frame must be hello, got ${frame.type}`);
      return this.onHello(frame);
    }
    switch (frame.type) {
      case 'hello':
        return this.violation('DUPLICATE_HELLO', 'hello sent twice');
      case 'certs':
        if (frame.certs.length > this.limits.maxCertsPerFrame) return this.violation('TOO_MANY_CERTS', `more than ${this.limits.maxCertsPerFrame} certificates in one frame`);
        if (!this.takeWindow(bytes.length)) return this.violation('FLOW_CONTROL', `peer sent ${this.inboundBytes} bytes beyond the ${this.limits.windowBytes}-byte window`);
        return [{ kind: 'certs', certs: frame.certs, frameBytes: bytes.length }];
      case 'fork':
        if (!this.takeWindow(bytes.length)) return this.violation('FLOW_CONTROL', `peer sent ${this.inboundBytes} bytes beyond the ${this.limits.windowBytes}-byte window`);
        return [{ kind: 'fork', device: frame.device, seq: frame.seq, ops: frame.ops, frameBytes: bytes.length }];
      case 'credit':
        this.credit += frame.bytes;
        return this.pump();
      case 'caughtUp':
        this.peerCaughtUp = true;
        return this.seek();
      case 'want': {
        if (!this.takeWindow(bytes.length)) return this.violation('FLOW_CONTROL', `peer sent ${this.inboundBytes} bytes beyond the ${this.limits.windowBytes}-byte window`);
        for (const id of frame.ids) if (!this.voidsSent.has(id)) remember(this.peerWants, id);
        return [{ kind: 'lookup', ids: frame.ids, frameBytes: bytes.length }];
      }
      case 'voids': {
        if (!this.takeWindow(bytes.length)) return this.violation('FLOW_CONTROL', `peer sent ${this.inboundBytes} bytes beyond the ${this.limits.windowBytes}-byte window`);
        // Only ops we asked for (and still remember asking for) are kept; the rest are dropped.
        const ops: Uint8Array[] = [];
        for (const op of frame.ops) {
          try {
            if (this.asked.has(opIdOf(op))) ops.push(op);
          } catch (err) {
            return this.fail(err as FieldmeshError);
          }
        }
        return ops.length === 0 ? this.settled(bytes.length) : [{ kind: 'voids', ops, frameBytes: bytes.length }];
      }
      case 'goodbye':
        this.phase = 'closed';
        return [{ kind: 'close', code: frame.code, message: `peer said goodbye: ${frame.message}`, blame: false, byPeer: true }];
      case 'query':
        // One at a time: an honest peer asks again only after our answer reached it.
        if (this.answering !== null) return this.violation('QUERY_FLOOD', 'a query before the previous one was answered');
        this.answering = { device: frame.device, seq: frame.seq };
        return [{ kind: 'read', device: frame.device, seq: frame.seq, purpose: 'answer' }];
      case 'answer': {
        const search = this.search;
        // We ask only once we have read our own op there.
        const asked = search !== null && this.ours !== undefined && this.ours !== null && this.theirs === undefined;
        if (!asked || frame.device !== search.device || frame.seq !== search.seq) {
          return this.violation('UNEXPECTED_ANSWER', `an answer for ${frame.device}#${frame.seq} that we did not ask for`);
        }
        this.theirs = frame.op;
        return this.compared();
      }
      case 'ops': {
        // The peer holds what it sends: never offer these back, even before they are stored.
        let last;
        try {
          last = parseOp(frame.ops[frame.ops.length - 1]!).op;
        } catch (err) {
          return this.fail(err as FieldmeshError);
        }
        if (last.device !== frame.device) return this.violation('WRONG_DEVICE', `ops frame of ${frame.device} holds an op of ${last.device}`);
        this.peerVV[frame.device] = Math.max(seqOf(this.peerVV, frame.device), last.seq);
        if (!this.takeWindow(bytes.length)) return this.violation('FLOW_CONTROL', `peer sent ${this.inboundBytes} bytes beyond the ${this.limits.windowBytes}-byte window`);
        this.stats.opsIn += frame.ops.length;
        this.stats.bytesIn += bytes.length;
        this.inbound.push({ device: frame.device, ops: frame.ops, bytes: bytes.length, lastSeq: last.seq });
        return this.nextIngest();
      }
    }
  }

  private onHello(hello: Frame & { type: 'hello' }): Command[] {
    if (hello.version !== SYNC_VERSION) return this.violation('VERSION', `peer speaks sync version ${hello.version}, we speak ${SYNC_VERSION}`);
    if (hello.team !== this.local.team || hello.hq !== this.local.hq) return this.violation('WRONG_TEAM', `peer is of team ${hello.team} (HQ ${hello.hq})`);
    if (hello.maxFrameBytes < MIN_FRAME_BYTES || hello.windowBytes < hello.maxFrameBytes) {
      return this.violation('BAD_LIMITS', `peer limits too small: frame ${hello.maxFrameBytes}, window ${hello.windowBytes}`);
    }
    try {
      this.peerDevice = this.admit(hello.cert);
    } catch (err) {
      return this.fail(err as FieldmeshError);
    }
    this.phase = 'open';
    this.peerMaxFrame = Math.min(hello.maxFrameBytes, this.limits.maxFrameBytes);
    this.credit = hello.windowBytes;
    this.peerTips = new Map(Object.entries(hello.tips));
    for (const [device, tip] of this.peerTips) {
      this.peerVV[device] = tip.seq;
      this.peerStart.set(device, tip.seq);
      // Same seq: the ids must match. Where we are ahead, our first op sent checks it (loaded);
      // where the peer is, its first op sent to us does (ingest, and its own session).
      const ours = this.ourTips.get(device);
      if (ours === undefined || ours.seq !== tip.seq) continue;
      if (ours.id === tip.id) this.agree(device, tip.seq);
      else this.searches.push(this.claimSearch(device, tip));
    }
    const out: Command[] = [{ kind: 'admitted', device: this.peerDevice, cert: hello.cert }];
    out.push(...this.sendCerts(this.local.certs()));
    out.push(...this.sendForks(this.local.forks()));
    out.push(...this.nextSearch());
    out.push(...this.pump());
    return out;
  }

  /** The peer's tip at `tip.seq` differs from our op there: find where the branches part. */
  private claimSearch(device: DeviceId, tip: TipId): SearchStart {
    const ifSame = new RuleViolationError('BAD_ANSWER', `the peer's tip ${device}#${tip.seq} is our op after all`, { device, seq: tip.seq });
    return { device, seq: tip.seq, expect: tip.id, peerHolds: true, ifSame };
  }

  /** Certificates to forward to the peer (new ones we learned, or all at the start). */
  sendCerts(certs: readonly Uint8Array[]): Command[] {
    if (this.phase !== 'open') return [];
    let batch: Uint8Array[] = [];
    let bytes = 0;
    for (const cert of certs) {
      // Each frame within the peer's limit (certificates are at most 1 KiB) and the count limit.
      if (batch.length > 0 && (bytes + cert.length + 8 > this.peerMaxFrame - OPS_FRAME_OVERHEAD || batch.length >= this.limits.maxCertsPerFrame)) {
        this.framesOut.push(this.send({ type: 'certs', certs: batch }));
        batch = [];
        bytes = 0;
      }
      batch.push(cert);
      bytes += cert.length + 8;
    }
    if (batch.length > 0) this.framesOut.push(this.send({ type: 'certs', certs: batch }));
    return this.sendQueued();
  }

  /**
   * Fork proofs to forward to the peer (new ones we learned, or all we hold), each once; we stop
   * offering what they exclude.
   */
  sendForks(forks: readonly ForkProof[]): Command[] {
    if (this.phase !== 'open') return [];
    for (const f of forks) {
      const key = `${f.device}#${f.seq}`;
      if (this.forksSent.has(key)) continue;
      this.forksSent.add(key);
      this.framesOut.push(this.send({ type: 'fork', device: f.device, seq: f.seq, ops: f.ops }));
      this.forkLearned(f.device, f.seq);
    }
    const out = [...this.sendQueued(), ...this.nextSearch(), ...this.seek()];
    // Ops the peer asked for that we hold may have become void: look again.
    if (forks.length > 0 && this.peerWants.size > 0) out.push({ kind: 'lookup', ids: [...this.peerWants], frameBytes: 0 });
    return out;
  }

  /**
   * A (lower) fork point of `device`: offer nothing from it on. Where we held more, the peer and
   * we may now stop at the same seq without having compared our ops there: check them.
   */
  private forkLearned(device: DeviceId, seq: number): void {
    if (seq >= this.capOf(device) + 1) return;
    this.forkAt.set(device, seq);
    const cap = seq - 1;
    if (seqOf(this.ourVV, device) <= cap) return;
    this.ourVV[device] = cap;
    if (cap === 0 || (this.agreed.get(device) ?? 0) >= cap || seqOf(this.peerVV, device) < cap) return;
    const tip = this.peerTips.get(device);
    this.searches.push({ device, seq: cap, expect: tip?.seq === cap ? tip.id : null, peerHolds: tip !== undefined && tip.seq >= cap, ifSame: null });
  }

  /** We hold more now (our own writes, or ops from any peer): push what this peer lacks. */
  localAdvanced(vv: VersionVector): Command[] {
    for (const [device, seq] of Object.entries(vv)) {
      const offered = Math.min(seq, this.capOf(device));
      if (offered > seqOf(this.ourVV, device)) this.ourVV[device] = offered;
    }
    // Ops we took in from anyone may wait for a void op this peer holds.
    return [...this.pump(), ...this.seek()];
  }

  /**
   * Asks the driver for ids our parked ops wait for, once the peer has sent what it held at hello
   * and only with a fork proven: then an op we lack may be void, which no peer offers in its log.
   */
  private seek(): Command[] {
    if (this.phase !== 'open' || !this.peerCaughtUp || this.forkAt.size === 0 || this.ingesting > 0) return [];
    if (this.seeking) {
      this.seekAgain = true;
      return [];
    }
    this.seeking = true;
    return [{ kind: 'missing', limit: MAX_WANT_IDS, exclude: this.asked }];
  }

  /** The driver found ids our parked ops wait for that we have not asked for: ask the peer. */
  missing(ids: readonly OpId[]): Command[] {
    this.seeking = false;
    if (this.phase !== 'open') return [];
    for (const id of ids) {
      if (this.asked.has(id)) continue;
      remember(this.asked, id);
      this.wantsOut.push(id);
    }
    const out = this.pump();
    if (this.seekAgain) {
      this.seekAgain = false;
      out.push(...this.seek());
    }
    return out;
  }

  /**
   * The driver read the void ops the peer wanted that we hold (for its `want` frame, whose bytes
   * return as credit, or for a fork we learned, frameBytes 0): they go out as credit allows.
   */
  voidsRead(ops: readonly Uint8Array[], frameBytes: number): Command[] {
    if (this.phase !== 'open') return [];
    if (frameBytes === 0) return this.voidsLearned(ops);
    this.inboundBytes -= frameBytes;
    return [this.send({ type: 'credit', bytes: frameBytes }), ...this.voidsLearned(ops)];
  }

  /**
   * Void ops we came to hold (from any peer): those this peer asked for go to it. At most a
   * window of them waits for credit; the rest stay wanted and are looked up again later.
   */
  voidsLearned(ops: readonly Uint8Array[]): Command[] {
    if (this.phase !== 'open') return [];
    for (const op of ops) {
      const id = opIdOf(op);
      if (!this.peerWants.has(id) || this.voidsSent.has(id)) continue;
      if (this.voidsOutBytes + op.length > this.limits.windowBytes) {
        this.lookAgain = true;
        continue;
      }
      this.peerWants.delete(id);
      remember(this.voidsSent, id);
      this.voidsOut.push(op);
      this.voidsOutBytes += op.length;
    }
    return this.pump();
  }

  /** The driver read one of our ops for a `read` command. */
  opRead(purpose: ReadPurpose, bytes: Uint8Array | null): Command[] {
    if (this.phase !== 'open') return [];
    if (purpose === 'answer') {
      const { device, seq } = this.answering!;
      this.answering = null;
      // An answer is at most one op, and a peer has one query at a time: it bypasses the window.
      return [this.send({ type: 'answer', device, seq, op: bytes })];
    }
    this.ours = bytes;
    const search = this.search!;
    // Holding no op there, we have nothing to compare: the search decides without asking.
    if (bytes === null) {
      this.theirs = null;
      return this.compared();
    }
    this.stats.queriesOut++;
    return [this.send({ type: 'query', device: search.device, seq: search.seq })];
  }

  /** Both ops of the running search's comparison are in (or not yet): take its next step. */
  private compared(): Command[] {
    const search = this.search!;
    if (this.theirs === undefined || this.ours === undefined) return [];
    // A check passes on the same op at both ends, not where one end holds none.
    const bothHeld = this.theirs !== null && this.ours !== null;
    const step = search.step(this.theirs, this.ours);
    this.theirs = undefined;
    this.ours = undefined;
    switch (step.kind) {
      case 'compare':
        return this.compare(search.device, step.seq);
      case 'fail':
        return this.fail(step.error);
      case 'same':
        if (bothHeld) this.agree(search.device, search.start.seq);
        this.search = null;
        return [...this.nextSearch(), ...this.pump()];
      case 'proof': {
        const { proof } = step;
        this.agree(search.device, proof.seq - 1);
        this.forkLearned(proof.device, proof.seq);
        this.search = null;
        // The proof is stored before any later ingest (the driver keeps store work in order).
        return [{ kind: 'proof', proof }, ...this.nextSearch(), ...this.pump()];
      }
    }
  }

  /**
   * Starts the next queued search whose seq is still below its device's fork point; with none
   * left, ingest resumes.
   */
  private nextSearch(): Command[] {
    if (this.phase !== 'open' || this.search !== null) return [];
    while (this.searches.length > 0) {
      const start = this.searches.shift()!;
      // Past a fork point nothing counts; below it, learning the proof made us check (forkLearned).
      if (start.seq > this.capOf(start.device)) continue;
      this.search = new ForkSearch(start, this.local.team);
      return this.compare(start.device, start.seq);
    }
    return this.nextIngest();
  }

  /** Reads our op at `seq`; the query to the peer follows (opRead). */
  private compare(device: DeviceId, seq: number): Command[] {
    return [{ kind: 'read', device, seq, purpose: 'compare' }];
  }

  private agree(device: DeviceId, seq: number): void {
    if (seq > (this.agreed.get(device) ?? 0)) this.agreed.set(device, seq);
  }

  /** Highest seq of `device` we may offer: below its fork point, if we hold a proof. */
  private capOf(device: DeviceId): number {
    return (this.forkAt.get(device) ?? Number.POSITIVE_INFINITY) - 1;
  }

  /** Devices with a fork search queued or running: their ops wait. */
  private searching(device: DeviceId): boolean {
    return this.search?.device === device || this.searches.some((s) => s.device === device);
  }

  /** The driver read ops for a `load` command (fewer than asked, or none, is fine). */
  loaded(device: DeviceId, fromSeq: number, loadedOps: readonly Uint8Array[]): Command[] {
    this.loading = false;
    if (this.phase !== 'open') return [];
    if (loadedOps.length === 0) {
      // We do not hold what we thought (e.g. refused past a fork): stop offering it.
      this.ourVV[device] = Math.min(seqOf(this.ourVV, device), fromSeq - 1);
      return this.pump();
    }
    // A fork point learned while loading: nothing from it on goes out.
    const ops = loadedOps.slice(0, Math.max(0, seqOf(this.ourVV, device) - fromSeq + 1));
    if (ops.length === 0 || this.searching(device)) return this.pump();
    const tip = this.peerTips.get(device);
    if (tip !== undefined && fromSeq === tip.seq + 1) {
      // Our first op past the peer's tip names our op there: it must be the peer's.
      if (parseOp(ops[0]!).op.prev !== tip.id) {
        this.searches.push(this.claimSearch(device, tip));
        return [...this.nextSearch(), ...this.pump()];
      }
      this.agree(device, tip.seq);
    }
    const cmd = this.send({ type: 'ops', device, ops });
    this.credit -= cmd.bytes.length;
    this.stats.opsOut += ops.length;
    this.stats.bytesOut += cmd.bytes.length;
    this.peerVV[device] = Math.max(seqOf(this.peerVV, device), fromSeq + ops.length - 1);
    return [cmd, ...this.pump()];
  }

  /**
   * The driver finished the oldest `ingest` command: null once the frame is stored, or why it was
   * refused (the session then closes, blaming the peer, unless a fork search explains it).
   */
  ingested(error: FieldmeshError | null): Command[] {
    this.ingesting--;
    if (this.phase !== 'open') return [];
    const done = this.inbound.shift()!;
    const doomed = this.doomed.get(done.device) ?? 0;
    if (doomed > 0) this.doomed.set(done.device, doomed - 1);
    if (error !== null && doomed > 0) {
      // It followed a refused frame of its device, and is dropped with it.
      this.inboundBytes -= done.bytes;
      return [this.send({ type: 'credit', bytes: done.bytes }), ...this.nextIngest()];
    }
    if (error !== null) {
      const search = this.chainSearch(done.device, error);
      if (search === null) return this.fail(error);
      // The frame is dropped (its ops follow an op that differs from ours) and credited, and so
      // are the frames of its device already handed over behind it.
      this.inboundBytes -= done.bytes;
      this.doomed.set(done.device, this.inbound.slice(0, this.ingesting).filter((f) => f.device === done.device).length);
      this.searches.push(search);
      return [this.send({ type: 'credit', bytes: done.bytes }), ...this.nextSearch(), ...this.pump()];
    }
    this.inboundBytes -= done.bytes;
    this.peerVV[done.device] = Math.max(seqOf(this.peerVV, done.device), done.lastSeq);
    this.ourVV[done.device] = Math.max(seqOf(this.ourVV, done.device), Math.min(done.lastSeq, this.capOf(done.device)));
    return [this.send({ type: 'credit', bytes: done.bytes }), ...this.nextIngest(), ...this.seek()];
  }

  /**
   * An op of the peer's that does not chain to our tip (PREV_MISMATCH) names as its predecessor
   * an op other than ours: the peer holds another branch, or sent garbage. Its op there decides.
   */
  private chainSearch(device: DeviceId, error: FieldmeshError): SearchStart | null {
    const { device: of, seq, found } = error.details;
    if (error.code !== 'PREV_MISMATCH' || of !== device || typeof seq !== 'number' || seq < 2 || typeof found !== 'string') return null;
    return { device, seq: seq - 1, expect: found, peerHolds: true, ifSame: error };
  }

  /**
   * The driver stored a certs, fork or voids frame: its bytes return to the peer as credit. A new
   * proof or void op may leave parked ops waiting for void ops: ask for them.
   */
  settled(frameBytes: number): Command[] {
    if (this.phase !== 'open') return [];
    this.inboundBytes -= frameBytes;
    return [this.send({ type: 'credit', bytes: frameBytes }), ...this.seek()];
  }

  /** Counts a frame against our window: every frame but hello, credit, caughtUp and goodbye does. */
  private takeWindow(bytes: number): boolean {
    this.inboundBytes += bytes;
    return this.inboundBytes <= this.limits.windowBytes;
  }

  /** Local reasons to end the session (stop, shutdown, timeouts). */
  close(code: string, message: string): Command[] {
    if (this.phase === 'closed') return [];
    const out = this.phase === 'open' ? [this.send({ type: 'goodbye', code, message })] : [];
    this.phase = 'closed';
    return [...out, { kind: 'close', code, message, blame: false }];
  }

  /**
   * Hands the driver the next frames to ingest, in arrival order, several at once: the store
   * commits those queued together in one batch, and builds the next while the last is written.
   * The driver reports back in the same order. If a frame is refused for a fork search, the
   * frames of its device handed over behind it fail too (they do not chain) and are dropped.
   */
  private nextIngest(): Command[] {
    // While a fork search runs, a frame might not chain yet but be refused once the proof is stored.
    if (this.search !== null || this.searches.length > 0) return [];
    const out: Command[] = [];
    while (this.ingesting < Math.min(this.inbound.length, MAX_INGESTS_IN_FLIGHT)) {
      const next = this.inbound[this.ingesting++]!;
      out.push({ kind: 'ingest', device: next.device, ops: next.ops });
    }
    return out;
  }

  private pump(): Command[] {
    if (this.phase !== 'open') return [];
    const queued = this.sendQueued();
    // Certificates and proofs first: the ops sent after them may need them.
    if (this.framesOut.length > 0) return queued;
    const out = [...queued, ...this.sendWants(), ...this.sendVoids()];
    if (this.loading) return out;
    return [...out, ...this.pumpOps()];
  }

  /** Queued wanted ids, up to MAX_WANT_IDS a frame, while credit lasts. */
  private sendWants(): Command[] {
    const out: Command[] = [];
    while (this.wantsOut.length > 0) {
      const ids = this.wantsOut.slice(0, MAX_WANT_IDS);
      if (OPS_FRAME_OVERHEAD + ids.length * 34 > this.credit) break;
      this.wantsOut.splice(0, ids.length);
      out.push(this.sendCosting({ type: 'want', ids }));
    }
    return out;
  }

  /** Queued void ops, in frames within the peer's limit, while credit lasts. */
  private sendVoids(): Command[] {
    const out: Command[] = [];
    while (this.voidsOut.length > 0) {
      let n = 0;
      let bytes = OPS_FRAME_OVERHEAD;
      while (n < this.voidsOut.length && (n === 0 || bytes + this.voidsOut[n]!.length + 8 <= this.peerMaxFrame)) bytes += this.voidsOut[n++]!.length + 8;
      if (bytes > this.credit) break;
      const ops = this.voidsOut.splice(0, n);
      for (const op of ops) this.voidsOutBytes -= op.length;
      out.push(this.sendCosting({ type: 'voids', ops }));
    }
    if (this.voidsOut.length === 0 && this.lookAgain) {
      this.lookAgain = false;
      out.push({ kind: 'lookup', ids: [...this.peerWants], frameBytes: 0 });
    }
    return out;
  }

  private pumpOps(): Command[] {
    let held = false;
    if (this.credit >= this.peerMaxFrame) {
      // The log least far along its catch-up goes next (ties: device order).
      let next: { device: DeviceId; have: number; top: number; done: number } | null = null;
      let waiting = 0;
      for (const device of Object.keys(this.ourVV).sort()) {
        const have = seqOf(this.peerVV, device);
        const top = this.ourVV[device]!;
        if (top <= have) continue;
        if (this.searching(device)) {
          held = true;
          continue;
        }
        waiting++;
        const start = Math.min(this.peerStart.get(device) ?? 0, have);
        const done = (have - start) / (top - start);
        if (next === null || done < next.done) next = { device, have, top, done };
      }
      if (next !== null) {
        this.loading = true;
        const maxBytes = waiting > 1 ? Math.min(INTERLEAVED_RUN_BYTES, this.peerMaxFrame) - OPS_FRAME_OVERHEAD : this.peerMaxFrame - OPS_FRAME_OVERHEAD;
        return [{ kind: 'load', device: next.device, fromSeq: next.have + 1, toSeq: next.top, maxBytes }];
      }
    } else return [];
    if (this.initialPending && !held) {
      this.initialPending = false;
      return [this.send({ type: 'caughtUp' }), { kind: 'caughtUp' }];
    }
    return [];
  }

  /**
   * Certificates and fork proofs count against the peer's window like ops (so a peer cannot be
   * made to queue them without bound): they go out in order as soon as credit covers them (at
   * once, usually: they are few and small), and the credit comes back when the peer has stored
   * them.
   */
  private sendQueued(): Command[] {
    const out: Command[] = [];
    while (this.framesOut.length > 0 && this.framesOut[0]!.bytes.length <= this.credit) {
      const cmd = this.framesOut.shift()!;
      this.credit -= cmd.bytes.length;
      out.push(cmd);
    }
    return out;
  }

  /** A frame that counts against the peer's window, sent now (the caller checked the credit). */
  private sendCosting(frame: Frame): Command & { kind: 'send' } {
    const cmd = this.send(frame);
    this.credit -= cmd.bytes.length;
    return cmd;
  }

  private send(frame: Frame): Command & { kind: 'send' } {
    const bytes = encodeFrame(frame);
    this.stats.framesOut++;
    return { kind: 'send', bytes, frame };
  }

  private violation(code: string, message: string): Command[] {
    return this.fail(new RuleViolationError(code, message));
  }

  private fail(err: FieldmeshError): Command[] {
    if (this.phase === 'closed') return [];
    const code = err.code ?? 'ERROR';
    const out = [this.send({ type: 'goodbye', code, message: err.message })];
    this.phase = 'closed';
    return [...out, { kind: 'close', code, message: err.message, blame: true }];
  }
}

/** Adds `id` to a bounded set, forgetting the oldest entry beyond MAX_WANTED_IDS. */
function remember(set: Set<OpId>, id: OpId): void {
  set.delete(id);
  set.add(id);
  if (set.size > MAX_WANTED_IDS) set.delete(set.values().next().value!);
}
