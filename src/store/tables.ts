/**
 * The tables of one data dir, each a key prefix in one LevelDB (docs/storage.md).
 * Values are checksummed records (records.ts) of canonical CBOR, except `log`, whose values are
 * op envelopes (their checksum is their id, checked against the `op` table on verify).
 */
export const TABLES = {
  meta: 'm', // name -> setting (format, team, device, hq, user, role, hlc, waiting count)
  log: 'l', // device, seq -> op envelope bytes
  op: 'o', // op id -> OpMeta
  tip: 't', // device -> { seq, id } of the highest contiguous op held
  entity: 'e', // domain, entity -> EntityState
  byEntity: 'b', // domain, entity, device, seq -> op id
  status: 's', // status, device, seq -> op id (per-device queues as range scans)
  count: 'c', // device, status -> number of ops
  waiting: 'w', // missing base op id, waiting op id -> ''
  verdict: 'v', // op id -> VerdictRecord (HQ's latest verdict)
  revoked: 'r', // device -> afterSeq
  fork: 'f', // device -> ForkProof
  skew: 'k', // device -> latest clock-skew flag
  conflict: 'x', // domain, entity -> id of its open conflict
  cert: 'n', // device -> its enrollment certificate (bytes), primary data
  ownLast: 'a', // domain, entity, device -> seq of the device's latest op on the entity
  voids: 'y', // op id -> envelope of a void op (past its device's fork point) not in our log, primary data
} as const;

export type Table = (typeof TABLES)[keyof typeof TABLES];

export const tableKey = (table: Table, key: string): string => table + '\u0001' + key;
export const tableRange = (table: Table, range: { gte: string; lt: string } = { gte: '', lt: '\uffff' }) => ({
  gte: tableKey(table, range.gte),
  lt: tableKey(table, range.lt),
});
export const stripTable = (fullKey: string): string => fullKey.slice(2);
