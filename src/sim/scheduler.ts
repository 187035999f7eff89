/**
 * Discrete-event scheduler: virtual time and a priority queue ordered by (time, sequence
 * number), so events at the same virtual time run in the order they were scheduled. Events run
 * one at a time; after each, the scheduler lets every promise continuation the event started run
 * to completion (store work on memory-level resolves through microtasks only) before the next
 * event, so a run is exactly reproducible.
 */

export interface SimEvent {
  readonly atMs: number;
  readonly seq: number;
  /** Short description for traces: what happened, to whom. */
  readonly label: string;
  readonly run: () => void;
}

/** A traced event, as reported with a violation. */
export interface TraceEntry {
  readonly index: number;
  readonly atMs: number;
  readonly label: string;
}

const TRACE_ENTRIES = 40;

/** All continuations queued as microtasks (and process.nextTick) run before a macrotask callback. */
const drainMicrotasks = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

export class Scheduler {
  private heap: SimEvent[] = [];
  private nextSeq = 0;
  private nowMs = 0;
  /** Events processed so far. */
  processed = 0;
  /** Most events ever queued at once (a bound the checkers look at). */
  maxQueued = 0;
  /** The last events processed, oldest first (a ring of TRACE_ENTRIES). */
  private readonly ring: TraceEntry[] = [];

  get now(): number {
    return this.nowMs;
  }

  get queued(): number {
    return this.heap.length;
  }

  /** Schedules `run` at `delayMs` from now (never in the past). */
  after(delayMs: number, label: string, run: () => void): void {
    this.push({ atMs: this.nowMs + Math.max(0, delayMs), seq: this.nextSeq++, label, run });
  }

  at(atMs: number, label: string, run: () => void): void {
    this.push({ atMs: Math.max(this.nowMs, atMs), seq: this.nextSeq++, label, run });
  }

  /** The last events processed, oldest first. */
  trace(): TraceEntry[] {
    return [...this.ring];
  }

  /**
   * Runs events until the queue is empty, `untilMs` is passed, `stop()` returns true or
   * `maxEvents` have been processed in total. Returns why it stopped.
   */
  async run(options: { untilMs?: number; maxEvents: number; stop?: () => boolean }): Promise<'empty' | 'until' | 'stopped' | 'max-events'> {
    const until = options.untilMs ?? Number.POSITIVE_INFINITY;
    while (true) {
      if (options.stop?.() === true) return 'stopped';
      const head = this.heap[0];
      if (head === undefined) return 'empty';
      if (head.atMs > until) {
        this.nowMs = until;
        return 'until';
      }
      if (this.processed >= options.maxEvents) return 'max-events';
      const event = this.pop();
      this.nowMs = event.atMs;
      this.processed++;
      this.ring.push({ index: this.processed, atMs: event.atMs, label: event.label });
      if (this.ring.length > TRACE_ENTRIES) this.ring.shift();
      event.run();
      await drainMicrotasks();
    }
  }

  private push(event: SimEvent): void {
    const heap = this.heap;
    heap.push(event);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(heap[i]!, heap[parent]!)) break;
      [heap[i], heap[parent]] = [heap[parent]!, heap[i]!];
      i = parent;
    }
    if (heap.length > this.maxQueued) this.maxQueued = heap.length;
  }

  private pop(): SimEvent {
    const heap = this.heap;
    const top = heap[0]!;
    const last = heap.pop()!;
    if (heap.length > 0) {
      heap[0] = last;
      let i = 0;
      while (true) {
        const l = 2 * i + 1;
        const r = l + 1;
        let best = i;
        if (l < heap.length && before(heap[l]!, heap[best]!)) best = l;
        if (r < heap.length && before(heap[r]!, heap[best]!)) best = r;
        if (best === i) break;
        [heap[i], heap[best]] = [heap[best]!, heap[i]!];
        i = best;
      }
    }
    return top;
  }
}

const before = (a: SimEvent, b: SimEvent): boolean => a.atMs < b.atMs || (a.atMs === b.atMs && a.seq < b.seq);
