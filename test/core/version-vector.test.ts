import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compareVersionVectors, mergeVersionVectors, missingRanges, seqOf, type VersionVector } from '../../src/core/version-vector.ts';
import { runs } from './helpers.ts';

const devices = ['dev-a', 'dev-b', 'dev-c', 'dev-d'];
const vvArb: fc.Arbitrary<VersionVector> = fc.dictionary(fc.constantFrom(...devices), fc.nat({ max: 6 }), { maxKeys: 4, noNullPrototype: true });
const opposite = { before: 'after', after: 'before', equal: 'equal', concurrent: 'concurrent' } as const;

describe('version vectors', () => {
  it('read missing devices as 0', () => {
    expect(seqOf({ a: 3 }, 'a')).toBe(3);
    expect(seqOf({ a: 3 }, 'b')).toBe(0);
  });

  it('compare as equal, before, after or concurrent', () => {
    expect(compareVersionVectors({ a: 2, b: 1 }, { b: 1, a: 2 })).toBe('equal');
    expect(compareVersionVectors({}, {})).toBe('equal');
    expect(compareVersionVectors({ a: 0 }, {})).toBe('equal');
    expect(compareVersionVectors({ a: 1 }, { a: 2 })).toBe('before');
    expect(compareVersionVectors({}, { a: 1 })).toBe('before');
    expect(compareVersionVectors({ a: 2, b: 1 }, { a: 2 })).toBe('after');
    expect(compareVersionVectors({ a: 2, b: 1 }, { a: 1, b: 2 })).toBe('concurrent');
    expect(compareVersionVectors({ a: 1 }, { b: 1 })).toBe('concurrent');
  });

  it('merge to the pointwise maximum with sorted keys', () => {
    const merged = mergeVersionVectors({ c: 1, a: 5 }, { b: 2, a: 3 });
    expect(merged).toEqual({ a: 5, b: 2, c: 1 });
    expect(Object.keys(merged)).toEqual(['a', 'b', 'c']);
  });

  it('list what the other side lacks, per device, sorted by device', () => {
    expect(missingRanges({ b: 4, a: 3, c: 1 }, { a: 1, c: 1, z: 9 })).toEqual([
      { device: 'a', fromSeq: 2, toSeq: 3 },
      { device: 'b', fromSeq: 1, toSeq: 4 },
    ]);
    expect(missingRanges({ a: 3 }, { a: 3 })).toEqual([]);
    expect(missingRanges({ a: 3 }, { a: 5 })).toEqual([]);
    expect(missingRanges({}, { a: 5 })).toEqual([]);
  });

  it('compare antisymmetrically and consistently with merge', () => {
    fc.assert(
      fc.property(vvArb, vvArb, (a, b) => {
        const ab = compareVersionVectors(a, b);
        expect(compareVersionVectors(b, a)).toBe(opposite[ab]);
        const m = mergeVersionVectors(a, b);
        expect(['before', 'equal']).toContain(compareVersionVectors(a, m));
        expect(['before', 'equal']).toContain(compareVersionVectors(b, m));
        if (ab === 'before' || ab === 'equal') expect(compareVersionVectors(m, b)).toBe('equal');
        if (ab === 'concurrent') {
          expect(compareVersionVectors(a, m)).toBe('before');
          expect(compareVersionVectors(b, m)).toBe('before');
        }
      }),
      { numRuns: runs(300) },
    );
  });

  it('merge commutatively, associatively and idempotently', () => {
    fc.assert(
      fc.property(vvArb, vvArb, vvArb, (a, b, c) => {
        expect(mergeVersionVectors(a, b)).toEqual(mergeVersionVectors(b, a));
        expect(mergeVersionVectors(mergeVersionVectors(a, b), c)).toEqual(mergeVersionVectors(a, mergeVersionVectors(b, c)));
        expect(compareVersionVectors(mergeVersionVectors(a, a), a)).toBe('equal');
      }),
      { numRuns: runs(300) },
    );
  });

  it('missing ranges bring the other side exactly up to the merge', () => {
    fc.assert(
      fc.property(vvArb, vvArb, (ours, theirs) => {
        const after: Record<string, number> = { ...theirs };
        for (const r of missingRanges(ours, theirs)) {
          // Each range starts right after what they hold and ends at what we hold.
          expect(r.fromSeq).toBe(seqOf(theirs, r.device) + 1);
          expect(r.toSeq).toBe(seqOf(ours, r.device));
          expect(r.toSeq).toBeGreaterThanOrEqual(r.fromSeq);
          after[r.device] = r.toSeq;
        }
        expect(compareVersionVectors(after, mergeVersionVectors(ours, theirs))).toBe('equal');
        expect(missingRanges(ours, after)).toEqual([]);
      }),
      { numRuns: runs(300) },
    );
  });
});
