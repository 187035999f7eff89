/**
 * Benchmark harness shared by every suite: rate measurement, one-shot timing, results and the
 * table. A suite is a named async function returning Results; bench/run.ts registers suites,
 * prints the table and writes bench/results.json. Timings never fail a run: a missed target is
 * printed as such and nothing more.
 */

/** A target on a result's value or ratio, e.g. { on: 'ratio', op: '>=', value: 0.7 }. */
export interface Target {
  readonly on: 'value' | 'ratio';
  readonly op: '>=' | '<=';
  readonly value: number;
}

/** One row of the table. Only name, value, unit, baseline and ratio go to results.json. */
export interface Result {
  readonly name: string;
  readonly value: number;
  readonly unit: string;
  /** The value of the physical or library limit this result is compared with, measured in the same run. */
  readonly baseline?: number;
  /** value / baseline. */
  readonly ratio?: number;
  /** Name of the baseline's own row (table only). */
  readonly baselineName?: string;
  /** Target (table only). */
  readonly target?: Target;
}

export interface Suite {
  readonly name: string;
  readonly description: string;
  /** Rough expected duration, for the progress line. */
  readonly approxSeconds?: number;
  run(log: (line: string) => void): Promise<Result[]>;
}

/** A result compared with a baseline result: ratio = value / baseline.value. */
export function against(result: Omit<Result, 'baseline' | 'ratio' | 'baselineName'>, baseline: Pick<Result, 'name' | 'value'>): Result {
  return { ...result, baseline: baseline.value, ratio: result.value / baseline.value, baselineName: baseline.name };
}

export interface RateOptions {
  /** Total measuring time (after warm-up) per function, in ms. Default 1000. */
  readonly minMs?: number;
  /** Warm-up time per function before measuring, in ms. Default 200. */
  readonly warmupMs?: number;
  /** Measuring rounds; the rate reported is their median. Default 5. */
  readonly rounds?: number;
  /** How many operations one call of the function performs (the rate is per operation). Default 1. */
  readonly opsPerCall?: number;
  /** The clock rates are computed on. Default 'wall'. See Clock. */
  readonly clock?: Clock;
}

/**
 * 'wall': elapsed real time; the only right clock for anything that waits (I/O, network, timers).
 * 'cpu': CPU time of this process, all its threads (GC helpers included), for pure computation:
 * the CPU work one core would do, which other processes competing for the machine's cores inflate
 * far less than wall time. Its granularity is a few ms, so it suits rounds of 100 ms and more.
 * 'thread': CPU time of the calling thread only (GC work done by helper threads left out): close
 * to the wall time of synchronous work on an otherwise idle multi-core machine.
 */
export type Clock = 'wall' | 'cpu' | 'thread';

const threadCpuMs = (): number => {
  const { user, system } = process.threadCpuUsage();
  return (user + system) / 1000;
};

const processCpuMs = (): number => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
};

/** A stopwatch on `clock`: call it to start, call the result to read elapsed ms. */
export function stopwatch(clock: Clock): () => number {
  if (clock === 'cpu') {
    const start = processCpuMs();
    return () => processCpuMs() - start;
  }
  if (clock === 'thread') {
    const start = threadCpuMs();
    return () => threadCpuMs() - start;
  }
  const start = performance.now();
  return () => performance.now() - start;
}

export interface Rate {
  /** Operations per second (median of the rounds). */
  readonly rate: number;
  /** Every round's rate, in measuring order. */
  readonly rounds: readonly number[];
  readonly calls: number;
  readonly ms: number;
}

const now = () => performance.now();

/** Calls `fn` in batches of `batch` until `ms` of wall time elapsed; returns calls and elapsed ms on `clock`. */
function runFor(fn: () => unknown, ms: number, batch: number, clock: Clock = 'wall'): { calls: number; ms: number } {
  let calls = 0;
  const start = now();
  const elapsed = stopwatch(clock);
  do {
    for (let i = 0; i < batch; i++) fn();
    calls += batch;
  } while (now() - start < ms);
  return { calls, ms: elapsed() };
}

/** A batch size making one batch last about 5 ms, from a short probe. */
function calibrate(fn: () => unknown): number {
  let batch = 1;
  for (;;) {
    const start = now();
    for (let i = 0; i < batch; i++) fn();
    const ms = now() - start;
    if (ms >= 2 || batch >= 1 << 20) return Math.max(1, Math.round((batch * 5) / Math.max(ms, 0.001)));
    batch *= 2;
  }
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

/**
 * Measures several functions in interleaved rounds (a, b, c, a, b, c, ...) so that a ratio
 * between them is not skewed by load that comes and goes on the machine. Each rate is the
 * median of its rounds.
 */
export function measureRates<K extends string>(fns: Readonly<Record<K, () => unknown>>, options: RateOptions = {}): Record<K, Rate> {
  const { minMs = 1000, warmupMs = 200, rounds = 5, opsPerCall = 1, clock = 'wall' } = options;
  const keys = Object.keys(fns) as K[];
  const batches = {} as Record<K, number>;
  for (const k of keys) {
    runFor(fns[k], warmupMs, 1);
    batches[k] = calibrate(fns[k]);
  }
  const perRound = {} as Record<K, number[]>;
  const totals = {} as Record<K, { calls: number; ms: number }>;
  for (const k of keys) {
    perRound[k] = [];
    totals[k] = { calls: 0, ms: 0 };
  }
  for (let r = 0; r < rounds; r++) {
    for (const k of keys) {
      const { calls, ms } = runFor(fns[k], minMs / rounds, batches[k], clock);
      perRound[k].push((calls * opsPerCall * 1000) / ms);
      totals[k].calls += calls;
      totals[k].ms += ms;
    }
  }
  const out = {} as Record<K, Rate>;
  for (const k of keys) out[k] = { rate: median(perRound[k]), rounds: perRound[k], calls: totals[k].calls, ms: totals[k].ms };
  return out;
}

/** Operations per second of `fn` (median of rounds after a warm-up). */
export function measureRate(fn: () => unknown, options: RateOptions = {}): Rate {
  return measureRates({ fn }, options).fn;
}

/**
 * Runs `fn` `runs` times (after `warmup` unmeasured runs): the median and every duration in ms on
 * `clock`, and every duration in wall ms too.
 */
export function timeRuns(fn: () => unknown, { runs = 3, warmup = 1, clock = 'wall' }: { runs?: number; warmup?: number; clock?: Clock } = {}): { medianMs: number; runsMs: number[]; wallMs: number[] } {
  for (let i = 0; i < warmup; i++) fn();
  const runsMs: number[] = [];
  const wallMs: number[] = [];
  for (let i = 0; i < runs; i++) {
    const elapsed = stopwatch(clock);
    const wall = stopwatch('wall');
    fn();
    runsMs.push(elapsed());
    wallMs.push(wall());
  }
  return { medianMs: median(runsMs), runsMs, wallMs };
}

/** Whether a result meets its target (undefined when it has none or lacks the compared number). */
/** An integer setting from the environment (a figure's size), at least `min` and a multiple of `step`. */
export function envCount(name: string, fallback: number, { min = 1, step = 1 }: { min?: number; step?: number } = {}): number {
  const raw = process.env[name];
  const n = raw === undefined || raw === '' ? fallback : Number(raw);
  if (!Number.isSafeInteger(n) || n < min || n % step !== 0) throw new Error(`${name} must be an integer >= ${min}${step > 1 ? `, a multiple of ${step}` : ''}; got ${raw}`);
  return n;
}

export function targetMet(r: Result): boolean | undefined {
  if (r.target === undefined) return undefined;
  const x = r.target.on === 'ratio' ? r.ratio : r.value;
  if (x === undefined) return undefined;
  return r.target.op === '>=' ? x >= r.target.value : x <= r.target.value;
}

/** Three significant digits, no exponent for ordinary magnitudes, thousands separated. */
export function formatNumber(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  const abs = Math.abs(x);
  if (abs >= 1000) return Math.round(x).toLocaleString('en-US');
  if (abs >= 100) return x.toFixed(0);
  if (abs >= 10) return x.toFixed(1);
  if (abs >= 1) return x.toFixed(2);
  if (abs === 0) return '0';
  return x.toPrecision(3);
}

const formatTarget = (t: Target): string => `${t.on === 'ratio' ? 'ratio ' : ''}${t.op} ${t.value}`;

/** The results as an aligned text table. */
export function formatTable(results: readonly Result[]): string {
  const header = ['name', 'value', 'unit', 'baseline', 'ratio', 'target', 'met'];
  const rows = results.map((r) => {
    const met = targetMet(r);
    return [
      r.name,
      formatNumber(r.value),
      r.unit,
      r.baseline === undefined ? '' : `${formatNumber(r.baseline)}${r.baselineName === undefined ? '' : ` (${r.baselineName})`}`,
      r.ratio === undefined ? '' : `${r.ratio.toFixed(r.ratio >= 100 ? 0 : 2)}x`,
      r.target === undefined ? '' : formatTarget(r.target),
      met === undefined ? '' : met ? 'yes' : 'NO',
    ];
  });
  const numeric = new Set([1, 3, 4]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (numeric.has(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

/** The JSON form written to results.json: { name, value, unit, baseline?, ratio? } per result. */
export function toJson(results: readonly Result[]): object[] {
  return results.map((r) => ({
    name: r.name,
    value: r.value,
    unit: r.unit,
    ...(r.baseline === undefined ? {} : { baseline: r.baseline }),
    ...(r.ratio === undefined ? {} : { ratio: r.ratio }),
  }));
}
