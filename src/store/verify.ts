/**
 * Re-checks a data dir from its logs: every op decodes canonically, carries a valid signature,
 * and chains to its predecessor without gaps; every log ends at its recorded tip; every op has
 * its metadata row; every void op fetched by id is signed and past a proven fork point; every
 * other row carries its checksum and decodes. Reports problems instead of stopping at the first.
 */
import { checkExtends, EMPTY_TIP, type LogTip } from '../core/chain.ts';
import { FieldmeshError } from '../core/errors.ts';
import { isVoid } from '../core/materialize.ts';
import { decodeOp } from '../core/op.ts';
import { logKey, parseSeq, split, under } from './keys.ts';
import type { Store } from './store.ts';
import { stripTable, TABLES } from './tables.ts';
import { openRecord, openValue } from './records.ts';

export interface VerifyProblem {
  readonly device: string;
  readonly seq: number;
  readonly code: string;
  readonly message: string;
}

export interface VerifyReport {
  readonly devices: number;
  readonly ops: number;
  readonly problems: readonly VerifyProblem[];
}

export async function verifyStore(store: Store, onProgress?: (ops: number) => void): Promise<VerifyReport> {
  const problems: VerifyProblem[] = [];
  const reader = store.reader();
  let ops = 0;
  let device: string | null = null;
  let tip: LogTip = EMPTY_TIP;
  const devices = new Set<string>();
  const endDevice = async () => {
    if (device === null) return;
    if (sameTip(store.tipOf(device), tip)) return;
    // The scan reads the log as it was when it began, and batches keep landing on a live node:
    // a difference counts only if it is still there once the writes under way have settled.
    await store.write(async () => undefined);
    const now = await lastOp(store, device);
    const recorded = store.tipOf(device);
    if (!sameTip(recorded, now)) problems.push({ device, seq: now.seq, code: 'TIP_MISMATCH', message: `log ends at seq ${now.seq}, tip says ${recorded.seq}` });
  };
  const records = store.scanRecords(TABLES.log);
  while (true) {
    let next: IteratorResult<[string, Uint8Array]>;
    try {
      next = await records.next();
    } catch (err) {
      // The database itself cannot be read past here.
      problems.push({ device: device ?? '', seq: tip.seq, code: (err as FieldmeshError).code ?? 'ERROR', message: (err as Error).message });
      break;
    }
    if (next.done === true) break;
    const [fullKey, record] = next.value;
    const key = stripTable(fullKey);
    const [dev, seqHex] = split(key) as [string, string];
    if (dev !== device) {
      await endDevice();
      device = dev;
      tip = EMPTY_TIP;
      devices.add(dev);
    }
    const seq = parseSeq(seqHex);
    try {
      const op = decodeOp(openRecord(fullKey, record, store.dir));
      if (op.device !== dev || op.seq !== seq) throw new FieldmeshError('MISFILED', `op ${op.device}#${op.seq} stored under ${logKey(dev, seq)}`);
      checkExtends(tip, op);
      if ((await reader.get(TABLES.op, op.id)) === undefined) throw new FieldmeshError('NO_METADATA', `op ${op.id} has no metadata row`);
      tip = { seq: op.seq, id: op.id };
    } catch (err) {
      const e = err as FieldmeshError;
      problems.push({ device: dev, seq, code: e.code ?? 'ERROR', message: e.message });
      tip = { seq, id: null };
    }
    if (++ops % 10_000 === 0) onProgress?.(ops);
  }
  await endDevice();
  await verifyVoids(store, problems);
  await verifyRows(store, problems);
  return { devices: devices.size, ops, problems };
}

/**
 * Every row of every other table (derived state, settings, certificates, fork proofs) carries
 * its checksum and decodes: a damaged one would fail the command that reads it. Damage in
 * derived tables is repaired by rebuilding them from the logs (`fieldmesh verify --repair`).
 */
async function verifyRows(store: Store, problems: VerifyProblem[]): Promise<void> {
  for (const table of Object.values(TABLES)) {
    if (table === TABLES.log || table === TABLES.voids) continue; // checked op by op above
    try {
      for await (const [fullKey, record] of store.scanRecords(table)) {
        try {
          openValue(fullKey, record, store.dir);
        } catch (err) {
          problems.push({ device: '', seq: 0, code: 'BAD_ROW', message: (err as Error).message });
        }
      }
    } catch (err) {
      problems.push({ device: '', seq: 0, code: (err as FieldmeshError).code ?? 'ERROR', message: (err as Error).message });
    }
  }
}

/** Void ops fetched by id: each decodes, is signed, is filed under its own id and is past its device's fork point. */
async function verifyVoids(store: Store, problems: VerifyProblem[]): Promise<void> {
  try {
    for await (const [fullKey, record] of store.scanRecords(TABLES.voids)) {
      try {
        const op = decodeOp(openValue<Uint8Array>(fullKey, record, store.dir));
        if (op.id !== stripTable(fullKey)) throw new FieldmeshError('MISFILED', `void op ${op.id} stored under ${stripTable(fullKey)}`);
        if (!isVoid(op, { forkedAt: store.forks })) throw new FieldmeshError('NOT_VOID', `op ${op.device}#${op.seq} is kept as void, but no fork point at or below its seq is proven`);
      } catch (err) {
        const e = err as FieldmeshError;
        problems.push({ device: '', seq: 0, code: e.code ?? 'ERROR', message: e.message });
      }
    }
  } catch (err) {
    problems.push({ device: '', seq: 0, code: (err as FieldmeshError).code ?? 'ERROR', message: (err as Error).message });
  }
}

const sameTip = (a: LogTip, b: LogTip) => a.seq === b.seq && a.id === b.id;

/** The last op of a device's log on disk now (its seq and id), as a tip. */
async function lastOp(store: Store, device: string): Promise<LogTip> {
  for await (const [fullKey, record] of store.scanRecords(TABLES.log, under(device), { limit: 1, reverse: true })) {
    try {
      const op = decodeOp(openRecord(fullKey, record, store.dir));
      return { seq: op.seq, id: op.id };
    } catch {
      return { seq: parseSeq(split(stripTable(fullKey))[1]!), id: null };
    }
  }
  return EMPTY_TIP;
}
