import { encode } from 'cborg';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { authorOp, type Author, type AuthorState } from '../../src/core/author.ts';
import { checkExtends, EMPTY_TIP, forkProofOf, verifyForkProof, verifyRange, type ForkProof, type LogTip } from '../../src/core/chain.ts';
import { FieldmeshError, InvalidInputError, RuleViolationError } from '../../src/core/errors.ts';
import type { DeviceSigner } from '../../src/core/keys.ts';
import { decodeOp, type Op } from '../../src/core/op.ts';
import { envelopeParts, expectCoreError, flipBit, runs, signerOf, T0, TestDevice, thrownBy } from './helpers.ts';

/** A device that writes `n` updates to one entity, one millisecond apart. */
function logOf(name: string, n: number): TestDevice {
  const device = new TestDevice(name);
  for (let i = 0; i < n; i++) device.update(T0 + i, 'log', 'entry', { i }, []);
  return device;
}

const tipOf = (op: Op): LogTip => ({ seq: op.seq, id: op.id });
const bytesOf = (ops: readonly Op[]) => ops.map((o) => o.bytes);

const alice = logOf('chain-alice', 6);
const bob = logOf('chain-bob', 3);
const [a1, a2, a3, a4, a5, a6] = alice.written as [Op, Op, Op, Op, Op, Op];

describe('checkExtends', () => {
  it('accepts the next op of the log', () => {
    expect(() => checkExtends(EMPTY_TIP, a1)).not.toThrow();
    expect(() => checkExtends(tipOf(a1), a2)).not.toThrow();
  });

  it('refuses a gap in seq (SEQ_GAP, with what was expected and found)', () => {
    expectCoreError(() => checkExtends(EMPTY_TIP, a2), RuleViolationError, 'SEQ_GAP', { device: alice.id, expected: 1, found: 2 });
    expectCoreError(() => checkExtends(tipOf(a1), a3), RuleViolationError, 'SEQ_GAP', { expected: 2, found: 3 });
    // Going back is a gap too.
    expectCoreError(() => checkExtends(tipOf(a3), a3), RuleViolationError, 'SEQ_GAP', { expected: 4, found: 3 });
  });

  it('refuses a broken prev (PREV_MISMATCH)', () => {
    const wrongTip = { seq: 1, id: bob.written[0]!.id };
    expectCoreError(() => checkExtends(wrongTip, a2), RuleViolationError, 'PREV_MISMATCH', { device: alice.id, seq: 2, expected: wrongTip.id, found: a1.id });
  });
});

describe('verifyRange', () => {
  it('returns the decoded ops of a valid range, from the start or from a tip', () => {
    expect(verifyRange(EMPTY_TIP, bytesOf(alice.written))).toEqual(alice.written);
    expect(verifyRange(tipOf(a3), bytesOf([a4, a5, a6]))).toEqual([a4, a5, a6]);
    expect(verifyRange(tipOf(a6), [])).toEqual([]);
  });

  it('refuses a range mixing devices (MIXED_DEVICES)', () => {
    const b2 = bob.written[1]!;
    expectCoreError(() => verifyRange(tipOf(a1), bytesOf([a2, b2])), RuleViolationError, 'MIXED_DEVICES', { expected: alice.id, found: bob.id });
  });

  it('refuses gaps, repeats and reordering inside a range (SEQ_GAP)', () => {
    expectCoreError(() => verifyRange(EMPTY_TIP, bytesOf([a1, a2, a4])), RuleViolationError, 'SEQ_GAP', { expected: 3, found: 4 });
    expectCoreError(() => verifyRange(EMPTY_TIP, bytesOf([a1, a2, a2])), RuleViolationError, 'SEQ_GAP', { expected: 3, found: 2 });
    expectCoreError(() => verifyRange(EMPTY_TIP, bytesOf([a2, a1])), RuleViolationError, 'SEQ_GAP', { expected: 1, found: 2 });
    expectCoreError(() => verifyRange(tipOf(a2), bytesOf([a4, a5])), RuleViolationError, 'SEQ_GAP', { expected: 3, found: 4 });
  });

  it('refuses a range that does not chain to the tip (PREV_MISMATCH)', () => {
    expectCoreError(() => verifyRange({ seq: 2, id: a1.id }, bytesOf([a3])), RuleViolationError, 'PREV_MISMATCH', { expected: a1.id, found: a2.id });
  });

  it('refuses a range whose last signature is bad (BAD_SIGNATURE), and bad bytes anywhere', () => {
    const { body } = envelopeParts(a3.bytes);
    const forged = new Uint8Array(encode([body, new Uint8Array(64)]));
    expectCoreError(() => verifyRange(EMPTY_TIP, [a1.bytes, a2.bytes, forged]), RuleViolationError, 'BAD_SIGNATURE', { device: alice.id, seq: 3 });
    expectCoreError(() => verifyRange(EMPTY_TIP, [a1.bytes, a2.bytes.subarray(0, 40), a3.bytes]), InvalidInputError, 'DECODE');
    expectCoreError(() => verifyRange(EMPTY_TIP, bytesOf([a1, a2, a3]), a2.bytes.length - 1), InvalidInputError, 'TOO_LARGE');
  });

  it('checks every bit of a small range: any single flip fails', () => {
    const range = [a1, a2, a3, a4];
    for (let i = 0; i < range.length; i++) {
      for (let bit = 0; bit < range[i]!.bytes.length * 8; bit++) {
        const encoded = bytesOf(range);
        encoded[i] = flipBit(encoded[i]!, bit);
        expect(thrownBy(() => verifyRange(EMPTY_TIP, encoded))).toBeInstanceOf(FieldmeshError);
      }
    }
  });
});

describe('verifyRange over 1000 ops', () => {
  const N = 1000;
  const big = logOf('chain-thousand', N);
  const encoded = bytesOf(big.written);

  /** The same log, but with every signature except the last one replaced by zeros. */
  const lyingLog = (() => {
    const real = signerOf('chain-thousand');
    let lie = true;
    const signer: DeviceSigner = { device: real.device, publicKey: real.publicKey, sign: (m) => (lie ? new Uint8Array(64) : real.sign(m)) };
    const author: Author = { signer, team: 'team-1', user: 'user-chain-thousand' };
    let state: AuthorState = { tip: EMPTY_TIP, clock: { wallMs: 0, counter: 0 } };
    const ops: Op[] = [];
    for (let i = 0; i < N; i++) {
      lie = i < N - 1;
      const written = authorOp(author, state, T0 + i, { type: 'update', domain: 'log', entity: 'entry', base: [], fields: { i } });
      state = written.state;
      ops.push(written.op);
    }
    return ops;
  })();

  it('verifies a valid 1000-op range', () => {
    const ops = verifyRange(EMPTY_TIP, encoded);
    expect(ops.length).toBe(N);
    expect(ops[N - 1]!.id).toBe(big.written[N - 1]!.id);
  });

  it('checks one signature only: the last one, which commits to every earlier op through the hashes', () => {
    expectCoreError(() => decodeOp(lyingLog[0]!.bytes), RuleViolationError, 'BAD_SIGNATURE');
    expect(verifyRange(EMPTY_TIP, bytesOf(lyingLog)).length).toBe(N);
    // Cut the honest last op off and the range no longer verifies.
    expectCoreError(() => verifyRange(EMPTY_TIP, bytesOf(lyingLog.slice(0, -1))), RuleViolationError, 'BAD_SIGNATURE', { seq: N - 1 });
  });

  it('fails on a flip inside an earlier op\'s signature (the next op\'s prev no longer matches)', () => {
    for (const i of [0, 1, 499, N - 2]) {
      const tampered = [...encoded];
      const sigBit = (tampered[i]!.length - 64) * 8 + 17;
      tampered[i] = flipBit(tampered[i]!, sigBit);
      expectCoreError(() => verifyRange(EMPTY_TIP, tampered), RuleViolationError, 'PREV_MISMATCH', { seq: i + 2 });
    }
    const tampered = [...encoded];
    tampered[N - 1] = flipBit(tampered[N - 1]!, tampered[N - 1]!.length * 8 - 1);
    expectCoreError(() => verifyRange(EMPTY_TIP, tampered), RuleViolationError, 'BAD_SIGNATURE', { seq: N });
  });

  it('fails on any single-bit flip anywhere in any op of the range', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: N - 1 }), fc.nat(), (index, bitSeed) => {
        const tampered = [...encoded];
        tampered[index] = flipBit(tampered[index]!, bitSeed % (tampered[index]!.length * 8));
        expect(thrownBy(() => verifyRange(EMPTY_TIP, tampered))).toBeInstanceOf(FieldmeshError);
      }),
      { numRuns: runs(200) },
    );
  });
});

describe('fork proofs', () => {
  /** A device that writes seq 1..3, then, from a saved state, a different seq 3. */
  const forker = new TestDevice('chain-forker');
  forker.create(T0, 'case', 'c', { v: 1 });
  forker.update(T0 + 1, 'case', 'c', { v: 2 }, []);
  const saved = forker.state;
  const branchA = forker.update(T0 + 2, 'case', 'c', { v: 'a' }, []);
  forker.state = saved;
  const branchB = forker.update(T0 + 3, 'case', 'c', { v: 'b' }, []);
  const [first, second] = branchA.id < branchB.id ? [branchA, branchB] : [branchB, branchA];
  const proof = forkProofOf(branchA, branchB)!;

  it('each branch verifies on its own: only a proof shows the fork', () => {
    const tip = tipOf(forker.written[1]!);
    expect(verifyRange(tip, [branchA.bytes])).toEqual([branchA]);
    expect(verifyRange(tip, [branchB.bytes])).toEqual([branchB]);
  });

  it('are built from two different ops of one device and seq, ordered by op id', () => {
    expect(proof).toEqual({ device: forker.id, seq: 3, ops: [first.bytes, second.bytes] });
    expect(forkProofOf(branchB, branchA)).toEqual(proof);
    expect(verifyForkProof(proof)).toEqual([first, second]);
  });

  it('are not built from ops that prove nothing', () => {
    expect(forkProofOf(branchA, branchA)).toBeNull();
    expect(forkProofOf(branchA, forker.written[1]!)).toBeNull();
    expect(forkProofOf(a3, branchA)).toBeNull();
  });

  it('also prove a fork at seq 1', () => {
    const x = new TestDevice('chain-fork-one');
    const one = x.create(T0, 'case', 'c', { v: 1 });
    x.state = { tip: EMPTY_TIP, clock: { wallMs: 0, counter: 0 } };
    const other = x.create(T0, 'case', 'c', { v: 2 });
    expect(verifyForkProof(forkProofOf(one, other)!).map((o) => o.seq)).toEqual([1, 1]);
  });

  const forged: [string, ForkProof][] = [
    ['in the wrong order', { ...proof, ops: [second.bytes, first.bytes] }],
    ['the same op twice', { ...proof, ops: [first.bytes, first.bytes] }],
    ['naming another device', { ...proof, device: bob.id }],
    ['naming another seq', { ...proof, seq: 2 }],
    ['two devices\' ops at one seq', (() => {
      const [x, y] = a3.id < bob.written[2]!.id ? [a3, bob.written[2]!] : [bob.written[2]!, a3];
      return { device: x.device, seq: 3, ops: [x.bytes, y.bytes] as const };
    })()],
    ['two seqs of one log', (() => {
      const [x, y] = a2.id < a3.id ? [a2, a3] : [a3, a2];
      return { device: alice.id, seq: x.seq, ops: [x.bytes, y.bytes] as const };
    })()],
  ];

  it.each(forged)('refuses a forged proof: %s (BAD_FORK_PROOF)', (_, bad) => {
    expectCoreError(() => verifyForkProof(bad), RuleViolationError, 'BAD_FORK_PROOF', { device: bad.device, seq: bad.seq });
  });

  it('refuses a proof holding an op with a forged signature (BAD_SIGNATURE) or garbled bytes (DECODE)', () => {
    // An "op" of the forker at seq 3 that the forker never signed.
    const { body } = envelopeParts(second.bytes);
    const unsigned = new Uint8Array(encode([body, signerOf('chain-bob').sign(body)]));
    expectCoreError(() => verifyForkProof({ ...proof, ops: [first.bytes, unsigned] }), RuleViolationError, 'BAD_SIGNATURE');
    for (const bit of [8 * 40, second.bytes.length * 8 - 3]) {
      expect(thrownBy(() => verifyForkProof({ ...proof, ops: [first.bytes, flipBit(second.bytes, bit)] }))).toBeInstanceOf(FieldmeshError);
    }
    expectCoreError(() => verifyForkProof({ ...proof, ops: [first.bytes, second.bytes.subarray(1)] }), InvalidInputError, 'DECODE');
  });
});
