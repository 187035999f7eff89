/**
 * HQ suite (issue 6), real FieldNodes and real libp2p on loopback, all in this one process:
 *
 *  - ingest: HQ taking in ops of 5 field devices while judging them (enrolled, role, JSON Schema
 *    through src/hq/policy.ts) and writing receipts (src/hq/receipts.ts), until every op has a
 *    verdict; beside it the same ops ingested the same way into a store-only node (no policy, no
 *    receipts), alternating rounds in the same run. Target: at least 60 % of the store-only rate.
 *  - uplink: 5 field devices each author N ops offline (pending), then sync with a gateway that
 *    keeps dialling HQ's address in vain, until all six hold every op; then HQ comes up on that
 *    address (and the gateway dials it at once). Measured: time until every field device shows
 *    every one of its own ops `synced` (receipts travel HQ -> gateway -> devices), with the
 *    milestones HQ holds every op / has judged every op. Beside each, a floor: the time the
 *    store-only ingest rate needs for as many ops.
 *  - http: HQ's API (src/hq/api.ts) on 127.0.0.1 over the ingest part's HQ data (some ops still
 *    pending), 200 requests kept in flight per route (node's fetch), pages of 100; latency
 *    p50/p99 per route beside a trivial Fastify route in this process, in interleaved rounds.
 *
 *   FIELDMESH_BENCH_UPLINK_OPS   ops per field device in the uplink part, a multiple of 100 (default 10000)
 *   FIELDMESH_BENCH_HQ_OPS       ops per ingest round, a multiple of 500 (default 10000)
 *
 * Every node and server is stopped and closed in `finally` blocks, also when a part fails.
 */
import { freePort } from '../src/net/free-port.ts';
import { join } from 'node:path';
import Fastify from 'fastify';
import type { DeviceId, DeviceSigner } from '../src/core/keys.ts';
import { MERGE_FUNCTIONS } from '../src/core/strategies.ts';
import type { VersionVector } from '../src/core/version-vector.ts';
import { buildApi } from '../src/hq/api.ts';
import { Policy } from '../src/hq/policy.ts';
import { ReceiptIssuer } from '../src/hq/receipts.ts';
import type { MeshOptions } from '../src/net/mesh.ts';
import { FieldNode, type FieldNodeOptions } from '../src/node/field-node.ts';
import { against, envCount, formatNumber, type Result, type Suite } from './harness.ts';
import { BENCH_TEAM, certify, enrollDir, FLEET_DOMAIN, FleetWriter, fleetSigners, median, namedDeviceDir, namedSigner, percentile, removeDir, sleep, tempRoot, type FleetSpec } from './fleet.ts';

const DOMAINS = { [FLEET_DOMAIN]: { strategy: 'merge' as const, merge: { tags: MERGE_FUNCTIONS.union } } };
/** HQ's rules for the fleet's evidence records (bench/fleet.ts `evidence` and its updates). */
const POLICY = new Policy({
  [FLEET_DOMAIN]: {
    writers: ['field', 'gateway', 'server'],
    schema: {
      type: 'object',
      additionalProperties: false,
      required: ['case', 'kind', 'lat', 'lon', 'at', 'status'],
      properties: {
        case: { type: 'string', pattern: '^case-[0-9]+$' },
        kind: { enum: ['photo', 'sample', 'note'] },
        lat: { type: 'number', minimum: -90, maximum: 90 },
        lon: { type: 'number', minimum: -180, maximum: 180 },
        acc: { type: 'number', minimum: 0 },
        at: { type: 'integer' },
        count: { type: 'integer', minimum: 0 },
        floor: { type: 'integer' },
        tags: { type: 'array', items: { type: 'string', maxLength: 64 }, maxItems: 32 },
        note: { type: 'string', maxLength: 2000 },
        status: { enum: ['collected', 'bagged', 'sent', 'logged'] },
        unit: { type: 'string' },
      },
    },
  },
});
const FIELD_DEVICES = 5;
const LOOPBACK = '/ip4/127.0.0.1/tcp/0';
/** Quick redials, so the gateway finds HQ within half a second of it coming up. */
const MESH: MeshOptions = { mdns: false, listen: [LOOPBACK], redialMinMs: 100, redialMaxMs: 500 };
/** Ops per device per ingest call: a run as one sync frame would carry it. */
const RUN_OPS = 100;
const INGEST_ROUNDS = 2;
/** Ops per device left without a verdict in the API's data set, so that queues are not empty. */
const PENDING_PER_DEVICE = RUN_OPS;
const HTTP_CONCURRENCY = 200;
const HTTP_WARMUP_BURSTS = 3;
const HTTP_ROUNDS = 2;
const HTTP_ROUND_MS = 1500;
const HTTP_PAGE = 100;
const TOKEN = 'bench-token';

/** A count from the environment: a multiple of `step`, at least one step. */
export const hqSuite: Suite = {
  name: 'hq',
  description: 'HQ ingest with receipts vs store-only, uplink through a gateway (5 devices), API latency under 200 concurrent requests',
  approxSeconds: 240,
  async run(log) {
    const root = await tempRoot('hq');
    try {
      const ingest = await ingestRounds(root, log);
      const http = await httpLatency(ingest.apiDir, ingest.fieldDevices, log);
      const uplink = await uplinkRun(root, log);
      const storeOnly: Result = { name: 'hq.ingest.store_only', value: ingest.storeOnlyRate, unit: 'ops/s' };
      // Floors: storing the same number of ops store-only, one after another (every node shares this process).
      const hqFloor: Result = { name: 'hq.uplink.floor_hq_stores_all', value: uplink.ops / ingest.storeOnlyRate, unit: 's' };
      const fieldFloor: Result = { name: 'hq.uplink.floor_field_stores_all', value: uplink.fieldCopies / ingest.storeOnlyRate, unit: 's' };
      return [
        storeOnly,
        against({ name: 'hq.ingest.with_receipts', value: ingest.hqRate, unit: 'ops/s', target: { on: 'ratio', op: '>=', value: 0.6 } }, storeOnly),
        { name: 'hq.uplink.ops', value: uplink.ops, unit: 'ops' },
        fieldFloor,
        against({ name: 'hq.uplink.field_converge', value: uplink.fieldConvergeS, unit: 's' }, fieldFloor),
        hqFloor,
        against({ name: 'hq.uplink.hq_holds_all', value: uplink.hqHoldsAllS, unit: 's' }, hqFloor),
        against({ name: 'hq.uplink.all_judged', value: uplink.allJudgedS, unit: 's' }, hqFloor),
        against({ name: 'hq.uplink.all_synced', value: uplink.allSyncedS, unit: 's' }, hqFloor),
        ...http,
      ];
    } finally {
      await removeDir(root);
    }
  },
};

// ---------------------------------------------------------------------------------------------
// A team: HQ's key is named, so certificates are signed in memory and HQ's data dir carries the key.

interface BenchTeam {
  /** Key name of HQ (namedSigner). */
  readonly hqName: string;
  readonly hq: DeviceSigner;
  readonly spec: FleetSpec;
  readonly fieldDevices: DeviceId[];
  readonly certs: Uint8Array[];
}

function benchTeam(name: string): BenchTeam {
  const hqName = `${name}-hq`;
  const hq = namedSigner(hqName);
  // An hour ago, 1 ms apart: in the past (no drift flags) and after the certificates' start.
  const spec: FleetSpec = { name: `${name}-field`, devices: FIELD_DEVICES, entitiesPerDevice: 500, startMs: Date.now() - 3_600_000, stepMs: 1 };
  const fieldDevices = fleetSigners(spec).map((s) => s.device);
  return { hqName, hq, spec, fieldDevices, certs: fieldDevices.map((d, i) => certify(hq, d, `investigator-${i}`).bytes) };
}

const nodeOptions = (dataDir: string, user: string, extra: Partial<FieldNodeOptions> = {}): FieldNodeOptions => ({ dataDir, team: BENCH_TEAM, user, domains: DOMAINS, ...extra });

/** HQ's node in `dir` (role server, with the team's named key) knowing every field device. */
async function openHq(team: BenchTeam, dir: string): Promise<FieldNode> {
  await namedDeviceDir(dir, team.hqName);
  const node = await FieldNode.open(nodeOptions(dir, 'hq-desk', { role: 'server' }));
  try {
    if (node.device !== team.hq.device) throw new Error('HQ opened with another key');
    await node.addCertificates(team.certs);
    return node;
  } catch (err) {
    await node.close();
    throw err;
  }
}

/** Feeds chunks (one run per device each) into `node`: every run of a chunk at once, the next chunk built meanwhile. */
async function feed(node: FieldNode, chunks: readonly Uint8Array[][][]): Promise<void> {
  let inflight: Promise<unknown> | null = null;
  for (const runs of chunks) {
    const writing = Promise.all(runs.map((ops) => node.ingest(ops)));
    if (inflight !== null) await inflight;
    inflight = writing;
  }
  await inflight;
}

/** Polls `done` every `everyMs` until true; throws after `timeoutMs`, naming `what` and `progress()`. */
async function until(what: string, done: () => boolean | Promise<boolean>, timeoutMs: number, progress: () => string | Promise<string>, log: (line: string) => void, everyMs = 50): Promise<void> {
  const start = performance.now();
  let lastLog = start;
  while (!(await done())) {
    const now = performance.now();
    if (now - start > timeoutMs) throw new Error(`${what}: not done within ${(timeoutMs / 1000).toFixed(0)} s (${await progress()})`);
    if (now - lastLog >= 10_000) {
      lastLog = now;
      log(`    ${((now - start) / 1000).toFixed(0)} s: ${await progress()}`);
    }
    await sleep(everyMs);
  }
}

// ---------------------------------------------------------------------------------------------
// Ingest: HQ with validation and receipts vs a store-only node.

interface IngestFigures {
  readonly hqRate: number;
  readonly storeOnlyRate: number;
  /** HQ's data dir of the last round, with PENDING_PER_DEVICE ops per device not judged yet. */
  readonly apiDir: string;
  readonly fieldDevices: DeviceId[];
}

async function ingestRounds(root: string, log: (line: string) => void): Promise<IngestFigures> {
  const n = envCount('FIELDMESH_BENCH_HQ_OPS', 10_000, { min: FIELD_DEVICES * RUN_OPS, step: FIELD_DEVICES * RUN_OPS });
  const team = benchTeam('ingest');
  const writer = new FleetWriter(team.spec);
  const chunks = Array.from({ length: n / FIELD_DEVICES / RUN_OPS }, () => team.fieldDevices.map((_, d) => writer.run(d, RUN_OPS)));
  const extra = [team.fieldDevices.map((_, d) => writer.run(d, PENDING_PER_DEVICE))];
  log(`ingest: ${n.toLocaleString('en-US')} ops of ${FIELD_DEVICES} devices per round, runs of ${RUN_OPS}; ${INGEST_ROUNDS} rounds of store-only then HQ ...`);
  const storeOnly: number[] = [];
  const hq: number[] = [];
  let apiDir = '';
  for (let r = 0; r < INGEST_ROUNDS; r++) {
    const plain = await FieldNode.open(nodeOptions(join(root, `store-only-${r}`), 'archive', { hqDevice: team.hq.device }));
    try {
      await plain.addCertificates(team.certs);
      const t = performance.now();
      await feed(plain, chunks);
      storeOnly.push(n / ((performance.now() - t) / 1000));
    } finally {
      await plain.close();
    }
    apiDir = join(root, `hq-${r}`);
    const server = await openHq(team, apiDir);
    try {
      const issuer = new ReceiptIssuer(server, POLICY);
      try {
        issuer.start();
        const t = performance.now();
        await feed(server, chunks);
        const storedMs = performance.now() - t;
        const judged = () => issuer.stats.accepted + issuer.stats.rejected;
        const allJudged = async () => {
          await issuer.flush();
          return judged() >= n;
        };
        await until('HQ judging every op', allJudged, 120_000, () => `${judged()} of ${n} judged`, log, 10);
        hq.push(n / ((performance.now() - t) / 1000));
        if (issuer.stats.rejected > 0 || issuer.stats.transient > 0) throw new Error(`HQ refused fleet ops: ${JSON.stringify(issuer.stats)}`);
        log(`  round ${r + 1}: store-only ${formatNumber(storeOnly[r]!)} ops/s; HQ ${formatNumber(hq[r]!)} ops/s (all stored after ${(storedMs / 1000).toFixed(1)} s, all judged after ${((performance.now() - t) / 1000).toFixed(1)} s, ${issuer.stats.receipts} receipts)`);
      } finally {
        await issuer.stop();
      }
      // Taken in with no issuer running: the API's data set then has pending ops in every queue.
      await feed(server, extra);
    } finally {
      await server.close();
    }
  }
  return { hqRate: median(hq), storeOnlyRate: median(storeOnly), apiDir, fieldDevices: team.fieldDevices };
}

// ---------------------------------------------------------------------------------------------
// Uplink: field devices synced with a gateway, then HQ reachable.

interface UplinkFigures {
  /** Ops of the field devices (each authored by one of them). */
  readonly ops: number;
  /** Ops the gateway and the field devices took in from each other before HQ was reachable. */
  readonly fieldCopies: number;
  readonly fieldConvergeS: number;
  readonly hqHoldsAllS: number;
  readonly allJudgedS: number;
  readonly allSyncedS: number;
}

interface UplinkNodes {
  readonly field: FieldNode[];
  readonly gateway: FieldNode;
  readonly server: FieldNode;
}

const vvSum = (vv: VersionVector) => Object.values(vv).reduce((s, x) => s + x, 0);

async function uplinkRun(root: string, log: (line: string) => void): Promise<UplinkFigures> {
  const perDevice = envCount('FIELDMESH_BENCH_UPLINK_OPS', 10_000, { min: RUN_OPS, step: RUN_OPS });
  const total = perDevice * FIELD_DEVICES;
  const team = benchTeam('uplink');
  const opened: FieldNode[] = [];
  const track = (node: FieldNode) => {
    opened.push(node);
    return node;
  };
  let issuer: ReceiptIssuer | null = null;
  try {
    const field: FieldNode[] = [];
    for (let d = 0; d < FIELD_DEVICES; d++) {
      const dir = join(root, `uplink-field-${d}`);
      await namedDeviceDir(dir, `${team.spec.name}-${d}`);
      await enrollDir(dir, team.hq, `investigator-${d}`);
      field.push(track(await FieldNode.open(nodeOptions(dir, `investigator-${d}`))));
    }
    const gatewayDir = join(root, 'uplink-gateway');
    await enrollDir(gatewayDir, team.hq, 'camp', 'gateway');
    const nodes: UplinkNodes = { field, gateway: track(await FieldNode.open(nodeOptions(gatewayDir, 'camp'))), server: track(await openHq(team, join(root, 'uplink-hq'))) };

    log(`uplink: ${FIELD_DEVICES} field devices author ${perDevice.toLocaleString('en-US')} ops each offline (signed here, ingested into each device's own store) ...`);
    const t = performance.now();
    const writer = new FleetWriter(team.spec);
    for (let done = 0; done < perDevice; done += RUN_OPS) await Promise.all(field.map((node, d) => node.ingest(writer.run(d, RUN_OPS))));
    for (const node of field) if ((await node.counts(node.device)).pending !== perDevice) throw new Error(`${node.dataDir}: expected ${perDevice} pending ops`);
    log(`  ${((performance.now() - t) / 1000).toFixed(1)} s`);

    const port = await freePort();
    const fieldConvergeS = await fieldConverge(nodes, total, `/ip4/127.0.0.1/tcp/${port}/p2p/${nodes.server.device}`, log);
    issuer = new ReceiptIssuer(nodes.server, POLICY);
    const restored = await restoreUplink(nodes, issuer, port, perDevice, log);
    return { ops: total, fieldCopies: total + FIELD_DEVICES * (total - perDevice), fieldConvergeS, ...restored };
  } finally {
    await issuer?.stop();
    for (const node of opened) await node.stop().catch(() => undefined);
    for (const node of opened) await node.close().catch(() => undefined);
  }
}

/** Starts the gateway (dialling HQ's dead address) and the field devices; seconds until all hold every op. */
async function fieldConverge({ field, gateway }: UplinkNodes, total: number, hqAddress: string, log: (line: string) => void): Promise<number> {
  log(`  field devices sync with the gateway; HQ (${hqAddress}) is out of reach ...`);
  const t = performance.now();
  await gateway.start({ ...MESH, peers: [hqAddress] });
  for (const node of field) await node.start({ ...MESH, peers: gateway.addresses() });
  const everyone = [gateway, ...field];
  const held = () => everyone.map((node) => vvSum(node.versionVector()));
  await until('the field converging without HQ', () => held().every((n) => n === total), 900_000, () => `ops held: ${held().join(', ')} of ${total}`, log, 100);
  const seconds = (performance.now() - t) / 1000;
  log(`  converged in ${seconds.toFixed(1)} s`);
  return seconds;
}

/** HQ starts judging and listening where the gateway keeps dialling; times the way back of every receipt. */
async function restoreUplink({ field, gateway, server }: UplinkNodes, issuer: ReceiptIssuer, port: number, perDevice: number, log: (line: string) => void): Promise<Omit<UplinkFigures, 'ops' | 'fieldCopies' | 'fieldConvergeS'>> {
  const total = perDevice * field.length;
  log('  uplink restored: HQ listens on its address and the gateway dials it ...');
  issuer.start();
  const judged = () => issuer.stats.accepted + issuer.stats.rejected;
  const hqHolds = () => vvSum(server.versionVector()) - (server.versionVector()[server.device] ?? 0);
  const ownSynced = () => Promise.all(field.map(async (node) => (await node.counts(node.device)).synced));
  let hqHoldsAllS = 0;
  let allJudgedS = 0;
  const t = performance.now();
  await server.start({ ...MESH, listen: [`/ip4/127.0.0.1/tcp/${port}`] });
  await gateway.dial(server.addresses()[0]!).catch(() => undefined); // the gateway's own redial covers a failed first dial
  const syncedEverywhere = async () => {
    // Milestones, to the poll's 100 ms.
    const elapsedS = (performance.now() - t) / 1000;
    if (hqHoldsAllS === 0 && hqHolds() === total) hqHoldsAllS = elapsedS;
    if (allJudgedS === 0 && judged() >= total) allJudgedS = elapsedS;
    return (await ownSynced()).every((n) => n === perDevice);
  };
  const progress = async () => `HQ holds ${hqHolds()}, judged ${judged()}; own ops synced per device: ${(await ownSynced()).join(', ')}`;
  await until('every field device showing its ops synced', syncedEverywhere, 900_000, progress, log, 100);
  const allSyncedS = (performance.now() - t) / 1000;
  if (issuer.stats.rejected > 0) throw new Error(`HQ rejected fleet ops: ${JSON.stringify(issuer.stats)}`);
  log(`  HQ held every op after ${hqHoldsAllS.toFixed(1)} s and had judged every one after ${allJudgedS.toFixed(1)} s (${issuer.stats.receipts} receipts); every device showed its own ops synced after ${allSyncedS.toFixed(1)} s`);
  return { hqHoldsAllS, allJudgedS, allSyncedS };
}

// ---------------------------------------------------------------------------------------------
// HTTP API latency under 200 requests in flight.

interface Loop {
  readonly latenciesMs: number[];
  readonly ms: number;
}

/** HTTP_CONCURRENCY workers each sending GET `url` back to back for `ms`; every latency. */
async function closedLoop(url: string, headers: Record<string, string>, ms: number): Promise<Loop> {
  const latenciesMs: number[] = [];
  const start = performance.now();
  const deadline = start + ms;
  await Promise.all(
    Array.from({ length: HTTP_CONCURRENCY }, async () => {
      while (performance.now() < deadline) {
        const t = performance.now();
        const response = await fetch(url, { headers });
        await response.arrayBuffer();
        if (!response.ok) throw new Error(`GET ${url}: ${response.status}`);
        latenciesMs.push(performance.now() - t);
      }
    }),
  );
  return { latenciesMs, ms: performance.now() - start };
}

async function httpLatency(dir: string, fieldDevices: readonly DeviceId[], log: (line: string) => void): Promise<Result[]> {
  const node = await FieldNode.open(nodeOptions(dir, 'hq-desk', { role: 'server' }));
  const trivial = Fastify({ logger: false });
  let api: Awaited<ReturnType<typeof buildApi>> | null = null;
  try {
    trivial.get('/ping', async () => ({ ok: true }));
    const trivialBase = await trivial.listen({ host: '127.0.0.1', port: 0 });
    api = await buildApi(node, { token: TOKEN });
    const apiBase = await api.listen({ host: '127.0.0.1', port: 0 });
    const auth = { authorization: `Bearer ${TOKEN}` };
    const routes: Record<string, { url: string; headers: Record<string, string> }> = {
      trivial: { url: `${trivialBase}/ping`, headers: {} },
      entities: { url: `${apiBase}/v1/entities/${FLEET_DOMAIN}?limit=${HTTP_PAGE}`, headers: auth },
      ops: { url: `${apiBase}/v1/ops?limit=${HTTP_PAGE}`, headers: auth },
      devices: { url: `${apiBase}/v1/devices`, headers: auth },
      queue: { url: `${apiBase}/v1/devices/${fieldDevices[0]}/queue?limit=${HTTP_PAGE}`, headers: auth },
    };
    const counts = await node.counts();
    log(`http: HQ API over ${formatNumber(counts.synced + counts.pending)} ops (${counts.pending} pending); ${HTTP_CONCURRENCY} requests in flight per route, ${HTTP_ROUNDS} interleaved rounds of ${HTTP_ROUND_MS} ms; pages of ${HTTP_PAGE} ...`);
    const loops = new Map<string, Loop[]>(Object.keys(routes).map((r) => [r, []]));
    // Warm-up: JIT, and the client's connection pool, whose first long bursts showed tails over 1 s on every route.
    for (const { url, headers } of Object.values(routes)) for (let i = 0; i < HTTP_WARMUP_BURSTS; i++) await closedLoop(url, headers, 300);
    for (let round = 0; round < HTTP_ROUNDS; round++) {
      for (const [name, { url, headers }] of Object.entries(routes)) loops.get(name)!.push(await closedLoop(url, headers, HTTP_ROUND_MS));
    }
    const figures = (name: string) => {
      const runs = loops.get(name)!;
      const lat = runs.flatMap((l) => l.latenciesMs);
      const rate = lat.length / (runs.reduce((sum, l) => sum + l.ms, 0) / 1000);
      log(`  ${name.padEnd(8)} ${lat.length} requests, ${formatNumber(rate)} req/s, p50 ${percentile(lat, 50).toFixed(2)} ms, p99 ${percentile(lat, 99).toFixed(2)} ms`);
      return { p50: { name: `hq.http.${name}.p50`, value: percentile(lat, 50), unit: 'ms' }, p99: { name: `hq.http.${name}.p99`, value: percentile(lat, 99), unit: 'ms' } };
    };
    const base = figures('trivial');
    const results: Result[] = [base.p50, base.p99];
    for (const name of Object.keys(routes).filter((r) => r !== 'trivial')) {
      const route = figures(name);
      results.push(against(route.p50, base.p50), against(route.p99, base.p99));
    }
    return results;
  } finally {
    await api?.close();
    await trivial.close();
    await node.close();
  }
}
