import { describe, expect, it } from 'vitest';
import { authorOp, type Author, type AuthorState } from '../../src/core/author.ts';
import { EMPTY_TIP, verifyRange } from '../../src/core/chain.ts';
import { InvalidInputError } from '../../src/core/errors.ts';
import { compareHlc, HLC_ZERO } from '../../src/core/hlc.ts';
import { LIMITS } from '../../src/core/limits.ts';
import { decodeOp, type Op } from '../../src/core/op.ts';
import { expectCoreError, signerOf, T0 } from './helpers.ts';

const author: Author = { signer: signerOf('author-alice'), team: 'team-1', user: 'alice' };
const draft = { type: 'update', domain: 'case', entity: 'c-1', base: [], fields: { n: 1 } } as const;

describe('authorOp', () => {
  it('writes seq 1 with no prev, then chains each op to the one before', () => {
    let state: AuthorState = { tip: EMPTY_TIP, clock: HLC_ZERO };
    const ops: Op[] = [];
    for (const t of [T0, T0 + 5, T0 + 5, T0 - 1000, T0 + 6]) {
      const written = authorOp(author, state, t, draft);
      expect(written.state.tip).toEqual({ seq: written.op.seq, id: written.op.id });
      expect(written.state.clock).toEqual(written.op.hlc);
      state = written.state;
      ops.push(written.op);
    }
    expect(ops.map((o) => o.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(ops[0]!.prev).toBeNull();
    for (let i = 1; i < ops.length; i++) {
      expect(ops[i]!.prev).toBe(ops[i - 1]!.id);
      // Physical time stalling or going back still gives a later HLC.
      expect(compareHlc(ops[i]!.hlc, ops[i - 1]!.hlc)).toBeGreaterThan(0);
    }
    expect(ops.map((o) => o.hlc)).toEqual([
      { wallMs: T0, counter: 0 },
      { wallMs: T0 + 5, counter: 0 },
      { wallMs: T0 + 5, counter: 1 },
      { wallMs: T0 + 5, counter: 2 },
      { wallMs: T0 + 6, counter: 0 },
    ]);
    expect(verifyRange(EMPTY_TIP, ops.map((o) => o.bytes))).toEqual(ops);
  });

  it('stamps the author\'s team, device and user on a decodable op', () => {
    const { op } = authorOp(author, { tip: EMPTY_TIP, clock: HLC_ZERO }, T0, draft);
    expect(op).toMatchObject({ v: 1, team: 'team-1', device: author.signer.device, user: 'alice', type: 'update', fields: { n: 1 } });
    expect(decodeOp(op.bytes)).toEqual(op);
  });

  it('leaves the state alone when the draft is refused', () => {
    const state: AuthorState = { tip: EMPTY_TIP, clock: HLC_ZERO };
    expectCoreError(() => authorOp(author, state, T0, { type: 'delete', domain: 'case', entity: 'c-1', base: [], fields: { n: 1 } }), InvalidInputError, 'BAD_OP_FIELD', { field: 'fields' });
    expect(state).toEqual({ tip: EMPTY_TIP, clock: HLC_ZERO });
  });

  it('carries a full HLC counter into the next millisecond rather than writing a wrapped clock', () => {
    const state: AuthorState = { tip: EMPTY_TIP, clock: { wallMs: T0, counter: LIMITS.maxHlcCounter } };
    expect(authorOp(author, state, T0, draft).op.hlc).toEqual({ wallMs: T0 + 1, counter: 0 });
  });
});
