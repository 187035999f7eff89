/**
 * Re-checks a data dir from its logs: every op decodes canonically, carries a valid signature,
 * and chains to its predecessor without gaps; every log ends at its recorded tip; every op has
 * its metadata row. Reports problems instead of stopping at the first.
 */
import { checkExtends, EMPTY_TIP, type LogTip } from '../core/chain.ts';
import { FieldmeshError } from '../core/errors.ts';
import { decodeOp } from '../core/op.ts';
import { logKey, split, parseSeq } from './keys.ts';
import type { Store } from './store.ts';
import { stripTable, TABLES } from './tables.ts';
import { openRecord } from './records.ts';

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
    const recorded = store.tipOf(device);
    if (recorded.seq !== tip.seq || recorded.id !== tip.id) {
      problems.push({ device, seq: tip.seq, code: 'TIP_MISMATCH', message: `log ends at seq ${tip.seq}, tip says ${recorded.seq}` });
    }
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
  return { devices: devices.size, ops, problems };
}
