/**
 * The `fieldmesh` command as real processes: `revoke` follows the node's rules, as HQ's API does
 * (revoking again returns the first revocation and appends nothing; a device never enrolled is
 * DEVICE_NOT_FOUND), and a command that only opens a stopped data dir never loads libp2p (the
 * mesh is imported by `start` alone). Every process is stopped and every dir removed after each test.
 */
import { spawn } from 'node:child_process';
import { access, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Level } from 'level';
import { describe, expect, it } from 'vitest';
import { DEFAULT_DOMAINS, writeConfig } from '../../src/cli/config.ts';
import { signerFromSeed } from '../../src/core/keys.ts';
import { enroll } from '../../src/node/enroll.ts';
import { entityKeyOf } from '../../src/store/keys.ts';
import { TABLES, tableKey } from '../../src/store/tables.ts';
import { CLI, stopChild, useCli, withNode } from './helpers.ts';

const cli = useCli();
const TEAM = 'rescue';

/** HQ's data dir and one enrolled field device's, as `fieldmesh init` / `enroll` leave them, HQ knowing the device. */
async function team(root: string) {
  const hq = join(root, 'hq');
  await mkdir(hq, { recursive: true });
  await writeConfig(hq, { team: TEAM, user: 'hq-staff', role: 'server', domains: DEFAULT_DOMAINS });
  const hqDevice = await withNode(hq, async (n) => n.device);
  const tablet = join(root, 'tablet');
  const cert = await enroll({ hqDataDir: hq, dataDir: tablet, team: TEAM, user: 'alice', role: 'field' });
  await writeConfig(tablet, { team: TEAM, user: 'alice', role: 'field', domains: DEFAULT_DOMAINS });
  // HQ holds the tablet's certificate, as after their first sync (`enroll` writes it to the tablet's dir only).
  await withNode(hq, (n) => n.addCertificates([cert.bytes]));
  return { hq, hqDevice, tablet, tabletDevice: cert.device };
}

describe('revoke', () => {
  it('returns the existing revocation when the device is revoked already (nothing appended) and refuses a device never enrolled', async () => {
    const { hq, hqDevice, tabletDevice } = await team(await cli.dir());
    const first = await cli.json(['-d', hq, 'revoke', tabletDevice, '--reason', 'lost in the river']);
    expect(first).toEqual({ id: expect.stringMatching(/^[0-9a-f]{64}$/), seq: 1, target: tabletDevice, afterSeq: 0, created: true });
    const again = await cli.json(['-d', hq, 'revoke', tabletDevice, '--after-seq', '5', '--reason', 'again']);
    expect(again).toEqual({ ...first, created: false });
    const text = await cli.ok(['-d', hq, 'revoke', tabletDevice]);
    expect(text.stdout.trim()).toBe(`${tabletDevice} was revoked already, after seq 0: nothing appended`);

    const stranger = signerFromSeed(new Uint8Array(32).fill(7)).device;
    const refused = await cli.run(['-d', hq, 'revoke', stranger]);
    expect(refused.code).toBe(1);
    expect(refused.stderr.trim()).toBe(`fieldmesh: device ${stranger} is not enrolled in team ${TEAM} (HQ holds no certificate for it) [DEVICE_NOT_FOUND]`);
    const hqItself = await cli.run(['-d', hq, 'revoke', hqDevice]);
    expect([hqItself.code, hqItself.stderr.trim().endsWith('[CANNOT_REVOKE_HQ]')]).toEqual([1, true]);

    const revocations = await withNode(hq, (n) => n.ops({ type: 'revoke' }));
    expect(revocations.map((o) => o.id)).toEqual([first.id]);
  });

  it('enroll --force of a revoked device is refused (DEVICE_REVOKED) and changes nothing: a new certificate would not lift the revocation', async () => {
    const { hq, tablet, tabletDevice } = await team(await cli.dir());
    await cli.ok(['-d', hq, 'revoke', tabletDevice, '--reason', 'lost in the river']);
    const before = await readFile(join(tablet, 'device.cert'));
    const refused = await cli.run(['-d', tablet, 'enroll', '--hq', hq, '--user', 'erin', '--force']);
    expect([refused.code, refused.stdout, refused.stderr.trim()]).toEqual([1, '', `fieldmesh: device ${tabletDevice} is revoked: enroll its replacement under a new key [DEVICE_REVOKED]`]);
    expect(await readFile(join(tablet, 'device.cert'))).toEqual(before);
    // A device enrolled through the CLI is known to HQ at once, before it ever syncs.
    const replacement = join(await cli.dir(), 'replacement');
    const enrolled = await cli.json(['-d', replacement, 'enroll', '--hq', hq, '--user', 'erin']);
    expect(await withNode(hq, async (n) => n.certificateOf(enrolled.device)?.user)).toBe('erin');
  });

  it('a data dir that lost its device.key says so (KEY_MISSING) and makes no new key, whichever command is run', async () => {
    const { hq, tablet } = await team(await cli.dir());
    await withNode(tablet, (n) => n.mutate({ type: 'create', domain: 'note', entity: 'n-1', fields: { text: 'unsynced' } }));
    await rm(join(tablet, 'device.key'));
    for (const args of [['status'], ['put', 'note', 'n-2', 'text=x'], ['enroll', '--hq', hq, '--user', 'alice', '--force'], ['init', '--team', TEAM, '--user', 'alice', '--role', 'field']]) {
      const r = await cli.run(['-d', tablet, ...args]);
      expect([r.code, r.stderr.trim()], args.join(' ')).toEqual([1, `fieldmesh: ${join(tablet, 'device.key')} is missing, but ${tablet} holds a certificate: restore device.key from a backup of this dir (a new key would be another device), or set up a new data dir and enroll it [KEY_MISSING]`]);
      await expect(access(join(tablet, 'device.key'))).rejects.toThrow();
    }
  });

  it('verify finds a damaged entity row (exit 3) that status trips over, and verify --repair rebuilds it from the logs (exit 0)', async () => {
    const { tablet } = await team(await cli.dir());
    await withNode(tablet, (n) => n.mutate({ type: 'create', domain: 'note', entity: 'n-1', fields: { text: 'kept' } }));
    const db = new Level<string, Uint8Array>(join(tablet, 'db'), { keyEncoding: 'utf8', valueEncoding: 'view' });
    await db.open();
    const key = tableKey(TABLES.entity, entityKeyOf('note', 'n-1'));
    const row = Uint8Array.from((await db.get(key))!);
    row[10]! ^= 0x01;
    await db.put(key, row);
    await db.close();
    expect((await cli.run(['-d', tablet, 'get', 'note', 'n-1'])).stderr).toMatch(/checksum mismatch .*\[STORE_CORRUPT\]$/m);
    const found = await cli.run(['-d', tablet, 'verify']);
    expect(found.code).toBe(3);
    expect(found.stdout).toMatch(/^1 ops of 1 devices checked: 1 problems$/m);
    expect(found.stdout).toContain('"code": "BAD_ROW"');
    const repaired = await cli.run(['-d', tablet, 'verify', '--repair']);
    expect([repaired.code, repaired.stdout.trim()]).toEqual([0, '1 ops of 1 devices checked: all valid']);
    expect(JSON.parse((await cli.ok(['-d', tablet, 'get', 'note', 'n-1'])).stdout).fields).toEqual({ text: 'kept' });
  });

  it('damaged set-up files give one line naming the file and a code: a config without domains object, a config, key or certificate that is a directory', async () => {
    const root = await cli.dir();
    const { tablet } = await team(root);
    const config = join(tablet, 'config.json');
    const original = await readFile(config, 'utf8');
    for (const domains of [null, ['manual']]) {
      await writeFile(config, JSON.stringify({ ...JSON.parse(original), domains }));
      const r = await cli.run(['-d', tablet, 'status']);
      expect([r.code, r.stderr.trim()], JSON.stringify(domains)).toEqual([1, `fieldmesh: ${config} must hold an object with team, user and role (strings) and domains (an object of domain: strategy) [BAD_CONFIG]`]);
    }
    await writeFile(config, original);
    for (const [file, code] of [['config.json', 'BAD_CONFIG'], ['device.key', 'KEY_CORRUPT'], ['device.cert', 'CERT_CORRUPT']] as const) {
      const path = join(tablet, file);
      const saved = await readFile(path);
      await rm(path);
      await mkdir(path);
      const r = await cli.run(['-d', tablet, 'status']);
      expect([r.code, r.stderr.trim()], file).toEqual([1, expect.stringMatching(new RegExp(`^fieldmesh: .*${path.replace(/[.]/g, '\\.')}.*it is a directory \\[${code}\\]$`))]);
      await rm(path, { recursive: true });
      await writeFile(path, saved, { mode: 0o600 });
    }
    expect((await cli.run(['-d', tablet, 'status'])).code).toBe(0);
  });

  it('a device that learned of its revocation (a bundle from HQ) says so in status and refuses writes that would count nowhere', async () => {
    const root = await cli.dir();
    const { hq, tablet, tabletDevice } = await team(root);
    await withNode(tablet, (n) => n.mutate({ type: 'create', domain: 'note', entity: 'n-1', fields: { text: 'kept' } }));
    await cli.ok(['-d', hq, 'revoke', tabletDevice, '--after-seq', '1', '--reason', 'lost in the river']);
    const bundle = join(root, 'for-tablet.bundle');
    await cli.ok(['-d', hq, 'bundle', 'export', '--out', bundle]);
    await cli.ok(['-d', tablet, 'bundle', 'import', bundle]);

    const status = await cli.json(['-d', tablet, 'status']);
    expect([status.forks, status.revoked]).toEqual([[], [{ device: tabletDevice, afterSeq: 1 }]]);
    expect((await cli.ok(['-d', tablet, 'status'])).stdout).toContain(`revoked ${tabletDevice} (this device) by HQ: its ops after seq 1 count nowhere\n`);
    const refused = await cli.run(['-d', tablet, 'put', 'note', 'n-2', 'text=lost']);
    expect([refused.code, refused.stderr.trim()]).toEqual([1, 'fieldmesh: HQ revoked this device after seq 1: nothing it writes counts any more [DEVICE_REVOKED]']);
    expect(await withNode(tablet, async (n) => n.versionVector()[tabletDevice])).toBe(1);
  });
});

describe('loading', () => {
  it('a command on a stopped data dir (status) does not load libp2p or the mesh', async () => {
    const root = await cli.dir();
    const { tablet } = await team(root);
    // Records every module the process resolves, and writes the list when it exits.
    const hook = join(root, 'record-modules.mjs');
    const list = join(root, 'modules.json');
    await writeFile(
      hook,
      [
        "import { registerHooks } from 'node:module';",
        "import { writeFileSync } from 'node:fs';",
        'const urls = new Set();',
        'registerHooks({ resolve(specifier, context, next) { const r = next(specifier, context); urls.add(r.url); return r; } });',
        `process.on('exit', () => writeFileSync(${JSON.stringify(list)}, JSON.stringify([...urls])));`,
      ].join('\n'),
    );
    const child = spawn(process.execPath, ['--import', pathToFileURL(hook).href, CLI, '--json', '-d', tablet, 'status'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_OPTIONS: '' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => void stopChild(child, 5_000), 60_000);
    const code = await new Promise<number | null>((done) => child.once('close', done));
    clearTimeout(timer);
    expect(code, stderr).toBe(0);
    expect(JSON.parse(stdout)).toMatchObject({ role: 'field', links: [] });

    const urls = JSON.parse(await readFile(list, 'utf8')) as string[];
    // The recording works: the node itself was loaded.
    expect(urls.some((u) => u.endsWith('/src/node/field-node.ts'))).toBe(true);
    expect(urls.filter((u) => u.endsWith('/src/net/mesh.ts') || u.endsWith('/src/net/session-driver.ts') || /\/node_modules\/(libp2p|@libp2p\/(tcp|mdns)|@chainsafe)\//.test(u))).toEqual([]);
  });
});
