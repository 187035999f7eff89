/**
 * Real `fieldmesh` processes in a Lab (harness.ts): the CLI run to completion, long-running nodes
 * started in namespaces, running nodes queried, and the JSON the tests read.
 *
 * A running node is queried through its control socket, a Unix socket in its data dir: sockets on
 * the file system are not scoped by network namespace, so the test process reaches every node from
 * the root namespace without any network of its own.
 */
import { fileURLToPath } from 'node:url';
import type { TestContext } from 'vitest';
import { callRunning } from '../../src/cli/control.ts';
import { netnsUnavailable, run, until, type Lab, type Namespace, type Proc } from './harness.ts';

const NODE = process.execPath;
const CLI = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));

export type StatusName = 'pending' | 'synced' | 'failed' | 'conflict';
export type Counts = Record<StatusName, number>;

/** One log as `status --json` lists it. */
export interface LogRow {
  device: string;
  lastSeq: number;
  counts: Counts;
}
/** `status --json` */
export interface Status {
  device: string;
  role: string;
  counts: Counts;
  devices: LogRow[];
  stateHash: string;
}
/** One entry of `peers --json`. */
export interface Peer {
  device: string;
  role: string | null;
  address: string;
}
/** One entry of `ops --json`. */
export interface OpRow {
  id: string;
  device: string;
  seq: number;
  type: string;
  domain: string | null;
  entity: string | null;
  status: StatusName;
  reason?: string;
}
/** `get --json` */
export interface EntityView {
  fields: Record<string, unknown>;
}

/** Why network namespaces cannot be made here (not root, no iproute2), or null. */
export const NETNS_PROBLEM = await netnsUnavailable();
/**
 * Outside CI, the namespace tests skip where namespaces cannot be made, saying why. In CI (env CI
 * set) they run regardless and fail, so a broken set-up never passes as a row of skips.
 */
export const SKIP_NETNS = NETNS_PROBLEM !== null && !process.env.CI;
if (SKIP_NETNS) console.warn(`skipping the network-namespace tests (test/netns): ${NETNS_PROBLEM}`);

/**
 * Skips the running test when `reason` is not null, naming the reason: as the test's skip note, and
 * on stderr, since vitest's default reporter shows skip notes only with `--reporter=verbose`.
 */
export function skipWhen(ctx: TestContext, reason: string | null): void {
  if (reason === null) return;
  console.warn(`skipped "${ctx.task.name}": ${reason}`);
  ctx.skip(reason);
}

/** A command on a running node, straight through its control socket (cheap enough to poll). */
export async function control<T>(dir: string, method: string, params: Record<string, unknown> = {}): Promise<T> {
  const response = await callRunning(dir, method, params, 10_000);
  if (response === undefined) throw new Error(`no node is running on ${dir}`);
  return response.result as T;
}

/** A `fieldmesh start` process in a namespace, once it has printed its `started` event. */
export interface RunningNode {
  readonly name: string;
  readonly dir: string;
  readonly ns: Namespace;
  readonly proc: Proc;
  readonly device: string;
  readonly addresses: readonly string[];
}

/**
 * Runs `fieldmesh` processes for a lab. They share a V8 compile cache (NODE_COMPILE_CACHE) in a
 * directory of the lab, removed with it: only the first process compiles the CLI's modules, which
 * otherwise costs every command 1-3 s of CPU.
 */
export class Fieldmesh {
  private readonly lab: Lab;
  private readonly env: NodeJS.ProcessEnv;

  constructor(lab: Lab) {
    this.lab = lab;
    this.env = { ...process.env, NODE_COMPILE_CACHE: lab.tempDir('compile-cache') };
  }

  /**
   * `fieldmesh -d DIR --json ARGS…` to completion; its last stdout line, parsed. Inside `ns` when
   * given, else in the root namespace (for init and enroll, which use no network).
   */
  async cli<T = unknown>(dir: string, args: readonly string[], ns?: Namespace): Promise<T> {
    const argv = [CLI, '-d', dir, '--json', ...args];
    const options = { timeoutMs: 60_000, env: this.env };
    const { stdout } = ns === undefined ? await run(NODE, argv, options) : await ns.exec(NODE, argv, options);
    return JSON.parse(stdout.trim().split('\n').at(-1)!) as T;
  }

  /** Starts `fieldmesh -d DIR --json start ARGS…` inside `ns`; resolves once the node is listening. */
  async start(name: string, dir: string, ns: Namespace, args: readonly string[]): Promise<RunningNode> {
    const proc = this.spawn(name, dir, ns, args);
    const started = await proc.waitForJson<{ event: string; device: string; addresses: string[] }>((e) => e.event === 'started', 30_000);
    return { name, dir, ns, proc, device: started.device, addresses: started.addresses };
  }

  /** The process of `start()`, without waiting for it to listen. */
  spawn(name: string, dir: string, ns: Namespace, args: readonly string[]): Proc {
    return this.lab.spawn(ns, NODE, [CLI, '-d', dir, '--json', 'start', ...args], { label: name, env: this.env });
  }
}

/** The devices a running node admitted to sync with, in order (its `peer:admitted` events). */
export const admittedBy = (node: RunningNode): string[] =>
  node.proc
    .jsonLines<{ event: string; device: string }>()
    .filter((e) => e.event === 'peer:admitted')
    .map((e) => e.device);

/** Stops nodes with SIGTERM and checks each one closed cleanly (exit 0 after its `stopped` event). */
export async function stopCleanly(nodes: readonly RunningNode[]): Promise<void> {
  await Promise.all(nodes.map((n) => n.proc.stop('SIGTERM', 10_000)));
  const unclean = nodes.filter((n) => n.proc.exitStatus?.code !== 0 || n.proc.jsonLines<{ event: string }>().at(-1)?.event !== 'stopped');
  if (unclean.length > 0) throw new Error(`did not stop cleanly:\n${unclean.map((n) => n.proc.describe()).join('\n')}`);
}

export const sortedLogs = (s: Status): LogRow[] => [...s.devices].sort((a, b) => a.device.localeCompare(b.device));

/** Each node's status, peers and last output lines, for failure messages. */
export async function describeNodes(nodes: readonly RunningNode[]): Promise<string> {
  const parts: string[] = [];
  for (const n of nodes) {
    const status = await control<Status>(n.dir, 'status').catch((e: Error) => e.message);
    const peers = await control<Peer[]>(n.dir, 'peers').catch((e: Error) => e.message);
    parts.push(`== ${n.name} ${n.device}\nstatus ${JSON.stringify(status)}\npeers ${JSON.stringify(peers)}\n${n.proc.describe(20)}`);
  }
  return parts.join('\n');
}

/**
 * Polls until the nodes agree: the same logs (device, last seq and counts per status), the same
 * state hash and counts, and `accept` holds for every node's status. Returns the statuses, in the
 * order of `nodes`.
 */
export function agreement(nodes: readonly RunningNode[], accept: (s: Status) => boolean, timeoutMs: number): Promise<Status[]> {
  return until(
    async () => {
      const statuses = await Promise.all(nodes.map((n) => control<Status>(n.dir, 'status')));
      const first = statuses[0]!;
      const logsOf = (s: Status) => JSON.stringify(sortedLogs(s));
      const agreed = statuses.every((s) => s.stateHash === first.stateHash && logsOf(s) === logsOf(first) && JSON.stringify(s.counts) === JSON.stringify(first.counts) && accept(s));
      return agreed ? statuses : undefined;
    },
    { timeoutMs, intervalMs: 500, describe: () => describeNodes(nodes) },
  );
}

/** Whether a node holds exactly `lastSeq` of each of these logs (other logs are not looked at). */
export function holds(s: Status, lastSeq: ReadonlyMap<string, number>): boolean {
  return [...lastSeq].every(([device, seq]) => (s.devices.find((row) => row.device === device)?.lastSeq ?? 0) === seq);
}
