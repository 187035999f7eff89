/**
 * Certificates learned outside a session (a bundle) reach live peers before the ops that need
 * them, and a device whose clock was set back still admits honest peers. Either mistake makes a
 * node refuse, and blame, an honest peer (both found by the simulator, src/sim).
 */
import { describe, expect, it } from 'vitest';
import { blames, converge, startMesh, useLoopback } from './helpers.ts';

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
});
