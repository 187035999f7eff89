/**
 * A hostile, admitted peer that sends ops A must refuse: bad or forged signatures, broken chains,
 * ops of unenrolled devices or other teams, forged fork proofs. Each bad frame must be refused as a
 * whole (nothing of it stored), the peer dropped with blame and backed off, and honest B kept.
 * Also what is NOT a violation: replays of ops A holds, a genuine fork, a field device writing
 * HQ-only op types, and clocks from the future.
 */
import { describe, expect, it } from 'vitest';
import { encodeCanonical } from '../../src/core/cbor.ts';
import type { DeviceSigner } from '../../src/core/keys.ts';
import { parseOp, signingBytes, type Op } from '../../src/core/op.ts';
import type { Frame } from '../../src/core/sync/frames.ts';
import { admitted, cleanupFor, expectDropped, flipSignatureBit, freshKey, HostilePeer, LogWriter, sleep, TestTeam, waitUntil, type Cleanup } from './hostile-peer.ts';


async function setup(cleanup: Cleanup) {
  const team = await TestTeam.start(cleanup);
  const peer = await HostilePeer.create(cleanup);
  const { session, cert } = await admitted(team, peer);
  const log = new LogWriter(peer.signer, team.team);
  return { team, peer, session, cert, log };
}

/** Sends ops of the hostile's own log and waits until A holds them up to `seq`. */
async function sendStored(team: TestTeam, session: Awaited<ReturnType<typeof setup>>['session'], device: string, ops: readonly Op[]): Promise<void> {
  await session.send({ type: 'ops', device, ops: ops.map((o) => o.bytes) });
  const last = ops[ops.length - 1]!.seq;
  await waitUntil(() => (team.a.versionVector()[device] ?? 0) >= last, `A to store ${device}#${last}`, 5000);
}

/** The same envelope body, signed by another key. */
function resign(op: Uint8Array, by: DeviceSigner): Uint8Array {
  const { bodyBytes } = parseOp(op);
  return encodeCanonical([bodyBytes, by.sign(signingBytes(bodyBytes))]);
}

/** A signer that claims `device` but signs with `key`: what a forger has. */
const forger = (device: string, key: DeviceSigner): DeviceSigner => ({ device, publicKey: key.publicKey, sign: (m) => key.sign(m) });

async function tipOf(team: TestTeam, device: string): Promise<{ seq: number; id: string }> {
  const ops = await team.a.ops({ device, limit: 1_000_000 });
  const last = ops[ops.length - 1]!;
  return { seq: last.seq, id: last.id };
}

describe.concurrent('hostile ops: a bad frame is refused whole, the peer dropped, backed off; B still served', () => {
  it('a flipped signature bit on the last op of a multi-op frame (BAD_SIGNATURE)', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer, session, cert, log } = await setup(cleanup);
    const ops = [log.create('e1', { v: 1 }), log.create('e2', { v: 2 }), log.create('e3', { v: 3 })];
    const before = await team.before();
    await session.send({ type: 'ops', device: peer.device, ops: [ops[0]!.bytes, ops[1]!.bytes, flipSignatureBit(ops[2]!.bytes)] });
    await expectDropped(team, peer, session, { codes: ['BAD_SIGNATURE'], before, tag: 'flipped-last', readmitWith: cert.bytes });
    expect(team.a.versionVector()[peer.device]).toBeUndefined();
  });

  it('valid op bytes re-signed by another key (BAD_SIGNATURE)', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer, session, cert, log } = await setup(cleanup);
    const other = await freshKey();
    const op = log.create('e1', { v: 1 });
    const before = await team.before();
    await session.send({ type: 'ops', device: peer.device, ops: [resign(op.bytes, other.signer)] });
    await expectDropped(team, peer, session, { codes: ['BAD_SIGNATURE'], before, tag: 'resigned', readmitWith: cert.bytes });
  });

  it('a flipped signature on a middle op breaks the chain to the next (PREV_MISMATCH): nothing of the frame is stored', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer, session, cert, log } = await setup(cleanup);
    const ops = [log.create('e1', { v: 1 }), log.create('e2', { v: 2 }), log.create('e3', { v: 3 }), log.create('e4', { v: 4 })];
    await sendStored(team, session, peer.device, ops.slice(0, 1));
    const before = await team.before();
    await session.send({ type: 'ops', device: peer.device, ops: [ops[1]!.bytes, flipSignatureBit(ops[2]!.bytes), ops[3]!.bytes] });
    await expectDropped(team, peer, session, { codes: ['PREV_MISMATCH', 'BAD_SIGNATURE'], before, tag: 'flipped-middle', readmitWith: cert.bytes });
    expect(team.a.versionVector()[peer.device]).toBe(1);
  });

  it("a forged next op of honest B, signed with the hostile key (BAD_SIGNATURE): B's log is untouched", async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer, session, cert } = await setup(cleanup);
    const fake = new LogWriter(forger(team.b.device, peer.signer), team.team, 'bob');
    fake.state = { tip: await tipOf(team, team.b.device), clock: { wallMs: Date.now(), counter: 0 } };
    const op = fake.create('planted', { by: 'not bob' });
    const before = await team.before();
    await session.send({ type: 'ops', device: team.b.device, ops: [op.bytes] });
    await expectDropped(team, peer, session, { codes: ['BAD_SIGNATURE'], before, tag: 'forged-next', readmitWith: cert.bytes });
    expect(await team.a.get('evidence', 'planted')).toBeNull();
    expect(await team.b.get('evidence', 'planted')).toBeNull();
  });

  it('a forged op at a seq of B that A holds cannot frame B as a forker (BAD_SIGNATURE, no fork proof)', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer, session, cert } = await setup(cleanup);
    const fake = new LogWriter(forger(team.b.device, peer.signer), team.team, 'bob');
    const op = fake.create('fork-bait', { by: 'not bob' });
    expect(op.seq).toBe(1);
    const before = await team.before();
    await session.send({ type: 'ops', device: team.b.device, ops: [op.bytes] });
    await expectDropped(team, peer, session, { codes: ['BAD_SIGNATURE'], before, tag: 'forged-fork', readmitWith: cert.bytes });
    expect(await team.a.forkProofs()).toEqual([]);
    expect(await team.b.forkProofs()).toEqual([]);
  });

  it('a forged fork proof against B (one genuine op, one forged) is refused and records nothing', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer, session, cert } = await setup(cleanup);
    const genuine = (await team.a.op((await tipOf(team, team.b.device)).id))!;
    const fake = new LogWriter(forger(team.b.device, peer.signer), team.team, 'bob');
    fake.state = { tip: { seq: genuine.seq - 1, id: genuine.prev }, clock: { wallMs: Date.now(), counter: 0 } };
    const forged = fake.create('fork-proof-bait', { by: 'not bob' });
    expect(forged.seq).toBe(genuine.seq);
    const pair = [genuine, forged].sort((x, y) => (x.id < y.id ? -1 : 1)).map((o) => o.bytes) as [Uint8Array, Uint8Array];
    const before = await team.before();
    await session.send({ type: 'fork', device: team.b.device, seq: genuine.seq, ops: pair });
    await expectDropped(team, peer, session, { codes: ['BAD_SIGNATURE', 'BAD_FORK_PROOF'], before, tag: 'forged-proof', readmitWith: cert.bytes });
    expect(await team.a.forkProofs()).toEqual([]);
    expect(await team.b.forkProofs()).toEqual([]);
  });

  it('a seq gap after a valid frame (SEQ_GAP): the valid op before the gap in the same frame is not stored either', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer, session, cert, log } = await setup(cleanup);
    const ops = Array.from({ length: 5 }, (_, i) => log.create(`g${i}`, { i }));
    await sendStored(team, session, peer.device, ops.slice(0, 2));
    const before = await team.before();
    await session.send({ type: 'ops', device: peer.device, ops: [ops[2]!.bytes, ops[4]!.bytes] });
    await expectDropped(team, peer, session, { codes: ['SEQ_GAP'], before, tag: 'seq-gap', readmitWith: cert.bytes });
    expect(team.a.versionVector()[peer.device]).toBe(2);
  });

  it('an op whose prev names the wrong predecessor (PREV_MISMATCH): asked for that predecessor, the peer cannot show it (BAD_ANSWER)', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer, session, cert, log } = await setup(cleanup);
    const [first, second] = [log.create('p1', { v: 1 }), log.create('p2', { v: 2 })];
    await sendStored(team, session, peer.device, [first!, second!]);
    // seq 3 chained to seq 1 instead of seq 2, validly signed
    log.state = { tip: { seq: 2, id: first!.id }, clock: log.state.clock };
    const bad = log.create('p3', { v: 3 });
    expect(bad.seq).toBe(3);
    const before = await team.before();
    await session.send({ type: 'ops', device: peer.device, ops: [bad.bytes] });
    // A may be looking at a fork: it asks for our op at #2, which must be the op #3 names. It is not.
    const query = await session.waitForFrame((f): f is Frame & { type: 'query' } => f.type === 'query', 'a query for #2');
    expect(query).toEqual({ type: 'query', device: peer.device, seq: 2 });
    await session.send({ type: 'answer', device: peer.device, seq: 2, op: second!.bytes });
    await expectDropped(team, peer, session, { codes: ['BAD_ANSWER'], before, tag: 'wrong-prev', readmitWith: cert.bytes });
    expect(await team.a.forkProofs()).toEqual([]);
  });

  it('a peer that never answers the query its op made us ask is dropped (ANSWER_TIMEOUT)', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const team = await TestTeam.start(cleanup, { limits: { answerTimeoutMs: 300 } });
    const peer = await HostilePeer.create(cleanup);
    const { session, cert } = await admitted(team, peer);
    const log = new LogWriter(peer.signer, team.team);
    const [first, second] = [log.create('q1', { v: 1 }), log.create('q2', { v: 2 })];
    await sendStored(team, session, peer.device, [first!, second!]);
    log.state = { tip: { seq: 2, id: first!.id }, clock: log.state.clock };
    const before = await team.before();
    await session.send({ type: 'ops', device: peer.device, ops: [log.create('q3', { v: 3 }).bytes] });
    await session.waitForFrame((f) => f.type === 'query', 'a query for #2');
    await expectDropped(team, peer, session, { codes: ['ANSWER_TIMEOUT'], before, tag: 'no-answer', readmitWith: cert.bytes });
  });

  it('validly signed ops of a device that is not enrolled (UNENROLLED)', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer, session, cert } = await setup(cleanup);
    const stranger = await freshKey();
    const op = new LogWriter(stranger.signer, team.team, 'stranger').create('s1', { v: 1 });
    const before = await team.before();
    await session.send({ type: 'ops', device: stranger.signer.device, ops: [op.bytes] });
    await expectDropped(team, peer, session, { codes: ['UNENROLLED'], before, tag: 'unenrolled', readmitWith: cert.bytes });
    expect(team.a.isEnrolled(stranger.signer.device)).toBe(false);
  });

  it("ops of another team, signed by an enrolled device's own key (WRONG_TEAM)", async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer, session, cert } = await setup(cleanup);
    const op = new LogWriter(peer.signer, 'other-team').create('t1', { v: 1 });
    const before = await team.before();
    await session.send({ type: 'ops', device: peer.device, ops: [op.bytes] });
    await expectDropped(team, peer, session, { codes: ['WRONG_TEAM'], before, tag: 'other-team-op', readmitWith: cert.bytes });
  });

  it('an ops frame naming one device and carrying the ops of another (WRONG_DEVICE)', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer, session, cert, log } = await setup(cleanup);
    const op = log.create('w1', { v: 1 });
    const before = await team.before();
    await session.send({ type: 'ops', device: team.b.device, ops: [op.bytes] });
    await expectDropped(team, peer, session, { codes: ['WRONG_DEVICE'], before, tag: 'wrong-device', readmitWith: cert.bytes });
  });
});

describe.concurrent('hostile ops that are not violations', () => {
  it('a replay of ops A already holds is harmless: the session goes on, nothing changes, new ops still land', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer, session, log } = await setup(cleanup);
    const mine = [log.create('r1', { v: 1 }), log.create('r2', { v: 2 })];
    await sendStored(team, session, peer.device, mine);
    const before = await team.fingerprint();
    const credits = () => session.frames.filter((f) => f.type === 'credit').length;
    const creditsBefore = credits();
    // Everything A sent us (A's and B's logs), and our own stored ops, each twice, in bounded rounds.
    const received = session.frames.flatMap((f) => (f.type === 'ops' ? [{ device: f.device, ops: f.ops }] : []));
    expect(received.length).toBeGreaterThan(0);
    const replays = [...received, { device: peer.device, ops: mine.map((o) => o.bytes) }, { device: peer.device, ops: [mine[1]!.bytes] }];
    for (let round = 0; round < 2; round++) for (const r of replays) await session.send({ type: 'ops', device: r.device, ops: r.ops });
    await waitUntil(() => credits() - creditsBefore >= 2 * replays.length, 'A to credit every replayed frame', 5000);
    expect(session.endedAs).toBeNull();
    expect(team.a.peers().some((p) => p.device === peer.device)).toBe(true);
    expect(await team.fingerprint()).toEqual(before);
    expect((await team.a.verify()).problems).toEqual([]);
    expect(team.eventsA.filter((e) => e.kind === 'peer:closed')).toEqual([]);
    // The session still works both ways.
    const next = log.create('r3', { v: 3 });
    await sendStored(team, session, peer.device, [next]);
    await team.a.mutate({ type: 'create', domain: 'case', entity: 'after-replay', fields: { ok: true } });
    await session.waitForFrame((f) => f.type === 'ops' && f.device === team.a.device && f.ops.some((b) => parseOp(b).op.type === 'create' && (parseOp(b).op as { entity?: string }).entity === 'after-replay'), 'A to push its new op to the hostile peer');
    await team.stillServesHonestPeers('replay');
    await team.converged('B to get the hostile ops through A');
  });

  it("a genuine fork (two validly signed ops at one seq) is recorded, later ops refused, and the proof gossiped to B", async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer, session, log } = await setup(cleanup);
    const x1 = log.create('fx', { v: 'x' });
    const x2 = log.create('fx2', { v: 'x2' });
    const other = new LogWriter(peer.signer, team.team);
    const y1 = other.create('fy', { v: 'y' });
    await sendStored(team, session, peer.device, [x1]);
    await waitUntil(() => team.b.versionVector()[peer.device] === 1, 'B to get x1 through A', 5000);
    await session.send({ type: 'ops', device: peer.device, ops: [y1.bytes] });
    await waitUntil(async () => (await team.a.forkProofs()).length === 1, 'A to record the fork', 5000);
    const [proof] = await team.a.forkProofs();
    expect(proof!.device).toBe(peer.device);
    expect(proof!.seq).toBe(1);
    // Ops past the fork point are refused (not stored), without any signature trickery.
    await session.send({ type: 'ops', device: peer.device, ops: [x2.bytes] });
    await sleep(300);
    expect(team.a.versionVector()[peer.device]).toBe(1);
    expect((await team.a.verify()).problems).toEqual([]);
    // The design: "gossip the proof itself so every node learns it". B is connected to A all along.
    await waitUntil(async () => (await team.b.forkProofs()).length === 1, 'B (connected to A) to learn the fork proof', 3000);
    // Until B knows, A (which excludes the forked log) and B (which shows x1) show different data.
    await team.converged('A and B to agree again after the fork', 3000);
  });

  it('a field device writing revoke and receipt ops has no HQ authority: B is neither revoked nor rejected', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer, session, log } = await setup(cleanup);
    const bTip = await tipOf(team, team.b.device);
    const revoke = log.write({ type: 'revoke', target: team.b.device, afterSeq: 0, reason: 'coup' });
    const receipt = log.write({ type: 'receipt', verdicts: [{ op: bTip.id, accepted: false, reason: 'FORGED', detail: 'says mallory' }] });
    const before = await team.fingerprint();
    await sendStored(team, session, peer.device, [revoke, receipt]);
    for (const node of [team.a, team.b]) {
      if (node === team.b) await waitUntil(() => team.b.versionVector()[peer.device] === 2, 'B to get them through A', 5000);
      expect(node.isRevoked(team.b.device)).toBe(false);
      expect((await node.ops({ device: team.b.device })).map((o) => o.status)).not.toContain('failed');
    }
    expect(await team.a.stateHash()).toBe(before.stateHash);
    expect(await team.a.counts(team.b.device)).toEqual(await team.b.counts(team.b.device));
    await team.stillServesHonestPeers('fake-authority');
  });

  it('an op from ten years ahead is kept but does not drag A\'s clock past the allowed drift', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer, session, log } = await setup(cleanup);
    const future = log.write({ type: 'create', domain: 'evidence', entity: 'from-the-future', base: [], fields: { v: 1 } }, Date.now() + 10 * 365 * 24 * 3600 * 1000);
    await sendStored(team, session, peer.device, [future]);
    const { op } = await team.a.mutate({ type: 'create', domain: 'case', entity: 'now', fields: { v: 1 } });
    expect(op.hlc.wallMs).toBeLessThanOrEqual(Date.now() + 5 * 60 * 1000 + 1000);
    await team.stillServesHonestPeers('future');
  });
});
