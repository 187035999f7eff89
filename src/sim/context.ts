/**
 * What every part of one run shares: the scheduler, the one PRNG, the config, the statistics and
 * the violations found so far (the first one, with the events leading to it, is what a failing
 * seed reports).
 */
import { FAULT_TYPES, type FaultType, type SimConfig } from './config.ts';
import { Prng } from './prng.ts';
import { Scheduler, type TraceEntry } from './scheduler.ts';

export interface Violation {
  /** Which invariant (docs/testing.md lists them). */
  readonly invariant: string;
  readonly message: string;
  readonly atMs: number;
  /** Index of the event during (or after) which it was found. */
  readonly event: number;
  /** The events leading to it, oldest first. */
  readonly trace: readonly TraceEntry[];
}

export interface SimStats {
  readonly faults: Record<FaultType, number>;
  /** Mutations that resolved (durable on their device). */
  mutations: number;
  receipts: number;
  sessionsOpened: number;
  framesSent: number;
  /** Bytes on the wire: frames plus their varint length prefixes. */
  wireBytes: number;
  /** Largest unacknowledged bytes in one direction of one session. */
  maxInFlightBytes: number;
  /** Void ops (past a fork point) held by id after settling, summed over nodes. */
  voidsFetched: number;
}

const MAX_VIOLATIONS = 20;

export class SimContext {
  readonly config: SimConfig;
  readonly scheduler = new Scheduler();
  readonly prng: Prng;
  readonly violations: Violation[] = [];
  readonly stats: SimStats;

  constructor(config: SimConfig) {
    this.config = config;
    this.prng = new Prng(config.seed);
    this.stats = {
      faults: Object.fromEntries(FAULT_TYPES.map((f) => [f, 0])) as Record<FaultType, number>,
      mutations: 0,
      receipts: 0,
      sessionsOpened: 0,
      framesSent: 0,
      wireBytes: 0,
      maxInFlightBytes: 0,
      voidsFetched: 0,
    };
  }

  get now(): number {
    return this.scheduler.now;
  }

  violate(invariant: string, message: string): void {
    if (this.violations.length >= MAX_VIOLATIONS) return;
    this.violations.push({ invariant, message, atMs: this.scheduler.now, event: this.scheduler.processed, trace: this.scheduler.trace() });
  }

  /** Work started by an event that failed unexpectedly: a violation, never an unhandled rejection. */
  readonly unexpected = (where: string) => (err: unknown): void => {
    this.violate('no-unexpected-errors', `${where}: ${(err as Error).stack ?? String(err)}`);
  };
}
