#!/usr/bin/env node
/**
 * The `fieldmesh` command. Every command takes --data (the node's data dir) and --json.
 * Commands that read or write a node talk to the running node through its control socket when
 * `fieldmesh start` holds the data dir, and open the data dir themselves otherwise.
 * Exit codes: 0 done, 1 failed (a clear message on stderr), 2 bad usage, 3 verify found problems.
 *
 * Start-up cost is module loading, so this file imports only what every command needs (commander,
 * the command table, the control socket client); the node, libp2p, the store, HQ's policy,
 * receipts and HTTP API are imported by the commands that use them. A command that reaches a
 * running node through its control socket loads none of them. Node's compile cache keeps the
 * compiled (and type-stripped) modules between runs.
 */
import { enableCompileCache } from 'node:module';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Certificate, Role } from '../core/cert.ts';
import type { OpType } from '../core/op.ts';
import type { Conflict } from '../core/view.ts';
import { FieldmeshError, InvalidInputError } from '../core/errors.ts';
import type { LinkInfo, PeerInfo } from '../net/mesh.ts';
import type { ClockSkew, FieldNode } from '../node/field-node.ts';
import { COMMANDS, MAX_LIST_LIMIT, parseVersionVector, toJson, type CommandName, type Refusal } from './commands.ts';
import type { NodeConfig } from './config.ts';
import { callRunning } from './control.ts';

// Harmless when it cannot (no writable temp dir): it only reports a status. NODE_COMPILE_CACHE
// (set by bin/fieldmesh) overrides the directory; NODE_DISABLE_COMPILE_CACHE=1 turns it off.
enableCompileCache();

/** Bad usage: exits 2, like commander's own usage errors. */
class UsageError extends InvalidInputError {}

const ROLE_CHOICES = ['server', 'gateway', 'field'] as const satisfies readonly Role[];
/** The op types `ops --type` takes (listed here: core/op.ts is more than a usage check should load). */
const OP_TYPE_CHOICES = ['create', 'update', 'delete', 'resolve', 'receipt', 'revoke'] as const satisfies readonly OpType[];

const program = new Command('fieldmesh')
  .description('Offline-first sync for field teams: signed op logs gossiped over libp2p, forwarded to HQ.')
  .option('-d, --data <dir>', 'the node\'s data dir', process.env.FIELDMESH_DATA ?? './fieldmesh-data')
  .option('--json', 'print JSON instead of text')
  // Every command's --help lists -d and --json too: they go before or after the command.
  .configureHelp({ showGlobalOptions: true })
  .showHelpAfterError()
  .exitOverride();

const globals = () => program.opts<{ data: string; json?: boolean }>();
const print = (value: unknown, text?: (v: never) => string) => {
  if (globals().json || text === undefined) console.log(toJson(value, globals().json ? undefined : 2));
  else console.log(text(value as never));
};

/** An integer option within min..max; anything else is a usage error (exit 2) naming the option. */
const integer = (flag: string, min: number, max: number) => (value: string) => {
  const n = /^\d+$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${flag} wants an integer from ${min} to ${max}.`);
  return n;
};

/** field=value pairs; values parse as JSON when they can (numbers, true, ["a"]), else stay text. */
function parseFields(pairs: readonly string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new UsageError('BAD_ARGUMENT', `expected field=value, got ${JSON.stringify(pair)}`, { found: pair });
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

/** A JSON file named by an option: usage errors (exit 2) when it is not JSON; a missing file fails (exit 1). */
async function readJsonFile(flag: string, path: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'ERROR';
    // A path that names no file is a mistake in the command (exit 2); a file that fails to read is not.
    if (code === 'ENOENT' || code === 'EISDIR' || code === 'ENOTDIR') throw new UsageError(code, `cannot read ${flag} ${path}: ${code === 'EISDIR' ? 'it is a directory' : 'no such file'}`, { path });
    throw new FieldmeshError(code, `cannot read ${flag} ${path}: ${(err as Error).message}`, { path });
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new UsageError('BAD_JSON', `${flag} ${path} is not valid JSON: ${(err as Error).message}`, { path });
  }
}

/** The data dir, absolute; `what` names it in errors. A path that exists but is not a directory is refused. */
async function directory(path: string, what = 'data dir'): Promise<string> {
  const dir = resolve(path);
  const notDir = () => new InvalidInputError('NOT_A_DIRECTORY', `${what} ${dir} is not a directory`, { path: dir });
  try {
    if (!(await stat(dir)).isDirectory()) throw notDir();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOTDIR') throw notDir();
    if (code !== 'ENOENT') throw err;
  }
  return dir;
}

const dataDir = () => directory(globals().data);

/** Whether `fieldmesh start` runs on the data dir (its control socket answers). */
const isRunning = async (dir: string) => (await callRunning(dir, 'addresses', {}, 10_000)) !== undefined;

/** The commands that sign changes of entities: they check them against the team's domain rules first. */
const CHANGES: ReadonlySet<CommandName> = new Set(['put', 'delete', 'resolve']);

/** Opens the data dir; with `checkChanges`, local changes are checked against the team's domain rules (HQ would refuse them anyway). */
async function openNode(dir: string, options: { config?: NodeConfig; checkChanges: boolean; rebuildDerived?: boolean }): Promise<FieldNode> {
  const [{ readConfig, toPolicies, toRules }, { FieldNode }] = await Promise.all([import('./config.ts'), import('../node/field-node.ts')]);
  const config = options.config ?? (await readConfig(dir));
  // Compiling the rules' JSON schemas costs start-up time: only for commands that sign changes.
  const checkChange = options.checkChanges ? new (await import('../hq/policy.ts')).Policy(toRules(config.domains)).checker(config.role) : undefined;
  try {
    return await FieldNode.open({ dataDir: dir, team: config.team, user: config.user, role: config.role, domains: toPolicies(config.domains), rebuildDerived: options.rebuildDerived === true, ...(checkChange !== undefined ? { checkChange } : {}) });
  } catch (err) {
    if ((err as FieldmeshError).code === 'NOT_ENROLLED') {
      throw new InvalidInputError('NOT_ENROLLED', `${dir} is not enrolled yet: HQ signs its certificate with \`fieldmesh -d ${dir} enroll --hq <HQ's data dir> --user <name>\``, { path: dir });
    }
    throw err;
  }
}

/** Runs a command on the node of --data: through the running node if there is one. */
async function onNode(method: CommandName, params: Record<string, unknown>): Promise<unknown> {
  return onNodeAt(await dataDir(), method, params);
}

/** How long a command waits for another command that holds a stopped data dir (STORE_LOCKED) to finish. */
const LOCK_WAIT_MS = 15_000;

/**
 * Runs a command on the node of `dir`: through the running node if there is one, else on the
 * data dir itself, waiting a while for another command that has it open (two enrollments at once
 * both open HQ's dir, say).
 */
async function onNodeAt(dir: string, method: CommandName, params: Record<string, unknown>): Promise<unknown> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  let node: FieldNode;
  for (;;) {
    const running = await callRunning(dir, method, params);
    if (running !== undefined) return running.result;
    try {
      node = await openNode(dir, { checkChanges: CHANGES.has(method) });
      break;
    } catch (err) {
      if ((err as FieldmeshError).code !== 'STORE_LOCKED' || Date.now() >= deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 50 + Math.random() * 150));
    }
  }
  try {
    return await COMMANDS[method](node, params);
  } finally {
    await node.close();
  }
}

/** Canonical JSON (keys sorted), to compare configs whatever order their keys were written in. */
const canonical = (value: unknown): string =>
  JSON.stringify(value, (_k, v: unknown) => (v !== null && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : 1))) : v));

program
  .command('init')
  .description('set up a data dir: a device key, and for HQ (--role server) the team root certificate; again with the same values it changes nothing')
  .requiredOption('--team <name>', 'team name')
  .requiredOption('--user <name>', 'user of this device')
  .addOption(new Option('--role <role>', 'device role').choices(ROLE_CHOICES).default('server'))
  .option('--domains <file>', 'JSON file of domains and strategies (default: case, evidence, task, note)')
  .action(async (opts: { team: string; user: string; role: Role; domains?: string }) => {
    const dir = await dataDir();
    const [{ CONFIG_FILE, DEFAULT_DOMAINS, readConfig, toPolicies, toRules, writeConfig }, { readDeviceCertificate }] = await Promise.all([import('./config.ts'), import('../node/enroll.ts')]);
    const domains = opts.domains === undefined ? DEFAULT_DOMAINS : ((await readJsonFile('--domains', resolve(opts.domains))) as NodeConfig['domains']);
    if (typeof domains !== 'object' || domains === null || Array.isArray(domains)) throw new UsageError('BAD_CONFIG', `--domains ${opts.domains} must hold a JSON object of domains`);
    try {
      toPolicies(domains);
      const { Policy } = await import('../hq/policy.ts');
      new Policy(toRules(domains));
    } catch (err) {
      throw new UsageError('BAD_CONFIG', `--domains ${opts.domains}: ${(err as Error).message}`, { path: opts.domains });
    }
    const config: NodeConfig = { team: opts.team, user: opts.user, role: opts.role, domains };

    // Check everything before writing anything: a mistaken init must leave the dir as it was.
    let existing: NodeConfig | null = null;
    try {
      existing = await readConfig(dir);
    } catch (err) {
      if ((err as FieldmeshError).code !== 'NO_CONFIG') throw err;
    }
    const cert = await readDeviceCertificate(dir);
    if (existing !== null) {
      const changed = (['team', 'user', 'role', 'domains'] as const).filter((k) => canonical(existing[k]) !== canonical(config[k]));
      if (changed.length > 0) {
        const way =
          existing.role === 'server'
            ? 'use a new data dir for another team or device'
            : cert === null
              ? 'it holds only a key: enroll it (team and domains then come from HQ, user and role from enroll), or remove the dir and init again'
              : 're-enroll it with `fieldmesh enroll --force` to change its user or role, or use a new data dir';
        throw new InvalidInputError('ALREADY_SET_UP', `${dir} is already set up as ${existing.role} of team ${existing.team} (user ${existing.user}); this init would change its ${changed.join(', ')}, so nothing was changed: ${way}`, {
          path: join(dir, CONFIG_FILE),
          changed,
        });
      }
    }
    if (cert !== null) {
      const hq = cert.role === 'server' || cert.issuer === cert.device;
      if (cert.team !== config.team || hq !== (config.role === 'server') || (!hq && cert.role !== config.role)) {
        throw new InvalidInputError('CERT_MISMATCH', `${dir} holds the certificate of a ${cert.role} of team ${cert.team} (user ${cert.user}): it cannot be set up as ${config.role} of team ${config.team}; nothing was changed`, { path: dir });
      }
    }

    if (config.role !== 'server') {
      // A field device is usable offline once enrolled; init only prepares its key.
      const [{ loadOrCreateDeviceKey }, { refuseLostKey }] = await Promise.all([import('../node/device-key.ts'), import('../node/enroll.ts')]);
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await refuseLostKey(dir);
      const { key, created } = await loadOrCreateDeviceKey(dir);
      if (existing === null) await writeConfig(dir, config);
      print({ device: key.signer.device, dataDir: dir, enrolled: cert !== null }, (v: { device: string; enrolled: boolean }) =>
        `device ${v.device}: key ${created ? 'created' : 'exists'} in ${dir}; ${v.enrolled ? 'enrolled' : 'enroll it with HQ (fieldmesh enroll)'}`,
      );
      return;
    }
    const show = (v: { device: string; team: string }) => `HQ ${v.device} of team ${v.team} ready in ${dir}`;
    if (existing !== null && (await isRunning(dir))) {
      // Set up and running already: nothing to do, say so.
      const status = (await callRunning(dir, 'status', {}))!.result as { device: string; team: string };
      print({ device: status.device, team: status.team, dataDir: dir, role: 'server' }, show);
      return;
    }
    // Opening the node checks the key, the certificate and the database; config.json comes last.
    const node = await openNode(dir, { config, checkChanges: false });
    const device = node.device;
    await node.close();
    if (existing === null) await writeConfig(dir, config);
    print({ device, team: config.team, dataDir: dir, role: 'server' }, show);
  });

program
  .command('enroll')
  .description('enroll a device: HQ signs its certificate (HQ\'s data dir must be on this machine); refuses a device already enrolled unless --force')
  .requiredOption('--hq <dir>', 'HQ\'s data dir')
  .requiredOption('--user <name>', 'user of the device')
  .addOption(new Option('--role <role>', 'device role').choices(['field', 'gateway']).default('field'))
  .option('--valid-days <n>', 'certificate validity in days (1 to 3650)', integer('--valid-days', 1, 3650), 365)
  .option('--force', 'replace the certificate of a device already enrolled in this team (another user, role or expiry); never for an HQ data dir')
  .action(async (opts: { hq: string; user: string; role: Role; validDays: number; force?: boolean }) => {
    const dir = await dataDir();
    const hqDir = await directory(opts.hq, 'HQ data dir');
    const [{ readConfig, writeConfig }, { prepareDeviceDir, readDeviceCertificate, saveCertificate }, { decodeCertificate }, { DEVICE_KEY_FILE }] = await Promise.all([
      import('./config.ts'),
      import('../node/enroll.ts'),
      import('../core/cert.ts'),
      import('../node/device-key.ts'),
    ]);
    const hqConfig = await readConfig(hqDir).catch((err: unknown) => {
      if ((err as FieldmeshError).code === 'NO_CONFIG') throw new InvalidInputError('NOT_HQ', `--hq ${hqDir} is not an HQ data dir: it is not set up (fieldmesh init --role server)`, { path: hqDir });
      throw err;
    });
    if (hqConfig.role !== 'server') throw new InvalidInputError('NOT_HQ', `--hq ${hqDir} is not an HQ data dir: it is set up as ${hqConfig.role} (user ${hqConfig.user})`, { path: hqDir, role: hqConfig.role });
    const mine = await readConfig(dir).catch(() => null);
    if (mine?.role === 'server') throw new InvalidInputError('IS_HQ', `${dir} is an HQ data dir (team ${mine.team}): it cannot be enrolled`, { path: dir });
    if (await isRunning(dir)) throw new InvalidInputError('NODE_RUNNING', `a node is running on ${dir}: stop it before enrolling it`, { path: dir });
    const hqCert = await readDeviceCertificate(hqDir);
    if (hqCert === null) throw new InvalidInputError('NOT_HQ', `--hq ${hqDir} is not an HQ data dir: it holds no certificate (fieldmesh init --role server)`, { path: hqDir });
    const { key, created } = await prepareDeviceDir({ dataDir: dir, hqDataDir: hqDir, team: hqConfig.team, hqDevice: hqCert.device, force: opts.force === true });
    let cert: Certificate;
    try {
      // HQ's node signs (running or not): it refuses a revoked device, and knows the device from now on.
      const issued = (await onNodeAt(hqDir, 'enrollDevice', { device: key.signer.device, user: opts.user, role: opts.role, validDays: opts.validDays })) as { certificate: string };
      cert = decodeCertificate(Buffer.from(issued.certificate, 'base64'));
      if (cert.device !== key.signer.device || cert.issuer !== hqCert.device || cert.team !== hqConfig.team) throw new FieldmeshError('BAD_CERTIFICATE', `the node on ${hqDir} answered with a certificate for ${cert.device} of team ${cert.team} by ${cert.issuer}, not this device's`);
    } catch (err) {
      // A refused enrollment leaves the device's dir as it was.
      if (created) await rm(join(dir, DEVICE_KEY_FILE), { force: true });
      throw err;
    }
    await saveCertificate(dir, cert);
    await writeConfig(dir, { team: hqConfig.team, user: opts.user, role: opts.role, domains: hqConfig.domains });
    print({ device: cert.device, team: cert.team, user: cert.user, role: cert.role, expires: new Date(cert.expiresMs).toISOString() }, (v: { device: string; team: string; role: string; expires: string }) => `enrolled ${v.device} in team ${v.team} as ${v.role} (until ${v.expires})`);
  });

const collect = (value: string, previous: string[]) => [...previous, value];

/** Checks a multiaddr given to `flag`: it must parse and name a TCP port (the only transport). */
async function checkMultiaddr(flag: string, value: string): Promise<void> {
  const { multiaddr } = await import('@multiformats/multiaddr');
  let names: string[];
  try {
    names = multiaddr(value).getComponents().map((c) => c.name);
  } catch (err) {
    throw new UsageError('BAD_MULTIADDR', `${flag} ${JSON.stringify(value)} is not a multiaddr (${(err as Error).message}); e.g. /ip4/127.0.0.1/tcp/4001${flag === '--listen' ? '' : '/p2p/<device>'}`, { flag, value });
  }
  if (!names.includes('tcp')) throw new UsageError('BAD_MULTIADDR', `${flag} ${value} names no TCP port; e.g. /ip4/127.0.0.1/tcp/4001${flag === '--listen' ? '' : '/p2p/<device>'}`, { flag, value });
}

/**
 * Fails early, with the system's error code, when a fixed port we are to listen on is taken or
 * unusable (libp2p's own error is a multi-line text with stack traces).
 */
async function probeListen(address: string): Promise<void> {
  const [{ multiaddr }, { createServer }] = await Promise.all([import('@multiformats/multiaddr'), import('node:net')]);
  const parts = multiaddr(address).getComponents();
  const host = parts.find((c) => c.name === 'ip4' || c.name === 'ip6')?.value;
  const port = Number(parts.find((c) => c.name === 'tcp')?.value ?? 0);
  if (host === undefined || port === 0) return;
  await new Promise<void>((done, fail) => {
    const server = createServer();
    server.once('error', (err: NodeJS.ErrnoException) => fail(listenError(address, err.code ?? 'LISTEN_FAILED', err.message)));
    server.listen({ host, port }, () => server.close(() => done()));
  });
}

const LISTEN_REASONS: Record<string, string> = { EADDRINUSE: 'address already in use', EADDRNOTAVAIL: 'no such local address', EACCES: 'permission denied' };
const listenError = (address: string, code: string, message: string) =>
  new FieldmeshError(code, `cannot listen on ${address}: ${LISTEN_REASONS[code] ?? message}`, { address });

/** libp2p reports failed listen addresses as one text (`UnsupportedListenAddressesError`): made one line. */
function startError(err: unknown, listen: readonly string[]): unknown {
  if ((err as Error).name !== 'UnsupportedListenAddressesError') return err;
  const code = /\b(E[A-Z]{3,})\b/.exec((err as Error).message)?.[1] ?? 'LISTEN_FAILED';
  return listenError(listen.join(', '), code, 'libp2p could not listen there');
}

program
  .command('start')
  .description('run the node: listen, discover and sync with peers, keep dialling HQ; stops on SIGINT/SIGTERM')
  .option('--listen <multiaddr>', 'address to listen on (repeatable)', collect, [])
  .option('--peer <multiaddr>', 'static peer to keep dialling (repeatable)', collect, [])
  .option('--hq <multiaddr>', 'HQ\'s address (dialled like a static peer, with back-off)')
  .option('--mdns', 'discover peers on the local network by mDNS')
  .option('--api <host:port>', 'HQ only: serve the HTTP API here (token: $FIELDMESH_API_TOKEN or <data>/api.token)')
  .action(async (opts: { listen: string[]; peer: string[]; hq?: string; mdns?: boolean; api?: string }) => {
    for (const address of opts.listen) await checkMultiaddr('--listen', address);
    for (const address of opts.peer) await checkMultiaddr('--peer', address);
    if (opts.hq !== undefined) await checkMultiaddr('--hq', opts.hq);
    const apiAt = opts.api === undefined ? null : splitHostPort(opts.api);
    const dir = await dataDir();
    const { readConfig, toRules } = await import('./config.ts');
    const config = await readConfig(dir);
    if (await isRunning(dir)) throw new InvalidInputError('NODE_RUNNING', `a node is running on ${dir} already`, { path: dir });
    if (apiAt !== null && config.role !== 'server') throw new InvalidInputError('NOT_HQ', '--api is for HQ (role server)');
    const listen = opts.listen.length > 0 ? opts.listen : ['/ip4/127.0.0.1/tcp/0'];
    for (const address of listen) await probeListen(address);
    const node = await openNode(dir, { config, checkChanges: true });
    try {
      await node.start({ listen, peers: [...opts.peer, ...(opts.hq !== undefined ? [opts.hq] : [])], mdns: opts.mdns === true });
    } catch (err) {
      await node.close();
      throw startError(err, listen);
    }
    const [{ serveControl }, { Policy }, { ReceiptIssuer }] = await Promise.all([import('./control.ts'), import('../hq/policy.ts'), import('../hq/receipts.ts')]);
    const control = await serveControl(node, dir);
    const receipts = node.role === 'server' ? new ReceiptIssuer(node, new Policy(toRules(config.domains))) : null;
    receipts?.start();
    let api: { close(): Promise<unknown> } | null = null;
    if (apiAt !== null) {
      const { buildApi } = await import('../hq/api.ts');
      const [host, port] = apiAt;
      const server = await buildApi(node, { token: await apiToken(dir), receipts: receipts! });
      // Where the token was taken from: the variable wins over the file.
      const tokenFrom = process.env.FIELDMESH_API_TOKEN !== undefined ? 'from $FIELDMESH_API_TOKEN' : `in ${join(dir, 'api.token')}`;
      api = server;
      try {
        await server.listen({ host, port });
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== undefined && code in LISTEN_REASONS) throw new FieldmeshError(code, `cannot serve the HTTP API on ${opts.api}: ${LISTEN_REASONS[code]}`);
        throw err;
      }
      const address = server.server.address();
      print({ event: 'api', url: typeof address === 'object' && address !== null ? `http://${address.address}:${address.port}` : String(address) }, (v: { url: string }) => `HTTP API on ${v.url} (bearer token ${tokenFrom})`);
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
      if (event.kind === 'peer') print({ event: event.event.kind, ...event.event }, peerEventText);
    }
  });

/** A peer event as a line; a closed session says who ended it (`CERT_REVOKED` from the peer means ours is revoked). */
function peerEventText(v: { event: string; device: string | null; code?: string; blame?: boolean; byPeer?: boolean }): string {
  const who = v.event !== 'peer:closed' ? '' : v.byPeer === true ? '(ended by the peer)' : v.blame === true ? '(we refused the peer)' : '';
  return [v.event, v.device ?? '', v.code ?? '', who].filter((part) => part !== '').join(' ');
}

function splitHostPort(value: string): [string, number] {
  const at = value.lastIndexOf(':');
  const port = /^\d+$/.test(value.slice(at + 1)) ? Number(value.slice(at + 1)) : Number.NaN;
  if (at <= 0 || !Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError('BAD_ARGUMENT', `--api wants host:port, got ${value}`);
  return [value.slice(0, at), port];
}

/**
 * The API token: $FIELDMESH_API_TOKEN, else <data>/api.token (made on first use, mode 0600).
 * An empty one is refused: it would lock everyone out (no request can send it).
 */
async function apiToken(dir: string): Promise<string> {
  if (process.env.FIELDMESH_API_TOKEN !== undefined) {
    if (process.env.FIELDMESH_API_TOKEN.trim() === '') throw new InvalidInputError('BAD_TOKEN', '$FIELDMESH_API_TOKEN is empty: set a token, or unset it to use <data dir>/api.token');
    return process.env.FIELDMESH_API_TOKEN;
  }
  const path = join(dir, 'api.token');
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new InvalidInputError('BAD_TOKEN', `cannot read ${path}: ${(err as Error).message}`, { path });
    const { randomBytes } = await import('node:crypto');
    const token = randomBytes(24).toString('base64url');
    await writeFile(path, token + '\n', { mode: 0o600 });
    return token;
  }
  const token = text.trim();
  if (token === '') throw new InvalidInputError('BAD_TOKEN', `${path} is empty: put a token in it, or remove it and a new one is made`, { path });
  return token;
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
  .option('--limit <n>', `most entities (1 to ${MAX_LIST_LIMIT})`, integer('--limit', 1, MAX_LIST_LIMIT), 1000)
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
  .addOption(new Option('--type <type>').choices(OP_TYPE_CHOICES))
  .option('--domain <domain>')
  .option('--entity <entity>')
  .option('--device <device>')
  .addOption(new Option('--status <status>').choices(['pending', 'synced', 'failed', 'conflict']))
  .option('--limit <n>', `most ops (1 to ${MAX_LIST_LIMIT})`, integer('--limit', 1, MAX_LIST_LIMIT), 1000)
  .action(async (opts: Record<string, unknown>) => {
    print(await onNode('ops', opts), (v: { device: string; seq: number; type: string; domain: string | null; entity: string | null; status: string; reason?: string }[]) =>
      v.length === 0 ? 'no ops' : v.map((o) => `${o.device.slice(-8)} #${o.seq} ${o.type}${o.domain !== null ? ` ${o.domain}/${o.entity}` : ''} ${o.status}${o.reason ? ` (${o.reason})` : ''}`).join('\n'),
    );
  });

function describeLink(link: LinkInfo): string {
  if (link.connected) return `link ${link.address} up`;
  const next = link.nextAttemptMs === null ? '' : `, next dial in ${Math.max(0, Math.round((link.nextAttemptMs - Date.now()) / 1000))} s`;
  return `link ${link.address} down: ${link.attempts} dial(s)${link.lastError === null ? '' : `, last error: ${link.lastError}`}${next}`;
}

nodeCommand('status', 'per-status counts, per-device queues and the state hash').action(async () => {
  type Status = { device: string; counts: Record<string, number>; devices: { device: string; lastSeq: number; lastSyncedSeq: number; counts: Record<string, number> }[]; forks: { device: string; seq: number }[]; revoked: { device: string; afterSeq: number }[]; clockSkews: ClockSkew[]; links: LinkInfo[]; stateHash: string };
  print(await onNode('status', {}), (v: Status) =>
    [
      `device ${v.device}`,
      `counts ${toJson(v.counts)}`,
      ...v.devices.map((d) => `  ${d.device.slice(-8)} last #${d.lastSeq}, last synced #${d.lastSyncedSeq} ${toJson(d.counts)}`),
      ...v.forks.map(
        (f) =>
          `forked ${f.device}${f.device === v.device ? ' (this device)' : ''} at seq ${f.seq}: signed two different ops there (a data dir restored from an old copy, or copied); its ops from seq ${f.seq} on count nowhere${f.device === v.device ? ': set up a new data dir and enroll it to keep writing' : ''}`,
      ),
      ...v.revoked.map((r) => `revoked ${r.device}${r.device === v.device ? ' (this device)' : ''} by HQ: its ops after seq ${r.afterSeq} count nowhere`),
      ...v.clockSkews.map((k) => `clock ahead: ${k.device}'s op #${k.seq} came ${Math.round(k.aheadMs / 1000)} s ahead of this node's clock (${new Date(k.atMs).toISOString()}); kept, but check that device's clock`),
      ...v.links.map(describeLink),
      `state ${v.stateHash}`,
    ].join('\n'),
  );
});

nodeCommand('conflicts', 'open manual conflicts').action(async () =>
  print(await onNode('conflicts', {}), (v: Conflict[]) =>
    v.length === 0
      ? 'no open conflicts'
      : v
          .map((c) =>
            [
              `conflict ${c.id} on ${c.domain}/${c.entity} (fieldmesh resolve ${c.id} field=value..., or --delete):`,
              ...c.fields.map((f) => `  ${f.field}: ${f.candidates.map((w) => `${w.deleted ? '(deleted)' : toJson(w.value)} by ${w.user} (${w.device.slice(-8)})`).join(' | ')}`),
            ].join('\n'),
          )
          .join('\n'),
  ),
);

nodeCommand('resolve', 'resolve a conflict: resolve <conflict-id> field=value... | --delete')
  .argument('<conflict>')
  .argument('[fields...]')
  .option('--delete', 'resolve by deleting the entity')
  .action(async (conflict: string, fields: string[], opts: { delete?: boolean }) => {
    print(await onNode('resolve', { conflict, fields: parseFields(fields), delete: opts.delete === true }), (v: { id: string; seq: number }) => `resolve #${v.seq} ${v.id}`);
  });

nodeCommand('revoke', 'HQ only: revoke a device (its ops after what HQ holds are refused everywhere)')
  .argument('<device>')
  .option('--after-seq <n>', 'keep its ops up to this seq (default: all HQ holds)', integer('--after-seq', 0, Number.MAX_SAFE_INTEGER))
  .option('--reason <text>', 'why')
  .action(async (device: string, opts: { afterSeq?: number; reason?: string }) => {
    print(await onNode('revoke', { device, ...(opts.afterSeq !== undefined ? { afterSeq: opts.afterSeq } : {}), reason: opts.reason ?? '' }), (v: { target: string; afterSeq: number; created: boolean }) =>
      v.created ? `revoked ${v.target} after seq ${v.afterSeq}` : `${v.target} was revoked already, after seq ${v.afterSeq}: nothing appended`,
    );
  });

const bundle = program.command('bundle').description('move ops by file (USB stick): export and import');
bundle
  .command('export')
  .description('write every op the target lacks (or everything) to a file')
  .requiredOption('--out <file>', 'bundle file to write')
  .option('--since <file>', 'JSON version vector of the target ({"<device>": seq}, as `fieldmesh vv` prints on it); default: everything')
  .action(async (opts: { out: string; since?: string }) => {
    let since = {};
    if (opts.since !== undefined) {
      const parsed = await readJsonFile('--since', resolve(opts.since));
      try {
        since = await parseVersionVector(parsed);
      } catch (err) {
        const e = err as FieldmeshError;
        throw new UsageError(e.code, `--since ${opts.since}: ${e.message}`, e.details);
      }
    }
    print(await onNode('bundleExport', { out: resolve(opts.out), since }), (v: { file: string; ops: number; bytes: number }) => `wrote ${v.ops} ops to ${v.file} (${v.bytes} bytes)`);
  });
bundle
  .command('import')
  .description('take in a bundle file through the same checks as the network')
  .argument('<file>')
  .action(async (file: string) => {
    print(await onNode('bundleImport', { file: resolve(file) }), (v: { added: number; duplicates: number; refused: number; refusals?: Refusal[] }) =>
      [
        `added ${v.added} ops (${v.duplicates} already held, ${v.refused} refused)`,
        ...(v.refusals ?? []).map((r) => `  refused ${r.ops} op(s) of ${r.device}: ${r.reason === 'revoked' ? `HQ revoked it after seq ${r.afterSeq}` : `it forked (signed two different ops) at seq ${r.atSeq}`}`),
      ].join('\n'),
    );
  });

nodeCommand('vv', 'this node\'s version vector (what to pass to bundle export --since)').action(async () => print(await onNode('vv', {})));

nodeCommand('peers', 'peers the running node syncs with').action(async () => {
  const running = await callRunning(await dataDir(), 'peers', {});
  if (running === undefined && !globals().json) {
    console.log('the node is not running (fieldmesh start): it syncs with no one');
    return;
  }
  print(running?.result ?? [], (v: PeerInfo[]) =>
    v.length === 0
      ? 'no peers yet'
      : v
          .map((p) => `${p.device} ${p.user ?? '?'} (${p.role ?? '?'}) at ${p.address}: ${p.caughtUp ? 'caught up' : `it lacks ${p.theyLack} of our ops, we lack ${p.weLack} of its`}, connected since ${new Date(p.connectedSinceMs).toISOString()}`)
          .join('\n'),
  );
});

nodeCommand('verify', 're-check every chain and signature in the data dir, and every row\'s checksum')
  .option('--repair', 'first rebuild all derived state (entity states, statuses, indexes) from the logs: the repair for damaged derived rows; the node must be stopped')
  .action(async (opts: { repair?: boolean }) => {
    let report: { devices: number; ops: number; problems: readonly unknown[] };
    if (opts.repair === true) {
      const dir = await dataDir();
      if (await isRunning(dir)) throw new InvalidInputError('NODE_RUNNING', `a node is running on ${dir}: stop it before repairing its data dir`, { path: dir });
      const node = await openNode(dir, { checkChanges: false, rebuildDerived: true });
      try {
        report = await node.verify();
      } finally {
        await node.close();
      }
    } else report = (await onNode('verify', {})) as typeof report;
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
  process.exit(err instanceof UsageError ? 2 : 1);
}
