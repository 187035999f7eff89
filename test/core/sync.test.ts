/**
 * The sans-I/O sync session (src/core/sync/session.ts), driven in memory: each node is a set of
 * in-memory logs of really signed ops (core/author.ts through TestDevice), each link two
 * SyncSessions whose `send` commands are fed into the other's `receive`, and whose `load` and
 * `ingest` commands run against the logs (ingest checks chains and signatures with core's
 * verifyRange, like the store). A step runs one pending action (deliver a frame, finish a load,
 * finish an ingest), in a fixed or a seeded random order.
 *
 * As the real store and driver do, a finished ingest by default first tells every session of the
 * node that the node advanced (the store's `tips` event is emitted synchronously when the batch
 * is durable) and only then reports `ingested` to the session that asked for it (an awaiting
 * continuation runs later); `order: 'ingested-first'` swaps the two.
 */
import { describe, expect, it } from 'vitest';
import { checkAdmission, decodeCertificate, issueCertificate } from '../../src/core/cert.ts';
import { verifyRange, type ForkProof } from '../../src/core/chain.ts';
import { FieldmeshError, InvalidInputError, RuleViolationError } from '../../src/core/errors.ts';
import type { DeviceId } from '../../src/core/keys.ts';
import { decodeOp, type Op, type OpId } from '../../src/core/op.ts';
import { encodeFrame, MAX_WANT_IDS, SYNC_VERSION, type Frame, type TipId, type Tips } from '../../src/core/sync/frames.ts';
import { DEFAULT_SYNC_LIMITS, INTERLEAVED_RUN_BYTES, MAX_INGESTS_IN_FLIGHT, MAX_WANTED_IDS, MIN_FRAME_BYTES, SyncSession, type Command, type LocalState, type SyncLimits } from '../../src/core/sync/session.ts';
import type { VersionVector } from '../../src/core/version-vector.ts';
import { flipBit, rng, signerOf, T0, TestDevice } from './helpers.ts';

const TEAM = 'team-1';
const HQ = signerOf('sync-hq');
const DAY = 24 * 3600 * 1000;
const NOW = T0 + DAY;
/** The smallest limits a session accepts: one frame in flight at most. */
const TIGHT: SyncLimits = { maxFrameBytes: MIN_FRAME_BYTES, windowBytes: MIN_FRAME_BYTES, maxCertsPerFrame: 1024 };

type Send = Command & { kind: 'send' };
type Close = Command & { kind: 'close' };
type Load = Command & { kind: 'load' };
type Ingest = Command & { kind: 'ingest' };

/** The FieldmeshError `fn` throws (it must throw one). */
function refusal(fn: () => unknown): FieldmeshError {
  try {
    fn();
  } catch (err) {
    if (err instanceof FieldmeshError) return err;
    throw err;
  }
  throw new Error('expected a refusal');
}

function certFor(device: DeviceId, options: { team?: string; issuedMs?: number; expiresMs?: number } = {}): Uint8Array {
  const issuedMs = options.issuedMs ?? T0 - DAY;
  const cert = issueCertificate({ team: options.team ?? TEAM, device, user: `user-${device.slice(-4)}`, role: 'field', issuedMs, expiresMs: options.expiresMs ?? issuedMs + 365 * DAY }, HQ);
  return Uint8Array.from(cert.bytes); // a plain Uint8Array, as frames decode to
}

/** The admission check a driver supplies: a certificate of our team by our HQ, valid now. */
function admit(bytes: Uint8Array): DeviceId {
  const cert = decodeCertificate(bytes);
  checkAdmission(cert, { team: TEAM, hqDevice: HQ.device }, NOW, () => false);
  return cert.device;
}

const same = (a: Uint8Array, b: Uint8Array): boolean => Buffer.from(a).equals(Buffer.from(b));

/** One device's node: its own log plus every log it holds, in memory. */
class MemNode {
  readonly name: string;
  readonly author: TestDevice;
  readonly cert: Uint8Array;
  readonly logs = new Map<DeviceId, Uint8Array[]>();
  certs: Uint8Array[];
  forks: { device: DeviceId; seq: number; ops: readonly [Uint8Array, Uint8Array] }[] = [];
  /** Ops received that the node already held. */
  duplicates = 0;
  /** Ids of ops that ops of the node wait for (set by a test), and void ops it fetched by id. */
  readonly wanting = new Set<OpId>();
  readonly voids = new Map<OpId, Uint8Array>();
  readonly ends: End[] = [];
  private clock = T0;

  constructor(name: string) {
    this.name = name;
    this.author = new TestDevice(`sync-${name}`, { team: TEAM });
    this.cert = certFor(this.author.id);
    this.certs = [this.cert];
  }

  get id(): DeviceId {
    return this.author.id;
  }

  vv(): VersionVector {
    const out: Record<DeviceId, number> = {};
    for (const device of [...this.logs.keys()].sort()) out[device] = this.logs.get(device)!.length;
    return out;
  }

  logOf(device: DeviceId): Uint8Array[] {
    let log = this.logs.get(device);
    if (log === undefined) {
      log = [];
      this.logs.set(device, log);
    }
    return log;
  }

  /** Writes `n` ops to its own log, each padded to about `pad` bytes. */
  write(n: number, pad = 100): Op[] {
    const out: Op[] = [];
    for (let i = 0; i < n; i++) {
      const seq = this.logOf(this.id).length + 1;
      const op = this.author.create(++this.clock, 'evidence', `${this.name}-${seq}`, { n: seq, pad: 'p'.repeat(pad) });
      this.logOf(this.id).push(op.bytes);
      out.push(op);
    }
    return out;
  }

  /** Takes a prefix of another node's log as if it had synced it earlier. */
  copyFrom(other: MemNode, device: DeviceId, upTo: number): void {
    const log = this.logOf(device);
    for (const bytes of other.logOf(device).slice(log.length, upTo)) log.push(bytes);
  }

  /** Tips as a session offers them: below the fork point of every proof held. */
  tips(): Tips {
    const out: Record<DeviceId, TipId> = {};
    for (const [device, log] of this.logs) {
      const cap = Math.min(log.length, ...this.forks.filter((f) => f.device === device).map((f) => f.seq - 1));
      if (cap > 0) out[device] = { seq: cap, id: decodeOp(log[cap - 1]!).id };
    }
    return out;
  }

  local(): LocalState {
    return { team: TEAM, hq: HQ.device, cert: this.cert, tips: this.tips(), certs: () => this.certs, forks: () => this.forks };
  }

  /** Like Store.voidOps: the ops among `ids` past their device's fork point that the node holds. */
  voidOps(ids: readonly OpId[]): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (const id of ids) {
      const fetched = this.voids.get(id);
      if (fetched !== undefined) out.push(fetched);
      for (const [device, log] of this.logs) {
        const forkedAt = Math.min(...this.forks.filter((f) => f.device === device).map((f) => f.seq));
        for (const bytes of log.slice(forkedAt - 1)) if (decodeOp(bytes).id === id) out.push(bytes);
      }
    }
    return out;
  }

  /** Like Store.loadRange: whole ops while they fit in maxBytes (4 bytes of framing each). */
  load(device: DeviceId, fromSeq: number, toSeq: number, maxBytes: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    let bytes = 0;
    for (const op of this.logOf(device).slice(fromSeq - 1, toSeq)) {
      if (bytes + op.length + 4 > maxBytes) break;
      out.push(op);
      bytes += op.length + 4;
    }
    return out;
  }

  /** Like the store's ingest: all or nothing; duplicates skipped; past a fork point refused; the rest must extend the tip. Returns the last op's seq. */
  ingest(device: DeviceId, encoded: readonly Uint8Array[]): number {
    const ops = encoded.map((bytes) => decodeOp(bytes));
    for (const op of ops) if (op.device !== device) throw new InvalidInputError('WRONG_DEVICE', `op of ${op.device} in a run of ${device}`);
    const log = this.logOf(device);
    const forkedAt = Math.min(...this.forks.filter((f) => f.device === device).map((f) => f.seq));
    const fresh: Uint8Array[] = [];
    let duplicates = 0;
    for (const [i, op] of ops.entries()) {
      if (op.seq >= forkedAt) continue;
      const held = log[op.seq - 1];
      if (held === undefined) fresh.push(encoded[i]!);
      else if (same(held, encoded[i]!)) duplicates++;
      else throw new RuleViolationError('FORK', `fork of ${device} at ${op.seq}`);
    }
    const tip = log.length === 0 ? { seq: 0, id: null } : { seq: log.length, id: decodeOp(log[log.length - 1]!).id };
    verifyRange(tip, fresh);
    log.push(...fresh);
    this.duplicates += duplicates;
    return ops[ops.length - 1]!.seq;
  }
}

/** One side of a link: a session, what it sent, and its pending work. */
class End {
  readonly node: MemNode;
  readonly session: SyncSession;
  peer!: End;
  /** Frames from the peer not yet delivered. */
  readonly inbox: Uint8Array[] = [];
  readonly sent: Frame[] = [];
  readonly sentBytes: Uint8Array[] = [];
  readonly loads: Load[] = [];
  readonly ingests: Ingest[] = [];
  readonly reads: (Command & { kind: 'read' })[] = [];
  /** Every non-send, non-load, non-ingest command, in order. */
  readonly events: Command[] = [];
  holdIngests = false;
  closed: Close | null = null;

  constructor(node: MemNode, limits: SyncLimits) {
    this.node = node;
    this.session = new SyncSession(node.local(), admit, limits);
  }

  opsFramesSent(): (Frame & { type: 'ops' })[] {
    return this.sent.filter((f): f is Frame & { type: 'ops' } => f.type === 'ops');
  }

  count(type: Frame['type']): number {
    return this.sent.filter((f) => f.type === type).length;
  }
}

class Net {
  private readonly ends: End[] = [];
  private readonly order: 'advanced-first' | 'ingested-first';
  private readonly rand: (() => number) | undefined;
  /** Called after every step (for invariants). */
  onStep: () => void = () => undefined;

  constructor(options: { order?: 'advanced-first' | 'ingested-first'; seed?: number } = {}) {
    this.order = options.order ?? 'advanced-first';
    this.rand = options.seed === undefined ? undefined : rng(options.seed);
  }

  connect(a: MemNode, b: MemNode, limits: { a?: SyncLimits; b?: SyncLimits } = {}): [End, End] {
    const ea = new End(a, limits.a ?? DEFAULT_SYNC_LIMITS);
    const eb = new End(b, limits.b ?? DEFAULT_SYNC_LIMITS);
    ea.peer = eb;
    eb.peer = ea;
    a.ends.push(ea);
    b.ends.push(eb);
    this.ends.push(ea, eb);
    this.dispatch(ea, ea.session.start());
    this.dispatch(eb, eb.session.start());
    return [ea, eb];
  }

  dispatch(end: End, commands: readonly Command[]): void {
    for (const cmd of commands) {
      switch (cmd.kind) {
        case 'send':
          end.sent.push(cmd.frame);
          end.sentBytes.push(cmd.bytes);
          end.peer.inbox.push(cmd.bytes);
          break;
        case 'load':
          expect(end.loads, 'at most one load at a time').toHaveLength(0);
          end.loads.push(cmd);
          break;
        case 'ingest':
          // Several frames may be ingested at once (completed in order).
          expect(end.ingests.length, 'ingests in flight').toBeLessThan(MAX_INGESTS_IN_FLIGHT);
          end.ingests.push(cmd);
          break;
        case 'close':
          expect(end.closed, 'closed once').toBeNull();
          end.closed = cmd;
          end.events.push(cmd);
          break;
        case 'certs':
          // Stored at once: its bytes return to the sender as credit.
          end.events.push(cmd);
          this.dispatch(end, end.session.settled(cmd.frameBytes));
          break;
        case 'fork':
          end.events.push(cmd);
          this.learnFork(end.node, cmd);
          this.dispatch(end, end.session.settled(cmd.frameBytes));
          break;
        case 'proof':
          end.events.push(cmd);
          this.learnFork(end.node, cmd.proof);
          break;
        case 'read':
          // Read at once from the node's log (as the store does, outside the ingest queue).
          end.reads.push(cmd);
          this.dispatch(end, end.session.opRead(cmd.purpose, end.node.logOf(cmd.device)[cmd.seq - 1] ?? null));
          break;
        case 'missing':
          end.events.push(cmd);
          this.dispatch(end, end.session.missing([...end.node.wanting].filter((id) => !cmd.exclude.has(id)).slice(0, cmd.limit)));
          break;
        case 'lookup':
          end.events.push(cmd);
          this.dispatch(end, end.session.voidsRead(end.node.voidOps(cmd.ids), cmd.frameBytes));
          break;
        case 'voids': {
          // Kept (the store checks them), then offered to every session of the node, as the mesh does.
          end.events.push(cmd);
          const fresh = cmd.ops.filter((bytes) => !end.node.voids.has(decodeOp(bytes).id));
          for (const bytes of fresh) {
            end.node.voids.set(decodeOp(bytes).id, bytes);
            end.node.wanting.delete(decodeOp(bytes).id);
          }
          this.dispatch(end, end.session.settled(cmd.frameBytes));
          if (fresh.length > 0) for (const other of end.node.ends) this.dispatch(other, other.session.voidsLearned(fresh));
          break;
        }
        default:
          end.events.push(cmd);
      }
    }
  }

  /** A proof new to the node is kept and passed to every session of it (as the mesh forwards proofs). */
  learnFork(node: MemNode, proof: ForkProof): void {
    if (node.forks.some((f) => f.device === proof.device && f.seq <= proof.seq)) return;
    node.forks.push({ device: proof.device, seq: proof.seq, ops: proof.ops });
    for (const end of node.ends) this.dispatch(end, end.session.sendForks([proof]));
  }

  /** The node wrote to its own log: every session of it hears about it. */
  advance(node: MemNode): void {
    for (const end of node.ends) this.dispatch(end, end.session.localAdvanced(node.vv()));
  }

  private actions(): (() => void)[] {
    const out: (() => void)[] = [];
    for (const end of this.ends) {
      if (end.loads.length > 0) out.push(() => this.finishLoad(end));
      if (end.ingests.length > 0 && !end.holdIngests) out.push(() => this.finishIngest(end));
      if (end.inbox.length > 0 && end.closed === null) out.push(() => this.dispatch(end, end.session.receive(end.inbox.shift()!)));
    }
    return out;
  }

  private finishLoad(end: End): void {
    const cmd = end.loads.shift()!;
    this.dispatch(end, end.session.loaded(cmd.device, cmd.fromSeq, end.node.load(cmd.device, cmd.fromSeq, cmd.toSeq, cmd.maxBytes)));
  }

  private finishIngest(end: End): void {
    const cmd = end.ingests.shift()!;
    try {
      end.node.ingest(cmd.device, cmd.ops);
    } catch (err) {
      if (!(err instanceof FieldmeshError)) throw err;
      this.dispatch(end, end.session.ingested(err));
      return;
    }
    if (this.order === 'ingested-first') {
      this.dispatch(end, end.session.ingested(null));
      this.advance(end.node);
    } else {
      this.advance(end.node);
      this.dispatch(end, end.session.ingested(null));
    }
  }

  /** One pending action; false when there is none. */
  step(): boolean {
    const actions = this.actions();
    if (actions.length === 0) return false;
    const i = this.rand === undefined ? 0 : Math.floor(this.rand() * actions.length);
    actions[i]!();
    this.onStep();
    return true;
  }

  /** Steps until nothing is pending (bounded). */
  run(maxSteps = 200_000): number {
    for (let n = 0; n < maxSteps; n++) if (!this.step()) return n;
    throw new Error(`not quiescent after ${maxSteps} steps`);
  }
}

const seqsOf = (frame: Frame & { type: 'ops' }): number[] => frame.ops.map((bytes) => decodeOp(bytes).seq);
const range = (from: number, to: number): number[] => Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i);

/** The seqs of `device` sent in ops frames, in the order sent. */
function sentSeqs(end: End, device: DeviceId): number[] {
  return end
    .opsFramesSent()
    .filter((f) => f.device === device)
    .flatMap(seqsOf);
}

function expectSameLogs(...nodes: MemNode[]): void {
  const [first, ...rest] = nodes;
  for (const node of rest) {
    expect(node.vv(), `${node.name} vs ${first!.name}`).toEqual(first!.vv());
    for (const [device, log] of first!.logs) {
      const other = node.logOf(device);
      expect(other.every((bytes, i) => same(bytes, log[i]!)), `${node.name}'s log of ${device}`).toBe(true);
    }
  }
}

function expectOpen(...ends: End[]): void {
  for (const end of ends) expect(end.closed, `${end.node.name} closed: ${end.closed?.code} ${end.closed?.message}`).toBeNull();
}

/** A session of `node` facing a hand-driven peer: returns the session and what start() sent. */
function facing(node: MemNode, limits: SyncLimits = DEFAULT_SYNC_LIMITS): SyncSession {
  const session = new SyncSession(node.local(), admit, limits);
  const out = session.start();
  expect(out.map((c) => c.kind)).toEqual(['send']);
  expect((out[0] as Send).frame.type).toBe('hello');
  return session;
}

function helloFrom(peer: MemNode, patch: Partial<Frame & { type: 'hello' }> = {}): Uint8Array {
  return encodeFrame({ type: 'hello', version: SYNC_VERSION, team: TEAM, hq: HQ.device, cert: peer.cert, tips: peer.tips(), maxFrameBytes: DEFAULT_SYNC_LIMITS.maxFrameBytes, windowBytes: DEFAULT_SYNC_LIMITS.windowBytes, ...patch });
}

/** The commands must end the session for `code`, blaming the peer, after telling it why. */
function expectViolation(commands: readonly Command[], code: string): void {
  const close = commands.find((c): c is Close => c.kind === 'close');
  expect(close, `expected a close for ${code}, got ${commands.map((c) => c.kind).join(',')}`).toBeDefined();
  expect(close!.code).toBe(code);
  expect(close!.blame).toBe(true);
  const goodbye = commands.find((c): c is Send => c.kind === 'send' && c.frame.type === 'goodbye');
  expect(goodbye?.frame).toMatchObject({ type: 'goodbye', code });
  expect(commands.indexOf(goodbye!)).toBeLessThan(commands.indexOf(close!));
  expect(commands.filter((c) => c.kind === 'load' || c.kind === 'ingest' || c.kind === 'admitted')).toEqual([]);
}

describe('SyncSession: handshake', () => {
  it('admits the peer from its certificate and exchanges hello, certificates and caughtUp', () => {
    const net = new Net();
    const a = new MemNode('a');
    const b = new MemNode('b');
    const [ea, eb] = net.connect(a, b);
    net.run();
    expectOpen(ea, eb);
    expect(ea.session.device).toBe(b.id);
    expect(eb.session.device).toBe(a.id);
    expect(ea.events.filter((c) => c.kind === 'admitted')).toEqual([{ kind: 'admitted', device: b.id, cert: b.cert }]);
    expect(eb.events.filter((c) => c.kind === 'admitted')).toEqual([{ kind: 'admitted', device: a.id, cert: a.cert }]);
    // Nothing to send: hello, our certificates, caughtUp, and nothing else.
    // Each side credits back the other's certs frame once it has stored it.
    expect(ea.sent.map((f) => f.type).sort()).toEqual(['caughtUp', 'certs', 'credit', 'hello']);
    expect(eb.sent.map((f) => f.type).sort()).toEqual(['caughtUp', 'certs', 'credit', 'hello']);
    expect(eb.events.find((c) => c.kind === 'certs')).toMatchObject({ kind: 'certs', certs: [a.cert] });
    expect(ea.session.peerCaughtUp && eb.session.peerCaughtUp).toBe(true);
  });

  it('passes fork proofs it holds to the peer after hello', () => {
    const net = new Net();
    const a = new MemNode('a');
    const b = new MemNode('b');
    const proof = { device: a.id, seq: 3, ops: [Uint8Array.of(1), Uint8Array.of(2)] as const };
    a.forks = [proof];
    const [ea, eb] = net.connect(a, b);
    net.run();
    expectOpen(ea, eb);
    expect(eb.events.filter((c) => c.kind === 'fork')).toMatchObject([{ kind: 'fork', ...proof }]);
    expect(b.forks).toMatchObject([proof]);
    // b passes the new proof on to every peer, as the mesh does, the one it came from included.
    expect(ea.events.filter((c) => c.kind === 'fork')).toMatchObject([{ kind: 'fork', ...proof }]);
    expect(a.forks).toHaveLength(1);
  });

  it('sends nothing but hello before the peer is admitted, and nothing at all after closing', () => {
    const a = new MemNode('a');
    a.write(5);
    const session = facing(a);
    expect(session.localAdvanced(a.vv())).toEqual([]);
    expect(session.sendCerts([a.cert])).toEqual([]);
    expect(session.sendForks([{ device: a.id, seq: 1, ops: [Uint8Array.of(1), Uint8Array.of(2)] }])).toEqual([]);
    const closing = session.close('SHUTDOWN', 'bye');
    // Not admitted yet: no goodbye (the peer never got past hello), just the close.
    expect(closing).toEqual([{ kind: 'close', code: 'SHUTDOWN', message: 'bye', blame: false }]);
    expect(session.closed).toBe(true);
    expect(session.receive(helloFrom(new MemNode('b')))).toEqual([]);
    expect(session.close('SHUTDOWN', 'again')).toEqual([]);
  });

  it('refuses limits below the protocol minimum when constructed', () => {
    const a = new MemNode('a');
    for (const limits of [
      { ...DEFAULT_SYNC_LIMITS, maxFrameBytes: MIN_FRAME_BYTES - 1 },
      { ...DEFAULT_SYNC_LIMITS, windowBytes: DEFAULT_SYNC_LIMITS.maxFrameBytes - 1 },
    ]) {
      let err: unknown;
      try {
        new SyncSession(a.local(), admit, limits);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(InvalidInputError);
      expect((err as InvalidInputError).code).toBe('BAD_SYNC_LIMITS');
    }
  });
});

describe('SyncSession: protocol violations close the session, blaming the peer', () => {
  const a = new MemNode('viol-a');
  const b = new MemNode('viol-b');

  it('a first frame that is not hello: EXPECTED_HELLO', () => {
    const session = facing(a);
    expectViolation(session.receive(encodeFrame({ type: 'caughtUp' })), 'EXPECTED_HELLO');
    expect(session.closed).toBe(true);
    expect(session.device).toBeNull();
    // Whatever comes next is ignored.
    expect(session.receive(helloFrom(b))).toEqual([]);
  });

  it('a goodbye before hello is still not a hello: EXPECTED_HELLO', () => {
    const session = facing(a);
    expectViolation(session.receive(encodeFrame({ type: 'goodbye', code: 'X', message: 'y' })), 'EXPECTED_HELLO');
  });

  it('hello twice: DUPLICATE_HELLO', () => {
    const session = facing(a);
    const first = session.receive(helloFrom(b));
    expect(first.find((c) => c.kind === 'admitted')).toBeDefined();
    expectViolation(session.receive(helloFrom(b)), 'DUPLICATE_HELLO');
  });

  it('another protocol version: VERSION', () => {
    expectViolation(facing(a).receive(helloFrom(b, { version: SYNC_VERSION + 1 })), 'VERSION');
    expectViolation(facing(a).receive(helloFrom(b, { version: 0 })), 'VERSION');
  });

  it('another team, or another HQ: WRONG_TEAM', () => {
    expectViolation(facing(a).receive(helloFrom(b, { team: 'team-2' })), 'WRONG_TEAM');
    expectViolation(facing(a).receive(helloFrom(b, { hq: signerOf('sync-other-hq').device })), 'WRONG_TEAM');
  });

  it('limits below the minimum: BAD_LIMITS', () => {
    expectViolation(facing(a).receive(helloFrom(b, { maxFrameBytes: MIN_FRAME_BYTES - 1, windowBytes: MIN_FRAME_BYTES })), 'BAD_LIMITS');
    expectViolation(facing(a).receive(helloFrom(b, { maxFrameBytes: MIN_FRAME_BYTES * 2, windowBytes: MIN_FRAME_BYTES * 2 - 1 })), 'BAD_LIMITS');
    expectViolation(facing(a).receive(helloFrom(b, { maxFrameBytes: 0, windowBytes: 0 })), 'BAD_LIMITS');
    // Exactly the minimum is fine.
    const ok = facing(a).receive(helloFrom(b, { maxFrameBytes: MIN_FRAME_BYTES, windowBytes: MIN_FRAME_BYTES }));
    expect(ok.find((c) => c.kind === 'close')).toBeUndefined();
  });

  it('a certificate the admission check refuses: its code (CERT_WRONG_TEAM, CERT_EXPIRED, CERT_NOT_YET_VALID, DECODE)', () => {
    expectViolation(facing(a).receive(helloFrom(b, { cert: certFor(b.id, { team: 'team-2' }) })), 'CERT_WRONG_TEAM');
    expectViolation(facing(a).receive(helloFrom(b, { cert: certFor(b.id, { issuedMs: T0 - 10 * DAY, expiresMs: T0 }) })), 'CERT_EXPIRED');
    expectViolation(facing(a).receive(helloFrom(b, { cert: certFor(b.id, { issuedMs: NOW + DAY }) })), 'CERT_NOT_YET_VALID');
    expectViolation(facing(a).receive(helloFrom(b, { cert: Uint8Array.of(1, 2, 3) })), 'DECODE');
    expectViolation(facing(a).receive(helloFrom(b, { cert: flipBit(b.cert, b.cert.length * 8 - 3) })), 'BAD_CERT_SIGNATURE');
  });

  it('an undecodable frame: DECODE; an oversized one: TOO_LARGE', () => {
    expectViolation(facing(a).receive(Uint8Array.of(0xff, 0x01)), 'DECODE');
    const session = facing(a);
    session.receive(helloFrom(b));
    expectViolation(session.receive(Uint8Array.of(0x81, 0x18, 0x63)), 'DECODE'); // [99]
    const small = facing(a, TIGHT);
    small.receive(helloFrom(b));
    expectViolation(small.receive(encodeFrame({ type: 'ops', device: b.id, ops: [new Uint8Array(MIN_FRAME_BYTES)] })), 'TOO_LARGE');
  });

  it('more certificates in one frame than allowed: TOO_MANY_CERTS', () => {
    const session = new SyncSession(a.local(), admit, { ...DEFAULT_SYNC_LIMITS, maxCertsPerFrame: 2 });
    session.start();
    session.receive(helloFrom(b));
    expect(session.receive(encodeFrame({ type: 'certs', certs: [b.cert, a.cert] }))).toMatchObject([{ kind: 'certs', certs: [b.cert, a.cert] }]);
    expectViolation(session.receive(encodeFrame({ type: 'certs', certs: [b.cert, a.cert, b.cert] })), 'TOO_MANY_CERTS');
  });

  it('ops that fail to ingest: the ingest error code, and nothing of them is stored', () => {
    const net = new Net();
    const x = new MemNode('x');
    const y = new MemNode('y');
    const ops = x.write(5);
    const [ex, ey] = net.connect(x, y);
    // Tamper with x's last op on the wire: its signature no longer verifies.
    const log = x.logOf(x.id);
    log[4] = flipBit(ops[4]!.bytes, ops[4]!.bytes.length * 8 - 1);
    net.run();
    expect(ey.closed).toMatchObject({ code: 'BAD_SIGNATURE', blame: true });
    expect(ey.sent.at(-1)).toMatchObject({ type: 'goodbye', code: 'BAD_SIGNATURE' });
    expect(y.vv()[x.id] ?? 0).toBe(0);
    // The sender hears the goodbye and closes without blame.
    expect(ex.closed).toMatchObject({ code: 'BAD_SIGNATURE', blame: false });
  });

  it('a frame of ops that does not chain to what we hold: the chain rule code', () => {
    const x = new MemNode('x2');
    const y = new MemNode('y2');
    const ops = x.write(6);
    const session = facing(y);
    session.receive(helloFrom(x));
    const cmds = session.receive(encodeFrame({ type: 'ops', device: x.id, ops: [ops[2]!.bytes, ops[3]!.bytes] }));
    const ingest = cmds.find((c): c is Ingest => c.kind === 'ingest')!;
    const error = refusal(() => y.ingest(ingest.device, ingest.ops));
    expect(error.code).toBe('SEQ_GAP');
    expectViolation(session.ingested(error), 'SEQ_GAP');
    expect(y.vv()[x.id] ?? 0).toBe(0);
  });

  it('a goodbye from the peer closes without blame, with its code, marked as ended by the peer', () => {
    const session = facing(a);
    session.receive(helloFrom(b));
    expect(session.receive(encodeFrame({ type: 'goodbye', code: 'SHUTDOWN', message: 'node stopping' }))).toEqual([
      { kind: 'close', code: 'SHUTDOWN', message: 'peer said goodbye: node stopping', blame: false, byPeer: true },
    ]);
    expect(session.closed).toBe(true);
  });

  it('closing an admitted session says goodbye first', () => {
    const session = facing(a);
    session.receive(helloFrom(b));
    const out = session.close('SHUTDOWN', 'node stopping');
    expect(out.map((c) => c.kind)).toEqual(['send', 'close']);
    expect((out[0] as Send).frame).toEqual({ type: 'goodbye', code: 'SHUTDOWN', message: 'node stopping' });
    expect(out[1]).toEqual({ kind: 'close', code: 'SHUTDOWN', message: 'node stopping', blame: false });
  });
});

describe('SyncSession: catch-up', () => {
  it('sends exactly the missing suffix of every log, in seq order, one device run per frame', () => {
    const net = new Net();
    const a = new MemNode('a');
    const b = new MemNode('b');
    const x = new MemNode('x');
    a.write(60, 3000);
    x.write(40, 3000);
    b.write(20, 3000);
    a.copyFrom(x, x.id, 40);
    b.copyFrom(x, x.id, 15);
    b.copyFrom(a, a.id, 10);
    const [ea, eb] = net.connect(a, b, { a: TIGHT, b: TIGHT });
    net.run();
    expectOpen(ea, eb);
    expectSameLogs(a, b);
    expect(sentSeqs(ea, a.id)).toEqual(range(11, 60));
    expect(sentSeqs(ea, x.id)).toEqual(range(16, 40));
    expect(sentSeqs(ea, b.id)).toEqual([]);
    expect(sentSeqs(eb, b.id)).toEqual(range(1, 20));
    expect(sentSeqs(eb, a.id)).toEqual([]);
    expect(sentSeqs(eb, x.id)).toEqual([]);
    // Several frames per log (the limits are tight), each one device's contiguous run.
    expect(ea.opsFramesSent().filter((f) => f.device === a.id).length).toBeGreaterThan(1);
    for (const frame of [...ea.opsFramesSent(), ...eb.opsFramesSent()]) {
      const seqs = seqsOf(frame);
      expect(seqs).toEqual(range(seqs[0]!, seqs[0]! + seqs.length - 1));
      for (const bytes of frame.ops) expect(decodeOp(bytes).device).toBe(frame.device);
    }
    expect(a.duplicates + b.duplicates).toBe(0);
    expect(ea.session.stats).toMatchObject({ opsOut: 75, opsIn: 20 });
    expect(eb.session.stats).toMatchObject({ opsOut: 20, opsIn: 75 });
    expect(ea.session.peerBehind + ea.session.weAreBehind + eb.session.peerBehind + eb.session.weAreBehind).toBe(0);
  });

  it('sends many logs side by side, the one least far along first, in runs of at most 64 KiB while others wait', () => {
    const net = new Net();
    const a = new MemNode('a');
    const b = new MemNode('b');
    const [x, y] = [new MemNode('x'), new MemNode('y')];
    a.write(100, 3000);
    x.write(200, 3000);
    y.write(50, 3000);
    a.copyFrom(x, x.id, 200);
    a.copyFrom(y, y.id, 50);
    const [ea, eb] = net.connect(a, b);
    net.run();
    expectOpen(ea, eb);
    expectSameLogs(a, b);
    const frames = ea.opsFramesSent();
    // Every log gets its first run before any gets a second one.
    expect(new Set(frames.slice(0, 3).map((f) => f.device))).toEqual(new Set([a.id, x.id, y.id]));
    // Each frame is of the log least far along when it was sent.
    const sent = new Map<string, number>();
    const total = new Map([[a.id, 100], [x.id, 200], [y.id, 50]]);
    for (const frame of frames) {
      const progress = (d: string) => (sent.get(d) ?? 0) / total.get(d)!;
      const unfinished = [...total.keys()].filter((d) => (sent.get(d) ?? 0) < total.get(d)!);
      expect(Math.min(...unfinished.map(progress))).toBe(progress(frame.device));
      // Runs are short while other logs wait; the last log left goes in full frames.
      if (unfinished.length > 1) expect(frame.ops.reduce((n, op) => n + op.length, 0)).toBeLessThanOrEqual(INTERLEAVED_RUN_BYTES);
      sent.set(frame.device, (sent.get(frame.device) ?? 0) + frame.ops.length);
    }
  });

  it('knows from the hello how far behind either side is', () => {
    const a = new MemNode('a');
    const b = new MemNode('b');
    a.write(30);
    b.write(4);
    b.copyFrom(a, a.id, 12);
    const session = facing(a);
    session.receive(helloFrom(b));
    expect(session.peerBehind).toBe(18);
    expect(session.weAreBehind).toBe(4);
  });

  it('never sends a frame larger than the peer accepts, even with large ops', () => {
    const net = new Net();
    const a = new MemNode('a');
    const b = new MemNode('b');
    a.write(40, 20_000);
    const [ea, eb] = net.connect(a, b, { b: TIGHT });
    net.run();
    expectOpen(ea, eb);
    expectSameLogs(a, b);
    expect(Math.max(...ea.sentBytes.map((f) => f.length))).toBeLessThanOrEqual(MIN_FRAME_BYTES);
  });

  it.each([1, 2, 3, 4, 5, 6, 7, 8])('converges in any delivery order (seed %i)', (seed) => {
    const net = new Net({ seed });
    const rand = rng(seed * 7919);
    const nodes = ['p', 'q', 'r'].map((n) => new MemNode(`${n}${seed}`));
    for (const node of nodes) node.write(1 + Math.floor(rand() * 30), 500 + Math.floor(rand() * 3000));
    const [p, q, r] = nodes as [MemNode, MemNode, MemNode];
    q.copyFrom(p, p.id, Math.floor(rand() * p.vv()[p.id]!));
    const ends = [...net.connect(p, q, { a: TIGHT, b: TIGHT }), ...net.connect(q, r, { a: TIGHT }), ...net.connect(r, p, { b: TIGHT })];
    // Live writes interleaved with the catch-up.
    for (let i = 0; i < 20; i++) {
      for (let s = 0; s < 15; s++) net.step();
      const writer = nodes[Math.floor(rand() * 3)]!;
      writer.write(1 + Math.floor(rand() * 3), 200);
      net.advance(writer);
    }
    net.run();
    expectOpen(...ends);
    expectSameLogs(p, q, r);
  });
});

describe('SyncSession: flow control', () => {
  it('stops sending when the credit runs out and resumes when credit comes back', () => {
    const net = new Net();
    const a = new MemNode('a');
    const b = new MemNode('b');
    a.write(120, 2000); // ~250 kB: four windows of the tight limits
    const window = 2 * MIN_FRAME_BYTES;
    const [ea, eb] = net.connect(a, b, { b: { ...TIGHT, windowBytes: window } });
    // Invariant at every step: op-frame bytes sent but not yet credited back never exceed the window.
    let maxOutstanding = 0;
    net.onStep = () => {
      const sent = ea.sentBytes.filter((_, i) => ea.sent[i]!.type === 'ops').reduce((n, f) => n + f.length, 0);
      const credited = eb.sent.reduce((n, f) => n + (f.type === 'credit' ? f.bytes : 0), 0);
      maxOutstanding = Math.max(maxOutstanding, sent - credited);
      expect(sent - credited).toBeLessThanOrEqual(window);
    };
    eb.holdIngests = true;
    net.run();
    // Stalled: b ingested nothing, a sent what the window allows and stopped (no load pending).
    const stalledFrames = ea.opsFramesSent().length;
    expect(stalledFrames).toBeGreaterThanOrEqual(1);
    expect(stalledFrames).toBeLessThanOrEqual(2);
    expect(ea.loads).toEqual([]);
    expect(eb.ingests).toHaveLength(stalledFrames);
    expect(b.vv()[a.id] ?? 0).toBe(0);
    expect(ea.count('caughtUp')).toBe(0);
    // More local writes do not break the stall either.
    a.write(3, 100);
    net.advance(a);
    net.run();
    expect(ea.opsFramesSent()).toHaveLength(stalledFrames);
    // Release: credit flows back and the rest follows.
    eb.holdIngests = false;
    net.run();
    expectOpen(ea, eb);
    expectSameLogs(a, b);
    expect(ea.opsFramesSent().length).toBeGreaterThan(stalledFrames);
    // One credit per ops frame, plus one for a's certs frame.
    expect(eb.count('credit')).toBe(ea.opsFramesSent().length + 1);
    expect(maxOutstanding).toBeGreaterThan(MIN_FRAME_BYTES / 2);
  });

  it('grants credit of exactly the bytes of each ingested frame', () => {
    const b = new MemNode('b');
    const a = new MemNode('a');
    const ops = a.write(3);
    const session = facing(b, TIGHT);
    session.receive(helloFrom(a));
    const frame = encodeFrame({ type: 'ops', device: a.id, ops: ops.map((o) => o.bytes) });
    const cmds = session.receive(frame);
    expect(cmds).toEqual([{ kind: 'ingest', device: a.id, ops: ops.map((o) => o.bytes) }]);
    const after = session.ingested(null);
    expect(after.map((c) => (c.kind === 'send' ? c.frame : c))).toEqual([{ type: 'credit', bytes: frame.length }]);
  });

  it('closes with FLOW_CONTROL, blaming the peer, when it sends more than the window', () => {
    const b = new MemNode('b');
    const a = new MemNode('a');
    const session = facing(b, TIGHT);
    session.receive(helloFrom(a));
    // Two frames of two ~40 KB ops each exceed the minimum window (a fork proof of two largest ops).
    const [o1, o2, o3, o4] = a.write(4, 40_000);
    const first = encodeFrame({ type: 'ops', device: a.id, ops: [o1!.bytes, o2!.bytes] });
    const second = encodeFrame({ type: 'ops', device: a.id, ops: [o3!.bytes, o4!.bytes] });
    expect(session.receive(first).map((c) => c.kind)).toEqual(['ingest']);
    // The first frame is still being ingested: no credit was granted, the window is full.
    expectViolation(session.receive(second), 'FLOW_CONTROL');
    expect(session.closed).toBe(true);
  });

  it('accepts the same frames once the first was ingested and credited', () => {
    const b = new MemNode('b');
    const a = new MemNode('a');
    const session = facing(b, TIGHT);
    session.receive(helloFrom(a));
    const [o1, o2, o3, o4] = a.write(4, 40_000);
    session.receive(encodeFrame({ type: 'ops', device: a.id, ops: [o1!.bytes, o2!.bytes] }));
    session.ingested(null);
    expect(session.receive(encodeFrame({ type: 'ops', device: a.id, ops: [o3!.bytes, o4!.bytes] })).map((c) => c.kind)).toEqual(['ingest']);
    expect(session.closed).toBe(false);
  });

  it('hands frames within the window to the driver as they arrive, in order, and credits each once stored', () => {
    const b = new MemNode('b');
    const a = new MemNode('a');
    const session = facing(b, { ...TIGHT, windowBytes: 4 * MIN_FRAME_BYTES });
    session.receive(helloFrom(a));
    const written = a.write(3, 30_000);
    const frames = written.map((op) => encodeFrame({ type: 'ops', device: a.id, ops: [op.bytes] }));
    for (const [i, frame] of frames.entries()) {
      const cmds = session.receive(frame);
      expect(cmds.map((c) => c.kind)).toEqual(['ingest']);
      expect((cmds[0] as Ingest).ops[0]).toEqual(written[i]!.bytes);
    }
    for (const frame of frames) {
      expect(session.ingested(null).map((c) => (c.kind === 'send' ? c.frame : c))).toEqual([{ type: 'credit', bytes: frame.length }]);
    }
  });

  it('drops, without blame, the frames of a device handed over behind one refused for a fork search', () => {
    const b = new MemNode('b');
    const a = new MemNode('a');
    b.write(0);
    const written = a.write(4, 1000);
    b.copyFrom(a, a.id, 1);
    const session = facing(b, TIGHT);
    session.receive(helloFrom(a));
    const frames = [written.slice(1, 2), written.slice(2, 4)].map((ops) => encodeFrame({ type: 'ops', device: a.id, ops: ops.map((o) => o.bytes) }));
    for (const frame of frames) expect(session.receive(frame).map((c) => c.kind)).toEqual(['ingest']);
    // The first does not chain to b's op #1 (as if b held another branch): a fork search starts.
    const mismatch = new RuleViolationError('PREV_MISMATCH', 'op #2 does not follow our #1', { device: a.id, seq: 2, found: 'ab'.repeat(32) });
    const first = session.ingested(mismatch);
    expect(first.map((c) => c.kind)).toEqual(['send', 'read']);
    // The second, behind it, fails too (it cannot chain): dropped and credited, the session stays open.
    const second = session.ingested(new RuleViolationError('SEQ_GAP', 'op #3 after tip #1', { device: a.id }));
    expect(second.map((c) => (c.kind === 'send' ? c.frame : c))).toEqual([{ type: 'credit', bytes: frames[1]!.length }]);
    expect(session.closed).toBe(false);
  });
});

describe('SyncSession: caughtUp and live push', () => {
  it('sends caughtUp once, after the initial suffixes, and never again', () => {
    const net = new Net();
    const a = new MemNode('a');
    const b = new MemNode('b');
    a.write(50, 3000);
    b.write(5);
    const [ea, eb] = net.connect(a, b, { a: TIGHT, b: TIGHT });
    net.run();
    const types = ea.sent.map((f) => f.type);
    expect(types.filter((t) => t === 'caughtUp')).toHaveLength(1);
    expect(types.lastIndexOf('ops')).toBeLessThan(types.indexOf('caughtUp'));
    expect(ea.events.filter((c) => c.kind === 'caughtUp')).toHaveLength(1);
    expect(eb.session.peerCaughtUp).toBe(true);
    for (let i = 0; i < 5; i++) {
      a.write(2);
      net.advance(a);
      b.write(1);
      net.advance(b);
      net.run();
    }
    expectOpen(ea, eb);
    expectSameLogs(a, b);
    expect(ea.count('caughtUp')).toBe(1);
    expect(eb.count('caughtUp')).toBe(1);
    expect(ea.events.filter((c) => c.kind === 'caughtUp')).toHaveLength(1);
    expect(eb.events.filter((c) => c.kind === 'caughtUp')).toHaveLength(1);
  });

  it('pushes ops written after the catch-up to the peer', () => {
    const net = new Net();
    const a = new MemNode('a');
    const b = new MemNode('b');
    const [ea, eb] = net.connect(a, b);
    net.run();
    const before = ea.opsFramesSent().length;
    a.write(3);
    net.advance(a);
    net.run();
    expectSameLogs(a, b);
    expect(sentSeqs(ea, a.id)).toEqual([1, 2, 3]);
    expect(ea.opsFramesSent().length).toBe(before + 1);
    expectOpen(ea, eb);
  });

  it('forwards ops of a node the peer never met (store-and-forward), live too', () => {
    const net = new Net();
    const a = new MemNode('a');
    const b = new MemNode('b');
    const c = new MemNode('c');
    a.write(20);
    c.write(7);
    const ends = [...net.connect(a, b), ...net.connect(b, c)];
    net.run();
    expectSameLogs(a, b, c);
    a.write(4);
    net.advance(a);
    c.write(2);
    net.advance(c);
    net.run();
    expectOpen(...ends);
    expectSameLogs(a, b, c);
    expect(a.vv()).toEqual({ [a.id]: 24, [c.id]: 9 });
  });

  describe.each(['ingested-first', 'advanced-first'] as const)('never echoes ops back to the peer that sent them (%s)', (order) => {
    it('between two nodes, for live writes', () => {
      const net = new Net({ order });
      const a = new MemNode('a');
      const b = new MemNode('b');
      a.write(10);
      const [ea, eb] = net.connect(a, b);
      net.run();
      for (let i = 0; i < 5; i++) {
        a.write(1);
        net.advance(a);
        net.run();
      }
      expectSameLogs(a, b);
      expect(sentSeqs(eb, a.id), 'ops of a sent back to a').toEqual([]);
      expect(a.duplicates).toBe(0);
      expectOpen(ea, eb);
    });

    it('along a chain, for forwarded ops', () => {
      const net = new Net({ order });
      const a = new MemNode('a');
      const b = new MemNode('b');
      const c = new MemNode('c');
      const [, ba, bc, cb] = [...net.connect(a, b), ...net.connect(b, c)];
      net.run();
      for (let i = 0; i < 5; i++) {
        a.write(1);
        net.advance(a);
        c.write(1);
        net.advance(c);
        net.run();
      }
      expectSameLogs(a, b, c);
      expect(sentSeqs(ba!, a.id), 'ops of a sent back to a').toEqual([]);
      expect(sentSeqs(cb!, a.id), 'ops of a sent back to b by c').toEqual([]);
      expect(sentSeqs(bc!, c.id), 'ops of c sent back to c').toEqual([]);
      expect(a.duplicates + b.duplicates + c.duplicates).toBe(0);
    });
  });
});

describe('SyncSession: frames within the peer limit', () => {
  it('sends the certificates of a large team to a peer that declares the smallest frame limit', () => {
    const net = new Net();
    const a = new MemNode('a');
    const b = new MemNode('b');
    // A team of 800 devices: their certificates total well over one minimal frame.
    const team = Array.from({ length: 800 }, (_, i) => certFor(signerOf(`sync-member-${i}`).device));
    a.certs = [a.cert, ...team];
    expect(a.certs.reduce((n, c) => n + c.length, 0)).toBeGreaterThan(MIN_FRAME_BYTES);
    const [ea, eb] = net.connect(a, b, { b: TIGHT });
    net.run();
    expectOpen(ea, eb);
    expect(Math.max(...ea.sentBytes.map((f) => f.length))).toBeLessThanOrEqual(MIN_FRAME_BYTES);
    const received = eb.events.flatMap((c) => (c.kind === 'certs' ? c.certs : []));
    expect(received).toHaveLength(801);
  });

  it('sends a fork proof of two large ops to a peer that declares the smallest frame limit', () => {
    const net = new Net();
    const a = new MemNode('a');
    const b = new MemNode('b');
    // Two different, validly signed ops of one device at seq 1, each of ~40 kB (well under the op limit).
    const forker = new TestDevice('sync-forker', { team: TEAM });
    const first = forker.create(T0, 'evidence', 'e', { blob: 'a'.repeat(40_000) });
    forker.state = { tip: { seq: 0, id: null }, clock: { wallMs: 0, counter: 0 } };
    const second = forker.create(T0, 'evidence', 'e', { blob: 'b'.repeat(40_000) });
    const [x, y] = first.id < second.id ? [first, second] : [second, first];
    a.forks = [{ device: forker.id, seq: 1, ops: [x.bytes, y.bytes] }];
    const [ea, eb] = net.connect(a, b, { b: TIGHT });
    net.run();
    expectOpen(ea, eb);
    expect(eb.events.filter((c) => c.kind === 'fork')).toHaveLength(1);
  });

  it('a proof forwarded while catch-up has used the credit waits for credit, never overrunning the window', () => {
    const a = new MemNode('a');
    a.write(6, 40_000); // about 240 kB of ops, against a window of two small frames
    const session = facing(a);
    const window = 2 * MIN_FRAME_BYTES;
    const sent: Command[] = [...session.receive(helloFrom(new MemNode('b'), { maxFrameBytes: MIN_FRAME_BYTES, windowBytes: window }))];
    // Send ops while credit lasts.
    for (let load = sent.find((c): c is Load => c.kind === 'load'); load !== undefined; ) {
      const next = session.loaded(load.device, load.fromSeq, a.load(load.device, load.fromSeq, load.toSeq, load.maxBytes));
      sent.push(...next);
      load = next.find((c): c is Load => c.kind === 'load');
    }
    const costing = sent.filter((c): c is Send => c.kind === 'send' && (c.frame.type === 'ops' || c.frame.type === 'certs')).reduce((n, c) => n + c.bytes.length, 0);
    const left = window - costing;
    expect(left).toBeLessThan(MIN_FRAME_BYTES);
    const forker = new TestDevice('sync-late-forker', { team: TEAM });
    const one = forker.create(T0, 'evidence', 'e', { blob: 'x'.repeat(2 * left) });
    forker.state = { tip: { seq: 0, id: null }, clock: { wallMs: 0, counter: 0 } };
    const two = forker.create(T0, 'evidence', 'e', { blob: 'y'.repeat(2 * left) });
    const proof = { device: forker.id, seq: 1, ops: (one.id < two.id ? [one.bytes, two.bytes] : [two.bytes, one.bytes]) as [Uint8Array, Uint8Array] };
    // Not enough credit for the proof: it waits rather than overrun the peer's window.
    expect(session.sendForks([proof]).filter((c) => c.kind === 'send')).toEqual([]);
    const later = session.receive(encodeFrame({ type: 'credit', bytes: costing }));
    // Then it goes, ahead of caughtUp (everything before it is sent first).
    expect(later.filter((c): c is Send => c.kind === 'send').map((c) => c.frame.type)).toEqual(['fork', 'caughtUp']);
  });
});

/**
 * One device's log, restored from a backup after `common` ops: two branches that share their
 * first `common` ops and differ from seq common+1 on (`a` and `b` ops long).
 */
function forkedLog(name: string, common: number, a: number, b: number): { device: DeviceId; a: Uint8Array[]; b: Uint8Array[] } {
  const device = new TestDevice(name, { team: TEAM });
  const write = (n: number, branch: string) => Array.from({ length: n }, (_, i) => device.create(T0 + i, 'evidence', `${branch}-${i}`, { n: i }).bytes);
  const shared = write(common, 'common');
  const backup = device.state;
  const first = write(a, 'first');
  device.state = backup;
  const second = write(b, 'second');
  return { device: device.id, a: [...shared, ...first], b: [...shared, ...second] };
}

const querySeqs = (end: End, device: DeviceId): number[] => end.sent.flatMap((f) => (f.type === 'query' && f.device === device ? [f.seq] : []));

describe('SyncSession: forks', () => {
  it('equal-length branches: both compare tip ids, search by query, and end with the same proof; a third node learns it', () => {
    const net = new Net();
    const a = new MemNode('fa');
    const b = new MemNode('fb');
    const c = new MemNode('fc');
    const log = forkedLog('sync-rolled-1', 2, 3, 3);
    a.logs.set(log.device, [...log.a]);
    b.logs.set(log.device, [...log.b]);
    c.logs.set(log.device, log.b.slice(0, 2));
    const ends = [...net.connect(a, b), ...net.connect(b, c)];
    const [ea, eb] = ends as [End, End];
    net.run();
    expectOpen(...ends);
    const first = decodeOp(log.a[2]!);
    const second = decodeOp(log.b[2]!);
    const [low, high] = first.id < second.id ? [first, second] : [second, first];
    for (const node of [a, b, c]) expect(node.forks, node.name).toEqual([{ device: log.device, seq: 3, ops: [low.bytes, high.bytes] }]);
    // Tips at #5 differ, #2 is shared, #3 differs with the same predecessor: the branches part there.
    expect(querySeqs(ea, log.device)).toEqual([5, 2, 3]);
    expect(querySeqs(eb, log.device)).toEqual([5, 2, 3]);
    expect(ea.events.filter((e) => e.kind === 'proof')).toHaveLength(1);
    // Nothing at or past the fork point went anywhere, and c keeps the shared ops only.
    for (const end of ends) expect(sentSeqs(end, log.device).filter((seq) => seq >= 3)).toEqual([]);
    expect(c.logOf(log.device)).toHaveLength(2);
  });

  it('different lengths: the longer side checks its first op against the peer tip and queries instead of sending', () => {
    const net = new Net();
    const a = new MemNode('fa2');
    const b = new MemNode('fb2');
    const log = forkedLog('sync-rolled-2', 3, 4, 1);
    a.logs.set(log.device, [...log.a]);
    b.logs.set(log.device, [...log.b]);
    const [ea, eb] = net.connect(a, b);
    net.run();
    expectOpen(ea, eb);
    // b's tip is #4 (its branch); a's op #5 does not name it: a compares #4 and finds the fork there.
    expect(querySeqs(ea, log.device)).toEqual([4]);
    // The proof lowers what b offers from #4 to #3: b checks once that a's #3 is its own.
    expect(querySeqs(eb, log.device)).toEqual([3]);
    expect(sentSeqs(ea, log.device)).toEqual([]);
    for (const node of [a, b]) expect(node.forks.map((f) => f.seq), node.name).toEqual([4]);
  });

  /** y holds `log.b`; x's hello claims `log.a`. Returns y's session, the query it sent and the read it asked for. */
  function claimed(common: number, a: number, b: number) {
    const x = new MemNode('fx');
    const y = new MemNode('fy');
    const log = forkedLog(`sync-rolled-${common}-${a}-${b}`, common, a, b);
    x.logs.set(log.device, [...log.a]);
    y.logs.set(log.device, [...log.b]);
    const session = facing(y);
    const out = session.receive(helloFrom(x));
    return { x, y, log, session, out };
  }

  it('a tip id that differs from our op at that seq: a read of ours, a query, then a proof from the answer (unit)', () => {
    const { y, log, session, out } = claimed(1, 1, 1);
    expect(out.find((c) => c.kind === 'close')).toBeUndefined();
    expect(out).toContainEqual({ kind: 'read', device: log.device, seq: 2, purpose: 'compare' });
    expect(out.find((c) => c.kind === 'send' && c.frame.type === 'query')).toBeUndefined();
    const asked = session.opRead('compare', y.logOf(log.device)[1]!);
    expect(asked.map((c) => (c.kind === 'send' ? c.frame : c))).toEqual([{ type: 'query', device: log.device, seq: 2 }]);
    const done = session.receive(encodeFrame({ type: 'answer', device: log.device, seq: 2, op: log.a[1]! }));
    const [ops0, ops1] = [decodeOp(log.a[1]!), decodeOp(log.b[1]!)].sort((p, q) => (p.id < q.id ? -1 : 1));
    expect(done).toContainEqual({ kind: 'proof', proof: { device: log.device, seq: 2, ops: [ops0!.bytes, ops1!.bytes] } });
    expect(done.find((c) => c.kind === 'close')).toBeUndefined();
  });

  it('ops that do not chain to our tip (PREV_MISMATCH): the frame is credited, the peer asked for its op before them', () => {
    const x = new MemNode('fx2');
    const y = new MemNode('fy2');
    const log = forkedLog('sync-rolled-chain', 2, 3, 1);
    y.logs.set(log.device, [...log.b]);
    const session = facing(y);
    session.receive(helloFrom(x));
    const frame = encodeFrame({ type: 'ops', device: log.device, ops: log.a.slice(3) });
    const ingest = session.receive(frame).find((c): c is Ingest => c.kind === 'ingest')!;
    const error = refusal(() => y.ingest(ingest.device, ingest.ops));
    expect(error.code).toBe('PREV_MISMATCH');
    const out = session.ingested(error);
    expect(out.find((c) => c.kind === 'close')).toBeUndefined();
    expect(out.map((c) => (c.kind === 'send' ? c.frame : c))).toEqual([
      { type: 'credit', bytes: frame.length },
      { kind: 'read', device: log.device, seq: 3, purpose: 'compare' },
    ]);
    // Ingest waits while the search runs: a frame of x's own ops stays queued.
    const own = x.write(1);
    expect(session.receive(encodeFrame({ type: 'ops', device: x.id, ops: [own[0]!.bytes] }))).toEqual([]);
    expect(session.opRead('compare', log.b[2]!).map((c) => (c.kind === 'send' ? c.frame : c))).toEqual([{ type: 'query', device: log.device, seq: 3 }]);
    const done = session.receive(encodeFrame({ type: 'answer', device: log.device, seq: 3, op: log.a[2]! }));
    expect(done.filter((c) => c.kind === 'proof')).toMatchObject([{ kind: 'proof', proof: { device: log.device, seq: 3 } }]);
    // The proof goes to the store before the queued frame does.
    expect(done.map((c) => c.kind).filter((k) => k === 'proof' || k === 'ingest')).toEqual(['proof', 'ingest']);
  });

  it('ops that do not chain to each other, within the frame: the search reads, holds no op there and blames without asking', () => {
    const x = new MemNode('fx3');
    const y = new MemNode('fy3');
    const [first, second] = x.write(2);
    // A validly signed op #3 that names #1 as its predecessor.
    x.author.state = { tip: { seq: 2, id: first!.id }, clock: x.author.state.clock };
    const third = x.author.create(T0 + 9, 'evidence', 'x3', { n: 3 });
    const session = facing(y);
    session.receive(helloFrom(new MemNode('fz3')));
    const ingest = session.receive(encodeFrame({ type: 'ops', device: x.id, ops: [first!.bytes, second!.bytes, third.bytes] })).find((c): c is Ingest => c.kind === 'ingest')!;
    const error = refusal(() => y.ingest(ingest.device, ingest.ops));
    expect(error.code).toBe('PREV_MISMATCH');
    expect(session.ingested(error)).toContainEqual({ kind: 'read', device: x.id, seq: 2, purpose: 'compare' });
    expectViolation(session.opRead('compare', null), 'PREV_MISMATCH');
  });

  it('an answer that proves nothing blames the peer: our own op (BAD_ANSWER), another seq (BAD_ANSWER), none (NO_SUCH_OP)', () => {
    const cases: [Uint8Array | null, string][] = [];
    {
      const { log, y } = claimed(1, 1, 1);
      cases.push([y.logOf(log.device)[1]!, 'BAD_ANSWER'], [log.a[0]!, 'BAD_ANSWER'], [null, 'NO_SUCH_OP']);
    }
    for (const [op, code] of cases) {
      const { y, log, session } = claimed(1, 1, 1);
      session.opRead('compare', y.logOf(log.device)[1]!);
      expectViolation(session.receive(encodeFrame({ type: 'answer', device: log.device, seq: 2, op })), code);
    }
  });

  it('answers queries with its own op (or none); a second query before the answer: QUERY_FLOOD; an answer never asked for: UNEXPECTED_ANSWER', () => {
    const { log, y, session } = claimed(2, 0, 0);
    expect(session.receive(encodeFrame({ type: 'query', device: log.device, seq: 2 }))).toEqual([{ kind: 'read', device: log.device, seq: 2, purpose: 'answer' }]);
    expect(session.opRead('answer', y.logOf(log.device)[1]!).map((c) => (c.kind === 'send' ? c.frame : c))).toEqual([{ type: 'answer', device: log.device, seq: 2, op: y.logOf(log.device)[1]! }]);
    session.receive(encodeFrame({ type: 'query', device: log.device, seq: 9 }));
    expect(session.opRead('answer', null).map((c) => (c.kind === 'send' ? c.frame : c))).toEqual([{ type: 'answer', device: log.device, seq: 9, op: null }]);
    session.receive(encodeFrame({ type: 'query', device: log.device, seq: 1 }));
    expectViolation(session.receive(encodeFrame({ type: 'query', device: log.device, seq: 2 })), 'QUERY_FLOOD');
    const other = claimed(2, 0, 0).session;
    expectViolation(other.receive(encodeFrame({ type: 'answer', device: log.device, seq: 1, op: null })), 'UNEXPECTED_ANSWER');
  });
});

describe('SyncSession: void ops by id', () => {
  /** A device forked at #3: branch a holds its first #3 and #4, branch b another #3. */
  function forkedSetup() {
    const log = forkedLog('sync-voids', 2, 2, 1);
    const first = decodeOp(log.a[2]!);
    const second = decodeOp(log.b[2]!);
    const [low, high] = first.id < second.id ? [first, second] : [second, first];
    const proof = { device: log.device, seq: 3, ops: [low.bytes, high.bytes] as const };
    return { log, proof, wanted: first };
  }

  it('asks each peer once for the ops it waits for, and a peer that comes to hold one later sends it then', () => {
    const net = new Net();
    const { log, proof, wanted } = forkedSetup();
    // x stored the first branch before the proof; y and z hold the other one, and each holds an
    // op (not modelled) built on x's #3, which they wait for: they never get it in a log.
    const x = new MemNode('vx');
    const y = new MemNode('vy');
    const z = new MemNode('vz');
    x.logs.set(log.device, [...log.a]);
    for (const n of [y, z]) {
      n.logs.set(log.device, [...log.b]);
      n.wanting.add(wanted.id);
    }
    for (const n of [x, y, z]) n.forks = [proof];
    // y meets z first: z does not hold the op yet and remembers that y wants it.
    const [ey, ez] = net.connect(y, z);
    net.run();
    expectOpen(ey, ez);
    expect(ey.sent.filter((f) => f.type === 'want')).toEqual([{ type: 'want', ids: [wanted.id] }]);
    expect(ez.count('voids')).toBe(0);
    // z then meets x, which holds it: z gets it, and passes it to y, which asked.
    const [ez2, ex] = net.connect(z, x);
    net.run();
    expectOpen(ey, ez, ez2, ex);
    expect(ex.sent.filter((f) => f.type === 'voids')).toEqual([{ type: 'voids', ops: [wanted.bytes] }]);
    expect(ez.sent.filter((f) => f.type === 'voids')).toEqual([{ type: 'voids', ops: [wanted.bytes] }]);
    for (const n of [y, z]) {
      expect(n.voids.get(wanted.id), n.name).toEqual(wanted.bytes);
      expect(n.wanting.size).toBe(0);
    }
    // Each asked once per session (y and z ask each other), x wants nothing, and nothing past
    // the fork point went out in a log.
    expect([ey, ez, ez2, ex].map((e) => e.count('want'))).toEqual([1, 1, 1, 0]);
    for (const end of [ey, ez, ez2, ex]) expect(sentSeqs(end, log.device).filter((seq) => seq >= 3)).toEqual([]);
  });

  it('sends an op the peer asked for once a proof learned later makes it void', () => {
    const { log, proof, wanted } = forkedSetup();
    // x stored the first branch and has not heard of the fork when the peer asks.
    const x = new MemNode('vx3');
    x.logs.set(log.device, [...log.a]);
    const session = facing(x);
    session.receive(helloFrom(new MemNode('vp3')));
    const [lookup] = session.receive(encodeFrame({ type: 'want', ids: [wanted.id] })) as [Command & { kind: 'lookup' }];
    const first = session.voidsRead(x.voidOps(lookup.ids), lookup.frameBytes);
    expect(first.flatMap((c) => (c.kind === 'send' ? [c.frame.type] : []))).toEqual(['credit']);
    // The proof arrives (from anyone): the session looks again, and the op goes out.
    x.forks = [proof];
    const again = session.sendForks([proof]).find((c): c is Command & { kind: 'lookup' } => c.kind === 'lookup');
    expect(again).toEqual({ kind: 'lookup', ids: [wanted.id], frameBytes: 0 });
    const sent = session.voidsRead(x.voidOps(again!.ids), 0);
    expect(sent.flatMap((c) => (c.kind === 'send' ? [c.frame] : []))).toEqual([{ type: 'voids', ops: [wanted.bytes] }]);
  });

  it('asks for nothing while no fork is proven', () => {
    const net = new Net();
    const a = new MemNode('va');
    const b = new MemNode('vb');
    a.wanting.add('ab'.repeat(32));
    const [ea, eb] = net.connect(a, b);
    net.run();
    expectOpen(ea, eb);
    expect(ea.events.filter((c) => c.kind === 'missing')).toEqual([]);
    expect(ea.count('want')).toBe(0);
  });

  it('answers a want within flow control; drops voids it did not ask for; keeps a flood of wants bounded', () => {
    const { log, proof, wanted } = forkedSetup();
    const x = new MemNode('vx2');
    x.logs.set(log.device, [...log.a]);
    x.forks = [proof];
    const peer = new MemNode('vp');
    const session = facing(x);
    session.receive(helloFrom(peer));
    const lookup = session.receive(encodeFrame({ type: 'want', ids: [wanted.id] }));
    expect(lookup).toMatchObject([{ kind: 'lookup', ids: [wanted.id] }]);
    const reply = session.voidsRead(x.voidOps([wanted.id]), (lookup[0] as Command & { kind: 'lookup' }).frameBytes);
    expect(reply.flatMap((c) => (c.kind === 'send' ? [c.frame.type] : []))).toEqual(['credit', 'voids']);

    // Void ops we never asked for (or no longer remember asking for) are dropped, and credited.
    const unasked = encodeFrame({ type: 'voids', ops: [wanted.bytes] });
    expect(session.receive(unasked).map((c) => (c.kind === 'send' ? c.frame : c.kind))).toEqual([{ type: 'credit', bytes: unasked.length }]);

    // More wanted ids than remembered: the oldest are forgotten; the session stays open.
    const flooded = facing(x);
    flooded.receive(helloFrom(peer));
    for (let i = 0; i * MAX_WANT_IDS <= 2 * MAX_WANTED_IDS; i++) {
      const ids = Array.from({ length: MAX_WANT_IDS }, (_, k) => (i * MAX_WANT_IDS + k).toString(16).padStart(64, '0'));
      for (const c of flooded.receive(encodeFrame({ type: 'want', ids }))) if (c.kind === 'lookup') flooded.voidsRead([], c.frameBytes);
    }
    expect(flooded.closed).toBe(false);
  });

  it('asks again when the store grows, skips ids already asked, and sends a want only with credit for it', () => {
    const { log, proof } = forkedSetup();
    const y = new MemNode('vy4');
    y.logs.set(log.device, [...log.b]);
    y.forks = [proof];
    const session = facing(y, TIGHT);
    session.receive(helloFrom(new MemNode('vp4'), { maxFrameBytes: MIN_FRAME_BYTES, windowBytes: MIN_FRAME_BYTES }));
    expect(session.receive(encodeFrame({ type: 'caughtUp' }))).toMatchObject([{ kind: 'missing', exclude: new Set() }]);
    const ids = Array.from({ length: MAX_WANT_IDS + 1 }, (_, k) => k.toString(16).padStart(64, 'a'));
    // The first 64 go out in one frame; the 65th waits for its own.
    const first = session.missing(ids).flatMap((c) => (c.kind === 'send' ? [c.frame] : []));
    expect(first.filter((f) => f.type === 'want').map((f) => (f as Frame & { type: 'want' }).ids.length)).toEqual([MAX_WANT_IDS, 1]);
    // An op arriving through another session (the store grew): ask again, excluding what was asked.
    const again = session.localAdvanced({}).find((c): c is Command & { kind: 'missing' } => c.kind === 'missing');
    expect([...again!.exclude].sort()).toEqual([...ids].sort());
    // With no credit left, a want waits until the peer credits us.
    const spend = session.missing([]).length; // nothing new
    expect(spend).toBe(0);
    const fill = Array.from({ length: 5000 }, (_, k) => k.toString(16).padStart(64, 'b'));
    const burst = session.missing(fill).flatMap((c) => (c.kind === 'send' ? [c.frame.type] : []));
    const sent = burst.filter((t) => t === 'want').length;
    expect(sent).toBeLessThan(Math.ceil(fill.length / MAX_WANT_IDS));
    const later = session.receive(encodeFrame({ type: 'credit', bytes: MIN_FRAME_BYTES }));
    expect(later.some((c) => c.kind === 'send' && c.frame.type === 'want')).toBe(true);
  });
});
