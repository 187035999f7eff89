/**
 * Operations: the one unit of change. The byte format is specified in docs/protocol.md.
 *
 *   op       := cbor [ body: bstr, sig: bstr(64) ]           (the "envelope")
 *   body     := canonical CBOR map (see BODY_KEYS)
 *   sig      := Ed25519(device key, "fieldmesh/op/1\n" || body)
 *   op id    := SHA-256(op)   -- the whole envelope, signature included
 *   prev     := op id of the same device's op seq-1 (null for seq 1)
 */
import { hash } from 'node:crypto';
import { encodeInto } from 'cborg';
import { decodeCanonical, encodeCanonical } from './cbor.ts';
import { DECLINED, decodeFast, encodeFastInto } from './fast-cbor.ts';
import { decodeError, InvalidInputError, RuleViolationError, tooLargeError } from './errors.ts';
import type { Hlc } from './hlc.ts';
import { isDeviceId, verifySignature, withContext, type DeviceId, type DeviceSigner } from './keys.ts';
import { LIMITS } from './limits.ts';
import { canonicalCopy, checkFields, type Fields } from './value.ts';

export const OP_FORMAT_VERSION = 1;
const OP_SIGNING_CONTEXT = new TextEncoder().encode('fieldmesh/op/1\n');

/** Hex of the SHA-256 of an op's envelope bytes. */
export type OpId = string;

export const DATA_OP_TYPES = ['create', 'update', 'delete'] as const;
export const OP_TYPES = [...DATA_OP_TYPES, 'resolve', 'receipt', 'revoke'] as const;
export type DataOpType = (typeof DATA_OP_TYPES)[number];
export type OpType = (typeof OP_TYPES)[number];

interface Header {
  readonly v: typeof OP_FORMAT_VERSION;
  readonly team: string;
  readonly device: DeviceId;
  readonly seq: number;
  readonly prev: OpId | null;
  readonly hlc: Hlc;
  readonly user: string;
}

interface EntityTarget {
  readonly domain: string;
  readonly entity: string;
  /** The entity's head op ids its author had applied when writing (sorted), like Automerge's deps. */
  readonly base: readonly OpId[];
}

export interface DataBody extends Header, EntityTarget {
  readonly type: DataOpType;
  /** For `delete`, always empty. */
  readonly fields: Fields;
}

export interface ResolveBody extends Header, EntityTarget {
  readonly type: 'resolve';
  /** The id of the conflict this closes. */
  readonly conflict: OpId;
  /** Whether the entity exists after the resolution (false: the resolution is a delete). */
  readonly exists: boolean;
  /** The chosen values of the conflicting fields (empty when exists is false). */
  readonly fields: Fields;
}

export interface Verdict {
  readonly op: OpId;
  readonly accepted: boolean;
  /** Machine-readable reason code, '' when accepted. */
  readonly reason: string;
  /** Human-readable detail, '' when accepted. */
  readonly detail: string;
}

/** HQ's signed verdicts on ops it received. Only valid from the team's HQ device. */
export interface ReceiptBody extends Header {
  readonly type: 'receipt';
  readonly verdicts: readonly Verdict[];
}

/** HQ's revocation of a device: its ops with seq > afterSeq are refused everywhere. */
export interface RevokeBody extends Header {
  readonly type: 'revoke';
  readonly target: DeviceId;
  readonly afterSeq: number;
  readonly reason: string;
}

export type OpBody = DataBody | ResolveBody | ReceiptBody | RevokeBody;
export type EntityOpBody = DataBody | ResolveBody;

/** A signed op as stored and sent: its body, its id and its exact bytes. */
export type Op<B extends OpBody = OpBody> = B & { readonly id: OpId; readonly bytes: Uint8Array };
export type EntityOp = Op<EntityOpBody>;

export const isEntityOp = (op: Op): op is EntityOp => op.type !== 'receipt' && op.type !== 'revoke';

const TEAM = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const DOMAIN = /^[a-z][a-z0-9_-]*$/;
const ENTITY = /^[A-Za-z0-9][A-Za-z0-9._:-]*$/;
// eslint-disable-next-line no-control-regex
const PRINTABLE = /^[^\u0000-\u001f\u007f]+$/;
/** An op id as opIdOf writes it (/^[0-9a-f]{64}$/); anything else would encode to other bytes than it names. */
function isOpIdHex(id: string): boolean {
  if (id.length !== 64) return false;
  for (let i = 0; i < 64; i++) {
    const c = id.charCodeAt(i);
    if (!((c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66))) return false;
  }
  return true;
}

/** Type codes on the wire (position 1 of the body array). */
const TYPE_CODES: Record<OpType, number> = { create: 1, update: 2, delete: 3, resolve: 4, receipt: 5, revoke: 6 };
const TYPE_BY_CODE = new Map(Object.entries(TYPE_CODES).map(([type, code]) => [code, type as OpType]));
/** Body array length per type: 9 header items, then the type's own. */
const HEADER_ITEMS = 9;
const BODY_LENGTH: Record<OpType, number> = { create: 13, update: 13, delete: 13, resolve: 15, receipt: 10, revoke: 12 };

export const opIdOf = (bytes: Uint8Array): OpId => hash('sha256', bytes, 'hex');
export const opIdToBytes = (id: OpId): Uint8Array => Buffer.from(id, 'hex');
// Hex through a table: reading `.buffer` of a small, freshly decoded Uint8Array (as Buffer.from
// needs) makes V8 move it off its heap, which cost more than the conversion itself.
const HEX_DIGITS = new TextEncoder().encode('0123456789abcdef');
const hexOut = Buffer.alloc(64);
export function opIdFromBytes(bytes: Uint8Array): OpId {
  if (bytes.length !== 32) return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');
  for (let i = 0; i < 32; i++) {
    const b = bytes[i]!;
    hexOut[2 * i] = HEX_DIGITS[b >> 4]!;
    hexOut[2 * i + 1] = HEX_DIGITS[b & 15]!;
  }
  return hexOut.toString('latin1', 0, 64);
}

function bad(field: string, rule: string, found?: unknown): never {
  throw new InvalidInputError('BAD_OP_FIELD', `op field '${field}' ${rule}`, { field, found });
}

function checkName(field: string, value: unknown, pattern: RegExp, maxChars: number): asserts value is string {
  if (typeof value !== 'string' || value.length === 0 || value.length > maxChars || !pattern.test(value)) {
    bad(field, `must match ${pattern} and be 1..${maxChars} chars`, typeof value === 'string' ? value.slice(0, 80) : typeof value);
  }
}

function checkUint(field: string, value: unknown, min: number): asserts value is number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) bad(field, `must be an integer >= ${min}`, value);
}

// Without this, signOp would sign an id like 'abc' (or upper-case hex) into bytes that no node,
// the author included, decodes back to the same op.
function checkOpId(field: string, id: unknown): void {
  if (typeof id !== 'string' || !isOpIdHex(id)) bad(field, 'must be an op id (64 lower-case hex digits)', typeof id === 'string' ? id.slice(0, 80) : typeof id);
}

function checkOpIdList(field: string, ids: readonly OpId[], max: number): void {
  if (ids.length > max) bad(field, `holds more than ${max} ids`, ids.length);
  for (const id of ids) checkOpId(field, id);
  for (let i = 1; i < ids.length; i++) {
    if (ids[i - 1]! >= ids[i]!) bad(field, 'must be sorted ascending without duplicates');
  }
}

/**
 * Checks an op body's shape and every rule that needs no other op:
 * version, team/domain/entity/user names, seq >= 1, prev null exactly at seq 1, op ids in
 * canonical hex, HLC bounds, sorted duplicate-free base, field names and values, delete without
 * fields, resolve to a non-existing entity without fields, verdicts and revocation targets well-formed.
 */
export function checkBody(body: OpBody): void {
  if (body.v !== OP_FORMAT_VERSION) bad('v', `must be ${OP_FORMAT_VERSION}`, body.v);
  checkName('team', body.team, TEAM, LIMITS.maxTeamChars);
  if (!isDeviceId(body.device)) bad('device', 'must be an Ed25519 PeerId', body.device);
  checkUint('seq', body.seq, 1);
  if ((body.seq === 1) !== (body.prev === null)) bad('prev', 'must be null exactly when seq is 1', body.prev);
  if (body.prev !== null) checkOpId('prev', body.prev);
  checkUint('hlc.wallMs', body.hlc.wallMs, 0);
  checkUint('hlc.counter', body.hlc.counter, 0);
  if (body.hlc.wallMs > LIMITS.maxHlcWallMs || body.hlc.counter > LIMITS.maxHlcCounter) bad('hlc', 'is out of range', body.hlc);
  checkName('user', body.user, PRINTABLE, LIMITS.maxUserChars);
  if (!(OP_TYPES as readonly string[]).includes(body.type)) bad('type', `must be one of ${OP_TYPES.join('|')}`, body.type);
  switch (body.type) {
    case 'receipt':
      if (body.verdicts.length === 0 || body.verdicts.length > LIMITS.maxVerdictsPerReceipt) bad('verdicts', `must hold 1..${LIMITS.maxVerdictsPerReceipt} verdicts`, body.verdicts.length);
      for (const v of body.verdicts) {
        checkOpId('verdicts.op', v.op);
        if (v.accepted !== (v.reason === '')) bad('verdicts', 'must give a reason exactly when rejecting');
        if (v.reason.length > LIMITS.maxReasonChars || v.detail.length > LIMITS.maxReasonChars) bad('verdicts', `reason and detail are limited to ${LIMITS.maxReasonChars} chars`);
      }
      return;
    case 'revoke':
      if (!isDeviceId(body.target)) bad('target', 'must be an Ed25519 PeerId', body.target);
      checkUint('afterSeq', body.afterSeq, 0);
      if (body.reason.length > LIMITS.maxReasonChars) bad('reason', `is limited to ${LIMITS.maxReasonChars} chars`);
      return;
    default:
      checkName('domain', body.domain, DOMAIN, LIMITS.maxDomainChars);
      checkName('entity', body.entity, ENTITY, LIMITS.maxEntityChars);
      checkOpIdList('base', body.base, LIMITS.maxBaseOps);
      checkFields(body.fields, 'op');
      if (body.type === 'delete' && Object.keys(body.fields).length > 0) bad('fields', 'must be empty for delete');
      if (body.type === 'resolve') {
        checkOpId('conflict', body.conflict);
        if (!body.exists && Object.keys(body.fields).length > 0) bad('fields', 'must be empty when a resolution deletes');
      }
  }
}

/** body := [v, type, team, device, seq, prev, wallMs, counter, user, ...per type] (docs/protocol.md) */
function toCbor(body: OpBody): unknown[] {
  const out: unknown[] = [
    body.v,
    TYPE_CODES[body.type],
    body.team,
    body.device,
    body.seq,
    body.prev === null ? null : opIdToBytes(body.prev),
    body.hlc.wallMs,
    body.hlc.counter,
    body.user,
  ];
  switch (body.type) {
    case 'receipt':
      out.push(body.verdicts.map((v) => [opIdToBytes(v.op), v.accepted, v.reason, v.detail]));
      break;
    case 'revoke':
      out.push(body.target, body.afterSeq, body.reason);
      break;
    default:
      out.push(body.domain, body.entity, body.base.map(opIdToBytes), body.fields);
      if (body.type === 'resolve') out.push(opIdToBytes(body.conflict), body.exists);
  }
  return out;
}

function idFrom(field: string, value: unknown): OpId {
  if (!(value instanceof Uint8Array) || value.length !== 32) bad(field, 'must be a 32-byte hash');
  return opIdFromBytes(value);
}

function str(field: string, value: unknown): string {
  if (typeof value !== 'string') bad(field, 'must be a text string');
  return value;
}

function num(field: string, value: unknown): number {
  if (typeof value !== 'number') bad(field, 'must be a number');
  return value;
}

/** The op of a decoded body (`bytes`: its whole envelope, giving the op's id and bytes). */
function fromCbor(raw: unknown, bytes: Uint8Array): Op {
  if (!Array.isArray(raw) || raw.length < HEADER_ITEMS) throw decodeError('op body', `must be an array of at least ${HEADER_ITEMS} items`);
  const type = TYPE_BY_CODE.get(raw[1] as number);
  if (type === undefined) bad('type', `must be a type code 1..${TYPE_BY_CODE.size}`, raw[1]);
  if (raw.length !== BODY_LENGTH[type]) bad('body', `of a ${type} op must have ${BODY_LENGTH[type]} items`, raw.length);
  // Plain locals and one object literal per type (no spreads: this runs per op received), checking
  // fields in the same order as ever and listing keys in the same order: body, then id and bytes.
  const version = raw[0] as typeof OP_FORMAT_VERSION;
  const team = str('team', raw[2]);
  const device = str('device', raw[3]);
  const seq = num('seq', raw[4]);
  const prev = raw[5] === null ? null : idFrom('prev', raw[5]);
  const hlc = { wallMs: num('hlc.wallMs', raw[6]), counter: num('hlc.counter', raw[7]) };
  const user = str('user', raw[8]);
  switch (type) {
    case 'receipt': {
      if (!Array.isArray(raw[9])) bad('verdicts', 'must be an array');
      const verdicts = raw[9].map((v: unknown): Verdict => {
        if (!Array.isArray(v) || v.length !== 4 || typeof v[1] !== 'boolean') bad('verdicts', 'each must be [op, accepted, reason, detail]');
        return { op: idFrom('verdicts.op', v[0]), accepted: v[1], reason: str('verdicts.reason', v[2]), detail: str('verdicts.detail', v[3]) };
      });
      return { v: version, team, device, seq, prev, hlc, user, type, verdicts, id: opIdOf(bytes), bytes };
    }
    case 'revoke':
      return { v: version, team, device, seq, prev, hlc, user, type, target: str('target', raw[9]), afterSeq: num('afterSeq', raw[10]), reason: str('reason', raw[11]), id: opIdOf(bytes), bytes };
    default: {
      if (!Array.isArray(raw[11])) bad('base', 'must be an array');
      const domain = str('domain', raw[9]);
      const entity = str('entity', raw[10]);
      const base = raw[11].map((b: unknown) => idFrom('base', b));
      const fields = raw[12] as Fields;
      if (type === 'resolve') {
        if (typeof raw[14] !== 'boolean') bad('exists', 'must be a boolean');
        return { v: version, team, device, seq, prev, hlc, user, domain, entity, base, fields, type, conflict: idFrom('conflict', raw[13]), exists: raw[14], id: opIdOf(bytes), bytes };
      }
      return { v: version, team, device, seq, prev, hlc, user, domain, entity, base, fields, type, id: opIdOf(bytes), bytes };
    }
  }
}

/** The exact bytes the signature covers. */
export const signingBytes = (body: Uint8Array): Uint8Array => withContext(OP_SIGNING_CONTEXT, body);

/** envelope := [body: bstr, sig: bstr(64)]; the same bytes cborg would write, without its token pass. */
function envelope(body: Uint8Array, sig: Uint8Array): Uint8Array {
  const n = body.length;
  // 0x82, then the body's byte string head in shortest form (major type 2).
  const head = n < 24 ? 2 : n < 0x100 ? 3 : n < 0x10000 ? 4 : 6;
  const out = new Uint8Array(head + n + 2 + sig.length);
  out[0] = 0x82;
  if (n < 24) {
    out[1] = 0x40 | n;
  } else if (n < 0x100) {
    out[1] = 0x58;
    out[2] = n;
  } else if (n < 0x10000) {
    out[1] = 0x59;
    out[2] = n >> 8;
    out[3] = n & 0xff;
  } else {
    out[1] = 0x5a;
    out[2] = (n >>> 24) & 0xff;
    out[3] = (n >>> 16) & 0xff;
    out[4] = (n >> 8) & 0xff;
    out[5] = n & 0xff;
  }
  out.set(body, head);
  out[head + n] = 0x58;
  out[head + n + 1] = 0x40;
  out.set(sig, head + n + 2);
  return out;
}

/** decodeCanonical, through the fast reader when it can vouch for the bytes. */
function decodeCanonicalFast(bytes: Uint8Array, what: string): unknown {
  const value = decodeFast(bytes);
  return value === DECLINED ? decodeCanonical(bytes, what) : value;
}

const NO_SIGNATURE = new Uint8Array(64);

// Encoding straight after the signing context saves a copy per op on the hot path.
const scratch = new Uint8Array(OP_SIGNING_CONTEXT.length + LIMITS.maxOpBytes);
scratch.set(OP_SIGNING_CONTEXT);

/** Validates, encodes and signs a body. Throws InvalidInputError on any rule of checkBody. */
export function signOp<B extends OpBody>(given: B, signer: DeviceSigner): Op<B> {
  if (given.device !== signer.device) bad('device', 'must be the signer', given.device);
  const body = ownBody(given);
  checkBody(body);
  const cbor = toCbor(body);
  let written = encodeFastInto(cbor, scratch, OP_SIGNING_CONTEXT.length) - OP_SIGNING_CONTEXT.length;
  if (written < 0) {
    try {
      written = encodeInto(cbor, scratch.subarray(OP_SIGNING_CONTEXT.length)).written;
    } catch (err) {
      // encodeInto fails when the scratch buffer is too small: measure the real size to say so.
      const size = encodeCanonical(cbor).length;
      if (size > LIMITS.maxOpBytes) throw tooLargeError('op body', LIMITS.maxOpBytes, size);
      throw err;
    }
  }
  const message = scratch.subarray(0, OP_SIGNING_CONTEXT.length + written);
  // The envelope takes its copy of the body before signing (as a copy of the body did) and gets
  // the signature written into place: one allocation and copy per op instead of two.
  let bytes = envelope(message.subarray(OP_SIGNING_CONTEXT.length), NO_SIGNATURE);
  const sig = signer.sign(message);
  if (sig.length === NO_SIGNATURE.length) bytes.set(sig, bytes.length - sig.length);
  else bytes = envelope(bytes.slice(bytes.length - 2 - NO_SIGNATURE.length - written, bytes.length - 2 - NO_SIGNATURE.length), sig);
  if (bytes.length > LIMITS.maxOpBytes) throw tooLargeError('op', LIMITS.maxOpBytes, bytes.length);
  // The author applies what every other node decodes from these bytes: `body` is shaped so.
  return { ...body, id: opIdOf(bytes), bytes } as Op<B>;
}

/**
 * The body as its bytes will decode, sharing nothing with the caller's objects (ids are strings,
 * so only the lists and values are copied): no object changed after signing can change the
 * author's state behind the signature, and -0 or a Buffer shows as every other node shows it.
 */
function ownBody<B extends OpBody>(body: B): B {
  const hlc = typeof body.hlc === 'object' && body.hlc !== null ? { wallMs: body.hlc.wallMs, counter: body.hlc.counter } : body.hlc;
  switch (body.type) {
    case 'receipt':
      // (Shapes checkBody refuses are passed on as they are, for it to name.)
      return Array.isArray(body.verdicts) ? { ...body, hlc, verdicts: body.verdicts.map((v) => (typeof v === 'object' && v !== null ? { op: v.op, accepted: v.accepted, reason: v.reason, detail: v.detail } : v)) } : { ...body, hlc };
    case 'revoke':
      return { ...body, hlc };
    default:
      return { ...body, hlc, base: Array.isArray(body.base) ? [...body.base] : body.base, fields: canonicalCopy(body.fields) as Fields };
  }
}

export interface ParsedOp {
  readonly op: Op;
  readonly bodyBytes: Uint8Array;
  readonly sig: Uint8Array;
}

/**
 * Decodes an envelope and its body, refusing non-canonical, oversized, unknown or missing
 * fields, without checking the signature (see decodeOp, and verifyRange for chained ranges).
 */
export function parseOp(bytes: Uint8Array, maxOpBytes: number = LIMITS.maxOpBytes): ParsedOp {
  if (!(bytes instanceof Uint8Array)) throw decodeError('op', 'not bytes');
  if (bytes.length > maxOpBytes) throw tooLargeError('op', maxOpBytes, bytes.length);
  const envelope = decodeCanonicalFast(bytes, 'op envelope');
  if (!Array.isArray(envelope) || envelope.length !== 2 || !(envelope[0] instanceof Uint8Array) || !(envelope[1] instanceof Uint8Array)) {
    throw decodeError('op envelope', 'must be [body: bytes, sig: bytes]');
  }
  const [bodyBytes, sig] = envelope as [Uint8Array, Uint8Array];
  if (sig.length !== 64) throw decodeError('op envelope', `signature must be 64 bytes, got ${sig.length}`);
  // The op is built with its id and bytes at once (rather than spread from a body afterwards).
  const op = fromCbor(decodeCanonicalFast(bodyBytes, 'op body'), bytes);
  checkBody(op);
  return { op, bodyBytes, sig };
}

// The signed message of an op being verified, assembled in place rather than allocated per op.
const verifyScratch = new Uint8Array(OP_SIGNING_CONTEXT.length + LIMITS.maxOpBytes);
verifyScratch.set(OP_SIGNING_CONTEXT);

function signedMessage(body: Uint8Array): Uint8Array {
  if (body.length > LIMITS.maxOpBytes) return signingBytes(body);
  verifyScratch.set(body, OP_SIGNING_CONTEXT.length);
  return verifyScratch.subarray(0, OP_SIGNING_CONTEXT.length + body.length);
}

/**
 * The body of a canonical envelope (0x82, shortest byte string head, body, 0x58 0x40, 64 bytes)
 * as a view into `bytes`, or null for anything else (including inputs of unusual types).
 */
function envelopeBody(bytes: Uint8Array): Uint8Array | null {
  if (bytes.length < 68 || bytes[0] !== 0x82) return null;
  const b = bytes[1]!;
  let start: number;
  let length: number;
  if (b >= 0x40 && b < 0x58) {
    start = 2;
    length = b - 0x40;
  } else if (b === 0x58) {
    start = 3;
    length = bytes[2]!;
    if (length < 24) return null;
  } else if (b === 0x59) {
    start = 4;
    length = (bytes[2]! << 8) | bytes[3]!;
    if (length < 0x100) return null;
  } else {
    return null;
  }
  const sigAt = start + length;
  if (bytes.length !== sigAt + 66 || bytes[sigAt] !== 0x58 || bytes[sigAt + 1] !== 0x40) return null;
  if (Object.getPrototypeOf(bytes) !== Uint8Array.prototype && !Buffer.isBuffer(bytes)) return null;
  return new Uint8Array(bytes.buffer, bytes.byteOffset + start, length);
}

/**
 * parseOp with the same checks, results and errors, except that `bodyBytes` and `sig` may be views
 * into `bytes` rather than copies (valid while `bytes` is unchanged): for callers that only verify
 * and drop them (decodeOp, verifyRange), saving two allocations per op.
 */
export function parseOpView(bytes: Uint8Array, maxOpBytes: number = LIMITS.maxOpBytes): ParsedOp {
  const bodyBytes = bytes instanceof Uint8Array && bytes.length <= maxOpBytes ? envelopeBody(bytes) : null;
  if (bodyBytes === null) return parseOp(bytes, maxOpBytes);
  const op = fromCbor(decodeCanonicalFast(bodyBytes, 'op body'), bytes);
  checkBody(op);
  const sigAt = bodyBytes.byteOffset + bodyBytes.length + 2;
  return { op, bodyBytes, sig: new Uint8Array(bodyBytes.buffer, sigAt, 64) };
}

export function checkSignature(parsed: ParsedOp): void {
  if (!verifySignature(parsed.op.device, signedMessage(parsed.bodyBytes), parsed.sig)) {
    throw new RuleViolationError('BAD_SIGNATURE', `op ${parsed.op.device}#${parsed.op.seq} has an invalid signature`, {
      device: parsed.op.device,
      seq: parsed.op.seq,
    });
  }
}

/** Decodes one op and verifies its signature: the full check for an op travelling alone. */
export function decodeOp(bytes: Uint8Array, maxOpBytes?: number): Op {
  const parsed = parseOpView(bytes, maxOpBytes);
  checkSignature(parsed);
  return parsed.op;
}

