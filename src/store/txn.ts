/**
 * One logical change in the making: reads see the change's own writes first, then a bounded
 * cache of committed values, then the disk. Nothing reaches the disk until `commit`, which writes
 * everything in one atomic, synced batch; the cache learns the values only after that.
 */
import type { AbstractLevel } from 'abstract-level';
import { corrupt, openValue, sealValue, openRecord, sealRecord } from './records.ts';
import { SEP } from './keys.ts';
import { TABLES, tableKey, tableRange, stripTable, type Table } from './tables.ts';

/** Tables only written or range-scanned on hot paths: caching their rows would only churn the cache. */
const UNCACHED: ReadonlySet<string> = new Set<string>([TABLES.log, TABLES.status, TABLES.byEntity, TABLES.waiting, TABLES.skew, TABLES.conflict]);
/** Cached "no such row": creates and verdict lookups ask for rows that do not exist yet. */
const ABSENT = Symbol('absent');

/** The LevelDB-compatible database under a store: `level` on disk, or `memory-level` in the simulator. */
export type Db = AbstractLevel<string | Uint8Array, string, Uint8Array>;

/**
 * Rows are kept per table (a slot per table letter), under their key without the table prefix:
 * lookups then hash the caller's string (often an op id, whose hash V8 keeps) instead of
 * building, flattening and hashing a new prefixed key each time.
 */
const SLOTS = 32;
const slotOf = (table: string): number => table.charCodeAt(0) & 31; // table letters are a..z
for (const table of Object.values(TABLES)) {
  if (!/^[a-z]$/.test(table)) throw new Error(`table prefix '${table}': Txn and RowCache slots need a single lower-case letter`);
}
const emptySlots = (): Map<string, unknown>[] => Array.from({ length: SLOTS }, () => new Map<string, unknown>());

/**
 * A bounded cache of decoded committed values, in two generations: rows go into the young one;
 * when it is full it becomes the old one and the previous old one is dropped. Every step is O(1):
 * evicting from one big Map would walk the slots its deletes left behind on every eviction.
 * Rows written often (entity states, counters) keep landing in the young generation and stay.
 */
export class RowCache {
  private young = emptySlots();
  private old = emptySlots();
  private youngSize = 0;
  private readonly generation: number;
  /**
   * Bumped by every commit: a read from disk that started before a commit may return what that
   * commit replaced, so it is cached only if no commit happened meanwhile.
   */
  epoch = 0;
  constructor(capacity: number) {
    this.generation = Math.max(1, Math.floor(capacity / 2));
  }
  get(table: Table, key: string): unknown {
    const slot = slotOf(table);
    const value = this.young[slot]!.get(key);
    return value !== undefined ? value : this.old[slot]!.get(key);
  }
  set(table: Table, key: string, value: unknown): void {
    const rows = this.young[slotOf(table)]!;
    const before = rows.size;
    rows.set(key, value);
    if (rows.size !== before && ++this.youngSize >= this.generation) {
      this.old = this.young;
      this.young = emptySlots();
      this.youngSize = 0;
    }
  }
  clear(): void {
    this.young = emptySlots();
    this.old = emptySlots();
    this.youngSize = 0;
  }
}

/** A delete in a change: it must hide the committed value (and the parent's), not fall through to it. */
const DELETED = Symbol('deleted');

export class Txn {
  /** Per table slot: key -> new value, or DELETED. Values of the log table are raw bytes, the others are encoded on commit. */
  private readonly writes: (Map<string, unknown> | undefined)[] = new Array(SLOTS);
  /** Rows written (distinct keys). */
  private rows = 0;
  private readonly db: Db;
  private readonly where: string;
  private readonly cache: RowCache;
  /** The batch being committed while this one is built: its writes are not on disk yet. */
  parent: Txn | null;

  constructor(db: Db, where: string, cache: RowCache, parent: Txn | null = null) {
    this.db = db;
    this.where = where;
    this.cache = cache;
    this.parent = parent;
  }

  /** A row as written by this change or the batch in flight (DELETED for a delete or a row known absent), else undefined. */
  private pending(table: Table, key: string): unknown {
    const slot = slotOf(table);
    const own = this.writes[slot]?.get(key);
    if (own !== undefined) return own;
    const parent = this.parent;
    const inFlight = parent === null ? undefined : parent.writes[slot]?.get(key);
    if (inFlight !== undefined) return inFlight;
    return this.absentRows[slot]?.has(key) === true || parent?.absentRows[slot]?.has(key) === true ? DELETED : undefined;
  }

  /**
   * Whether values read from disk since `epoch` may be cached. A batch being built has only its
   * parent in flight, whose keys it never reads from disk; a plain reader may have raced any commit.
   */
  private fresh(epoch: number): boolean {
    return this.parent !== null || this.cache.epoch === epoch;
  }

  /** How many rows this change wrote (distinct keys). */
  get size(): number {
    return this.rows;
  }

  async get<T>(table: Table, key: string): Promise<T | undefined> {
    const pending = this.pending(table, key);
    if (pending !== undefined) return pending === DELETED ? undefined : (pending as T);
    const cached = this.cache.get(table, key);
    if (cached !== undefined) return cached === ABSENT ? undefined : (cached as T);
    const full = tableKey(table, key);
    const epoch = this.cache.epoch;
    const record = await readRecord(this.db, full, this.where);
    const value = record === undefined ? undefined : openValue<T>(full, record, this.where);
    if (!UNCACHED.has(table) && this.fresh(epoch)) this.cache.set(table, key, value === undefined ? ABSENT : value);
    return value;
  }

  /**
   * Brings the committed rows the caller is about to read into the cache in one round trip,
   * instead of one awaited read each. Rows this change or the batch in flight wrote are skipped.
   */
  async prefetch(wanted: Iterable<readonly [Table, string]>): Promise<void> {
    const seen = new Set<string>();
    const tables: Table[] = [];
    const keys: string[] = [];
    const list: string[] = [];
    for (const [table, key] of wanted) {
      if (UNCACHED.has(table)) continue;
      if (this.pending(table, key) !== undefined || this.cache.get(table, key) !== undefined) continue;
      const full = tableKey(table, key);
      if (seen.has(full)) continue;
      seen.add(full);
      tables.push(table);
      keys.push(key);
      list.push(full);
    }
    if (list.length === 0) return;
    const epoch = this.cache.epoch;
    let records: (Uint8Array | undefined)[];
    try {
      records = await this.db.getMany(list);
    } catch (err) {
      throw corrupt(this.where, list[0]!, (err as Error).message);
    }
    if (!this.fresh(epoch)) return; // reads go to disk instead
    for (let i = 0; i < list.length; i++) {
      const record = records[i];
      this.cache.set(tables[i]!, keys[i]!, record === undefined ? ABSENT : openValue(list[i]!, record, this.where));
    }
  }

  /**
   * Per table slot: rows known not to exist on disk that this change does not write (so far): read as
   * absent by this change and the one built on top of it, and cached as absent once committed.
   */
  private readonly absentRows: (Set<string> | undefined)[] = new Array(SLOTS);

  /** Declares a row that is not on disk (nor written by the batch in flight): reads of it need no disk. */
  knownAbsent(table: Table, key: string): void {
    const slot = slotOf(table);
    let keys = this.absentRows[slot];
    if (keys === undefined) keys = this.absentRows[slot] = new Set();
    keys.add(key);
  }

  /** Raw bytes of many rows in one round trip (committed rows only: for readers). */
  async getRawMany(table: Table, keys: readonly string[]): Promise<(Uint8Array | undefined)[]> {
    const full = keys.map((key) => tableKey(table, key));
    let records: (Uint8Array | undefined)[];
    try {
      records = full.length === 0 ? [] : await this.db.getMany(full);
    } catch (err) {
      throw corrupt(this.where, full[0]!, (err as Error).message);
    }
    return records.map((record, i) => (record === undefined ? undefined : openRecord(full[i]!, record, this.where)));
  }

  /** Raw bytes (op envelopes), checksummed but not decoded. */
  async getRaw(table: Table, key: string): Promise<Uint8Array | undefined> {
    const pending = this.pending(table, key);
    if (pending !== undefined) return pending === DELETED ? undefined : (pending as Uint8Array);
    const full = tableKey(table, key);
    const record = await readRecord(this.db, full, this.where);
    return record === undefined ? undefined : openRecord(full, record, this.where);
  }

  /** Writes a row: raw bytes in the log table, a value to encode in the others. */
  put(table: Table, key: string, value: unknown): void {
    this.write(table, key, value);
  }

  del(table: Table, key: string): void {
    this.write(table, key, DELETED);
  }

  /**
   * Keys of `byEntity` rows written, by entity (their key up to the device): the one range a
   * batch queries (an entity's ops, when it is rebuilt), without walking every write.
   */
  private readonly entityRows = new Map<string, string[]>();

  private write(table: Table, key: string, value: unknown): void {
    const slot = slotOf(table);
    let rows = this.writes[slot];
    if (rows === undefined) rows = this.writes[slot] = new Map();
    if (table === TABLES.byEntity) {
      const prefix = key.slice(0, key.lastIndexOf(SEP, key.lastIndexOf(SEP) - 1) + 1);
      const list = this.entityRows.get(prefix);
      if (list === undefined) this.entityRows.set(prefix, [key]);
      else list.push(key);
    }
    const before = rows.size;
    rows.set(key, value);
    if (rows.size !== before) this.rows++;
  }

  /** Keys (without table prefix) in a range, the change's own puts and deletes included. */
  async keys(table: Table, range: { gte: string; lt: string }): Promise<string[]> {
    const found = new Set<string>();
    for await (const key of this.db.keys(tableRange(table, range))) found.add(stripTable(key));
    const slot = slotOf(table);
    for (const txn of this.parent === null ? [this] : [this.parent, this]) {
      const rows = txn.writes[slot];
      if (rows === undefined) continue;
      // An entity's rows come from the index; any other range walks the table's writes (none is asked on hot paths).
      const written = table === TABLES.byEntity && range.gte.endsWith(SEP) ? (txn.entityRows.get(range.gte) ?? []) : rows.keys();
      for (const key of written) {
        if (key >= range.gte && key < range.lt) {
          if (rows.get(key) === DELETED) found.delete(key);
          else found.add(key);
        }
      }
    }
    return [...found].sort();
  }

  /** Writes everything in one synced batch; then the cache holds the new values. */
  async commit(): Promise<void> {
    if (this.rows === 0) return;
    // A chained batch hands each row to LevelDB as it is sealed: half the main-thread time of an array batch.
    const batch = this.db.batch();
    try {
      for (let slot = 0; slot < SLOTS; slot++) {
        const rows = this.writes[slot];
        if (rows === undefined) continue;
        const log = slot === slotOf(TABLES.log);
        const prefix = String.fromCharCode(96 + slot) + '\u0001';
        // forEach rather than for-of over entries: no [key, value] array per row.
        rows.forEach((pending, key) => {
          const full = prefix + key;
          if (pending === DELETED) batch.del(full);
          else batch.put(full, log ? sealRecord(full, pending as Uint8Array) : sealValue(full, pending));
        });
      }
    } catch (err) {
      await batch.close();
      throw err;
    }
    // `sync` is classic-level's (LevelDB fsync); other backends ignore it.
    await batch.write({ sync: true } as object);
    this.cache.epoch++;
    for (let slot = 0; slot < SLOTS; slot++) {
      const rows = this.writes[slot];
      if (rows === undefined) continue;
      const table = String.fromCharCode(96 + slot) as Table;
      if (UNCACHED.has(table)) continue;
      rows.forEach((pending, key) => this.cache.set(table, key, pending === DELETED ? ABSENT : pending));
    }
    for (let slot = 0; slot < SLOTS; slot++) {
      const keys = this.absentRows[slot];
      if (keys === undefined) continue;
      const table = String.fromCharCode(96 + slot) as Table;
      const rows = this.writes[slot];
      for (const key of keys) if (rows?.has(key) !== true) this.cache.set(table, key, ABSENT);
    }
  }
}

/** LevelDB's own read errors (a damaged table file) become StoreCorruptError naming the data dir. */
async function readRecord(db: Db, key: string, where: string): Promise<Uint8Array | undefined> {
  try {
    return await db.get(key);
  } catch (err) {
    throw corrupt(where, key, (err as Error).message);
  }
}

/**
 * Committed rows of a table in key order (a read-only query; the change's own writes are not
 * seen). Entity states the cache holds are taken from it, already decoded (and possibly newer):
 * queries over many entities then skip decoding, and views computed from them can be reused.
 */
export async function* scan<T>(db: Db, where: string, table: Table, range?: { gte: string; lt: string }, options: { limit?: number; reverse?: boolean } = {}, cache?: RowCache): AsyncGenerator<[string, T]> {
  for await (const [key, record] of scanRecords(db, where, table, range, options)) {
    const short = stripTable(key);
    const cached = table === TABLES.entity ? cache?.get(table, short) : undefined;
    if (cached !== undefined && cached !== ABSENT) yield [short, cached as T];
    else yield [short, table === 'l' ? (openRecord(key, record, where) as T) : openValue<T>(key, record, where)];
  }
}

const SCAN_CHUNK = 128;

/** Raw records (full key, sealed value) of a table; LevelDB read errors become StoreCorruptError. */
export async function* scanRecords(db: Db, where: string, table: Table, range?: { gte: string; lt: string }, options: { limit?: number; reverse?: boolean } = {}): AsyncGenerator<[string, Uint8Array]> {
  const full = tableRange(table, range);
  const iterator = db.iterator({ ...full, limit: options.limit ?? -1, reverse: options.reverse ?? false });
  // Rows come from LevelDB a chunk at a time: one native call per chunk, not per row.
  const chunk = options.limit !== undefined && options.limit > 0 ? Math.min(options.limit, SCAN_CHUNK) : SCAN_CHUNK;
  try {
    while (true) {
      let entries: [string, Uint8Array][];
      try {
        entries = await iterator.nextv(chunk);
      } catch (err) {
        throw corrupt(where, full.gte, (err as Error).message);
      }
      if (entries.length === 0) return;
      yield* entries;
    }
  } finally {
    await iterator.close();
  }
}
