/**
 * HQ behind a router; the uplink comes and goes (testing level 4 of DESIGN.md, issue 7). Real
 * `fieldmesh` processes, each in its own network namespace:
 *
 *   f1 f2 f3 ── lan (bridge, 10.77.0.0/24) ── lan0 [router] wan0 ── eth0 [hq]   (10.78.0.0/24)
 *
 * The field devices find each other by mDNS and know HQ only by its address (`--hq`), which they
 * reach through the router (their default route). The uplink is the router's HQ-side interface,
 * set down and up. The story: the field writes and converges while the uplink is down, everything
 * pending; f3 then walks out of the LAN, and the uplink comes back: the devices that reach HQ first
 * carry everyone's ops, f3's included; HQ's receipts come back to every device, f3 too once it
 * returns; the uplink goes and comes once more, and newer ops make the same trip.
 *
 * Every namespace, link and process is the lab's own and is removed after the run, also on
 * failure and interruption (harness.ts); mDNS runs only inside the lab's LAN. Skipped, with the
 * reason, where network namespaces cannot be made (not root, no iproute2).
 */
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Fieldmesh, SKIP_NETNS, admittedBy, agreement, control, describeNodes, holds, stopCleanly, type EntityView, type OpRow, type RunningNode, type Status } from './fieldmesh.ts';
import { Lab, sweepStaleNamespaces, until } from './harness.ts';

const HQ_IP = '10.78.0.2';
const HQ_LISTEN = `/ip4/${HQ_IP}/tcp/4001`;
const ROUTER_LAN_IP = '10.77.0.1';
const FIELD_DEVICES = 3;


describe.skipIf(SKIP_NETNS)('HQ behind a router, with an uplink that comes and goes', () => {
  let lab: Lab | undefined;
  afterAll(() => lab?.teardown(), 30_000);

  it("the first device to reach HQ carries everyone's ops, and HQ's receipts come back to every device", async () => {
    await sweepStaleNamespaces();
    lab = new Lab();
    const fm = new Fieldmesh(lab);
    const tmp = lab.tempDir();

    // The team: HQ's data dir, and field devices enrolled by HQ's key (no network needed).
    const hqDir = join(tmp, 'hq');
    const { device: hqDevice } = await fm.cli<{ device: string }>(hqDir, ['init', '--team', 'T', '--user', 'hq-staff']);
    const fieldDirs: string[] = [];
    for (let i = 1; i <= FIELD_DEVICES; i++) {
      fieldDirs.push(join(tmp, `f${i}`));
      await fm.cli(fieldDirs.at(-1)!, ['enroll', '--hq', hqDir, '--user', `u${i}`]); // one at a time: enroll opens HQ's data dir
    }

    const lan = await lab.switch('lan');
    const router = await lab.router('router');
    await lab.attach(router, lan, { ifname: 'lan0', address: `${ROUTER_LAN_IP}/24`, multicastRoute: false });
    const hqNs = await lab.host('hq');
    const uplink = await lab.veth({ ns: router, ifname: 'wan0', address: '10.78.0.1/24' }, { ns: hqNs, ifname: 'eth0', address: `${HQ_IP}/24` });
    await hqNs.addRoute('10.77.0.0/24', { via: '10.78.0.1' });
    const fieldHosts = [];
    for (let i = 1; i <= FIELD_DEVICES; i++) {
      const ns = await lab.host(`f${i}`);
      fieldHosts.push({ ns, link: await lab.attach(ns, lan, { address: `10.77.0.${i + 1}/24`, gateway: ROUTER_LAN_IP }) });
    }

    // No uplink to begin with: the router's HQ-side interface is down, so it answers every dial
    // towards HQ with "network unreachable" while the devices keep trying.
    await uplink.cut('a');
    const hqAddress = `${HQ_LISTEN}/p2p/${hqDevice}`;
    const [hq, ...field] = await Promise.all([
      fm.start('hq', hqDir, hqNs, ['--listen', HQ_LISTEN]),
      ...fieldHosts.map((h, i) => fm.start(`f${i + 1}`, fieldDirs[i]!, h.ns, ['--mdns', '--listen', '/ip4/0.0.0.0/tcp/4001', '--hq', hqAddress])),
    ]);
    expect(hq.addresses).toContain(hqAddress);
    const [f1, f2, f3] = field as [RunningNode, RunningNode, RunningNode];
    const everyone = [hq, f1, f2, f3];

    /** Each field device's last seq: what every node must end up holding. */
    const written = new Map<string, number>(field.map((n) => [n.device, 0]));
    // Through the control socket: the `put` command does the same, with seconds of CPU to start.
    const write = async (node: RunningNode, entity: string, title: string) => {
      const result = await control<{ seq: number }>(node.dir, 'put', { domain: 'evidence', entity, fields: { title } });
      written.set(node.device, written.get(node.device)! + 1);
      expect(result.seq).toBe(written.get(node.device));
    };
    const fieldLogs = (s: Status) => s.devices.filter((row) => written.has(row.device));
    /** Every field op held and synced, nothing pending, failed or in conflict anywhere. */
    const allSynced = (s: Status) => holds(s, written) && fieldLogs(s).every((row) => row.counts.synced === row.lastSeq) && s.counts.pending === 0 && s.counts.failed === 0 && s.counts.conflict === 0;

    // 1. Offline: everyone writes; the field converges over the LAN with every op pending.
    await Promise.all(
      field.map(async (n) => {
        await write(n, `ev-${n.name}-1`, `first of ${n.name}`);
        await write(n, `ev-${n.name}-2`, `second of ${n.name}`);
      }),
    );
    await agreement(field, (s) => holds(s, written) && s.counts.pending === 2 * FIELD_DEVICES, 45_000);
    expect(fieldLogs(await control<Status>(hq.dir, 'status'))).toEqual([]);

    // 2. f3 leaves the LAN; then the uplink comes back. f3's ops can now only reach HQ carried by
    // the devices that reach it first.
    await fieldHosts[2]!.link.cut();
    await uplink.restore();
    await until(async () => (holds(await control<Status>(hq.dir, 'status'), written) ? true : undefined), { timeoutMs: 60_000, describe: () => describeNodes(everyone) });
    const admittedByHq = admittedBy(hq);
    expect(admittedByHq.length).toBeGreaterThan(0);
    expect([f1.device, f2.device]).toContain(admittedByHq[0]);
    expect(admittedByHq).not.toContain(f3.device);
    // HQ judges them all; its receipts reach the devices on the LAN, while f3 still knows nothing.
    await agreement([hq, f1, f2], allSynced, 30_000);
    expect((await control<Status>(f3.dir, 'status')).counts).toEqual({ pending: 2 * FIELD_DEVICES, synced: 0, failed: 0, conflict: 0 });

    // 3. f3 comes back and gets the receipts too.
    await fieldHosts[2]!.link.restore();
    await agreement(everyone, allSynced, 45_000);

    // 4. The uplink goes again: newer ops spread over the LAN but stay pending; HQ lacks them.
    await uplink.cut('a');
    const seenByHq = new Map(written);
    await Promise.all(field.map((n) => write(n, `ev-${n.name}-3`, `third of ${n.name}`)));
    await agreement(field, (s) => holds(s, written) && s.counts.pending === FIELD_DEVICES, 30_000);
    expect(holds(await control<Status>(hq.dir, 'status'), seenByHq)).toBe(true);

    // 5. It comes back: everything reaches HQ, and every device sees every op synced.
    await uplink.restore();
    await agreement(everyone, allSynced, 60_000);

    // The same through the CLI, in each node's namespace.
    const [statuses, f3OpsOnF1, f3EntityOnHq] = await Promise.all([
      Promise.all(everyone.map((n) => fm.cli<Status>(n.dir, ['status'], n.ns))),
      fm.cli<OpRow[]>(f1.dir, ['ops', '--device', f3.device], f1.ns),
      fm.cli<EntityView>(hq.dir, ['get', 'evidence', 'ev-f3-1'], hq.ns),
    ]);
    expect(new Set(statuses.map((s) => s.stateHash)).size).toBe(1);
    for (const s of statuses) expect(s.counts.pending).toBe(0);
    expect(f3OpsOnF1.map((o) => [o.seq, o.status])).toEqual([[1, 'synced'], [2, 'synced'], [3, 'synced']]);
    expect(f3EntityOnHq.fields).toMatchObject({ title: 'first of f3' });

    await stopCleanly(everyone);
  }, 240_000);
});
