/**
 * Convergence under every arrival order (DESIGN.md, testing level 1).
 *
 * A small simulation generates realistic histories: an HQ and three field devices, each with its
 * own local view (the ops it holds), write create/update/delete/resolve ops on a few shared
 * entities across domains with different strategies, always naming the heads of their own view
 * as base. Now and then a device "syncs" (takes in another device's ops, moving its HLC with
 * hlcReceive), HQ writes receipts accepting or rejecting ops it holds, a field device writes a
 * receipt of its own (to be ignored), HQ revokes a device, or a device forks its log. One device's
 * physical clock runs ten minutes ahead, another's thirty seconds behind.
 *
 * Then: every permutation with duplicates of the resulting set materializes to the same state
 * hash, statuses, waiting list and views; so does every device's own view and random subsets
 * (which leave ops waiting); and folding each entity's ops one at a time in a random causal order
 * through applyEntityOp/clockOf gives the materializer's state and view.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { AuthorState } from '../../src/core/author.ts';
import { exclusionOf } from '../../src/core/authority.ts';
import { forkProofOf, verifyForkProof } from '../../src/core/chain.ts';
import { applyEntityOp, clockOf, emptyEntity, type CausalClock } from '../../src/core/entity.ts';
import { hlcReceive } from '../../src/core/hlc.ts';
import { effectiveBase, entityKey, isVoid, materialize, materializeEntity, withBase, type ForkPoint } from '../../src/core/materialize.ts';
import { isEntityOp, type EntityOp, type Op, type OpId, type Verdict } from '../../src/core/op.ts';
import { MERGE_FUNCTIONS, type ResolutionConfig } from '../../src/core/strategies.ts';
import type { Value } from '../../src/core/value.ts';
import { viewOf } from '../../src/core/view.ts';
import { observable, randomCausalOrder, rng, runs, shuffled, T0, TestDevice } from './helpers.ts';

const MAX_DRIFT_MS = 60_000;
const TARGETS: readonly (readonly [string, string])[] = [
  ['note', 'n-1'],
  ['tagged', 't-1'],
  ['srv', 's-1'],
  ['cli', 'k-1'],
  ['case', 'c-1'],
  // Twice as likely: manual conflicts need a device to see concurrent writes before writing again.
  ['case', 'c-1'],
];
const TAGS = ['red', 'green', 'blue', 'amber'];

interface SimDevice {
  readonly dev: TestDevice;
  /** The ops this device holds: its local view. */
  readonly known: Map<OpId, Op>;
  /** How far this device's physical clock is off. */
  readonly skewMs: number;
  /** Author state before each of its writes, to fork from. */
  readonly history: AuthorState[];
}

type Command =
  | { kind: 'write'; device: number; target: number; action: number; field: number; value: number; jitter: number }
  | { kind: 'sync'; from: number; to: number }
  | { kind: 'receipt'; picks: [number, boolean][] }
  | { kind: 'fakeReceipt'; device: number; pick: number }
  | { kind: 'revoke'; device: number; back: number }
  | { kind: 'fork'; device: number; back: number };

const device = fc.nat(3);
const fieldDevice = fc.integer({ min: 1, max: 3 });
const commandArb: fc.Arbitrary<Command> = fc.oneof(
  { weight: 12, arbitrary: fc.record({ kind: fc.constant('write' as const), device, target: fc.nat(TARGETS.length - 1), action: fc.nat(99), field: fc.nat(4), value: fc.nat(5), jitter: fc.integer({ min: -3000, max: 3000 }) }) },
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('sync' as const), from: device, to: device }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('receipt' as const), picks: fc.array(fc.tuple(fc.nat(), fc.boolean()), { minLength: 1, maxLength: 4 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('fakeReceipt' as const), device: fieldDevice, pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('revoke' as const), device: fieldDevice, back: fc.nat(3) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('fork' as const), device: fieldDevice, back: fc.nat(2) }) },
);

class Simulation {
  readonly devices: SimDevice[];
  readonly config: ResolutionConfig;
  private time = T0;

  constructor() {
    const make = (name: string, skewMs: number): SimDevice => ({ dev: new TestDevice(name, { user: name }), known: new Map(), skewMs, history: [] });
    this.devices = [make('conv-hq', 0), make('conv-a', 0), make('conv-b', -30_000), make('conv-c', 600_000)];
    this.config = {
      hqDevice: this.devices[0]!.dev.id,
      domains: {
        note: 'merge',
        tagged: { strategy: 'merge', merge: { tags: MERGE_FUNCTIONS.union } },
        srv: 'server-wins',
        cli: 'client-wins',
        case: 'manual',
      },
    };
  }

  get hq(): SimDevice {
    return this.devices[0]!;
  }

  /** Every op any device wrote (fork branches included): the set every node converges on. */
  allOps(): Op[] {
    return this.devices.flatMap((d) => d.dev.written);
  }

  run(command: Command): void {
    this.time += 1000;
    switch (command.kind) {
      case 'write':
        return this.write(command);
      case 'sync':
        return this.sync(this.devices[command.from]!, this.devices[command.to]!);
      case 'receipt': {
        const candidates = this.foreignEntityOps(this.hq);
        if (candidates.length === 0) return;
        const verdicts = new Map<OpId, Verdict>();
        for (const [n, accepted] of command.picks) {
          const op = candidates[n % candidates.length]!;
          verdicts.set(op.id, { op: op.id, accepted, reason: accepted ? '' : n % 2 === 0 ? 'INVALID' : 'DUPLICATE', detail: '' });
        }
        return this.record(this.hq, (now) => this.hq.dev.receipt(now, [...verdicts.values()]));
      }
      case 'fakeReceipt': {
        const faker = this.devices[command.device]!;
        const candidates = this.foreignEntityOps(faker);
        if (candidates.length === 0) return;
        const op = candidates[command.pick % candidates.length]!;
        return this.record(faker, (now) => faker.dev.receipt(now, [{ op: op.id, accepted: false, reason: 'INVALID', detail: 'not HQ' }]));
      }
      case 'revoke': {
        const target = this.devices[command.device]!.dev;
        const afterSeq = Math.max(0, target.state.tip.seq - command.back);
        return this.record(this.hq, (now) => this.hq.dev.revoke(now, target.id, afterSeq));
      }
      case 'fork': {
        const forker = this.devices[command.device]!;
        if (forker.history.length === 0) return;
        forker.dev.state = forker.history[Math.max(0, forker.history.length - 1 - command.back)]!;
        return;
      }
    }
  }

  private physical(d: SimDevice, jitter = 0): number {
    return this.time + d.skewMs + jitter;
  }

  private foreignEntityOps(d: SimDevice): EntityOp[] {
    return [...d.known.values()].filter((o): o is EntityOp => isEntityOp(o) && o.device !== d.dev.id).sort((a, b) => (a.id < b.id ? -1 : 1));
  }

  private record(d: SimDevice, write: (physicalMs: number) => Op, jitter = 0): void {
    d.history.push(d.dev.state);
    const op = write(this.physical(d, jitter));
    d.known.set(op.id, op);
  }

  /** `to` takes in everything `from` holds, moving its HLC past every new op it receives. */
  private sync(from: SimDevice, to: SimDevice): void {
    for (const op of from.known.values()) {
      if (to.known.has(op.id)) continue;
      to.known.set(op.id, op);
      const received = hlcReceive(to.dev.state.clock, op.hlc, this.physical(to), MAX_DRIFT_MS);
      to.dev.state = { ...to.dev.state, clock: received.clock };
    }
  }

  private write(c: Extract<Command, { kind: 'write' }>): void {
    const d = this.devices[c.device]!;
    const [domain, entity] = TARGETS[c.target]!;
    const local = materialize(d.known.values(), this.config).entities.get(entityKey(domain, entity))?.view;
    const base = local?.heads ?? [];
    const exists = local?.exists ?? false;
    const conflict = local?.conflict ?? null;
    const dev = d.dev;
    if (conflict !== null && c.action < 60) {
      // Resolve: pick one candidate per conflicting field, or decide the entity is gone.
      const keep = c.value % 4 !== 0;
      const fields: Record<string, Value> = {};
      if (keep) {
        for (const f of conflict.fields) {
          if (f.field === '$exists') continue;
          const chosen = f.candidates[c.value % f.candidates.length]!;
          if (!chosen.deleted) fields[f.field] = chosen.value;
        }
      }
      return this.record(d, (now) => dev.resolve(now, domain, entity, { conflict: conflict.id, exists: keep, fields, base }), c.jitter);
    }
    const fields = this.fieldsFor(c);
    if (!exists) {
      if (c.action < 70) return this.record(d, (now) => dev.create(now, domain, entity, fields, base), c.jitter);
      if (c.action < 90) return this.record(d, (now) => dev.update(now, domain, entity, fields, base), c.jitter);
      return this.record(d, (now) => dev.remove(now, domain, entity, base), c.jitter);
    }
    if (c.action < 65) return this.record(d, (now) => dev.update(now, domain, entity, fields, base), c.jitter);
    if (c.action < 85) return this.record(d, (now) => dev.remove(now, domain, entity, base), c.jitter);
    return this.record(d, (now) => dev.create(now, domain, entity, fields, base), c.jitter);
  }

  private fieldsFor(c: Extract<Command, { kind: 'write' }>): Record<string, Value> {
    const names = [['a'], ['b'], ['tags'], ['a', 'tags'], ['a', 'b']][c.field]!;
    const out: Record<string, Value> = {};
    for (const name of names) out[name] = name === 'tags' ? TAGS.slice(c.value % 3, (c.value % 3) + 1 + (c.value % 2)) : `${name}${c.value % 3}`;
    return out;
  }
}

/** Fork points as a node learns them: from proofs built of two ops at one (device, seq). */
function forkPoints(ops: readonly Op[]): ForkPoint[] {
  const bySlot = new Map<string, Op>();
  const points = new Map<string, number>();
  for (const op of ops) {
    const slot = `${op.device}#${op.seq}`;
    const other = bySlot.get(slot);
    if (other === undefined) {
      bySlot.set(slot, op);
      continue;
    }
    const proof = forkProofOf(other, op);
    if (proof === null) continue;
    const [a] = verifyForkProof(proof);
    points.set(a.device, Math.min(points.get(a.device) ?? Number.POSITIVE_INFINITY, a.seq));
  }
  return [...points].map(([dev, seq]) => ({ device: dev, seq }));
}

/** `ops` in a random order, with some of them delivered more than once. */
function arrival<T>(ops: readonly T[], rand: () => number): T[] {
  const dupes = ops.filter(() => rand() < 0.2);
  return shuffled([...ops, ...dupes], rand);
}

const history = fc.record({ commands: fc.array(commandArb, { minLength: 15, maxLength: 60, size: 'max' }), seed: fc.nat() });

function simulate(commands: readonly Command[]): Simulation {
  const sim = new Simulation();
  for (const command of commands) sim.run(command);
  return sim;
}

describe('convergence', () => {
  it('every arrival order (permutations and duplicates) of a multi-device history gives the same state and statuses', () => {
    fc.assert(
      fc.property(history, ({ commands, seed }) => {
        const sim = simulate(commands);
        const rand = rng(seed);
        const ops = sim.allOps();
        const forks = forkPoints(ops);
        const reference = observable(materialize(ops, sim.config, forks));
        // Honest histories leave nothing waiting; a forked device's branches cannot both chain
        // through its previous op (BAD_BASE), and what builds on them may wait.
        if (forks.length === 0) expect(reference.waiting).toEqual([]);
        for (let i = 0; i < 4; i++) {
          expect(observable(materialize(arrival(ops, rand), sim.config, arrival(forks, rand)))).toEqual(reference);
        }
        // Each device's own view (with the forks it can prove), and random subsets with ops left
        // waiting, are order-free too.
        for (const d of sim.devices) {
          const local = [...d.known.values()];
          const localForks = forkPoints(local);
          expect(observable(materialize(arrival(local, rand), sim.config, localForks))).toEqual(observable(materialize(local, sim.config, localForks)));
        }
        const subset = ops.filter(() => rand() < 0.6);
        expect(observable(materialize(arrival(subset, rand), sim.config, forks))).toEqual(observable(materialize(subset, sim.config, forks)));
      }),
      { numRuns: runs(120) },
    );
  });

  it('folding each entity\'s ops one at a time in a random causal order gives the materializer\'s state and view', () => {
    fc.assert(
      fc.property(history, ({ commands, seed }) => {
        const sim = simulate(commands);
        const rand = rng(seed);
        const ops = sim.allOps();
        const whole = materialize(ops, sim.config, forkPoints(ops));
        for (const [key, { state, view }] of whole.entities) {
          const group = ops.filter((o): o is EntityOp => isEntityOp(o) && entityKey(o.domain, o.entity) === key);
          const { domain, entity } = group[0]!;
          expect(materializeEntity(domain, entity, shuffled(group, rand), whole.authority).state).toEqual(state);
          const clocks = new Map<OpId, CausalClock>();
          let folded = emptyEntity(domain, entity);
          // Fold the ops the materializer applied (a forked branch may hold BAD_BASE ops).
          const applied = materializeEntity(domain, entity, group, whole.authority).clocks;
          // Each applied with its effective base: void ops (past a fork point) stand for their own base.
          const voidOp = (id: OpId) => group.find((o) => o.id === id && isVoid(o, whole.authority));
          const effective = group.filter((o) => applied.has(o.id)).map((o) => withBase(o, effectiveBase(o, voidOp).base));
          for (const op of randomCausalOrder(effective, rand)) {
            const clock = clockOf(op, op.base.map((b) => clocks.get(b)!));
            clocks.set(op.id, clock);
            folded = applyEntityOp(folded, op, clock, exclusionOf(op, whole.authority) === null);
          }
          expect(viewOf(folded, sim.config)).toEqual(view);
          expect(folded).toEqual(state);
        }
      }),
      { numRuns: runs(120) },
    );
  });

  it('the generated histories really are concurrent, conflicted, rejected and forked', () => {
    // Guards the generator: a property over trivial histories would prove little.
    const seen = { concurrentHeads: 0, conflicts: 0, rejected: 0, forked: 0, deleted: 0, resolved: 0 };
    fc.assert(
      fc.property(history, ({ commands }) => {
        const sim = simulate(commands);
        const ops = sim.allOps();
        const result = materialize(ops, sim.config, forkPoints(ops));
        for (const { view } of result.entities.values()) {
          if (view.heads.length > 1) seen.concurrentHeads++;
          if (view.conflict !== null) seen.conflicts++;
        }
        for (const s of result.statuses.values()) {
          if (s.reason?.startsWith('REJECTED:')) seen.rejected++;
          if (s.reason === 'DEVICE_FORKED') seen.forked++;
        }
        seen.deleted += ops.filter((o) => o.type === 'delete').length;
        seen.resolved += ops.filter((o) => o.type === 'resolve').length;
      }),
      { numRuns: 80, seed: 42 },
    );
    for (const count of Object.values(seen)) expect(count).toBeGreaterThan(0);
  });

  // Causal clocks assume a device's ops on one entity chain through `base` (true for every honest,
  // unforked log). A validly signed op whose base leaves out its own device's earlier op would make
  // the state depend on arrival order, so materialize refuses it (BAD_BASE) in every order.
  it('an op whose base omits its own device\'s earlier op is refused (BAD_BASE), whatever the arrival order', () => {
    const a = new TestDevice('conv-known-bug');
    const hq = new TestDevice('conv-hq');
    const r = a.create(T0, 'case', 'x', { f: 'r' });
    const p = a.update(T0 + 1, 'case', 'x', { f: 'p' }, [r.id]);
    const q = a.update(T0 + 2, 'case', 'x', { f: 'q' }, [r.id]); // should name p: its author wrote p
    const config: ResolutionConfig = { hqDevice: hq.id, domains: { case: 'manual' } };
    const first = materialize([r, q, p], config);
    expect(observable(first)).toEqual(observable(materialize([r, p, q], config)));
    expect(first.statuses.get(q.id)).toMatchObject({ status: 'failed', reason: 'BAD_BASE' });
  });
});
