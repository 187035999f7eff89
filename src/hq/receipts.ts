/**
 * HQ's receipt loop: whenever ops arrive, judge every op of another device that has no verdict
 * yet and append the verdicts to HQ's log as receipt ops (which reach every device through the
 * mesh). A permanent rejection is a verdict (the op turns `failed` everywhere, with the reason).
 * A transient fault while judging (the op cannot be read, a bug) is no verdict: the op stays
 * `pending` and is retried with capped exponential back-off and jitter; its attempt count and
 * last error are kept for the API.
 */
import { FieldmeshError } from '../core/errors.ts';
import { LIMITS } from '../core/limits.ts';
import { isEntityOp, type OpId } from '../core/op.ts';
import type { FieldNode } from '../node/field-node.ts';
import type { Policy } from './policy.ts';

export interface ReceiptOptions {
  /** Verdicts per receipt op (an op is at most 64 KiB: about 1,700 fit). @default 1000 */
  readonly maxVerdictsPerReceipt?: number;
  /** Back-off after a transient fault, first and cap. @default 500 / 60000 */
  readonly retryMinMs?: number;
  readonly retryMaxMs?: number;
  readonly random?: () => number;
  readonly now?: () => number;
}

/** Verdict bytes per receipt op: well under the 64 KiB op limit, leaving room for the header. */
const RECEIPT_BYTES = 48 * 1024;

export interface RetryState {
  readonly attempts: number;
  readonly lastError: string;
  readonly nextAttemptMs: number;
}

export class ReceiptIssuer {
  private readonly node: FieldNode;
  private readonly policy: Policy;
  private readonly maxVerdicts: number;
  private readonly options: ReceiptOptions;
  private readonly retries = new Map<OpId, RetryState>();
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private again = false;
  private stopped = false;
  private unsubscribe: (() => void) | null = null;
  /** Receipts written and verdicts given since start. */
  readonly stats: { receipts: number; accepted: number; rejected: number; transient: number; lastError?: string } = { receipts: 0, accepted: 0, rejected: 0, transient: 0 };

  constructor(node: FieldNode, policy: Policy, options: ReceiptOptions = {}) {
    this.node = node;
    this.policy = policy;
    this.options = options;
    this.maxVerdicts = Math.min(options.maxVerdictsPerReceipt ?? 1000, LIMITS.maxVerdictsPerReceipt, 1500);
  }

  start(): void {
    this.unsubscribe = this.node.onAdvanced((tips) => {
      if (Object.keys(tips).some((d) => d !== this.node.device)) this.kick();
    });
    this.kick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.unsubscribe?.();
    if (this.timer !== null) clearTimeout(this.timer);
    await this.running;
  }

  /** Ops waiting on a retry after a transient fault. */
  retrying(): ReadonlyMap<OpId, RetryState> {
    return this.retries;
  }

  /** Judges everything waiting now; resolves when done (used by tests and the demo). */
  async flush(): Promise<void> {
    this.kick();
    while (this.running !== null) await this.running;
  }

  private kick(): void {
    if (this.stopped) return;
    if (this.running !== null) {
      this.again = true;
      return;
    }
    this.running = this.pass()
      .catch((err: Error) => {
        // A store failure while writing a receipt: nothing was written; try again after a pause.
        this.stats.lastError = err.message;
        if (!this.stopped) {
          this.timer = setTimeout(() => this.kick(), this.options.retryMinMs ?? 500);
          this.timer.unref();
        }
      })
      .finally(() => {
        this.running = null;
        if (this.again) {
          this.again = false;
          this.kick();
        }
      });
  }

  private async pass(): Promise<void> {
    const now = this.options.now ?? Date.now;
    // Bounded: each round judges up to maxVerdicts ops; ops in back-off are skipped.
    for (let round = 0; round < 1000 && !this.stopped; round++) {
      const waiting = (await this.node.awaitingVerdict(this.maxVerdicts + this.retries.size)).filter((o) => (this.retries.get(o.id)?.nextAttemptMs ?? 0) <= now()).slice(0, this.maxVerdicts);
      if (waiting.length === 0) break;
      const verdicts = [];
      let ops: Awaited<ReturnType<FieldNode['readOps']>> = [];
      try {
        ops = await this.node.readOps(waiting.map((w) => w.id));
      } catch (err) {
        for (const summary of waiting) this.transient(summary.id, err as Error, now());
        break;
      }
      for (const [i, summary] of waiting.entries()) {
        try {
          const op = ops[i];
          if (op === undefined || !isEntityOp(op)) throw new FieldmeshError('OP_UNREADABLE', `op ${summary.id} cannot be read`);
          const verdict = this.policy.judge(op, this.node.roleOf(op.device));
          verdicts.push(verdict.accepted ? { op: op.id, accepted: true, reason: '', detail: '' } : { op: op.id, accepted: false, reason: verdict.reason, detail: verdict.detail });
          this.retries.delete(op.id);
        } catch (err) {
          this.transient(summary.id, err as Error, now());
        }
      }
      if (verdicts.length === 0) break;
      // Split by encoded size: rejection reasons make verdicts up to ~1 KiB, and an op is at most 64 KiB.
      let chunk: typeof verdicts = [];
      let bytes = 0;
      for (const v of [...verdicts, null]) {
        const size = v === null ? 0 : 48 + Buffer.byteLength(v.reason) + Buffer.byteLength(v.detail);
        if (chunk.length > 0 && (v === null || bytes + size > RECEIPT_BYTES)) {
          await this.node.appendHqOp({ type: 'receipt', verdicts: chunk });
          this.stats.receipts++;
          for (const w of chunk) this.stats[w.accepted ? 'accepted' : 'rejected']++;
          chunk = [];
          bytes = 0;
        }
        if (v !== null) {
          chunk.push(v);
          bytes += size;
        }
      }
    }
    this.scheduleRetry(now());
  }

  private transient(id: OpId, err: Error, nowMs: number): void {
    const previous = this.retries.get(id);
    const attempts = (previous?.attempts ?? 0) + 1;
    const min = this.options.retryMinMs ?? 500;
    const max = this.options.retryMaxMs ?? 60_000;
    const backoff = Math.min(max, min * 2 ** Math.min(attempts - 1, 20));
    const jitter = (this.options.random ?? Math.random)();
    this.retries.set(id, { attempts, lastError: err.message, nextAttemptMs: nowMs + backoff / 2 + jitter * (backoff / 2) });
    this.stats.transient++;
  }

  private scheduleRetry(nowMs: number): void {
    if (this.stopped || this.retries.size === 0) return;
    const next = Math.min(...[...this.retries.values()].map((r) => r.nextAttemptMs));
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.kick(), Math.max(10, next - nowMs));
    this.timer.unref();
  }
}
