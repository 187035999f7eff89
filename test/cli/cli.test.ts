/**
 * The `fieldmesh` command as real processes: every command in text mode and with --json,
 * commands that open the data dir themselves when no node runs, commands that reach a running
 * node (`fieldmesh start` with --listen, --peer, --hq and --api) through its control socket,
 * bundles, --help everywhere, and exit codes (0 done, 1 failed with one line on stderr and no
 * stack trace, 2 bad usage, 3 verify found problems); mistaken init and enroll change nothing.
 * Loopback only, no mDNS; every process is stopped and every dir removed after each test.
 *
 * A process that opens a data dir costs about a second of CPU (loading the node and libp2p); one
 * that fails on its arguments or talks to a running node loads far less. So each command runs in
 * each mode once or twice across the file, independent commands run side by side (one process per
 * data dir at a time, since a process that opens a data dir locks it), and set-up is done in-process.
 */
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Level } from 'level';
import { describe, expect, it } from 'vitest';
import { callRunning } from '../../src/cli/control.ts';
import { DEFAULT_DOMAINS, writeConfig } from '../../src/cli/config.ts';
import type { Role } from '../../src/core/cert.ts';
import { enroll, readDeviceCertificate } from '../../src/node/enroll.ts';
import { logKey } from '../../src/store/keys.ts';
import { TABLES, tableKey } from '../../src/store/tables.ts';
import { freePort, pool, stopChild, useCli, waitFor, withNode, type Result } from './helpers.ts';

const cli = useCli();
const TEAM = 'rescue';
const HEX64 = /^[0-9a-f]{64}$/;

/** The last line a command printed on stderr, parsed (with --json, errors are JSON). */
const jsonError = (r: Result) => JSON.parse(r.stderr.trim().split('\n').pop()!) as { error: { code: string; message: string } };

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

/** Bad usage that needs no data dir (run in an empty working dir, which must stay empty): [args, exit code, stderr]. */
const usageErrors = (root: string, hqDevice: string): [string[], number, RegExp][] => [
  [['frobnicate'], 2, /unknown command 'frobnicate'/],
  [['init', '--team', 'x'], 2, /required option '--user <name>' not specified/],
  [['ops', '--limit', 'abc'], 2, /'--limit <n>' argument 'abc' is invalid\. --limit wants an integer from 1 to 100000/],
  [['ops', '--limit', '-5'], 2, /'--limit <n>' argument '-5' is invalid/],
  [['ops', '--type', 'explode'], 2, /'--type <type>' argument 'explode' is invalid\. Allowed choices are create, update, delete, resolve, receipt, revoke/],
  [['query', 'case', '--limit', '0'], 2, /'--limit <n>' argument '0' is invalid/],
  [['revoke', hqDevice, '--after-seq', '1.5'], 2, /'--after-seq <n>' argument '1\.5' is invalid/],
  [['enroll', '--hq', 'x', '--user', 'u', '--valid-days', '7x'], 2, /'--valid-days <n>' argument '7x' is invalid/],
  [['put', 'case', 'c-1', 'title'], 2, /^fieldmesh: expected field=value, got "title" \[BAD_ARGUMENT\]$/],
  [['bundle', 'export', '--out', 'o', '--since', join(root, 'vv-not-devices.json')], 2, /"xyz" is not a device id \[BAD_VERSION_VECTOR\]$/],
  [['bundle', 'export', '--out', 'o', '--since', join(root, 'vv-array.json')], 2, /got an array \[BAD_VERSION_VECTOR\]$/],
  [['bundle', 'export', '--out', 'o', '--since', join(root, 'vv-negative.json')], 2, /must be a non-negative integer, got -1 \[BAD_VERSION_VECTOR\]$/],
  [['bundle', 'export', '--out', 'o', '--since', join(root, 'vv-broken.json')], 2, /vv-broken\.json is not valid JSON: .* \[BAD_JSON\]$/],
  [['bundle', 'export', '--out', 'o', '--since', join(root, 'no-such.vv')], 2, /^fieldmesh: cannot read --since \S+no-such\.vv: no such file \[ENOENT\]$/],
  [['init', '--team', 'x', '--user', 'u', '--domains', root], 2, /^fieldmesh: cannot read --domains \S+: it is a directory \[EISDIR\]$/],
  [['start', '--peer', 'garbage'], 2, /^fieldmesh: --peer "garbage" is not a multiaddr .* \[BAD_MULTIADDR\]$/],
  [['start', '--listen', '/ip4/127.0.0.1/udp/4001'], 2, /^fieldmesh: --listen \/ip4\/127\.0\.0\.1\/udp\/4001 names no TCP port.* \[BAD_MULTIADDR\]$/],
  [['start', '--hq', '/ip4/127.0.0.1/tcp/99999'], 2, /^fieldmesh: --hq "\/ip4\/127\.0\.0\.1\/tcp\/99999" is not a multiaddr .* \[BAD_MULTIADDR\]$/],
  [['-d', join(root, 'a-file'), 'status'], 1, /^fieldmesh: data dir \S+a-file is not a directory \[NOT_A_DIRECTORY\]$/],
  [['-d', join(root, 'unenrolled'), 'status'], 1, /^fieldmesh: \S+unenrolled is not enrolled yet: HQ signs its certificate with `fieldmesh -d \S+unenrolled enroll --hq <HQ's data dir> --user <name>` \[NOT_ENROLLED\]$/],
];

const HELP: string[][] = [[], ['init'], ['enroll'], ['start'], ['put'], ['get'], ['query'], ['delete'], ['ops'], ['status'], ['conflicts'], ['resolve'], ['revoke'], ['bundle'], ['bundle', 'export'], ['bundle', 'import'], ['vv'], ['peers'], ['verify']];

describe('commands on data dirs no node holds', () => {
  it('init, enroll (and refusing mistaken ones), put/get/query/delete, ops, status, vv, bundle export/import, conflicts/resolve, revoke; --help everywhere; bad usage exits 2', async () => {
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
    await Promise.all([
      writeFile(join(root, 'vv-not-devices.json'), '{"xyz":"abc"}'),
      writeFile(join(root, 'vv-array.json'), '[1,2]'),
      writeFile(join(root, 'vv-negative.json'), JSON.stringify({ [hqDevice!]: -1 })),
      writeFile(join(root, 'vv-broken.json'), '{"xyz":'),
      writeFile(join(root, 'a-file'), ''),
      mkdir(join(root, 'unenrolled')).then(() => writeConfig(join(root, 'unenrolled'), { team: TEAM, user: 'u', role: 'field', domains: DEFAULT_DOMAINS })),
    ]);
    const badUsage = usageErrors(root, hqDevice!);
    usage = pool(3, [...HELP.map((c) => () => cli.run([...c, '--help'], { cwd })), ...badUsage.map(([args]) => () => cli.run(args, { cwd }))]);
    usage.catch(() => undefined); // awaited below; a failure before that must not go unhandled
    expect(((await stat(join(hq, 'device.key'))).mode & 0o777).toString(8)).toBe('600');
    expect(JSON.parse(await readFile(join(hq, 'config.json'), 'utf8'))).toMatchObject({ team: TEAM, user: 'hq-staff', role: 'server', domains: DEFAULT_DOMAINS });
    const [fieldInit, gwEnroll] = await Promise.all([
      cli.json(['-d', fa, 'init', '--team', TEAM, '--user', 'alice', '--role', 'field']),
      cli.json(['-d', gw, 'enroll', '--hq', hq, '--user', 'base-camp', '--role', 'gateway', '--valid-days', '30']),
    ]);
    expect(fieldInit).toEqual({ device: expect.stringMatching(/^12D3Koo/), dataDir: fa, enrolled: false });
    expect(gwEnroll).toMatchObject({ device: expect.stringMatching(/^12D3Koo/), team: TEAM, user: 'base-camp', role: 'gateway' });
    // HQ's node signed it and keeps the certificate: HQ knows (and can revoke) the device before it ever syncs.
    // HQ staff edit case-7 offline (in-process: HQ's dir is free).
    const heldByHq = await withNode(hq, async (n) => {
      await n.mutate({ type: 'create', domain: 'case', entity: 'case-7', fields: { title: 'Warehouse fire', status: 'escalated' } });
      return n.certificates().map((c) => Buffer.from(c));
    });
    expect(heldByHq).toContainEqual(Buffer.from((await readDeviceCertificate(gw))!.bytes));
    const expiresInDays = (Date.parse(gwEnroll.expires) - Date.now()) / 86_400_000;
    expect(expiresInDays).toBeGreaterThan(29.9);
    expect(expiresInDays).toBeLessThanOrEqual(30);
    // Mistaken init and enroll change nothing: another team or role for HQ's dir, HQ's dir (or a
    // server dir) as the device, a field device as --hq, a device enrolled already (without --force).
    const configs = async () => Promise.all([hq, gw].map((d) => readFile(join(d, 'config.json'), 'utf8')));
    const configsBefore = await configs();
    // Enrolling keeps the key init made.
    const [enrolled, refusals] = await Promise.all([
      cli.ok(['-d', fa, 'enroll', '--hq', hq, '--user', 'alice']),
      Promise.all([
        cli.run(['-d', hq, 'init', '--team', 'otherteam', '--user', 'hq-staff']),
        cli.run(['-d', hq, 'init', '--team', TEAM, '--user', 'hq-staff', '--role', 'field']),
        cli.run(['-d', hq, 'enroll', '--hq', hq, '--user', 'x', '--force']),
        cli.run(['--json', '-d', join(root, 'tablet2'), 'enroll', '--hq', gw, '--user', 'x']),
        cli.run(['-d', gw, 'enroll', '--hq', hq, '--user', 'other', '--role', 'field']),
        // init again with the same values changes nothing (and is fine).
        cli.run(['-d', hq, 'init', '--team', TEAM, '--user', 'hq-staff']),
      ]),
      // The gateway's offline writes (in-process).
      withNode(gw, async (n) => {
        await n.mutate({ type: 'create', domain: 'evidence', entity: 'ev-9', fields: { case: 'case-7', tags: ['exterior'] } });
        await n.mutate({ type: 'update', domain: 'evidence', entity: 'ev-9', fields: { tags: ['roof'] } });
      }),
    ]);
    expect(enrolled.stdout).toMatch(new RegExp(`^enrolled ${fieldInit.device} in team rescue as field \\(until \\d{4}-`, 'm'));
    const [otherTeam, otherRole, hqAsDevice, gatewayAsHq, again, initAgain] = refusals;
    expect(initAgain).toMatchObject({ code: 0, stdout: init.stdout, stderr: '' });
    for (const r of refusals.slice(0, -1)) expect({ code: r.code, stdout: r.stdout, lines: r.stderr.trim().split('\n').length }).toEqual({ code: 1, stdout: '', lines: 1 });
    expect(otherTeam.stderr.trim()).toMatch(/^fieldmesh: \S+hq is already set up as server of team rescue \(user hq-staff\); this init would change its team, so nothing was changed: .* \[ALREADY_SET_UP\]$/);
    expect(otherRole.stderr.trim()).toMatch(/would change its role, so nothing was changed.* \[ALREADY_SET_UP\]$/);
    expect(hqAsDevice.stderr.trim()).toMatch(/^fieldmesh: \S+hq is an HQ data dir \(team rescue\): it cannot be enrolled \[IS_HQ\]$/);
    expect(jsonError(gatewayAsHq).error).toEqual({ code: 'NOT_HQ', message: expect.stringMatching(/^--hq \S+gateway is not an HQ data dir: it is set up as gateway/) });
    expect(again.stderr.trim()).toMatch(/^fieldmesh: \S+gateway is already enrolled \(device \w+, user base-camp, role gateway in team rescue, until .*\); re-enroll with force .* \[ALREADY_ENROLLED\]$/);
    expect(await configs()).toEqual(configsBefore);
    expect(await readdir(root)).not.toContain('tablet2');
    expect(JSON.parse(await readFile(join(fa, 'config.json'), 'utf8'))).toMatchObject({ team: TEAM, user: 'alice', role: 'field' });

    // Re-enrolled on purpose (--force: another expiry; HQ's node signs it, so HQ's dir is busy meanwhile).
    const reEnrolled = await cli.json(['-d', fa, 'enroll', '--hq', hq, '--user', 'alice', '--valid-days', '10', '--force']);
    expect(reEnrolled).toMatchObject({ device: fieldInit.device, team: TEAM, user: 'alice', role: 'field' });
    expect((Date.parse(reEnrolled.expires) - Date.now()) / 86_400_000).toBeLessThanOrEqual(10);

    // Three lanes side by side, one data dir each (a process that opens a data dir locks it).
    const f1 = join(root, 'alice.bundle');
    const f2 = join(root, 'gateway.bundle');
    const aliceLane = async () => {
      // Init again with the same values: fine.
      expect(await cli.json(['-d', fa, 'init', '--team', TEAM, '--user', 'alice', '--role', 'field'])).toEqual({ device: fieldInit.device, dataDir: fa, enrolled: true });
      const put = await cli.ok(['-d', fa, 'put', 'case', 'case-7', 'title=Warehouse fire', 'status=open', 'floors=3', 'tags=["roof"]']);
      expect(put.stdout.trim()).toMatch(/^create #1 [0-9a-f]{64} pending$/);
      const got = await cli.ok(['-d', fa, 'get', 'case', 'case-7']);
      expect(got.stdout.split('\n').length).toBeGreaterThan(3); // indented for people
      // Values parse as JSON where they can (numbers, arrays), else stay text.
      expect(JSON.parse(got.stdout)).toMatchObject({ domain: 'case', entity: 'case-7', exists: true, fields: { title: 'Warehouse fire', status: 'open', floors: 3, tags: ['roof'] }, conflict: null });
      const exported = await cli.ok(['-d', fa, 'bundle', 'export', '--out', f1]);
      expect(exported.stdout.trim()).toMatch(new RegExp(`^wrote \\d+ ops to ${f1} \\(${(await stat(f1)).size} bytes\\)$`));
    };
    const gatewayLane = async () => {
      expect(await cli.json(['-d', gw, 'delete', 'evidence', 'ev-9'])).toEqual({ id: expect.stringMatching(HEX64), seq: 3, status: 'pending' });
      const ops = await cli.ok(['-d', gw, 'ops', '--domain', 'evidence', '--entity', 'ev-9', '--limit', '2']);
      const short = gwEnroll.device.slice(-8);
      expect(ops.stdout.trim().split('\n')).toEqual([`${short} #1 create evidence/ev-9 pending`, `${short} #2 update evidence/ev-9 pending`]);
      const vv = await cli.ok(['-d', gw, 'vv']);
      expect(JSON.parse(vv.stdout)).toEqual({ [gwEnroll.device]: 3 });
      const exported = await cli.json(['-d', gw, 'bundle', 'export', '--out', f2]);
      expect(exported).toEqual({ file: f2, ops: 3, bytes: (await stat(f2)).size });
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

    // HQ takes both bundles (--json and text import) and finds case-7 in conflict; meanwhile alice
    // writes down her version vector for HQ's bundle back (bundle export --since).
    const aliceVv = join(root, 'alice-vv.json');
    const vvWritten = cli.ok(['-d', fa, 'vv']).then((r) => writeFile(aliceVv, r.stdout));
    // (HQ holds alice's certificate since it signed it: the bundle's copy is not news.)
    expect(await cli.json(['-d', hq, 'bundle', 'import', f1])).toMatchObject({ added: 1, duplicates: 0, refused: 0, certificates: 0 });
    expect((await cli.ok(['-d', hq, 'bundle', 'import', f2])).stdout.trim()).toBe('added 3 ops (0 already held, 0 refused)');
    const conflicts = await cli.json(['-d', hq, 'conflicts']);
    expect(conflicts).toHaveLength(1);
    expect(conflicts[0]).toMatchObject({ domain: 'case', entity: 'case-7', fields: [{ field: 'status' }] });
    expect(conflicts[0].fields[0].candidates.map((c: { value: string }) => c.value).sort()).toEqual(['escalated', 'open']);
    const resolved = await cli.ok(['-d', hq, 'resolve', conflicts[0].id, 'status=escalated']);
    expect(resolved.stdout.trim()).toMatch(/^resolve #3 [0-9a-f]{64}$/);
    // Nothing to show is said in words; a stopped node says it syncs with no one.
    const [noConflicts, noOps, notRunning, notRunningJson] = await Promise.all([
      cli.ok(['-d', hq, 'conflicts']),
      cli.ok(['-d', hq, 'ops', '--entity', 'no-such-entity']),
      cli.ok(['-d', hq, 'peers']),
      cli.json(['-d', hq, 'peers']),
    ]);
    expect([noConflicts.stdout, noOps.stdout, notRunning.stdout, notRunningJson]).toEqual(['no open conflicts\n', 'no ops\n', 'the node is not running (fieldmesh start): it syncs with no one\n', []]);

    // Back to alice by bundle: what she lacks (imported in-process).
    await vvWritten;
    expect(JSON.parse(await readFile(aliceVv, 'utf8'))).toEqual({ [fieldInit.device]: 1 });
    const back = join(root, 'back.bundle');
    await cli.ok(['-d', hq, 'bundle', 'export', '--out', back, '--since', aliceVv]);
    const imported = await withNode(fa, async (n) => n.importBundle(await readFile(back)));
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
    badUsage.forEach(([args, code, message], i) => {
      const r = results[HELP.length + i]!;
      expect({ args, code: r.code, stdout: r.stdout }).toEqual({ args, code, stdout: '' });
      expect(r.stderr, args.join(' ')).toMatch(new RegExp(message.source, 'm'));
      expect(r.stderr, args.join(' ')).not.toMatch(/^\s+at /m); // no stack trace
    });
    // None of them touched the working dir (no default data dir was created).
    expect(await readdir(cwd)).toEqual([]);
  }, 150_000);

  it('enroll() itself refuses what the command refuses, without config.json (in-process)', async () => {
    const root = await cli.dir();
    const { dirs } = await team(root, [['alice', 'alice', 'field']]);
    const other = await team(join(root, 'other'), []);
    const refused = (options: Partial<Parameters<typeof enroll>[0]>) =>
      enroll({ hqDataDir: dirs.hq!.dir, dataDir: dirs.alice!.dir, team: TEAM, user: 'alice', role: 'field', ...options }).then(
        () => 'enrolled',
        (err: { code: string }) => err.code,
      );
    const cert = await readFile(join(dirs.alice!.dir, 'device.cert'));
    expect(await refused({ hqDataDir: dirs.alice!.dir, dataDir: join(root, 'x') })).toBe('NOT_HQ'); // a field device's key signs nothing
    expect(await refused({ hqDataDir: join(root, 'nothing-here'), dataDir: join(root, 'x') })).toBe('NOT_HQ');
    expect(await refused({ dataDir: dirs.hq!.dir })).toBe('IS_HQ');
    expect(await refused({ hqDataDir: other.dirs.hq!.dir, dataDir: dirs.hq!.dir, force: true })).toBe('IS_HQ');
    expect(await refused({ user: 'mallory' })).toBe('ALREADY_ENROLLED');
    expect(await refused({ hqDataDir: other.dirs.hq!.dir, force: true })).toBe('OTHER_TEAM');
    expect(await readFile(join(dirs.alice!.dir, 'device.cert'))).toEqual(cert);
    expect(await readdir(root)).not.toContain('x');
    expect(await refused({ user: 'alice2', role: 'gateway', force: true })).toBe('enrolled');
    expect(await readDeviceCertificate(dirs.alice!.dir)).toMatchObject({ device: dirs.alice!.device, user: 'alice2', role: 'gateway' });
  });

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

  it('start --api refuses an empty api.token (it would lock everyone out) and leaves the file alone', async () => {
    const root = await cli.dir();
    const { dirs } = await team(root, []);
    const tokenFile = join(dirs.hq!.dir, 'api.token');
    await writeFile(tokenFile, ' \n', { mode: 0o600 });
    const r = await cli.run(['-d', dirs.hq!.dir, 'start', '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '127.0.0.1:0']);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toBe(`fieldmesh: ${tokenFile} is empty: put a token in it, or remove it and a new one is made [BAD_TOKEN]\n`);
    expect(await readFile(tokenFile, 'utf8')).toBe(' \n');
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
    // The device that gets lost wrote a note; its bundle reaches HQ only after HQ revoked it (HQ
    // never heard from it: it knows the device by the copy `enroll` left in HQ's dir).
    const lostBundle = join(root, 'lost.bundle');
    await withNode(dirs.lost!.dir, async (n) => {
      await n.mutate({ type: 'create', domain: 'note', entity: 'n-lost', fields: { text: 'left behind' } });
      await writeFile(lostBundle, await n.exportBundle());
    });

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
    // Text for people: each conflict, its fields and every candidate with who wrote it.
    expect((conflictsText as Result).stdout).toMatch(new RegExp(`^conflict ${conflictId} on case/case-7 \\(fieldmesh resolve ${conflictId} field=value\\.\\.\\., or --delete\\):\\n  \\w+: .+ by \\S+ \\(\\w{8}\\) \\| .+ by \\S+ \\(\\w{8}\\)`, 'm'));
    expect((peersJson as { device: string; role: string }[]).map((p) => [p.device, p.role])).toEqual([[gw.device, 'gateway']]);
    const peerLines = (peersText as Result).stdout.trim().split('\n');
    expect(peerLines.map((l) => l.split(' ')[0]).sort()).toEqual([alice.device, hq.device].sort());
    for (const line of peerLines) expect(line).toMatch(/^\S+ \S+ \((field|server)\) at \/ip4\/127\.0\.0\.1\/tcp\/\d+.*: (caught up|it lacks \d+ of our ops, we lack \d+ of its), connected since \d{4}-/);
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

    const [queryText, missing, unknownDomain, badFields, getUnknownDomain, lostImport, portTaken] = (await pool(4, [
      () => cli.ok(['-d', alice.dataDir, 'query', 'note']),
      () => cli.run(['-d', alice.dataDir, 'get', 'case', 'nope']),
      () => cli.run(['--json', '-d', alice.dataDir, 'put', 'nodomain', 'x', 'a=1']),
      // The team's schema is checked before signing: HQ would refuse this change anyway.
      () => cli.run(['--json', '-d', alice.dataDir, 'put', 'case', 'c-bad', 'title=Shed', 'status=nonsense']),
      () => cli.run(['-d', alice.dataDir, 'get', 'nodomain', 'x']),
      // The revoked device's note is refused, and the import says why.
      () => cli.ok(['-d', hq.dataDir, 'bundle', 'import', lostBundle]),
      // HQ's port is taken: one line, no stack trace.
      () => cli.run(['-d', dirs.lost!.dir, 'start', '--listen', `/ip4/127.0.0.1/tcp/${port}`]),
    ])) as [Result, Result, Result, Result, Result, Result, Result];
    expect(getUnknownDomain.code).toBe(1);
    expect(getUnknownDomain.stderr.trim()).toBe('fieldmesh: unknown domain "nodomain"; declared: case, evidence, task, note [UNKNOWN_DOMAIN]');
    expect(lostImport.stdout.trim().split('\n')).toEqual(['added 0 ops (0 already held, 1 refused)', `  refused 1 op(s) of ${dirs.lost!.device}: HQ revoked it after seq 0`]);
    expect({ code: portTaken.code, stdout: portTaken.stdout, stderr: portTaken.stderr }).toEqual({ code: 1, stdout: '', stderr: `fieldmesh: cannot listen on /ip4/127.0.0.1/tcp/${port}: address already in use [EADDRINUSE]\n` });
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
