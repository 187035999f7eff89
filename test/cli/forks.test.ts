/**
 * A device whose data dir is restored from an old copy, as real processes on loopback: HQ and
 * the device run `fieldmesh start`; the device writes, is stopped and copied, writes more, is
 * restored from the copy and writes again at the same seq. The fork is proven when it syncs, and
 * the CLI says so: `status` lists it on every node (the device itself is told what to do), and
 * the forked device refuses further writes instead of signing ops that count nowhere.
 */
import { cp, mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { callRunning } from '../../src/cli/control.ts';
import { DEFAULT_DOMAINS, writeConfig } from '../../src/cli/config.ts';
import { enroll } from '../../src/node/enroll.ts';
import { stopChild, useCli, waitFor, withNode } from './helpers.ts';

const cli = useCli();
const TEAM = 'rescue';

describe('a data dir restored from an old copy', () => {
  it('is proven forked; status shows the fork on every node and the forked device refuses further writes', async () => {
    const root = await cli.dir();
    const hqDir = join(root, 'hq');
    await mkdir(hqDir, { recursive: true });
    await writeConfig(hqDir, { team: TEAM, user: 'hq-staff', role: 'server', domains: DEFAULT_DOMAINS });
    await withNode(hqDir, async () => undefined);
    const tablet = join(root, 'tablet');
    const { device } = await enroll({ hqDataDir: hqDir, dataDir: tablet, team: TEAM, user: 'alice', role: 'field' });
    await writeConfig(tablet, { team: TEAM, user: 'alice', role: 'field', domains: DEFAULT_DOMAINS });
    await withNode(tablet, (n) => n.mutate({ type: 'create', domain: 'note', entity: 'n-1', fields: { text: 'kept' } }));
    // The copy a user keeps as a backup, taken while no node holds the dir.
    const backup = join(root, 'tablet-backup');
    await cp(tablet, backup, { recursive: true });

    const hq = await cli.start(hqDir, []);
    const hqHolds = (seq: number) => waitFor(`HQ to hold seq ${seq} of the tablet`, async () => ((await callRunning(hqDir, 'vv', {}, 10_000))!.result as Record<string, number>)[device] === seq, 45_000);
    let node = await cli.start(tablet, ['--hq', hq.addresses[0]!]);
    await cli.ok(['-d', tablet, 'put', 'note', 'n-2', 'text=after the backup']);
    await hqHolds(2);
    await stopChild(node.child);

    // Restored: seq 2 is written again, differently.
    await rm(tablet, { recursive: true });
    await cp(backup, tablet, { recursive: true });
    await cli.ok(['-d', tablet, 'put', 'note', 'n-3', 'text=after the restore']);
    node = await cli.start(tablet, ['--hq', hq.addresses[0]!]);
    const forks = [{ device, seq: 2 }];
    for (const dir of [hqDir, tablet]) {
      await waitFor(`${dir} to hold the fork proof`, async () => ((await callRunning(dir, 'status', {}, 10_000))!.result as { forks?: unknown[] }).forks?.length === 1, 45_000);
    }
    const [hqStatus, tabletStatus] = await Promise.all([cli.json(['-d', hqDir, 'status']), cli.json(['-d', tablet, 'status'])]);
    expect(hqStatus.forks).toEqual(forks);
    expect(tabletStatus.forks).toEqual(forks);
    expect(hqStatus.stateHash).toBe(tabletStatus.stateHash);
    // Void ops wait for nothing: they never apply.
    const voided = await cli.json(['-d', hqDir, 'ops', '--status', 'failed']);
    expect(voided.map((o: { seq: number; reason: string; waiting: boolean }) => [o.seq, o.reason, o.waiting])).toEqual([[2, 'DEVICE_FORKED', false]]);

    const [hqText, tabletText] = await Promise.all([cli.ok(['-d', hqDir, 'status']), cli.ok(['-d', tablet, 'status'])]);
    expect(hqText.stdout).toContain(`forked ${device} at seq 2: signed two different ops there (a data dir restored from an old copy, or copied); its ops from seq 2 on count nowhere\n`);
    expect(tabletText.stdout).toContain(`forked ${device} (this device) at seq 2: signed two different ops there (a data dir restored from an old copy, or copied); its ops from seq 2 on count nowhere: set up a new data dir and enroll it to keep writing\n`);

    // Refused before anything is signed: the device's log stays as it was.
    const before = ((await callRunning(tablet, 'vv', {}, 10_000))!.result as Record<string, number>)[device];
    const refused = await cli.run(['-d', tablet, 'put', 'note', 'n-4', 'text=lost']);
    expect(refused.code).toBe(1);
    expect(refused.stderr.trim()).toBe(
      `fieldmesh: this device forked its log at seq 2 (its data dir was restored from an old copy, or copied): nothing it writes counts any more; set up a new data dir and enroll it with HQ [DEVICE_FORKED]`,
    );
    expect(((await callRunning(tablet, 'vv', {}, 10_000))!.result as Record<string, number>)[device]).toBe(before);
    await Promise.all([stopChild(node.child), stopChild(hq.child)]);
  }, 180_000);
});
