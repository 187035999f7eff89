/**
 * The `fieldmesh` command as real processes: every command in text mode and with --json,
 * commands that open the data dir themselves when no node runs, commands that reach a running
 * node (`fieldmesh start` with --listen, --peer, --hq and --api) through its control socket,
 * bundles, --help everywhere, and exit codes (0 done, 1 failed with a message on stderr, 2 bad
 * usage, 3 verify found problems). Loopback only, no mDNS; every process is stopped and every dir
 * removed after each test.
 *
 * A process costs about a second of CPU (loading libp2p), so each command runs in each mode once
 * or twice across the file, independent commands run side by side (one process per data dir at
 * a time, since a process that opens a data dir locks it), and set-up is done in-process.
 */
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Level } from 'level';
import { describe, expect, it } from 'vitest';
import { callRunning } from '../../src/cli/control.ts';
import { DEFAULT_DOMAINS, readConfig, toPolicies, writeConfig } from '../../src/cli/config.ts';
import type { Role } from '../../src/core/cert.ts';
import { enroll } from '../../src/node/enroll.ts';
import { FieldNode } from '../../src/node/field-node.ts';
import { logKey } from '../../src/store/keys.ts';
import { TABLES, tableKey } from '../../src/store/tables.ts';
import { freePort, pool, stopChild, useCli, waitFor, type Result } from './helpers.ts';

const cli = useCli();
const TEAM = 'rescue';
const HEX64 = /^[0-9a-f]{64}$/;

/** The last line a command printed on stderr, parsed (with --json, errors are JSON). */
const jsonError = (r: Result) => JSON.parse(r.stderr.trim().split('\n').pop()!) as { error: { code: string; message: string } };

/** Opens a CLI data dir in this process, as the CLI would (config.json), for `fn`. */
async function withNode<T>(dataDir: string, fn: (node: FieldNode) => Promise<T>): Promise<T> {
  const config = await readConfig(dataDir);
  const node = await FieldNode.open({ dataDir, team: config.team, user: config.user, role: config.role, domains: toPolicies(config.domains) });
  try {
    return await fn(node);
  } finally {
    await node.close();
  }
}

/** Data dirs set up in-process as `fieldmesh init` / `enroll` leave them (config.json, key, certificate). */
async function team(root: string, devices: readonly [string, string, Exclude<Role, 'server'>][]) {
  const hqDir = join(root, 'hq');
  await mkdir(hqDir, { recursive: true });
  await writeConfig(hqDir, { team: TEAM, user: 'hq-staff', role: 'server', domains: DEFAULT_DOMAINS });
  const hqDevice = await withNode(hqDir, async (n) => n.device);
  const dirs: Record<string, { dir: string; device: string }> = { hq: { dir: hqDir, device: hqDevice } };
  for (const [name, user, role] of devices) {
    const dir = join(root, name);
    const cert = await enroll({ hqDataDir: hqDir, dataDir: dir, team: TEAM, user, role });
    await writeConfig(dir, { team: TEAM, user, role, domains: DEFAULT_DOMAINS });
    dirs[name] = { dir, device: cert.device };
  }
  return { dirs, hqDevice };
}

const HELP: string[][] = [[], ['init'], ['enroll'], ['start'], ['put'], ['get'], ['query'], ['delete'], ['ops'], ['status'], ['conflicts'], ['resolve'], ['revoke'], ['bundle'], ['bundle', 'export'], ['bundle', 'import'], ['vv'], ['peers'], ['verify']];

describe('commands on data dirs no node holds', () => {
  it('init, enroll, put/get/query/delete, ops, status, vv, bundle export/import, conflicts/resolve, revoke; --help everywhere; bad usage exits 2', async () => {
    const root = await cli.dir();
    const hq = join(root, 'hq');
    const fa = join(root, 'alice');
    const gw = join(root, 'gateway');
    const cwd = join(root, 'cwd');
    await mkdir(cwd);
    let usage: Promise<Result[]> | null = null;

    // init: HQ in text mode, a field device's key with --json; enroll in both modes.
    const init = await cli.ok(['-d', hq, 'init', '--team', TEAM, '--user', 'hq-staff']);
    const hqDevice = /^HQ (12D3Koo\w+) of team rescue ready in (.+)$/m.exec(init.stdout)?.[1];
    expect(hqDevice, init.stdout).toBeDefined();
    // Help and usage errors need no data dir: they run alongside the rest, in an empty working dir.
    usage = pool(3, [
      ...HELP.map((c) => () => cli.run([...c, '--help'], { cwd })),
      () => cli.run(['frobnicate'], { cwd }),
      () => cli.run(['init', '--team', 'x'], { cwd }),
    ]);
    usage.catch(() => undefined); // awaited below; a failure before that must not go unhandled
    expect(((await stat(join(hq, 'device.key'))).mode & 0o777).toString(8)).toBe('600');
    expect(JSON.parse(await readFile(join(hq, 'config.json'), 'utf8'))).toMatchObject({ team: TEAM, user: 'hq-staff', role: 'server', domains: DEFAULT_DOMAINS });
    const [fieldInit, gwEnroll] = await Promise.all([
      cli.json(['-d', fa, 'init', '--team', TEAM, '--user', 'alice', '--role', 'field']),
      cli.json(['-d', gw, 'enroll', '--hq', hq, '--user', 'base-camp', '--role', 'gateway', '--valid-days', '30']),
      // HQ staff edit case-7 offline (in-process: HQ's dir is free).
      withNode(hq, (n) => n.mutate({ type: 'create', domain: 'case', entity: 'case-7', fields: { title: 'Warehouse fire', status: 'escalated' } })),
    ]);
    expect(fieldInit).toEqual({ device: expect.stringMatching(/^12D3Koo/), dataDir: fa, enrolled: false });
    expect(gwEnroll).toMatchObject({ device: expect.stringMatching(/^12D3Koo/), team: TEAM, user: 'base-camp', role: 'gateway' });
    const expiresInDays = (Date.parse(gwEnroll.expires) - Date.now()) / 86_400_000;
    expect(expiresInDays).toBeGreaterThan(29.9);
    expect(expiresInDays).toBeLessThanOrEqual(30);
    // Enrolling keeps the key init made.
    const [enrolled] = await Promise.all([
      cli.ok(['-d', fa, 'enroll', '--hq', hq, '--user', 'alice']),
      // The gateway's offline writes (in-process).
      withNode(gw, async (n) => {
        await n.mutate({ type: 'create', domain: 'evidence', entity: 'ev-9', fields: { case: 'case-7', tags: ['exterior'] } });
        await n.mutate({ type: 'update', domain: 'evidence', entity: 'ev-9', fields: { tags: ['roof'] } });
      }),
    ]);
    expect(enrolled.stdout).toMatch(new RegExp(`^enrolled ${fieldInit.device} in team rescue as field \\(until \\d{4}-`, 'm'));
    expect(JSON.parse(await readFile(join(fa, 'config.json'), 'utf8'))).toMatchObject({ team: TEAM, user: 'alice', role: 'field' });

    // Three lanes side by side, one data dir each (a process that opens a data dir locks it).
    const f1 = join(root, 'alice.bundle');
    const f2 = join(root, 'gateway.bundle');
    const aliceLane = async () => {
      const put = await cli.ok(['-d', fa, 'put', 'case', 'case-7', 'title=Warehouse fire', 'status=open', 'floors=3', 'tags=["roof"]']);
      expect(put.stdout.trim()).toMatch(/^create #1 [0-9a-f]{64} pending$/);
      const got = await cli.ok(['-d', fa, 'get', 'case', 'case-7']);
      expect(got.stdout.split('\n').length).toBeGreaterThan(3); // indented for people
      // Values parse as JSON where they can (numbers, arrays), else stay text.
      expect(JSON.parse(got.stdout)).toMatchObject({ domain: 'case', entity: 'case-7', exists: true, fields: { title: 'Warehouse fire', status: 'open', floors: 3, tags: ['roof'] }, conflict: null });
      const exported = await cli.ok(['-d', fa, 'bundle', 'export', '--out', f1]);
      expect(exported.stdout.trim()).toBe(`wrote ${f1} (${(await stat(f1)).size} bytes)`);
    };
    const gatewayLane = async () => {
      expect(await cli.json(['-d', gw, 'delete', 'evidence', 'ev-9'])).toEqual({ id: expect.stringMatching(HEX64), seq: 3, status: 'pending' });
      const ops = await cli.ok(['-d', gw, 'ops', '--domain', 'evidence', '--entity', 'ev-9', '--limit', '2']);
      const short = gwEnroll.device.slice(-8);
      expect(ops.stdout.trim().split('\n')).toEqual([`${short} #1 create evidence/ev-9 pending`, `${short} #2 update evidence/ev-9 pending`]);
      const vv = await cli.ok(['-d', gw, 'vv']);
      expect(JSON.parse(vv.stdout)).toEqual({ [gwEnroll.device]: 3 });
      const exported = await cli.json(['-d', gw, 'bundle', 'export', '--out', f2]);
      expect(exported).toEqual({ file: f2, bytes: (await stat(f2)).size });
    };
    const hqLane = async () => {
      const queried = await cli.json(['-d', hq, 'query', 'case', 'status=escalated', '--limit', '5']);
      expect(queried.map((v: { entity: string; fields: unknown }) => [v.entity, v.fields])).toEqual([['case-7', { title: 'Warehouse fire', status: 'escalated' }]]);
      const status = await cli.json(['-d', hq, 'status']);
      expect(status).toMatchObject({ device: hqDevice, team: TEAM, role: 'server', counts: { pending: 0, synced: 1, failed: 0, conflict: 0 }, stateHash: expect.stringMatching(HEX64) });
      expect(status.devices).toEqual([{ device: hqDevice, lastSeq: 1, lastSyncedSeq: 1, counts: { pending: 0, synced: 1, failed: 0, conflict: 0 } }]);
      expect(await cli.json(['-d', hq, 'vv'])).toEqual({ [hqDevice!]: 1 });
      // The gateway is revoked before HQ sees its ops: those up to --after-seq stay valid.
      const revoked = await cli.ok(['-d', hq, 'revoke', gwEnroll.device, '--after-seq', '3', '--reason', 'stolen']);
      expect(revoked.stdout.trim()).toBe(`revoked ${gwEnroll.device} after seq 3`);
      return status;
    };
    const [, , hqBefore] = await Promise.all([aliceLane(), gatewayLane(), hqLane()]);

    // HQ takes both bundles (--json and text import) and finds case-7 in conflict.
    expect(await cli.json(['-d', hq, 'bundle', 'import', f1])).toMatchObject({ added: 1, duplicates: 0, refused: 0, certificates: 1 });
    expect((await cli.ok(['-d', hq, 'bundle', 'import', f2])).stdout.trim()).toBe('added 3 ops (0 already held, 0 refused)');
    const conflicts = await cli.json(['-d', hq, 'conflicts']);
    expect(conflicts).toHaveLength(1);
    expect(conflicts[0]).toMatchObject({ domain: 'case', entity: 'case-7', fields: [{ field: 'status' }] });
    expect(conflicts[0].fields[0].candidates.map((c: { value: string }) => c.value).sort()).toEqual(['escalated', 'open']);
    const resolved = await cli.ok(['-d', hq, 'resolve', conflicts[0].id, 'status=escalated']);
    expect(resolved.stdout.trim()).toMatch(/^resolve #3 [0-9a-f]{64}$/);

    // Back to alice by bundle (in-process).
    const back = await withNode(hq, (n) => n.exportBundle({ [fieldInit.device]: 1 }));
    const imported = await withNode(fa, (n) => n.importBundle(back));
    expect(imported).toMatchObject({ added: 6, duplicates: 0, refused: 0 }); // the gateway's 3, HQ's edit, revocation, resolve
    const aliceHash = await withNode(fa, async (n) => {
      expect((await n.get('case', 'case-7'))?.fields).toMatchObject({ title: 'Warehouse fire', status: 'escalated' });
      expect(n.isRevoked(gwEnroll.device)).toBe(true);
      return n.stateHash();
    });
    expect(aliceHash).toBe(await withNode(hq, (n) => n.stateHash()));
    expect(aliceHash).not.toBe(hqBefore.stateHash);

    const results = await usage;
    HELP.forEach((c, i) => {
      const r = results[i]!;
      expect(r.code, `${c.join(' ')} --help: ${r.stderr}`).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`^Usage: fieldmesh${c.length > 0 ? ' ' + c.join(' ') : ''} `, 'm'));
    });
    const [unknown, missingOption] = results.slice(HELP.length);
    expect(unknown!.code, unknown!.stderr).toBe(2);
    expect(unknown!.stderr).toMatch(/unknown command 'frobnicate'/);
    expect(missingOption!.code, missingOption!.stderr).toBe(2);
    expect(missingOption!.stderr).toMatch(/required option '--user <name>' not specified/);
    // None of them touched the working dir (no default data dir was created).
    expect(await readdir(cwd)).toEqual([]);
  }, 150_000);

  it('verify exits 3 when a record of the data dir is damaged', async () => {
    const root = await cli.dir();
    const { dirs } = await team(root, [['alice', 'alice', 'field']]);
    const alice = dirs.alice!;
    await withNode(alice.dir, async (node) => {
      for (let i = 0; i < 4; i++) await node.mutate({ type: 'create', domain: 'case', entity: `c-${i}`, fields: { title: `case ${i}` } });
    });
    // Flip a byte of seq 2 of alice's log on disk.
    const db = new Level<string, Uint8Array>(join(alice.dir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'view' });
    try {
      const key = tableKey(TABLES.log, logKey(alice.device, 2));
      const value = Uint8Array.from((await db.get(key))!);
      value[30]! ^= 0xff;
      await db.put(key, value);
    } finally {
      await db.close();
    }
    const r = await cli.run(['--json', '-d', alice.dir, 'verify']);
    expect(r.code, r.stderr).toBe(3);
    const report = JSON.parse(r.stdout.trim());
    expect(report).toMatchObject({ devices: 1, ops: 4 });
    expect(report.problems.length).toBeGreaterThan(0);
    expect(report.problems[0]).toMatchObject({ device: alice.device, seq: 2, code: expect.any(String), message: expect.any(String) });
  });
});

describe('running nodes', () => {
  it('start with --listen, --peer, --hq and --api; commands reach the running nodes through their control sockets', async () => {
    const root = await cli.dir();
    const { dirs, hqDevice } = await team(root, [
      ['gateway', 'base-camp', 'gateway'],
      ['alice', 'alice', 'field'],
      ['lost', 'bob', 'field'],
    ]);
    // Offline: alice opens case-7 and a case HQ's schema refuses (no title); HQ escalates case-7.
    await withNode(dirs.alice!.dir, async (n) => {
      await n.mutate({ type: 'create', domain: 'case', entity: 'case-7', fields: { title: 'Warehouse fire', status: 'open' } });
      await n.mutate({ type: 'create', domain: 'case', entity: 'case-11', fields: { status: 'open' } });
    });
    await withNode(dirs.hq!.dir, (n) => n.mutate({ type: 'create', domain: 'case', entity: 'case-7', fields: { title: 'Warehouse fire', status: 'escalated' } }));

    // The gateway keeps dialling HQ's address (--hq) before HQ is up; alice knows the gateway
    // (--peer); HQ (text mode) listens on that address and serves its API.
    const port = await freePort();
    const gw = await cli.start(dirs.gateway!.dir, ['--listen', '/ip4/127.0.0.1/tcp/0', '--hq', `/ip4/127.0.0.1/tcp/${port}/p2p/${hqDevice}`]);
    expect(gw.addresses.every((a) => a.startsWith('/ip4/127.0.0.1/tcp/'))).toBe(true);
    const [alice, hq] = await Promise.all([cli.start(dirs.alice!.dir, ['--peer', gw.addresses[0]!]), cli.start(dirs.hq!.dir, ['--listen', `/ip4/127.0.0.1/tcp/${port}`, '--api', '127.0.0.1:0'], { json: false })]);
    expect(hq.device).toBe(hqDevice);
    expect(hq.addresses).toEqual([`/ip4/127.0.0.1/tcp/${port}/p2p/${hqDevice}`]);
    expect(hq.apiUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(alice.events.find((e) => e.event === 'started')).toMatchObject({ device: dirs.alice!.device, role: 'field' });
    for (const node of [gw, alice, hq]) expect((await stat(join(node.dataDir, 'control.sock'))).isSocket()).toBe(true);
    expect(((await stat(join(hq.dataDir, 'api.token'))).mode & 0o777).toString(8)).toBe('600');

    // The running node holds the data dir: this write can only go through its control socket.
    const live = await cli.json(['-d', alice.dataDir, 'put', 'note', 'n-live', 'text=hello from the field']);
    expect(live).toEqual({ id: expect.stringMatching(HEX64), seq: 3, type: 'create', status: 'pending' });

    const call = async (dir: string, method: string, params: Record<string, unknown> = {}) => (await callRunning(dir, method, params, 10_000))!.result as any;
    const conflictId = await waitFor('the case-7 conflict to reach alice', async () => (await call(alice.dataDir, 'conflicts'))[0]?.id as string | undefined, 45_000);
    await waitFor("HQ's refusal of case-11 to reach alice", async () => (await call(alice.dataDir, 'ops', { status: 'failed' })).length === 1, 45_000);

    const [conflictsText, peersJson, peersText, caseJson, failedJson, verifyText, hqStatus] = await pool(4, [
      () => cli.ok(['-d', alice.dataDir, 'conflicts']),
      () => cli.json(['-d', alice.dataDir, 'peers']),
      () => cli.ok(['-d', gw.dataDir, 'peers']),
      () => cli.json(['-d', alice.dataDir, 'get', 'case', 'case-7']),
      () => cli.json(['-d', alice.dataDir, 'ops', '--status', 'failed']),
      () => cli.ok(['-d', alice.dataDir, 'verify']),
      () => cli.ok(['-d', hq.dataDir, 'status']),
    ]);
    expect(JSON.parse((conflictsText as Result).stdout).map((c: { id: string }) => c.id)).toEqual([conflictId]);
    expect((peersJson as { device: string; role: string }[]).map((p) => [p.device, p.role])).toEqual([[gw.device, 'gateway']]);
    expect(JSON.parse((peersText as Result).stdout).map((p: { device: string }) => p.device).sort()).toEqual([alice.device, hq.device].sort());
    expect((caseJson as { conflict: { id: string } | null }).conflict?.id).toBe(conflictId);
    expect(failedJson as unknown[]).toEqual([expect.objectContaining({ entity: 'case-11', status: 'failed', reason: 'REJECTED:SCHEMA', detail: expect.stringMatching(/title/) })]);
    expect((verifyText as Result).stdout.trim()).toMatch(/^\d+ ops of 2 devices checked: all valid$/); // alice's and HQ's logs
    expect((hqStatus as Result).stdout).toMatch(new RegExp(`^device ${hqDevice}$`, 'm'));
    expect((hqStatus as Result).stdout).toMatch(/^state [0-9a-f]{64}$/m);

    // HQ staff resolve it (--json) and revoke the lost device (--json), on the running HQ.
    const [resolved, revoked] = await Promise.all([
      cli.json(['-d', hq.dataDir, 'resolve', conflictId, 'status=escalated']),
      cli.json(['-d', hq.dataDir, 'revoke', dirs.lost!.device, '--after-seq', '0', '--reason', 'lost in the river']),
    ]);
    expect(resolved).toEqual({ id: expect.stringMatching(HEX64), seq: expect.any(Number), status: 'synced' });
    expect(revoked).toMatchObject({ id: expect.stringMatching(HEX64), target: dirs.lost!.device, afterSeq: 0 });

    const [queryText, missing, unknownDomain, badFields] = await Promise.all([
      cli.ok(['-d', alice.dataDir, 'query', 'note']),
      cli.run(['-d', alice.dataDir, 'get', 'case', 'nope']),
      cli.run(['--json', '-d', alice.dataDir, 'put', 'nodomain', 'x', 'a=1']),
      // The team's schema is checked before signing: HQ would refuse this change anyway.
      cli.run(['--json', '-d', alice.dataDir, 'put', 'case', 'c-bad', 'title=Shed', 'status=nonsense']),
    ]);
    expect(badFields.code).toBe(1);
    expect(jsonError(badFields).error).toMatchObject({ code: 'SCHEMA', message: expect.stringContaining('status') });
    expect(queryText.stdout.trim()).toBe('n-live {"text":"hello from the field"}');
    const deleted = await cli.ok(['-d', alice.dataDir, 'delete', 'note', 'n-live']);
    expect(deleted.stdout.trim()).toMatch(/^delete #4 [0-9a-f]{64} pending$/);
    // Errors through the socket: exit 1 and the node's message on stderr (JSON with --json).
    expect(unknownDomain.code).toBe(1);
    expect(jsonError(unknownDomain).error).toMatchObject({ code: 'UNKNOWN_DOMAIN', message: expect.stringContaining('nodomain') });
    expect(missing.code).toBe(1);
    expect(missing.stdout).toBe('');
    expect(missing.stderr.trim()).toBe('fieldmesh: case/nope does not exist [ENTITY_NOT_FOUND]');

    // Everything settles the same on all three running nodes.
    const settled = await waitFor(
      'every node to settle',
      async () => {
        const s = await Promise.all([alice, gw, hq].map((n) => call(n.dataDir, 'status')));
        const done = s.every((x) => x.counts.pending === 0 && x.counts.conflict === 0 && x.counts.failed === 1) && new Set(s.map((x) => x.stateHash)).size === 1;
        return done ? s : null;
      },
      45_000,
    );
    expect((await call(gw.dataDir, 'ops', { type: 'revoke' })).map((o: { status: string }) => o.status)).toEqual(['synced']);
    expect((await call(alice.dataDir, 'get', { domain: 'case', entity: 'case-7' })).fields).toEqual({ title: 'Warehouse fire', status: 'escalated' });

    // HQ's HTTP API, with the token the node wrote to its data dir.
    const token = (await readFile(join(hq.dataDir, 'api.token'), 'utf8')).trim();
    const get = (path: string, auth = true) => fetch(`${hq.apiUrl}${path}`, { headers: auth ? { authorization: `Bearer ${token}` } : {}, signal: AbortSignal.timeout(10_000) });
    const apiStatus = await get('/v1/status');
    expect(apiStatus.status).toBe(200);
    expect(await apiStatus.json()).toMatchObject({ device: hqDevice, team: TEAM, stateHash: settled[2].stateHash });
    const devices = (await (await get('/v1/devices')).json()) as { device: string; role: string; connected: boolean; revoked: boolean }[];
    // Alice never talked to HQ: listed with her ops, not connected.
    expect(devices.find((d) => d.device === alice.device)).toMatchObject({ role: 'field', connected: false, revoked: false });
    expect((await get('/v1/status', false)).status).toBe(401);

    // SIGTERM stops each node cleanly; then nothing answers on the control socket (commands open the dir).
    expect(await Promise.all([alice, gw, hq].map((n) => stopChild(n.child, 15_000)))).toEqual([0, 0, 0]);
    expect(alice.events.at(-1)).toEqual({ event: 'stopped' });
    expect(hq.events.at(-1)).toEqual({ line: 'stopped' });
    expect(alice.events.some((e) => e.event === 'peer:admitted' && e.device === gw.device)).toBe(true);
    expect(await callRunning(alice.dataDir, 'status', {})).toBeUndefined();
  }, 120_000);

  it('bundle export and import work while a node holds the data dir', async () => {
    const root = await cli.dir();
    const { dirs } = await team(root, [
      ['alice', 'alice', 'field'],
      ['bob', 'bob', 'field'],
    ]);
    await withNode(dirs.alice!.dir, (n) => n.mutate({ type: 'create', domain: 'note', entity: 'n-1', fields: { text: 'one' } }));
    const back = join(root, 'from-bob.bundle');
    await withNode(dirs.bob!.dir, async (n) => {
      await n.mutate({ type: 'create', domain: 'note', entity: 'n-2', fields: { text: 'two' } });
      await writeFile(back, await n.exportBundle());
    });
    const alice = await cli.start(dirs.alice!.dir, []);
    // Every other command reaches the running node through its control socket; bundles must too.
    const [exported, imported] = await Promise.all([
      cli.run(['--json', '-d', alice.dataDir, 'bundle', 'export', '--out', join(root, 'out.bundle')]),
      cli.run(['--json', '-d', alice.dataDir, 'bundle', 'import', back]),
    ]);
    expect({ code: exported.code, stderr: exported.stderr }).toEqual({ code: 0, stderr: '' });
    expect({ code: imported.code, stderr: imported.stderr }).toEqual({ code: 0, stderr: '' });
    expect(JSON.parse(imported.stdout)).toMatchObject({ added: 1 });
  });
});
