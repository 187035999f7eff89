/**
 * Net suite, over loopback libp2p (TCP + Noise + Yamux on 127.0.0.1, mDNS off):
 *
 *  - catch-up: node B joins holding nothing while A holds N ops of a team's history (10 devices,
 *    bench/workload.ts teamWorkload); time until B holds all of them durably (its version vector
 *    equals A's). A runs in a child process, as a peer would. Beside it, measured in the same run:
 *    raw libp2p stream throughput between two processes with the same stack (64 KiB chunks on a
 *    plain protocol; MiB/s and the ops/s it implies at the average op size), A's own local ingest
 *    rate, the raw synced LevelDB batch rate, and two floors of any ingest of this history: ops
 *    parsed, verified per chained run and written as log rows only, or with the least rows the
 *    storage layout needs (floorIngest).
 *  - bytes per op during that catch-up: the ops frames A sent (session stats) and every TCP
 *    payload byte both ways (from `ss`), relative to the op envelopes carried.
 *  - live propagation: one op across a 5-node chain A-B-C-D-E (each peering only with its
 *    neighbours), from mutate() resolving on A to E's status event for it; beside it the floor
 *    of 4 hops of one synced put and half a raw libp2p round trip each.
 *
 *   FIELDMESH_BENCH_CATCHUP_OPS   ops A holds (default 20000; the issue's figure is 100000). A must
 *   ingest the history before B can catch up, and both are bound by the store's ingest rate
 *   (about 4-5k ops/s for this history on a 2-core machine), so the default keeps the whole
 *   `npm run bench` within about 5 minutes.
 */
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { identify } from '@libp2p/identify';
import type { Libp2p, Stream } from '@libp2p/interface';
import { tcp } from '@libp2p/tcp';
import { multiaddr } from '@multiformats/multiaddr';
import { createLibp2p } from 'libp2p';
import type { DeviceId } from '../src/core/keys.ts';
import { checkSignature, isEntityOp, parseOp, type OpId, type ParsedOp } from '../src/core/op.ts';
import type { VersionVector } from '../src/core/version-vector.ts';
import type { SyncSession } from '../src/core/sync/session.ts';
import { FieldNode, type FieldNodeOptions } from '../src/node/field-node.ts';
import { against, envCount, formatNumber, type Result, type Suite } from './harness.ts';
import { BENCH_TEAM, certify, enrollDir, levelSyncedBatches, levelSyncedPuts, median, openRawLevel, percentile, removeDir, sleep, tempRoot } from './fleet.ts';
import { BenchDevice, teamWorkload, TEAM } from './workload.ts';

const THIS_FILE = fileURLToPath(import.meta.url);
const LOOPBACK = '/ip4/127.0.0.1/tcp/0';
const BULK_PROTOCOL = '/fieldmesh-bench/bulk/1.0.0';
const ECHO_PROTOCOL = '/fieldmesh-bench/echo/1.0.0';
const CHUNK = 64 * 1024;
const BULK_BYTES = 64 * 1024 * 1024;
const BULK_ROUNDS = 3;
const PINGS = 200;
const CHAIN = 5;
const LIVE_OPS = 50;
const INGEST_CHUNK = 1000;

/** The team config (domains) of teamWorkload, without generating a history. */
const workloadDomains = () => teamWorkload({ ops: 1 }).config.domains!;

export const netSuite: Suite = {
  name: 'net',
  description: 'catch-up, wire bytes and 5-hop propagation over loopback libp2p vs raw libp2p and LevelDB',
  approxSeconds: 100,
  async run(log) {
    if (TEAM !== BENCH_TEAM) throw new Error(`bench/workload.ts TEAM ${TEAM} differs from ${BENCH_TEAM}`);
    const root = await tempRoot('net');
    const children: ChildProcess[] = [];
    try {
      const results: Result[] = [];
      // Raw limits first, on a machine not yet busy with this suite's own nodes.
      log('raw libp2p between two processes: bulk stream and echo round trips ...');
      const raw = await rawLibp2p(children, log);
      log('raw LevelDB: synced single puts and synced batches of 1000 ...');
      const db = await openRawLevel(join(root, 'level'));
      let puts, batchBefore, batchAfter, catchup;
      try {
        puts = await levelSyncedPuts(db, 600, 300, 50, 'p');
        batchBefore = await levelSyncedBatches(db, 1000, 1000, 300, 'a');
        catchup = await catchUp(root, children, log);
        batchAfter = await levelSyncedBatches(db, 1000, 1000, 300, 'z');
      } finally {
        await db.close();
      }
      log(`  synced put p50 ${percentile(puts.latenciesMs, 50).toFixed(2)} ms; batch ${formatNumber(batchBefore)} rows/s before the catch-up, ${formatNumber(batchAfter)} after`);

      const live = await propagation(root, log);

      const opBytes = catchup.envelopeBytes / catchup.ops;
      const bulk: Result = { name: 'net.libp2p_bulk', value: raw.mibPerSec, unit: 'MiB/s' };
      const bulkOps: Result = { name: 'net.libp2p_bulk.ops', value: (raw.mibPerSec * 2 ** 20) / opBytes, unit: 'ops/s' };
      const levelBatch: Result = { name: 'net.level_batch1000_synced', value: (batchBefore + batchAfter) / 2, unit: 'rows/s' };
      const rtt: Result = { name: 'net.libp2p_rtt.p50', value: raw.rttP50, unit: 'ms' };
      const putP50: Result = { name: 'net.level_put_synced.p50', value: percentile(puts.latenciesMs, 50), unit: 'ms' };
      const envelope: Result = { name: 'net.op_envelope', value: opBytes, unit: 'B/op' };
      results.push(bulk, bulkOps, rtt, putP50, levelBatch, envelope);
      results.push({ name: 'net.catchup.ops', value: catchup.ops, unit: 'ops' });
      results.push({ name: 'net.catchup.time', value: catchup.seconds, unit: 's' });
      const rate = catchup.ops / catchup.seconds;
      results.push(against({ name: 'net.catchup', value: rate, unit: 'ops/s', target: { on: 'value', op: '>=', value: 50_000 } }, bulkOps));
      results.push(against({ name: 'net.catchup.vs_level_batch', value: rate, unit: 'ops/s' }, levelBatch));
      const localIngest = against({ name: 'net.ingest_local', value: catchup.localIngestRate, unit: 'ops/s' }, levelBatch);
      results.push(localIngest);
      results.push(against({ name: 'net.catchup.vs_local_ingest', value: rate, unit: 'ops/s' }, localIngest));
      const logOnly = against({ name: 'net.ingest_log_only', value: catchup.logOnlyRate, unit: 'ops/s' }, levelBatch);
      results.push(logOnly);
      results.push(against({ name: 'net.catchup.vs_log_only', value: rate, unit: 'ops/s' }, logOnly));
      const layoutFloor = against({ name: 'net.ingest_layout_floor', value: catchup.layoutFloorRate, unit: 'ops/s' }, levelBatch);
      results.push(layoutFloor);
      results.push(against({ name: 'net.catchup.vs_layout_floor', value: rate, unit: 'ops/s' }, layoutFloor));
      results.push(against({ name: 'net.wire.ops_frames', value: catchup.opsFrameBytes / catchup.ops, unit: 'B/op', target: { on: 'ratio', op: '<=', value: 1.15 } }, envelope));
      if (catchup.tcpBytes !== null) results.push(against({ name: 'net.wire.tcp', value: catchup.tcpBytes / catchup.ops, unit: 'B/op', target: { on: 'ratio', op: '<=', value: 1.15 } }, envelope));
      const hops = CHAIN - 1;
      const floor50: Result = { name: `net.hop_floor_x${hops}.p50`, value: hops * (percentile(puts.latenciesMs, 50) + raw.rttP50 / 2), unit: 'ms' };
      const floor99: Result = { name: `net.hop_floor_x${hops}.p99`, value: hops * (percentile(puts.latenciesMs, 99) + raw.rttP99 / 2), unit: 'ms' };
      results.push(floor50, floor99);
      results.push(against({ name: `net.propagation_${hops}hops.p50`, value: percentile(live, 50), unit: 'ms' }, floor50));
      results.push(against({ name: `net.propagation_${hops}hops.p99`, value: percentile(live, 99), unit: 'ms' }, floor99));
      return results;
    } finally {
      for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill();
      await removeDir(root);
    }
  },
};

// ---------------------------------------------------------------------------------------------
// Child processes, driven over IPC: `ready` (with addresses), then commands until `stop`.

type ChildMessage = { kind: 'ready'; addresses: string[]; vv?: VersionVector } | { kind: 'reply'; id: number; value: unknown } | { kind: 'error'; message: string };

class Child {
  readonly process: ChildProcess;
  private nextId = 0;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  readonly ready: Promise<ChildMessage & { kind: 'ready' }>;

  constructor(mode: string, args: unknown, children: ChildProcess[]) {
    this.process = fork(THIS_FILE, ['--child', mode, JSON.stringify(args)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    children.push(this.process);
    this.ready = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`child ${mode} not ready within 60 s`)), 60_000);
      this.process.on('message', (m: ChildMessage) => {
        if (m.kind === 'ready') {
          clearTimeout(timer);
          resolve(m);
        } else if (m.kind === 'reply') {
          this.waiting.get(m.id)?.resolve(m.value);
          this.waiting.delete(m.id);
        } else if (m.kind === 'error') {
          clearTimeout(timer);
          const err = new Error(`child ${mode}: ${m.message}`);
          reject(err);
          for (const w of this.waiting.values()) w.reject(err);
          this.waiting.clear();
        }
      });
      this.process.on('exit', (code) => {
        clearTimeout(timer);
        const err = new Error(`child ${mode} exited (${code})`);
        reject(err);
        for (const w of this.waiting.values()) w.reject(err);
        this.waiting.clear();
      });
    });
    this.ready.catch(() => undefined);
  }

  call<T>(cmd: string, arg?: unknown, timeoutMs = 60_000): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`child call ${cmd} timed out`));
      }, timeoutMs);
      this.waiting.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v as T);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.process.send({ id, cmd, arg });
    });
  }

  /** Asks the child to stop and waits for it to exit (kills it after 20 s). */
  async stop(): Promise<void> {
    if (this.process.exitCode !== null || this.process.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => this.process.once('exit', () => resolve()));
    await this.call('stop', undefined, 20_000).catch(() => this.process.kill());
    await Promise.race([exited, sleep(20_000).then(() => this.process.kill())]);
  }
}

async function childMain(mode: string, args: unknown): Promise<void> {
  process.on('disconnect', () => process.exit(0));
  const send = (m: ChildMessage) => process.send!(m);
  const handlers: Record<string, (arg: unknown) => Promise<unknown>> = {};
  let stop: () => Promise<void> = async () => undefined;
  if (mode === 'raw') {
    const node = await rawNode();
    await node.handle(BULK_PROTOCOL, (stream) => void serveBulk(stream).catch((err: Error) => stream.abort(err)));
    await node.handle(ECHO_PROTOCOL, (stream) => void serveEcho(stream).catch((err: Error) => stream.abort(err)));
    stop = async () => {
      await node.stop();
    };
    send({ kind: 'ready', addresses: node.getMultiaddrs().map((a) => a.toString()) });
  } else if (mode === 'serve-node') {
    const { dir, offsetMs } = args as { dir: string; offsetMs: number };
    const node = await FieldNode.open(nodeOptions(dir, 'a-desk', offsetMs));
    await node.start({ listen: [LOOPBACK], mdns: false });
    handlers.stats = async (peer) => sessionOf(node, peer as DeviceId)?.stats ?? null;
    handlers.stateHash = async () => node.stateHash();
    stop = async () => {
      await node.stop();
      await node.close();
    };
    send({ kind: 'ready', addresses: node.addresses(), vv: node.versionVector() });
  } else throw new Error(`unknown child mode ${mode}`);
  process.on('message', (m: { id: number; cmd: string; arg: unknown }) => {
    void (async () => {
      try {
        if (m.cmd === 'stop') {
          await stop();
          send({ kind: 'reply', id: m.id, value: null });
          process.disconnect();
          return;
        }
        const handler = handlers[m.cmd];
        if (handler === undefined) throw new Error(`unknown command ${m.cmd}`);
        send({ kind: 'reply', id: m.id, value: await handler(m.arg) });
      } catch (err) {
        send({ kind: 'error', message: (err as Error).stack ?? String(err) });
      }
    })();
  });
}

/** The sync session a started node runs with `peer` (the mesh is internal to FieldNode). */
function sessionOf(node: FieldNode, peer: DeviceId): SyncSession | undefined {
  const internals = node as unknown as { mesh: { drivers: Map<DeviceId, { session: SyncSession }> } | null };
  return internals.mesh?.drivers.get(peer)?.session;
}

function nodeOptions(dataDir: string, user: string, offsetMs = 0): FieldNodeOptions {
  return { dataDir, team: BENCH_TEAM, user, domains: workloadDomains(), ...(offsetMs !== 0 ? { now: () => Date.now() + offsetMs } : {}) };
}

// ---------------------------------------------------------------------------------------------
// Raw libp2p: the same stack as src/net/mesh.ts, a plain protocol, no fieldmesh.

function rawNode(): Promise<Libp2p> {
  return createLibp2p({
    addresses: { listen: [LOOPBACK] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: { identify: identify() },
  });
}

/** Sends back as many bytes as asked for (8-byte big-endian count), in 64 KiB chunks, then closes. */
async function serveBulk(stream: Stream): Promise<void> {
  let want = -1;
  for await (const chunk of stream) {
    const bytes = chunk.subarray();
    if (bytes.length >= 8) want = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0));
    break;
  }
  if (want < 0) throw new Error('bulk: no request');
  const payload = new Uint8Array(CHUNK).map((_, i) => (i * 31) & 0xff);
  for (let sent = 0; sent < want; sent += CHUNK) {
    if (!stream.send(payload.subarray(0, Math.min(CHUNK, want - sent)))) await stream.onDrain();
  }
  await stream.close();
}

async function serveEcho(stream: Stream): Promise<void> {
  for await (const chunk of stream) if (!stream.send(chunk)) await stream.onDrain();
  await stream.close();
}

interface RawFigures {
  readonly mibPerSec: number;
  readonly rttP50: number;
  readonly rttP99: number;
}

async function rawLibp2p(children: ChildProcess[], log: (line: string) => void): Promise<RawFigures> {
  const child = new Child('raw', null, children);
  const node = await rawNode();
  try {
    const { addresses } = await child.ready;
    const peer = multiaddr(addresses[0]!);
    await node.dial(peer, { signal: AbortSignal.timeout(10_000) });
    const rates: number[] = [];
    for (let r = 0; r < BULK_ROUNDS + 1; r++) {
      const stream = await node.dialProtocol(peer, BULK_PROTOCOL, { signal: AbortSignal.timeout(10_000) });
      const request = new Uint8Array(8);
      new DataView(request.buffer).setBigUint64(0, BigInt(BULK_BYTES));
      const t = performance.now();
      stream.send(request);
      let got = 0;
      for await (const chunk of stream) got += chunk.byteLength;
      const ms = performance.now() - t;
      await stream.close();
      if (got !== BULK_BYTES) throw new Error(`bulk: got ${got} of ${BULK_BYTES} bytes`);
      if (r > 0) rates.push(BULK_BYTES / 2 ** 20 / (ms / 1000)); // round 0 warms up
    }
    const stream = await node.dialProtocol(peer, ECHO_PROTOCOL, { signal: AbortSignal.timeout(10_000) });
    const replies = stream[Symbol.asyncIterator]();
    const ping = new Uint8Array(64).fill(7);
    const rtts: number[] = [];
    for (let i = 0; i < PINGS + 20; i++) {
      const t = performance.now();
      stream.send(ping);
      for (let got = 0; got < ping.length; ) {
        const next = await replies.next();
        if (next.done === true) throw new Error('echo stream ended');
        got += next.value.byteLength;
      }
      if (i >= 20) rtts.push(performance.now() - t);
    }
    await stream.close();
    const figures = { mibPerSec: median(rates), rttP50: percentile(rtts, 50), rttP99: percentile(rtts, 99) };
    log(`  bulk ${rates.map((r) => r.toFixed(0)).join(', ')} MiB/s (${BULK_BYTES / 2 ** 20} MiB each, 64 KiB chunks); echo RTT p50 ${figures.rttP50.toFixed(3)} ms, p99 ${figures.rttP99.toFixed(3)} ms`);
    return figures;
  } finally {
    await node.stop();
    await child.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// Catch-up.

interface CatchUp {
  readonly ops: number;
  readonly seconds: number;
  readonly envelopeBytes: number;
  readonly opsFrameBytes: number;
  readonly tcpBytes: number | null;
  readonly localIngestRate: number;
  /** The same history taken in with nothing but its log rows (see floorIngest). */
  readonly logOnlyRate: number;
  /** The same history taken in with the least rows the storage layout needs (see floorIngest). */
  readonly layoutFloorRate: number;
}

/**
 * Floors of any ingest of this history on this machine: every op parsed (canonical decode and
 * hash), one signature verified per device run of each chunk (its runs are one hash chain), and
 * its rows written in one synced LevelDB batch per chunk, each chunk built while the last one is
 * written. `log`: only the log row. `layout`: the rows the storage layout of issue 4 needs at
 * least, raw: the log row by (device, seq), a row by op id, a status row by (status, device,
 * seq), and each entity's row once per chunk (the op's envelope standing in for its state). No
 * state is computed, no status changes, no other index.
 */
async function floorIngest(dir: string, ops: readonly { readonly bytes: Uint8Array }[], rows: 'log' | 'layout'): Promise<number> {
  const db = await openRawLevel(dir);
  const hex12 = (n: number) => n.toString(16).padStart(12, '0');
  const utf8 = new TextEncoder();
  try {
    const started = performance.now();
    let inflight: Promise<void> | null = null;
    for (let i = 0; i < ops.length; i += INGEST_CHUNK) {
      const batch = db.batch();
      const lastOfDevice = new Map<DeviceId, ParsedOp>();
      const entities = new Map<string, Uint8Array>();
      for (const { bytes } of ops.slice(i, i + INGEST_CHUNK)) {
        const parsed = parseOp(bytes);
        const { op } = parsed;
        lastOfDevice.set(op.device, parsed);
        batch.put(`l\u0001${op.device}\u0000${hex12(op.seq)}`, bytes);
        if (rows === 'log') continue;
        batch.put(`o\u0001${op.id}`, utf8.encode(`${op.device}\u0000${hex12(op.seq)}`));
        batch.put(`s\u0001pending\u0000${op.device}\u0000${hex12(op.seq)}`, utf8.encode(op.id));
        if (isEntityOp(op)) entities.set(`e\u0001${op.domain}\u0000${op.entity}`, bytes);
      }
      for (const [key, value] of entities) batch.put(key, value);
      for (const parsed of lastOfDevice.values()) checkSignature(parsed);
      const writing = batch.write({ sync: true } as object);
      if (inflight !== null) await inflight;
      inflight = writing;
    }
    await inflight;
    return ops.length / ((performance.now() - started) / 1000);
  } finally {
    await db.close();
  }
}

const vvEqual = (a: VersionVector, b: VersionVector) => {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((d) => a[d] === b[d]);
};
const vvSum = (vv: VersionVector) => Object.values(vv).reduce((s, n) => s + n, 0);

async function catchUp(root: string, children: ChildProcess[], log: (line: string) => void): Promise<CatchUp> {
  const n = envCount('FIELDMESH_BENCH_CATCHUP_OPS', 20_000, { min: 1000 });
  log(`generating a team history of ${n.toLocaleString('en-US')} signed ops (10 devices incl. HQ; bench/workload.ts) ...`);
  const t0 = performance.now();
  const workload = teamWorkload({ ops: n, devices: 10 });
  const hq = new BenchDevice('hq', 'hq-staff');
  if (hq.device !== workload.config.hqDevice) throw new Error('bench/workload.ts no longer derives HQ from BenchDevice("hq")');
  const envelopeBytes = workload.ops.reduce((s, op) => s + op.bytes.length, 0);
  const lastWallMs = workload.ops.reduce((m, op) => Math.max(m, op.hlc.wallMs), 0);
  // The history is dated (bench/workload.ts T0): the nodes' clocks run an hour after its last op, so that none of it is "from the future".
  const offsetMs = lastWallMs + 3600_000 - Date.now();
  log(`  ${((performance.now() - t0) / 1000).toFixed(1)} s: ${Object.entries(workload.counts).map(([t, c]) => `${c} ${t}`).join(', ')}; avg envelope ${(envelopeBytes / n).toFixed(0)} B`);

  const devices = [...new Set(workload.ops.map((op) => op.device))].filter((d) => d !== hq.device);
  const certs = devices.map((d, i) => certify(hq.author.signer, d, `investigator-${i}`).bytes);
  const dirA = join(root, 'a');
  const dirB = join(root, 'b');
  await enrollDir(dirA, hq.author.signer, 'a-desk', 'gateway');
  const deviceB = await enrollDir(dirB, hq.author.signer, 'b-tablet');

  log('the floors: the same history parsed, verified per run and written as log rows only, then with the least rows the storage layout needs ...');
  const logOnlyRate = await floorIngest(join(root, 'log-only'), workload.ops, 'log');
  const layoutFloorRate = await floorIngest(join(root, 'layout-floor'), workload.ops, 'layout');
  log(`  log rows only ${formatNumber(logOnlyRate)} ops/s; least layout ${formatNumber(layoutFloorRate)} ops/s`);

  log(`A ingests the history locally (runs in arrival order, ${INGEST_CHUNK} ops per ingest) ...`);
  let a: FieldNode | null = await FieldNode.open(nodeOptions(dirA, 'a-desk', offsetMs));
  let localIngestRate: number;
  let vvA: VersionVector;
  try {
    await a.addCertificates(certs);
    const started = performance.now();
    let inflight: Promise<unknown> | null = null;
    for (let i = 0; i < n; i += INGEST_CHUNK) {
      const writing = a.ingest(workload.ops.slice(i, i + INGEST_CHUNK).map((op) => op.bytes));
      if (inflight !== null) await inflight;
      inflight = writing;
      if ((i / INGEST_CHUNK) % 20 === 19) log(`  ${(i + INGEST_CHUNK).toLocaleString('en-US')} ops in ${((performance.now() - started) / 1000).toFixed(1)} s`);
    }
    await inflight;
    localIngestRate = n / ((performance.now() - started) / 1000);
    vvA = a.versionVector();
    if (vvSum(vvA) !== n) throw new Error(`A holds ${vvSum(vvA)} ops, expected ${n}`);
    const counts = await a.counts();
    const counted = Object.values(counts).reduce((x, y) => x + y, 0);
    log(`  ${formatNumber(localIngestRate)} ops/s; ${JSON.stringify(counts)}${counted === n ? '' : ` (note: these per-status counts add up to ${counted} for ${n} ops held)`}`);
  } finally {
    await a.close();
    a = null;
  }
  // Let go of the generated history before the measured part.
  workload.ops.length = 0;

  const child = new Child('serve-node', { dir: dirA, offsetMs }, children);
  const b = await FieldNode.open(nodeOptions(dirB, 'b-tablet', offsetMs));
  let stopped = false;
  try {
    const ready = await child.ready;
    if (!vvEqual(ready.vv!, vvA)) throw new Error('A reopened with another version vector');
    const portA = Number(multiaddr(ready.addresses[0]!).getComponents().find((c) => c.name === 'tcp')?.value);
    log(`B joins A (${ready.addresses[0]}) holding nothing ...`);
    const timeoutMs = 120_000 + n * 5;
    let done!: () => void;
    const caughtUp = new Promise<void>((resolve) => (done = resolve));
    const unsubscribe = b.onAdvanced(() => {
      if (vvEqual(b.versionVector(), vvA)) done();
    });
    const cpu0 = process.cpuUsage();
    const start = performance.now();
    await b.start({ listen: [LOOPBACK], peers: ready.addresses, mdns: false });
    let last = performance.now();
    for (;;) {
      const finished = await Promise.race([caughtUp.then(() => true), sleep(1000).then(() => false)]);
      if (finished || vvEqual(b.versionVector(), vvA)) break;
      const elapsed = performance.now() - start;
      if (elapsed > timeoutMs) throw new Error(`B did not catch up within ${timeoutMs / 1000} s: holds ${vvSum(b.versionVector())} of ${n}`);
      if (performance.now() - last >= 5000) {
        last = performance.now();
        log(`  B holds ${vvSum(b.versionVector()).toLocaleString('en-US')} ops after ${(elapsed / 1000).toFixed(1)} s`);
      }
    }
    const seconds = (performance.now() - start) / 1000;
    const cpu = process.cpuUsage(cpu0);
    unsubscribe();
    const stats = await child.call<SyncSession['stats'] | null>('stats', deviceB);
    if (stats === null) throw new Error('A has no session with B');
    const tcpBytes = tcpPayloadBytes(portA);
    const [hashA, hashB] = await Promise.all([child.call<string>('stateHash'), b.stateHash()]);
    log(`  caught up: ${n.toLocaleString('en-US')} ops in ${seconds.toFixed(2)} s = ${formatNumber(n / seconds)} ops/s; B used ${((cpu.user + cpu.system) / n).toFixed(0)} us CPU per op; state hashes ${hashA === hashB ? 'equal' : 'DIFFER'}`);
    log(`  A -> B: ${stats.framesOut} frames, ${stats.opsOut} ops in ops frames of ${stats.bytesOut} B (${(stats.bytesOut / stats.opsOut).toFixed(1)} B/op); TCP payload ${tcpBytes === null ? 'n/a (ss unavailable)' : `${tcpBytes} B both ways (${(tcpBytes / n).toFixed(1)} B/op)`}`);
    if (stats.opsOut !== n) log(`  note: A sent ${stats.opsOut} ops for ${n} held`);
    await b.stop();
    await child.stop();
    stopped = true;
    return { ops: n, seconds, envelopeBytes, opsFrameBytes: stats.bytesOut, tcpBytes, localIngestRate, logOnlyRate, layoutFloorRate };
  } finally {
    if (!stopped) {
      await b.stop().catch(() => undefined);
      await child.stop();
    }
    await b.close();
  }
}

/** TCP payload bytes sent and received by the sockets on local port `port` (Linux `ss`), or null. */
function tcpPayloadBytes(port: number): number | null {
  let out: string;
  try {
    out = execFileSync('ss', ['-tinH', 'state', 'established', `( sport = :${port} )`], { encoding: 'utf8', timeout: 5000 });
  } catch {
    return null;
  }
  let total = 0;
  let found = false;
  for (const m of out.matchAll(/bytes_(sent|received):(\d+)/g)) {
    total += Number(m[2]);
    found = true;
  }
  return found ? total : null;
}

// ---------------------------------------------------------------------------------------------
// Live propagation across a chain.

async function propagation(root: string, log: (line: string) => void): Promise<number[]> {
  const hq = new BenchDevice('hq', 'hq-staff');
  log(`live propagation: ${CHAIN} nodes in a chain, each peering with its neighbours only ...`);
  const nodes: FieldNode[] = [];
  try {
    for (let i = 0; i < CHAIN; i++) {
      const dir = join(root, `chain-${i}`);
      await enrollDir(dir, hq.author.signer, `chain-${i}`);
      nodes.push(await FieldNode.open(nodeOptions(dir, `chain-${i}`)));
    }
    for (let i = 0; i < CHAIN; i++) await nodes[i]!.start({ listen: [LOOPBACK], mdns: false, peers: i === 0 ? [] : [nodes[i - 1]!.addresses()[0]!] });
    const expected = (i: number) => [i > 0 ? nodes[i - 1]!.device : null, i < CHAIN - 1 ? nodes[i + 1]!.device : null].filter((d) => d !== null).sort();
    const linked = () => nodes.every((node, i) => JSON.stringify(node.peers().map((p) => p.device).sort()) === JSON.stringify(expected(i)));
    const deadline = performance.now() + 30_000;
    while (!linked()) {
      if (performance.now() > deadline) throw new Error(`chain not linked after 30 s: ${nodes.map((n) => n.peers().length).join(',')} peers`);
      await sleep(20);
    }
    const [first, last] = [nodes[0]!, nodes[CHAIN - 1]!];
    const arrived = new Map<OpId, number>();
    const waiters = new Map<OpId, () => void>();
    const subscription = last.subscribe({ kinds: ['status'], device: first.device });
    const listening = (async () => {
      for await (const event of subscription) {
        if (event.kind !== 'status' || arrived.has(event.op)) continue;
        arrived.set(event.op, performance.now());
        waiters.get(event.op)?.();
      }
    })();
    const latencies: number[] = [];
    try {
      for (let i = 0; i < LIVE_OPS + 5; i++) {
        const { id } = await first.mutate({ type: 'create', domain: 'task', entity: `live-${i}`, fields: { title: `Sweep sector ${i}`, assignee: 'investigator-1', done: false, progress: 0 } });
        const sent = performance.now();
        const reached = new Promise<void>((resolve) => (arrived.has(id) ? resolve() : waiters.set(id, resolve)));
        const ok = await Promise.race([reached.then(() => true), sleep(10_000).then(() => false)]);
        waiters.delete(id);
        if (!ok) throw new Error(`op ${i} did not reach the end of the chain within 10 s`);
        if (i >= 5) latencies.push(arrived.get(id)! - sent); // the first 5 warm up
        await sleep(5);
      }
    } finally {
      subscription.close();
      await listening;
    }
    log(`  ${LIVE_OPS} ops A -> E: p50 ${percentile(latencies, 50).toFixed(2)} ms, p99 ${percentile(latencies, 99).toFixed(2)} ms, max ${Math.max(...latencies).toFixed(2)} ms; peers per node ${nodes.map((n) => n.peers().length).join('-')}`);
    return latencies;
  } finally {
    for (const node of nodes) await node.stop().catch(() => undefined);
    for (const node of nodes) await node.close();
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [flag, mode, json] = process.argv.slice(2);
  if (flag === '--child' && mode !== undefined && process.send !== undefined) {
    await childMain(mode, JSON.parse(json ?? 'null')).catch((err: Error) => {
      process.send!({ kind: 'error', message: err.stack ?? String(err) } satisfies ChildMessage);
      process.exitCode = 1;
      process.disconnect();
    });
  } else {
    console.error('bench/net.ts is a suite: run it with `node bench/run.ts net`');
    process.exitCode = 2;
  }
}
