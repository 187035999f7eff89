/**
 * A hostile peer presenting certificates A must not accept: another team's, expired, not yet
 * valid, forged, self-issued, claiming the server role, someone else's (WRONG_PEER), and a
 * revoked device's. A must drop it with blame, store nothing, back off, and keep serving B.
 */
import { describe, expect, it } from 'vitest';
import { authorOp } from '../../src/core/author.ts';
import { issueCertificate, type CertBody } from '../../src/core/cert.ts';
import { EMPTY_TIP } from '../../src/core/chain.ts';
import { HLC_ZERO } from '../../src/core/hlc.ts';
import type { DeviceSigner } from '../../src/core/keys.ts';
import type { Op } from '../../src/core/op.ts';
import { admitted, cleanupFor, expectDropped, freshKey, HostilePeer, LogWriter, sleep, TestTeam, waitUntil, type Cleanup } from './hostile-peer.ts';

const DAY = 24 * 3600 * 1000;

async function setup(cleanup: Cleanup) {
  const team = await TestTeam.start(cleanup);
  const peer = await HostilePeer.create(cleanup);
  return { team, peer };
}

/** A certificate body for the hostile device in A's team, valid now, with overrides. */
function body(team: TestTeam, peer: HostilePeer, over: Partial<CertBody> = {}): Omit<CertBody, 'issuer'> {
  const now = Date.now();
  return { team: team.team, device: peer.device, user: 'mallory', role: 'field', issuedMs: now - 60_000, expiresMs: now + DAY, ...over };
}

/** HQ's revocation of `target` after `afterSeq`, as HQ's op at seq 1 (HQ has written nothing else here). */
function revocation(team: TestTeam, target: string, afterSeq: number): Op {
  return authorOp({ signer: team.hq, team: team.team, user: 'boss' }, { tip: EMPTY_TIP, clock: HLC_ZERO }, Date.now(), { type: 'revoke', target, afterSeq, reason: 'device lost' }).op;
}

/** Opens a stream, sends hello with `cert`, expects the drop. */
async function helloWith(team: TestTeam, peer: HostilePeer, cert: Uint8Array, codes: string[], tag: string, { keptOut = true } = {}): Promise<void> {
  const session = await peer.open(team.addressA);
  const before = await team.before();
  await session.sendHello({ team: team.team, hq: team.hq.device, cert });
  await expectDropped(team, peer, session, { codes, before, tag, readmitWith: team.certify(peer.device).bytes });
  if (keptOut) expect(team.a.certificates().some((c) => Buffer.from(c).equals(Buffer.from(cert))), 'A stored the refused certificate').toBe(false);
}

describe.concurrent('hostile certificates at hello: A drops the peer, stores nothing, backs off, keeps serving B', () => {
  /** Each case builds the certificate the hostile peer presents, and names the rule A must apply. */
  const cases: { name: string; codes: string[]; cert: (team: TestTeam, peer: HostilePeer) => Promise<Uint8Array> | Uint8Array }[] = [
    { name: "issued by another team's HQ", codes: ['CERT_WRONG_TEAM'], cert: async (team, peer) => issueCertificate(body(team, peer, { team: 'other-team' }), (await freshKey()).signer).bytes },
    { name: 'signed by our HQ but for another team', codes: ['CERT_WRONG_TEAM'], cert: (team, peer) => team.certify(peer.device, { team: 'other-team' }).bytes },
    { name: 'self-issued', codes: ['CERT_WRONG_TEAM'], cert: (team, peer) => issueCertificate(body(team, peer), peer.signer).bytes },
    { name: 'claiming the server role', codes: ['CERT_WRONG_TEAM'], cert: (team, peer) => team.certify(peer.device, { role: 'server' }).bytes },
    { name: 'expired', codes: ['CERT_EXPIRED'], cert: (team, peer) => team.certify(peer.device, { issuedMs: Date.now() - 30 * DAY, expiresMs: Date.now() - DAY }).bytes },
    { name: 'not valid yet', codes: ['CERT_NOT_YET_VALID'], cert: (team, peer) => team.certify(peer.device, { issuedMs: Date.now() + DAY, expiresMs: Date.now() + 30 * DAY }).bytes },
    {
      name: "naming our HQ as issuer, signed with the peer's own key",
      codes: ['BAD_CERT_SIGNATURE'],
      cert: (team, peer) => issueCertificate(body(team, peer), { device: team.hq.device, publicKey: peer.signer.publicKey, sign: (m) => peer.signer.sign(m) } satisfies DeviceSigner).bytes,
    },
    { name: 'that is garbage', codes: ['DECODE'], cert: () => new TextEncoder().encode('trust me, I am enrolled') },
  ];

  it.for(cases)('a certificate $name ($codes)', async ({ codes, cert, name }, ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer } = await setup(cleanup);
    await helloWith(team, peer, await cert(team, peer), codes, name.replace(/\W+/g, '-'));
  });

  it("honest B's genuine certificate over the hostile peer's connection (WRONG_PEER): B is not blamed", async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer } = await setup(cleanup);
    await helloWith(team, peer, team.b.certificate!.bytes, ['WRONG_PEER'], 'wrong-peer', { keptOut: false });
    expect(team.eventsA.filter((e) => e.device === team.b.device && e.kind === 'peer:closed')).toEqual([]);
  });

  it('a certs frame relaying a certificate of another team (CERT_WRONG_TEAM), after admission', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer } = await setup(cleanup);
    const { session, cert } = await admitted(team, peer);
    const stranger = await freshKey();
    const foreign = issueCertificate({ ...body(team, peer, { team: 'other-team' }), device: stranger.signer.device }, (await freshKey()).signer);
    const before = await team.before();
    await session.send({ type: 'certs', certs: [team.b.certificate!.bytes, foreign.bytes] });
    await expectDropped(team, peer, session, { codes: ['CERT_WRONG_TEAM'], before, tag: 'relay-foreign', readmitWith: cert.bytes });
    expect(team.a.isEnrolled(stranger.signer.device)).toBe(false);
  });
});

describe.concurrent('hostile revoked device', () => {
  it('is refused at hello on a surviving connection (CERT_REVOKED) and by the gater on new ones, also after the back-off', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer } = await setup(cleanup);
    const { session, cert } = await admitted(team, peer);
    const log = new LogWriter(peer.signer, team.team);
    const [op1, op2] = [log.create('before-revoke', { v: 1 }), log.create('after-revoke', { v: 2 })];
    await session.send({ type: 'ops', device: peer.device, ops: [op1!.bytes] });
    await waitUntil(() => team.b.versionVector()[peer.device] === 1, 'B to get op 1 through A', 5000);
    // Leave politely: A closes the stream without blame and keeps the connection.
    await session.send({ type: 'goodbye', code: 'BYE', message: 'see you' });
    await session.waitEnded(3000);
    await waitUntil(() => !team.a.peers().some((p) => p.device === peer.device), 'A to let the hostile peer go', 3000);

    await team.a.ingest([revocation(team, peer.device, 1).bytes]);
    expect(team.a.isRevoked(peer.device)).toBe(true);
    await waitUntil(() => team.b.isRevoked(peer.device), 'the revocation to reach B through the mesh', 5000);
    const before = await team.before();

    // A stream on the connection that is still open, if A kept it: refused at hello.
    let second;
    try {
      second = peer.connectionsTo(team.a.device).length > 0 ? await peer.open(team.addressA) : undefined;
    } catch {
      second = undefined;
    }
    if (second !== undefined) {
      await second.sendHello({ team: team.team, hq: team.hq.device, cert: cert.bytes }).catch(() => undefined);
      await second.waitEnded(3000);
      await sleep(100);
      expect(team.a.peers().some((p) => p.device === peer.device)).toBe(false);
      expect(second.frames.some((f) => f.type === 'ops' || f.type === 'certs'), 'A sent data to a revoked device').toBe(false);
      const event = team.eventsA.slice(before.eventsAt).find((e) => e.kind === 'peer:closed' && e.code === 'CERT_REVOKED');
      team.expect.soft(event, `A should emit peer:closed CERT_REVOKED with blame; events: ${JSON.stringify(team.eventsA.slice(before.eventsAt))}`).toMatchObject({ blame: true, byPeer: false });
    }
    await peer.hangUp(team.a.device);

    // New connections: refused by the gater, now and after any back-off.
    expect((await peer.isAccepted(team.addressA, 2000)).accepted).toBe(false);
    await sleep(team.penaltyMs + 150);
    expect((await peer.isAccepted(team.addressA, 2000)).accepted).toBe(false);

    // Its ops past the revocation are refused wherever they come from.
    expect((await team.b.ingest([op2!.bytes])).refused).toBe(1);
    expect(team.b.versionVector()[peer.device]).toBe(1);
    expect(await team.fingerprint()).toEqual(before.fingerprint);
    expect((await team.a.verify()).problems).toEqual([]);
    await team.stillServesHonestPeers('revoked');
  });

  it('is disconnected when the revocation arrives while it is syncing, and is sent nothing written afterwards', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const { team, peer } = await setup(cleanup);
    const { session } = await admitted(team, peer);
    await team.b.ingest([revocation(team, peer.device, 0).bytes]);
    await waitUntil(() => team.a.isRevoked(peer.device), 'the revocation to reach A through the mesh', 5000);
    await team.a.mutate({ type: 'create', domain: 'case', entity: 'written-after-revocation', fields: { secret: 'field notes' } });
    await sleep(500);
    const leaked = session.frames.some((f) => f.type === 'ops' && f.device === team.a.device && f.ops.some((b) => new TextDecoder().decode(b).includes('written-after-revocation')));
    team.expect.soft(session.endedAs, 'A kept syncing with a device HQ revoked').not.toBeNull();
    team.expect.soft(team.a.peers().some((p) => p.device === peer.device), 'A still lists the revoked device as a peer').toBe(false);
    expect(leaked, 'A pushed an op written after the revocation to the revoked device').toBe(false);
    await team.stillServesHonestPeers('revoked-live');
  });
});
