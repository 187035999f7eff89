/**
 * A gateway bridges the field LAN and the HQ uplink (testing level 4 of DESIGN.md, issue 7). Real
 * `fieldmesh` processes, each in its own network namespace:
 *
 *   f1 f2 ── lan (bridge, 10.77.0.0/24) ── eth0 [gateway] eth1 ── eth0 [hq]   (10.79.0.0/24)
 *
 * The gateway has an interface on each side and does not forward packets: the field devices have
 * no route to HQ (they are given HQ's address all the same, as every device is, and keep failing
 * to dial it), and HQ reaches no field device. The gateway finds the field devices by mDNS and dials
 * HQ, so everything between the field and HQ goes through the gateway's own node, both ways: field
 * ops to HQ; HQ's receipts, a rejection among them, and HQ's own edits to the field.
 *
 * Every namespace, link and process is the lab's own and is removed after the run, also on
 * failure and interruption (harness.ts); mDNS runs only inside the lab's LAN. Skipped, with the
 * reason, where network namespaces cannot be made (not root, no iproute2).
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Fieldmesh, SKIP_NETNS, admittedBy, agreement, control, describeNodes, holds, stopCleanly, type EntityView, type OpRow, type Peer, type RunningNode, type Status } from './fieldmesh.ts';
import { Lab, sweepStaleNamespaces, until } from './harness.ts';

const HQ_IP = '10.79.0.2';
const HQ_LISTEN = `/ip4/${HQ_IP}/tcp/4001`;
const LISTEN_ALL = '/ip4/0.0.0.0/tcp/4001';


describe.skipIf(SKIP_NETNS)('a gateway between the field LAN and the HQ uplink', () => {
  let lab: Lab | undefined;
  afterAll(() => lab?.teardown(), 30_000);

  it('carries every op between field devices and an HQ they cannot reach, both ways', async () => {
    await sweepStaleNamespaces();
    lab = new Lab();
    const fm = new Fieldmesh(lab);
    const tmp = lab.tempDir();

    // The team (no network needed). One at a time: enroll opens HQ's data dir.
    const dirOf = (name: string) => join(tmp, name);
    const { device: hqDevice } = await fm.cli<{ device: string }>(dirOf('hq'), ['init', '--team', 'T', '--user', 'hq-staff']);
    await fm.cli(dirOf('gw'), ['enroll', '--hq', dirOf('hq'), '--user', 'base-camp', '--role', 'gateway']);
    for (const name of ['f1', 'f2']) await fm.cli(dirOf(name), ['enroll', '--hq', dirOf('hq'), '--user', `user-${name}`]);
    // f2 still has an older copy of the team's rules, in which a case needs no title: its untitled
    // case passes its own check and is refused by HQ (devices check HQ's rules before signing).
    const f2Config = join(dirOf('f2'), 'config.json');
    const rules = JSON.parse(await readFile(f2Config, 'utf8')) as { domains: { case: { schema: { required?: string[] } } } };
    delete rules.domains.case.schema.required;
    await writeFile(f2Config, JSON.stringify(rules));

    const lan = await lab.switch('lan');
    const gwNs = await lab.host('gw');
    await lab.attach(gwNs, lan, { address: '10.77.0.1/24' });
    const hqNs = await lab.host('hq');
    await lab.veth({ ns: gwNs, ifname: 'eth1', address: '10.79.0.1/24' }, { ns: hqNs, ifname: 'eth0', address: `${HQ_IP}/24` });
    const f1Ns = await lab.host('f1');
    await lab.attach(f1Ns, lan, { address: '10.77.0.2/24' });
    const f2Ns = await lab.host('f2');
    await lab.attach(f2Ns, lan, { address: '10.77.0.3/24' });
    // No route from the field to HQ's subnet: only the gateway's node can carry anything there.
    await expect(f1Ns.ip(['route', 'get', HQ_IP])).rejects.toThrow(/unreachable/i);

    const hqAddress = `${HQ_LISTEN}/p2p/${hqDevice}`;
    const fieldArgs = ['--mdns', '--listen', LISTEN_ALL, '--hq', hqAddress];
    const [hq, gw, f1, f2] = (await Promise.all([
      fm.start('hq', dirOf('hq'), hqNs, ['--listen', HQ_LISTEN]),
      fm.start('gw', dirOf('gw'), gwNs, fieldArgs),
      fm.start('f1', dirOf('f1'), f1Ns, fieldArgs),
      fm.start('f2', dirOf('f2'), f2Ns, fieldArgs),
    ])) as [RunningNode, RunningNode, RunningNode, RunningNode];
    const everyone = [hq, gw, f1, f2];

    // The field records evidence and cases (f2's case has no title: HQ's rules refuse it); HQ
    // staff assign a task, which only the gateway can bring to the field.
    const put = (node: RunningNode, domain: string, entity: string, fields: Record<string, string>) => control<{ seq: number }>(node.dir, 'put', { domain, entity, fields });
    await fm.cli(f1.dir, ['put', 'evidence', 'ev-1', 'kind=photo', 'tags=["exterior"]'], f1.ns);
    await put(f1, 'case', 'case-1', { title: 'Collapsed bridge', status: 'open' });
    await put(f2, 'evidence', 'ev-2', { kind: 'sample' });
    await put(f2, 'case', 'case-2', { status: 'open' });
    await put(hq, 'task', 'task-1', { title: 'Photograph the north pier' });
    const written = new Map([[f1.device, 2], [f2.device, 2]]);

    // Everyone ends with the same state: every field op judged by HQ (one refused), none pending.
    const judged = (s: Status) => holds(s, written) && s.counts.pending === 0 && s.counts.conflict === 0 && s.counts.failed === 1;
    await agreement(everyone, judged, 60_000);

    // Who talks to whom: the gateway to HQ and to every field device (mDNS may pair the last of
    // them a moment after the data converged through the others); HQ to no one else, ever.
    const devicesOf = (peers: readonly Peer[]) => peers.map((p) => p.device).sort();
    const [hqPeers, gwPeers] = await until(
      async () => {
        const lists = (await Promise.all([hq, gw].map((n) => control<Peer[]>(n.dir, 'peers')))) as [Peer[], Peer[]];
        return JSON.stringify(devicesOf(lists[1])) === JSON.stringify([hq.device, f1.device, f2.device].sort()) ? lists : undefined;
      },
      { timeoutMs: 30_000, describe: () => describeNodes(everyone) },
    );
    expect(hqPeers.map((p) => [p.device, p.role])).toEqual([[gw.device, 'gateway']]);
    expect(gwPeers.find((p) => p.device === hq.device)?.address).toContain(HQ_LISTEN);
    expect(new Set(admittedBy(hq))).toEqual(new Set([gw.device]));
    for (const field of [f1, f2]) expect(admittedBy(field)).not.toContain(hq.device);

    // The same through the CLI, in each node's namespace.
    const [statuses, failedOnF1, taskOnF2, evidenceOnHq] = await Promise.all([
      Promise.all(everyone.map((n) => fm.cli<Status>(n.dir, ['status'], n.ns))),
      fm.cli<OpRow[]>(f1.dir, ['ops', '--status', 'failed'], f1.ns),
      fm.cli<EntityView>(f2.dir, ['get', 'task', 'task-1'], f2.ns),
      fm.cli<EntityView>(hq.dir, ['get', 'evidence', 'ev-1'], hq.ns),
    ]);
    expect(new Set(statuses.map((s) => s.stateHash)).size).toBe(1);
    expect(failedOnF1.map((o) => [o.device, o.entity, o.reason])).toEqual([[f2.device, 'case-2', 'REJECTED:SCHEMA']]);
    expect(taskOnF2.fields).toEqual({ title: 'Photograph the north pier' });
    expect(evidenceOnHq.fields).toEqual({ kind: 'photo', tags: ['exterior'] });

    await stopCleanly(everyone);
  }, 180_000);
});
