/**
 * FieldNode: what applications embed. One device, one data dir: capture changes offline
 * (mutate), read the materialized state (get, query), watch it change (subscribe), and track
 * every op through pending, synced, failed and conflict.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { authorOp, type OpDraft } from '../core/author.ts';
import { EMPTY_TIP, type LogTip } from '../core/chain.ts';
import { InvalidInputError, RuleViolationError } from '../core/errors.ts';
import { verifyForkProof, type ForkProof } from '../core/chain.ts';
import type { Hlc } from '../core/hlc.ts';
import { isDeviceId, type DeviceId } from '../core/keys.ts';
import { viewDigestBytes, isVisible } from '../core/materialize.ts';
import { DATA_OP_TYPES, opIdOf, parseOp, type DataOpType, type Op, type OpId, type RevokeBody } from '../core/op.ts';
import type { TipId, Tips } from '../core/sync/frames.ts';
import { decodeBundle, encodeBundle } from '../core/bundle.ts';
import { missingRanges, type VersionVector } from '../core/version-vector.ts';
import { STATUSES, type OpStatus, type StatusName } from '../core/status.ts';
import { policyOf, type DomainPolicy, type ResolutionConfig, type Strategy } from '../core/strategies.ts';
import { checkFields, checkValue, isPlainObject, type Fields, type Value } from '../core/value.ts';
import { existsIn, viewOf, type Conflict, type EntityView } from '../core/view.ts';
import type { EntityState } from '../core/entity.ts';
import type { ApplyContext, OpMeta } from '../store/apply.ts';
import { ingest, ingestVoids, type IngestResult } from '../store/ingest.ts';
import { entityKeyOf, logKey, parseSeq, split, under } from '../store/keys.ts';
import { StoreClosedError } from '../store/errors.ts';
import { Store, type StoreLimits } from '../store/store.ts';
import { TABLES } from '../store/tables.ts';
import { verifyStore, type VerifyReport } from '../store/verify.ts';
import { createHash } from 'node:crypto';
import { equals as equalBytes } from 'uint8arrays';
import { encodeCanonical } from '../core/cbor.ts';
import { loadOrCreateDeviceKey, type DeviceKey } from './device-key.ts';
import { hqCertificate, readDeviceCertificate, readIssued, refuseLostKey, saveCertificate } from './enroll.ts';
import { admissionTimeMs, checkAdmission, decodeCertificate, issueCertificate, type Certificate } from '../core/cert.ts';
import { badChoice, badResolution, conflictNotFound, entityExists, entityNotFound, unknownDomain } from './errors.ts';
import { Subscription } from './subscription.ts';
// Type-only: libp2p is loaded by start(), so commands that only read a data dir never load it.
import type { LinkInfo, Mesh, MeshEvent, MeshOptions, PeerInfo } from '../net/mesh.ts';

export type { Role } from '../core/cert.ts';
import type { Role } from '../core/cert.ts';

export interface FieldNodeOptions {
  /** Directory holding the device key and the database; created if missing. */
  readonly dataDir: string;
  readonly team: string;
  /** The team's HQ device id. Omit on HQ itself (role `server`): HQ's own key is the root. */
  readonly hqDevice?: DeviceId;
  readonly user: string;
  /** @default 'field' */
  readonly role?: Role;
  /** Declared domains and their conflict strategies. Must be the same on every node of the team. */
  readonly domains: Readonly<Record<string, DomainPolicy | Strategy>>;
  /** Physical clock in ms. @default Date.now */
  readonly now?: () => number;
  /** How far ahead of our clock a remote HLC may be before it is flagged. @default 300000 (5 min) */
  readonly maxDriftMs?: number;
  /** Events a subscriber may fall behind before its subscription fails. @default 10000 */
  readonly maxSubscriberBacklog?: number;
  readonly storeLimits?: Partial<StoreLimits>;
  /**
   * Rebuild every derived table (entity states, statuses, indexes) from the logs while opening,
   * before anything can read or write them: the repair for damaged derived rows that `verify`
   * reports (`fieldmesh verify --repair`). @default false
   */
  readonly rebuildDerived?: boolean;
  /**
   * Checks each local change before it is signed, e.g. against the team's domain rules (see
   * `hq/policy.ts` `Policy.checker`), so that a change HQ would refuse fails now, with a clear
   * error, instead of weeks later with a receipt. Throws an InvalidInputError to refuse it.
   */
  readonly checkChange?: (change: EntityDraft) => void;
}

/** A change to an entity as drafted, before it is signed. */
export type EntityDraft = Exclude<OpDraft, { type: 'receipt' | 'revoke' }>;

export interface MutationInput {
  /**
   * `put` creates the entity when it does not exist and updates it otherwise, decided in the same
   * atomic step as the write (two puts racing on a missing entity: one creates, one updates).
   */
  readonly type: DataOpType | 'put';
  readonly domain: string;
  readonly entity: string;
  /** Field values (create/update); omitted or empty for delete. */
  readonly fields?: Fields;
}

export interface MutationResult {
  readonly op: Op;
  readonly id: OpId;
  readonly status: StatusName;
}

export interface OpSummary {
  readonly id: OpId;
  readonly device: DeviceId;
  readonly seq: number;
  readonly type: Op['type'];
  readonly user: string;
  readonly hlc: Hlc;
  readonly domain: string | null;
  readonly entity: string | null;
  readonly status: StatusName;
  readonly reason?: string;
  readonly detail?: string;
  /** True while the op waits for a base op it has not received. */
  readonly waiting: boolean;
}

export interface OpFilter {
  readonly type?: Op['type'];
  readonly domain?: string;
  readonly entity?: string;
  readonly device?: DeviceId;
  readonly status?: StatusName;
  /** @default 1000 */
  readonly limit?: number;
}

export interface QueryOptions {
  /** Field equality filter. */
  readonly where?: Readonly<Record<string, Value>>;
  /** @default 1000 */
  readonly limit?: number;
}

export type NodeEvent =
  | { readonly kind: 'entity'; readonly view: EntityView }
  | { readonly kind: 'peer'; readonly event: MeshEvent }
  | { readonly kind: 'status'; readonly op: OpId; readonly device: DeviceId; readonly seq: number; readonly status: OpStatus };

export interface SubscribeFilter {
  readonly kinds?: readonly NodeEvent['kind'][];
  readonly domain?: string;
  readonly entity?: string;
  readonly device?: DeviceId;
}

export interface DeviceStatus {
  readonly device: DeviceId;
  readonly lastSeq: number;
  /** Seq of the device's last op HQ accepted (0 if none). */
  readonly lastSyncedSeq: number;
  readonly counts: Readonly<Record<StatusName, number>>;
}

export type Resolution = { readonly fields: Fields } | { readonly delete: true };

export interface RevokeOptions {
  /** The device's ops up to this seq stay valid. @default every op of it this node holds */
  readonly afterSeq?: number;
  /** Why (at most 512 chars). @default '' */
  readonly reason?: string;
}

/** A device's latest op that arrived with its HLC too far ahead of our clock (kept, flagged). */
export interface ClockSkew {
  readonly device: DeviceId;
  readonly seq: number;
  /** How far ahead of our clock its HLC was, in ms. */
  readonly aheadMs: number;
  /** When it arrived (our clock). */
  readonly atMs: number;
}

export interface Revocation {
  /** HQ's revoke op: the one appended, or the one that revoked the device before. */
  readonly op: Op<RevokeBody>;
  /** False when the device was revoked already and nothing was appended. */
  readonly created: boolean;
}

/** Most revocations HQ's log is searched for the one that names a device. */
const MAX_REVOCATIONS_SCANNED = 100_000;

/**
 * A device whose log forked, or that HQ revoked before its next seq, would sign ops that count
 * nowhere on any node: refused before anything is signed, saying what to do instead. Checked
 * inside the write, against the proofs and revocations the store holds at that moment.
 */
function refuseVoidAuthoring(ctx: ApplyContext, device: DeviceId, tip: LogTip): void {
  const fork = ctx.forkedAt.get(device);
  if (fork !== undefined) {
    throw new RuleViolationError('DEVICE_FORKED', `this device forked its log at seq ${fork} (its data dir was restored from an old copy, or copied): nothing it writes counts any more; set up a new data dir and enroll it with HQ`, { device, seq: fork });
  }
  const after = ctx.revokedAfter.get(device);
  if (after !== undefined && tip.seq >= after) {
    throw new RuleViolationError('DEVICE_REVOKED', `HQ revoked this device after seq ${after}: nothing it writes counts any more`, { device, afterSeq: after });
  }
}

/**
 * Checks a version vector from elsewhere (an API, a `--since` file): a plain object mapping
 * device ids to non-negative safe integers. Throws InvalidInputError BAD_VERSION_VECTOR naming
 * the first bad entry.
 */
export function checkVersionVector(value: unknown): asserts value is VersionVector {
  const bad = (why: string, details: Record<string, unknown> = {}) =>
    new InvalidInputError('BAD_VERSION_VECTOR', `a version vector is a plain object {"<device id>": seq, ...}: ${why}`, { ...details, why });
  if (!isPlainObject(value)) {
    throw bad(Array.isArray(value) ? 'got an array' : value === null ? 'got null' : `got ${typeof value === 'object' ? (value as object).constructor?.name ?? 'an object' : typeof value}`);
  }
  for (const [device, seq] of Object.entries(value)) {
    if (!isDeviceId(device)) {
      const shown = String(device).slice(0, 80);
      throw bad(`${JSON.stringify(shown)} is not a device id`, { device: shown });
    }
    if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 0) {
      const shown = typeof seq === 'object' && seq !== null ? (Array.isArray(seq) ? 'an array' : 'an object') : String(JSON.stringify(seq));
      throw bad(`seq of ${device} must be a non-negative integer, got ${shown}`, { device, seq: shown });
    }
  }
}

const ZERO_COUNTS = (): Record<StatusName, number> => ({ pending: 0, synced: 0, failed: 0, conflict: 0 });

export class FieldNode {
  readonly device: DeviceId;
  readonly team: string;
  readonly user: string;
  readonly role: Role;
  readonly dataDir: string;
  readonly resolution: ResolutionConfig;
  private readonly store: Store;
  private readonly key: DeviceKey;
  private readonly cert: Certificate | null;
  private mesh: Mesh | null = null;
  /** A start() under way (so two concurrent calls start one mesh). */
  private starting: Promise<void> | null = null;
  /** Revocations run one at a time, so two concurrent ones for one device append one op. */
  private revoking: Promise<unknown> = Promise.resolve();
  private readonly now: () => number;
  private readonly maxDriftMs: number;
  private readonly maxBacklog: number;
  private readonly checkChange: ((change: EntityDraft) => void) | undefined;
  private readonly subscriptions = new Map<(e: NodeEvent) => void, Subscription<NodeEvent>>();

  private constructor(options: FieldNodeOptions, key: DeviceKey, store: Store, resolution: ResolutionConfig, cert: Certificate | null) {
    this.cert = cert;
    this.device = key.signer.device;
    this.team = options.team;
    this.user = options.user;
    this.role = options.role ?? 'field';
    this.dataDir = options.dataDir;
    this.key = key;
    this.store = store;
    this.resolution = resolution;
    this.now = options.now ?? Date.now;
    this.maxDriftMs = options.maxDriftMs ?? 300_000;
    this.maxBacklog = options.maxSubscriberBacklog ?? 10_000;
    this.checkChange = options.checkChange;
  }

  /** Views of entity states (immutable, and shared through the store's cache): a repeated read costs no resolution. */
  private readonly views = new WeakMap<EntityState, EntityView>();

  private viewFor(state: EntityState): EntityView {
    let view = this.views.get(state);
    if (view === undefined) {
      view = viewOf(state, this.resolution);
      this.views.set(state, view);
    }
    return view;
  }

  /** Store events reach subscribers; the store computes entity views only while someone listens. */
  private readonly forward = (event: NodeEvent) => {
    for (const listener of this.subscriptions.keys()) listener(event);
  };

  static async open(options: FieldNodeOptions): Promise<FieldNode> {
    await mkdir(options.dataDir, { recursive: true, mode: 0o700 });
    await refuseLostKey(options.dataDir);
    const { key } = await loadOrCreateDeviceKey(options.dataDir);
    const now = options.now ?? Date.now;
    const hq = options.role === 'server' ? await hqCertificate(options.dataDir, options.team, options.user, now()) : null;
    const cert = hq !== null ? hq.cert : await readDeviceCertificate(options.dataDir);
    if (cert !== null) {
      if (cert.device !== key.signer.device) throw new InvalidInputError('CERT_MISMATCH', `${options.dataDir}: certificate is for ${cert.device}, the key is ${key.signer.device}`);
      if (cert.team !== options.team) throw new InvalidInputError('CERT_MISMATCH', `${options.dataDir}: certificate is for team ${cert.team}, not ${options.team}`);
      if (options.role !== undefined && options.role !== cert.role) throw new InvalidInputError('CERT_MISMATCH', `${options.dataDir}: enrolled as ${cert.role}, not ${options.role}`);
      if (options.hqDevice !== undefined && options.hqDevice !== cert.issuer) throw new InvalidInputError('CERT_MISMATCH', `${options.dataDir}: enrolled by ${cert.issuer}, not ${options.hqDevice}`);
    }
    const hqDevice = cert?.issuer ?? options.hqDevice;
    if (hqDevice === undefined) throw new InvalidInputError('NOT_ENROLLED', `${options.dataDir} holds no certificate: enroll the device, or give hqDevice to run it unenrolled (offline only)`);
    const resolution: ResolutionConfig = { hqDevice, domains: options.domains };
    for (const domain of Object.keys(options.domains)) policyOf(resolution, domain);
    const store = await Store.open({
      dir: join(options.dataDir, 'db'),
      identity: { team: options.team, device: key.signer.device, hqDevice },
      resolution,
      limits: options.storeLimits,
      rebuild: options.rebuildDerived === true,
    });
    if (hq?.fresh === true) await saveCertificate(options.dataDir, hq.cert);
    if (cert !== null) await store.addCertificates([cert]);
    return new FieldNode({ ...options, role: cert?.role ?? options.role }, key, store, resolution, cert);
  }

  /** The time peers' certificates are judged at: our clock, never before HQ's latest op we hold or our own enrollment. */
  admissionNowMs(): number {
    return admissionTimeMs(this.now(), this.store.hqWallMs, this.cert?.issuedMs ?? 0);
  }

  /** This device's enrollment certificate (null when unenrolled: it cannot sync). */
  get certificate(): Certificate | null {
    return this.cert;
  }

  /** Whether ops of `device` may be stored: HQ, or a device whose certificate we hold. */
  isEnrolled(device: DeviceId): boolean {
    return device === this.hqDevice || this.store.certificates.has(device);
  }

  /** Certificates of the team we hold (ours included), as bytes. */
  certificates(): Uint8Array[] {
    return [...this.store.certificates.values()];
  }

  /**
   * Learns certificates (from a peer or a bundle). Each must be signed by this team's HQ for this
   * team; expired ones are kept too, since their devices' earlier ops stay valid. Returns the new devices.
   */
  async addCertificates(encoded: readonly Uint8Array[]): Promise<DeviceId[]> {
    const certs = encoded.map((bytes) => {
      const cert = decodeCertificate(bytes);
      checkAdmission(cert, { team: this.team, hqDevice: this.hqDevice }, cert.issuedMs, () => false);
      return cert;
    });
    return this.store.addCertificates(certs);
  }

  /** The libp2p private key (for the network layer). */
  get privateKey() {
    return this.key.privateKey;
  }

  get hqDevice(): DeviceId {
    return this.resolution.hqDevice;
  }

  private checkDomain(domain: string): void {
    // Own entries only: 'constructor' is on every object's prototype, not a declared domain.
    const domains = this.resolution.domains ?? {};
    if (!Object.hasOwn(domains, domain)) throw unknownDomain(domain, Object.keys(domains));
  }

  /** Records a change. Resolves once the signed op is durable, with its status (pending until HQ answers). */
  async mutate(input: MutationInput): Promise<MutationResult> {
    if (typeof input !== 'object' || input === null) throw new InvalidInputError('BAD_MUTATION', `a mutation must be an object { type, domain, entity, fields }, got ${input === null ? 'null' : typeof input}`);
    if (input.type !== 'put' && !(DATA_OP_TYPES as readonly string[]).includes(input.type)) {
      throw new InvalidInputError('BAD_OP_TYPE', `mutation type must be one of ${DATA_OP_TYPES.join('|')}|put`, { found: input.type });
    }
    this.checkDomain(input.domain);
    const fields = input.fields ?? {};
    checkFields(fields, `${input.domain}/${input.entity}`);
    if (input.type === 'delete' && Object.keys(fields).length > 0) throw new InvalidInputError('BAD_FIELDS', 'delete takes no fields');
    // Only existence and heads are needed: resolving every field for a full view would cost more than the rest of the check.
    return this.author(input.domain, input.entity, (state) => {
      const exists = existsIn(state, this.resolution);
      const type = input.type === 'put' ? (exists ? 'update' : 'create') : input.type;
      if (type === 'create' && exists) throw entityExists(input.domain, input.entity);
      if (type !== 'create' && !exists) throw entityNotFound(input.domain, input.entity);
      return { type, domain: input.domain, entity: input.entity, base: state.heads.map((h) => h.op), fields };
    });
  }

  /** Closes an open manual conflict with the chosen values (or by deleting the entity). */
  async resolve(conflictId: OpId, choice: Resolution): Promise<MutationResult> {
    const conflict = (await this.conflicts()).find((c) => c.id === conflictId);
    if (conflict === undefined) throw conflictNotFound(conflictId);
    // Checked by shape, not by `'delete' in choice`: {delete: false} must not delete the entity.
    const given: unknown = choice;
    const deleting = isPlainObject(given) && Object.keys(given).length === 1 && given.delete === true;
    const choosing = isPlainObject(given) && Object.keys(given).length === 1 && 'fields' in given;
    if (!deleting && !choosing) throw badResolution(conflictId);
    const fields = deleting ? {} : given.fields;
    checkFields(fields, `resolution of ${conflictId}`);
    if (!deleting) {
      const missing = conflict.fields.map((f) => f.field).filter((f) => f !== '$exists' && !(f in fields));
      if (missing.length > 0) throw badChoice(conflictId, missing);
    }
    return this.author(conflict.domain, conflict.entity, (state) => {
      const view = this.viewFor(state);
      if (view.conflict?.id !== conflictId) throw conflictNotFound(conflictId);
      return { type: 'resolve', domain: conflict.domain, entity: conflict.entity, base: [...view.heads], conflict: conflictId, exists: !deleting, fields };
    });
  }

  private async author(domain: string, entity: string, draftFor: (state: EntityState) => EntityDraft): Promise<MutationResult> {
    return this.store.write(async (ctx) => {
      const draft = draftFor(await ctx.entityState(domain, entity));
      this.checkChange?.(draft);
      const op = await this.appendOwn(ctx, draft);
      const meta = await ctx.txn.get<OpMeta>(TABLES.op, op.id);
      return { op, id: op.id, status: meta!.status.status };
    });
  }

  /**
   * HQ only: appends a receipt (verdicts on ops) or a revocation to HQ's own log. They travel
   * through the mesh like any op; every node applies them.
   */
  async appendHqOp(draft: Extract<OpDraft, { type: 'receipt' | 'revoke' }>): Promise<Op> {
    if (this.role !== 'server' || this.device !== this.hqDevice) throw new RuleViolationError('NOT_HQ', 'only the team\'s HQ node writes receipts and revocations');
    if (draft.type === 'revoke' && draft.target === this.hqDevice) throw new RuleViolationError('CANNOT_REVOKE_HQ', 'HQ cannot revoke itself: it would void every receipt and edit to come');
    return this.store.write((ctx) => this.appendOwn(ctx, draft));
  }

  /**
   * Signs `draft` as this device's next op and adds it, inside a write: after the ops stored
   * before it, and refused when it would count nowhere (forked, or revoked before its seq).
   */
  private async appendOwn(ctx: ApplyContext, draft: OpDraft): Promise<Op> {
    const tip = (await ctx.txn.get<LogTip>(TABLES.tip, this.device)) ?? EMPTY_TIP;
    refuseVoidAuthoring(ctx, this.device, tip);
    const { op, state } = authorOp({ signer: this.key.signer, team: this.team, user: this.user }, { tip, clock: ctx.clock }, this.now(), draft);
    ctx.clock = state.clock;
    await ctx.addOp(op);
    return op;
  }

  /**
   * HQ only: revokes a device. Its ops up to `afterSeq` (default: all this node holds of it) stay
   * valid, every later one is refused on every node, and it can no longer sync. Idempotent: a
   * device revoked already gets its existing revocation back (`created: false`) and nothing is
   * appended; concurrent calls run one at a time. Refuses a malformed id (InvalidInputError
   * BAD_DEVICE_ID), a device this node holds no certificate for (RuleViolationError
   * DEVICE_NOT_FOUND), HQ itself (CANNOT_REVOKE_HQ) and any node but HQ (NOT_HQ).
   */
  revoke(device: DeviceId, options: RevokeOptions = {}): Promise<Revocation> {
    const run = this.revoking.then(async (): Promise<Revocation> => {
      if (this.role !== 'server' || this.device !== this.hqDevice) throw new RuleViolationError('NOT_HQ', 'only the team\'s HQ node revokes devices');
      if (!isDeviceId(device)) throw new InvalidInputError('BAD_DEVICE_ID', `${JSON.stringify(String(device).slice(0, 80))} is not a device id (an Ed25519 PeerId)`, { device: String(device).slice(0, 80) });
      if (device === this.hqDevice) throw new RuleViolationError('CANNOT_REVOKE_HQ', 'HQ cannot revoke itself: it would void every receipt and edit to come', { device });
      // Enrolled = HQ holds its certificate: from enrollDevice, a sync, a bundle, or the copy
      // `enroll` left in HQ's data dir (issued/), for a device HQ has not heard from yet.
      if (!this.isEnrolled(device)) {
        const issued = await readIssued(this.dataDir, device);
        if (issued !== null) await this.addCertificates([issued]);
      }
      if (!this.isEnrolled(device)) throw new RuleViolationError('DEVICE_NOT_FOUND', `device ${device} is not enrolled in team ${this.team} (HQ holds no certificate for it)`, { device });
      if (this.isRevoked(device)) {
        const existing = await this.revocationOf(device);
        // (Not found only past MAX_REVOCATIONS_SCANNED revocations: a second one then changes nothing, as the lowest afterSeq counts.)
        if (existing !== undefined) return { op: existing, created: false };
      }
      const afterSeq = options.afterSeq ?? this.versionVector()[device] ?? 0;
      const op = (await this.appendHqOp({ type: 'revoke', target: device, afterSeq, reason: options.reason ?? '' })) as Op<RevokeBody>;
      return { op, created: true };
    });
    this.revoking = run.catch(() => undefined);
    return run;
  }

  /** HQ's revoke op that names `device`, or undefined (revocations are rare: HQ's log is searched). */
  async revocationOf(device: DeviceId): Promise<Op<RevokeBody> | undefined> {
    if (!this.isRevoked(device)) return undefined;
    const summaries = await this.ops({ type: 'revoke', device: this.hqDevice, limit: MAX_REVOCATIONS_SCANNED });
    for (const op of await this.readOps(summaries.map((s) => s.id))) if (op?.type === 'revoke' && op.target === device) return op;
    return undefined;
  }

  /**
   * Ops of other devices HQ has given no verdict on yet, oldest first per device: the pending
   * and conflicted ones without a receipt.
   */
  async awaitingVerdict(limit: number): Promise<OpSummary[]> {
    const out: OpSummary[] = [];
    const reader = this.store.reader();
    for (const status of ['pending', 'conflict'] as const) {
      const ids = this.idsIn(TABLES.status, under(status));
      for await (const [id, meta] of this.withMeta(reader, ids, Math.min(limit, 256), [TABLES.verdict])) {
        if (out.length >= limit) return out;
        if (meta.device === this.hqDevice || meta.domain === null) continue;
        if ((await reader.get(TABLES.verdict, id)) === undefined) out.push(summary(id, meta));
      }
    }
    return out;
  }

  /** The op ids an index range holds (the value of its rows). */
  private async *idsIn(table: typeof TABLES.status | typeof TABLES.byEntity, range: { gte: string; lt: string }): AsyncGenerator<OpId> {
    for await (const [, id] of this.store.scan<OpId>(table, range)) yield id;
  }

  /**
   * Ops' metadata for a stream of ids (ops not held are skipped), read `chunk` ids at a time in
   * one round trip each, with the rows of `alsoRead` for the same ids.
   */
  private async *withMeta(reader: ReturnType<Store['reader']>, ids: AsyncIterable<OpId>, chunk: number, alsoRead: readonly (typeof TABLES.verdict)[] = []): AsyncGenerator<readonly [OpId, OpMeta]> {
    let batch: OpId[] = [];
    const flush = async function* () {
      await reader.prefetch(batch.flatMap((id) => [[TABLES.op, id] as const, ...alsoRead.map((t) => [t, id] as const)]));
      for (const id of batch) {
        const meta = await reader.get<OpMeta>(TABLES.op, id);
        if (meta !== undefined) yield [id, meta] as const;
      }
      batch = [];
    };
    for await (const id of ids) {
      batch.push(id);
      if (batch.length >= chunk) yield* flush();
    }
    yield* flush();
  }

  /**
   * A bundle of every op the holder of `theirs` lacks (everything when omitted), with the
   * certificates and fork proofs needed to accept them. `onProgress` gets the ops gathered so far.
   * Throws InvalidInputError BAD_VERSION_VECTOR when `theirs` is not a version vector.
   */
  async exportBundle(theirs: VersionVector = {}, onProgress?: (ops: number) => void): Promise<Uint8Array> {
    // A seq below 0 (or not an integer) would make ranges that start before seq 1: duplicate ops.
    checkVersionVector(theirs);
    const runs: { device: DeviceId; ops: Uint8Array[] }[] = [];
    let total = 0;
    for (const range of missingRanges(this.versionVector(), theirs)) {
      const ops: Uint8Array[] = [];
      let from = range.fromSeq;
      while (from <= range.toSeq) {
        const chunk = await this.store.loadRange(range.device, from, range.toSeq, 4 * 1024 * 1024);
        if (chunk.length === 0) break;
        ops.push(...chunk);
        from += chunk.length;
        total += chunk.length;
        onProgress?.(total);
      }
      if (ops.length > 0) runs.push({ device: range.device, ops });
    }
    return encodeBundle({ team: this.team, hq: this.hqDevice, certs: this.certificates(), forks: await this.forkProofs(), runs });
  }

  /**
   * Takes in a bundle through the same checks as the network: certificates (HQ-signed, this
   * team), fork proofs, then every op in one all-or-nothing ingest.
   */
  async importBundle(bytes: Uint8Array): Promise<IngestResult & { certificates: number; forkProofs: number }> {
    const bundle = decodeBundle(bytes);
    if (bundle.team !== this.team || bundle.hq !== this.hqDevice) {
      throw new RuleViolationError('WRONG_TEAM', `bundle of team ${bundle.team} (HQ ${bundle.hq}), not ${this.team}`, { team: bundle.team, hq: bundle.hq });
    }
    const certificates = this.share(await this.addCertificates(bundle.certs)).length;
    let forkProofs = 0;
    for (const proof of bundle.forks) if (await this.addForkProof(proof)) forkProofs++;
    const result = await this.ingest(bundle.runs.flatMap((r) => {
      for (const op of r.ops) if (parseOp(op).op.device !== r.device) throw new InvalidInputError('WRONG_DEVICE', `bundle run of ${r.device} holds another device's op`);
      return r.ops;
    }));
    return { ...result, certificates, forkProofs };
  }

  /**
   * HQ only: signs a certificate for a device (whose key was made on the device), keeps it and
   * passes it on to the peers. Refuses HQ's own id (CANNOT_ENROLL_HQ) and a revoked device
   * (DEVICE_REVOKED: a new certificate would not lift the revocation, the device could still not sync).
   */
  async enrollDevice(device: DeviceId, user: string, role: Role, validForMs: number): Promise<Certificate> {
    if (this.role !== 'server' || this.device !== this.hqDevice) throw new RuleViolationError('NOT_HQ', 'only the team\'s HQ node enrolls devices');
    if (!isDeviceId(device)) throw new InvalidInputError('BAD_DEVICE_ID', 'device must be an Ed25519 PeerId', { device: String(device).slice(0, 80) });
    // HQ's own certificate (role server, the team root) would be replaced by this one, and shared with every peer.
    if (device === this.hqDevice) throw new RuleViolationError('CANNOT_ENROLL_HQ', 'the device id is HQ\'s own: HQ holds its team root certificate', { device });
    if (this.isRevoked(device)) throw new RuleViolationError('DEVICE_REVOKED', `device ${device} is revoked: enroll its replacement under a new key`, { device });
    const now = this.now();
    const cert = issueCertificate({ team: this.team, device, user, role, issuedMs: now, expiresMs: now + validForMs }, this.key.signer);
    this.share(await this.addCertificates([cert.bytes]));
    return cert;
  }

  /** New certificates learned outside a session go to the peers we sync with, ahead of the ops that need them. */
  private share(devices: readonly DeviceId[]): readonly DeviceId[] {
    if (devices.length > 0) this.mesh?.shareCertificates(devices.map((d) => this.store.certificates.get(d)!));
    return devices;
  }

  /** The role in the certificate of a device we know (null when we hold none). */
  roleOf(device: DeviceId): Role | null {
    return this.certificateOf(device)?.role ?? null;
  }

  /** The enrollment certificate we hold for `device`, or null. */
  certificateOf(device: DeviceId): Certificate | null {
    const bytes = this.store.certificates.get(device);
    return bytes === undefined ? null : decodeCertificate(bytes);
  }

  /** Calls `listener` with the logs that grew (device -> highest seq) after each durable batch. */
  onAdvanced(listener: (tips: Readonly<Record<DeviceId, number>>) => void): () => void {
    this.store.events.on('tips', listener);
    return () => this.store.events.off('tips', listener);
  }

  /** Calls `listener` with every fork proof newly recorded (from sync, bundles or our own ingest). */
  onFork(listener: (proof: ForkProof) => void): () => void {
    this.store.events.on('fork', listener);
    return () => this.store.events.off('fork', listener);
  }

  /** Reads up to maxBytes of a device's log from fromSeq (for sync and bundles). */
  loadRange(device: DeviceId, fromSeq: number, toSeq: number, maxBytes: number): Promise<Uint8Array[]> {
    return this.store.loadRange(device, fromSeq, toSeq, maxBytes);
  }

  forkProofs(): Promise<ForkProof[]> {
    return this.store.forkProofs();
  }

  /**
   * Our tips as a sync session offers them: per device the highest contiguous seq held and its op
   * id, but for a device proven forked the op just below its fork point (nothing past it is offered).
   */
  async syncTips(): Promise<Tips> {
    const out: Record<DeviceId, TipId> = {};
    for (const device of Object.keys(this.store.versionVector())) {
      const tip = this.store.tipOf(device);
      const forkedAt = this.store.forks.get(device) ?? Number.POSITIVE_INFINITY;
      if (tip.seq < forkedAt) out[device] = { seq: tip.seq, id: tip.id! };
      else if (forkedAt > 1) {
        const [below] = await this.store.loadRange(device, forkedAt - 1, forkedAt - 1, Number.MAX_SAFE_INTEGER);
        if (below !== undefined) out[device] = { seq: forkedAt - 1, id: opIdOf(below) };
      }
    }
    return out;
  }

  /** Whether HQ revoked the device (its later ops are refused; it may not sync). */
  isRevoked(device: DeviceId): boolean {
    return this.store.revocations.has(device);
  }

  /** Devices proven to have forked, with their lowest fork point (their ops from that seq on count nowhere). */
  get forkPoints(): ReadonlyMap<DeviceId, number> {
    return this.store.forks;
  }

  /** Devices HQ revoked, with the seq after which their ops count nowhere (the lowest HQ gave). */
  get revocations(): ReadonlyMap<DeviceId, number> {
    return this.store.revocations;
  }

  /**
   * Learns a fork proof from elsewhere: checks it on its own (two validly signed, different ops of
   * an enrolled device at one seq), records it and excludes the device's ops from that seq on.
   * Returns true when it was news.
   */
  async addForkProof(proof: ForkProof): Promise<boolean> {
    const [a] = verifyForkProof(proof);
    if (a.team !== this.team) throw new InvalidInputError('WRONG_TEAM', `fork proof of team ${a.team}`);
    if (!this.isEnrolled(proof.device)) throw new RuleViolationError('UNENROLLED', `fork proof of a device not enrolled: ${proof.device}`);
    if ((this.store.forks.get(proof.device) ?? Number.POSITIVE_INFINITY) <= proof.seq) return false;
    return this.store.write((ctx) => ctx.recordFork(proof.device, proof.seq, { device: proof.device, seq: proof.seq, ops: proof.ops }));
  }

  /**
   * Ids our parked ops wait for (at most `limit`, none of `exclude`). With a fork proven, some may be void ops (past
   * a fork point) that no peer offers in its log: a sync session asks its peer for them by id.
   */
  missingBases(limit: number, exclude?: ReadonlySet<OpId>): Promise<OpId[]> {
    return this.store.missingBases(limit, exclude);
  }

  /** Envelopes of the void ops among `ids` that we hold, to answer a peer asking for them. */
  voidOps(ids: readonly OpId[]): Promise<Uint8Array[]> {
    return this.store.voidOps(ids);
  }

  /**
   * Keeps void ops a peer sent by id (each signed, of an enrolled device of the team; all or
   * nothing): the ops that name them in their base then apply. Returns the ops that were news.
   */
  addVoidOps(encoded: readonly Uint8Array[]): Promise<Op[]> {
    return this.store.write((ctx) => ingestVoids(ctx, encoded, { team: this.team, isEnrolled: (d) => this.isEnrolled(d) }));
  }

  /** Calls `listener` with the envelopes of void ops newly kept (to pass on to peers that asked). */
  onVoids(listener: (envelopes: readonly Uint8Array[]) => void): () => void {
    this.store.events.on('voids', listener);
    return () => this.store.events.off('voids', listener);
  }

  /** Ingests ops from elsewhere (a peer, a bundle). All or nothing: an invalid op stores nothing. */
  ingest(encoded: readonly Uint8Array[], device?: DeviceId): Promise<IngestResult> {
    return this.store.write((ctx) =>
      ingest(ctx, encoded, { team: this.team, nowMs: this.now(), maxDriftMs: this.maxDriftMs, isEnrolled: (d) => this.isEnrolled(d), ...(device !== undefined ? { device } : {}) }),
    );
  }

  /** The entity as this node sees it, or null if it does not exist (and has no open conflict). */
  async get(domain: string, entity: string): Promise<EntityView | null> {
    const state = await this.store.reader().get<EntityState>(TABLES.entity, entityKeyOf(domain, entity));
    if (state === undefined) return null;
    const view = this.viewFor(state);
    return isVisible(view) ? view : null;
  }

  /**
   * Existing entities of a domain in entity-id order, optionally filtered by field equality
   * (a field matches an equal value: maps whatever their key order, bytes only bytes).
   * `where` must be a plain object of field values (checked as a change's are: depth, shape),
   * else InvalidInputError (BAD_FIELDS, VALUE_TOO_DEEP, BAD_VALUE).
   */
  async query(domain: string, options: QueryOptions = {}): Promise<EntityView[]> {
    const limit = listLimit(options.limit);
    const given: unknown = options.where ?? {};
    if (!isPlainObject(given)) {
      throw new InvalidInputError('BAD_FIELDS', `query of ${domain}: where must be a plain object of field values`);
    }
    // Before the comparison below walks them (recursively): a value nested thousands deep would overflow the stack.
    for (const [field, value] of Object.entries(given)) checkValue(value, `where.${field}`);
    // Compared by canonical encoding: JSON text depends on the order of a map's keys (and
    // prints bytes like a map), so an equal map value written in another key order never matched.
    const where = Object.entries(given as Readonly<Record<string, Value>>).map(([f, v]) => [f, encodeCanonical(v)] as const);
    const matches = (view: EntityView) => where.every(([f, v]) => view.fields[f] !== undefined && equalBytes(encodeCanonical(view.fields[f]), v));
    const out: EntityView[] = [];
    for await (const [, state] of this.store.scan<EntityState>(TABLES.entity, under(domain))) {
      const view = this.viewFor(state);
      if (!isVisible(view)) continue;
      if (matches(view)) out.push(view);
      if (out.length >= limit) break;
    }
    return out;
  }

  /** Ops matching every given filter, in (device, seq) order within the index used. */
  async ops(filter: OpFilter = {}): Promise<OpSummary[]> {
    const limit = listLimit(filter.limit);
    const out: OpSummary[] = [];
    const matches = (meta: OpMeta) =>
      (filter.type === undefined || meta.type === filter.type) &&
      (filter.domain === undefined || meta.domain === filter.domain) &&
      (filter.entity === undefined || meta.entity === filter.entity) &&
      (filter.device === undefined || meta.device === filter.device) &&
      (filter.status === undefined || meta.status.status === filter.status);
    for await (const [id, meta] of this.withMeta(this.store.reader(), this.candidateOps(filter), Math.min(limit, 128))) {
      if (out.length >= limit) break;
      if (matches(meta)) out.push(summary(id, meta));
    }
    return out;
  }

  /** Ids of the ops a filter may match, from the narrowest index it allows, in (device, seq) order within it. */
  private async *candidateOps(filter: OpFilter): AsyncGenerator<OpId> {
    if (filter.status !== undefined) {
      const range = filter.device !== undefined ? under(filter.status, filter.device) : under(filter.status);
      yield* this.idsIn(TABLES.status, range);
      return;
    }
    if (filter.domain !== undefined) {
      const range = filter.entity !== undefined ? under(filter.domain, filter.entity) : under(filter.domain);
      yield* this.idsIn(TABLES.byEntity, range);
      return;
    }
    // Every op has exactly one status row: merging the four status indexes by (device, seq)
    // lists every op in log order without reading the logs themselves.
    const streams = STATUSES.map((status) => this.store.scan<OpId>(TABLES.status, filter.device !== undefined ? under(status, filter.device) : under(status)));
    try {
      const heads = await Promise.all(streams.map((it) => it.next()));
      const position = (r: IteratorResult<[string, OpId]>) => split(r.value![0]).slice(1).join('\u0000');
      for (;;) {
        let best = -1;
        heads.forEach((r, i) => {
          if (r.done !== true && (best < 0 || position(r) < position(heads[best]!))) best = i;
        });
        if (best < 0) return;
        yield heads[best]!.value![1];
        heads[best] = await streams[best]!.next();
      }
    } finally {
      await Promise.all(streams.map((it) => it.return(undefined)));
    }
  }

  /** A device's ops HQ has not acknowledged yet, in seq order (default: this device). */
  queue(device: DeviceId = this.device, limit = 1000): Promise<OpSummary[]> {
    return this.ops({ device, status: 'pending', limit });
  }

  /** The ops of one entity, in (device, seq) order. */
  history(domain: string, entity: string, limit = 1000): Promise<OpSummary[]> {
    return this.ops({ domain, entity, limit });
  }

  /** Op counts per status, over every device or one. */
  async counts(device?: DeviceId): Promise<Record<StatusName, number>> {
    const out = ZERO_COUNTS();
    for await (const [key, n] of this.store.scan<number>(TABLES.count, device === undefined ? undefined : under(device))) {
      out[split(key)[1] as StatusName] += n;
    }
    return out;
  }

  /**
   * Devices whose clock ran ahead of ours: per device, the latest op whose HLC was more than
   * `maxDriftMs` ahead when it arrived (the op was kept; our clock followed it only that far).
   */
  async clockSkews(): Promise<ClockSkew[]> {
    const out: ClockSkew[] = [];
    for await (const [device, flag] of this.store.scan<{ seq: number; aheadMs: number; atMs: number }>(TABLES.skew)) out.push({ device, seq: flag.seq, aheadMs: flag.aheadMs, atMs: flag.atMs });
    return out;
  }

  /** Per device: its last seq and its ops per status. */
  async devices(): Promise<DeviceStatus[]> {
    const byDevice = new Map<DeviceId, Record<StatusName, number>>();
    for await (const [key, n] of this.store.scan<number>(TABLES.count)) {
      const [device, status] = split(key) as [DeviceId, StatusName];
      const counts = byDevice.get(device) ?? ZERO_COUNTS();
      counts[status] += n;
      byDevice.set(device, counts);
    }
    const out: DeviceStatus[] = [];
    for (const [device, counts] of byDevice) {
      // The synced queue is ordered by seq: its last row is the device's last synced op.
      let lastSyncedSeq = 0;
      for await (const [key] of this.store.scan(TABLES.status, under('synced', device), { limit: 1, reverse: true })) lastSyncedSeq = parseSeq(split(key)[2]!);
      out.push({ device, lastSeq: this.store.tipOf(device).seq, lastSyncedSeq, counts });
    }
    return out;
  }

  async conflicts(): Promise<Conflict[]> {
    const out: Conflict[] = [];
    const reader = this.store.reader();
    for await (const [key] of this.store.scan<OpId>(TABLES.conflict)) {
      const state = await reader.get<EntityState>(TABLES.entity, key);
      const conflict = state === undefined ? null : this.viewFor(state).conflict;
      if (conflict !== null) out.push(conflict);
    }
    return out;
  }

  /** The signed op with this id, or undefined. */
  async op(id: OpId): Promise<Op | undefined> {
    return (await this.readOps([id]))[0];
  }

  /** Ops by id (undefined for those not held), read in two round trips however many. */
  async readOps(ids: readonly OpId[]): Promise<(Op | undefined)[]> {
    const reader = this.store.reader();
    await reader.prefetch(ids.map((id) => [TABLES.op, id] as const));
    const metas = await Promise.all(ids.map((id) => reader.get<OpMeta>(TABLES.op, id)));
    const held = metas.filter((m) => m !== undefined);
    const envelopes = await reader.getRawMany(TABLES.log, held.map((m) => logKey(m.device, m.seq)));
    let next = 0;
    // Signatures were checked when the ops were stored; verify() re-checks every one.
    return metas.map((m) => {
      if (m === undefined) return undefined;
      const bytes = envelopes[next++];
      return bytes === undefined ? undefined : parseOp(bytes).op;
    });
  }

  /** Highest contiguous seq held per device. */
  versionVector() {
    return this.store.versionVector();
  }

  /** The same hash as core's stateHash over the same ops: equal hashes, equal data. */
  async stateHash(): Promise<string> {
    const hash = createHash('sha256');
    for await (const [, state] of this.store.scan<EntityState>(TABLES.entity)) {
      const view = this.viewFor(state);
      if (isVisible(view)) hash.update(viewDigestBytes(view));
    }
    return hash.digest('hex');
  }

  /** Re-checks every chain and signature in the data dir. */
  verify(onProgress?: (ops: number) => void): Promise<VerifyReport> {
    return verifyStore(this.store, onProgress);
  }

  /**
   * Entity and status changes as they become durable. Close the subscription (or break the loop)
   * to stop. Throws StoreClosedError STORE_CLOSED once the node is closed.
   */
  subscribe(filter: SubscribeFilter = {}): Subscription<NodeEvent> {
    // After close() no event will ever come: a subscription would wait forever.
    if (this.store.isClosed) throw new StoreClosedError('STORE_CLOSED', `node ${this.dataDir} is closed`, { path: this.dataDir });
    const listener = (event: NodeEvent) => {
      if (filter.kinds !== undefined && !filter.kinds.includes(event.kind)) return;
      if (event.kind === 'peer') {
        if (filter.device !== undefined && event.event.device !== filter.device) return;
      } else if (event.kind === 'entity') {
        if (filter.domain !== undefined && event.view.domain !== filter.domain) return;
        if (filter.entity !== undefined && event.view.entity !== filter.entity) return;
      } else if (filter.device !== undefined && event.device !== filter.device) return;
      subscription.push(event);
    };
    const subscription = new Subscription<NodeEvent>(this.maxBacklog, () => {
      this.subscriptions.delete(listener);
      if (this.subscriptions.size === 0) {
        this.store.events.off('status', this.forward);
        this.store.events.off('entity', this.forward);
      }
    });
    if (this.subscriptions.size === 0) {
      this.store.events.on('status', this.forward);
      this.store.events.on('entity', this.forward);
    }
    this.subscriptions.set(listener, subscription);
    return subscription;
  }

  /**
   * Joins the mesh: listens, discovers (mDNS if asked), dials static peers and syncs with every
   * admitted peer of the team. Needs an enrolled node. Every listen and peer address is checked
   * first (InvalidInputError BAD_MULTIADDR naming it); an address it cannot listen on fails with
   * a FieldmeshError whose code is the system's (`EADDRINUSE`, `EADDRNOTAVAIL`, ...).
   */
  async start(options: MeshOptions = {}): Promise<void> {
    if (this.mesh !== null) return;
    this.starting ??= (async () => {
      // Loaded here, not at the top: opening a data dir to read it does not load libp2p.
      const { Mesh } = await import('../net/mesh.ts');
      const mesh = new Mesh(this, options);
      mesh.events.on('event', (event: MeshEvent) => this.forward({ kind: 'peer', event }));
      await mesh.start();
      this.mesh = mesh;
    })().finally(() => {
      this.starting = null;
    });
    return this.starting;
  }

  /** Leaves the mesh (the data stays open). */
  async stop(): Promise<void> {
    await this.starting?.catch(() => undefined);
    const mesh = this.mesh;
    this.mesh = null;
    await mesh?.stop();
  }

  /** Addresses we listen on (with /p2p/<device>), empty when not started. */
  addresses(): string[] {
    return this.mesh?.addresses() ?? [];
  }

  /** Dials a peer now, e.g. one just learned of out of band. */
  async dial(address: string): Promise<void> {
    if (this.mesh === null) throw new InvalidInputError('NOT_STARTED', 'start() the node first');
    await this.mesh.dial(address);
  }

  /**
   * Static peers and the uplink to HQ: whether each is up and, while it is not, how many dials
   * were tried, the last error and when the next is due. Pending ops wait for these retries.
   */
  links(): LinkInfo[] {
    return this.mesh?.links() ?? [];
  }

  /** Peers we sync with: who, role, last seen, how far behind either side is. */
  peers(): PeerInfo[] {
    return this.mesh?.peers() ?? [];
  }

  /** Flushes queued writes and releases the data dir. */
  async close(): Promise<void> {
    await this.stop();
    this.store.events.removeAllListeners();
    for (const subscription of [...this.subscriptions.values()]) subscription.close();
    await this.store.close();
  }
}

/** A list's limit: a whole number of at least 1 (default 1000); NaN or 0 would silently mean "all" or "none". */
function listLimit(limit: number | undefined): number {
  if (limit === undefined) return 1000;
  if (!Number.isSafeInteger(limit) || limit < 1) throw new InvalidInputError('BAD_LIMIT', `limit must be a whole number of at least 1, got ${String(limit)}`, { limit: String(limit) });
  return limit;
}

function summary(id: OpId, meta: OpMeta): OpSummary {
  return {
    id,
    device: meta.device,
    seq: meta.seq,
    type: meta.type,
    user: meta.user,
    hlc: { wallMs: meta.wallMs, counter: meta.counter },
    domain: meta.domain,
    entity: meta.entity,
    status: meta.status.status,
    ...(meta.status.reason !== undefined ? { reason: meta.status.reason, detail: meta.status.detail } : {}),
    // A void op (past its device's fork point) has no clock either, but waits for nothing: it never applies.
    waiting: meta.clock === null && !meta.badBase && meta.domain !== null && meta.status.reason !== 'DEVICE_FORKED',
  };
}

