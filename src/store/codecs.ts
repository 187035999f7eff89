/**
 * Compact record layouts for the two rows written for (nearly) every op: op metadata and entity
 * state. Positional arrays instead of maps: smaller on disk and about twice as fast to encode
 * (no key sorting). Each codec is symmetric: decode(encode(x)) deep-equals x. Other tables store
 * their plain values as CBOR.
 */
import type { EntityState, OpRef, Write } from '../core/entity.ts';
import { OP_TYPES, type OpType } from '../core/op.ts';
import type { OpStatus, StatusName } from '../core/status.ts';
import type { Value } from '../core/value.ts';
import type { OpMeta } from './apply.ts';
import { TABLES, type Table } from './tables.ts';

export interface Codec<T> {
  encode(value: T): unknown;
  decode(raw: unknown): T;
}

type Clock = Record<string, number>;
const clockOut = (clock: Clock | null): unknown => (clock === null ? null : Object.entries(clock).flat());
function clockIn(raw: unknown): Clock | null {
  if (raw === null) return null;
  const flat = raw as (string | number)[];
  const out: Clock = {};
  for (let i = 0; i < flat.length; i += 2) out[flat[i] as string] = flat[i + 1] as number;
  return out;
}

const statusOut = (s: OpStatus): unknown[] => (s.reason === undefined ? [s.status] : [s.status, s.reason, s.detail ?? '']);
function statusIn(raw: unknown[]): OpStatus {
  return raw.length === 1 ? { status: raw[0] as StatusName } : { status: raw[0] as StatusName, reason: raw[1] as string, detail: raw[2] as string };
}

const opMeta: Codec<OpMeta> = {
  encode: (m) => [m.device, m.seq, OP_TYPES.indexOf(m.type), m.user, m.wallMs, m.counter, m.domain, m.entity, clockOut(m.clock), m.badBase, m.waitingOn, m.previousOwnSeq, statusOut(m.status)],
  decode: (raw) => {
    const r = raw as unknown[];
    return {
      device: r[0] as string,
      seq: r[1] as number,
      type: OP_TYPES[r[2] as number] as OpType,
      user: r[3] as string,
      wallMs: r[4] as number,
      counter: r[5] as number,
      domain: r[6] as string | null,
      entity: r[7] as string | null,
      clock: clockIn(r[8]),
      badBase: r[9] as boolean,
      waitingOn: r[10] as number,
      previousOwnSeq: r[11] as number,
      status: statusIn(r[12] as unknown[]),
    };
  },
};

const refOut = (h: OpRef) => [h.op, h.device, h.seq];
const refIn = (r: unknown[]): OpRef => ({ op: r[0] as string, device: r[1] as string, seq: r[2] as number });
const writeOut = (w: Write) => [w.op, w.device, w.seq, w.hlc.wallMs, w.hlc.counter, w.user, w.deleted, w.value];
const writeIn = (r: unknown[]): Write => ({
  op: r[0] as string,
  device: r[1] as string,
  seq: r[2] as number,
  hlc: { wallMs: r[3] as number, counter: r[4] as number },
  user: r[5] as string,
  deleted: r[6] as boolean,
  value: r[7] as Value,
});

const entityState: Codec<EntityState> = {
  encode: (s) => [s.domain, s.entity, s.heads.map(refOut), s.deletes.map(writeOut), Object.entries(s.registers).map(([f, ws]) => [f, ws.map(writeOut)])],
  decode: (raw) => {
    const r = raw as unknown[];
    const registers: Record<string, readonly Write[]> = {};
    for (const [field, writes] of r[4] as [string, unknown[][]][]) registers[field] = writes.map(writeIn);
    return { domain: r[0] as string, entity: r[1] as string, heads: (r[2] as unknown[][]).map(refIn), deletes: (r[3] as unknown[][]).map(writeIn), registers };
  },
};

const identity: Codec<unknown> = { encode: (v) => v, decode: (v) => v };

const CODECS: Partial<Record<Table, Codec<unknown>>> = {
  [TABLES.op]: opMeta as Codec<unknown>,
  [TABLES.entity]: entityState as Codec<unknown>,
};

export const codecFor = (table: Table): Codec<unknown> => CODECS[table] ?? identity;
