/**
 * Rules FieldNode applies itself, so that code embedding a node is held to them as HQ's API and
 * the CLI are: HQ does not enroll its own device id, revocations are idempotent and only of
 * enrolled devices, and input from callers (`query`'s `where`, `exportBundle`'s version vector) is
 * checked before it is used, and a device whose ops would count nowhere (forked, or revoked
 * before its next seq) signs nothing. Real nodes on LevelDB in temp dirs.
 */
import { cp } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { InvalidInputError, RuleViolationError } from '../../src/core/errors.ts';
import { decodeBundle } from '../../src/core/bundle.ts';
import { parseOp } from '../../src/core/op.ts';
import { FieldNode } from '../../src/node/field-node.ts';
import { DOMAINS, expectRejects, HQ, signerOf, TEAM, TestAuthor, useTemp } from './helpers.ts';

const temp = useTemp();
const YEAR_MS = 365 * 24 * 3600 * 1000;

/** A team's HQ node (role server: its own key is the team root). */
async function openHq(): Promise<FieldNode> {
  return temp.track(await FieldNode.open({ dataDir: await temp.dir('fm-hq-'), team: TEAM, user: 'hq-staff', role: 'server', domains: DOMAINS }));
}

/** A value nested `depth` arrays deep. */
function nested(depth: number): unknown {
  let value: unknown = 'x';
  for (let i = 0; i < depth; i++) value = [value];
  return value;
}

describe('enrollDevice', () => {
  it('refuses HQ\'s own device id (CANNOT_ENROLL_HQ), keeping HQ\'s root certificate', async () => {
    const hq = await openHq();
    const before = hq.certificateOf(hq.device);
    expect(before?.role).toBe('server');
    const err = await expectRejects(hq.enrollDevice(hq.device, 'mallory', 'field', YEAR_MS), RuleViolationError, 'CANNOT_ENROLL_HQ');
    expect(err.details).toEqual({ device: hq.device });
    expect(hq.certificateOf(hq.device)).toEqual(before);
    // Another device is enrolled as before.
    const cert = await hq.enrollDevice(signerOf('tablet').device, 'alice', 'field', YEAR_MS);
    expect(cert).toMatchObject({ device: signerOf('tablet').device, role: 'field', issuer: hq.device });
  });
});

describe('revoke', () => {
  it('appends one revocation; revoking again returns it and appends nothing, also when calls race', async () => {
    const hq = await openHq();
    const lost = signerOf('lost').device;
    const stolen = signerOf('stolen').device;
    await hq.enrollDevice(lost, 'alice', 'field', YEAR_MS);
    await hq.enrollDevice(stolen, 'bob', 'field', YEAR_MS);

    const first = await hq.revoke(lost, { reason: 'lost in the river' });
    expect(first.created).toBe(true);
    expect(first.op).toMatchObject({ type: 'revoke', target: lost, afterSeq: 0, reason: 'lost in the river', device: hq.device });
    const again = await hq.revoke(lost, { afterSeq: 7, reason: 'again' });
    expect(again.created).toBe(false);
    expect(again.op).toMatchObject({ id: first.op.id, seq: first.op.seq, target: lost, afterSeq: 0, reason: 'lost in the river' });
    expect((await hq.revocationOf(lost))?.id).toBe(first.op.id);
    expect(hq.isRevoked(lost)).toBe(true);

    const [a, b] = await Promise.all([hq.revoke(stolen, { afterSeq: 3 }), hq.revoke(stolen)]);
    expect([a.created, b.created].sort()).toEqual([false, true]);
    expect(a.op.id).toBe(b.op.id);
    expect(a.op.afterSeq).toBe(3);
    expect((await hq.ops({ type: 'revoke' })).map((o) => o.id)).toEqual([first.op.id, a.op.id]);
  });

  it('refuses a device never enrolled (DEVICE_NOT_FOUND), a malformed id, HQ itself, and any node but HQ; nothing is appended', async () => {
    const hq = await openHq();
    const stranger = signerOf('stranger').device;
    expect((await expectRejects(hq.revoke(stranger), RuleViolationError, 'DEVICE_NOT_FOUND')).details).toEqual({ device: stranger });
    await expectRejects(hq.revoke('not-a-device'), InvalidInputError, 'BAD_DEVICE_ID');
    await expectRejects(hq.revoke(hq.device), RuleViolationError, 'CANNOT_REVOKE_HQ');
    expect(await hq.ops()).toEqual([]);
    expect(await hq.revocationOf(stranger)).toBeUndefined();

    const field = await temp.open(await temp.dir());
    await expectRejects(field.revoke(signerOf('tablet').device), RuleViolationError, 'NOT_HQ');
  });
});

describe('query where', () => {
  it('refuses values nested too deep (VALUE_TOO_DEEP, not a RangeError), values that are no field value, and a where that is no object', async () => {
    const node = await temp.open(await temp.dir());
    await node.mutate({ type: 'create', domain: 'evidence', entity: 'e1', fields: { kind: 'photo', tags: ['a', ['b']] } });
    // Far deeper than the stack allows a recursive walk: the check must not walk it recursively.
    await expectRejects(node.query('evidence', { where: { kind: nested(200_000) as never } }), InvalidInputError, 'VALUE_TOO_DEEP');
    await expectRejects(node.query('evidence', { where: { kind: nested(17) as never } }), InvalidInputError, 'VALUE_TOO_DEEP');
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    await expectRejects(node.query('evidence', { where: { kind: cyclic as never } }), InvalidInputError, 'VALUE_TOO_DEEP');
    for (const bad of [undefined, Number.NaN, () => 1, new Date(0)]) {
      await expectRejects(node.query('evidence', { where: { kind: bad as never } }), InvalidInputError, 'BAD_VALUE');
    }
    for (const where of [[], 'kind=photo', 5, new Map()]) {
      await expectRejects(node.query('evidence', { where: where as never }), InvalidInputError, 'BAD_FIELDS');
    }
    // Values within the limits filter as before.
    expect((await node.query('evidence', { where: { kind: 'photo', tags: ['a', ['b']] } })).map((v) => v.entity)).toEqual(['e1']);
    expect(await node.query('evidence', { where: { kind: nested(16) as never } })).toEqual([]);
  });
});

describe('exportBundle', () => {
  it('refuses what is not a version vector (BAD_VERSION_VECTOR): a negative or fractional seq, a bad device id, not an object', async () => {
    const node = await temp.open(await temp.dir());
    for (let i = 1; i <= 3; i++) await node.mutate({ type: 'create', domain: 'note', entity: `n${i}`, fields: { i } });
    for (const seq of [-1, -3, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53, '1', null, [1], { seq: 1 }]) {
      const err = await expectRejects(node.exportBundle({ [node.device]: seq } as never), InvalidInputError, 'BAD_VERSION_VECTOR');
      expect(err.details).toMatchObject({ device: node.device });
    }
    await expectRejects(node.exportBundle({ 'not-a-device': 1 }), InvalidInputError, 'BAD_VERSION_VECTOR');
    for (const theirs of [null, [], 'x', 5, new Map()]) await expectRejects(node.exportBundle(theirs as never), InvalidInputError, 'BAD_VERSION_VECTOR');

    // A version vector gives exactly the ops its holder lacks, each once; devices we do not know are ignored.
    const seqs = async (theirs: Record<string, number>) => decodeBundle(await node.exportBundle(theirs)).runs.flatMap((r) => r.ops.map((op) => parseOp(op).op.seq));
    expect(await seqs({})).toEqual([1, 2, 3]);
    expect(await seqs({ [node.device]: 0 })).toEqual([1, 2, 3]);
    expect(await seqs({ [node.device]: 1, [signerOf('elsewhere').device]: 9 })).toEqual([2, 3]);
    expect(await seqs({ [node.device]: 3 })).toEqual([]);
  });
});

describe('writes that would count nowhere', () => {
  it('a device that knows its log forked signs nothing more (DEVICE_FORKED): mutate, put and resolve are refused, the log stays as it was', async () => {
    const dir = await temp.dir();
    const first = await temp.open(dir);
    await first.mutate({ type: 'create', domain: 'evidence', entity: 'ev-1', fields: { n: 1 } });
    await first.close();
    // A copy of the data dir (a restored backup) writes another op at seq 2.
    const copy = await temp.dir();
    await cp(dir, copy, { recursive: true });
    const node = await temp.open(dir);
    await node.mutate({ type: 'update', domain: 'evidence', entity: 'ev-1', fields: { n: 2 } });
    const twin = await temp.open(copy);
    const other = await twin.mutate({ type: 'update', domain: 'evidence', entity: 'ev-1', fields: { n: 20 } });
    expect(other.op.seq).toBe(2);
    expect((await node.ingest([other.op.bytes])).forks).toEqual([{ device: node.device, seq: 2 }]);

    const err = await expectRejects(node.mutate({ type: 'update', domain: 'evidence', entity: 'ev-1', fields: { n: 3 } }), RuleViolationError, 'DEVICE_FORKED');
    expect(err.details).toEqual({ device: node.device, seq: 2 });
    await expectRejects(node.mutate({ type: 'put', domain: 'evidence', entity: 'ev-2', fields: { n: 1 } }), RuleViolationError, 'DEVICE_FORKED');
    expect(node.versionVector()[node.device]).toBe(2);
  });

  it('a device HQ revoked writes up to the revocation\'s seq, then signs nothing more (DEVICE_REVOKED)', async () => {
    const node = await temp.open(await temp.dir());
    await node.mutate({ type: 'create', domain: 'evidence', entity: 'ev-1', fields: { n: 1 } });
    const hq = new TestAuthor(HQ, { user: 'hq', startMs: Date.now() });
    await node.ingest([hq.write({ type: 'revoke', target: node.device, afterSeq: 2, reason: 'lost' }).bytes]);

    expect((await node.mutate({ type: 'update', domain: 'evidence', entity: 'ev-1', fields: { n: 2 } })).status).toBe('pending'); // seq 2: still valid
    const err = await expectRejects(node.mutate({ type: 'update', domain: 'evidence', entity: 'ev-1', fields: { n: 3 } }), RuleViolationError, 'DEVICE_REVOKED');
    expect(err.details).toEqual({ device: node.device, afterSeq: 2 });
    expect(node.versionVector()[node.device]).toBe(2);
  });
});
