/**
 * Version vectors: device -> highest contiguous seq held. Plain sorted-key records so they encode
 * canonically and compare cheaply.
 */
import type { DeviceId } from './keys.ts';

export type VersionVector = Readonly<Record<DeviceId, number>>;

export type Ordering = 'equal' | 'before' | 'after' | 'concurrent';

export const seqOf = (vv: VersionVector, device: DeviceId): number => vv[device] ?? 0;

/** How `a` relates to `b`: before means every entry of a is <= b's and at least one is lower. */
export function compareVersionVectors(a: VersionVector, b: VersionVector): Ordering {
  let aAhead = false;
  let bAhead = false;
  for (const device of new Set([...Object.keys(a), ...Object.keys(b)])) {
    const x = seqOf(a, device);
    const y = seqOf(b, device);
    if (x > y) aAhead = true;
    else if (y > x) bAhead = true;
  }
  if (aAhead && bAhead) return 'concurrent';
  if (aAhead) return 'after';
  if (bAhead) return 'before';
  return 'equal';
}

/** Pointwise maximum, keys sorted. */
export function mergeVersionVectors(a: VersionVector, b: VersionVector): VersionVector {
  const out: Record<DeviceId, number> = {};
  for (const device of [...new Set([...Object.keys(a), ...Object.keys(b)])].sort()) {
    out[device] = Math.max(seqOf(a, device), seqOf(b, device));
  }
  return out;
}

/** A range of one device's log: seqs fromSeq..toSeq inclusive. */
export interface SeqRange {
  readonly device: DeviceId;
  readonly fromSeq: number;
  readonly toSeq: number;
}

/** What a peer holding `theirs` lacks of what we hold in `ours`, per device, sorted by device. */
export function missingRanges(ours: VersionVector, theirs: VersionVector): SeqRange[] {
  const out: SeqRange[] = [];
  for (const device of Object.keys(ours).sort()) {
    const have = seqOf(theirs, device);
    const top = seqOf(ours, device);
    if (top > have) out.push({ device, fromSeq: have + 1, toSeq: top });
  }
  return out;
}
