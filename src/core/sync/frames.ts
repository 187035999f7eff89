/**
 * Sync frames (docs/protocol.md, "Sync frames"). Each frame is one canonical CBOR array whose
 * first item is its type; on the stream every frame is preceded by its length as an unsigned
 * varint and may not exceed the receiver's maxFrameBytes.
 *
 *   hello     := [1, version, team, hq, cert: bstr, vv: [device, seq]*, maxFrameBytes, windowBytes]
 *   certs     := [2, [cert: bstr]*]
 *   ops       := [3, device, [op: bstr]+]          one contiguous, chained run of one device's log
 *   fork      := [4, device, seq, opA: bstr, opB: bstr]
 *   credit    := [5, bytes]                        the receiver may take `bytes` more op bytes
 *   caughtUp  := [6]                               everything missing as of hello has been sent
 *   goodbye   := [7, code, message]                the sender closes because of `code`
 */
import { decodeCanonical, encodeCanonical } from '../cbor.ts';
import { decodeError, tooLargeError } from '../errors.ts';
import type { DeviceId } from '../keys.ts';
import type { VersionVector } from '../version-vector.ts';

export const SYNC_PROTOCOL = '/fieldmesh/sync/1.0.0';
export const SYNC_VERSION = 1;

export type Frame =
  | { readonly type: 'hello'; readonly version: number; readonly team: string; readonly hq: DeviceId; readonly cert: Uint8Array; readonly vv: VersionVector; readonly maxFrameBytes: number; readonly windowBytes: number }
  | { readonly type: 'certs'; readonly certs: readonly Uint8Array[] }
  | { readonly type: 'ops'; readonly device: DeviceId; readonly ops: readonly Uint8Array[] }
  | { readonly type: 'fork'; readonly device: DeviceId; readonly seq: number; readonly ops: readonly [Uint8Array, Uint8Array] }
  | { readonly type: 'credit'; readonly bytes: number }
  | { readonly type: 'caughtUp' }
  | { readonly type: 'goodbye'; readonly code: string; readonly message: string };

const CODES = { hello: 1, certs: 2, ops: 3, fork: 4, credit: 5, caughtUp: 6, goodbye: 7 } as const;

export function encodeFrame(frame: Frame): Uint8Array {
  switch (frame.type) {
    case 'hello':
      return encodeCanonical([CODES.hello, frame.version, frame.team, frame.hq, frame.cert, Object.entries(frame.vv).sort(([a], [b]) => (a < b ? -1 : 1)), frame.maxFrameBytes, frame.windowBytes]);
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
  }
}

const isBytes = (v: unknown): v is Uint8Array => v instanceof Uint8Array;
const isUint = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
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
      const [, version, team, hq, cert, vvList, maxFrame, window] = r;
      if (!isUint(version) || !isText(team, 64) || !isText(hq, 64) || !isBytes(cert) || !Array.isArray(vvList) || !isUint(maxFrame) || !isUint(window)) bad('malformed hello');
      const vv: Record<DeviceId, number> = {};
      let last = '';
      for (const entry of vvList as unknown[]) {
        if (!Array.isArray(entry) || entry.length !== 2 || !isText(entry[0], 64) || !isUint(entry[1]) || (entry[0] as string) <= last) bad('malformed version vector');
        vv[(entry as [string, number])[0]] = (entry as [string, number])[1];
        last = (entry as [string, number])[0];
      }
      return { type: 'hello', version: version as number, team: team as string, hq: hq as string, cert: cert as Uint8Array, vv, maxFrameBytes: maxFrame as number, windowBytes: window as number };
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
    default:
      return bad(`unknown frame type ${String(r[0])}`);
  }
}
