/**
 * The simulator's command line (`npm run sim -- ...`):
 *
 *   npm run sim -- --seeds 1000              soak: seeds 1..1000, 3..20 nodes each
 *   npm run sim -- --seeds 200 --nodes 12    soak with a fixed team size
 *   npm run sim -- --seed 42 --nodes 7 ...   replay one run exactly (what a failure prints)
 *
 * A soak shows a progress bar on stderr (plain progress lines when stderr is not a terminal) and
 * ends with a summary. On the first failing seed it prints the violation, the events leading to
 * it and the replay command (and, with --shrink, a smaller failing config); the exit code is 1.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { FieldmeshError } from '../core/errors.ts';
import { FAULT_TYPES, replayCommand, VARIANTS, type FaultType, type SimConfig, type Variant } from './config.ts';
import { formatFailure, formatResult, formatSummary } from './report.ts';
import { shrink } from './shrink.ts';
import { runSimulation, type SimResult } from './simulation.ts';
import { defaultWorkers, soak } from './soak.ts';

const int = (value: string): number => {
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw new InvalidArgumentError('not an integer');
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
  workers: number;
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
    .addOption(new Option('--seeds <n>', 'soak: run this many seeds').argParser(int))
    .addOption(new Option('--first-seed <s>', 'soak: first seed').argParser(int).default(1))
    .addOption(new Option('--seed <s>', 'replay one seed (with the other options given)').argParser(int))
    .addOption(new Option('--nodes <m>', 'nodes, HQ included (default: 3..20 per seed in a soak, 6 for one seed)').argParser(int))
    .addOption(new Option('--mutations <k>', 'mutations during the fault phase (default: 10..30 per seed in a soak, 30 for one seed)').argParser(int))
    .addOption(new Option('--faults <list>', `fault types to inject: ${FAULT_TYPES.join(',')} or none (default: all)`).argParser(faultList))
    .addOption(new Option('--variant <v>', 'a deliberately broken variant').choices(VARIANTS))
    .addOption(new Option('--fault-phase-ms <ms>', 'virtual length of the fault phase').argParser(int))
    .addOption(new Option('--settle-limit-ms <ms>', 'virtual time allowed to converge after healing').argParser(int))
    .addOption(new Option('--fault-every-ms <ms>', 'mean virtual time between faults').argParser(int))
    .addOption(new Option('--latency-min-ms <ms>', 'one-way latency, lowest').argParser(int))
    .addOption(new Option('--latency-max-ms <ms>', 'one-way latency, highest').argParser(int))
    .addOption(new Option('--clock-offset-max-ms <ms>', 'largest clock offset at start').argParser(int))
    .addOption(new Option('--clock-jump-max-ms <ms>', 'largest clock jump').argParser(int))
    .addOption(new Option('--max-events <n>', 'events per run before it counts as runaway').argParser(int))
    .addOption(new Option('--workers <n>', 'soak: worker threads (seeds are independent; results do not change)').argParser(int).default(defaultWorkers()))
    .option('--blackout', 'every node works alone until the fault phase ends', false)
    .option('--shrink', 'on failure, search for a smaller failing config', false)
    .allowExcessArguments(false);
  program.parse(argv, { from: 'user' });
  const flags = program.opts<Flags>();
  const base = baseConfig(flags);

  if (flags.seed !== undefined || flags.seeds === undefined) {
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

  const started = performance.now();
  const show = progress(flags.seeds);
  let failed = 0;
  const summary = await soak({
    firstSeed: flags.firstSeed,
    seeds: flags.seeds,
    base,
    workers: flags.workers,
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
  if (!(err instanceof FieldmeshError)) throw err;
  console.error(`sim: ${err.message}`);
  process.exitCode = 2;
}
