/**
 * Fast paths for canonical CBOR on the op hot paths (signOp encodes, parseOp decodes). They are
 * shortcuts, never a second definition of the format: for every value or byte string they accept
 * they give exactly what cborg gives (cbor.ts: encodeCanonical, and decodeCanonical's decode plus
 * re-encode check), and they decline everything else, so that callers fall back to cborg and
 * keep its results and errors. What they accept is the common case: null, booleans, safe
 * integers, finite floats, well-formed strings, byte strings, arrays, and maps with ASCII keys
 * (decoding also any canonical UTF-8 keys), at most MAX_DEPTH deep.
 */
import { encodeCanonical } from './cbor.ts';

export const DECLINED: unique symbol = Symbol('declined');
const MAX_DEPTH = 64;
const MAX_SAFE = Number.MAX_SAFE_INTEGER;

/** True when `a` and `b` (equal length) hold the same bytes. */
function sameBytes(a: Uint8Array, b: Uint8Array, bAt: number): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[bAt + i]) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Writing: cborg's canonical encoding (shortest heads, map keys sorted by byte length then bytes,
// safe integers as integers, other numbers in cborg's smallest lossless float width).

const EMPTY = new Uint8Array(0);
let out: Uint8Array = EMPTY;
let at = 0;
const float = new DataView(new ArrayBuffer(8));
const floatBytes = new Uint8Array(float.buffer);

/**
 * cborg's width for a finite number that is exact in 32 bits and no safe integer, from its
 * float32 bits: half (2) when the value is a normal half-precision number, else single (4); 0 for
 * magnitudes below 2^-14, where cborg's own half conversion decides (ask encodeCanonical).
 */
function floatWidth(bits32: number): number {
  const exponent = (bits32 >>> 23) & 0xff;
  if (exponent < 113) return 0;
  return exponent <= 142 && (bits32 & 0x1fff) === 0 ? 2 : 4;
}
const textEncoder = new TextEncoder();
const LONE_SURROGATE = /\p{Surrogate}/u;

function writeHead(major: number, n: number): boolean {
  const m = major << 5;
  if (n < 24) {
    if (at + 1 > out.length) return false;
    out[at++] = m | n;
  } else if (n < 0x100) {
    if (at + 2 > out.length) return false;
    out[at++] = m | 24;
    out[at++] = n;
  } else if (n < 0x10000) {
    if (at + 3 > out.length) return false;
    out[at++] = m | 25;
    out[at++] = n >>> 8;
    out[at++] = n;
  } else if (n < 0x100000000) {
    if (at + 5 > out.length) return false;
    out[at++] = m | 26;
    out[at++] = n >>> 24;
    out[at++] = n >>> 16;
    out[at++] = n >>> 8;
    out[at++] = n;
  } else {
    if (at + 9 > out.length) return false;
    const hi = Math.floor(n / 0x100000000);
    out[at++] = m | 27;
    out[at++] = hi >>> 24;
    out[at++] = hi >>> 16;
    out[at++] = hi >>> 8;
    out[at++] = hi;
    out[at++] = n >>> 24;
    out[at++] = n >>> 16;
    out[at++] = n >>> 8;
    out[at++] = n;
  }
  return true;
}

function writeBytes(bytes: Uint8Array): boolean {
  if (at + bytes.length > out.length) return false;
  out.set(bytes, at);
  at += bytes.length;
  return true;
}

function writeString(s: string): boolean {
  const start = at;
  if (writeHead(3, s.length) && at + s.length <= out.length) {
    let i = 0;
    for (; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c > 0x7f) break;
      out[at++] = c;
    }
    if (i === s.length) return true;
  }
  // Not ASCII (or no room): UTF-8 is unambiguous for well-formed strings only.
  at = start;
  if (LONE_SURROGATE.test(s)) return false;
  const utf8 = textEncoder.encode(s);
  return writeHead(3, utf8.length) && writeBytes(utf8);
}

function isAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0x7f) return false;
  return true;
}

/** cborg's key order, for ASCII keys: shorter first, then by bytes. */
const keyBefore = (a: string, b: string): boolean => a.length < b.length || (a.length === b.length && a < b);

function writeMap(map: Record<string, unknown>, depth: number): boolean {
  const keys = Object.keys(map);
  const n = keys.length;
  // Values are read in Object.keys order, as cborg reads them, and sorted along with their keys.
  const values: unknown[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const key = keys[i]!;
    if (!isAscii(key)) return false;
    const value = map[key];
    let j = i;
    for (; j > 0 && keyBefore(key, keys[j - 1]!); j--) {
      keys[j] = keys[j - 1]!;
      values[j] = values[j - 1];
    }
    keys[j] = key;
    values[j] = value;
  }
  if (!writeHead(5, n)) return false;
  for (let i = 0; i < n; i++) if (!writeString(keys[i]!) || !writeValue(values[i], depth + 1)) return false;
  return true;
}

function writeValue(value: unknown, depth: number): boolean {
  switch (typeof value) {
    case 'string':
      return writeString(value);
    case 'number':
      if (Number.isSafeInteger(value)) return value >= 0 ? writeHead(0, value) : writeHead(1, -1 - value);
      if (!Number.isFinite(value)) return false;
      if (Math.fround(value) === value) {
        float.setFloat32(0, value);
        const bits = float.getUint32(0);
        const width = floatWidth(bits);
        if (width === 0) return writeBytes(encodeCanonical(value));
        if (at + 1 + width > out.length) return false;
        if (width === 2) {
          const half = ((bits >>> 16) & 0x8000) | ((((bits >>> 23) & 0xff) - 112) << 10) | ((bits >>> 13) & 0x3ff);
          out[at++] = 0xf9;
          out[at++] = half >>> 8;
          out[at++] = half;
        } else {
          out[at++] = 0xfa;
          out.set(floatBytes.subarray(0, 4), at);
          at += 4;
        }
        return true;
      }
      if (at + 9 > out.length) return false;
      out[at++] = 0xfb;
      float.setFloat64(0, value);
      out.set(floatBytes, at);
      at += 8;
      return true;
    case 'boolean':
      if (at + 1 > out.length) return false;
      out[at++] = value ? 0xf5 : 0xf4;
      return true;
    case 'object': {
      if (value === null) {
        if (at + 1 > out.length) return false;
        out[at++] = 0xf6;
        return true;
      }
      if (value instanceof Uint8Array) return writeHead(2, value.length) && writeBytes(value);
      if (depth >= MAX_DEPTH) return false;
      const proto = Object.getPrototypeOf(value);
      if (proto === Array.prototype) {
        const list = value as unknown[];
        if (!writeHead(4, list.length)) return false;
        for (let i = 0; i < list.length; i++) if (!writeValue(list[i], depth + 1)) return false;
        return true;
      }
      if (proto === Object.prototype) return writeMap(value as Record<string, unknown>, depth);
      return false;
    }
    default:
      return false;
  }
}

/**
 * Writes encodeCanonical(value) into `dest` from `offset` and returns the offset after it, or -1
 * when declined (then the bytes from `offset` on are garbage).
 */
export function encodeFastInto(value: unknown, dest: Uint8Array, offset: number): number {
  out = dest;
  at = offset;
  const ok = writeValue(value, 0);
  out = EMPTY;
  return ok ? at : -1;
}

// ---------------------------------------------------------------------------------------------
// Reading: accepts exactly canonical bytes (what encodeCanonical would write for the value read)
// and builds the value cborg's decoder builds (plain Uint8Array copies, plain objects and arrays).

let src: Uint8Array = EMPTY;
let pos = 0;
const fatalUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const ASCII_LOOP_MAX = 32;

/** A head's argument, insisting on the shortest form; -1 when not shortest or beyond 2^53 - 1. */
function readArg(minor: number): number {
  if (minor < 24) return minor;
  const s = src;
  const p = pos;
  if (minor === 24) {
    if (p + 1 > s.length) return -1;
    pos = p + 1;
    return s[p]! >= 24 ? s[p]! : -1;
  }
  if (minor === 25) {
    if (p + 2 > s.length) return -1;
    pos = p + 2;
    const n = (s[p]! << 8) | s[p + 1]!;
    return n >= 0x100 ? n : -1;
  }
  if (minor === 26) {
    if (p + 4 > s.length) return -1;
    pos = p + 4;
    const n = ((s[p]! << 24) | (s[p + 1]! << 16) | (s[p + 2]! << 8) | s[p + 3]!) >>> 0;
    return n >= 0x10000 ? n : -1;
  }
  if (minor === 27) {
    if (p + 8 > s.length) return -1;
    pos = p + 8;
    const hi = ((s[p]! << 24) | (s[p + 1]! << 16) | (s[p + 2]! << 8) | s[p + 3]!) >>> 0;
    const lo = ((s[p + 4]! << 24) | (s[p + 5]! << 16) | (s[p + 6]! << 8) | s[p + 7]!) >>> 0;
    if (hi === 0 || hi >= 0x200000) return -1;
    return hi * 0x100000000 + lo;
  }
  return -1;
}

/** The text string of `length` bytes at pos, or DECLINED when not what cborg reads back and re-encodes the same. */
function readText(length: number): string | typeof DECLINED {
  const s = src;
  const start = pos;
  const end = start + length;
  if (end > s.length) return DECLINED;
  pos = end;
  if (length < ASCII_LOOP_MAX) {
    let text = '';
    let i = start;
    for (; i < end; i++) {
      const c = s[i]!;
      if (c & 0x80) break;
      text += String.fromCharCode(c);
    }
    if (i === end) return text;
  }
  let text: string;
  try {
    text = fatalUtf8.decode(s.subarray(start, end));
  } catch {
    return DECLINED;
  }
  // cborg's decoder drops a leading byte order mark, so such a string never reads back the same.
  return text.charCodeAt(0) === 0xfeff ? DECLINED : text;
}

/** Whether cborg writes `value` as exactly the `width` + 1 bytes before pos (only cborg can tell). */
function writtenSo(value: number, width: number): boolean {
  const written = encodeCanonical(value);
  return written.length === width + 1 && sameBytes(written, src, pos - width - 1);
}

function readValue(depth: number): unknown {
  const s = src;
  if (pos >= s.length) return DECLINED;
  const initial = s[pos++]!;
  const minor = initial & 31;
  switch (initial >> 5) {
    case 0: {
      const n = readArg(minor);
      return n < 0 ? DECLINED : n;
    }
    case 1: {
      const n = readArg(minor);
      return n < 0 || n > MAX_SAFE - 1 ? DECLINED : -1 - n;
    }
    case 2: {
      const n = readArg(minor);
      if (n < 0 || pos + n > s.length) return DECLINED;
      const bytes = s.slice(pos, pos + n);
      pos += n;
      return bytes;
    }
    case 3: {
      const n = readArg(minor);
      return n < 0 ? DECLINED : readText(n);
    }
    case 4: {
      const n = readArg(minor);
      if (n < 0 || n > s.length - pos || depth >= MAX_DEPTH) return DECLINED;
      const list: unknown[] = [];
      for (let i = 0; i < n; i++) {
        const item = readValue(depth + 1);
        if (item === DECLINED) return DECLINED;
        list.push(item);
      }
      return list;
    }
    case 5: {
      const n = readArg(minor);
      if (n < 0 || n > (s.length - pos) / 2 || depth >= MAX_DEPTH) return DECLINED;
      const map: Record<string, unknown> = {};
      let lastStart = 0;
      let lastLength = -1;
      for (let i = 0; i < n; i++) {
        if (pos >= s.length || s[pos]! >> 5 !== 3) return DECLINED;
        const keyLength = readArg(s[pos++]! & 31);
        if (keyLength < 0) return DECLINED;
        const keyStart = pos;
        // Keys strictly ascending in cborg's order (byte length, then bytes): sorted, no duplicates.
        if (keyLength < lastLength) return DECLINED;
        if (keyLength === lastLength && keyStart + keyLength <= s.length) {
          let cmp = 0;
          for (let k = 0; k < keyLength && cmp === 0; k++) cmp = s[keyStart + k]! - s[lastStart + k]!;
          if (cmp <= 0) return DECLINED;
        }
        const key = readText(keyLength);
        if (key === DECLINED || key === '__proto__') return DECLINED;
        lastStart = keyStart;
        lastLength = keyLength;
        const value = readValue(depth + 1);
        if (value === DECLINED) return DECLINED;
        map[key] = value;
      }
      return map;
    }
    case 7: {
      switch (initial) {
        case 0xf4:
          return false;
        case 0xf5:
          return true;
        case 0xf6:
          return null;
        // Floats: finite, no safe integer (cborg writes those as integers), in cborg's width.
        case 0xf9: {
          if (pos + 2 > s.length) return DECLINED;
          const half = (s[pos]! << 8) | s[pos + 1]!;
          pos += 2;
          const exp = (half >> 10) & 0x1f;
          const mant = half & 0x3ff;
          if (exp === 31) return DECLINED;
          // cborg's readFloat16
          const magnitude = exp === 0 ? mant * 2 ** -24 : (mant + 1024) * 2 ** (exp - 25);
          const value = half & 0x8000 ? -magnitude : magnitude;
          if (Number.isSafeInteger(value)) return DECLINED;
          return exp !== 0 || writtenSo(value, 2) ? value : DECLINED;
        }
        case 0xfa: {
          if (pos + 4 > s.length) return DECLINED;
          const bits = ((s[pos]! << 24) | (s[pos + 1]! << 16) | (s[pos + 2]! << 8) | s[pos + 3]!) >>> 0;
          pos += 4;
          float.setUint32(0, bits);
          const value = float.getFloat32(0);
          if (!Number.isFinite(value) || Number.isSafeInteger(value)) return DECLINED;
          const width = floatWidth(bits);
          return width === 4 || (width === 0 && writtenSo(value, 4)) ? value : DECLINED;
        }
        case 0xfb: {
          if (pos + 8 > s.length) return DECLINED;
          for (let k = 0; k < 8; k++) floatBytes[k] = s[pos + k]!;
          pos += 8;
          const value = float.getFloat64(0);
          if (!Number.isFinite(value) || Number.isSafeInteger(value)) return DECLINED;
          return Math.fround(value) !== value ? value : DECLINED;
        }
        default:
          return DECLINED;
      }
    }
    default:
      return DECLINED;
  }
}

/**
 * The value of `bytes` when they are exactly its canonical encoding (what decodeCanonical would
 * return), or DECLINED: then decodeCanonical must decide (it may still accept).
 */
export function decodeFast(bytes: Uint8Array): unknown {
  // As cborg: a Buffer is read through a plain view (so byte strings come out as plain copies).
  const proto = Object.getPrototypeOf(bytes);
  if (proto === Uint8Array.prototype) src = bytes;
  else if (Buffer.isBuffer(bytes)) src = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  else return DECLINED;
  pos = 0;
  const value = readValue(0);
  const complete = pos === src.length;
  src = EMPTY;
  return complete ? value : DECLINED;
}
