/**
 * A small Linux network-namespace lab for real-network tests (testing level 4 of DESIGN.md).
 *
 * Everything a lab creates lives in network namespaces it creates itself, named with a per-run
 * prefix (`fmt<pid>-<n>-`): switches are bridges inside their own namespace, hosts reach them over
 * veth pairs, routers are namespaces with forwarding on. Nothing is added to the root namespace,
 * so multicast (mDNS) and all test traffic stay inside the lab. A lab removes every process and
 * namespace it created on `teardown()`, and also, synchronously, on process exit, SIGINT, SIGTERM
 * and SIGHUP (for labs still alive then).
 *
 * Needs root and iproute2 (`ip`; `tc` and the kernel's netem qdisc for Link.impair). Every call to
 * `ip` and `tc` goes through child_process.execFile (no shell).
 * Several runs may share a machine: names carry the test process's pid, and
 * `sweepStaleNamespaces()` removes only namespaces whose creating process is gone.
 *
 *   const lab = new Lab();
 *   const sw = await lab.switch('lan');                          // namespace `…lan` with bridge br0
 *   const a = await lab.host('a');                               // namespace `…a`, loopback up
 *   const link = await lab.attach(a, sw, { address: '10.77.0.2/24' }); // a's eth0 on the bridge
 *   const p = lab.spawn(a, process.execPath, ['server.js']);     // `ip netns exec …a node server.js`
 *   await link.cut(); await link.restore();
 *   await link.impair({ delayMs: 150, jitterMs: 50, lossPercent: 10 }); // tc netem, both directions
 *   await link.clearImpairment();
 *   const r = await lab.router('r');                             // forwarding on
 *   await lab.attach(r, sw, { ifname: 'lan0', address: '10.77.0.1/24' });
 *   const b = await lab.host('b');
 *   const wan = await lab.veth({ ns: r, ifname: 'wan0', address: '10.78.0.1/24' }, { ns: b, ifname: 'eth0', address: '10.78.0.2/24' });
 *   await b.addRoute('10.77.0.0/24', { via: '10.78.0.1' });     // and `gateway: '10.77.0.1'` when attaching a
 *   await lab.teardown();
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const IP = 'ip';
const TC = 'tc';

/** FMT_DEBUG_LOG=<file>: the lab appends what it spawns and tears down there (for leak hunting). */
const dbg = (message: string): void => {
  const file = process.env.FMT_DEBUG_LOG;
  if (file) appendFileSync(file, `${new Date().toISOString()} [${process.pid}] ${message}\n`);
};

export interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
}

export class CommandError extends Error {
  readonly command: readonly string[];
  readonly code: number | string | null;
  readonly stdout: string;
  readonly stderr: string;
  constructor(command: readonly string[], code: number | string | null, stdout: string, stderr: string) {
    super(`${command.join(' ')} failed (${code}): ${stderr.trim() || stdout.trim()}`);
    this.name = 'CommandError';
    this.command = command;
    this.code = code;
    this.stdout = stdout;
    this.stderr = stderr;
  }
}

/** Runs a program (no shell) and resolves with its output; rejects with a CommandError on failure. */
export function run(file: string, args: readonly string[], options: { timeoutMs?: number; input?: string; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(file, args, { timeout: options.timeoutMs ?? 30_000, maxBuffer: 16 * 1024 * 1024, env: options.env ?? process.env, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      if (err) reject(new CommandError([file, ...args], (err as NodeJS.ErrnoException & { code?: number | string }).code ?? err.signal ?? null, String(stdout), String(stderr)));
      else resolve({ stdout: String(stdout), stderr: String(stderr) });
    });
    if (options.input !== undefined) child.stdin?.end(options.input);
  });
}

/** `ip ARGS…` in the root namespace (only ever used to manage the lab's own namespaces). */
export const ip = (args: readonly string[]): Promise<RunResult> => run(IP, args);

/**
 * Why namespace tests cannot run here, or null when they can: needs root, `ip`, and the right to
 * create a network namespace (probed by creating and deleting one).
 */
export async function netnsUnavailable(): Promise<string | null> {
  if (process.platform !== 'linux') return `network namespaces need Linux (this is ${process.platform})`;
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return `network namespaces need root (running as uid ${process.getuid()})`;
  try {
    await run(IP, ['-V']);
  } catch (err) {
    return `iproute2 \`ip\` is not usable: ${(err as Error).message} (install iproute2)`;
  }
  const probe = `fmt${process.pid}-probe`;
  try {
    await ip(['netns', 'add', probe]);
  } catch (err) {
    return `cannot create a network namespace: ${(err as Error).message}`;
  }
  try {
    await ip(['-n', probe, 'link', 'set', 'lo', 'up']);
  } catch (err) {
    return `cannot configure a network namespace: ${(err as Error).message}`;
  } finally {
    await ip(['netns', 'del', probe]).catch(() => undefined);
  }
  return null;
}

/**
 * Why links cannot be impaired with tc netem here, or null when they can: needs `tc` (iproute2)
 * and a kernel with the netem qdisc (sch_netem), probed on the loopback of a namespace of its own.
 */
export async function netemUnavailable(): Promise<string | null> {
  try {
    await run(TC, ['-V']);
  } catch (err) {
    return `tc (iproute2) is not usable: ${(err as Error).message}`;
  }
  const probe = `fmt${process.pid}-netem-probe`;
  await ip(['netns', 'add', probe]);
  try {
    await run(IP, ['netns', 'exec', probe, TC, 'qdisc', 'add', 'dev', 'lo', 'root', 'netem', 'delay', '1ms']);
    return null;
  } catch (err) {
    return `this kernel has no tc netem qdisc (module sch_netem): ${(err as CommandError).stderr.trim() || (err as Error).message}`;
  } finally {
    await ip(['netns', 'del', probe]).catch(() => undefined);
  }
}

/** A network namespace of a lab. */
export class Namespace {
  readonly lab: Lab;
  /** Full name, as `ip netns` knows it. */
  readonly name: string;
  constructor(lab: Lab, name: string) {
    this.lab = lab;
    this.name = name;
  }

  /** `ip -n NAME ARGS…` */
  ip(args: readonly string[]): Promise<RunResult> {
    return ip(['-n', this.name, ...args]);
  }

  /** Runs a command inside the namespace to completion: `ip netns exec NAME FILE ARGS…`. */
  exec(file: string, args: readonly string[] = [], options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
    return run(IP, ['netns', 'exec', this.name, file, ...args], options);
  }

  /** Starts a long-running command inside the namespace, output captured. */
  spawn(file: string, args: readonly string[] = [], options: SpawnOptions = {}): Proc {
    return this.lab.spawn(this, file, args, options);
  }

  addAddress(ifname: string, cidr: string): Promise<RunResult> {
    return this.ip(['addr', 'add', cidr, 'dev', ifname]);
  }

  /** `ip route add DEST via GW` or `… dev IF`, e.g. a default route through a router. */
  addRoute(dest: string, to: { via?: string; dev?: string }): Promise<RunResult> {
    return this.ip(['route', 'replace', dest, ...(to.via !== undefined ? ['via', to.via] : []), ...(to.dev !== undefined ? ['dev', to.dev] : [])]);
  }

  /** Turns IPv4 forwarding on (a router). The sysctl is per namespace. */
  async enableForwarding(): Promise<void> {
    await this.exec('sysctl', ['-q', '-w', 'net.ipv4.ip_forward=1']);
  }

  /** Pids of the processes inside. */
  async pids(): Promise<number[]> {
    const { stdout } = await ip(['netns', 'pids', this.name]).catch(() => ({ stdout: '' }));
    return parsePids(stdout);
  }

  /** IPv4 addresses (CIDR) of an interface. */
  async addresses(ifname: string): Promise<string[]> {
    const { stdout } = await this.ip(['-j', 'addr', 'show', 'dev', ifname]);
    const parsed = JSON.parse(stdout) as { addr_info?: { family: string; local: string; prefixlen: number }[] }[];
    return parsed.flatMap((i) => i.addr_info ?? []).filter((a) => a.family === 'inet').map((a) => `${a.local}/${a.prefixlen}`);
  }
}

/** A Linux bridge inside a namespace: an L2 switch. */
export class Bridge {
  readonly ns: Namespace;
  readonly name: string;
  constructor(ns: Namespace, name: string) {
    this.ns = ns;
    this.name = name;
  }
}

/** One end of a veth pair. */
export interface LinkEnd {
  readonly ns: Namespace;
  readonly ifname: string;
}

/** What tc netem does to every packet leaving either end of a link. */
export interface Impairment {
  readonly delayMs?: number;
  /** Random variation of the delay, ± this much. */
  readonly jitterMs?: number;
  /** Share of packets dropped, 0-100. */
  readonly lossPercent?: number;
}

/** A veth pair: a cable between two namespaces (or a host and a switch). */
export class Link {
  /** The host (or router) end. */
  readonly a: LinkEnd;
  /** The other end: the switch port when attached to a bridge. */
  readonly b: LinkEnd;
  /** The host end's address (CIDR), if one was given. */
  readonly address: string | null;
  /** Routes added on the `a` side by Lab.attach (re-added by restore()). */
  readonly routes: { dest: string; to: { via?: string; dev?: string } }[] = [];
  /** Ends with a netem qdisc from impair() (so clearImpairment() removes only what is there). */
  private readonly impaired = new Set<LinkEnd>();

  constructor(a: LinkEnd, b: LinkEnd, address: string | null) {
    this.a = a;
    this.b = b;
    this.address = address;
  }

  /** The address without its prefix length, e.g. 10.77.0.2. */
  get ip(): string | null {
    return this.address?.split('/')[0] ?? null;
  }

  /**
   * Cuts the cable: sets the far end (the switch port) down, so the host end loses carrier but
   * keeps its addresses and routes, as when a cable is pulled or a radio goes out of range.
   * `side: 'a'` downs the host end instead (its non-local routes go with it; restore() re-adds
   * the routes `attach` created).
   */
  async cut(side: 'a' | 'b' = 'b'): Promise<void> {
    const end = side === 'a' ? this.a : this.b;
    await end.ns.ip(['link', 'set', end.ifname, 'down']);
  }

  /**
   * Degrades the cable in both directions with tc netem (see netemUnavailable()): unlike cut(), both
   * ends stay up with carrier, so nothing on either side learns of the fault but from lost or late
   * packets, as with a radio link at the edge of its range. Replaces any earlier impairment.
   */
  async impair(impairment: Impairment): Promise<void> {
    const netem = [
      ...(impairment.delayMs !== undefined ? ['delay', `${impairment.delayMs}ms`, ...(impairment.jitterMs !== undefined ? [`${impairment.jitterMs}ms`] : [])] : []),
      ...(impairment.lossPercent !== undefined ? ['loss', `${impairment.lossPercent}%`] : []),
    ];
    for (const end of [this.a, this.b]) {
      await end.ns.exec(TC, ['qdisc', 'replace', 'dev', end.ifname, 'root', 'netem', ...netem]);
      this.impaired.add(end);
    }
  }

  /** Removes any impairment: the ends impaired go back to their default queueing discipline. */
  async clearImpairment(): Promise<void> {
    for (const end of [...this.impaired]) {
      await end.ns.exec(TC, ['qdisc', 'del', 'dev', end.ifname, 'root']);
      this.impaired.delete(end);
    }
  }

  /** Reconnects the cable: both ends up again, and any routes attach() created are back. */
  async restore(): Promise<void> {
    await this.b.ns.ip(['link', 'set', this.b.ifname, 'up']);
    await this.a.ns.ip(['link', 'set', this.a.ifname, 'up']);
    for (const route of this.routes) await this.a.ns.addRoute(route.dest, route.to);
  }
}

export interface SpawnOptions {
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
  /** A label for error messages. */
  readonly label?: string;
}

/** A process running inside a namespace, with stdout/stderr captured (and split into lines). */
export class Proc {
  readonly stdoutLines: string[] = [];
  readonly stderrLines: string[] = [];
  /** When each stdout / stderr line arrived (Date.now()). */
  readonly stdoutTimes: number[] = [];
  readonly stderrTimes: number[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  exitStatus: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  private readonly waiters = new Set<() => void>();
  private partial = { stdout: '', stderr: '' };
  readonly child: ChildProcess;
  readonly label: string;

  constructor(child: ChildProcess, label: string) {
    this.child = child;
    this.label = label;
    const onData = (stream: 'stdout' | 'stderr') => (chunk: Buffer) => {
      const text = this.partial[stream] + chunk.toString('utf8');
      const parts = text.split('\n');
      this.partial[stream] = parts.pop() ?? '';
      (stream === 'stdout' ? this.stdoutLines : this.stderrLines).push(...parts);
      (stream === 'stdout' ? this.stdoutTimes : this.stderrTimes).push(...parts.map(() => Date.now()));
      this.wake();
    };
    child.stdout?.on('data', onData('stdout'));
    child.stderr?.on('data', onData('stderr'));
    this.exited = new Promise((resolve) => {
      child.once('close', (code, signal) => {
        for (const stream of ['stdout', 'stderr'] as const) {
          if (this.partial[stream] !== '') {
            (stream === 'stdout' ? this.stdoutLines : this.stderrLines).push(this.partial[stream]);
            (stream === 'stdout' ? this.stdoutTimes : this.stderrTimes).push(Date.now());
          }
          this.partial[stream] = '';
        }
        this.exitStatus = { code, signal };
        this.wake();
        resolve(this.exitStatus);
      });
      child.once('error', (err) => {
        this.stderrLines.push(`spawn error: ${err.message}`);
        this.exitStatus ??= { code: null, signal: null };
        this.wake();
        resolve(this.exitStatus);
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.exitStatus === null;
  }

  /** stdout lines parsed as JSON (lines that are not JSON are skipped). */
  jsonLines<T = Record<string, unknown>>(): T[] {
    const out: T[] = [];
    for (const line of this.stdoutLines) {
      try {
        out.push(JSON.parse(line) as T);
      } catch {
        /* not JSON */
      }
    }
    return out;
  }

  /** Resolves with the first stdout line satisfying `match`; rejects on exit or after timeoutMs. */
  async waitForLine(match: (line: string) => boolean, timeoutMs: number): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (let seen = 0; ; ) {
      for (; seen < this.stdoutLines.length; seen++) if (match(this.stdoutLines[seen]!)) return this.stdoutLines[seen]!;
      if (!this.running) throw new Error(`${this.label} exited (${JSON.stringify(this.exitStatus)}) before the expected output\n${this.describe()}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.label}: no expected output within ${timeoutMs} ms\n${this.describe()}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, left);
        function done() {
          clearTimeout(timer);
          resolve();
        }
        this.waiters.add(done);
      });
    }
  }

  /** The first JSON stdout line satisfying `match`. */
  async waitForJson<T = Record<string, unknown>>(match: (value: T) => boolean, timeoutMs: number): Promise<T> {
    const test = (line: string) => {
      try {
        return match(JSON.parse(line) as T);
      } catch {
        return false;
      }
    };
    return JSON.parse(await this.waitForLine(test, timeoutMs)) as T;
  }

  /** Sends `signal`, then SIGKILL if the process has not exited after graceMs. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 3000): Promise<void> {
    if (!this.running) return;
    this.child.kill(signal);
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }

  /** Last lines of output, each with its wall-clock time, for error messages. */
  describe(lines = 30): string {
    const show = (text: string[], times: number[]) => text.slice(-lines).map((line, i) => `${new Date(times.slice(-lines)[i] ?? 0).toISOString().slice(11, 23)} ${line}`);
    return [
      `--- ${this.label} (pid ${this.pid}, ${this.running ? 'running' : `exited ${JSON.stringify(this.exitStatus)}`}) stdout, last ${lines} lines`,
      ...show(this.stdoutLines, this.stdoutTimes),
      `--- ${this.label} stderr, last ${lines} lines`,
      ...show(this.stderrLines, this.stderrTimes),
    ].join('\n');
  }

  private wake(): void {
    const waiters = [...this.waiters];
    this.waiters.clear();
    for (const w of waiters) w();
  }
}

export interface AttachOptions {
  /** The host end's address, CIDR, e.g. 10.77.0.2/24. */
  readonly address?: string;
  /** The host end's interface name. @default 'eth0' */
  readonly ifname?: string;
  /** Add `224.0.0.0/4 dev IFNAME` on the host (multicast needs a route when there is no default route). @default true */
  readonly multicastRoute?: boolean;
  /** Default gateway for the host (e.g. a router on this switch). */
  readonly gateway?: string;
}

const liveLabs = new Set<Lab>();
let labCounter = 0;
const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
const onExit = () => {
  for (const lab of [...liveLabs]) lab.teardownSync();
};
const onSignal = (signal: NodeJS.Signals) => {
  onExit();
  removeProcessHooks();
  // Default behaviour (die by the signal) unless someone else handles it.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
};
function installProcessHooks(): void {
  if (liveLabs.size !== 1) return;
  process.on('exit', onExit);
  for (const s of SIGNALS) process.on(s, onSignal);
}
function removeProcessHooks(): void {
  process.off('exit', onExit);
  for (const s of SIGNALS) process.off(s, onSignal);
}

const parsePids = (text: string): number[] =>
  text
    .split(/\s+/)
    .map((s) => Number.parseInt(s, 10))
    .filter((n) => Number.isInteger(n) && n > 0);

/** Owns namespaces, links and processes, and removes them all on teardown. */
export class Lab {
  /** Prefix of every namespace name of this lab. */
  readonly prefix: string;
  readonly namespaces: Namespace[] = [];
  readonly links: Link[] = [];
  readonly procs = new Set<Proc>();
  /** Directories from tempDir(), removed on teardown. */
  readonly dirs: string[] = [];
  private torndown = false;
  private nextIfIndex = 0;

  constructor(prefix = `fmt${process.pid}-${labCounter++}-`) {
    this.prefix = prefix;
    liveLabs.add(this);
    installProcessHooks();
  }

  /** A fresh directory under the OS temp dir, removed with the lab (also on interruption). */
  tempDir(name = 'data'): string {
    const dir = mkdtempSync(join(tmpdir(), `${this.prefix}${name}-`));
    this.dirs.push(dir);
    return dir;
  }

  /** A new namespace `PREFIX+name` with loopback up. */
  async namespace(name: string): Promise<Namespace> {
    if (this.torndown) throw new Error('lab is torn down');
    const ns = new Namespace(this, this.prefix + name);
    await ip(['netns', 'add', ns.name]);
    this.namespaces.push(ns);
    await ns.ip(['link', 'set', 'lo', 'up']);
    return ns;
  }

  /** A host: a namespace with loopback up (attach it to switches, or link it to routers). */
  host(name: string): Promise<Namespace> {
    return this.namespace(name);
  }

  /** A router: a namespace with IPv4 forwarding on (link it to switches and hosts, then add routes). */
  async router(name: string): Promise<Namespace> {
    const ns = await this.namespace(name);
    await ns.enableForwarding();
    return ns;
  }

  /** A switch: a namespace of its own holding a bridge (multicast snooping off: it floods, like a dumb switch). */
  async switch(name: string, bridgeName = 'br0'): Promise<Bridge> {
    const ns = await this.namespace(name);
    return this.bridge(ns, bridgeName);
  }

  /** A bridge inside an existing namespace (e.g. a router that is also a switch). */
  async bridge(ns: Namespace, name = 'br0'): Promise<Bridge> {
    await ns.ip(['link', 'add', name, 'type', 'bridge', 'mcast_snooping', '0']);
    await ns.ip(['link', 'set', name, 'up']);
    return new Bridge(ns, name);
  }

  /**
   * A veth pair between two namespaces, both ends up, with optional addresses. The general cable,
   * e.g. host to router.
   */
  async veth(a: { ns: Namespace; ifname: string; address?: string }, b: { ns: Namespace; ifname: string; address?: string }): Promise<Link> {
    // Create both ends in `a` (temporary name for b's end, unique in a), then move b's end.
    const tmp = `fmv${this.nextIfIndex++}`;
    await a.ns.ip(['link', 'add', a.ifname, 'type', 'veth', 'peer', 'name', tmp]);
    await a.ns.ip(['link', 'set', tmp, 'netns', b.ns.name]);
    if (tmp !== b.ifname) await b.ns.ip(['link', 'set', tmp, 'name', b.ifname]);
    for (const end of [a, b]) {
      if (end.address !== undefined) await end.ns.addAddress(end.ifname, end.address);
      await end.ns.ip(['link', 'set', end.ifname, 'up']);
    }
    const link = new Link({ ns: a.ns, ifname: a.ifname }, { ns: b.ns, ifname: b.ifname }, a.address ?? null);
    this.links.push(link);
    return link;
  }

  /** Plugs a host into a switch: a veth from the host (IFNAME, address) to a new port of the bridge. */
  async attach(host: Namespace, bridge: Bridge, options: AttachOptions = {}): Promise<Link> {
    const ifname = options.ifname ?? 'eth0';
    const port = `p${this.nextIfIndex++}`;
    const link = await this.veth({ ns: host, ifname, ...(options.address !== undefined ? { address: options.address } : {}) }, { ns: bridge.ns, ifname: port });
    await bridge.ns.ip(['link', 'set', port, 'master', bridge.name]);
    if (options.multicastRoute ?? true) {
      const route = { dest: '224.0.0.0/4', to: { dev: ifname } };
      await host.addRoute(route.dest, route.to);
      link.routes.push(route);
    }
    if (options.gateway !== undefined) {
      const route = { dest: 'default', to: { via: options.gateway } };
      await host.addRoute(route.dest, route.to);
      link.routes.push(route);
    }
    return link;
  }

  /** Starts `FILE ARGS…` inside a namespace (`ip netns exec`, which execs: the child's pid is the program's). */
  spawn(ns: Namespace, file: string, args: readonly string[] = [], options: SpawnOptions = {}): Proc {
    if (this.torndown) throw new Error('lab is torn down');
    const child = spawn(IP, ['netns', 'exec', ns.name, file, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? process.env, ...(options.cwd !== undefined ? { cwd: options.cwd } : {}) });
    const proc = new Proc(child, options.label ?? `${ns.name}: ${[file, ...args].join(' ')}`);
    dbg(`spawn ${child.pid} in ${ns.name}`);
    void proc.exited.then((s) => dbg(`exited ${child.pid} ${JSON.stringify(s)}`));
    this.procs.add(proc);
    void proc.exited.then(() => this.procs.delete(proc));
    return proc;
  }

  /** Stops every process (SIGTERM, then SIGKILL), kills anything left inside, deletes every namespace. */
  async teardown(): Promise<void> {
    if (this.torndown) return;
    this.torndown = true;
    dbg(`teardown ${this.prefix} procs=${this.procs.size}`);
    try {
      await Promise.all([...this.procs].map((p) => p.stop('SIGTERM', 2000)));
      // Hosts first, switches last (deleting a namespace destroys its veth ends and their peers).
      for (const ns of [...this.namespaces].reverse()) {
        // Kill whatever is still inside (e.g. a command a test started with exec and abandoned) and
        // wait for it to be gone, bounded, before deleting the namespace.
        const deadline = Date.now() + 5000;
        for (let pids = await ns.pids(); pids.length > 0 && Date.now() < deadline; pids = await ns.pids()) {
          for (const pid of pids) {
            try {
              process.kill(pid, 'SIGKILL');
            } catch {
              /* gone */
            }
          }
          await new Promise((r) => setTimeout(r, 50));
        }
        dbg(`del ${ns.name} pids=${await ns.pids()}`);
        await ip(['netns', 'del', ns.name]).catch((e: Error) => dbg(`del failed ${e.message}`));
      }
    } finally {
      this.removeDirs();
      this.forget();
    }
    const left = await this.leftovers();
    dbg(`leftovers ${left}`);
    if (left.length > 0) throw new Error(`lab teardown left namespaces behind: ${left.join(', ')}`);
  }

  /** Namespaces of this lab that still exist (empty after a successful teardown). */
  async leftovers(): Promise<string[]> {
    const { stdout } = await ip(['netns', 'list']).catch(() => ({ stdout: '' }));
    return stdout
      .split('\n')
      .map((line) => line.split(/\s/)[0] ?? '')
      .filter((name) => name.startsWith(this.prefix));
  }

  /** The same, synchronously and without grace, for exit and signal handlers. */
  teardownSync(): void {
    dbg(`teardownSync ${this.prefix} torndown=${this.torndown}`);
    if (this.torndown) return;
    this.torndown = true;
    for (const proc of this.procs) {
      try {
        proc.child.kill('SIGKILL');
      } catch {
        /* gone */
      }
    }
    for (const ns of [...this.namespaces].reverse()) {
      try {
        const out = execFileSync(IP, ['netns', 'pids', ns.name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5000 });
        for (const pid of parsePids(out)) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            /* gone */
          }
        }
      } catch {
        /* namespace gone */
      }
      try {
        execFileSync(IP, ['netns', 'del', ns.name], { stdio: 'ignore', timeout: 5000 });
      } catch {
        /* already gone */
      }
    }
    this.removeDirs();
    this.forget();
  }

  private removeDirs(): void {
    for (const dir of this.dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  }

  private forget(): void {
    liveLabs.delete(this);
    if (liveLabs.size === 0) removeProcessHooks();
  }
}

/**
 * Deletes namespaces left behind by earlier runs whose process is gone (a run killed with SIGKILL
 * cannot clean up). Only names of this harness's form (`fmt<pid>-…`) with a dead <pid> are touched.
 */
export async function sweepStaleNamespaces(): Promise<string[]> {
  const { stdout } = await ip(['netns', 'list']).catch(() => ({ stdout: '' }));
  const removed: string[] = [];
  for (const line of stdout.split('\n')) {
    const name = line.split(/\s/)[0] ?? '';
    const m = /^fmt(\d+)-/.exec(name);
    if (m === null) continue;
    const pid = Number(m[1]);
    let alive = true;
    try {
      process.kill(pid, 0);
    } catch (err) {
      alive = (err as NodeJS.ErrnoException).code === 'EPERM';
    }
    if (alive) continue;
    const { stdout: pids } = await ip(['netns', 'pids', name]).catch(() => ({ stdout: '' }));
    for (const p of parsePids(pids)) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await ip(['netns', 'del', name]).catch(() => undefined);
    removed.push(name);
  }
  return removed;
}

/** Polls `probe` every intervalMs until it returns a value other than undefined, or fails after timeoutMs with `describe()`. */
export async function until<T>(probe: () => Promise<T | undefined>, options: { timeoutMs: number; intervalMs?: number; describe?: () => string | Promise<string> }): Promise<T> {
  const deadline = Date.now() + options.timeoutMs;
  let lastError: unknown = null;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
      lastError = null;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const detail = options.describe ? await options.describe() : '';
      throw new Error(`condition not met within ${options.timeoutMs} ms${lastError ? ` (last error: ${(lastError as Error).message})` : ''}\n${detail}`);
    }
    await new Promise((r) => setTimeout(r, Math.min(options.intervalMs ?? 500, Math.max(0, deadline - Date.now()))));
  }
}
