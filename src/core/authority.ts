/**
 * HQ's word on ops, and the proofs against devices: which ops count. An op is excluded from
 * entity values (it still stays in the log and in causal history) when
 *   - HQ's latest verdict on it rejects it (REJECTED, with HQ's reason),
 *   - HQ revoked its device with afterSeq < its seq (DEVICE_REVOKED),
 *   - its device forked at a seq <= its seq (DEVICE_FORKED): both fork branches are excluded,
 *     since no node may choose between them, and leave causal history too (void ops,
 *     materialize.ts `effectiveBase`).
 * Only receipts and revocations authored by the team's HQ device count.
 */
import type { DeviceId } from './keys.ts';
import type { Op, OpId, ReceiptBody, RevokeBody } from './op.ts';

export interface VerdictRecord {
  readonly accepted: boolean;
  readonly reason: string;
  readonly detail: string;
  /** HQ log seq of the receipt holding it: the latest receipt wins. */
  readonly hqSeq: number;
}

export interface Authority {
  readonly verdicts: ReadonlyMap<OpId, VerdictRecord>;
  /** Device -> lowest afterSeq of HQ's revocations. */
  readonly revokedAfter: ReadonlyMap<DeviceId, number>;
  /** Device -> lowest seq at which a fork was proven. */
  readonly forkedAt: ReadonlyMap<DeviceId, number>;
}

export interface Exclusion {
  readonly reason: 'REJECTED' | 'DEVICE_REVOKED' | 'DEVICE_FORKED';
  readonly detail: string;
  /** HQ's reason code when rejected. */
  readonly code?: string;
}

export function exclusionOf(op: Pick<Op, 'id' | 'device' | 'seq'>, authority: Authority): Exclusion | null {
  const forkSeq = authority.forkedAt.get(op.device);
  if (forkSeq !== undefined && op.seq >= forkSeq) return { reason: 'DEVICE_FORKED', detail: `device forked its log at seq ${forkSeq}` };
  const revokedAfter = authority.revokedAfter.get(op.device);
  if (revokedAfter !== undefined && op.seq > revokedAfter) return { reason: 'DEVICE_REVOKED', detail: `device revoked after seq ${revokedAfter}` };
  const verdict = authority.verdicts.get(op.id);
  if (verdict !== undefined && !verdict.accepted) return { reason: 'REJECTED', code: verdict.reason, detail: verdict.detail };
  return null;
}

/** Mutable authority built from HQ ops and fork proofs, in any order. */
export class AuthorityBuilder implements Authority {
  readonly verdicts = new Map<OpId, VerdictRecord>();
  readonly revokedAfter = new Map<DeviceId, number>();
  readonly forkedAt = new Map<DeviceId, number>();
  readonly hqDevice: DeviceId;

  constructor(hqDevice: DeviceId) {
    this.hqDevice = hqDevice;
  }

  /** Records a receipt or revocation; returns the op ids / devices whose standing may have changed. */
  addHqOp(op: Op<ReceiptBody> | Op<RevokeBody>): { ops: OpId[]; devices: DeviceId[] } {
    if (op.device !== this.hqDevice) return { ops: [], devices: [] };
    if (op.type === 'receipt') {
      const changed: OpId[] = [];
      for (const v of op.verdicts) {
        const known = this.verdicts.get(v.op);
        if (known !== undefined && known.hqSeq >= op.seq) continue;
        this.verdicts.set(v.op, { accepted: v.accepted, reason: v.reason, detail: v.detail, hqSeq: op.seq });
        changed.push(v.op);
      }
      return { ops: changed, devices: [] };
    }
    const known = this.revokedAfter.get(op.target);
    if (known !== undefined && known <= op.afterSeq) return { ops: [], devices: [] };
    this.revokedAfter.set(op.target, op.afterSeq);
    return { ops: [], devices: [op.target] };
  }

  addFork(device: DeviceId, seq: number): boolean {
    const known = this.forkedAt.get(device);
    if (known !== undefined && known <= seq) return false;
    this.forkedAt.set(device, seq);
    return true;
  }
}
