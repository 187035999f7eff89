/**
 * One logical change in the making: reads see the change's own writes first, then a bounded
 * cache of committed values, then the disk. Nothing reaches the disk until `commit`, which writes
 * everything in one atomic, synced batch; the cache learns the values only after that.
 */
import type { AbstractLevel } from 'abstract-level';
import { corrupt, openValue, sealValue, openRecord, sealRecord } from './records.ts';
import { tableKey, tableRange, stripTable, type Table } from './tables.ts';

/** The LevelDB-compatible database under a store: `level` on disk, or `memory-level` in the simulator. */
export type Db = AbstractLevel<string | Uint8Array, string, Uint8Array>;

/**
 * A bounded cache of decoded committed values. Eviction is oldest-written first: rows that are
 * written often (entity states, counters) stay, without reordering on every read.
 */
export class Lru {
  private readonly map = new Map<string, unknown>();
  private readonly capacity: number;
  constructor(capacity: number) {
    this.capacity = capacity;
  }
  get(key: string): unknown {
    return this.map.get(key);
  }
  set(key: string, value: unknown): void {
    this.map.delete(key);
    this.map.set(key, value);
    if (this.map.size > this.capacity) this.map.delete(this.map.keys().next().value!);
  }
  delete(key: string): void {
    this.map.delete(key);
  }
  clear(): void {
    this.map.clear();
  }
}

type Pending = { readonly value: unknown; readonly raw: boolean } | null;

export class Txn {
  private readonly writes = new Map<string, Pending>();
  private readonly db: Db;
  private readonly where: string;
  private readonly cache: Lru;
  /** The batch being committed while this one is built: its writes are not on disk yet. */
  parent: Txn | null;

  constructor(db: Db, where: string, cache: Lru, parent: Txn | null = null) {
    this.db = db;
    this.where = where;
    this.cache = cache;
    this.parent = parent;
  }

  private pending(full: string): Pending | undefined {
    // A delete is recorded as null: it must hide the parent's value, not fall through to it.
    const own = this.writes.get(full);
    return own !== undefined ? own : this.parent?.writes.get(full);
  }

  get size(): number {
    return this.writes.size;
  }

  async get<T>(table: Table, key: string): Promise<T | undefined> {
    const full = tableKey(table, key);
    const pending = this.pending(full);
    if (pending !== undefined) return pending === null ? undefined : (pending.value as T);
    const cached = this.cache.get(full);
    if (cached !== undefined) return cached as T;
    const record = await readRecord(this.db, full, this.where);
    if (record === undefined) return undefined;
    const value = openValue<T>(full, record, this.where);
    this.cache.set(full, value);
    return value;
  }

  /** Raw bytes (op envelopes), checksummed but not decoded. */
  async getRaw(table: Table, key: string): Promise<Uint8Array | undefined> {
    const full = tableKey(table, key);
    const pending = this.pending(full);
    if (pending !== undefined) return pending === null ? undefined : (pending.value as Uint8Array);
    const record = await readRecord(this.db, full, this.where);
    return record === undefined ? undefined : openRecord(full, record, this.where);
  }

  put(table: Table, key: string, value: unknown): void {
    this.writes.set(tableKey(table, key), { value, raw: false });
  }

  putRaw(table: Table, key: string, bytes: Uint8Array): void {
    this.writes.set(tableKey(table, key), { value: bytes, raw: true });
  }

  del(table: Table, key: string): void {
    this.writes.set(tableKey(table, key), null);
  }

  /** Keys (without table prefix) in a range, the change's own puts and deletes included. */
  async keys(table: Table, range: { gte: string; lt: string }): Promise<string[]> {
    const full = tableRange(table, range);
    const found = new Set<string>();
    for await (const key of this.db.keys(full)) found.add(key);
    for (const writes of [this.parent?.writes, this.writes]) {
      for (const [key, pending] of writes ?? []) {
        if (key >= full.gte && key < full.lt) {
          if (pending === null) found.delete(key);
          else found.add(key);
        }
      }
    }
    return [...found].sort().map(stripTable);
  }

  /** Writes everything in one synced batch; then the cache holds the new values. */
  async commit(): Promise<void> {
    if (this.writes.size === 0) return;
    const batch = [...this.writes].map(([key, pending]) =>
      pending === null
        ? { type: 'del' as const, key }
        : { type: 'put' as const, key, value: pending.raw ? sealRecord(key, pending.value as Uint8Array) : sealValue(key, pending.value) },
    );
    // `sync` is classic-level's (LevelDB fsync); other backends ignore it.
    await this.db.batch(batch, { sync: true } as object);
    for (const [key, pending] of this.writes) {
      if (pending === null || pending.raw) this.cache.delete(key);
      else this.cache.set(key, pending.value);
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

/** Committed rows of a table in key order (a read-only query; the change's own writes are not seen). */
export async function* scan<T>(db: Db, where: string, table: Table, range?: { gte: string; lt: string }, options: { limit?: number; reverse?: boolean } = {}): AsyncGenerator<[string, T]> {
  for await (const [key, record] of scanRecords(db, where, table, range, options)) {
    yield [stripTable(key), table === 'l' ? (openRecord(key, record, where) as T) : openValue<T>(key, record, where)];
  }
}

/** Raw records (full key, sealed value) of a table; LevelDB read errors become StoreCorruptError. */
export async function* scanRecords(db: Db, where: string, table: Table, range?: { gte: string; lt: string }, options: { limit?: number; reverse?: boolean } = {}): AsyncGenerator<[string, Uint8Array]> {
  const full = tableRange(table, range);
  const iterator = db.iterator({ ...full, limit: options.limit ?? -1, reverse: options.reverse ?? false });
  try {
    while (true) {
      let entry: [string, Uint8Array] | undefined;
      try {
        entry = await iterator.next();
      } catch (err) {
        throw corrupt(where, full.gte, (err as Error).message);
      }
      if (entry === undefined) return;
      yield entry;
    }
  } finally {
    await iterator.close();
  }
}
