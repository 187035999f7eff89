/**
 * ingest() of hostile input: every invalid batch is rejected with a typed error and stores
 * nothing (not even its valid ops); a fork is kept as a proof, and the forked device's later ops
 * are refused and its ops from the fork on excluded everywhere.
 */
import { decode, encode } from 'cborg';
import { beforeEach, describe, expect, it } from 'vitest';
import { authorOp } from '../../src/core/author.ts';
import { FieldmeshError, InvalidInputError, RuleViolationError } from '../../src/core/errors.ts';
import { signingBytes, type Op } from '../../src/core/op.ts';
import type { FieldNode } from '../../src/node/field-node.ts';
import { expectRejects, HQ, introduce, signerOf, snapshot, TestAuthor, useTemp } from '../node/helpers.ts';

const temp = useTemp();

/** An envelope [body, sig] as the wire carries it. */
function envelope(body: Uint8Array, sig: Uint8Array): Uint8Array {
  return new Uint8Array(encode([body, sig]));
}
const bodyOf = (op: Op): Uint8Array => (decode(op.bytes) as [Uint8Array, Uint8Array])[0];
const sigOf = (op: Op): Uint8Array => (decode(op.bytes) as [Uint8Array, Uint8Array])[1];

function flipped(bytes: Uint8Array, index: number): Uint8Array {
  const out = Uint8Array.from(bytes);
  out[index]! ^= 0x5a;
  return out;
}

describe('ingest of hostile input', () => {
  let node: FieldNode;
  let d1: TestAuthor;
  let d2: TestAuthor;
  /** Valid ops not ingested yet, that every hostile batch carries along. */
  let fresh: Op[];

  beforeEach(async () => {
    node = await temp.open(await temp.dir());
    d1 = new TestAuthor(signerOf('ingest-d1'), { user: 'd1' });
    d2 = new TestAuthor(signerOf('ingest-d2'), { user: 'd2' });
    await introduce(node);
    const a = d1.create('evidence', 'e1', { kind: 'photo' });
    const b = d1.update('evidence', 'e1', { kind: 'video' }, [a.id]);
    d1.create('case', 'c1', { status: 'open' });
    const c = d2.update('evidence', 'e1', { note: 'seen' }, [b.id]);
    d2.create('note', 'n1', { text: 'x' });
    const result = await node.ingest([...d1.written, ...d2.written].map((o) => o.bytes));
    expect(result).toMatchObject({ added: 5, duplicates: 0, refused: 0, forks: [] });
    await node.mutate({ type: 'update', domain: 'evidence', entity: 'e1', fields: { local: true } });
    fresh = [d1.update('evidence', 'e1', { kind: 'scan' }, [c.id]), d1.create('asset', 'a1', { serial: 'A' }), d2.create('note', 'n2', { text: 'y' })];
  });

  /** Ingests `batch`, which must fail with `cls`/`code`, and checks nothing of it was stored. */
  async function rejectsWhole(batch: readonly Uint8Array[], cls: abstract new (...args: never[]) => FieldmeshError, code: string | readonly string[]) {
    const before = await snapshot(node);
    const err = await expectRejects(node.ingest(batch), cls, code);
    expect(await snapshot(node)).toEqual(before);
    expect(node.versionVector()).toEqual({ [node.device]: 1, [d1.device]: 3, [d2.device]: 2 });
    // The same valid ops, without the bad one, are then accepted: they were refused only with it.
    const result = await node.ingest(fresh.map((o) => o.bytes));
    expect(result).toMatchObject({ added: 3, forks: [] });
    expect(node.versionVector()).toEqual({ [node.device]: 1, [d1.device]: 5, [d2.device]: 3 });
    expect((await node.verify()).problems).toEqual([]);
    return err;
  }

  it('rejects a truncated op', async () => {
    const bad = d2.create('note', 'n3', {});
    await rejectsWhole([fresh[0]!.bytes, fresh[1]!.bytes, fresh[2]!.bytes, bad.bytes.subarray(0, bad.bytes.length - 10)], InvalidInputError, 'DECODE');
  });

  it('rejects junk bytes', async () => {
    const junk = Uint8Array.from({ length: 120 }, (_, i) => (i * 37 + 11) & 0xff);
    await rejectsWhole([fresh[0]!.bytes, junk, fresh[1]!.bytes, fresh[2]!.bytes], InvalidInputError, 'DECODE');
  });

  it('rejects ops garbled anywhere in their bytes', async () => {
    const bad = d2.create('note', 'n3', { text: 'a fairly long text so the body has room to garble' });
    // Every 7th byte: header, body fields, signature. Whatever the damage, the error is typed.
    const codes = new Set<string>();
    const before = await snapshot(node);
    for (let i = 0; i < bad.bytes.length; i += 7) {
      let err: unknown;
      try {
        await node.ingest([fresh[0]!.bytes, fresh[1]!.bytes, fresh[2]!.bytes, flipped(bad.bytes, i)]);
      } catch (e) {
        err = e;
      }
      expect(err, `garbled byte ${i} was accepted`).toBeInstanceOf(FieldmeshError);
      codes.add((err as FieldmeshError).code);
      expect(['DECODE', 'BAD_OP_FIELD', 'BAD_SIGNATURE', 'WRONG_TEAM', 'UNENROLLED', 'PREV_MISMATCH', 'SEQ_GAP', 'BAD_FIELD_NAME', 'BAD_VALUE']).toContain((err as FieldmeshError).code);
    }
    expect(codes.has('BAD_SIGNATURE')).toBe(true);
    expect(await snapshot(node)).toEqual(before);
  });

  it('rejects a forged signature (valid op bytes re-signed by another key)', async () => {
    const bad = d2.create('note', 'n3', { text: 'forged' });
    const mallory = signerOf('mallory');
    const forged = envelope(bodyOf(bad), new Uint8Array(mallory.sign(signingBytes(bodyOf(bad)))));
    await rejectsWhole([fresh[0]!.bytes, fresh[1]!.bytes, fresh[2]!.bytes, forged], RuleViolationError, 'BAD_SIGNATURE');
  });

  it('rejects a forged signature in the middle of a chained run (the run is checked by its last signature)', async () => {
    const mallory = signerOf('mallory');
    // d1's fresh[0] re-signed: its id changes, so fresh[1] no longer chains to it.
    const forged = envelope(bodyOf(fresh[0]!), new Uint8Array(mallory.sign(signingBytes(bodyOf(fresh[0]!)))));
    await rejectsWhole([forged, fresh[1]!.bytes, fresh[2]!.bytes], RuleViolationError, ['BAD_SIGNATURE', 'PREV_MISMATCH']);
  });

  it('rejects an op whose signature was damaged', async () => {
    const bad = d2.create('note', 'n3', {});
    const sig = sigOf(bad);
    sig[10]! ^= 1;
    await rejectsWhole([fresh[0]!.bytes, fresh[1]!.bytes, fresh[2]!.bytes, envelope(bodyOf(bad), sig)], RuleViolationError, 'BAD_SIGNATURE');
  });

  it('rejects a gap in seq', async () => {
    d2.create('note', 'skipped', {}); // seq 4, never sent
    const after = d2.create('note', 'n4', {}); // seq 5
    await rejectsWhole([fresh[0]!.bytes, fresh[1]!.bytes, fresh[2]!.bytes, after.bytes], RuleViolationError, 'SEQ_GAP');
  });

  it('rejects a device whose ops skip a seq between two runs of one batch', async () => {
    const d1seq6 = d1.create('note', 'z', {}); // fresh[1] (seq 5) is left out
    expect(d1seq6.seq).toBe(6);
    await rejectsWhole([fresh[0]!.bytes, fresh[2]!.bytes, d1seq6.bytes], RuleViolationError, 'SEQ_GAP');
  });

  it('rejects a broken prev (a validly signed op that chains to the wrong predecessor)', async () => {
    const { op } = authorOp(d2.author, { tip: { seq: 3, id: 'ab'.repeat(32) }, clock: d2.state.clock }, Date.now(), { type: 'create', domain: 'note', entity: 'n5', base: [], fields: {} });
    expect(op.seq).toBe(4);
    await rejectsWhole([fresh[0]!.bytes, fresh[1]!.bytes, fresh[2]!.bytes, op.bytes], RuleViolationError, 'PREV_MISMATCH');
  });

  it('rejects an op of another team', async () => {
    const stranger = new TestAuthor(signerOf('stranger'), { team: 'other-team' });
    const bad = stranger.create('note', 'n1', { text: 'hi' });
    await rejectsWhole([fresh[0]!.bytes, bad.bytes, fresh[1]!.bytes, fresh[2]!.bytes], InvalidInputError, 'WRONG_TEAM');
  });

  it('rejects an op of another team signed by a device of ours', async () => {
    const twin = new TestAuthor(d2.author.signer, { team: 'other-team' });
    twin.state = d2.state;
    const bad = twin.create('note', 'n9', {});
    await rejectsWhole([fresh[0]!.bytes, fresh[1]!.bytes, bad.bytes], InvalidInputError, 'WRONG_TEAM');
  });

  it('keeps a fork as a proof, refuses the device past it and excludes its ops from the fork on', async () => {
    // A second branch of d1 from its seq 1: validly signed, different from the seq 2 we hold.
    const branch = new TestAuthor(d1.author.signer, { user: 'd1' });
    branch.state = { tip: { seq: 1, id: d1.written[0]!.id }, clock: d1.written[0]!.hlc };
    const fork2 = branch.update('evidence', 'e1', { kind: 'forged' }, [d1.written[0]!.id]);
    const fork3 = branch.create('case', 'c9', {});
    expect(fork2.seq).toBe(2);
    const d1ops = await node.ops({ device: d1.device });
    expect(d1ops.map((o) => o.status)).toEqual(['pending', 'pending', 'pending']);

    const result = await node.ingest([fresh[2]!.bytes, fork2.bytes, fork3.bytes]);
    expect(result.forks).toEqual([{ device: d1.device, seq: 2 }]);
    expect(result.added).toBe(1); // d2's op
    expect(result.refused).toBe(2);
    expect(node.versionVector()).toEqual({ [node.device]: 1, [d1.device]: 3, [d2.device]: 3 });

    // d1's seq 1 still counts; seq 2 and 3 are excluded; the forged branch was never stored.
    const after = await node.ops({ device: d1.device });
    expect(after.map((o) => [o.seq, o.status, o.reason])).toEqual([
      [1, 'pending', undefined],
      [2, 'failed', 'DEVICE_FORKED'],
      [3, 'failed', 'DEVICE_FORKED'],
    ]);
    expect(await node.op(fork2.id)).toBeUndefined();
    expect(await node.get('case', 'c1')).toBeNull(); // d1's seq 3 created it
    const e1 = await node.get('evidence', 'e1');
    expect(e1!.fields).toEqual({ kind: 'photo', note: 'seen', local: true }); // d1's seq 2 (kind: video) dropped out
    expect((await node.ops({ status: 'failed' })).map((o) => o.id)).toEqual([d1.written[1]!.id, d1.written[2]!.id]);
    expect(await node.counts(d1.device)).toEqual({ pending: 1, synced: 0, failed: 2, conflict: 0 });

    // Later ops of either branch are refused, not stored, and not an error.
    const next = await node.ingest([fresh[0]!.bytes, fresh[1]!.bytes]);
    expect(next).toMatchObject({ added: 0, refused: 2, forks: [] });
    expect(node.versionVector()[d1.device]).toBe(3);
    expect((await node.verify()).problems).toEqual([]);

    // The proof is kept: after a reopen the device is still flagged.
    const hash = await node.stateHash();
    const dir = node.dataDir;
    await node.close();
    node = await temp.open(dir);
    expect(await node.stateHash()).toBe(hash);
    expect((await node.ops({ device: d1.device })).map((o) => o.status)).toEqual(['pending', 'failed', 'failed']);
    expect(await node.ingest([fresh[0]!.bytes])).toMatchObject({ added: 0, refused: 1 });
    expect(node.versionVector()[d1.device]).toBe(3);
  });

  it('detects a fork whose two branches arrive in the same batch', async () => {
    // d2 holds seq 1..2 here; two different seq-3 ops of d2 in one batch prove a fork just the same.
    const branch = new TestAuthor(d2.author.signer, { user: 'd2' });
    branch.state = { tip: { seq: 2, id: d2.written[1]!.id }, clock: d2.written[1]!.hlc };
    const other3 = branch.create('note', 'n-other', { text: 'other branch' });
    expect(other3.seq).toBe(fresh[2]!.seq);
    expect(other3.id).not.toBe(fresh[2]!.id);
    const result = await node.ingest([fresh[2]!.bytes, other3.bytes]);
    expect(result.forks).toEqual([{ device: d2.device, seq: 3 }]);
    expect(result.duplicates).toBe(0);
    // Neither branch may be chosen silently.
    expect(await node.get('note', 'n2')).toBeNull();
    expect(await node.get('note', 'n-other')).toBeNull();
  });

  it('accepts duplicates without error and stores them once', async () => {
    const before = await snapshot(node);
    const result = await node.ingest([...d1.written.slice(0, 3), ...d2.written.slice(0, 2)].map((o) => o.bytes));
    expect(result).toMatchObject({ added: 0, duplicates: 5, refused: 0, forks: [] });
    expect(await snapshot(node)).toEqual(before);
  });

  it("counts receipts only from the team's HQ device", async () => {
    const fake = new TestAuthor(signerOf('not-hq'), { user: 'mallory' });
    await introduce(node);
    const receipt = fake.receipt([{ op: d1.written[0]!.id, accepted: false, reason: 'FAKE', detail: '' }]);
    await node.ingest([receipt.bytes]);
    expect((await node.ops({ device: d1.device }))[0]!.status).toBe('pending');
    const real = new TestAuthor(HQ);
    await node.ingest([real.receipt([{ op: d1.written[0]!.id, accepted: false, reason: 'REAL', detail: 'no' }]).bytes]);
    expect((await node.ops({ device: d1.device }))[0]).toMatchObject({ status: 'failed', reason: 'REJECTED:REAL' });
  });
});

describe('ingest and the HLC counter', () => {
  it('a batch that ticks our clock past its 16-bit counter carries into the next millisecond, and the node writes on', async () => {
    const nowMs = Date.UTC(2026, 5, 1);
    const node = await temp.open(await temp.dir(), { now: () => nowMs });
    // A peer's op near the end of a millisecond's counter, a minute ahead (within the drift bound)...
    const ahead = new TestAuthor(signerOf('hlc-ahead'), { user: 'ahead' });
    ahead.state = { ...ahead.state, clock: { wallMs: nowMs + 60_000, counter: 65_530 } };
    const late = ahead.create('note', 'n-ahead', { n: 1 });
    // ...then ops stamped earlier, each ticking our clock's counter once in the same batch.
    const behind = new TestAuthor(signerOf('hlc-behind'), { user: 'behind', startMs: nowMs - 10_000 });
    const earlier = Array.from({ length: 20 }, (_, i) => behind.create('note', `n-${i}`, { n: i }));
    await introduce(node);
    expect(await node.ingest([late, ...earlier].map((o) => o.bytes))).toMatchObject({ added: 21, refused: 0 });
    const own = await node.mutate({ type: 'create', domain: 'note', entity: 'mine', fields: { n: 0 } });
    expect(own.op.hlc.wallMs).toBe(nowMs + 60_001);
    expect(own.op.hlc.counter).toBeLessThan(100);
  });

  it('an op from a clock a day ahead is kept, flagged, and listed by clockSkews() (our clock follows it only to the drift bound)', async () => {
    const nowMs = Date.UTC(2026, 5, 1);
    const node = await temp.open(await temp.dir(), { now: () => nowMs });
    const ahead = new TestAuthor(signerOf('hlc-day-ahead'), { user: 'ahead', startMs: nowMs + 86_400_000 });
    await introduce(node);
    const op = ahead.create('note', 'n-day', { n: 1 });
    expect(await node.ingest([op.bytes])).toMatchObject({ added: 1, skewed: [{ device: ahead.device, seq: 1, aheadMs: 86_400_001 }] });
    expect(await node.clockSkews()).toEqual([{ device: ahead.device, seq: 1, aheadMs: 86_400_001, atMs: nowMs }]);
    expect((await node.mutate({ type: 'create', domain: 'note', entity: 'mine', fields: { n: 0 } })).op.hlc.wallMs).toBe(nowMs + 300_000);
  });

  it("HQ's ops vouch for how late it is at admission, but an HQ clock far ahead counts only as far as the drift bound", async () => {
    const nowMs = Date.UTC(2026, 5, 1);
    const node = await temp.open(await temp.dir(), { now: () => nowMs });
    await introduce(node);
    const hq = new TestAuthor(HQ, { user: 'hq', startMs: nowMs + 60_000 });
    await node.ingest([hq.create('note', 'hq-1', { n: 1 }).bytes]);
    expect(node.admissionNowMs()).toBe(nowMs + 60_001);
    hq.state = { ...hq.state, clock: { wallMs: nowMs + 365 * 86_400_000, counter: 0 } };
    await node.ingest([hq.create('note', 'hq-2', { n: 2 }).bytes]);
    expect(node.admissionNowMs()).toBe(nowMs + 300_000);
    // Kept across a reopen (and not moved by this node's own clock or writes).
    await node.mutate({ type: 'create', domain: 'note', entity: 'mine', fields: { n: 0 } });
    await node.close();
    const again = await temp.open(node.dataDir, { now: () => nowMs });
    expect(again.admissionNowMs()).toBe(nowMs + 300_000);
  });
});
