/**
 * Void ops: ops of a device at or past its proven fork point are outside causal history, and an
 * honest op naming one applies through it (with that op's own base), on every node alike: on a
 * node that stored the void op before the proof, and on one that fetched it by id because the
 * op naming it waited for it (docs/protocol.md, "Forks"). Real stores in temp dirs.
 */
import { join } from 'node:path';
import { Level } from 'level';
import { beforeEach, describe, expect, it } from 'vitest';
import { InvalidInputError, RuleViolationError } from '../../src/core/errors.ts';
import { materialize, stateHash } from '../../src/core/materialize.ts';
import { parseOp, type Op } from '../../src/core/op.ts';
import type { FieldNode } from '../../src/node/field-node.ts';
import { sealValue } from '../../src/store/records.ts';
import { TABLES, tableKey } from '../../src/store/tables.ts';
import { expectRejects, HQ, introduce, reject, signerOf, snapshot, TestAuthor, useTemp } from '../node/helpers.ts';

const temp = useTemp();
const bytesOf = (list: readonly Uint8Array[]) => list.map((b) => Uint8Array.from(b));

describe('void ops (past a fork point)', () => {
  let restored: TestAuthor;
  let honest: TestAuthor;
  /** The restored device's seq 1, its first seq 2 (then lost to a backup) and the other seq 2. */
  let r1: Op, r2: Op, r2b: Op;
  /** The honest device's op that saw r2 before anyone knew of the fork, and its next one. */
  let h1: Op, h2: Op;

  beforeEach(() => {
    restored = new TestAuthor(signerOf('voids-restored'), { user: 'rita' });
    honest = new TestAuthor(signerOf('voids-honest'), { user: 'hugo' });
    r1 = restored.create('evidence', 'e1', { kind: 'photo' });
    r2 = restored.update('evidence', 'e1', { location: 'car park' }, [r1.id]);
    const branch = new TestAuthor(restored.author.signer, { user: 'rita' });
    branch.state = { tip: { seq: 1, id: r1.id }, clock: r1.hlc };
    r2b = branch.update('evidence', 'e1', { location: 'loading bay' }, [r1.id]);
    h1 = honest.update('evidence', 'e1', { note: 'saw the car park' }, [r2.id]);
    h2 = honest.update('evidence', 'e1', { note: 'checked again' }, [h1.id]);
  });

  async function nodeHolding(batches: readonly (readonly Op[])[]): Promise<FieldNode> {
    const node = await temp.open(await temp.dir());
    await introduce(node);
    for (const batch of batches) await node.ingest(batch.map((o) => o.bytes));
    return node;
  }

  /** What every node must show: materialize over the ops held (void ones included) and the fork point. */
  const expectedHash = (node: FieldNode, ops: readonly Op[]) => stateHash([...materialize(ops, node.resolution, [{ device: restored.device, seq: 2 }]).entities.values()].map((e) => e.view));

  it('an op built on a void op applies through it on the node that holds it', async () => {
    const x = await nodeHolding([[r1, r2, h1, h2], [r2b]]); // the fork shows when r2b arrives
    expect((await x.forkProofs()).map((p) => [p.device, p.seq])).toEqual([[restored.device, 2]]);
    expect((await x.get('evidence', 'e1'))!.fields).toEqual({ kind: 'photo', note: 'checked again' });
    expect((await x.ops({ device: honest.device })).map((o) => o.status)).toEqual(['pending', 'pending']);
    expect(await x.missingBases(10)).toEqual([]);
    expect(await x.stateHash()).toBe(expectedHash(x, [r1, r2, h1, h2]));
    expect(bytesOf(await x.voidOps([r2.id, r1.id, h1.id]))).toEqual([r2.bytes]);
  });

  it('a node that never held the void op waits for it, fetches it by id and then shows the same state', async () => {
    const x = await nodeHolding([[r1, r2, h1, h2], [r2b]]);
    // y holds the other branch, learns of the fork, and so never stores r2.
    const y = await nodeHolding([[r1, r2b], [r2], [h1, h2]]);
    expect((await y.forkProofs()).map((p) => [p.device, p.seq])).toEqual([[restored.device, 2]]);
    expect(await y.missingBases(10)).toEqual([r2.id]);
    expect((await y.get('evidence', 'e1'))!.fields).toEqual({ kind: 'photo' });

    const envelopes = await x.voidOps(await y.missingBases(10));
    const kept = await y.addVoidOps(envelopes);
    expect(kept.map((o) => o.id)).toEqual([r2.id]);
    expect(await y.missingBases(10)).toEqual([]);
    expect((await y.get('evidence', 'e1'))!.fields).toEqual({ kind: 'photo', note: 'checked again' });
    expect(await y.stateHash()).toBe(await x.stateHash());
    expect(await y.stateHash()).toBe(expectedHash(y, [r1, r2b, r2, h1, h2]));
    expect((await y.ops({ device: honest.device })).map((o) => o.status)).toEqual(['pending', 'pending']);
    // It answers for it in turn, and a second copy is no news.
    expect(bytesOf(await y.voidOps([r2.id]))).toEqual([r2.bytes]);
    expect(await y.addVoidOps([r2.bytes])).toEqual([]);
    expect((await y.verify()).problems).toEqual([]);

    // The fetched op is primary data: it survives a reopen and a rebuild of the derived tables.
    const hash = await y.stateHash();
    const dir = y.dataDir;
    await y.close();
    const again = await temp.open(dir);
    expect(await again.stateHash()).toBe(hash);
    await again.close();
    // Dropping the derived-format mark makes the next open rebuild every derived table from the logs.
    const db = new Level<string, Uint8Array>(join(dir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'view' });
    await db.del(tableKey(TABLES.meta, 'derived'));
    await db.close();
    const rebuilt = await temp.open(dir);
    expect(await rebuilt.stateHash()).toBe(hash);
    expect(await rebuilt.missingBases(10)).toEqual([]);

    // verify re-checks the table: an op kept as void that no fork point covers, and a garbled row.
    await rebuilt.close();
    const raw = new Level<string, Uint8Array>(join(dir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'view' });
    await raw.put(tableKey(TABLES.voids, h2.id), sealValue(tableKey(TABLES.voids, h2.id), h2.bytes));
    await raw.put(tableKey(TABLES.voids, 'ff'.repeat(32)), Uint8Array.of(1, 2, 3, 4, 5));
    await raw.close();
    const checked = await temp.open(dir);
    expect((await checked.verify()).problems.map((p) => p.code).sort()).toEqual(['NOT_VOID', 'STORE_CORRUPT']);
  });

  it('ops parked on an op that becomes void apply once the proof arrives', async () => {
    // h1 waits for r2, which waits for r1; then r2b proves the fork: r2 will never apply.
    const node = await nodeHolding([[h1, h2]]);
    await node.ingest([r1, r2].map((o) => o.bytes));
    expect((await node.get('evidence', 'e1'))!.fields).toEqual({ kind: 'photo', location: 'car park', note: 'checked again' });
    await node.ingest([r2b.bytes]);
    expect((await node.get('evidence', 'e1'))!.fields).toEqual({ kind: 'photo', note: 'checked again' });
    expect(await node.stateHash()).toBe(expectedHash(node, [r1, r2, h1, h2]));
  });

  it('an op whose effective base reaches another entity through a fetched void op fails, also after a rebuild', async () => {
    const other = new TestAuthor(signerOf('voids-other'), { user: 'zoe' });
    const hq = new TestAuthor(HQ, { user: 'hq' });
    const z1 = other.create('evidence', 'e2', { kind: 'other' });
    // A void op of e1 built on e2's op, and an op of e1 naming it: BAD_BASE, as naming e2's op would be.
    const branch = new TestAuthor(restored.author.signer, { user: 'rita' });
    branch.state = { tip: { seq: 1, id: r1.id }, clock: r1.hlc };
    const v2 = branch.update('evidence', 'e1', { location: 'x' }, [z1.id]);
    const h = new TestAuthor(signerOf('voids-hank'), { user: 'hank' }).update('evidence', 'e1', { note: 'n' }, [r1.id, v2.id]);
    const y = await nodeHolding([[r1, r2b], [v2], [z1], [h]]);
    expect(await y.addVoidOps([v2.bytes])).toHaveLength(1);
    const statusOfH = async () => (await y.ops({ device: h.device })).find((o) => o.id === h.id);
    expect(await statusOfH()).toMatchObject({ status: 'failed', reason: 'BAD_BASE' });
    // HQ rejecting r1 rebuilds e1 from its ops: the verdict on h must not change.
    const receipt = hq.receipt([reject(r1.id, 'NOPE')]);
    await y.ingest([receipt.bytes]);
    const expected = materialize([r1, r2b, v2, z1, h, receipt], y.resolution, [{ device: restored.device, seq: 2 }]);
    expect(expected.statuses.get(h.id)).toMatchObject({ status: 'failed', reason: 'BAD_BASE' });
    expect(await statusOfH()).toMatchObject({ status: 'failed', reason: 'BAD_BASE' });
  });

  it('skips ops that are not past a fork point, and refuses forged or foreign ones whole', async () => {
    const y = await nodeHolding([[r1, r2b], [r2], [h1]]);
    // Not void (no fork of the honest device): skipped, not stored.
    expect(await y.addVoidOps([h2.bytes])).toEqual([]);
    expect(y.versionVector()[honest.device]).toBe(1);
    const before = await snapshot(y);
    const forged = Uint8Array.from(r2.bytes);
    forged[forged.length - 3]! ^= 0x5a; // inside the signature
    await expectRejects(y.addVoidOps([r2.bytes, forged]), RuleViolationError, 'BAD_SIGNATURE');
    const stranger = new TestAuthor(signerOf('voids-stranger'), { enrolled: false });
    await expectRejects(y.addVoidOps([r2.bytes, stranger.create('note', 'n1', {}).bytes]), RuleViolationError, 'UNENROLLED');
    const foreign = new TestAuthor(restored.author.signer, { team: 'other-team' });
    await expectRejects(y.addVoidOps([foreign.create('note', 'n1', {}).bytes]), InvalidInputError, 'WRONG_TEAM');
    expect(await snapshot(y)).toEqual(before);
    expect(await y.missingBases(10)).toEqual([r2.id]);
    expect(parseOp(r2.bytes).op.id).toBe(r2.id);
  });
});
