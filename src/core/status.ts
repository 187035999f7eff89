/**
 * An op's status as every node derives it:
 *   failed   - excluded (HQ rejected it, its device was revoked or forked) or its base is invalid;
 *   conflict - a candidate of an open manual conflict;
 *   synced   - HQ accepted it (or HQ wrote it);
 *   pending  - HQ has not answered yet.
 */
import { exclusionOf, type Authority } from './authority.ts';
import type { DeviceId } from './keys.ts';
import type { Op } from './op.ts';

export const STATUSES = ['pending', 'synced', 'failed', 'conflict'] as const;
export type StatusName = (typeof STATUSES)[number];

export interface OpStatus {
  readonly status: StatusName;
  /** Machine-readable reason when failed: REJECTED:<HQ code>, DEVICE_REVOKED, DEVICE_FORKED, BAD_BASE. */
  readonly reason?: string;
  readonly detail?: string;
}

export function statusOf(op: Pick<Op, 'id' | 'device' | 'seq'>, authority: Authority, hqDevice: DeviceId, inConflict: boolean, badBase = false): OpStatus {
  const excluded = exclusionOf(op, authority);
  if (excluded !== null) {
    const reason = excluded.reason === 'REJECTED' ? `REJECTED:${excluded.code}` : excluded.reason;
    return { status: 'failed', reason, detail: excluded.detail };
  }
  if (badBase) return { status: 'failed', reason: 'BAD_BASE', detail: "base names an op of another entity or omits its author's earlier op on this entity" };
  if (inConflict) return { status: 'conflict' };
  if (op.device === hqDevice || authority.verdicts.get(op.id)?.accepted === true) return { status: 'synced' };
  return { status: 'pending' };
}
