/**
 * The main job (`npm start`): a field day on this machine, as real processes on loopback
 * (static peers, no mDNS). docs/demo.md tells the story; this prints it as it happens.
 *
 *  1. HQ sets up the team; a gateway and three field devices are enrolled (alice on two devices).
 *  2. Offline: field devices record cases and evidence; HQ staff edit the same case.
 *  3. Field devices and the gateway come up and gossip (HQ still unreachable).
 *  4. The gateway regains the uplink: it carries everyone's ops to HQ; HQ's receipts and edits
 *     flow back through the mesh to every device.
 *  5. A manual conflict (HQ vs field on a case's status) is listed and resolved.
 *  6. Every node prints its per-status counts and state hash: all identical. Exit 0.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { freePort } from '../net/free-port.ts';

const CLI = resolve(import.meta.dirname, '../cli/main.ts');
const root = await mkdtemp(join(tmpdir(), 'fieldmesh-demo-'));
const children: ChildProcess[] = [];
const say = (line: string) => console.log(line);
const dir = (name: string) => join(root, name);

/** Runs one CLI command to completion and returns its JSON output. */
function cli(args: string[]): Promise<any> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [CLI, '--json', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('exit', (code) => (code === 0 ? done(out.trim() === '' ? null : JSON.parse(out.trim().split('\n').pop()!)) : fail(new Error(`fieldmesh ${args.join(' ')} failed (${code}): ${err.trim()}`))));
  });
}

/** Starts a long-running node; resolves with its listen address once it is up. */
function startNode(name: string, args: string[]): Promise<string> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [CLI, '--json', '-d', dir(name), 'start', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    child.on('exit', (code) => fail(new Error(`${name} exited (${code}): ${err.trim()}`)));
    createInterface({ input: child.stdout }).on('line', (line) => {
      const event = JSON.parse(line) as { event: string; addresses?: string[]; device?: string };
      if (event.event === 'started') done(event.addresses![0]!);
      else if (event.event === 'peer:admitted') say(`  ${name.padEnd(8)} syncing with ${short(event.device!)}`);
    });
  });
}

const names: Record<string, string> = {};
const short = (device: string) => names[device] ?? device.slice(-6);

async function waitFor<T>(what: string, check: () => Promise<T | null>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await check();
    if (value !== null) return value;
    await new Promise((r) => setTimeout(r, 300));
  }
  throw new Error(`timed out waiting for ${what}`);
}

const nodes = ['hq', 'gateway', 'alice-tab', 'alice-lap', 'bob'];
async function statuses() {
  return Promise.all(nodes.map(async (n) => ({ name: n, ...(await cli(['-d', dir(n), 'status'])) })));
}

async function main(): Promise<void> {
  say(`fieldmesh field day in ${root}\n`);
  say('1. HQ sets up team "rescue"; it enrolls a gateway and three field devices (alice on two).');
  const hq = await cli(['-d', dir('hq'), 'init', '--team', 'rescue', '--user', 'hq-staff']);
  names[hq.device] = 'hq';
  for (const [name, user, role] of [['gateway', 'base-camp', 'gateway'], ['alice-tab', 'alice', 'field'], ['alice-lap', 'alice', 'field'], ['bob', 'bob', 'field']] as const) {
    const cert = await cli(['-d', dir(name), 'enroll', '--hq', dir('hq'), '--user', user, '--role', role]);
    names[cert.device] = name;
  }

  // Devices check HQ's rules before signing; bob's tablet still has last season's rules, in which a
  // case needed no title, so his untitled case gets through locally and only HQ refuses it.
  await dropRequiredFields(dir('bob'), 'case');
  say('   bob\'s tablet still has last season\'s rules: a case needs no title there.');

  say('\n2. Offline: the field records cases and evidence; HQ staff edit case-7 at the same time.');
  await cli(['-d', dir('alice-tab'), 'put', 'case', 'case-7', 'title=Warehouse fire', 'status=open']);
  await cli(['-d', dir('alice-tab'), 'put', 'evidence', 'ev-1', 'case=case-7', 'tags=["exterior"]']);
  await cli(['-d', dir('alice-lap'), 'put', 'evidence', 'ev-2', 'case=case-7', 'tags=["interior"]']);
  await cli(['-d', dir('bob'), 'put', 'note', 'n-1', 'text=road to site blocked']);
  await cli(['-d', dir('bob'), 'put', 'case', 'case-9', 'title=Flooded basement']);
  await cli(['-d', dir('bob'), 'put', 'case', 'case-11', 'status=open']); // no title: HQ's rules will refuse it
  await cli(['-d', dir('hq'), 'put', 'case', 'case-7', 'title=Warehouse fire', 'status=escalated']);
  say('   alice-tab: case-7 open, ev-1 · alice-lap: ev-2 · bob: note n-1, case-9, case-11 (no title)');
  say('   HQ: case-7 escalated');

  say('\n3. The field devices and the gateway meet at base camp and gossip (no uplink yet:');
  say('   the gateway keeps dialling HQ\'s address with back-off, but HQ is out of reach).');
  const hqPort = await freePort();
  const hqListen = `/ip4/127.0.0.1/tcp/${hqPort}`;
  const gw = await startNode('gateway', ['--hq', `${hqListen}/p2p/${hq.device}`]);
  await Promise.all(['alice-tab', 'alice-lap', 'bob'].map((n) => startNode(n, ['--peer', gw])));
  await waitFor('the field to converge', async () => {
    const s = await Promise.all(['gateway', 'alice-tab', 'alice-lap', 'bob'].map((n) => cli(['-d', dir(n), 'status'])));
    return new Set(s.map((x) => x.stateHash)).size === 1 && s[0].counts.pending >= 5 ? s : null;
  });
  say('   the four field nodes hold the same data; every op is still pending (HQ has not seen it).');

  say('\n4. The gateway regains its uplink: it carries everyone\'s ops to HQ; receipts come back.');
  await startNode('hq', ['--listen', hqListen]);
  const conflict = await waitFor('the case-7 conflict to reach everyone', async () => {
    const c = await cli(['-d', dir('alice-tab'), 'conflicts']);
    return c.length > 0 ? c[0] : null;
  });
  say(`   case-7 has a manual conflict on ${conflict.fields.map((f: { field: string }) => f.field).join(', ')}: ${conflict.fields[0].candidates.map((c: { value: unknown; user: string }) => `${JSON.stringify(c.value)} by ${c.user}`).join(' vs ')}`);

  say('\n5. HQ staff resolve it: status "escalated" stands.');
  await cli(['-d', dir('hq'), 'resolve', conflict.id, 'status=escalated']);

  const final = await waitFor('every node to hold the same, fully receipted data', async () => {
    const s = await statuses();
    const settled = s.every((x) => x.counts.pending === 0 && x.counts.conflict === 0 && x.counts.failed === 1);
    return settled && new Set(s.map((x) => x.stateHash)).size === 1 ? s : null;
  });
  say('\n6. Every node, per status, and its state hash:');
  for (const s of final) say(`   ${s.name.padEnd(10)} synced ${String(s.counts.synced).padStart(3)}  failed ${s.counts.failed}  pending ${s.counts.pending}  conflict ${s.counts.conflict}  state ${s.stateHash.slice(0, 16)}`);
  const failed = await cli(['-d', dir('bob'), 'ops', '--status', 'failed']);
  for (const op of failed) say(`   on bob: ${op.type} ${op.domain}/${op.entity} failed: ${op.reason} (${op.detail})`);
  say(`\nidentical state on all ${final.length} nodes.`);
}

let code = 0;
try {
  await main();
} catch (err) {
  console.error(`demo failed: ${(err as Error).message}`);
  code = 1;
} finally {
  for (const child of children) child.removeAllListeners('exit');
  await Promise.all(children.map((c) => new Promise<void>((r) => (c.exitCode !== null ? r() : (c.once('exit', () => r()), c.kill('SIGTERM'))))));
  await rm(root, { recursive: true, force: true });
}
process.exit(code);

/** Makes a device's copy of a domain's schema require nothing (an older version of the team's rules). */
async function dropRequiredFields(dataDir: string, domain: string): Promise<void> {
  const file = join(dataDir, 'config.json');
  const config = JSON.parse(await readFile(file, 'utf8')) as { domains: Record<string, { schema?: { required?: string[] } }> };
  delete config.domains[domain]!.schema!.required;
  await writeFile(file, JSON.stringify(config, null, 2));
}
