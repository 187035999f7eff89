/**
 * The mesh: a libp2p node (TCP, Noise, Yamux, identify, optional mDNS) that finds team peers,
 * runs one sync session per peer over `/fieldmesh/sync/3.0.0`, pushes every new op to every
 * peer that lacks it, and keeps redialling static peers with capped exponential backoff and
 * jitter. A peer that breaks the protocol is dropped and refused for a back-off period.
 */
import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { identify } from '@libp2p/identify';
import type { Connection, Libp2p, PeerId, Stream } from '@libp2p/interface';
import { mdns } from '@libp2p/mdns';
import { tcp } from '@libp2p/tcp';
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr';
import { createLibp2p } from 'libp2p';
import { EventEmitter } from 'node:events';
import { checkAdmission, decodeCertificate, type Role } from '../core/cert.ts';
import { FieldmeshError, InvalidInputError } from '../core/errors.ts';
import { isDeviceId, type DeviceId } from '../core/keys.ts';
import { SYNC_PROTOCOL } from '../core/sync/frames.ts';
import { DEFAULT_SYNC_LIMITS, SyncSession } from '../core/sync/session.ts';
import type { MeshHost } from './host.ts';
import { SessionDriver, type DriverLimits } from './session-driver.ts';

export interface MeshOptions {
  /** Multiaddrs to listen on (TCP). @default ['/ip4/127.0.0.1/tcp/0'] */
  readonly listen?: readonly string[];
  /**
   * Peers to keep dialling: TCP multiaddrs, best with /p2p/<id>. Without it the PeerId that
   * answers a dial is taken as the link's peer from then on.
   */
  readonly peers?: readonly string[];
  /** Discover peers on the local network by mDNS. @default false */
  readonly mdns?: boolean;
  /** mDNS query interval. @default 2000 */
  readonly mdnsIntervalMs?: number;
  /** Redial back-off: first delay and cap. @default 500 / 30000 */
  readonly redialMinMs?: number;
  readonly redialMaxMs?: number;
  /** How long a peer that broke the protocol is refused. @default 60000 */
  readonly penaltyMs?: number;
  /** Most open connections. @default 128 */
  readonly maxConnections?: number;
  readonly limits?: Partial<DriverLimits>;
  /** Random source for jitter. @default Math.random */
  readonly random?: () => number;
  /** How often the certificates of the peers we sync with are checked for expiry. @default 60000 */
  readonly certCheckMs?: number;
}

export const DEFAULT_DRIVER_LIMITS: DriverLimits = { ...DEFAULT_SYNC_LIMITS, handshakeTimeoutMs: 10_000, writeTimeoutMs: 30_000, answerTimeoutMs: 30_000 };

export interface PeerInfo {
  readonly device: DeviceId;
  readonly user: string | null;
  readonly role: Role | null;
  readonly address: string;
  readonly lastSeenMs: number;
  readonly connectedSinceMs: number;
  /** Ops of ours the peer lacks / ops of the peer's we lack, as far as we know. */
  readonly theyLack: number;
  readonly weLack: number;
  readonly caughtUp: boolean;
}

/** A static peer (e.g. the uplink to HQ) and how redialling it goes. */
export interface LinkInfo {
  readonly address: string;
  /** Whether a session with the peer is up. */
  readonly connected: boolean;
  /** Dials since a session with this link's peer last came up (its admission resets the back-off). */
  readonly attempts: number;
  readonly lastError: string | null;
  /** When the next dial is due (ms since epoch); null while connected, before the first, or never (the peer is revoked). */
  readonly nextAttemptMs: number | null;
}

export type MeshEvent =
  | { readonly kind: 'peer:admitted'; readonly device: DeviceId }
  /** `blame`: we refused the peer for a fault; `byPeer`: the peer ended the session (with `code`). */
  | { readonly kind: 'peer:closed'; readonly device: DeviceId | null; readonly code: string; readonly blame: boolean; readonly byPeer: boolean }
  | { readonly kind: 'peer:caughtUp'; readonly device: DeviceId };

const SERVICE_TAG = 'fieldmesh.local';

/** A static peer: its address as given, parsed once, and the PeerId it names (null without /p2p/). */
interface StaticPeer {
  readonly address: string;
  readonly target: Multiaddr;
  readonly peer: DeviceId | null;
}

/**
 * Parses a multiaddr we are to dial or listen on. It must parse, name a TCP port (the only
 * transport), and any /p2p/ must name a device id (an Ed25519 PeerId). Checked before anything
 * starts, so a bad address is an error of `start`, never a crash of a timer later on.
 */
export function checkMultiaddr(address: unknown, what: 'peer' | 'listen'): Multiaddr {
  const example = what === 'peer' ? '/ip4/127.0.0.1/tcp/4001/p2p/<device>' : '/ip4/127.0.0.1/tcp/4001';
  const shown = typeof address === 'string' ? address.slice(0, 200) : typeof address;
  const bad = (why: string) => new InvalidInputError('BAD_MULTIADDR', `${what} address ${JSON.stringify(shown)} ${why}; e.g. ${example}`, { address: shown, what });
  if (typeof address !== 'string') throw bad('is not a string');
  let parsed: Multiaddr;
  try {
    parsed = multiaddr(address);
  } catch (err) {
    throw bad(`is not a multiaddr (${(err as Error).message})`);
  }
  const components = parsed.getComponents();
  if (!components.some((c) => c.name === 'tcp')) throw bad('names no TCP port');
  const ids = components.filter((c) => c.name === 'p2p');
  if (ids.length > 1 || (ids.length === 1 && what === 'listen')) throw bad(what === 'listen' ? 'names a PeerId (/p2p/): listen addresses name none' : 'names more than one PeerId');
  if (ids.length === 1 && !isDeviceId(ids[0]!.value)) throw bad('names no device id after /p2p/ (an Ed25519 PeerId)');
  return parsed;
}

/** Why listening fails, per errno code, in the words a user reads. */
const LISTEN_REASONS: Readonly<Record<string, string>> = { EADDRINUSE: 'address already in use', EADDRNOTAVAIL: 'no such local address', EACCES: 'permission denied' };

/**
 * libp2p reports addresses it could not listen on as one multi-line text
 * (`UnsupportedListenAddressesError`, one line per address with the system error): made a
 * FieldmeshError whose code is the errno code (`EADDRINUSE`, ...; `LISTEN_FAILED` when none is given).
 */
function listenError(err: unknown, listen: readonly string[]): unknown {
  if ((err as Error | undefined)?.name !== 'UnsupportedListenAddressesError') return err;
  // libp2p gives no structured field: its text is all there is to read the code from.
  const line = /^\s*(\/\S+): .*?\b(E[A-Z]{2,})\b/m.exec((err as Error).message);
  const address = line?.[1] ?? listen.join(', ');
  const code = line?.[2] ?? 'LISTEN_FAILED';
  return new FieldmeshError(code, `cannot listen on ${address}: ${LISTEN_REASONS[code] ?? code}`, { address, listen: [...listen] });
}

const SESSION_CLOSED = 'session closed: ';
const REFUSED_BEFORE_SESSION = 'the peer closed the connection before any session: it refuses us (HQ revoked us, or it holds a back-off after refusing us)';
const REFUSED_THEN_LAST = `${REFUSED_BEFORE_SESSION}; last `;

export class Mesh {
  readonly events = new EventEmitter();
  private readonly node: MeshHost;
  private readonly options: MeshOptions;
  private readonly limits: DriverLimits;
  private libp2p: Libp2p | null = null;
  private readonly drivers = new Map<DeviceId, SessionDriver>();
  private readonly pending = new Set<SessionDriver>();
  /** Peers we refused for a fault: not dialled nor accepted before `untilMs`. */
  private readonly penalties = new Map<string, { readonly untilMs: number; readonly code: string }>();
  private readonly redial = new Map<string, { attempt: number; nextMs: number; lastError: string | null }>();
  private readonly connectedSince = new Map<DeviceId, number>();
  /** Static peer addresses with a dial or an unadmitted session under way. */
  private readonly dialing = new Set<string>();
  /** Peers we are opening a session with (between dialProtocol and the session's start). */
  private readonly opening = new Set<string>();
  /** Peers found by discovery that we are dialling. */
  private readonly discoveryDials = new Set<string>();
  /** Connections a session ran on (its end says why it ended): those without one closed before any session. */
  private readonly sessionConnections = new WeakSet<Connection>();
  private timer: NodeJS.Timeout | null = null;
  private certTimer: NodeJS.Timeout | null = null;
  private unsubscribe: (() => void) | null = null;
  private stopping = false;
  private readonly random: () => number;
  private readonly listen: readonly string[];
  private readonly statics: readonly StaticPeer[];
  /** PeerIds that answered dials of static addresses without /p2p/ (address -> PeerId). */
  private readonly learned = new Map<string, DeviceId>();

  /** Throws InvalidInputError BAD_MULTIADDR, naming the address, for any listen or peer address that is not a TCP multiaddr. */
  constructor(node: MeshHost, options: MeshOptions = {}) {
    if (node.certificate === null) throw new InvalidInputError('NOT_ENROLLED', 'an unenrolled node cannot join the mesh: enroll it first');
    this.node = node;
    this.options = options;
    this.limits = { ...DEFAULT_DRIVER_LIMITS, ...options.limits };
    this.random = options.random ?? Math.random;
    this.listen = [...(options.listen ?? ['/ip4/127.0.0.1/tcp/0'])];
    for (const address of this.listen) checkMultiaddr(address, 'listen');
    this.statics = (options.peers ?? []).map((address) => {
      const target = checkMultiaddr(address, 'peer');
      return { address, target, peer: target.getComponents().find((c) => c.name === 'p2p')?.value ?? null };
    });
  }

  /** The PeerId of a static peer: the one its address names, else the one that answered our last dial of it. */
  private peerOf(link: StaticPeer): DeviceId | undefined {
    return link.peer ?? this.learned.get(link.address);
  }

  get peerId(): string {
    return this.node.device;
  }

  /** Addresses we listen on, with our /p2p/ id. */
  addresses(): string[] {
    return this.libp2p?.getMultiaddrs().map((a) => a.toString()) ?? [];
  }

  async start(): Promise<void> {
    const penalized = (peer: PeerId) => (this.penalties.get(peer.toString())?.untilMs ?? 0) > Date.now() || this.node.isRevoked(peer.toString());
    // libp2p 3 emits `peer:discovery` only for a peer new to its peer store, so after a dropped
    // connection a known peer that mDNS keeps announcing would never be dialled again. Listen to
    // the mDNS service's own `peer` events instead (one per answer, every interval).
    const mdnsDiscovery = mdns({ serviceTag: SERVICE_TAG, interval: this.options.mdnsIntervalMs ?? 2000 });
    const discovery = (components: Parameters<typeof mdnsDiscovery>[0]) => {
      const service = mdnsDiscovery(components);
      service.addEventListener('peer', (event) => this.discovered(event.detail.id, event.detail.multiaddrs));
      return service;
    };
    // createLibp2p starts the node (and stops it again when listening fails).
    this.libp2p = await createLibp2p({
      privateKey: this.node.privateKey,
      addresses: { listen: [...this.listen] },
      transports: [tcp()],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      peerDiscovery: this.options.mdns ? [discovery] : [],
      services: { identify: identify() },
      connectionManager: { maxConnections: this.options.maxConnections ?? 128, inboundConnectionThreshold: 100, maxIncomingPendingConnections: 32 },
      connectionGater: { denyDialPeer: penalized, denyInboundEncryptedConnection: penalized },
    }).catch((err: unknown) => {
      throw listenError(err, this.listen);
    });
    await this.libp2p.handle(SYNC_PROTOCOL, (stream, connection) => this.runSession(stream, connection), { maxInboundStreams: 2, maxOutboundStreams: 2 });
    this.libp2p.addEventListener('peer:discovery', (event) => this.discovered(event.detail.id, event.detail.multiaddrs));
    // One session per pair of peers: the side with the smaller PeerId opens it, on any connection.
    this.libp2p.addEventListener('connection:open', (event) => void this.openSession(event.detail.remotePeer).catch(() => undefined));
    this.libp2p.addEventListener('connection:close', (event) => this.closedBeforeSession(event.detail));
    const offAdvanced = this.node.onAdvanced((tips) => {
      for (const [device, driver] of this.drivers) {
        // A revocation may have arrived with these ops: drop the revoked peer at once.
        if (this.node.isRevoked(device)) driver.stop('CERT_REVOKED', 'device revoked by HQ');
        else driver.dispatch(driver.session.localAdvanced(tips));
      }
    });
    // Fork proofs found here (ingest, bundles) or learned from a peer reach every peer.
    const offFork = this.node.onFork((proof) => {
      for (const driver of this.drivers.values()) driver.dispatch(driver.session.sendForks([proof]));
    });
    // Void ops fetched by id reach the peers that asked us for them.
    const offVoids = this.node.onVoids((envelopes) => {
      for (const driver of this.drivers.values()) driver.dispatch(driver.session.voidsLearned(envelopes));
    });
    this.unsubscribe = () => {
      offAdvanced();
      offFork();
      offVoids();
    };
    await this.libp2p.start();
    this.scheduleRedial(0);
    this.certTimer = setInterval(() => this.dropExpired(), this.options.certCheckMs ?? 60_000);
    this.certTimer.unref();
  }

  /**
   * A session lasts only as long as the peer's certificate: the newest we hold for it (the one
   * that admitted it, or a renewal learned since). Past its expiry the session ends, CERT_EXPIRED,
   * as admission would refuse it now.
   */
  private dropExpired(): void {
    const now = this.node.admissionNowMs();
    for (const [device, driver] of this.drivers) {
      const cert = this.node.certificateOf(device);
      if (cert !== null && now >= cert.expiresMs) driver.stop('CERT_EXPIRED', `certificate of ${device} expired at ${new Date(cert.expiresMs).toISOString()}`);
    }
  }

  async stop(): Promise<void> {
    this.stopping = true;
    if (this.timer !== null) clearTimeout(this.timer);
    if (this.certTimer !== null) clearInterval(this.certTimer);
    this.unsubscribe?.();
    for (const driver of [...this.drivers.values(), ...this.pending]) driver.stop('SHUTDOWN', 'node stopping');
    await this.libp2p?.stop();
    this.libp2p = null;
  }

  /**
   * Passes certificates on to every peer (but the one they came from): certificates learned from a
   * session, a bundle or an enrollment reach the peers before the ops that need them.
   */
  shareCertificates(certs: readonly Uint8Array[], from?: SessionDriver): void {
    for (const driver of this.drivers.values()) if (driver !== from) driver.dispatch(driver.session.sendCerts(certs));
  }

  /** The static peers (uplink included): connected or not, dial attempts, last error, next dial. */
  links(): LinkInfo[] {
    return this.statics.map((link) => {
      const id = this.peerOf(link);
      const connected = id !== undefined && this.drivers.has(id);
      const state = this.redial.get(link.address);
      const never = connected || (id !== undefined && this.node.isRevoked(id));
      return { address: link.address, connected, attempts: state?.attempt ?? 0, lastError: state?.lastError ?? null, nextAttemptMs: never ? null : (state?.nextMs ?? null) };
    });
  }

  peers(): PeerInfo[] {
    return [...this.drivers.entries()].map(([device, driver]) => {
      const cert = this.node.certificateOf(device);
      return {
        device,
        user: cert?.user ?? null,
        role: cert?.role ?? null,
        address: driver.connection.remoteAddr.toString(),
        lastSeenMs: driver.lastSeenMs,
        connectedSinceMs: this.connectedSince.get(device) ?? driver.lastSeenMs,
        theyLack: driver.session.peerBehind,
        weLack: driver.session.weAreBehind,
        caughtUp: driver.session.peerCaughtUp,
      };
    });
  }

  /**
   * Dials a peer now (dial on demand). Resolves once the connection is up and, when we are the
   * side that opens sessions, once the session is admitted (or refused).
   */
  async dial(address: string | Multiaddr): Promise<void> {
    const connection = await this.connect(typeof address === 'string' ? checkMultiaddr(address, 'peer') : address);
    await this.openSession(connection.remotePeer);
  }

  private async connect(target: Multiaddr): Promise<Connection> {
    return this.requireStarted().dial(target, { signal: AbortSignal.timeout(this.limits.handshakeTimeoutMs) });
  }

  /**
   * A peer was found (mDNS repeats this every interval for every peer in earshot): dial it if we
   * have no connection, or open the session if a connection is up without one.
   */
  private discovered(peer: PeerId, addresses: readonly Multiaddr[]): void {
    const libp2p = this.libp2p;
    const id = peer.toString();
    if (libp2p === null || this.stopping || id === this.node.device) return;
    if (libp2p.getConnections(peer).length > 0) {
      void this.openSession(peer).catch(() => undefined);
      return;
    }
    if (this.discoveryDials.has(id)) return;
    this.discoveryDials.add(id);
    // Dial the announced addresses (the peer store may not have merged them yet).
    const target = addresses.length > 0 ? addresses.map((a) => (a.getComponents().some((c) => c.name === 'p2p') ? a : a.encapsulate(`/p2p/${id}`))) : peer;
    void libp2p
      .dial(target, { signal: AbortSignal.timeout(this.limits.handshakeTimeoutMs) })
      .catch(() => undefined)
      .finally(() => this.discoveryDials.delete(id));
  }

  /** Opens the sync session with a connected peer if we are the opener and none runs yet. */
  private async openSession(peer: PeerId): Promise<void> {
    const id = peer.toString();
    if (this.stopping || this.node.device >= id || this.syncingWith(id) || this.opening.has(id)) return;
    this.opening.add(id);
    try {
      const libp2p = this.requireStarted();
      const stream = await libp2p.dialProtocol(peer, SYNC_PROTOCOL, { signal: AbortSignal.timeout(this.limits.handshakeTimeoutMs) });
      const connection = libp2p.getConnections(peer).find((c) => c.streams.includes(stream));
      if (connection === undefined) {
        stream.abort(new Error('connection vanished'));
        return;
      }
      await this.runSession(stream, connection, true);
    } finally {
      this.opening.delete(id);
    }
  }

  /**
   * A static peer that closes our connection before any session ran (its gater refuses us: HQ
   * revoked us, or it holds a back-off after refusing us) leaves its link saying so, not blank.
   */
  private closedBeforeSession(connection: Connection): void {
    if (this.stopping || this.sessionConnections.has(connection)) return;
    const remote = connection.remotePeer.toString();
    for (const link of this.statics) {
      const state = this.redial.get(link.address);
      if (this.peerOf(link) !== remote || state === undefined || this.drivers.has(remote)) continue;
      // The last session's end (CERT_REVOKED, say) is the best clue to why: it is kept.
      const previous = state.lastError ?? '';
      const lastSession = previous.startsWith(SESSION_CLOSED) ? previous : previous.startsWith(REFUSED_THEN_LAST) ? previous.slice(REFUSED_THEN_LAST.length) : null;
      this.redial.set(link.address, { ...state, lastError: lastSession === null ? REFUSED_BEFORE_SESSION : REFUSED_THEN_LAST + lastSession });
    }
  }

  /** Whether a session with the peer is running or being set up. */
  private syncingWith(peer: string): boolean {
    return this.drivers.has(peer) || [...this.pending].some((d) => d.connection.remotePeer.toString() === peer);
  }

  private requireStarted(): Libp2p {
    if (this.libp2p === null) throw new InvalidInputError('NOT_STARTED', 'mesh is not started');
    return this.libp2p;
  }


  /** Runs a session; with `untilAdmitted`, resolves once it is admitted (or over) rather than when it ends. */
  private async runSession(stream: Stream, connection: Connection, untilAdmitted = false): Promise<void> {
    if (this.stopping || this.drivers.has(connection.remotePeer.toString())) {
      stream.abort(new Error(this.stopping ? 'shutting down' : 'already syncing with this peer'));
      return;
    }
    const node = this.node;
    // Tips first: the proofs read after them include every fork point they stop below.
    const tips = await node.syncTips();
    const forks = await node.forkProofs();
    const local = { team: node.team, hq: node.hqDevice, cert: node.certificate!.bytes, tips, certs: () => node.certificates(), forks: () => forks };
    const admit = (bytes: Uint8Array) => {
      const cert = decodeCertificate(bytes);
      checkAdmission(cert, { team: node.team, hqDevice: node.hqDevice }, node.admissionNowMs(), (d) => node.isRevoked(d));
      return cert.device;
    };
    const session = new SyncSession(local, admit, this.limits);
    const driver = new SessionDriver(stream, connection, session, node, this.hooks, this.limits, Date.now);
    this.sessionConnections.add(connection);
    this.pending.add(driver);
    const ended = driver.run().finally(() => this.pending.delete(driver));
    if (!untilAdmitted) return ended;
    await Promise.race([ended, new Promise<void>((resolve) => driver.onAdmitted(resolve))]);
  }

  private readonly hooks = {
    admitted: (driver: SessionDriver, device: DeviceId): boolean => {
      if (this.drivers.has(device)) return false;
      this.pending.delete(driver);
      this.drivers.set(device, driver);
      this.connectedSince.set(device, Date.now());
      // Its links start afresh; other links keep their attempts and why they are down.
      for (const link of this.statics) if (this.peerOf(link) === device) this.redial.delete(link.address);
      // Our store may have grown between hello and admission, and proofs recorded since the
      // session read them reached no session yet (the session sends each proof once).
      driver.dispatch(driver.session.localAdvanced(this.node.versionVector()));
      // (A store that fails to read here is closing: the session ends with it.)
      void this.node.forkProofs().then((proofs) => driver.dispatch(driver.session.sendForks(proofs)), () => undefined);
      this.events.emit('event', { kind: 'peer:admitted', device } satisfies MeshEvent);
      return true;
    },
    closed: (driver: SessionDriver, code: string, blame: boolean, byPeer: boolean): void => {
      const device = driver.session.device;
      if (device !== null && this.drivers.get(device) === driver) {
        this.drivers.delete(device);
        this.connectedSince.delete(device);
      }
      if (blame) this.penalties.set(driver.connection.remotePeer.toString(), { untilMs: Date.now() + (this.options.penaltyMs ?? 60_000), code });
      if (blame) void driver.connection.close().catch(() => undefined);
      // Admitted peers, and any peer refused for a fault (bad certificate, bad hello), are reported.
      // (Before admission only the connection's own PeerId is known for sure: a hello may claim anything.)
      if (driver.admittedAt !== null || blame) {
        this.events.emit('event', { kind: 'peer:closed', device: driver.admittedAt !== null ? device : driver.connection.remotePeer.toString(), code, blame, byPeer } satisfies MeshEvent);
      }
      // A static peer's session that ends (or is refused) says why: its link's last error.
      const remote = driver.connection.remotePeer.toString();
      for (const link of this.statics) {
        if (this.peerOf(link) !== remote || this.drivers.has(remote)) continue;
        const state = this.redial.get(link.address) ?? { attempt: 0, nextMs: 0, lastError: null };
        this.redial.set(link.address, { ...state, lastError: `${SESSION_CLOSED}${code}` });
      }
      if (!this.stopping) this.scheduleRedial(this.options.redialMinMs ?? 500);
    },
    learnedCerts: (from: SessionDriver, certs: readonly Uint8Array[]): void => this.shareCertificates(certs, from),
    caughtUp: (driver: SessionDriver): void => {
      const device = driver.session.device;
      if (device !== null) this.events.emit('event', { kind: 'peer:caughtUp', device } satisfies MeshEvent);
    },
  };

  /** Dials every static peer we are not syncing with, each on its own capped, jittered back-off. */
  private scheduleRedial(delayMs: number): void {
    if (this.stopping || this.statics.length === 0) return;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.redialNow(), delayMs);
    this.timer.unref();
  }

  private async redialNow(): Promise<void> {
    this.timer = null;
    const now = Date.now();
    let soonest = Number.POSITIVE_INFINITY;
    for (const link of this.statics) {
      const { address } = link;
      // A link that is up (or being set up) is not dialled again, whether its address names the peer or we learned it.
      const id = this.peerOf(link);
      if ((id !== undefined && this.syncingWith(id)) || this.dialing.has(address)) continue;
      const state = this.redial.get(address) ?? { attempt: 0, nextMs: 0, lastError: null };
      if (id !== undefined && this.node.isRevoked(id)) {
        // Our gater refuses it for good: no dial, and the link says why.
        this.redial.set(address, { ...state, lastError: 'revoked by HQ: not dialled' });
        continue;
      }
      const penalty = id === undefined ? undefined : this.penalties.get(id);
      if (penalty !== undefined && penalty.untilMs > now) {
        // Our own gater would refuse the dial (with libp2p's words): wait the penalty out, and say why.
        const lastError = `${SESSION_CLOSED}${penalty.code}; not dialled again before ${new Date(penalty.untilMs).toISOString()}`;
        this.redial.set(address, { ...state, nextMs: penalty.untilMs, lastError });
        soonest = Math.min(soonest, penalty.untilMs);
        continue;
      }
      if (state.nextMs > now) {
        soonest = Math.min(soonest, state.nextMs);
        continue;
      }
      const min = this.options.redialMinMs ?? 500;
      const max = this.options.redialMaxMs ?? 30_000;
      const backoff = Math.min(max, min * 2 ** Math.min(state.attempt, 30));
      const next = { attempt: state.attempt + 1, nextMs: now + backoff / 2 + this.random() * (backoff / 2), lastError: state.lastError };
      this.redial.set(address, next);
      soonest = Math.min(soonest, next.nextMs);
      this.dialing.add(address);
      void this.connect(link.target)
        .then((connection) => {
          if (link.peer === null) this.learned.set(address, connection.remotePeer.toString());
          return this.openSession(connection.remotePeer);
        })
        .catch((err: Error) => {
          const current = this.redial.get(address);
          if (current !== undefined) this.redial.set(address, { ...current, lastError: err.message });
        })
        .finally(() => this.dialing.delete(address));
    }
    if (Number.isFinite(soonest)) this.scheduleRedial(Math.max(50, soonest - Date.now()));
  }
}
