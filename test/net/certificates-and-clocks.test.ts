/**
 * Certificates learned outside a session (a bundle) reach live peers before the ops that need
 * them, and a device whose clock was set back still admits honest peers. Either mistake makes a
 * node refuse, and blame, an honest peer (both found by the simulator, src/sim). A session lasts
 * only as long as the peer's certificate.
 */
import { describe, expect, it } from 'vitest';
import type { MeshEvent } from '../../src/net/mesh.ts';
import { blames, converge, startMesh, useLoopback, waitFor } from './helpers.ts';

const lb = useLoopback();
const DOMAINS = { note: 'merge' } as const;
const DAY = 86_400_000;

describe('certificates outside sessions, clocks set back', () => {
  it("a bundle's certificates go to live peers ahead of its ops", async () => {
    const team = await lb.team(DOMAINS);
    const b = await team.node('bob');
    const c = await team.node('carol');
    await startMesh(b);
    await startMesh(c, [b]);
    const blamedByB = blames(b);
    const blamedByC = blames(c);
    // Dave works alone; his certificate and ops reach bob only by sneakernet.
    const dave = await team.node('dave');
    for (let i = 0; i < 5; i++) await dave.mutate({ type: 'create', domain: 'note', entity: `n${i}`, fields: { text: `by dave ${i}` } });
    expect(c.isEnrolled(dave.device)).toBe(false);
    await b.importBundle(await dave.exportBundle());
    await converge([b, c], 'bob and carol on dave\'s ops');
    expect(c.isEnrolled(dave.device)).toBe(true);
    expect(c.versionVector()[dave.device]).toBe(5);
    expect([...blamedByB, ...blamedByC]).toEqual([]);
  });

  it('a device whose clock was set back three days still admits its peers and syncs', async () => {
    const team = await lb.team(DOMAINS);
    const b = await team.node('bob');
    // Enrolled after bob, then its clock loses three days (a dead RTC battery, a bad NTP answer).
    const late = await team.node('erin', { node: { now: () => Date.now() - 3 * DAY } });
    await late.mutate({ type: 'create', domain: 'note', entity: 'e1', fields: { text: 'written with an old clock' } });
    await b.mutate({ type: 'create', domain: 'note', entity: 'b1', fields: { text: 'written on time' } });
    await startMesh(b);
    const blamedByB = blames(b);
    const blamedByLate = blames(late);
    await startMesh(late, [b]);
    await converge([b, late], 'bob and the device with an old clock');
    expect(late.peers().map((p) => p.device)).toEqual([b.device]);
    expect([...blamedByB, ...blamedByLate]).toEqual([]);
  });

  it('a device whose clock ran a year ahead, then was set right, admits its peers and syncs (its own HLC is no floor for "now")', async () => {
    const team = await lb.team(DOMAINS);
    const b = await team.node('bob');
    let aheadMs = 400 * DAY;
    const fast = await team.node('frank', { node: { now: () => Date.now() + aheadMs } });
    await fast.mutate({ type: 'create', domain: 'note', entity: 'f1', fields: { text: 'written with a clock a year ahead' } });
    aheadMs = 0; // the clock is set right; the op's HLC (and our clock's high-water mark) stay a year ahead
    await b.mutate({ type: 'create', domain: 'note', entity: 'b1', fields: { text: 'written on time' } });
    await startMesh(b);
    const blamedByB = blames(b);
    const blamedByFast = blames(fast);
    await startMesh(fast, [b]);
    await converge([b, fast], 'bob and the device whose clock was set right');
    expect([...blamedByB, ...blamedByFast]).toEqual([]);
  });

  it('a peer whose certificate expires while we sync is dropped at expiry (CERT_EXPIRED) and not admitted again', async () => {
    const team = await lb.team(DOMAINS);
    let aheadMs = 0;
    const b = await team.node('bob', { node: { now: () => Date.now() + aheadMs } });
    const c = await team.node('carol');
    await c.mutate({ type: 'create', domain: 'note', entity: 'c1', fields: { text: 'before expiry' } });
    await startMesh(b, [], { certCheckMs: 50 });
    const closedOnB: MeshEvent[] = [];
    void (async () => {
      for await (const event of b.subscribe({ kinds: ['peer'] })) if (event.kind === 'peer' && event.event.kind === 'peer:closed') closedOnB.push(event.event);
    })();
    await startMesh(c, [b]);
    await converge([b, c], 'bob and carol');
    expect(b.peers().map((p) => p.device)).toEqual([c.device]);

    // Bob's clock passes the end of carol's certificate (and of bob's own, which bob does not judge).
    aheadMs = c.certificate!.expiresMs - Date.now() + DAY;
    await waitFor('bob drops carol', () => closedOnB.some((e) => e.kind === 'peer:closed' && e.device === c.device && e.code === 'CERT_EXPIRED'));
    // Carol keeps redialling; bob refuses her certificate at hello each time.
    await waitFor('carol refused at admission', () => c.links()[0]!.lastError?.includes('CERT_EXPIRED'));
    expect(b.peers()).toEqual([]);
  });
});
