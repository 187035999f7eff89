/**
 * HQ's receipt loop in the simulator, as hq/receipts.ts runs it on a FieldNode: whenever ops of
 * other devices arrive, judge every one without a verdict with the team's Policy and append the
 * verdicts to HQ's log as one receipt op, which reaches every device through the mesh.
 */
import { isEntityOp, parseOp, type OpId, type Verdict } from '../core/op.ts';
import type { OpMeta } from '../store/apply.ts';
import { logKey, under } from '../store/keys.ts';
import { TABLES } from '../store/tables.ts';
import type { SimContext } from './context.ts';
import type { SimNode } from './node.ts';
import { SIM_POLICY, type Team } from './team.ts';

/** Verdicts per receipt op (well within the op size limit). */
const MAX_VERDICTS = 500;

export class HqReceipts {
  private readonly sim: SimContext;
  private readonly hq: SimNode;
  private readonly roles: Map<string, Team['members'][number]['role']>;
  private scheduled = false;
  /** Generation of HQ during which a pass runs (a crash ends it). */
  private runningIn: number | null = null;

  constructor(sim: SimContext, hq: SimNode, team: Team) {
    this.sim = sim;
    this.hq = hq;
    this.roles = new Map(team.members.map((m) => [m.signer.device, m.role]));
  }

  kick(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    this.sim.scheduler.after(this.sim.prng.int(20, 200), 'hq receipts', () => {
      this.scheduled = false;
      this.pass();
    });
  }

  private pass(): void {
    const hq = this.hq;
    if (hq.state !== 'up' || this.runningIn === hq.generation) return;
    const generation = hq.generation;
    this.runningIn = generation;
    const done = () => {
      if (this.runningIn === generation) this.runningIn = null;
    };
    this.judgeWaiting().then((verdicts) => {
      if (hq.generation !== generation) return;
      if (verdicts.length === 0) return done();
      hq.author(null, () => ({ type: 'receipt', verdicts }), () => {
        this.sim.stats.receipts++;
        done();
        this.kick();
      });
    }, (err: unknown) => {
      if (hq.generation === generation) this.sim.unexpected('hq receipts')(err);
    });
  }

  /** Verdicts on ops of other devices that have none yet (pending or in conflict), oldest first per device. */
  private async judgeWaiting(): Promise<Verdict[]> {
    const store = this.hq.store;
    const reader = store.reader();
    const out: Verdict[] = [];
    const seen = new Set<OpId>();
    for (const status of ['pending', 'conflict'] as const) {
      for await (const [, id] of store.scan<OpId>(TABLES.status, under(status))) {
        if (out.length >= MAX_VERDICTS) return out;
        const meta = await reader.get<OpMeta>(TABLES.op, id);
        if (meta === undefined || meta.device === this.hq.device || meta.domain === null || seen.has(id)) continue;
        if ((await reader.get(TABLES.verdict, id)) !== undefined) continue;
        const bytes = await reader.getRaw(TABLES.log, logKey(meta.device, meta.seq));
        const op = bytes === undefined ? undefined : parseOp(bytes).op;
        if (op === undefined || !isEntityOp(op)) continue;
        seen.add(id);
        const verdict = SIM_POLICY.judge(op, this.roles.get(op.device) ?? null);
        out.push(verdict.accepted ? { op: id, accepted: true, reason: '', detail: '' } : { op: id, accepted: false, reason: verdict.reason, detail: verdict.detail });
      }
    }
    return out;
  }
}
