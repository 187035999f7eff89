/**
 * The simulator's command line (`bash scripts/run.sh sim ...`, which runs `npm run sim -- ...`
 * with a Node that runs TypeScript):
 *
 *   bash scripts/run.sh sim --seeds 1000              soak: seeds 1..1000, 3..20 nodes each
 *   bash scripts/run.sh sim --seeds 200 --nodes 12    soak with a fixed team size
 *   bash scripts/run.sh sim --seed 42 --nodes 7 ...   replay one run exactly (what a failure prints)
 *
 * A soak shows a progress bar on stderr (plain progress lines when stderr is not a terminal) and
 * ends with a summary. On the first failing seed it prints the violation, the events leading to
 * it and the replay command (and, with --shrink, a smaller failing config); the exit code is 1.
 * Bad usage (an unknown option, a value that is malformed or out of range) exits 2 with one line
 * on stderr, before anything runs.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { FieldmeshError } from '../core/errors.ts';
import { FAULT_TYPES, replayCommand, SIM_BOUNDS, simConfig, VARIANTS, type FaultType, type SimConfig, type Variant } from './config.ts';
import { formatFailure, formatResult, formatSummary } from './report.ts';
// The simulation itself is loaded once the options are known to be good, so bad usage answers at once.
import type { SimResult } from './simulation.ts';

/** Exit code of bad usage (docs/testing.md): an unknown option, a malformed or out-of-range value. */
const USAGE = 2;

/** Most seeds one soak runs (its seed list is held in memory). */
const MAX_SEEDS = 1_000_000;
/** Most worker threads of a soak. */
const MAX_WORKERS = 256;

/** Bad usage found after parsing (an option that depends on another). */
class UsageError extends Error {}

/** A decimal integer within [min, max]: "1e3", "0x10", "" and "2.5" are refused, not converted. */
const int =
  ([min, max]: readonly [number, number]) =>
  (value: string): number => {
    const n = /^-?\d+$/.test(value) ? Number(value) : Number.NaN;
    if (!Number.isSafeInteger(n)) throw new InvalidArgumentError('not an integer.');
    if (n < min || n > max) throw new InvalidArgumentError(`must be from ${min} to ${max}.`);
    return n;
  };

const faultList = (value: string): FaultType[] => {
  if (value === 'none') return [];
  const list = value.split(',').map((f) => f.trim());
  for (const f of list) if (!(FAULT_TYPES as readonly string[]).includes(f)) throw new InvalidArgumentError(`unknown fault ${f}; known: ${FAULT_TYPES.join(', ')}, or none`);
  return list as FaultType[];
};

interface Flags {
  seeds?: number;
  firstSeed: number;
  seed?: number;
  nodes?: number;
  mutations?: number;
  faults?: FaultType[];
  variant?: Variant;
  faultPhaseMs?: number;
  settleLimitMs?: number;
  faultEveryMs?: number;
  latencyMinMs?: number;
  latencyMaxMs?: number;
  clockOffsetMaxMs?: number;
  clockJumpMaxMs?: number;
  maxEvents?: number;
  shrink: boolean;
  blackout: boolean;
  workers?: number;
}

/** Options given on the command line, the same for every seed (nodes and mutations apart). */
function baseConfig(flags: Flags): Partial<SimConfig> {
  const out: Record<string, unknown> = {};
  for (const key of ['faults', 'variant', 'faultPhaseMs', 'settleLimitMs', 'faultEveryMs', 'latencyMinMs', 'latencyMaxMs', 'clockOffsetMaxMs', 'clockJumpMaxMs', 'maxEvents'] as const) {
    if (flags[key] !== undefined) out[key] = flags[key];
  }
  if (flags.blackout) out.blackout = true;
  return out as Partial<SimConfig>;
}

async function reportFailure(result: SimResult, flags: Flags): Promise<void> {
  console.log(formatFailure(result));
  if (!flags.shrink) return;
  const { shrink } = await import('./shrink.ts');
  console.log('shrinking ...');
  const small = await shrink(result, { onStep: (r) => console.log(`  still fails with ${r.config.nodes} nodes, ${r.config.mutations} mutations, ${r.config.faultPhaseMs} ms, faults ${r.config.faults.join(',') || 'none'}`) });
  console.log(formatFailure(small));
}

function progress(total: number): (done: number, failed: number, started: number) => void {
  const tty = process.stderr.isTTY === true;
  let lastLine = 0;
  return (done, failed, started) => {
    const elapsed = (performance.now() - started) / 1000;
    const rate = done / Math.max(elapsed, 0.001);
    const eta = (total - done) / Math.max(rate, 0.001);
    const status = `${done}/${total} seeds, ${failed} failed, ${rate.toFixed(1)} seeds/s, eta ${eta.toFixed(0)} s`;
    if (tty) {
      const width = 30;
      const filled = Math.round((done / total) * width);
      process.stderr.write(`\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${status}   ${done === total ? '\n' : ''}`);
    } else if (done === total || done - lastLine >= Math.max(1, Math.floor(total / 10))) {
      lastLine = done;
      process.stderr.write(`${status}\n`);
    }
  };
}

async function main(argv: string[]): Promise<number> {
  const program = new Command('sim')
    .description('fieldmesh deterministic simulator: many nodes, the real core, sync machine and store, a seeded faulty network')
    .addOption(new Option('--seeds <n>', `soak: run this many seeds (1..${MAX_SEEDS})`).argParser(int([1, MAX_SEEDS])).conflicts('seed'))
    .addOption(new Option('--first-seed <s>', 'soak: first seed').argParser(int(SIM_BOUNDS.seed)).default(1).conflicts('seed'))
    .addOption(new Option('--seed <s>', 'replay one seed (with the other options given)').argParser(int(SIM_BOUNDS.seed)))
    .addOption(new Option('--nodes <m>', 'nodes, HQ included (default: 3..20 per seed in a soak, 6 for one seed)').argParser(int(SIM_BOUNDS.nodes)))
    .addOption(new Option('--mutations <k>', 'mutations during the fault phase (default: 10..30 per seed in a soak, 30 for one seed)').argParser(int(SIM_BOUNDS.mutations)))
    .addOption(new Option('--faults <list>', `fault types to inject: ${FAULT_TYPES.join(',')} or none (default: all)`).argParser(faultList))
    .addOption(new Option('--variant <v>', 'a deliberately broken variant').choices(VARIANTS))
    .addOption(new Option('--fault-phase-ms <ms>', 'virtual length of the fault phase').argParser(int(SIM_BOUNDS.faultPhaseMs)))
    .addOption(new Option('--settle-limit-ms <ms>', 'virtual time allowed to converge after healing').argParser(int(SIM_BOUNDS.settleLimitMs)))
    .addOption(new Option('--fault-every-ms <ms>', 'mean virtual time between faults').argParser(int(SIM_BOUNDS.faultEveryMs)))
    .addOption(new Option('--latency-min-ms <ms>', 'one-way latency, lowest').argParser(int(SIM_BOUNDS.latencyMinMs)))
    .addOption(new Option('--latency-max-ms <ms>', 'one-way latency, highest').argParser(int(SIM_BOUNDS.latencyMaxMs)))
    .addOption(new Option('--clock-offset-max-ms <ms>', 'largest clock offset at start').argParser(int(SIM_BOUNDS.clockOffsetMaxMs)))
    .addOption(new Option('--clock-jump-max-ms <ms>', 'largest clock jump').argParser(int(SIM_BOUNDS.clockJumpMaxMs)))
    .addOption(new Option('--max-events <n>', 'events per run before it counts as runaway').argParser(int(SIM_BOUNDS.maxEvents)))
    .addOption(new Option('--workers <n>', 'soak: worker threads (default: one per core; seeds are independent, results do not change)').argParser(int([1, MAX_WORKERS])))
    .option('--blackout', 'every node works alone until the fault phase ends', false)
    .option('--shrink', 'on failure, search for a smaller failing config', false)
    .allowExcessArguments(false)
    // Every usage error exits 2 (commander's own exit code is 1): parse throws instead of exiting.
    .exitOverride()
    .configureOutput({ outputError: (message, write) => write(`sim: ${message.replace(/^error: /, '').trimEnd()} (sim --help lists the options)\n`) });
  // `bash scripts/run.sh sim -- --seed 42` passes the `--` on: it ends no option list here.
  program.parse(argv[0] === '--' ? argv.slice(1) : argv, { from: 'user' });
  const flags = program.opts<Flags>();
  const base = baseConfig(flags);
  // The options together, checked before anything runs (the rules of simConfig: latency bounds in order, ...).
  try {
    simConfig({ ...base, seed: flags.seed ?? flags.firstSeed, ...(flags.nodes !== undefined ? { nodes: flags.nodes } : {}), ...(flags.mutations !== undefined ? { mutations: flags.mutations } : {}) });
  } catch (err) {
    if (err instanceof FieldmeshError) throw new UsageError(err.message);
    throw err;
  }
  if (flags.seeds !== undefined && flags.firstSeed + flags.seeds - 1 > SIM_BOUNDS.seed[1]) {
    throw new UsageError(`--first-seed ${flags.firstSeed} with --seeds ${flags.seeds} runs past the last seed, ${SIM_BOUNDS.seed[1]}`);
  }

  if (flags.seed !== undefined || flags.seeds === undefined) {
    const { runSimulation } = await import('./simulation.ts');
    const config: Partial<SimConfig> = { ...base, seed: flags.seed ?? 1, ...(flags.nodes !== undefined ? { nodes: flags.nodes } : {}), ...(flags.mutations !== undefined ? { mutations: flags.mutations } : {}) };
    const result = await runSimulation(config);
    console.log(formatResult(result));
    if (result.ok) {
      console.log(`  replay: ${replayCommand(result.config)}`);
      return 0;
    }
    await reportFailure(result, flags);
    return 1;
  }

  const { defaultWorkers, soak } = await import('./soak.ts');
  const started = performance.now();
  const show = progress(flags.seeds);
  let failed = 0;
  const summary = await soak({
    firstSeed: flags.firstSeed,
    seeds: flags.seeds,
    base,
    workers: flags.workers ?? defaultWorkers(),
    ...(flags.nodes !== undefined ? { nodes: flags.nodes } : {}),
    ...(flags.mutations !== undefined ? { mutations: flags.mutations } : {}),
    onResult: (result, done) => {
      if (!result.ok) failed++;
      show(done, failed, started);
    },
  });
  if (summary.seeds < flags.seeds) process.stderr.write('\n');
  console.log(formatSummary(summary));
  const first = summary.failed[0];
  if (first === undefined) return 0;
  await reportFailure(first, flags);
  return 1;
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (err) {
  // --help and --version end parsing with exit code 0; commander has printed the error of any other.
  if (err instanceof CommanderError) process.exitCode = err.exitCode === 0 ? 0 : USAGE;
  else if (err instanceof UsageError) {
    console.error(`sim: ${err.message} (sim --help lists the options)`);
    process.exitCode = USAGE;
  } else throw err;
}
