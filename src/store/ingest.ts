/**
 * Ingesting ops that came from elsewhere (a peer, a bundle): everything is checked before
 * anything is written, so a bad batch stores nothing.
 *
 * Rules, in order, per device run (consecutive ops of one device):
 *  - every op decodes canonically and belongs to this team (WRONG_TEAM);
 *  - an op at a seq we hold is a duplicate when its id matches; a different, validly signed op
 *    there is a fork: the proof is kept, the device flagged, and its later ops refused;
 *  - ops past a fork point or a revocation are refused (not stored, not an error);
 *  - the rest extends our tip without gaps (SEQ_GAP, PREV_MISMATCH), and each device's last new
 *    op in the batch carries a valid signature (BAD_SIGNATURE): its runs form one hash chain from
 *    our tip, so one signature per device verifies them all, however the batch interleaves devices.
 */
import { checkExtends, forkProofOf, type LogTip } from '../core/chain.ts';
import { InvalidInputError, RuleViolationError } from '../core/errors.ts';
import { hlcReceive } from '../core/hlc.ts';
import { checkSignature, parseOp, type Op, type ParsedOp } from '../core/op.ts';
import type { DeviceId } from '../core/keys.ts';
import type { ApplyContext } from './apply.ts';
import { logKey } from './keys.ts';
import { TABLES } from './tables.ts';

export interface IngestResult {
  readonly added: number;
  readonly duplicates: number;
  /** Ops refused because their device forked or was revoked before them. */
  readonly refused: number;
  readonly forks: readonly { device: DeviceId; seq: number }[];
  /** Ops whose HLC was more than maxDriftMs ahead of our clock (kept, flagged). */
  readonly skewed: readonly { device: DeviceId; seq: number; aheadMs: number }[];
}

export interface IngestOptions {
  readonly team: string;
  /** Whether a device is enrolled in the team; ops of others are refused (UNENROLLED). */
  readonly isEnrolled: (device: DeviceId) => boolean;
  /** When set, every op must be of this device (a sync frame names one device's run). */
  readonly device?: DeviceId;
  readonly nowMs: number;
  readonly maxDriftMs: number;
  readonly maxOpBytes?: number;
}

/** Ops of our team by enrolled devices (and of the frame's device, if named), or a typed error. */
function checkMembership(parsed: readonly ParsedOp[], options: Pick<IngestOptions, 'team' | 'isEnrolled' | 'device'>): void {
  for (const p of parsed) {
    if (p.op.team !== options.team) {
      throw new InvalidInputError('WRONG_TEAM', `op ${p.op.device}#${p.op.seq} is of team ${p.op.team}, not ${options.team}`, { expected: options.team, found: p.op.team });
    }
    if (options.device !== undefined && p.op.device !== options.device) {
      throw new InvalidInputError('WRONG_DEVICE', `op of ${p.op.device} in a run of ${options.device}`, { expected: options.device, found: p.op.device });
    }
    if (!options.isEnrolled(p.op.device)) {
      throw new RuleViolationError('UNENROLLED', `op ${p.op.device}#${p.op.seq} is by a device that is not enrolled in team ${options.team}`, { device: p.op.device });
    }
  }
}

/**
 * Void ops fetched by id (docs/protocol.md, "Forks"): ops past a fork point that ops we hold
 * name in their base. Each must decode canonically, carry its own valid signature (they are not
 * a chain) and be of an enrolled device of our team, or nothing is stored. Those not past a fork
 * point we hold a proof of, or held already, are skipped: the sender may know a proof that has
 * not reached us yet. Returns the ops kept.
 */
export async function ingestVoids(ctx: ApplyContext, encoded: readonly Uint8Array[], options: Pick<IngestOptions, 'team' | 'isEnrolled' | 'maxOpBytes'>): Promise<Op[]> {
  const parsed = encoded.map((bytes) => parseOp(bytes, options.maxOpBytes));
  checkMembership(parsed, options);
  for (const p of parsed) checkSignature(p);
  const kept: Op[] = [];
  for (const p of parsed) if (await ctx.addVoidOp(p.op)) kept.push(p.op);
  return kept;
}

export async function ingest(ctx: ApplyContext, encoded: readonly Uint8Array[], options: IngestOptions): Promise<IngestResult> {
  const parsed = encoded.map((bytes) => parseOp(bytes, options.maxOpBytes));
  checkMembership(parsed, options);
  // Validate every run before writing anything.
  const accepted: Op[] = [];
  const forks: { device: DeviceId; seq: number; proof: unknown }[] = [];
  let duplicates = 0;
  let refused = 0;
  const tips = new Map<DeviceId, LogTip>();
  const batchOps = new Map<string, Op>();
  const lastFresh = new Map<DeviceId, ParsedOp>();
  const tipOf = async (device: DeviceId): Promise<LogTip> =>
    tips.get(device) ?? (await ctx.txn.get<LogTip>(TABLES.tip, device)) ?? { seq: 0, id: null };
  let run: ParsedOp[] = [];
  const closeRun = async () => {
    if (run.length === 0) return;
    const device = run[0]!.op.device;
    let tip = await tipOf(device);
    const fresh: ParsedOp[] = [];
    let forkedAt = ctx.forkedAt.get(device) ?? Number.POSITIVE_INFINITY;
    const revokedAfter = ctx.revokedAfter.get(device) ?? Number.POSITIVE_INFINITY;
    for (const p of run) {
      if (p.op.seq >= forkedAt || p.op.seq > revokedAfter) {
        refused++;
        continue;
      }
      if (p.op.seq <= tip.seq) {
        // Held either from before, or accepted earlier in this very batch (not written yet).
        const earlier = batchOps.get(`${device}#${p.op.seq}`);
        const held = earlier === undefined ? await ctx.txn.getRaw(TABLES.log, logKey(device, p.op.seq)) : undefined;
        const heldOp = earlier ?? (held === undefined ? undefined : parseOp(held).op);
        if (heldOp === undefined || heldOp.id === p.op.id) {
          duplicates++;
          continue;
        }
        checkSignature(p); // a fork proof must hold two genuine signatures
        const proof = forkProofOf(heldOp, p.op)!;
        forks.push({ device, seq: p.op.seq, proof });
        forkedAt = p.op.seq;
        refused++;
        continue;
      }
      checkExtends(tip, p.op);
      fresh.push(p);
      batchOps.set(`${device}#${p.op.seq}`, p.op);
      tip = { seq: p.op.seq, id: p.op.id };
    }
    if (fresh.length > 0) lastFresh.set(device, fresh[fresh.length - 1]!);
    for (const p of fresh) accepted.push(p.op);
    tips.set(device, tip);
    run = [];
  };
  for (const p of parsed) {
    if (run.length > 0 && run[0]!.op.device !== p.op.device) await closeRun();
    run.push(p);
  }
  await closeRun();
  for (const last of lastFresh.values()) checkSignature(last);

  const skewed: { device: DeviceId; seq: number; aheadMs: number }[] = [];
  await ctx.prefetchFor(accepted);
  for (const op of accepted) {
    const received = hlcReceive(ctx.clock, op.hlc, options.nowMs, options.maxDriftMs);
    ctx.clock = received.clock;
    // HQ's clock vouches for "now" at admission, but only as far as we may believe it.
    if (op.device === ctx.hqDevice) ctx.hqWallMs = Math.max(ctx.hqWallMs, Math.min(op.hlc.wallMs, options.nowMs + options.maxDriftMs));
    if (received.driftFlagged) {
      skewed.push({ device: op.device, seq: op.seq, aheadMs: received.aheadMs });
      ctx.txn.put(TABLES.skew, op.device, { seq: op.seq, aheadMs: received.aheadMs, atMs: options.nowMs });
    }
    await ctx.addOp(op);
  }
  for (const fork of forks) await ctx.recordFork(fork.device, fork.seq, fork.proof);
  return { added: accepted.length, duplicates, refused, forks: forks.map(({ device, seq }) => ({ device, seq })), skewed };
}
