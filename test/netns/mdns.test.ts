/**
 * Testing level 4 (DESIGN.md): real `fieldmesh` processes, each in its own Linux network
 * namespace, plugged into one virtual switch (a bridge inside a namespace of its own). They are
 * given no peer addresses: they must find each other by real mDNS, sync, and converge; then one
 * device's cable is cut, everyone writes, the cable comes back and the device catches up; then the
 * same device's link goes silent and comes back lossy and slow (tc netem), and it catches up again.
 *
 * Nothing touches the root namespace: every namespace, veth and bridge is created by the lab and
 * removed after the run (also on failure and on SIGINT/SIGTERM, see harness.ts), and mDNS only
 * ever runs inside the lab's namespaces, on 10.77.0.0/24.
 *
 * Needs root and iproute2: without them it skips, saying why, except in CI (env CI set), where it fails.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Fieldmesh, NETNS_PROBLEM, SKIP_NETNS, control, skipWhen, sortedLogs, type Peer, type Status } from './fieldmesh.ts';
import { Lab, type Link, type Namespace, type Proc, netemUnavailable, sweepStaleNamespaces, until } from './harness.ts';

const LISTEN = '/ip4/0.0.0.0/tcp/4001';
const SUBNET = '10.77.0';
const DEVICES = 3;

interface Device {
  readonly name: string;
  readonly dir: string;
  readonly ns: Namespace;
  readonly link: Link;
  proc: Proc;
  id: string;
  /** Ops this device has written. */
  written: number;
}

describe.skipIf(SKIP_NETNS)('fieldmesh in network namespaces: mDNS discovery, sync, link cut', () => {
  let lab: Lab | undefined;
  let fm: Fieldmesh;
  const devices: Device[] = [];

  /**
   * Writes an evidence entity on a running device: with the `fieldmesh put` command run inside the
   * device's namespace (which reaches the node through its control socket), or, `direct`, with the
   * same request sent straight to the control socket (the CLI takes seconds to start on a loaded
   * machine, so only some writes go through it).
   */
  const put = async (d: Device, entity: string, fields: Record<string, string | number>, via: 'cli' | 'direct' = 'cli') => {
    const result =
      via === 'cli'
        ? await fm.cli<{ seq: number }>(d.dir, ['put', 'evidence', entity, ...Object.entries(fields).map(([k, v]) => `${k}=${v}`)], d.ns)
        : await control<{ seq: number }>(d.dir, 'put', { domain: 'evidence', entity, fields, type: 'update' });
    d.written += 1;
    expect(result.seq).toBe(d.written);
  };

  const dump = async (among: readonly Device[] = devices) => {
    const parts: string[] = [];
    for (const d of among) {
      const status = await control<Status>(d.dir, 'status').catch((e: Error) => e.message);
      const peers = await control<Peer[]>(d.dir, 'peers').catch((e: Error) => e.message);
      parts.push(`== ${d.name} ${d.id}\nstatus ${JSON.stringify(status)}\npeers ${JSON.stringify(peers)}\n${d.proc.describe(20)}`);
    }
    return parts.join('\n');
  };

  /** Polls until every device syncs with every other one (`peers` lists them all). */
  const fullMesh = (timeoutMs = 30_000) =>
    until(
      async () => {
        const lists = await Promise.all(devices.map((d) => control<Peer[]>(d.dir, 'peers')));
        const complete = devices.every((d, i) => {
          const have = lists[i]!.map((p) => p.device).sort();
          return JSON.stringify(have) === JSON.stringify(devices.filter((o) => o !== d).map((o) => o.id).sort());
        });
        return complete ? lists : undefined;
      },
      { timeoutMs, intervalMs: 500, describe: () => dump() },
    );

  /**
   * Polls until every device in `among` holds exactly the ops written by every device in `writers`
   * (when `writers` is a subset, other devices' logs are not compared), with one state hash and
   * the same per-device counts.
   */
  const converged = (among: readonly Device[], writers: readonly Device[] = devices, timeoutMs = 60_000) =>
    until(
      async () => {
        const statuses = await Promise.all(among.map((d) => control<Status>(d.dir, 'status')));
        const first = statuses[0]!;
        const expected = writers.filter((w) => w.written > 0).map((w) => ({ device: w.id, lastSeq: w.written })).sort((a, b) => a.device.localeCompare(b.device));
        const ids = new Set(expected.map((e) => e.device));
        for (const s of statuses) {
          const have = sortedLogs(s)
            .filter((x) => writers.length === devices.length || ids.has(x.device))
            .map((x) => ({ device: x.device, lastSeq: x.lastSeq }));
          if (JSON.stringify(have) !== JSON.stringify(expected)) return undefined;
          if (s.stateHash !== first.stateHash || JSON.stringify(sortedLogs(s)) !== JSON.stringify(sortedLogs(first))) return undefined;
          // `status` reads its parts one after the other, not as one snapshot: an op landing in
          // between shows in `devices` but not yet in `counts`. Poll until they agree.
          const total = (counts: Record<string, number>) => Object.values(counts).reduce((x, y) => x + y, 0);
          if (total(s.counts) !== s.devices.reduce((n, x) => n + total(x.counts), 0) || JSON.stringify(s.counts) !== JSON.stringify(first.counts)) return undefined;
        }
        return statuses;
      },
      { timeoutMs, intervalMs: 500, describe: () => dump(among) },
    );

  beforeAll(async () => {
    if (NETNS_PROBLEM !== null) throw new Error(`the network-namespace tests (test/netns) must run as root with iproute2 installed in CI: ${NETNS_PROBLEM}`);
    await sweepStaleNamespaces();
    lab = new Lab();
    fm = new Fieldmesh(lab);
    const tmp = lab.tempDir();
    const hq = join(tmp, 'hq');
    await fm.cli(hq, ['init', '--team', 'T', '--user', 'boss']);
    const dirs: string[] = [];
    for (let i = 1; i <= DEVICES; i++) {
      const dir = join(tmp, `f${i}`);
      // One at a time: enroll opens HQ's data dir.
      await fm.cli(dir, ['enroll', '--hq', hq, '--user', `u${i}`]);
      dirs.push(dir);
    }

    const lan = await lab.switch('lan');
    for (let i = 1; i <= DEVICES; i++) {
      const ns = await lab.host(`f${i}`);
      const link = await lab.attach(ns, lan, { address: `${SUBNET}.${i + 1}/24` });
      devices.push({ name: `f${i}`, dir: dirs[i - 1]!, ns, link, proc: undefined as unknown as Proc, id: '', written: 0 });
    }
    // No --peer, no --hq: the only way to find each other is mDNS on the lab's LAN.
    for (const d of devices) d.proc = fm.spawn(d.name, d.dir, d.ns, ['--mdns', '--listen', LISTEN]);
    for (const d of devices) {
      const started = await d.proc.waitForJson<{ event: string; device: string; addresses: string[] }>((e) => e.event === 'started', 30_000);
      d.id = started.device;
      expect(started.addresses).toContain(`/ip4/${d.link.ip}/tcp/4001/p2p/${d.id}`);
    }
  }, 120_000);

  afterAll(async () => {
    await lab?.teardown();
  }, 30_000);

  it('finds the other devices by mDNS and converges on the same state', async () => {
    // A few distinct entities per device, written through each running node's control socket.
    await Promise.all(
      devices.map(async (d, i) => {
        for (let k = 1; k <= 3; k++) await put(d, `ev-${d.name}-${k}`, { title: `item ${k} of ${d.name}`, by: `u${i + 1}`, n: k }, k === 1 ? 'cli' : 'direct');
      }),
    );
    expect(devices.map((d) => d.written)).toEqual([3, 3, 3]);

    const statuses = await converged(devices);
    for (const s of statuses) {
      // No HQ here: everything stays pending.
      expect(s.counts, JSON.stringify(statuses)).toEqual({ pending: 9, synced: 0, failed: 0, conflict: 0 });
      expect(s.devices).toHaveLength(DEVICES);
    }

    // Every pair found each other (not only enough of them to relay everything).
    await fullMesh();
    // The same through the CLI: `status --json` agrees everywhere, `peers --json` lists the two others, found on the LAN.
    const [viaCli, peersViaCli, seen] = await Promise.all([
      Promise.all(devices.map((d) => fm.cli<Status>(d.dir, ['status'], d.ns))),
      Promise.all(devices.map((d) => fm.cli<Peer[]>(d.dir, ['peers'], d.ns))),
      control<{ fields: Record<string, unknown> }>(devices[2]!.dir, 'get', { domain: 'evidence', entity: 'ev-f1-2' }),
    ]);
    expect(new Set(viaCli.map((s) => s.stateHash)).size).toBe(1);
    expect(viaCli.map((s) => JSON.stringify(sortedLogs(s)))).toEqual(Array(DEVICES).fill(JSON.stringify(sortedLogs(viaCli[0]!))));
    devices.forEach((d, i) => {
      const peers = peersViaCli[i]!;
      expect(peers.map((p) => p.device).sort()).toEqual(devices.filter((o) => o !== d).map((o) => o.id).sort());
      for (const p of peers) expect(p.address).toMatch(new RegExp(`^/ip4/${SUBNET.replaceAll('.', '\\.')}\\.\\d+/tcp/`));
    });
    expect(seen.fields).toMatchObject({ title: 'item 2 of f1', by: 'u1', n: 2 });
  }, 120_000);

  it('a device whose link is cut keeps working offline and catches up when the link is back', async () => {
    const [a, b, c] = devices as [Device, Device, Device];
    const before = (await control<Status>(c.dir, 'status')).stateHash;
    const cutAt = Date.now();
    await c.link.cut();
    try {
      // Everyone writes while c is cut off, including concurrent edits of one shared entity.
      await Promise.all([
        (async () => {
          await put(c, 'ev-offline', { title: 'written offline', by: 'u3' });
          await put(c, 'ev-f1-1', { note: 'c was here' }, 'direct');
        })(),
        put(a, 'ev-f1-1', { title: 'renamed by f1' }, 'direct'),
        put(b, 'ev-f2-9', { title: 'new on f2', by: 'u2' }, 'direct'),
      ]);
      // a and b still reach each other and converge without c; c has only its own news.
      const ab = await converged([a, b], [a, b], 30_000);
      const cNow = await control<Status>(c.dir, 'status');
      expect(cNow.stateHash).not.toBe(ab[0]!.stateHash);
      expect(cNow.stateHash).not.toBe(before);
      expect(cNow.devices.find((x) => x.device === a.id)?.lastSeq).toBe(3);
      expect(ab[0]!.devices.find((x) => x.device === c.id)?.lastSeq).toBe(3);
      // Keep the cable out until every side has given the old connections up (libp2p's connection
      // monitor notices the dead link within seconds): c must then be found again by mDNS and
      // reconnected, not merely have its TCP retransmissions go through after a short blip.
      await until(
        async () => {
          const [pa, pb, pc] = await Promise.all([a, b, c].map((d) => control<Peer[]>(d.dir, 'peers')));
          const gone = pc!.length === 0 && !pa!.some((p) => p.device === c.id) && !pb!.some((p) => p.device === c.id);
          return gone ? true : undefined;
        },
        { timeoutMs: 40_000, intervalMs: 500, describe: () => dump() },
      );
    } finally {
      await c.link.restore();
    }
    const restoredAt = Date.now();

    const statuses = await converged(devices, devices, 45_000).catch((err: Error) => {
      err.message = `cut at ${new Date(cutAt).toISOString().slice(11, 23)}, restored at ${new Date(restoredAt).toISOString().slice(11, 23)}: ${err.message}`;
      throw err;
    });
    expect(statuses[0]!.counts, JSON.stringify(statuses)).toEqual({ pending: 9 + 4, synced: 0, failed: 0, conflict: 0 });
    // Concurrent writes to different fields of ev-f1-1 both survive (merge strategy), on every device.
    for (const d of devices) {
      const merged = await control<{ fields: Record<string, unknown> }>(d.dir, 'get', { domain: 'evidence', entity: 'ev-f1-1' });
      expect(merged.fields).toMatchObject({ title: 'renamed by f1', note: 'c was here', by: 'u1' });
    }
    // And c is back among everyone's peers, found again by mDNS.
    await fullMesh();
  }, 120_000);

  it('a device whose link goes silent (tc netem), then lossy and slow, catches up over the bad link', async (ctx) => {
    skipWhen(ctx, await netemUnavailable());
    const [a, b, c] = devices as [Device, Device, Device];
    const total = () => devices.reduce((n, d) => n + d.written, 0);
    try {
      // Every packet lost both ways, carrier up: unlike a pulled cable, nothing tells either side.
      await c.link.impair({ lossPercent: 100 });
      await Promise.all([put(c, 'ev-silent-c', { title: 'unheard' }, 'direct'), put(a, 'ev-silent-a', { title: 'not heard by f3' }, 'direct')]);
      await converged([a, b], [a, b], 30_000);
      expect((await control<Status>(c.dir, 'status')).devices.find((x) => x.device === a.id)?.lastSeq).toBe(a.written - 1);
      // The link comes back bad: a tenth of the packets lost, 150 ± 50 ms each way.
      await c.link.impair({ delayMs: 150, jitterMs: 50, lossPercent: 10 });
      await put(b, 'ev-lossy-b', { title: 'sent over a bad link' }, 'direct');
      const statuses = await converged(devices, devices, 60_000);
      expect(statuses[0]!.counts, JSON.stringify(statuses)).toEqual({ pending: total(), synced: 0, failed: 0, conflict: 0 });
    } finally {
      await c.link.clearImpairment();
    }
  }, 120_000);

  it('every node stops cleanly on SIGTERM', async () => {
    await Promise.all(devices.map((d) => d.proc.stop('SIGTERM', 10_000)));
    for (const d of devices) {
      expect(d.proc.exitStatus, d.proc.describe()).toEqual({ code: 0, signal: null });
      expect(d.proc.jsonLines<{ event: string }>().at(-1)?.event).toBe('stopped');
    }
  }, 30_000);
});
