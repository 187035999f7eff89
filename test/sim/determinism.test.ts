/**
 * A run is a function of its config: the same config replays the same events to the same result,
 * a different seed gives a different run, and the printed replay command names the config.
 */
import { describe, expect, it } from 'vitest';
import { InvalidInputError } from '../../src/core/errors.ts';
import { DEFAULT_SIM_CONFIG, replayCommand, simConfig } from '../../src/sim/config.ts';
import { runSimulation } from '../../src/sim/simulation.ts';
import { soak } from '../../src/sim/soak.ts';

describe('determinism', () => {
  it('replays a seed exactly: same events, same bytes, same state', async () => {
    const config = { seed: 7, nodes: 8, mutations: 25 };
    const [a, b] = [await runSimulation(config), await runSimulation(config)];
    expect(a.ok).toBe(true);
    expect(b.events).toBe(a.events);
    expect(b.stats).toEqual(a.stats);
    expect(b.fingerprint).toBe(a.fingerprint);
    const other = await runSimulation({ ...config, seed: 8 });
    expect(other.fingerprint).not.toBe(a.fingerprint);
  });

  it('replays a failing seed with the same first violation at the same event', async () => {
    const config = { seed: 3, nodes: 3, mutations: 3, faults: ['partition', 'uplink', 'crash', 'duplicate'] as const, variant: 'ack-before-flush' as const };
    const [a, b] = [await runSimulation({ ...config, faults: [...config.faults] }), await runSimulation({ ...config, faults: [...config.faults] })];
    expect(a.ok).toBe(false);
    expect(b.violations[0]).toEqual(a.violations[0]);
    expect(b.fingerprint).toBe(a.fingerprint);
  });
  it('gives the same results whether seeds run in one thread or spread over worker threads', async () => {
    const fingerprints = async (workers: number) => {
      const out = new Map<number, string>();
      await soak({ firstSeed: 300, seeds: 4, workers, onResult: (r) => out.set(r.config.seed, r.fingerprint) });
      return [...out].sort(([a], [b]) => a - b);
    };
    expect(await fingerprints(2)).toEqual(await fingerprints(1));
  });
});

describe('config', () => {
  it('fills defaults and prints only what differs in the replay command', () => {
    expect(simConfig({ seed: 5 })).toEqual({ ...DEFAULT_SIM_CONFIG, seed: 5 });
    expect(replayCommand(simConfig({ seed: 5 }))).toBe('bash scripts/run.sh sim --seed 5');
    expect(replayCommand(simConfig({ seed: 5, nodes: 9, faults: ['crash', 'reset'], variant: 'arrival-order-state' }))).toBe('bash scripts/run.sh sim --seed 5 --nodes 9 --faults crash,reset --variant arrival-order-state');
    expect(replayCommand(simConfig({ seed: 5, faults: [] }))).toBe('bash scripts/run.sh sim --seed 5 --faults none');
  });

  it('refuses options out of bounds, naming the option', () => {
    for (const [options, field] of [
      [{ nodes: 2 }, 'nodes'],
      [{ nodes: 65 }, 'nodes'],
      [{ seed: -1 }, 'seed'],
      [{ mutations: 1.5 }, 'mutations'],
      [{ latencyMinMs: 50, latencyMaxMs: 10 }, 'latencyMaxMs'],
    ] as const) {
      let err: unknown;
      try {
        simConfig(options);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(InvalidInputError);
      expect((err as InvalidInputError).code).toBe('BAD_SIM_CONFIG');
      expect((err as InvalidInputError).details).toMatchObject({ field });
    }
  });
});
