/**
 * The LevelDB store: every log of the team, and everything derived from them, in one data dir.
 * All writes go through one queue; the jobs waiting in it when a batch starts share one atomic,
 * synced LevelDB batch (group commit), and each job's promise resolves only after that batch is
 * durable. Reads see committed data only.
 */
import { EventEmitter } from 'node:events';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { Level } from 'level';
import { decodeCertificate, newerCertificate, type Certificate } from '../core/cert.ts';
import type { ForkProof, LogTip } from '../core/chain.ts';
import { equals as equalBytes } from 'uint8arrays';
import { HLC_ZERO, type Hlc } from '../core/hlc.ts';
import type { DeviceId } from '../core/keys.ts';
import { parseOp, type OpId } from '../core/op.ts';
import type { ResolutionConfig } from '../core/strategies.ts';
import type { VersionVector } from '../core/version-vector.ts';
import { ApplyContext, voidEnvelope, type StoreEvent } from './apply.ts';
import { ParkedIndex } from './parked.ts';
import { StoreClosedError, StoreCorruptError, StoreLockedError, StoreMismatchError } from './errors.ts';
import { FieldmeshError } from '../core/errors.ts';
import { logKey, split } from './keys.ts';
import { stripTable, TABLES, tableKey } from './tables.ts';
import { RowCache, scan, scanRecords, Txn, type Db } from './txn.ts';

/** Beside the database directory (`db.created`): when the database was first created. */
const CREATED_MARK = '.created';

/** Version of the on-disk layout of primary data (logs, fork proofs, settings). */
export const STORAGE_FORMAT = 1;
/** Version of the derived tables; a change rebuilds them from the logs on open. */
export const DERIVED_FORMAT = 2;
/** Migrations of primary data: MIGRATIONS[n] upgrades format n to n + 1. */
const MIGRATIONS: Record<number, (db: Db) => Promise<void>> = {};
/** Rebuilt from the logs; `skew` (advisory flags set on arrival, which a replay cannot see) is only cleared. */
const DERIVED_TABLES = [TABLES.op, TABLES.entity, TABLES.byEntity, TABLES.status, TABLES.count, TABLES.waiting, TABLES.verdict, TABLES.revoked, TABLES.conflict, TABLES.ownLast, TABLES.skew];

export interface StoreIdentity {
  readonly team: string;
  readonly device: DeviceId;
  readonly hqDevice: DeviceId;
}

export interface StoreLimits {
  /** Most jobs (mutations, ingests) sharing one synced batch. @default 1024 */
  readonly maxJobsPerBatch: number;
  /** Decoded rows kept in memory. @default 50000 */
  readonly cacheEntries: number;
  /** Parked ops (waiting for a base) kept parsed in memory; the rest are read back from the log. @default 20000 */
  readonly parkedOpsInMemory: number;
  /** Ops per batch when rebuilding derived tables. @default 2000 */
  readonly rebuildBatchOps: number;
}

export const DEFAULT_STORE_LIMITS: StoreLimits = { maxJobsPerBatch: 1024, cacheEntries: 50_000, parkedOpsInMemory: 20_000, rebuildBatchOps: 2000 };

export interface OpenStoreOptions {
  readonly dir: string;
  readonly identity: StoreIdentity;
  readonly resolution: ResolutionConfig;
  readonly limits?: Partial<StoreLimits>;
  /**
   * A database to use instead of LevelDB in `dir` (e.g. a `memory-level` instance in the
   * simulator, kept across a simulated crash). It must use utf8 keys and Uint8Array values.
   */
  readonly database?: Db;
  /** Rebuild the derived tables from the logs while opening, whatever their format says (a repair). @default false */
  readonly rebuild?: boolean;
}

/** In-memory state as of the newest batch built (durable or not yet). */
interface HeadState {
  readonly tips: ReadonlyMap<DeviceId, LogTip>;
  readonly clock: Hlc;
  readonly hqWallMs: number;
  readonly revokedAfter: ReadonlyMap<DeviceId, number>;
  readonly forkedAt: ReadonlyMap<DeviceId, number>;
  readonly orphanVerdicts: number;
}

interface Built {
  readonly jobs: Job[];
  readonly txn: Txn;
  readonly ctx: ApplyContext;
  readonly done: [Job, unknown][];
  failure: unknown;
  write: Promise<void> | null;
}

type Job = { run: (ctx: ApplyContext) => Promise<unknown>; resolve: (v: unknown) => void; reject: (e: unknown) => void };

export class Store {
  readonly dir: string;
  readonly identity: StoreIdentity;
  readonly resolution: ResolutionConfig;
  readonly limits: StoreLimits;
  /**
   * 'entity', 'status', 'tips' (device -> new seq), 'fork' (a new proof) and 'voids' (void ops
   * fetched by id) events, emitted after the batch holding them is durable.
   */
  readonly events = new EventEmitter();
  /** Whether open() rebuilt the derived tables. */
  rebuilt = false;
  private readonly db: Db;
  private readonly cache: RowCache;
  private readonly tips = new Map<DeviceId, LogTip>();
  private readonly certs = new Map<DeviceId, Uint8Array>();
  private revokedAfter = new Map<DeviceId, number>();
  private forkedAt = new Map<DeviceId, number>();
  /** Parked ops as of the newest batch built; null when it must be reloaded from disk. */
  private parked: ParkedIndex | null = null;
  private orphanVerdicts = 0;
  private clockState: Hlc = HLC_ZERO;
  private hqWall = 0;
  private head: HeadState = { tips: new Map(), clock: HLC_ZERO, hqWallMs: 0, revokedAfter: new Map(), forkedAt: new Map(), orphanVerdicts: 0 };
  private queue: Job[] = [];
  private flushing: Promise<void> | null = null;
  /** Set by the first close(): every later call waits for the same close. */
  private closing: Promise<void> | null = null;

  /** Whether open() rebuilds the derived tables whatever their format (OpenStoreOptions.rebuild). */
  private readonly forceRebuild: boolean;

  private constructor(dir: string, db: Db, options: OpenStoreOptions) {
    this.dir = dir;
    this.forceRebuild = options.rebuild === true;
    this.db = db;
    this.identity = options.identity;
    this.resolution = options.resolution;
    this.limits = { ...DEFAULT_STORE_LIMITS, ...options.limits };
    this.cache = new RowCache(this.limits.cacheEntries);
    this.events.setMaxListeners(1000);
  }

  static async open(options: OpenStoreOptions): Promise<Store> {
    const dir = options.dir;
    if (options.database === undefined) {
      await mkdir(dir, { recursive: true });
      const existing = await readdir(dir);
      if (existing.length > 0 && !existing.includes('CURRENT')) {
        throw new StoreCorruptError('STORE_FOREIGN', `${dir} is not a fieldmesh data dir (it holds files but no LevelDB database)`, { path: dir });
      }
      const created = await readFile(dir + CREATED_MARK, 'utf8').catch(() => null);
      if (existing.length === 0 && created !== null) {
        throw new StoreCorruptError('STORE_MISSING', `${dir} is empty, but this data dir had a database (created ${created.trim()}): restore it from a backup. Starting empty would sign again seqs this device signed before, a fork that voids its log from there on everywhere; to start afresh, set up a new data dir and enroll it`, { path: dir });
      }
    }
    const db: Db = options.database ?? new Level<string, Uint8Array>(dir, { keyEncoding: 'utf8', valueEncoding: 'view' });
    try {
      await db.open();
    } catch (err) {
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      if ((err as { code?: string }).code === 'LEVEL_LOCKED' || cause?.code === 'LEVEL_LOCKED') {
        throw new StoreLockedError('STORE_LOCKED', `data dir ${dir} is already open (in this or another process)`, { path: dir });
      }
      throw new StoreCorruptError('STORE_CORRUPT', `data dir ${dir} cannot be opened: ${cause?.message ?? (err as Error).message}`, { path: dir });
    }
    const store = new Store(dir, db, options);
    try {
      await store.load();
      // Marks that this data dir has a database: one that vanishes later is refused, not replaced.
      if (options.database === undefined) await writeFile(dir + CREATED_MARK, new Date().toISOString() + '\n', { flag: 'wx' }).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'EEXIST') throw err;
      });
    } catch (err) {
      await db.close();
      if (err instanceof FieldmeshError) throw err;
      throw new StoreCorruptError('STORE_CORRUPT', `data dir ${dir} cannot be read: ${(err as Error).message}`, { path: dir });
    }
    return store;
  }

  private async meta<T>(name: string): Promise<T | undefined> {
    return new Txn(this.db, this.dir, this.cache).get<T>(TABLES.meta, name);
  }

  private async load(): Promise<void> {
    const format = await this.meta<number>('format');
    const reader = new Txn(this.db, this.dir, this.cache);
    if (format === undefined) {
      for await (const _ of this.db.keys({ limit: 1 })) {
        throw new StoreCorruptError('STORE_FOREIGN', `${this.dir} holds a LevelDB database that is not a fieldmesh store (no format record)`, { path: this.dir });
      }
      const init = new Txn(this.db, this.dir, this.cache);
      init.put(TABLES.meta, 'format', STORAGE_FORMAT);
      init.put(TABLES.meta, 'derived', DERIVED_FORMAT);
      for (const [k, v] of Object.entries(this.identity)) init.put(TABLES.meta, k, v);
      await init.commit();
      return;
    }
    if (format > STORAGE_FORMAT) {
      throw new StoreMismatchError('STORE_NEWER', `data dir ${this.dir} has storage format ${format}, newer than this fieldmesh (${STORAGE_FORMAT})`, { path: this.dir, found: format });
    }
    for (const [k, expected] of Object.entries(this.identity)) {
      const found = await reader.get<string>(TABLES.meta, k);
      if (found !== expected) {
        throw new StoreMismatchError('STORE_IDENTITY', `data dir ${this.dir} belongs to ${k} ${found}, not ${expected}`, { path: this.dir, field: k, expected, found });
      }
    }
    for (let f = format; f < STORAGE_FORMAT; f++) await MIGRATIONS[f]!(this.db);
    const derived = await reader.get<number>(TABLES.meta, 'derived');
    const rebuild = this.forceRebuild || derived !== DERIVED_FORMAT || format !== STORAGE_FORMAT;
    // Derived rows are read only when they are kept: a repair must not trip over the damage it repairs.
    if (!rebuild) for await (const [device, tip] of scan<LogTip>(this.db, this.dir, TABLES.tip)) this.tips.set(device, tip);
    for await (const [device, cert] of scan<Uint8Array>(this.db, this.dir, TABLES.cert)) this.certs.set(device, cert);
    for await (const [device, proof] of scan<{ seq: number }>(this.db, this.dir, TABLES.fork)) this.forkedAt.set(device, proof.seq);
    if (!rebuild) for await (const [device, after] of scan<number>(this.db, this.dir, TABLES.revoked)) this.revokedAfter.set(device, after);
    this.orphanVerdicts = rebuild ? 0 : ((await reader.get<number>(TABLES.meta, 'orphanVerdicts')) ?? 0);
    this.clockState = (await reader.get<Hlc>(TABLES.meta, 'hlc')) ?? HLC_ZERO;
    this.hqWall = (await reader.get<number>(TABLES.meta, 'hqWall')) ?? 0;
    this.head = this.committed();
    if (rebuild) await this.rebuildDerived();
  }

  /** Drops every derived table and replays all logs through the same apply path as live ops. */
  async rebuildDerived(): Promise<void> {
    for (const table of DERIVED_TABLES) {
      await this.db.clear({ gte: tableKey(table, ''), lt: tableKey(table, '\uffff') });
    }
    await this.db.del(tableKey(TABLES.meta, 'orphanVerdicts'));
    this.cache.clear();
    this.revokedAfter = new Map();
    this.parked = null;
    this.orphanVerdicts = 0;
    this.clockState = (await new Txn(this.db, this.dir, this.cache).get<Hlc>(TABLES.meta, 'hlc')) ?? HLC_ZERO;
    const devices = await this.loggedDevices();
    await this.db.clear({ gte: tableKey(TABLES.tip, ''), lt: tableKey(TABLES.tip, '\uffff') });
    this.tips.clear();
    this.head = this.committed();
    for (const device of devices) {
      let chunk: Uint8Array[] = [];
      const flush = async () => {
        const ops = chunk.map((b) => parseOp(b).op);
        chunk = [];
        await this.write(async (ctx) => {
          for (const op of ops) await ctx.addOp(op);
        });
      };
      for await (const [, bytes] of scan<Uint8Array>(this.db, this.dir, TABLES.log, { gte: logKey(device, 0).slice(0, -12), lt: logKey(device, 0).slice(0, -12) + '\uffff' })) {
        chunk.push(bytes);
        if (chunk.length >= this.limits.rebuildBatchOps) await flush();
      }
      if (chunk.length > 0) await flush();
    }
    await this.write(async (ctx) => ctx.txn.put(TABLES.meta, 'derived', DERIVED_FORMAT));
    this.rebuilt = true;
  }

  /** Devices with a log, read from the log table's keys (a repair cannot trust the tips it rebuilds). */
  private async loggedDevices(): Promise<DeviceId[]> {
    const devices: DeviceId[] = [];
    const iterator = this.db.keys({ gte: tableKey(TABLES.log, ''), lt: tableKey(TABLES.log, '\uffff') });
    try {
      for (let key = await iterator.next(); key !== undefined; key = await iterator.next()) {
        const device = split(stripTable(key))[0]!;
        devices.push(device);
        iterator.seek(tableKey(TABLES.log, device + '\u0001')); // past every (device, seq) key: parts end at \u0000
      }
    } finally {
      await iterator.close();
    }
    return devices;
  }

  get clock(): Hlc {
    return this.clockState;
  }

  /**
   * How late it is by HQ's clock (0 if unknown): the latest wall clock of HQ's ops received, each
   * bounded by its arrival time plus the drift bound, so that neither this device's clock nor
   * any peer's, nor an HQ clock far ahead, moves it much (core/cert.ts admissionTimeMs). Kept
   * in `meta` (not derived: a rebuild replays no arrivals).
   */
  get hqWallMs(): number {
    return this.hqWall;
  }

  tipOf(device: DeviceId): LogTip {
    return this.tips.get(device) ?? { seq: 0, id: null };
  }

  versionVector(): VersionVector {
    const out: Record<DeviceId, number> = {};
    for (const device of [...this.tips.keys()].sort()) out[device] = this.tips.get(device)!.seq;
    return out;
  }

  /** Enrollment certificates held, by device (a team has at most hundreds). */
  get certificates(): ReadonlyMap<DeviceId, Uint8Array> {
    return this.certs;
  }

  /** Stores certificates the caller has checked; returns those that were new. */
  async addCertificates(certs: readonly Certificate[]): Promise<DeviceId[]> {
    // One certificate per device: the newest, whatever order they arrive in (a re-enrolled
    // device's old certificate, gossiped late, must not replace its new one).
    const newest = new Map<DeviceId, Certificate>();
    for (const c of certs) {
      const best = newest.get(c.device);
      if (best === undefined || newerCertificate(c, best)) newest.set(c.device, c);
    }
    const fresh = [...newest.values()].filter((c) => {
      const held = this.certs.get(c.device);
      return held === undefined || (!equalBytes(held, c.bytes) && newerCertificate(c, decodeCertificate(held)));
    });
    if (fresh.length === 0) return [];
    await this.write(async (ctx) => {
      for (const c of fresh) ctx.txn.put(TABLES.cert, c.device, c.bytes);
    });
    for (const c of fresh) this.certs.set(c.device, c.bytes);
    return fresh.map((c) => c.device);
  }

  /** Every fork proof held. */
  async forkProofs(): Promise<ForkProof[]> {
    this.checkOpen();
    const out: ForkProof[] = [];
    for await (const [, proof] of scan<ForkProof>(this.db, this.dir, TABLES.fork)) out.push(proof);
    return out;
  }

  /** Envelopes of `device`'s log from fromSeq, at most toSeq, until maxBytes would be exceeded. */
  async loadRange(device: DeviceId, fromSeq: number, toSeq: number, maxBytes: number): Promise<Uint8Array[]> {
    this.checkOpen();
    const out: Uint8Array[] = [];
    let bytes = 0;
    for await (const [, op] of scan<Uint8Array>(this.db, this.dir, TABLES.log, { gte: logKey(device, fromSeq), lt: logKey(device, toSeq + 1) })) {
      if (bytes + op.length + 4 > maxBytes) break;
      out.push(op);
      bytes += op.length + 4;
    }
    return out;
  }

  /**
   * Ids of ops we do not hold that parked ops wait for (at most `limit`, none of `exclude`;
   * others wait for ops we hold that wait in turn). With a fork proven, some may be void ops that no peer offers in its
   * log, only by id (docs/protocol.md, "Forks").
   */
  async missingBases(limit: number, exclude: ReadonlySet<OpId> = new Set()): Promise<OpId[]> {
    const out: OpId[] = [];
    if (this.parked === null) return out;
    const reader = this.reader();
    // After a reload the index cannot tell held ids from others: the reads do.
    for (const id of [...this.parked.unheldIds()]) {
      if (out.length >= limit) break;
      if (!exclude.has(id) && (await reader.get(TABLES.op, id)) === undefined && (await reader.get(TABLES.voids, id)) === undefined) out.push(id);
    }
    return out;
  }

  /** Envelopes of the void ops among `ids` that we hold (in our log or fetched by id). */
  async voidOps(ids: readonly OpId[]): Promise<Uint8Array[]> {
    const reader = this.reader();
    const out: Uint8Array[] = [];
    for (const id of ids) {
      const bytes = await voidEnvelope(reader, { forkedAt: this.forkedAt }, id);
      if (bytes !== undefined) out.push(bytes);
    }
    return out;
  }

  get forks(): ReadonlyMap<DeviceId, number> {
    return this.forkedAt;
  }

  get revocations(): ReadonlyMap<DeviceId, number> {
    return this.revokedAfter;
  }

  /** A reader over committed data. */
  reader(): Txn {
    this.checkOpen();
    return new Txn(this.db, this.dir, this.cache);
  }

  scan<T>(table: (typeof TABLES)[keyof typeof TABLES], range?: { gte: string; lt: string }, options?: { limit?: number; reverse?: boolean }) {
    this.checkOpen();
    return scan<T>(this.db, this.dir, table, range, options, this.cache);
  }

  /** Sealed records of a table, unchecked: for verify, which reports bad records instead of stopping. */
  scanRecords(table: (typeof TABLES)[keyof typeof TABLES], range?: { gte: string; lt: string }, options?: { limit?: number; reverse?: boolean }) {
    this.checkOpen();
    return scanRecords(this.db, this.dir, table, range, options);
  }

  /**
   * Runs `run` inside the next group-committed batch and resolves with its result once the
   * batch is durable. A job that throws before writing fails alone; one that throws after
   * writing fails its whole batch (nothing of the batch is written).
   */
  write<T>(run: (ctx: ApplyContext) => Promise<T>): Promise<T> {
    if (this.closing !== null) return Promise.reject(this.closedError());
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ run, resolve: resolve as (v: unknown) => void, reject });
      this.startFlushing();
    });
  }

  private startFlushing(): void {
    this.flushing ??= this.flushLoop().finally(() => {
      this.flushing = null;
      // A job queued by a continuation of the last resolved job, after the loop saw an empty
      // queue but before it ended, would otherwise wait forever.
      if (this.queue.length > 0) this.startFlushing();
    });
  }

  /**
   * Builds batch after batch from the queue. While one batch's synced write is under way, the
   * next is built on top of it (reading through its writes), so CPU work and disk flushes overlap.
   * A batch is resolved only after its own write completed; if a write fails, the batch built on
   * top of it fails too.
   */
  private async flushLoop(): Promise<void> {
    let inflight: Built | null = null;
    while (this.queue.length > 0 || inflight !== null) {
      const next: Built | null = this.queue.length > 0 ? await this.build(inflight) : null;
      if (inflight !== null) {
        const ok = await this.settle(inflight);
        if (!ok && next !== null) {
          this.fail(next.done, next.jobs, new StoreClosedError('BATCH_ABORTED', 'an earlier batch failed to write; retry'));
          this.rollBack();
          inflight = null;
          continue;
        }
        if (next !== null) next.txn.parent = null;
      }
      inflight = next;
      if (inflight !== null && inflight.failure === null) inflight.write = inflight.txn.commit();
    }
  }

  /** Runs the next jobs on a new transaction (on top of `parent`, if its write is under way). */
  private async build(parent: Built | null): Promise<Built> {
    const jobs = this.queue.splice(0, this.limits.maxJobsPerBatch);
    const txn = new Txn(this.db, this.dir, this.cache, parent?.txn ?? null);
    const h = this.head;
    this.parked ??= await ParkedIndex.load(this.waitingPairs(), this.limits.parkedOpsInMemory);
    const ctx = new ApplyContext(txn, this.resolution, h.revokedAfter, h.forkedAt, this.parked, h.orphanVerdicts);
    ctx.clock = h.clock;
    ctx.hqWallMs = h.hqWallMs;
    ctx.wantViews = this.events.listenerCount('entity') > 0;
    ctx.wantStatus = this.events.listenerCount('status') > 0;
    const built: Built = { jobs, txn, ctx, done: [], failure: null, write: null };
    for (const job of jobs) {
      const mark = txn.size;
      try {
        built.done.push([job, await job.run(ctx)]);
      } catch (err) {
        if (txn.size !== mark) {
          built.failure = err;
          break;
        }
        job.reject(err);
      }
    }
    if (built.failure === null) {
      try {
        await ctx.finish();
        if (ctx.orphanVerdictsDelta !== 0) txn.put(TABLES.meta, 'orphanVerdicts', h.orphanVerdicts + ctx.orphanVerdictsDelta);
        if (ctx.clock !== h.clock) txn.put(TABLES.meta, 'hlc', ctx.clock);
        if (ctx.hqWallMs !== h.hqWallMs) txn.put(TABLES.meta, 'hqWall', ctx.hqWallMs);
      } catch (err) {
        built.failure = err;
      }
    }
    if (built.failure === null) {
      const tips = new Map(h.tips);
      for (const [device, tip] of ctx.tips) tips.set(device, tip);
      this.head = { tips, clock: ctx.clock, hqWallMs: ctx.hqWallMs, revokedAfter: ctx.revokedAfter, forkedAt: ctx.forkedAt, orphanVerdicts: h.orphanVerdicts + ctx.orphanVerdictsDelta };
    }
    return built;
  }

  /** Waits for a built batch's write; resolves its jobs and publishes its state, or fails them. */
  private async settle(built: Built): Promise<boolean> {
    let failure = built.failure;
    if (failure === null) {
      try {
        await built.write;
      } catch (err) {
        failure = err;
      }
    }
    if (failure !== null) {
      this.fail(built.done, built.jobs, failure);
      this.rollBack();
      return false;
    }
    const ctx = built.ctx;
    for (const [device, tip] of ctx.tips) this.tips.set(device, tip);
    this.revokedAfter = ctx.revokedAfter;
    this.forkedAt = ctx.forkedAt;
    this.orphanVerdicts += ctx.orphanVerdictsDelta;
    this.clockState = ctx.clock;
    this.hqWall = ctx.hqWallMs;
    for (const [job, value] of built.done) job.resolve(value);
    this.emit(ctx);
    if (ctx.tips.size > 0 && this.events.listenerCount('tips') > 0) this.events.emit('tips', Object.fromEntries([...ctx.tips].map(([d, t]) => [d, t.seq])));
    for (const proof of ctx.newForks) this.events.emit('fork', proof);
    if (ctx.newVoids.length > 0) this.events.emit('voids', ctx.newVoids);
    return true;
  }

  private fail(done: [Job, unknown][], jobs: Job[], failure: unknown): void {
    for (const [job] of done) job.reject(failure);
    for (const job of jobs.slice(done.length)) job.reject(failure);
  }

  /** After a failed batch (nothing in flight): back to what is durable. */
  private rollBack(): void {
    this.head = this.committed();
    this.parked = null;
  }

  private async *waitingPairs(): AsyncGenerator<readonly [string, string]> {
    for await (const [key] of scan(this.db, this.dir, TABLES.waiting)) yield split(key) as [string, string];
  }

  /** The state as of the last durable batch. */
  private committed(): HeadState {
    return { tips: new Map(this.tips), clock: this.clockState, hqWallMs: this.hqWall, revokedAfter: this.revokedAfter, forkedAt: this.forkedAt, orphanVerdicts: this.orphanVerdicts };
  }

  private emit(ctx: ApplyContext): void {
    for (const event of ctx.statusEvents.values()) this.events.emit('status', event);
    for (const view of ctx.changedViews()) this.events.emit('entity', { kind: 'entity', view } satisfies StoreEvent);
  }

  get isClosed(): boolean {
    return this.closing !== null;
  }

  /**
   * Reads once close() began fail with STORE_CLOSED, not with LevelDB's untyped error (or, for
   * verify, a list of made-up problems); rows in the cache are not served either.
   */
  private checkOpen(): void {
    if (this.closing !== null) throw this.closedError();
  }

  private closedError(): StoreClosedError {
    return new StoreClosedError('STORE_CLOSED', `store ${this.dir} is closed`, { path: this.dir });
  }

  /** Waits for queued writes, then closes the database. Idempotent: every call resolves once the data dir is released. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      while (this.flushing !== null) await this.flushing;
      await this.db.close();
    })();
    return this.closing;
  }
}
