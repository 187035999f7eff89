/**
 * Sync frames (docs/protocol.md, "Sync frames"). Each frame is one canonical CBOR array whose
 * first item is its type; on the stream every frame is preceded by its length as an unsigned
 * varint and may not exceed the receiver's maxFrameBytes.
 *
 *   hello     := [1, version, team, hq, cert: bstr, tips: [device, seq, id: bstr32]*, maxFrameBytes, windowBytes]
 *   certs     := [2, [cert: bstr]*]
 *   ops       := [3, device, [op: bstr]+]          one contiguous, chained run of one device's log
 *   fork      := [4, device, seq, opA: bstr, opB: bstr]
 *   credit    := [5, bytes]                        the receiver may take `bytes` more op bytes
 *   caughtUp  := [6]                               everything missing as of hello has been sent
 *   goodbye   := [7, code, message]                the sender closes because of `code`
 *   query     := [8, device, seq]                  send me your op of `device` at `seq`
 *   answer    := [9, device, seq, op: bstr | null] the op asked for, or null if not held
 *   want      := [10, [id: bstr32]{1..64}]         send me these ops if they are void (past a fork point)
 *   voids     := [11, [op: bstr]+]                 void ops the peer wanted
 */
import { decodeCanonical, encodeCanonical } from '../cbor.ts';
import { decodeError, tooLargeError } from '../errors.ts';
import type { DeviceId } from '../keys.ts';
import { opIdFromBytes, opIdToBytes, type OpId } from '../op.ts';

export const SYNC_PROTOCOL = '/fieldmesh/sync/3.0.0';
export const SYNC_VERSION = 3;

/** Where a log stands as a peer offers it: the highest seq it holds (and counts) and that op's id. */
export interface TipId {
  readonly seq: number;
  readonly id: OpId;
}

/** Device -> tip, for every device with at least one op offered. */
export type Tips = Readonly<Record<DeviceId, TipId>>;

export type Frame =
  | { readonly type: 'hello'; readonly version: number; readonly team: string; readonly hq: DeviceId; readonly cert: Uint8Array; readonly tips: Tips; readonly maxFrameBytes: number; readonly windowBytes: number }
  | { readonly type: 'certs'; readonly certs: readonly Uint8Array[] }
  | { readonly type: 'ops'; readonly device: DeviceId; readonly ops: readonly Uint8Array[] }
  | { readonly type: 'fork'; readonly device: DeviceId; readonly seq: number; readonly ops: readonly [Uint8Array, Uint8Array] }
  | { readonly type: 'credit'; readonly bytes: number }
  | { readonly type: 'caughtUp' }
  | { readonly type: 'goodbye'; readonly code: string; readonly message: string }
  | { readonly type: 'query'; readonly device: DeviceId; readonly seq: number }
  | { readonly type: 'answer'; readonly device: DeviceId; readonly seq: number; readonly op: Uint8Array | null }
  | { readonly type: 'want'; readonly ids: readonly OpId[] }
  | { readonly type: 'voids'; readonly ops: readonly Uint8Array[] };

/** Most op ids in one want frame. */
export const MAX_WANT_IDS = 64;

const CODES = { hello: 1, certs: 2, ops: 3, fork: 4, credit: 5, caughtUp: 6, goodbye: 7, query: 8, answer: 9, want: 10, voids: 11 } as const;

export function encodeFrame(frame: Frame): Uint8Array {
  switch (frame.type) {
    case 'hello': {
      const tips = Object.entries(frame.tips)
        .sort(([a], [b]) => (a < b ? -1 : 1))
        .map(([device, tip]) => [device, tip.seq, Uint8Array.from(opIdToBytes(tip.id))]);
      return encodeCanonical([CODES.hello, frame.version, frame.team, frame.hq, frame.cert, tips, frame.maxFrameBytes, frame.windowBytes]);
    }
    case 'certs':
      return encodeCanonical([CODES.certs, frame.certs]);
    case 'ops':
      return encodeCanonical([CODES.ops, frame.device, frame.ops]);
    case 'fork':
      return encodeCanonical([CODES.fork, frame.device, frame.seq, frame.ops[0], frame.ops[1]]);
    case 'credit':
      return encodeCanonical([CODES.credit, frame.bytes]);
    case 'caughtUp':
      return encodeCanonical([CODES.caughtUp]);
    case 'goodbye':
      return encodeCanonical([CODES.goodbye, frame.code, frame.message.slice(0, 512)]);
    case 'query':
      return encodeCanonical([CODES.query, frame.device, frame.seq]);
    case 'answer':
      return encodeCanonical([CODES.answer, frame.device, frame.seq, frame.op]);
    case 'want':
      return encodeCanonical([CODES.want, frame.ids.map((id) => Uint8Array.from(opIdToBytes(id)))]);
    case 'voids':
      return encodeCanonical([CODES.voids, frame.ops]);
  }
}

const isBytes = (v: unknown): v is Uint8Array => v instanceof Uint8Array;
const isUint = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const isSeq = (v: unknown): v is number => isUint(v) && v >= 1;
const isText = (v: unknown, max = 512): v is string => typeof v === 'string' && v.length <= max;

/**
 * Decodes one frame, checking its shape: every item of the right type, no extra items.
 * Throws InvalidInputError (DECODE, TOO_LARGE) on anything else.
 */
export function decodeFrame(bytes: Uint8Array, maxFrameBytes: number): Frame {
  if (bytes.length > maxFrameBytes) throw tooLargeError('frame', maxFrameBytes, bytes.length);
  const raw = decodeCanonical(bytes, 'sync frame');
  const bad = (why: string): never => {
    throw decodeError('sync frame', why);
  };
  if (!Array.isArray(raw) || raw.length === 0) return bad('not a non-empty array');
  const r = raw as unknown[];
  const arity = (n: number) => {
    if (r.length !== n) bad(`frame type ${String(r[0])} must have ${n} items, has ${r.length}`);
  };
  switch (r[0]) {
    case CODES.hello: {
      arity(8);
      const [, version, team, hq, cert, tipList, maxFrame, window] = r;
      if (!isUint(version) || !isText(team, 64) || !isText(hq, 64) || !isBytes(cert) || !Array.isArray(tipList) || !isUint(maxFrame) || !isUint(window)) bad('malformed hello');
      const tips: [DeviceId, TipId][] = [];
      let last = '';
      for (const entry of tipList as unknown[]) {
        if (!Array.isArray(entry) || entry.length !== 3) return bad('malformed tips');
        const [device, seq, id] = entry as unknown[];
        if (!isText(device, 64) || device <= last || !isSeq(seq) || !isBytes(id) || id.length !== 32) return bad('malformed tips');
        tips.push([device, { seq, id: opIdFromBytes(id) }]);
        last = device;
      }
      return { type: 'hello', version: version as number, team: team as string, hq: hq as string, cert: cert as Uint8Array, tips: Object.fromEntries(tips), maxFrameBytes: maxFrame as number, windowBytes: window as number };
    }
    case CODES.certs:
      arity(2);
      if (!Array.isArray(r[1]) || !(r[1] as unknown[]).every(isBytes)) bad('malformed certs');
      return { type: 'certs', certs: r[1] as Uint8Array[] };
    case CODES.ops:
      arity(3);
      if (!isText(r[1], 64) || !Array.isArray(r[2]) || (r[2] as unknown[]).length === 0 || !(r[2] as unknown[]).every(isBytes)) bad('malformed ops');
      return { type: 'ops', device: r[1] as string, ops: r[2] as Uint8Array[] };
    case CODES.fork:
      arity(5);
      if (!isText(r[1], 64) || !isUint(r[2]) || !isBytes(r[3]) || !isBytes(r[4])) bad('malformed fork');
      return { type: 'fork', device: r[1] as string, seq: r[2] as number, ops: [r[3] as Uint8Array, r[4] as Uint8Array] };
    case CODES.credit:
      arity(2);
      if (!isUint(r[1])) bad('malformed credit');
      return { type: 'credit', bytes: r[1] as number };
    case CODES.caughtUp:
      arity(1);
      return { type: 'caughtUp' };
    case CODES.goodbye:
      arity(3);
      if (!isText(r[1], 64) || !isText(r[2])) bad('malformed goodbye');
      return { type: 'goodbye', code: r[1] as string, message: r[2] as string };
    case CODES.query:
      arity(3);
      if (!isText(r[1], 64) || !isSeq(r[2])) bad('malformed query');
      return { type: 'query', device: r[1] as string, seq: r[2] as number };
    case CODES.answer:
      arity(4);
      if (!isText(r[1], 64) || !isSeq(r[2]) || !(r[3] === null || isBytes(r[3]))) bad('malformed answer');
      return { type: 'answer', device: r[1] as string, seq: r[2] as number, op: r[3] as Uint8Array | null };
    case CODES.want: {
      arity(2);
      const ids = r[1];
      if (!Array.isArray(ids) || ids.length === 0 || ids.length > MAX_WANT_IDS || !ids.every((id) => isBytes(id) && id.length === 32)) bad('malformed want');
      return { type: 'want', ids: (ids as Uint8Array[]).map(opIdFromBytes) };
    }
    case CODES.voids:
      arity(2);
      if (!Array.isArray(r[1]) || (r[1] as unknown[]).length === 0 || !(r[1] as unknown[]).every(isBytes)) bad('malformed voids');
      return { type: 'voids', ops: r[1] as Uint8Array[] };
    default:
      return bad(`unknown frame type ${String(r[0])}`);
  }
}
