/**
 * Log chain rules. A device's log is seq 1, 2, 3... without gaps; each op's `prev` is the id
 * (SHA-256 of the complete signed envelope) of its predecessor. Verifying a contiguous range thus
 * needs every op's hash but only the last op's signature: that signature covers the last body,
 * whose `prev` commits to every byte of the op before it, signature included, and so on back.
 */
import { RuleViolationError } from './errors.ts';
import { checkSignature, decodeOp, parseOpView, type Op, type OpId } from './op.ts';
import type { DeviceId } from './keys.ts';

/** Where a log stands: the highest contiguous seq held and that op's id (null before seq 1). */
export interface LogTip {
  readonly seq: number;
  readonly id: OpId | null;
}

export const EMPTY_TIP: LogTip = { seq: 0, id: null };

/**
 * Checks that `op` extends a log whose tip is `tip`.
 * Rules: SEQ_GAP (seq must be tip.seq + 1) and PREV_MISMATCH (prev must be tip.id).
 */
export function checkExtends(tip: LogTip, op: Op): void {
  if (op.seq !== tip.seq + 1) {
    throw new RuleViolationError('SEQ_GAP', `op ${op.device}#${op.seq} does not follow seq ${tip.seq}`, {
      device: op.device,
      expected: tip.seq + 1,
      found: op.seq,
    });
  }
  if (op.prev !== tip.id) {
    throw new RuleViolationError('PREV_MISMATCH', `op ${op.device}#${op.seq} does not chain to the op before it`, {
      device: op.device,
      seq: op.seq,
      expected: tip.id,
      found: op.prev,
    });
  }
}

/**
 * Decodes and verifies a contiguous range of one device's log that extends `tip`.
 * Rules: every op decodes canonically (DECODE/BAD_OP_FIELD/TOO_LARGE), all ops are of one device
 * (MIXED_DEVICES), each extends the one before (SEQ_GAP, PREV_MISMATCH), and the last op's
 * signature is valid (BAD_SIGNATURE). Any failure rejects the whole range.
 */
export function verifyRange(tip: LogTip, encoded: readonly Uint8Array[], maxOpBytes?: number): Op[] {
  const ops: Op[] = [];
  let at = tip;
  let last;
  for (const bytes of encoded) {
    last = parseOpView(bytes, maxOpBytes);
    const op = last.op;
    if (ops.length > 0 && op.device !== ops[0]!.device) {
      throw new RuleViolationError('MIXED_DEVICES', 'a range must hold one device\'s ops', {
        expected: ops[0]!.device,
        found: op.device,
      });
    }
    checkExtends(at, op);
    ops.push(op);
    at = { seq: op.seq, id: op.id };
  }
  if (last !== undefined) checkSignature(last);
  return ops;
}

/** Two validly signed, different ops of one device with one seq: proof that the device forked its log. */
export interface ForkProof {
  readonly device: DeviceId;
  readonly seq: number;
  /** Both ops' envelopes, ordered by op id so one fork has one proof. */
  readonly ops: readonly [Uint8Array, Uint8Array];
}

/** Builds a proof from two ops that share device and seq but differ; null when they do not prove a fork. */
export function forkProofOf(a: Op, b: Op): ForkProof | null {
  if (a.device !== b.device || a.seq !== b.seq || a.id === b.id) return null;
  const [first, second] = a.id < b.id ? [a, b] : [b, a];
  return { device: a.device, seq: a.seq, ops: [first.bytes, second.bytes] };
}

/**
 * Checks a fork proof on its own: both ops decode, carry valid signatures, and are different ops
 * of the named device at the named seq (rule BAD_FORK_PROOF otherwise). Returns the two ops.
 */
export function verifyForkProof(proof: ForkProof): [Op, Op] {
  const a = decodeOp(proof.ops[0]);
  const b = decodeOp(proof.ops[1]);
  if (a.device !== proof.device || b.device !== proof.device || a.seq !== proof.seq || b.seq !== proof.seq || a.id >= b.id) {
    throw new RuleViolationError('BAD_FORK_PROOF', `not a proof of a fork of ${proof.device} at seq ${proof.seq}`, {
      device: proof.device,
      seq: proof.seq,
    });
  }
  return [a, b];
}
