/**
 * The simulator's options: one typed config with a default and bounds for every knob. A run is a
 * pure function of its config (the seed included), so a config is also a replay recipe.
 */
import { InvalidInputError } from '../core/errors.ts';

/** Every fault the simulator can inject (docs/testing.md maps each to what a real network or device does). */
export const FAULT_TYPES = ['reset', 'delay', 'partition', 'uplink', 'crash', 'clock', 'duplicate', 'rollback'] as const;
export type FaultType = (typeof FAULT_TYPES)[number];
/** Faults of a default run: every type. */
export const DEFAULT_FAULTS: readonly FaultType[] = FAULT_TYPES;

/** Deliberately broken variants (sim-only) that prove the checkers can fail. */
export const VARIANTS = ['correct', 'arrival-order-state', 'ack-before-flush'] as const;
export type Variant = (typeof VARIANTS)[number];

export interface SimConfig {
  /** Seed of the run's one PRNG (32-bit unsigned). */
  readonly seed: number;
  /** Nodes, HQ included: one HQ, at least one gateway, the rest field devices. @default 6 */
  readonly nodes: number;
  /** Mutations the field devices and gateways make during the fault phase. @default 30 */
  readonly mutations: number;
  /** Virtual length of the fault phase, in ms; then the network heals and the run settles. @default 60000 */
  readonly faultPhaseMs: number;
  /** Virtual time allowed to converge after healing before the run counts as not converged. @default 600000 */
  readonly settleLimitMs: number;
  /** Fault types that may be injected. @default every type */
  readonly faults: readonly FaultType[];
  /** Mean virtual ms between two injected faults (exponential gaps). @default 3000 */
  readonly faultEveryMs: number;
  /** One-way frame latency bounds, in ms. @default 1 / 40 */
  readonly latencyMinMs: number;
  readonly latencyMaxMs: number;
  /** Largest per-node clock offset at start and largest clock jump, in ms. @default 120000 / 600000 */
  readonly clockOffsetMaxMs: number;
  readonly clockJumpMaxMs: number;
  /** Events one run may process before it is stopped as runaway. @default 200000 */
  readonly maxEvents: number;
  /**
   * Every node works alone through the fault phase (no local links, no uplinks), so that healing
   * starts a full team sync: what the benchmark times. @default false
   */
  readonly blackout: boolean;
  readonly variant: Variant;
}

export const DEFAULT_SIM_CONFIG: SimConfig = {
  seed: 1,
  nodes: 6,
  mutations: 30,
  faultPhaseMs: 60_000,
  settleLimitMs: 600_000,
  faults: DEFAULT_FAULTS,
  faultEveryMs: 3000,
  latencyMinMs: 1,
  latencyMaxMs: 40,
  clockOffsetMaxMs: 120_000,
  clockJumpMaxMs: 600_000,
  maxEvents: 200_000,
  blackout: false,
  variant: 'correct',
};

type NumericKey = { [K in keyof SimConfig]: SimConfig[K] extends number ? K : never }[keyof SimConfig];

/** Inclusive bounds of every numeric option. */
export const SIM_BOUNDS: Readonly<Record<NumericKey, readonly [number, number]>> = {
  seed: [0, 2 ** 32 - 1],
  nodes: [3, 64],
  mutations: [0, 2000],
  faultPhaseMs: [0, 24 * 3600 * 1000],
  settleLimitMs: [1000, 24 * 3600 * 1000],
  faultEveryMs: [10, 3600 * 1000],
  latencyMinMs: [0, 60_000],
  latencyMaxMs: [0, 60_000],
  // Up to 50 years: a dead clock battery resets a device to the 1970s (physical time stays positive).
  clockOffsetMaxMs: [0, 50 * 365 * 24 * 3600 * 1000],
  clockJumpMaxMs: [0, 50 * 365 * 24 * 3600 * 1000],
  maxEvents: [100, 50_000_000],
};

/** Defaults filled in and every bound checked (InvalidInputError BAD_SIM_CONFIG naming the option). */
export function simConfig(options: Partial<SimConfig> = {}): SimConfig {
  const config: SimConfig = { ...DEFAULT_SIM_CONFIG, ...options };
  for (const [key, [min, max]] of Object.entries(SIM_BOUNDS) as [NumericKey, readonly [number, number]][]) {
    const value = config[key];
    if (!Number.isSafeInteger(value) || value < min || value > max) {
      throw new InvalidInputError('BAD_SIM_CONFIG', `sim option ${key} must be an integer in [${min}, ${max}], got ${value}`, { field: key, min, max, found: value });
    }
  }
  if (config.latencyMaxMs < config.latencyMinMs) throw new InvalidInputError('BAD_SIM_CONFIG', 'latencyMaxMs must be at least latencyMinMs', { field: 'latencyMaxMs' });
  for (const fault of config.faults) {
    if (!(FAULT_TYPES as readonly string[]).includes(fault)) throw new InvalidInputError('BAD_SIM_CONFIG', `unknown fault type ${fault}; known: ${FAULT_TYPES.join(', ')}`, { field: 'faults', found: fault });
  }
  if (!(VARIANTS as readonly string[]).includes(config.variant)) throw new InvalidInputError('BAD_SIM_CONFIG', `unknown variant ${config.variant}`, { field: 'variant', found: config.variant });
  return config;
}

/**
 * The one command that replays a run exactly: every option that differs from the default.
 * (The CLI reads the same flags; `--seed` alone replays a run of the default config.)
 */
export function replayCommand(config: SimConfig): string {
  const flags = [`--seed ${config.seed}`];
  const d = DEFAULT_SIM_CONFIG;
  const numeric: [NumericKey, string][] = [
    ['nodes', 'nodes'],
    ['mutations', 'mutations'],
    ['faultPhaseMs', 'fault-phase-ms'],
    ['settleLimitMs', 'settle-limit-ms'],
    ['faultEveryMs', 'fault-every-ms'],
    ['latencyMinMs', 'latency-min-ms'],
    ['latencyMaxMs', 'latency-max-ms'],
    ['clockOffsetMaxMs', 'clock-offset-max-ms'],
    ['clockJumpMaxMs', 'clock-jump-max-ms'],
    ['maxEvents', 'max-events'],
  ];
  for (const [key, flag] of numeric) if (config[key] !== d[key]) flags.push(`--${flag} ${config[key]}`);
  if (config.faults.join(',') !== d.faults.join(',')) flags.push(`--faults ${config.faults.length === 0 ? 'none' : config.faults.join(',')}`);
  if (config.blackout) flags.push('--blackout');
  if (config.variant !== d.variant) flags.push(`--variant ${config.variant}`);
  // run.sh runs it with a Node that runs TypeScript (installing one when the system's cannot).
  return `bash scripts/run.sh sim ${flags.join(' ')}`;
}
