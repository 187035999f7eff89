/**
 * A hostile peer that floods an honest node: ops frames beyond the flow-control window, frame by
 * frame or in one burst, and frames the ops window does not cover (certificates). The honest node
 * must keep no more than its window, stay bounded in memory, blame and back off the flooder, never
 * drop a peer that keeps within its credit, and keep serving honest B. Also: stopping nodes with
 * live sessions must not leave unhandled promise rejections (Node's default makes them fatal).
 * The memory and shutdown checks run alone, after the concurrent ones (no other test's allocations).
 */
import { describe, expect, it } from 'vitest';
import { encodeFrame } from '../../src/core/sync/frames.ts';
import { MIN_FRAME_BYTES } from '../../src/core/sync/session.ts';
import { admitted, cleanupFor, concat, expectDropped, HostilePeer, lengthPrefixed, LogWriter, retainedBytes, sleep, TestTeam, waitUntil } from './hostile-peer.ts';

/** A's frame limit in these tests: the smallest allowed, rounded up to 64 KiB. */
const MAX_FRAME = Math.ceil(MIN_FRAME_BYTES / 65536) * 65536;
const WINDOW = 2 * MAX_FRAME;
const SMALL = { maxFrameBytes: MAX_FRAME, windowBytes: WINDOW };
const MiB = 1024 * 1024;

/** `n` ops of the hostile's log, each about 50 KB, one per ops frame (frame payloads, unprefixed). */
function bigOpFrames(log: LogWriter, n: number): Uint8Array[] {
  return Array.from({ length: n }, (_, i) => encodeFrame({ type: 'ops', device: log.device, ops: [log.create(`big${i}`, { blob: 'x'.repeat(50_000) }).bytes] }));
}

/** What A may keep of a flood: a prefix of the hostile's log that fit in the window, nothing else. */
async function expectOnlyWindowKept(team: TestTeam, device: string, before: Awaited<ReturnType<TestTeam['before']>>, frameBytes: number): Promise<void> {
  const vv = team.a.versionVector();
  const kept = vv[device] ?? 0;
  expect(kept, 'A stored more of the flood than its window holds').toBeLessThanOrEqual(Math.floor(WINDOW / frameBytes));
  const { [device]: _, ...others } = vv;
  expect(others).toEqual(before.fingerprint.vv);
  expect((await team.a.verify()).problems).toEqual([]);
}

describe.concurrent('hostile floods', () => {
  it('ops frames beyond the flow-control window, sent without waiting for credit (FLOW_CONTROL)', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const team = await TestTeam.start(cleanup, { limits: SMALL });
    const peer = await HostilePeer.create(cleanup);
    const { session, cert } = await admitted(team, peer);
    const frames = bigOpFrames(new LogWriter(peer.signer, team.team), 64);
    const before = await team.before();
    let sent = 0;
    for (const frame of frames) {
      if (session.endedAs !== null) break;
      try {
        await session.sendPayload(frame);
      } catch {
        break;
      }
      sent++;
    }
    await session.waitEnded(3000);
    await expectOnlyWindowKept(team, peer.device, before, frames[0]!.length);
    await expectDropped(team, peer, session, { codes: ['FLOW_CONTROL'], before, tag: 'flood', readmitWith: cert.bytes, unchanged: false });
  });

  it('the same flood in one write (one burst past the read buffer) is blamed and backed off too', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const team = await TestTeam.start(cleanup, { limits: SMALL });
    const peer = await HostilePeer.create(cleanup);
    const { session, cert } = await admitted(team, peer);
    const frames = bigOpFrames(new LogWriter(peer.signer, team.team), 64);
    const before = await team.before();
    await session.sendRaw(concat(frames.map(lengthPrefixed))).catch(() => undefined);
    await session.waitEnded(3000);
    await sleep(100);
    await expectOnlyWindowKept(team, peer.device, before, frames[0]!.length);
    await expectDropped(team, peer, session, { codes: [], before, tag: 'burst', readmitWith: cert.bytes, unchanged: false });
  });

  it('a peer that keeps within its credit is served even when its frames arrive in one burst', async (ctx) => {
    // A grants a window of 8 frames (allowed: window >= maxFrameBytes), and its read buffer holds 2.
    const cleanup = cleanupFor(ctx);
    const team = await TestTeam.start(cleanup, { limits: { maxFrameBytes: MAX_FRAME, windowBytes: 8 * MAX_FRAME } });
    const peer = await HostilePeer.create(cleanup);
    const { session } = await admitted(team, peer);
    const hello = session.hello!;
    const frames = bigOpFrames(new LogWriter(peer.signer, team.team), 28);
    const total = frames.reduce((n, f) => n + f.length, 0);
    expect(total, 'the burst must stay within the credit A granted').toBeLessThanOrEqual(hello.windowBytes);
    await session.sendRaw(concat(frames.map(lengthPrefixed)));
    await waitUntil(() => team.a.versionVector()[peer.device] === frames.length || session.endedAs !== null, 'A to store the burst (or drop us)', 15_000);
    expect(session.endedAs, `A dropped a peer that stayed within its credit; A's events: ${JSON.stringify(team.eventsA.filter((e) => e.kind === 'peer:closed'))}`).toBeNull();
    expect(team.a.versionVector()[peer.device]).toBe(frames.length);
    await team.stillServesHonestPeers('credit-burst');
  });
});

describe('hostile floods outside the ops window', () => {
  it('a flood of certs frames (not covered by the ops window) does not grow memory without bound', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const team = await TestTeam.start(cleanup);
    const peer = await HostilePeer.create(cleanup);
    const { session, cert } = await admitted(team, peer);
    // Two genuine certificates of the hostile device (a renewal), alternating: each frame is news to A.
    const renewal = team.certify(peer.device, { user: 'mallory-renewed' });
    const pair = concat([lengthPrefixed(encodeFrame({ type: 'certs', certs: [cert.bytes] })), lengthPrefixed(encodeFrame({ type: 'certs', certs: [renewal.bytes] }))]);
    const burst = concat(Array.from({ length: 100 }, () => pair)); // 200 frames, ~45 KB
    const base = retainedBytes();
    const wire = 12 * MiB;
    let sent = 0;
    const deadline = Date.now() + 6000;
    while (sent < wire && session.endedAs === null && Date.now() < deadline) {
      await session.sendRaw(burst).catch(() => undefined);
      sent += burst.length;
      if ((sent / burst.length) % 20 === 0) await sleep(0);
    }
    const grown = retainedBytes() - base;
    const dropped = session.endedAs !== null;
    // Bounded: A hung up on the flooder, or holds no more than its buffers (yamux window, read buffer, sync window).
    expect(dropped || grown < 24 * MiB, `A retained ${(grown / MiB).toFixed(1)} MiB more after ${(sent / MiB).toFixed(1)} MiB of certs frames and kept reading`).toBe(true);
    // Leave (A drops whatever it still queued for us), then B must still be served.
    session.abort();
    await waitUntil(() => !team.a.peers().some((p) => p.device === peer.device), 'A to let the flooder go', 5000);
    await team.stillServesHonestPeers('certs-flood');
  });
});

describe('shutdown with live sessions', () => {
  it('stopping the honest nodes while they sync leaves no unhandled promise rejection', async (ctx) => {
    const cleanup = cleanupFor(ctx);
    const team = await TestTeam.start(cleanup);
    const peer = await HostilePeer.create(cleanup);
    await admitted(team, peer);
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      await team.b.mutate({ type: 'create', domain: 'case', entity: 'last-words', fields: { v: 1 } });
      await team.b.stop();
      await team.a.stop();
      await sleep(300);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
    expect(unhandled.map((r) => (r as { constructor?: { name?: string } })?.constructor?.name ?? String(r))).toEqual([]);
  });
});
