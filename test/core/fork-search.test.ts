/**
 * The fork search (src/core/sync/fork-search.ts) on its own: from any seq where two branches of a
 * log differ, it finds the first seq where they part, in about log2(seq) comparisons, and it
 * refuses answers that prove nothing.
 */
import { describe, expect, it } from 'vitest';
import { decodeOp } from '../../src/core/op.ts';
import { ForkSearch, type SearchStep } from '../../src/core/sync/fork-search.ts';
import { TestDevice, T0 } from './helpers.ts';

/** Two branches of one device's log: the same first `common` ops, then `length − common` different ones each. */
function branches(name: string, common: number, length: number): { device: string; ours: Uint8Array[]; theirs: Uint8Array[] } {
  const device = new TestDevice(name);
  const write = (n: number, label: string) => Array.from({ length: n }, (_, i) => device.create(T0 + i, 'evidence', `${label}-${i}`, { i }).bytes);
  const shared = write(common, 'shared');
  const backup = device.state;
  const ours = write(length - common, 'ours');
  device.state = backup;
  const theirs = write(length - common, 'theirs');
  return { device: device.id, ours: [...shared, ...ours], theirs: [...shared, ...theirs] };
}

/** Runs a search from `seq` to its end; returns the last step and the seqs compared. */
function run(search: ForkSearch, ours: Uint8Array[], theirs: (Uint8Array | null)[]): { step: SearchStep; compared: number[] } {
  const compared: number[] = [];
  let step = search.first();
  while (step.kind === 'compare') {
    compared.push(step.seq);
    step = search.step(theirs[step.seq - 1] ?? null, ours[step.seq - 1] ?? null);
  }
  return { step, compared };
}

describe('ForkSearch', () => {
  it('finds the first differing seq from the tips, wherever the branches part', () => {
    const length = 20;
    for (let common = 0; common < length; common++) {
      const log = branches(`search-${common}`, common, length);
      const search = new ForkSearch({ device: log.device, seq: length, expect: decodeOp(log.theirs[length - 1]!).id, peerHolds: true, ifSame: null }, 'team-1');
      const { step, compared } = run(search, log.ours, log.theirs);
      expect(step.kind, `parted after ${common}`).toBe('proof');
      if (step.kind !== 'proof') continue;
      expect(step.proof.seq).toBe(common + 1);
      expect([...step.proof.ops].map((b) => decodeOp(b).id).sort()).toEqual([decodeOp(log.ours[common]!).id, decodeOp(log.theirs[common]!).id].sort());
      expect(compared.length).toBeLessThanOrEqual(Math.ceil(Math.log2(length)) + 1);
    }
  });

  it('a check at a seq where both hold the same op passes; where the peer holds none and need not, too', () => {
    const log = branches('search-check', 5, 8);
    const same = new ForkSearch({ device: log.device, seq: 4, expect: null, peerHolds: false, ifSame: null }, 'team-1');
    expect(run(same, log.ours, log.theirs).step).toEqual({ kind: 'same' });
    const none = new ForkSearch({ device: log.device, seq: 4, expect: null, peerHolds: false, ifSame: null }, 'team-1');
    expect(run(none, log.ours, []).step).toEqual({ kind: 'same' });
  });

  it('refuses answers that prove nothing', () => {
    const log = branches('search-bad', 2, 4);
    const start = { device: log.device, seq: 4, expect: decodeOp(log.theirs[3]!).id, peerHolds: true, ifSame: null };
    const failure = (theirs: (Uint8Array | null)[]) => {
      const { step } = run(new ForkSearch(start, 'team-1'), log.ours, theirs);
      return step.kind === 'fail' ? step.error.code : step.kind;
    };
    expect(failure([])).toBe('NO_SUCH_OP');
    // Our own op back, another seq's op, an op of another team: not the op the peer named.
    expect(failure(log.ours)).toBe('BAD_ANSWER');
    expect(failure([null, null, null, log.theirs[2]!])).toBe('BAD_ANSWER');
    const stranger = new TestDevice('search-bad', { team: 'team-2' });
    const foreign = Array.from({ length: 4 }, (_, i) => stranger.create(T0 + i, 'evidence', `x-${i}`, { i }).bytes);
    expect(failure(foreign)).toBe('BAD_ANSWER');
    // Garbage: its decode error.
    expect(failure([null, null, null, Uint8Array.of(1, 2, 3)])).toBe('DECODE');
    // A peer that named an op but holds ours there after all: the caller's error.
    const ifSame = decodeOp(log.ours[1]!).id;
    const claimed = new ForkSearch({ device: log.device, seq: 2, expect: ifSame, peerHolds: true, ifSame: new Error('x') as never }, 'team-1');
    expect(run(claimed, log.ours, log.theirs).step.kind).toBe('fail');
  });
});
