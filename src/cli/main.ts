#!/usr/bin/env node
/**
 * The `fieldmesh` command. Every command takes --data (the node's data dir) and --json.
 * Commands that read or write a node talk to the running node through its control socket when
 * `fieldmesh start` holds the data dir, and open the data dir themselves otherwise.
 * Exit codes: 0 done, 1 failed (a clear message on stderr), 2 bad usage, 3 verify found problems.
 */
import { Command, CommanderError, Option } from 'commander';
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { buildApi } from '../hq/api.ts';
import { ROLES, type Role } from '../core/cert.ts';
import { FieldmeshError } from '../core/errors.ts';
import { FieldNode } from '../node/field-node.ts';
import type { LinkInfo } from '../net/mesh.ts';
import { enroll } from '../node/enroll.ts';
import { COMMANDS, toJson, type CommandName } from './commands.ts';
import { DEFAULT_DOMAINS, readConfig, toPolicies, toRules, writeConfig, type NodeConfig } from './config.ts';
import { Policy } from '../hq/policy.ts';
import { ReceiptIssuer } from '../hq/receipts.ts';
import { callRunning, serveControl } from './control.ts';
import { readFile, writeFile } from 'node:fs/promises';

const program = new Command('fieldmesh')
  .description('Offline-first sync for field teams: signed op logs gossiped over libp2p, forwarded to HQ.')
  .option('-d, --data <dir>', 'the node\'s data dir', process.env.FIELDMESH_DATA ?? './fieldmesh-data')
  .option('--json', 'print JSON instead of text')
  .showHelpAfterError()
  .exitOverride();

const globals = () => program.opts<{ data: string; json?: boolean }>();
const print = (value: unknown, text?: (v: never) => string) => {
  if (globals().json || text === undefined) console.log(toJson(value, globals().json ? undefined : 2));
  else console.log(text(value as never));
};

/** field=value pairs; values parse as JSON when they can (numbers, true, ["a"]), else stay text. */
function parseFields(pairs: readonly string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new FieldmeshError('BAD_ARGUMENT', `expected field=value, got ${JSON.stringify(pair)}`);
    const raw = pair.slice(eq + 1);
    let value: unknown = raw;
    try {
      value = JSON.parse(raw);
    } catch {
      /* plain text */
    }
    out[pair.slice(0, eq)] = value;
  }
  return out;
}

async function openNode(dataDir: string): Promise<FieldNode> {
  const config = await readConfig(dataDir);
  // The team's domain rules, checked before a change is signed (HQ would refuse it anyway).
  const checkChange = new Policy(toRules(config.domains)).checker(config.role);
  return FieldNode.open({ dataDir, team: config.team, user: config.user, role: config.role, domains: toPolicies(config.domains), checkChange });
}

/** Runs a command on the node of --data: through the running node if there is one. */
async function onNode(method: CommandName, params: Record<string, unknown>): Promise<unknown> {
  const dataDir = resolve(globals().data);
  const running = await callRunning(dataDir, method, params);
  if (running !== undefined) return running.result;
  const node = await openNode(dataDir);
  try {
    return await COMMANDS[method](node, params);
  } finally {
    await node.close();
  }
}

program
  .command('init')
  .description('set up a data dir: a device key, and for HQ (--role server) the team root certificate')
  .requiredOption('--team <name>', 'team name')
  .requiredOption('--user <name>', 'user of this device')
  .addOption(new Option('--role <role>', 'device role').choices([...ROLES]).default('server'))
  .option('--domains <file>', 'JSON file of domains and strategies (default: case, evidence, task, note)')
  .action(async (opts: { team: string; user: string; role: Role; domains?: string }) => {
    const dataDir = resolve(globals().data);
    await mkdir(dataDir, { recursive: true, mode: 0o700 });
    const domains = opts.domains === undefined ? DEFAULT_DOMAINS : (JSON.parse(await readFile(opts.domains, 'utf8')) as NodeConfig['domains']);
    const config: NodeConfig = { team: opts.team, user: opts.user, role: opts.role, domains };
    await writeConfig(dataDir, config);
    if (opts.role !== 'server') {
      // A field device is usable offline once enrolled; init only prepares its key.
      const { loadOrCreateDeviceKey } = await import('../node/device-key.ts');
      const { key } = await loadOrCreateDeviceKey(dataDir);
      print({ device: key.signer.device, dataDir, enrolled: false }, (v: { device: string }) => `device ${v.device}: key created in ${dataDir}; enroll it with HQ (fieldmesh enroll)`);
      return;
    }
    const node = await openNode(dataDir);
    print({ device: node.device, team: node.team, dataDir, role: 'server' }, (v: { device: string; team: string }) => `HQ ${v.device} of team ${v.team} ready in ${dataDir}`);
    await node.close();
  });

program
  .command('enroll')
  .description('enroll a device: HQ signs its certificate (HQ\'s data dir must be on this machine)')
  .requiredOption('--hq <dir>', 'HQ\'s data dir')
  .requiredOption('--user <name>', 'user of the device')
  .addOption(new Option('--role <role>', 'device role').choices(['field', 'gateway']).default('field'))
  .option('--valid-days <n>', 'certificate validity in days', (v) => Number.parseInt(v, 10), 365)
  .action(async (opts: { hq: string; user: string; role: Role; validDays: number }) => {
    const dataDir = resolve(globals().data);
    const hqConfig = await readConfig(resolve(opts.hq));
    const cert = await enroll({ hqDataDir: resolve(opts.hq), dataDir, team: hqConfig.team, user: opts.user, role: opts.role, validForMs: opts.validDays * 86_400_000 });
    await writeConfig(dataDir, { team: hqConfig.team, user: opts.user, role: opts.role, domains: hqConfig.domains });
    print({ device: cert.device, team: cert.team, user: cert.user, role: cert.role, expires: new Date(cert.expiresMs).toISOString() }, (v: { device: string; team: string; role: string; expires: string }) => `enrolled ${v.device} in team ${v.team} as ${v.role} (until ${v.expires})`);
  });

const collect = (value: string, previous: string[]) => [...previous, value];

program
  .command('start')
  .description('run the node: listen, discover and sync with peers, keep dialling HQ; stops on SIGINT/SIGTERM')
  .option('--listen <multiaddr>', 'address to listen on (repeatable)', collect, [])
  .option('--peer <multiaddr>', 'static peer to keep dialling (repeatable)', collect, [])
  .option('--hq <multiaddr>', 'HQ\'s address (dialled like a static peer, with back-off)')
  .option('--mdns', 'discover peers on the local network by mDNS')
  .option('--api <host:port>', 'HQ only: serve the HTTP API here (token: $FIELDMESH_API_TOKEN or <data>/api.token)')
  .action(async (opts: { listen: string[]; peer: string[]; hq?: string; mdns?: boolean; api?: string }) => {
    const dataDir = resolve(globals().data);
    const node = await openNode(dataDir);
    const listen = opts.listen.length > 0 ? opts.listen : ['/ip4/127.0.0.1/tcp/0'];
    await node.start({ listen, peers: [...opts.peer, ...(opts.hq !== undefined ? [opts.hq] : [])], mdns: opts.mdns === true });
    const control = await serveControl(node, dataDir);
    const config = await readConfig(dataDir);
    const receipts = node.role === 'server' ? new ReceiptIssuer(node, new Policy(toRules(config.domains))) : null;
    receipts?.start();
    let api: Awaited<ReturnType<typeof buildApi>> | null = null;
    if (opts.api !== undefined) {
      if (node.role !== 'server') throw new FieldmeshError('NOT_HQ', '--api is for HQ (role server)');
      const [host, port] = splitHostPort(opts.api);
      api = await buildApi(node, { token: await apiToken(dataDir), receipts: receipts! });
      await api.listen({ host, port });
      const address = api.server.address();
      print({ event: 'api', url: typeof address === 'object' && address !== null ? `http://${address.address}:${address.port}` : String(address) }, (v: { url: string }) => `HTTP API on ${v.url} (bearer token in ${join(dataDir, 'api.token')} or $FIELDMESH_API_TOKEN)`);
    }
    const events = node.subscribe({ kinds: ['peer'] });
    print({ event: 'started', device: node.device, role: node.role, addresses: node.addresses() }, (v: { device: string; addresses: string[] }) => `fieldmesh ${v.device} listening on\n  ${v.addresses.join('\n  ')}`);
    let stopping = false;
    const stop = async () => {
      if (stopping) return;
      stopping = true;
      events.close();
      control.close();
      await api?.close();
      await receipts?.stop();
      await node.close();
      print({ event: 'stopped' }, () => 'stopped');
      process.exit(0);
    };
    process.on('SIGINT', () => void stop());
    process.on('SIGTERM', () => void stop());
    for await (const event of events) {
      if (event.kind === 'peer') print({ event: event.event.kind, ...event.event }, (v: { event: string; device: string | null; code?: string }) => `${v.event} ${v.device ?? ''} ${v.code ?? ''}`.trim());
    }
  });

function splitHostPort(value: string): [string, number] {
  const at = value.lastIndexOf(':');
  const port = Number.parseInt(value.slice(at + 1), 10);
  if (at <= 0 || !Number.isInteger(port) || port < 0 || port > 65535) throw new FieldmeshError('BAD_ARGUMENT', `--api wants host:port, got ${value}`);
  return [value.slice(0, at), port];
}

/** The API token: $FIELDMESH_API_TOKEN, else <data>/api.token (made on first use, mode 0600). */
async function apiToken(dataDir: string): Promise<string> {
  if (process.env.FIELDMESH_API_TOKEN) return process.env.FIELDMESH_API_TOKEN;
  const path = join(dataDir, 'api.token');
  try {
    return (await readFile(path, 'utf8')).trim();
  } catch {
    const token = randomBytes(24).toString('base64url');
    await writeFile(path, token + '\n', { mode: 0o600 });
    return token;
  }
}

const nodeCommand = (name: string, description: string) => program.command(name).description(description);

nodeCommand('put', 'create or update an entity: put <domain> <entity> field=value...')
  .argument('<domain>')
  .argument('<entity>')
  .argument('[fields...]', 'field=value pairs (values as JSON where possible)')
  .option('--create', 'fail if the entity exists')
  .action(async (domain: string, entity: string, fields: string[], opts: { create?: boolean }) => {
    print(await onNode('put', { domain, entity, fields: parseFields(fields), type: opts.create ? 'create' : 'update' }), (v: { id: string; seq: number; type: string; status: string }) => `${v.type} #${v.seq} ${v.id} ${v.status}`);
  });

nodeCommand('get', 'show an entity')
  .argument('<domain>')
  .argument('<entity>')
  .action(async (domain: string, entity: string) => {
    const view = await onNode('get', { domain, entity });
    if (view === null) throw new FieldmeshError('ENTITY_NOT_FOUND', `${domain}/${entity} does not exist`);
    print(view);
  });

nodeCommand('query', 'list entities of a domain: query <domain> [field=value...]')
  .argument('<domain>')
  .argument('[where...]')
  .option('--limit <n>', 'most entities', (v) => Number.parseInt(v, 10), 1000)
  .action(async (domain: string, where: string[], opts: { limit: number }) => {
    print(await onNode('query', { domain, where: parseFields(where), limit: opts.limit }), (v: { entity: string; fields: unknown }[]) => v.map((e) => `${e.entity} ${toJson(e.fields)}`).join('\n'));
  });

nodeCommand('delete', 'delete an entity')
  .argument('<domain>')
  .argument('<entity>')
  .action(async (domain: string, entity: string) => {
    print(await onNode('delete', { domain, entity }), (v: { id: string; seq: number; status: string }) => `delete #${v.seq} ${v.id} ${v.status}`);
  });

nodeCommand('ops', 'list ops, filtered')
  .option('--type <type>')
  .option('--domain <domain>')
  .option('--entity <entity>')
  .option('--device <device>')
  .addOption(new Option('--status <status>').choices(['pending', 'synced', 'failed', 'conflict']))
  .option('--limit <n>', 'most ops', (v) => Number.parseInt(v, 10), 1000)
  .action(async (opts: Record<string, unknown>) => {
    print(await onNode('ops', opts), (v: { device: string; seq: number; type: string; domain: string | null; entity: string | null; status: string; reason?: string }[]) =>
      v.map((o) => `${o.device.slice(-8)} #${o.seq} ${o.type} ${o.domain ?? ''}/${o.entity ?? ''} ${o.status}${o.reason ? ` (${o.reason})` : ''}`).join('\n'),
    );
  });

function describeLink(link: LinkInfo): string {
  if (link.connected) return `link ${link.address} up`;
  const next = link.nextAttemptMs === null ? '' : `, next dial in ${Math.max(0, Math.round((link.nextAttemptMs - Date.now()) / 1000))} s`;
  return `link ${link.address} down: ${link.attempts} dial(s)${link.lastError === null ? '' : `, last error: ${link.lastError}`}${next}`;
}

nodeCommand('status', 'per-status counts, per-device queues and the state hash').action(async () => {
  print(await onNode('status', {}), (v: { device: string; counts: Record<string, number>; devices: { device: string; lastSeq: number; lastSyncedSeq: number; counts: Record<string, number> }[]; links: LinkInfo[]; stateHash: string }) =>
    [
      `device ${v.device}`,
      `counts ${toJson(v.counts)}`,
      ...v.devices.map((d) => `  ${d.device.slice(-8)} last #${d.lastSeq}, last synced #${d.lastSyncedSeq} ${toJson(d.counts)}`),
      ...v.links.map(describeLink),
      `state ${v.stateHash}`,
    ].join('\n'),
  );
});

nodeCommand('conflicts', 'open manual conflicts').action(async () => print(await onNode('conflicts', {})));

nodeCommand('resolve', 'resolve a conflict: resolve <conflict-id> field=value... | --delete')
  .argument('<conflict>')
  .argument('[fields...]')
  .option('--delete', 'resolve by deleting the entity')
  .action(async (conflict: string, fields: string[], opts: { delete?: boolean }) => {
    print(await onNode('resolve', { conflict, fields: parseFields(fields), delete: opts.delete === true }), (v: { id: string; seq: number }) => `resolve #${v.seq} ${v.id}`);
  });

nodeCommand('revoke', 'HQ only: revoke a device (its ops after what HQ holds are refused everywhere)')
  .argument('<device>')
  .option('--after-seq <n>', 'keep its ops up to this seq (default: all HQ holds)', (v) => Number.parseInt(v, 10))
  .option('--reason <text>', 'why')
  .action(async (device: string, opts: { afterSeq?: number; reason?: string }) => {
    print(await onNode('revoke', { device, ...(opts.afterSeq !== undefined ? { afterSeq: opts.afterSeq } : {}), reason: opts.reason ?? '' }), (v: { target: string; afterSeq: number }) => `revoked ${v.target} after seq ${v.afterSeq}`);
  });

const bundle = program.command('bundle').description('move ops by file (USB stick): export and import');
bundle
  .command('export')
  .description('write every op the target lacks (or everything) to a file')
  .requiredOption('--out <file>', 'bundle file to write')
  .option('--since <file>', 'JSON version vector of the target ({"<device>": seq}); default: everything')
  .action(async (opts: { out: string; since?: string }) => {
    const since = opts.since === undefined ? {} : (JSON.parse(await readFile(opts.since, 'utf8')) as Record<string, number>);
    print(await onNode('bundleExport', { out: resolve(opts.out), since }), (v: { file: string; bytes: number }) => `wrote ${v.file} (${v.bytes} bytes)`);
  });
bundle
  .command('import')
  .description('take in a bundle file through the same checks as the network')
  .argument('<file>')
  .action(async (file: string) => {
    print(await onNode('bundleImport', { file: resolve(file) }), (v: { added: number; duplicates: number; refused: number }) => `added ${v.added} ops (${v.duplicates} already held, ${v.refused} refused)`);
  });

nodeCommand('vv', 'this node\'s version vector (what to pass to bundle export --since)').action(async () => print(await onNode('vv', {})));

nodeCommand('peers', 'peers the running node syncs with').action(async () => print(await onNode('peers', {})));

nodeCommand('verify', 're-check every chain and signature in the data dir').action(async () => {
  const report = (await onNode('verify', {})) as { devices: number; ops: number; problems: unknown[] };
  print(report, (v: typeof report) => `${v.ops} ops of ${v.devices} devices checked: ${v.problems.length === 0 ? 'all valid' : `${v.problems.length} problems\n${toJson(v.problems, 2)}`}`);
  if (report.problems.length > 0) process.exitCode = 3;
});

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) process.exit(err.exitCode === 0 ? 0 : 2);
  const e = err as FieldmeshError;
  if (globals().json) console.error(toJson({ error: { code: e.code ?? 'ERROR', message: e.message } }));
  else console.error(`fieldmesh: ${e.message}${e.code ? ` [${e.code}]` : ''}`);
  process.exit(1);
}
