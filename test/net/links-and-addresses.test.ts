/**
 * The mesh's addresses and links with real FieldNodes on loopback: bad listen and peer addresses
 * are refused by `start` (typed, naming the address) instead of crashing a redial timer later; a
 * port that is taken gives its errno code; and a static peer given without /p2p/<id> (as
 * `fieldmesh start --hq /ip4/127.0.0.1/tcp/4001` does) shows as up once its session is, and is
 * not dialled again while it stays up.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { join } from 'node:path';
import { generateKeyPair, privateKeyToProtobuf } from '@libp2p/crypto/keys';
import type { Ed25519PrivateKey } from '@libp2p/interface';
import { afterEach, describe, expect, it } from 'vitest';
import { FieldmeshError, InvalidInputError } from '../../src/core/errors.ts';
import { deviceIdFromPublicKey } from '../../src/core/keys.ts';
import { Mesh } from '../../src/net/mesh.ts';
import { DEVICE_KEY_FILE } from '../../src/node/device-key.ts';
import type { FieldNode } from '../../src/node/field-node.ts';
import { LOOPBACK, sleep, useLoopback, waitFor } from './helpers.ts';

const DOMAINS = { case: 'merge' } as const;
const lb = useLoopback();

const servers: Server[] = [];
afterEach(async () => {
  for (const server of servers.splice(0)) await new Promise<void>((done) => server.close(() => done()));
});

/** Awaits `promise`, which must reject with a FieldmeshError of class `cls` and `code`; returns it. */
async function rejection<E extends FieldmeshError>(promise: Promise<unknown>, cls: abstract new (...args: never[]) => E, code: string): Promise<E> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, 'expected a rejection').toBeInstanceOf(cls);
  expect((err as E).code, (err as Error).message).toBe(code);
  return err as E;
}

describe('addresses given to start', () => {
  const BAD_PEERS = [
    'not-a-multiaddr',
    '/ip4/127.0.0.1/tcp/99999',
    '/ip4/127.0.0.1',
    '/ip4/127.0.0.1/tcp/4001/p2p/not-a-peer-id',
    '/ip4/127.0.0.1/tcp/4001/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N',
  ];

  it('refuses every malformed peer or listen address up front (BAD_MULTIADDR naming it); nothing is left running', async () => {
    const team = await lb.team(DOMAINS);
    const node = await team.node('alice');
    for (const address of BAD_PEERS) {
      const err = await rejection(node.start({ ...LOOPBACK, peers: ['/ip4/127.0.0.1/tcp/4001', address] }), InvalidInputError, 'BAD_MULTIADDR');
      expect(err.details).toMatchObject({ address, what: 'peer' });
      expect(err.message).toContain(JSON.stringify(address));
      expect(() => new Mesh(node, { peers: [address] })).toThrow(InvalidInputError);
    }
    for (const address of ['/ip4/127.0.0.1', 'junk', `/ip4/127.0.0.1/tcp/0/p2p/${node.device}`]) {
      const err = await rejection(node.start({ ...LOOPBACK, listen: [address] }), InvalidInputError, 'BAD_MULTIADDR');
      expect(err.details).toMatchObject({ address, what: 'listen' });
    }
    expect(node.addresses()).toEqual([]);
    expect(node.links()).toEqual([]);

    // The node starts normally afterwards, and its links list every peer as given.
    const hq = await team.hq();
    await hq.start(LOOPBACK);
    await node.start({ ...LOOPBACK, peers: hq.addresses() });
    await waitFor('the link to HQ', () => node.links()[0]?.connected === true);
  });

  it('gives the errno code of a listen address that is taken (FieldmeshError EADDRINUSE), and can start again on another', async () => {
    const server = createServer();
    servers.push(server);
    await new Promise<void>((done) => server.listen({ host: '127.0.0.1', port: 0 }, () => done()));
    const address = `/ip4/127.0.0.1/tcp/${(server.address() as AddressInfo).port}`;
    const team = await lb.team(DOMAINS);
    const hq = await team.hq();
    const err = await rejection(hq.start({ ...LOOPBACK, listen: [address] }), FieldmeshError, 'EADDRINUSE');
    expect(err.details).toMatchObject({ address });
    expect(err.message).toBe(`cannot listen on ${address}: address already in use`);
    await hq.start(LOOPBACK);
    expect(hq.addresses()).toHaveLength(1);
  });
});

/**
 * Two field devices, one with a PeerId below HQ's and one above (so each side opens the session
 * once). Their keys are drawn beforehand and placed in their data dirs, where enrollment finds them.
 */
async function bothSides(team: Awaited<ReturnType<typeof lb.team>>): Promise<FieldNode[]> {
  const keys: { below?: Ed25519PrivateKey; above?: Ed25519PrivateKey } = {};
  for (let i = 0; i < 100_000 && (keys.below === undefined || keys.above === undefined); i++) {
    const key = await generateKeyPair('Ed25519');
    if (deviceIdFromPublicKey(key.publicKey.raw) < team.hqDevice) keys.below ??= key;
    else keys.above ??= key;
  }
  if (keys.below === undefined || keys.above === undefined) throw new Error('no key on one side of HQ in 100,000 draws');
  const nodes: FieldNode[] = [];
  for (const [id, key] of [['below', keys.below], ['above', keys.above]] as const) {
    await mkdir(join(team.root, id));
    await writeFile(join(team.root, id, DEVICE_KEY_FILE), privateKeyToProtobuf(key), { mode: 0o600 });
    nodes.push(await team.node(id));
  }
  const [below, above] = nodes as [FieldNode, FieldNode];
  expect(below.device < team.hqDevice && above.device > team.hqDevice).toBe(true);
  return [below, above];
}

describe('a static peer given without /p2p/<id>', () => {
  it('shows as connected once the session is up, is not dialled again while up, and shows the error once down', async () => {
    const team = await lb.team(DOMAINS);
    const hq = await team.hq();
    await hq.start(LOOPBACK);
    const [withId] = hq.addresses();
    const bare = withId!.slice(0, withId!.indexOf('/p2p/'));
    expect(bare).toMatch(/^\/ip4\/127\.0\.0\.1\/tcp\/\d+$/);

    const devices = await bothSides(team);
    for (const [i, device] of devices.entries()) {
      await device.start({ ...LOOPBACK, peers: [bare], redialMinMs: 20, redialMaxMs: 100 });
      await device.mutate({ type: 'create', domain: 'case', entity: `c${i}`, fields: { n: i } });
    }
    for (const device of devices) {
      const up = await waitFor(`${device.user}'s link to HQ to show as up`, () => (device.links()[0]?.connected === true ? device.links()[0] : undefined));
      expect(up).toEqual({ address: bare, connected: true, attempts: 0, lastError: null, nextAttemptMs: null });
      expect(device.peers().map((p) => p.device)).toContain(team.hqDevice);
    }
    await waitFor('HQ to hold both cases', async () => (await hq.get('case', 'c0')) !== null && (await hq.get('case', 'c1')) !== null);

    // While the link stays up it is not dialled again: many redial periods later, still no attempt.
    for (let round = 0; round < 10; round++) {
      await sleep(100);
      for (const device of devices) expect(device.links()[0]).toEqual({ address: bare, connected: true, attempts: 0, lastError: null, nextAttemptMs: null });
    }

    // HQ goes away: the link shows as down, with its redials and why.
    await hq.stop();
    for (const device of devices) {
      const down = await waitFor(`${device.user}'s link to show as down and redialled`, () => {
        const link = device.links()[0];
        return link !== undefined && !link.connected && link.attempts >= 1 && link.lastError !== null ? link : undefined;
      });
      expect(down.address).toBe(bare);
    }
  });
});

describe('a static peer we refused', () => {
  it('shows why it was refused and when it is dialled again, rather than our own gater\'s words', async () => {
    const ours = await lb.team(DOMAINS);
    const theirs = await lb.team(DOMAINS, 'other-team');
    const foreignHq = await theirs.hq();
    // Both sides refuse the session; whichever reads the other's hello first blames. The foreign
    // HQ lets us straight back in, so our redials go on until we are the side that blamed.
    await foreignHq.start({ ...LOOPBACK, penaltyMs: 0 });
    const [withId] = foreignHq.addresses();
    const device = await ours.node('dev');
    await device.start({ ...LOOPBACK, peers: [withId!], redialMinMs: 20, redialMaxMs: 100 });
    const refused = await waitFor('the link to show the refusal', () => {
      const link = device.links()[0];
      return link?.lastError?.includes('not dialled again') === true ? link : undefined;
    });
    expect(refused.lastError).toMatch(/^session closed: WRONG_TEAM; not dialled again before \d{4}-\d\d-\d\dT/);
    expect(refused.connected).toBe(false);
    // Many redial periods later it still says so (no dial our gater refuses replaces the reason).
    await sleep(300);
    expect(device.links()[0]!.lastError).toBe(refused.lastError);
    expect(device.peers()).toEqual([]);
  });
});

describe('links to several static peers', () => {
  it('a session coming up with one peer leaves the other link\'s attempts and last error as they are', async () => {
    const team = await lb.team(DOMAINS);
    const hq = await team.hq();
    await hq.start(LOOPBACK);
    const device = await team.node('dev');
    // A port nobody listens on: every dial of it fails.
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const deadPort = (server.address() as AddressInfo).port;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    const dead = `/ip4/127.0.0.1/tcp/${deadPort}`;
    await device.start({ ...LOOPBACK, peers: [dead], redialMinMs: 20, redialMaxMs: 100 });
    const failing = await waitFor('the dead link to have failed twice', () => {
      const link = device.links().find((l) => l.address === dead);
      return link !== undefined && link.attempts >= 2 && link.lastError !== null ? link : undefined;
    });
    // Now a session comes up with HQ (dialled on demand).
    await device.dial(hq.addresses()[0]!);
    await waitFor('HQ to be admitted', () => (device.peers().some((p) => p.device === team.hqDevice) ? true : undefined));
    const after = device.links().find((l) => l.address === dead)!;
    expect(after.connected).toBe(false);
    expect(after.attempts).toBeGreaterThanOrEqual(failing.attempts);
    expect(after.lastError).not.toBeNull();
  });
});

describe('a static peer HQ revoked', () => {
  it('is not dialled, and its link says so rather than our own gater\'s words', async () => {
    const team = await lb.team(DOMAINS);
    const hq = await team.hq();
    const lost = await team.node('lost');
    const device = await team.node('dev');
    await lost.start(LOOPBACK);
    await hq.revoke(lost.device, { reason: 'lost in the river' });
    // The device learns of the revocation from a bundle of HQ's log.
    await device.importBundle(await hq.exportBundle());
    expect(device.isRevoked(lost.device)).toBe(true);
    await device.start({ ...LOOPBACK, peers: [lost.addresses()[0]!], redialMinMs: 20, redialMaxMs: 100 });
    const link = await waitFor('the link to the revoked peer to say why', () => (device.links()[0]?.lastError !== null ? device.links()[0] : undefined));
    expect(link).toEqual({ address: lost.addresses()[0], connected: false, attempts: 0, lastError: 'revoked by HQ: not dialled', nextAttemptMs: null });
    await sleep(200);
    expect(device.links()[0]).toEqual(link);
    expect(device.peers()).toEqual([]);
  });
});

describe('a device HQ revoked, dialling its peers', () => {
  it('is told why, whichever side opens the sessions: its link says CERT_REVOKED, from the live session and from later dials alike', async () => {
    const team = await lb.team(DOMAINS);
    const hq = await team.hq();
    await hq.start(LOOPBACK);
    const devices = await bothSides(team);
    for (const device of devices) {
      await device.start({ ...LOOPBACK, peers: [hq.addresses()[0]!], redialMinMs: 20, redialMaxMs: 100 });
      await waitFor(`${device.user} to sync with HQ`, () => device.peers().length === 1);
    }
    for (const device of devices) await hq.revoke(device.device, { reason: 'lost in the river' });
    for (const device of devices) {
      await waitFor(`${device.user}'s live session to end, saying why`, () => device.links()[0]?.lastError?.includes('CERT_REVOKED'), 5000);
      // Later dials (refused by HQ's gater, or at hello on a connection left open) keep saying why rather than a bare "stream ended".
      const attempts = device.links()[0]!.attempts;
      await waitFor(`more dials by ${device.user}`, () => device.links()[0]!.attempts >= attempts + 2, 5000);
      expect(device.links()[0]!.lastError, device.user).toMatch(/^(the peer closed the connection before any session: it refuses us \(HQ revoked us, or it holds a back-off after refusing us\); last )?session closed: CERT_REVOKED$/);
      expect(device.peers()).toEqual([]);
    }
  });

  it('revoked before it ever dials (HQ\'s gater refuses its connections), its link says the peer refuses it, not nothing', async () => {
    const team = await lb.team(DOMAINS);
    const hq = await team.hq();
    await hq.start(LOOPBACK);
    const devices = await bothSides(team);
    for (const device of devices) await hq.revoke(device.device, { reason: 'lost in the river' });
    for (const device of devices) {
      await device.start({ ...LOOPBACK, peers: [hq.addresses()[0]!], redialMinMs: 20, redialMaxMs: 100 });
      const link = await waitFor(`${device.user}'s link to say why`, () => (device.links()[0]?.lastError !== null ? device.links()[0] : undefined), 5000);
      expect(link.lastError, device.user).toBe('the peer closed the connection before any session: it refuses us (HQ revoked us, or it holds a back-off after refusing us)');
      expect(link.connected).toBe(false);
      expect(device.peers()).toEqual([]);
    }
  });
});
