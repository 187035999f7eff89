/**
 * Hybrid logical clock (Kulkarni et al., "Logical Physical Clocks", 2014).
 *
 * A timestamp is (wallMs, counter): physical milliseconds plus a logical counter that orders
 * events within one millisecond and events whose physical clock lags causality. Physical time is
 * always passed in (core never reads a clock). Ties between devices break on the device id,
 * giving a total order (`compareStamped`).
 */
import { RuleViolationError } from './errors.ts';
import { LIMITS } from './limits.ts';

export interface Hlc {
  readonly wallMs: number;
  readonly counter: number;
}

export const HLC_ZERO: Hlc = { wallMs: 0, counter: 0 };

export interface HlcReceiveResult {
  readonly clock: Hlc;
  /** True when the remote clock was more than maxDriftMs ahead of our physical time. */
  readonly driftFlagged: boolean;
  /** How far ahead of our physical time the remote clock was (0 when behind). */
  readonly aheadMs: number;
}

export function compareHlc(a: Hlc, b: Hlc): number {
  return a.wallMs !== b.wallMs ? (a.wallMs < b.wallMs ? -1 : 1) : a.counter - b.counter;
}

/** Total order over (hlc, device): the tie-break every node applies identically. */
export function compareStamped(a: Hlc, aDevice: string, b: Hlc, bDevice: string): number {
  const byClock = compareHlc(a, b);
  if (byClock !== 0) return byClock;
  return aDevice < bDevice ? -1 : aDevice > bDevice ? 1 : 0;
}

/**
 * A counter past its 16 bits carries into the next millisecond: the clock runs a little ahead of
 * physical time rather than failing (a bundle of 100,000 ops, or a burst of writes after a
 * peer's clock dragged ours ahead, ticks the counter once per op within one millisecond).
 */
function checked(wallMs: number, counter: number): Hlc {
  if (counter > LIMITS.maxHlcCounter) return checked(wallMs + 1, 0);
  if (wallMs > LIMITS.maxHlcWallMs) {
    throw new RuleViolationError('HLC_WALL_OVERFLOW', `HLC wall time ${wallMs} beyond 48 bits`, { wallMs });
  }
  return { wallMs, counter };
}

/** The clock for a local event (sending or writing) at physical time `physicalMs`. */
export function hlcNow(local: Hlc, physicalMs: number): Hlc {
  const pt = Math.floor(physicalMs);
  if (pt > local.wallMs) return checked(pt, 0);
  return checked(local.wallMs, local.counter + 1);
}

/**
 * The clock after receiving `remote` at physical time `physicalMs`.
 * A remote clock more than `maxDriftMs` ahead is accepted (the caller keeps the op) but flagged,
 * and it only drags our clock as far as `physicalMs + maxDriftMs`.
 */
export function hlcReceive(local: Hlc, remote: Hlc, physicalMs: number, maxDriftMs: number): HlcReceiveResult {
  const pt = Math.floor(physicalMs);
  const aheadMs = Math.max(0, remote.wallMs - pt);
  const driftFlagged = aheadMs > maxDriftMs;
  const bound = pt + maxDriftMs;
  const effective: Hlc = driftFlagged ? { wallMs: bound, counter: 0 } : remote;
  // Never move backwards: the local clock may itself already be at the bound.
  const wall = Math.max(local.wallMs, effective.wallMs, pt);
  let counter: number;
  if (wall === local.wallMs && wall === effective.wallMs) counter = Math.max(local.counter, effective.counter) + 1;
  else if (wall === local.wallMs) counter = local.counter + 1;
  else if (wall === effective.wallMs) counter = effective.counter + 1;
  else counter = 0;
  return { clock: checked(wall, counter), driftFlagged, aheadMs };
}

/** 8 bytes, big-endian: 48 bits of wall milliseconds then 16 bits of counter; sorts bytewise like compareHlc. */
export function encodeHlc(h: Hlc): Uint8Array {
  const out = new Uint8Array(8);
  const hi = Math.floor(h.wallMs / 2 ** 16);
  const lo = h.wallMs % 2 ** 16;
  new DataView(out.buffer).setUint32(0, hi);
  new DataView(out.buffer).setUint16(4, lo);
  new DataView(out.buffer).setUint16(6, h.counter);
  return out;
}

export function decodeHlc(bytes: Uint8Array): Hlc {
  if (bytes.length !== 8) throw new RuleViolationError('HLC_BYTES', `HLC must be 8 bytes, got ${bytes.length}`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, 8);
  return { wallMs: view.getUint32(0) * 2 ** 16 + view.getUint16(4), counter: view.getUint16(6) };
}

/** A sortable, human-readable form: ISO-ish wall time is not needed, 16 hex digits sort correctly. */
export function hlcToString(h: Hlc): string {
  return h.wallMs.toString(16).padStart(12, '0') + h.counter.toString(16).padStart(4, '0');
}
