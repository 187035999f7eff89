/**
 * A hostile peer that breaks the framing or the handshake of the sync protocol against a real,
 * honest FieldNode (A) on loopback, while honest B stays connected to A. For each bad input A
 * must drop the peer with blame, store nothing, refuse it during the back-off, take it back
 * afterwards, and keep syncing with B (see expectDropped).
 */
import { describe, expect, it } from 'vitest';
import { encodeCanonical } from '../../src/core/cbor.ts';
import { encodeFrame, SYNC_VERSION } from '../../src/core/sync/frames.ts';
import { MIN_FRAME_BYTES } from '../../src/core/sync/session.ts';
import { admitted, cleanupFor, concat, expectDropped, HostilePeer, LogWriter, sleep, TestTeam, varint, type Cleanup } from './hostile-peer.ts';

/** A's frame limit in these tests: the smallest allowed, rounded up to 64 KiB. */
const MAX_FRAME = Math.ceil(MIN_FRAME_BYTES / 65536) * 65536;
const LIMITS = { maxFrameBytes: MAX_FRAME, windowBytes: 2 * MAX_FRAME };

async function setup(cleanup: Cleanup) {
  const team = await TestTeam.start(cleanup, { limits: LIMITS });
  const peer = await HostilePeer.create(cleanup);
  return { team, peer };
}

describe.concurrent('hostile framing: A drops the peer, stores nothing, backs off, keeps serving B', () => {
  it('a frame of garbage bytes after admission (DECODE)', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer } = await setup(cleanup);
    const { session, cert } = await admitted(team, peer);
    const before = await team.before();
    await session.sendPayload(Uint8Array.of(0xff, 0x00, 0x13, 0x37, 0xde, 0xad, 0xbe, 0xef));
    await expectDropped(team, peer, session, { codes: ['DECODE'], before, tag: 'garbage', readmitWith: cert.bytes });
  });

  it.for([
    { what: 'an unknown frame type', payload: encodeCanonical([99, 'what']) },
    { what: 'a frame with an extra item', payload: encodeCanonical([5, 100, 'extra item']) },
    // credit [5, 1] with the 1 written as a two-byte integer
    { what: 'a non-canonical encoding', payload: Uint8Array.of(0x82, 0x05, 0x18, 0x01) },
  ])('well-formed CBOR that is no valid frame: $what (DECODE)', async ({ payload, what }, ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer } = await setup(cleanup);
    const { session, cert } = await admitted(team, peer);
    const before = await team.before();
    await session.sendPayload(payload);
    await expectDropped(team, peer, session, { codes: ['DECODE'], before, tag: what.replace(/\W+/g, '-'), readmitWith: cert.bytes });
  });

  it('garbage bytes instead of a hello (DECODE before admission)', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer } = await setup(cleanup);
    const session = await peer.open(team.addressA);
    await session.waitForFrame((f) => f.type === 'hello', 'the honest hello');
    const before = await team.before();
    await session.sendPayload(new TextEncoder().encode('GET / HTTP/1.1\r\nHost: fieldmesh\r\n\r\n'));
    await expectDropped(team, peer, session, { codes: ['DECODE'], before, tag: 'garbage-hello', readmitWith: team.certify(peer.device).bytes });
  });

  it('a length prefix claiming 2^40 bytes, far over maxFrameBytes (FRAME_TOO_LARGE), without sending them', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer } = await setup(cleanup);
    const { session, cert } = await admitted(team, peer);
    const before = await team.before();
    await session.sendRaw(concat([varint(2 ** 40), new Uint8Array(16)]));
    await expectDropped(team, peer, session, { codes: ['FRAME_TOO_LARGE'], before, tag: 'huge-length', readmitWith: cert.bytes });
  });

  it('a length prefix of maxFrameBytes + 1 is refused at the prefix, before any body arrives (FRAME_TOO_LARGE)', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer } = await setup(cleanup);
    const { session, cert } = await admitted(team, peer);
    const before = await team.before();
    await session.sendRaw(varint(MAX_FRAME + 1));
    await expectDropped(team, peer, session, { codes: ['FRAME_TOO_LARGE'], before, tag: 'just-over', readmitWith: cert.bytes });
  });

  it('a length prefix that never ends (continuation bits forever) is refused, not read byte by byte without bound', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer } = await setup(cleanup);
    const { session, cert } = await admitted(team, peer);
    const before = await team.before();
    // 4 KiB of 0xff: a varint that never terminates. maxFrameBytes needs a 3-byte prefix at most.
    await session.sendRaw(new Uint8Array(4096).fill(0xff));
    await expectDropped(team, peer, session, { codes: ['FRAME_TOO_LARGE'], before, tag: 'endless-varint', readmitWith: cert.bytes });
  });

  it('a first frame that is not hello (EXPECTED_HELLO), even a valid ops frame of an enrolled device', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer } = await setup(cleanup);
    // Enrolled elsewhere: A holds the certificate, so the ops themselves would be acceptable.
    const cert = team.certify(peer.device);
    await team.a.addCertificates([cert.bytes]);
    const op = new LogWriter(peer.signer, team.team).create('sneaky', { v: 1 });
    const session = await peer.open(team.addressA);
    const before = await team.before();
    await session.send({ type: 'ops', device: peer.device, ops: [op.bytes] });
    await expectDropped(team, peer, session, { codes: ['EXPECTED_HELLO'], before, tag: 'not-hello', readmitWith: cert.bytes });
    expect(team.a.versionVector()[peer.device]).toBeUndefined();
  });

  it('a second hello after admission (DUPLICATE_HELLO)', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer } = await setup(cleanup);
    const { session, cert } = await admitted(team, peer);
    const before = await team.before();
    await session.sendHello({ team: team.team, hq: team.hq.device, cert: cert.bytes, tips: {} });
    await expectDropped(team, peer, session, { codes: ['DUPLICATE_HELLO'], before, tag: 'second-hello', readmitWith: cert.bytes });
  });

  it.for([
    { what: 'of another team', codes: ['WRONG_TEAM'], hello: (team: TestTeam, peer: HostilePeer) => ({ team: 'other-team', hq: team.hq.device, cert: team.certify(peer.device).bytes }) },
    { what: 'naming another HQ', codes: ['WRONG_TEAM'], hello: (team: TestTeam, peer: HostilePeer) => ({ team: team.team, hq: peer.device, cert: team.certify(peer.device).bytes }) },
    { what: 'with limits below the minimum', codes: ['BAD_LIMITS'], hello: (team: TestTeam, peer: HostilePeer) => ({ team: team.team, hq: team.hq.device, cert: team.certify(peer.device).bytes, maxFrameBytes: 1024, windowBytes: 1024 }) },
    { what: 'of another protocol version', codes: ['VERSION'], hello: (team: TestTeam, peer: HostilePeer) => ({ team: team.team, hq: team.hq.device, cert: team.certify(peer.device).bytes, version: SYNC_VERSION + 1 }) },
  ])('a hello $what ($codes)', async ({ codes, hello, what }, ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer } = await setup(cleanup);
    const session = await peer.open(team.addressA);
    const before = await team.before();
    await session.sendHello(hello(team, peer));
    await expectDropped(team, peer, session, { codes, before, tag: what.replace(/\W+/g, '-'), readmitWith: team.certify(peer.device).bytes });
  });

  it('the frame check is per frame: an honest-sized frame right at maxFrameBytes is fine', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    // Control for the size tests above: a credit frame padded by nothing but its own size is never
    // near the limit, so instead send a certs frame of A's own certificates just under the limit.
    const { team, peer } = await setup(cleanup);
    const { session } = await admitted(team, peer);
    const mine = team.a.certificate!.bytes;
    const certs: Uint8Array[] = [];
    while (encodeFrame({ type: 'certs', certs: [...certs, mine] }).length <= MAX_FRAME) certs.push(mine);
    const frame = encodeFrame({ type: 'certs', certs });
    expect(frame.length).toBeLessThanOrEqual(MAX_FRAME);
    expect(frame.length).toBeGreaterThan(MAX_FRAME - 2 * mine.length);
    await session.sendPayload(frame);
    await sleep(300);
    expect(session.endedAs).toBeNull();
    expect(team.a.peers().some((p) => p.device === peer.device)).toBe(true);
    await team.stillServesHonestPeers('full-frame');
  });
});
