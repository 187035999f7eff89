/**
 * A hostile peer for mesh tests: its own libp2p node (TCP, Noise, Yamux, identify; loopback only,
 * no mDNS) that dials an honest FieldNode, opens the sync protocol and speaks it by hand, one
 * length-prefixed frame at a time, so a test can send exactly the bytes it wants: well-formed
 * frames, garbage, absurd length prefixes, forged certificates and ops, floods.
 *
 * Also here: a small team fixture (HQ key, two honest enrolled FieldNodes syncing over loopback),
 * a log writer that authors ops for any key through core/author.ts, and a cleanup registry that
 * stops every node and libp2p instance and removes temp dirs after each test, also on failure.
 */
import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { generateKeyPair } from '@libp2p/crypto/keys';
import { identify } from '@libp2p/identify';
import type { Connection, Ed25519PrivateKey, Libp2p, Stream } from '@libp2p/interface';
import { tcp } from '@libp2p/tcp';
import { lpStream } from '@libp2p/utils';
import { multiaddr } from '@multiformats/multiaddr';
import { createLibp2p } from 'libp2p';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { expect, type ExpectStatic } from 'vitest';
import { authorOp, type AuthorState, type OpDraft } from '../../src/core/author.ts';
import { issueCertificate, type Certificate, type Role } from '../../src/core/cert.ts';
import { EMPTY_TIP } from '../../src/core/chain.ts';
import { HLC_ZERO } from '../../src/core/hlc.ts';
import { signerFromSeed, type DeviceId, type DeviceSigner } from '../../src/core/keys.ts';
import type { Op } from '../../src/core/op.ts';
import { decodeFrame, encodeFrame, SYNC_PROTOCOL, SYNC_VERSION, type Frame, type Tips } from '../../src/core/sync/frames.ts';
import type { VersionVector } from '../../src/core/version-vector.ts';
import type { MeshEvent, MeshOptions } from '../../src/net/mesh.ts';
import { loadOrCreateDeviceKey } from '../../src/node/device-key.ts';
import { enroll } from '../../src/node/enroll.ts';
import { FieldNode } from '../../src/node/field-node.ts';
import { sleep, waitFor } from './helpers.ts';

export { sleep };

/** waitFor (helpers.ts) with the check first, as these tests read: polls every `everyMs`, throws after `timeoutMs`. */
export const waitUntil = <T>(check: () => T | Promise<T>, what: string, timeoutMs = 10_000, everyMs = 20): Promise<NonNullable<T>> => waitFor(what, check, timeoutMs, everyMs);

/**
 * Per-test cleanup: closers run when the test finishes (passed or failed), in reverse order of
 * registration; every closer runs even if an earlier one fails. Pass the test context (its
 * `onTestFinished` and `expect` work for concurrent tests too).
 */
export function cleanupFor(test: { onTestFinished: (fn: () => Promise<void>) => void; expect: ExpectStatic }) {
  const closers: (() => Promise<unknown>)[] = [];
  test.onTestFinished(async () => {
    const errors: unknown[] = [];
    for (const close of closers.splice(0).reverse()) {
      try {
        await close();
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length > 0) throw new AggregateError(errors, 'cleanup failed');
  });
  return {
    /** The test's own expect (soft assertions need it in concurrent tests). */
    expect: test.expect,
    add(close: () => Promise<unknown>): void {
      closers.push(close);
    },
    async dir(prefix = 'fm-hostile-'): Promise<string> {
      const dir = await mkdtemp(join(tmpdir(), prefix));
      closers.push(() => rm(dir, { recursive: true, force: true }));
      return dir;
    },
  };
}
export type Cleanup = ReturnType<typeof cleanupFor>;

/** How the hostile side saw the stream end. */
export interface StreamEnd {
  /** 'eof': the honest side closed its end; 'reset': aborted or reset; 'error': a read error. */
  readonly how: 'eof' | 'reset' | 'error';
  readonly error?: Error;
  readonly atMs: number;
}

/** One sync stream to an honest node, driven by hand. Incoming frames are read (and credited) in the background. */
export class HostileSession {
  readonly stream: Stream;
  readonly connection: Connection;
  /** Every frame received from the honest node, in order. */
  readonly frames: Frame[] = [];
  /** Payloads that did not decode as frames. */
  readonly undecodable: Uint8Array[] = [];
  /** Op bytes received in ops frames. */
  bytesIn = 0;
  /** Whether to answer every ops frame with a credit frame, like an honest receiver. */
  autoCredit = true;
  readonly ended: Promise<StreamEnd>;
  private end: StreamEnd | null = null;
  private readonly lp: ReturnType<typeof lpStream>;
  private readonly listeners: (() => void)[] = [];

  constructor(stream: Stream, connection: Connection) {
    this.stream = stream;
    this.connection = connection;
    this.lp = lpStream(stream, { maxDataLength: 16 * 1024 * 1024, maxBufferSize: 32 * 1024 * 1024 });
    this.ended = new Promise((resolve) => (this.settle = resolve));
    stream.addEventListener('close', (event) => this.finish(event.error !== undefined ? 'reset' : 'eof', event.error), { once: true });
    void this.readLoop();
  }

  private settle: (end: StreamEnd) => void = () => undefined;

  private finish(how: StreamEnd['how'], error?: Error): void {
    if (this.end !== null) return;
    this.end = { how, ...(error !== undefined ? { error } : {}), atMs: Date.now() };
    this.settle(this.end);
    for (const l of this.listeners.splice(0)) l();
  }

  private async readLoop(): Promise<void> {
    try {
      for (;;) {
        const payload = (await this.lp.read()).subarray();
        try {
          const frame = decodeFrame(payload, 16 * 1024 * 1024);
          this.frames.push(frame);
          if (frame.type === 'ops') {
            this.bytesIn += payload.length;
            if (this.autoCredit) void this.send({ type: 'credit', bytes: payload.length }).catch(() => undefined);
          }
        } catch {
          this.undecodable.push(payload);
        }
        for (const l of this.listeners.splice(0)) l();
      }
    } catch (err) {
      const e = err as Error;
      this.finish(e.name === 'UnexpectedEOFError' ? 'eof' : this.stream.status === 'reset' || this.stream.status === 'aborted' ? 'reset' : 'error', e);
    }
  }

  /** Null while the stream is open (as far as this side has seen). */
  get endedAs(): StreamEnd | null {
    return this.end;
  }

  /** The honest node's goodbye, if it sent one. */
  get goodbye(): (Frame & { type: 'goodbye' }) | undefined {
    return this.frames.find((f): f is Frame & { type: 'goodbye' } => f.type === 'goodbye');
  }

  get hello(): (Frame & { type: 'hello' }) | undefined {
    return this.frames.find((f): f is Frame & { type: 'hello' } => f.type === 'hello');
  }

  /** Sends one frame, length-prefixed. */
  async send(frame: Frame): Promise<void> {
    await this.lp.write(encodeFrame(frame));
  }

  /** Sends an arbitrary payload with a correct length prefix. */
  async sendPayload(payload: Uint8Array): Promise<void> {
    await this.lp.write(payload);
  }

  /** Sends raw bytes with no framing at all (a forged length prefix, garbage), waiting for drain when the stream asks. */
  async sendRaw(bytes: Uint8Array): Promise<void> {
    if (!this.stream.send(bytes)) await this.stream.onDrain({ signal: AbortSignal.timeout(10_000) });
  }

  /** Sends our hello: the defaults are a peer of `team` with generous limits and an empty vector. */
  async sendHello(options: { team: string; hq: DeviceId; cert: Uint8Array; tips?: Tips; maxFrameBytes?: number; windowBytes?: number; version?: number }): Promise<void> {
    await this.send({
      type: 'hello',
      version: options.version ?? SYNC_VERSION,
      team: options.team,
      hq: options.hq,
      cert: options.cert,
      tips: options.tips ?? {},
      maxFrameBytes: options.maxFrameBytes ?? 1024 * 1024,
      windowBytes: options.windowBytes ?? 64 * 1024 * 1024,
    });
  }

  /** Waits for a received frame matching `match` (also one received earlier). */
  async waitForFrame<T extends Frame>(match: (f: Frame) => f is T, what: string, timeoutMs?: number): Promise<T>;
  async waitForFrame(match: (f: Frame) => boolean, what: string, timeoutMs?: number): Promise<Frame>;
  async waitForFrame(match: (f: Frame) => boolean, what: string, timeoutMs = 5000): Promise<Frame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.frames.find(match);
      if (found !== undefined) return found;
      if (this.end !== null) throw new Error(`stream ended (${this.end.how}: ${this.end.error?.message ?? ''}) before ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.listeners.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Waits for the stream to end; throws if it is still open after `timeoutMs`. */
  async waitEnded(timeoutMs = 5000): Promise<StreamEnd> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        this.ended,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`stream still open after ${timeoutMs} ms`)), timeoutMs);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  abort(): void {
    this.stream.abort(new Error('hostile peer done'));
  }
}

/** A hostile device: its own key, libp2p node and signer, speaking the sync protocol by hand. */
export class HostilePeer {
  readonly libp2p: Libp2p;
  readonly privateKey: Ed25519PrivateKey;
  readonly signer: DeviceSigner;
  readonly sessions: HostileSession[] = [];

  private constructor(libp2p: Libp2p, privateKey: Ed25519PrivateKey) {
    this.libp2p = libp2p;
    this.privateKey = privateKey;
    this.signer = signerFromSeed(privateKey.raw.subarray(0, 32));
  }

  /** Starts a hostile node (stopped by `cleanup` after the test). */
  static async create(cleanup: Cleanup, privateKey?: Ed25519PrivateKey): Promise<HostilePeer> {
    const key = privateKey ?? (await generateKeyPair('Ed25519'));
    const libp2p = await createLibp2p({
      privateKey: key,
      addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
      transports: [tcp()],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      peerDiscovery: [],
      services: { identify: identify() },
      connectionManager: { inboundConnectionThreshold: 1000, maxIncomingPendingConnections: 64 },
    });
    const peer = new HostilePeer(libp2p, key);
    cleanup.add(() => peer.stop());
    return peer;
  }

  get device(): DeviceId {
    return this.signer.device;
  }

  /** Dials `address` (a multiaddr with /p2p/) and opens the sync protocol. Throws when refused. */
  async open(address: string, timeoutMs = 5000): Promise<HostileSession> {
    const ma = multiaddr(address);
    const stream = await this.libp2p.dialProtocol(ma, SYNC_PROTOCOL, { signal: AbortSignal.timeout(timeoutMs) });
    const remote = ma.getComponents().find((c) => c.name === 'p2p')?.value;
    const connection = this.libp2p.getConnections().find((c) => c.streams.includes(stream)) ?? this.libp2p.getConnections().find((c) => c.remotePeer.toString() === remote);
    if (connection === undefined) {
      stream.abort(new Error('no connection'));
      throw new Error('stream opened on a connection that vanished');
    }
    const session = new HostileSession(stream, connection);
    this.sessions.push(session);
    return session;
  }

  /** Whether the honest node at `address` would talk sync with us now: we get its hello frame. */
  async isAccepted(address: string, timeoutMs = 3000): Promise<{ accepted: true; session: HostileSession } | { accepted: false; reason: string }> {
    let session: HostileSession;
    try {
      session = await this.open(address, timeoutMs);
    } catch (err) {
      return { accepted: false, reason: `dial refused: ${(err as Error).message}` };
    }
    try {
      await session.waitForFrame((f) => f.type === 'hello', 'the honest hello', timeoutMs);
      return { accepted: true, session };
    } catch (err) {
      session.abort();
      return { accepted: false, reason: (err as Error).message };
    }
  }

  /** Connections to `peer` still open on our side. */
  connectionsTo(peer: DeviceId): Connection[] {
    return this.libp2p.getConnections().filter((c) => c.remotePeer.toString() === peer && c.status === 'open');
  }

  /** Waits until no connection to `peer` is open on our side (the honest node hung up). */
  async waitDisconnected(peer: DeviceId, timeoutMs = 5000): Promise<void> {
    await waitUntil(() => this.connectionsTo(peer).length === 0, `the connection to ${peer} to close`, timeoutMs);
  }

  /** Closes every connection to `peer` from our side. */
  async hangUp(peer: DeviceId): Promise<void> {
    for (const c of this.libp2p.getConnections()) if (c.remotePeer.toString() === peer) await c.close().catch(() => c.abort(new Error('hang up')));
  }

  async stop(): Promise<void> {
    for (const s of this.sessions) if (s.endedAs === null) s.abort();
    await this.libp2p.stop();
  }
}

/** A device log written outside any node through core/author.ts, for any key (enrolled or not). */
export class LogWriter {
  readonly signer: DeviceSigner;
  readonly team: string;
  readonly user: string;
  state: AuthorState = { tip: EMPTY_TIP, clock: HLC_ZERO };
  readonly ops: Op[] = [];
  private physicalMs: number;

  constructor(signer: DeviceSigner, team: string, user = 'mallory', startMs = Date.now()) {
    this.signer = signer;
    this.team = team;
    this.user = user;
    this.physicalMs = startMs;
  }

  get device(): DeviceId {
    return this.signer.device;
  }

  write(draft: OpDraft, physicalMs?: number): Op {
    this.physicalMs = physicalMs ?? this.physicalMs + 1;
    const { op, state } = authorOp({ signer: this.signer, team: this.team, user: this.user }, this.state, this.physicalMs, draft);
    this.state = state;
    this.ops.push(op);
    return op;
  }

  create(entity: string, fields: Record<string, string | number>, domain = 'evidence'): Op {
    return this.write({ type: 'create', domain, entity, base: [], fields });
  }
}

/** A fresh Ed25519 key with its signer. */
export async function freshKey(): Promise<{ privateKey: Ed25519PrivateKey; signer: DeviceSigner }> {
  const privateKey = await generateKeyPair('Ed25519');
  return { privateKey, signer: signerFromSeed(privateKey.raw.subarray(0, 32)) };
}

export const DOMAINS = { case: 'merge', evidence: 'merge' } as const;
export const TEAM = 'hostile-t';
const DAY = 24 * 3600 * 1000;

export interface Fingerprint {
  readonly vv: VersionVector;
  readonly stateHash: string;
  readonly counts: Record<string, number>;
}

export interface Before {
  readonly fingerprint: Fingerprint;
  readonly eventsAt: number;
}

export interface TeamOptions {
  /** Penalty back-off of the honest node under attack (A). @default 1500 */
  readonly penaltyMs?: number;
  readonly limits?: MeshOptions['limits'];
  /** Ops A and B each write before they connect. @default 2 */
  readonly opsEach?: number;
}

/**
 * A team: HQ's key (in its data dir, as `enroll` reads it), and two enrolled field nodes A and B
 * listening on loopback and syncing with each other. A is the node the hostile peer attacks.
 */
export class TestTeam {
  readonly team = TEAM;
  readonly hq: DeviceSigner;
  readonly hqDir: string;
  readonly a: FieldNode;
  readonly b: FieldNode;
  readonly penaltyMs: number;
  /** The test's expect, for soft assertions. */
  readonly expect: ExpectStatic;
  /** Peer events of A, as they come. */
  readonly eventsA: MeshEvent[] = [];
  /** The test's temp dir (HQ, A and B data dirs below it). */
  readonly dir: string;
  private enrolled = 0;

  private constructor(fields: { hq: DeviceSigner; hqDir: string; a: FieldNode; b: FieldNode; penaltyMs: number; dir: string; expect: ExpectStatic }) {
    this.expect = fields.expect;
    this.hq = fields.hq;
    this.hqDir = fields.hqDir;
    this.a = fields.a;
    this.b = fields.b;
    this.penaltyMs = fields.penaltyMs;
    this.dir = fields.dir;
  }

  static async start(cleanup: Cleanup, options: TeamOptions = {}): Promise<TestTeam> {
    const dir = await cleanup.dir();
    const hqDir = join(dir, 'hq');
    // HQ opened once as role server creates its key and self-issued certificate; tests sign with its key.
    const hqNode = await FieldNode.open({ dataDir: hqDir, team: TEAM, user: 'boss', role: 'server', domains: DOMAINS });
    await hqNode.close();
    const { key } = await loadOrCreateDeviceKey(hqDir);
    for (const [name, user] of [['a', 'alice'], ['b', 'bob']] as const) await enroll({ hqDataDir: hqDir, dataDir: join(dir, name), team: TEAM, user, role: 'field' });
    const a = await FieldNode.open({ dataDir: join(dir, 'a'), team: TEAM, user: 'alice', domains: DOMAINS });
    cleanup.add(() => a.close());
    const b = await FieldNode.open({ dataDir: join(dir, 'b'), team: TEAM, user: 'bob', domains: DOMAINS });
    cleanup.add(() => b.close());
    const penaltyMs = options.penaltyMs ?? 1500;
    const team = new TestTeam({ hq: key.signer, hqDir, a, b, penaltyMs, dir, expect: cleanup.expect });
    const sub = a.subscribe({ kinds: ['peer'] });
    cleanup.add(async () => sub.close());
    void (async () => {
      try {
        for await (const e of sub) if (e.kind === 'peer') team.eventsA.push(e.event);
      } catch {
        // overflow: the test will miss events and say so
      }
    })();
    for (let i = 0; i < (options.opsEach ?? 2); i++) {
      await a.mutate({ type: 'create', domain: 'evidence', entity: `a${i}`, fields: { n: i, by: 'alice' } });
      await b.mutate({ type: 'create', domain: 'evidence', entity: `b${i}`, fields: { n: i, by: 'bob' } });
    }
    await a.start({ listen: ['/ip4/127.0.0.1/tcp/0'], penaltyMs, ...(options.limits !== undefined ? { limits: options.limits } : {}) });
    cleanup.add(() => a.stop());
    await b.start({ listen: ['/ip4/127.0.0.1/tcp/0'], peers: a.addresses(), redialMinMs: 100, redialMaxMs: 1000 });
    cleanup.add(() => b.stop());
    await team.converged('A and B to converge at start');
    return team;
  }

  get addressA(): string {
    const address = this.a.addresses()[0];
    if (address === undefined) throw new Error('A is not listening');
    return address;
  }

  /** A certificate signed by the real HQ for `device` (valid from a minute ago for a day unless told). */
  certify(device: DeviceId, options: { team?: string; user?: string; role?: Role; issuedMs?: number; expiresMs?: number } = {}): Certificate {
    const issuedMs = options.issuedMs ?? Date.now() - 60_000;
    this.enrolled++;
    return issueCertificate({ team: options.team ?? TEAM, device, user: options.user ?? `mallory${this.enrolled}`, role: options.role ?? 'field', issuedMs, expiresMs: options.expiresMs ?? issuedMs + DAY }, this.hq);
  }

  /** What must not change when a bad batch is refused. */
  async fingerprint(node: FieldNode = this.a): Promise<Fingerprint> {
    return { vv: node.versionVector(), stateHash: await node.stateHash(), counts: await node.counts() };
  }

  /** Taken just before a bad input: A's fingerprint, and where A's peer events stand. */
  async before(): Promise<Before> {
    return { fingerprint: await this.fingerprint(), eventsAt: this.eventsA.length };
  }

  /** Whether A and B hold the same logs and state. */
  async same(): Promise<boolean> {
    const [va, vb] = [this.a.versionVector(), this.b.versionVector()];
    if (JSON.stringify(sorted(va)) !== JSON.stringify(sorted(vb))) return false;
    return (await this.a.stateHash()) === (await this.b.stateHash());
  }

  async converged(what: string, timeoutMs = 10_000): Promise<void> {
    await waitUntil(() => this.same(), what, timeoutMs, 25);
  }

  /** Both honest nodes write, then must converge: A still serves honest peers. */
  async stillServesHonestPeers(tag: string): Promise<void> {
    await this.b.mutate({ type: 'create', domain: 'case', entity: `after-${tag}-b`, fields: { from: 'bob' } });
    await this.a.mutate({ type: 'create', domain: 'case', entity: `after-${tag}-a`, fields: { from: 'alice' } });
    await this.converged(`A and B to converge after ${tag}`);
    if ((await this.b.get('case', `after-${tag}-a`)) === null || (await this.a.get('case', `after-${tag}-b`)) === null) throw new Error('writes did not cross');
  }

  /** A's peer:closed events naming no device or `device`. */
  closedEvents(device: DeviceId): (MeshEvent & { kind: 'peer:closed' })[] {
    return this.eventsA.filter((e): e is MeshEvent & { kind: 'peer:closed' } => e.kind === 'peer:closed' && (e.device === null || e.device === device));
  }
}

function sorted(vv: VersionVector): [string, number][] {
  return Object.entries(vv).sort(([x], [y]) => (x < y ? -1 : 1));
}

/** An unsigned LEB128 varint of `value` (any safe integer), e.g. a forged length prefix. */
export function varint(value: number): Uint8Array {
  const out: number[] = [];
  while (value >= 0x80) {
    out.push((value % 0x80) | 0x80);
    value = Math.floor(value / 0x80);
  }
  out.push(value);
  return Uint8Array.from(out);
}

/** The bytes of `payload` behind its varint length, as lpStream writes them. */
export function lengthPrefixed(payload: Uint8Array): Uint8Array {
  return concat([varint(payload.length), payload]);
}

export function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A copy of an op envelope with one bit of its signature (the last byte) flipped. */
export function flipSignatureBit(op: Uint8Array): Uint8Array {
  const out = op.slice();
  out[out.length - 1]! ^= 0x01;
  return out;
}

/** Heap plus array buffers after a full garbage collection: what is really retained. */
export function retainedBytes(): number {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

/** Opens a sync stream to A and gets the hostile peer admitted with a valid certificate from the real HQ. */
export async function admitted(team: TestTeam, peer: HostilePeer): Promise<{ session: HostileSession; cert: Certificate }> {
  const session = await peer.open(team.addressA);
  const cert = team.certify(peer.device);
  await session.sendHello({ team: team.team, hq: team.hq.device, cert: cert.bytes });
  await session.waitForFrame((f) => f.type === 'caughtUp', 'the honest caughtUp');
  await waitUntil(() => team.a.peers().some((p) => p.device === peer.device), 'A to list the hostile peer', 5000);
  return { session, cert };
}

export interface DropExpectation {
  /** Close codes acceptable on A's side (the rule the peer broke); empty: any code, as long as A blames the peer. */
  readonly codes: readonly string[];
  /** Whether A's fingerprint must equal `before` (false when the test checks what A may keep itself). @default true */
  readonly unchanged?: boolean;
  /** Taken before the bad input: A's fingerprint must be unchanged, and its events are read from there on. */
  readonly before: Before;
  /** Names the honest writes made afterwards. */
  readonly tag: string;
  /** A valid certificate of the hostile device: after the back-off it is admitted with it again. */
  readonly readmitWith?: Uint8Array;
}

/**
 * Everything a refused bad input must lead to: A ends the stream and hangs up, stores nothing
 * of the bad batch (vector, state hash and counts unchanged, verify clean), reports peer:closed
 * with blame (checked softly, so the rest still runs), refuses the peer during the back-off,
 * accepts it again afterwards, and still syncs with honest B.
 */
export async function expectDropped(team: TestTeam, peer: HostilePeer, session: HostileSession, want: DropExpectation): Promise<void> {
  const end = await session.waitEnded(3000);
  // A hangs up on a peer it blames (and only then); a connection left open means no blame, no back-off.
  await peer.waitDisconnected(team.a.device, 3000).catch((err: Error) => {
    throw new Error(`A ended the stream but kept the connection, so it did not blame the peer (${err.message}); A's peer events since the bad input: ${JSON.stringify(team.eventsA.slice(want.before.eventsAt))}`);
  });

  if (want.unchanged !== false) expect(await team.fingerprint(), 'A stored something of the bad input').toEqual(want.before.fingerprint);
  expect((await team.a.verify()).problems).toEqual([]);
  expect(team.a.peers().some((p) => p.device === peer.device), 'A still lists the hostile peer').toBe(false);
  expect(team.a.peers().some((p) => p.device === team.b.device), 'A dropped honest B').toBe(true);
  expect(team.eventsA.filter((e) => e.kind === 'peer:closed' && e.device === team.b.device), 'A closed or blamed honest B').toEqual([]);

  const during = await peer.isAccepted(team.addressA, 2000);
  expect(during.accepted, 'A accepted the peer again during its back-off').toBe(false);
  expect(Date.now() - end.atMs, 'the refused attempt ran inside the back-off').toBeLessThan(team.penaltyMs);
  await peer.waitDisconnected(team.a.device, 5000);

  const since = () => team.eventsA.slice(want.before.eventsAt);
  const blamed = await waitUntil(() => since().find((e) => e.kind === 'peer:closed' && e.blame && (want.codes.length === 0 || want.codes.includes(e.code))), 'a blaming peer:closed event', 500).catch(() => undefined);
  team.expect.soft(blamed, `A should emit peer:closed with blame true and code ${want.codes.join('|') || '(any)'}; A's peer events since the bad input: ${JSON.stringify(since())}`).toBeDefined();
  if (blamed !== undefined && blamed.kind === 'peer:closed') expect([null, peer.device]).toContain(blamed.device);

  // B is served while the hostile peer sits out its back-off.
  await team.stillServesHonestPeers(want.tag);

  await sleep(Math.max(0, end.atMs + team.penaltyMs + 150 - Date.now()));
  const after = await peer.isAccepted(team.addressA, 3000);
  expect(after.accepted, `A still refuses the peer after its back-off: ${'reason' in after ? after.reason : ''}`).toBe(true);
  if (after.accepted && want.readmitWith !== undefined) {
    await after.session.sendHello({ team: team.team, hq: team.hq.device, cert: want.readmitWith });
    await after.session.waitForFrame((f) => f.type === 'caughtUp', 'caughtUp after re-admission');
    await waitUntil(() => team.a.peers().some((p) => p.device === peer.device), 'A to admit the peer again', 5000);
  }
  if (after.accepted) {
    after.session.abort();
    await waitUntil(() => !team.a.peers().some((p) => p.device === peer.device), 'A to notice the hostile peer left', 5000);
  }
}
