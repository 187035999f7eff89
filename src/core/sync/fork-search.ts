/**
 * Finding where our branch of a device's log and the peer's part, to build a fork proof from
 * two ops at the first seq where they differ. Both logs are hash chains from seq 1, so once they
 * differ at a seq they differ at every later one: a binary search over seqs finds the first
 * difference with one read of our own op and one query to the peer per step. Pure: the session
 * asks the store and the peer, and feeds both ops in (no query where we hold no op).
 *
 * The first seq compared is one where the peer committed to an op (a tip id in its hello, or the
 * `prev` of an op it sent), or where a proof learned elsewhere makes us check. Rules for the
 * peer's answers (each a FieldmeshError the session closes with, blaming the peer):
 *  - NO_SUCH_OP: no op at a seq the peer must hold (it committed to it, or to a later one);
 *  - the answer decodes and its signature verifies (decodeOp's codes);
 *  - BAD_ANSWER: the answer is an op of another device, seq or team, or (at the first seq) not
 *    the op the peer committed to.
 */
import { forkProofOf, type ForkProof } from '../chain.ts';
import { FieldmeshError, RuleViolationError } from '../errors.ts';
import type { DeviceId } from '../keys.ts';
import { decodeOp, parseOp, type Op, type OpId } from '../op.ts';

export interface SearchStart {
  readonly device: DeviceId;
  /** The seq compared first. */
  readonly seq: number;
  /** The id the peer committed to at `seq`, if it did. */
  readonly expect: OpId | null;
  /** Whether the peer must hold an op at `seq`. */
  readonly peerHolds: boolean;
  /**
   * What it means when the ops at `seq` turn out the same (or we hold none): null for a check,
   * which then simply passes; otherwise the error the peer is blamed with (its claim was false).
   */
  readonly ifSame: FieldmeshError | null;
}

export type SearchStep =
  /** Compare the ops at `seq` next: read ours, then ask the peer for its op. */
  | { readonly kind: 'compare'; readonly seq: number }
  /** The branches first differ at proof.seq. */
  | { readonly kind: 'proof'; readonly proof: ForkProof }
  /** The ops at the first seq are the same: no fork there. */
  | { readonly kind: 'same' }
  | { readonly kind: 'fail'; readonly error: FieldmeshError };

const badAnswer = (message: string, details: Record<string, unknown>) => new RuleViolationError('BAD_ANSWER', message, details);

export class ForkSearch {
  readonly start: SearchStart;
  private readonly team: string;
  /** Highest seq known the same on both sides (0: none). */
  private lo = 0;
  /** Lowest seq known to differ, and the two ops there. */
  private hi: number;
  private found: [Op, Op] | null = null;
  private at: number;
  /** Comparisons done so far: the first one checks what the peer committed to. */
  private steps = 0;

  constructor(start: SearchStart, team: string) {
    this.start = start;
    this.team = team;
    this.hi = start.seq;
    this.at = start.seq;
  }

  get device(): DeviceId {
    return this.start.device;
  }

  /** The seq being compared now. */
  get seq(): number {
    return this.at;
  }

  first(): SearchStep {
    return { kind: 'compare', seq: this.at };
  }

  /** The peer's op and ours at `seq` (null: not held); returns what to do next. */
  step(theirs: Uint8Array | null, ours: Uint8Array | null): SearchStep {
    const { device, expect, peerHolds } = this.start;
    const at = this.at;
    const first = this.steps++ === 0;
    if (ours === null) return first ? this.same() : this.conclude();
    if (theirs === null) {
      // Below a seq the peer answered it must hold every op: its log has no gaps.
      if (first && !peerHolds) return this.same();
      return { kind: 'fail', error: new RuleViolationError('NO_SUCH_OP', `peer holds no op ${device}#${at} though it must`, { device, seq: at }) };
    }
    let op: Op;
    try {
      op = decodeOp(theirs);
    } catch (err) {
      if (err instanceof FieldmeshError) return { kind: 'fail', error: err };
      throw err;
    }
    if (op.device !== device || op.seq !== at || op.team !== this.team) {
      return { kind: 'fail', error: badAnswer(`asked for ${device}#${at}, got ${op.device}#${op.seq} of team ${op.team}`, { device, seq: at }) };
    }
    if (first && expect !== null && op.id !== expect) {
      return { kind: 'fail', error: badAnswer(`the peer named op ${expect} at ${device}#${at} but answered with ${op.id}`, { device, seq: at, expected: expect, found: op.id }) };
    }
    const own = parseOp(ours).op;
    if (own.id === op.id) {
      if (first) return this.same();
      this.lo = at;
    } else {
      this.hi = at;
      this.found = [own, op];
      // Same predecessor: this is the first seq where the branches differ.
      if (at === 1 || own.prev === op.prev) this.lo = at - 1;
    }
    if (this.hi - this.lo > 1) {
      this.at = this.lo + Math.floor((this.hi - this.lo) / 2);
      return { kind: 'compare', seq: this.at };
    }
    return this.conclude();
  }

  private same(): SearchStep {
    return this.start.ifSame === null ? { kind: 'same' } : { kind: 'fail', error: this.start.ifSame };
  }

  /** The two ops at the lowest seq found to differ (the search always compared one first). */
  private conclude(): SearchStep {
    if (this.found === null) return this.same();
    return { kind: 'proof', proof: forkProofOf(this.found[0], this.found[1])! };
  }
}
