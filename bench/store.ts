/**
 * Store suite: durable mutations through FieldNode (group-committed, synced LevelDB batches)
 * next to the limits they are bounded by, measured in the same run and interleaved with them
 * (rounds of: synced single put, mutations at concurrency 1/16/256, Ed25519 signing, synced
 * batches, and the floor of a mutation: signing plus the least rows the layout needs), and the reopen time and memory of a data dir holding many ops of 20 devices.
 *
 *   FIELDMESH_BENCH_REOPEN_OPS   ops in the big data dir (default 100000; the issue's figure is 1000000).
 *   Building the dir is bound by the store's ingest rate (about 5k ops/s on a 2-core machine: 1,000,000 ops take about 3 minutes),
 *   so the default keeps the whole `npm run bench` within about 5 minutes.
 *
 * Reopen is measured in child processes (`node bench/store.ts --open-child ...`), so that the
 * RSS is that of a process that did nothing but open the dir and read one entity.
 */
import { createHash, generateKeyPairSync, sign } from 'node:crypto';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Level } from 'level';
import { parseOp, signingBytes } from '../src/core/op.ts';
import { MERGE_FUNCTIONS } from '../src/core/strategies.ts';
import { FieldNode } from '../src/node/field-node.ts';
import { against, envCount, formatNumber, type Result, type Suite } from './harness.ts';
import {
  BENCH_TEAM,
  certify,
  evidence,
  FLEET_DOMAIN,
  FleetGenerator,
  fleetSigners,
  levelSyncedBatches,
  levelSyncedPuts,
  median,
  namedSigner,
  openRawLevel,
  percentile,
  removeDir,
  runChild,
  tempRoot,
  type FleetSpec,
} from './fleet.ts';

const THIS_FILE = fileURLToPath(import.meta.url);
const DOMAINS = { [FLEET_DOMAIN]: { strategy: 'merge' as const, merge: { tags: MERGE_FUNCTIONS.union } } };
const CONCURRENCY = [1, 16, 256] as const;
/** Interleaved measuring rounds and each measurement's length per round (ms). */
const ROUNDS = 3;
const ROUND_MS = { put: 800, mutate: 800, c256: 1200, sign: 300, batch: 500 };

const REOPEN_DEVICES = 20;
/** Ops per device per ingest call; one chunk (20 runs, 2,000 ops, one group-committed batch) is about as many ops as a 1 MiB sync frame carries. */
const REOPEN_RUN_OPS = 100;
const REOPEN_SMALL_OPS = 10_000;
const REOPEN_RUNS = 3;

export const storeSuite: Suite = {
  name: 'store',
  description: 'durable mutations vs synced LevelDB puts and Ed25519 signing; reopen time and RSS of a big data dir',
  approxSeconds: 130,
  async run(log) {
    const root = await tempRoot('store');
    try {
      const results = await mutations(root, log);
      results.push(...(await reopen(root, log)));
      return results;
    } finally {
      await removeDir(root);
    }
  },
};

interface Loop {
  readonly ops: number;
  readonly ms: number;
  readonly latenciesMs: number[];
}

/** `c` workers each running `op` back to back for about `ms`: completed ops, elapsed ms, every latency. */
async function closedLoop(c: number, ms: number, op: (worker: number) => Promise<unknown>): Promise<Loop> {
  const latenciesMs: number[] = [];
  const start = performance.now();
  const deadline = start + ms;
  await Promise.all(
    Array.from({ length: c }, async (_, w) => {
      while (performance.now() < deadline) {
        const t = performance.now();
        await op(w);
        latenciesMs.push(performance.now() - t);
      }
    }),
  );
  return { ops: latenciesMs.length, ms: performance.now() - start, latenciesMs };
}

const rateOf = (loops: readonly Loop[]) => median(loops.map((l) => (l.ops * 1000) / l.ms));

async function mutations(root: string, log: (line: string) => void): Promise<Result[]> {
  const hq = namedSigner('store-hq');
  const node = await FieldNode.open({ dataDir: join(root, 'mutations'), team: BENCH_TEAM, user: 'investigator-1', hqDevice: hq.device, domains: DOMAINS });
  const putDb = await openRawLevel(join(root, 'level-put'));
  const batchDb = await openRawLevel(join(root, 'level-batch'));
  const floorDb = await openRawLevel(join(root, 'level-floor'));
  try {
    // Every worker of every concurrency level updates its own entity: no two mutations in flight touch the same one.
    const entity = (c: number, w: number) => `m${c}-${String(w).padStart(3, '0')}`;
    for (const c of CONCURRENCY) await Promise.all(Array.from({ length: c }, (_, w) => node.mutate({ type: 'create', domain: FLEET_DOMAIN, entity: entity(c, w), fields: evidence(w) })));
    let n = 0;
    const update = (c: number) => (w: number) => node.mutate({ type: 'update', domain: FLEET_DOMAIN, entity: entity(c, w), fields: evidence(n++) });
    const sample = await node.mutate({ type: 'update', domain: FLEET_DOMAIN, entity: entity(1, 0), fields: evidence(n++) });
    const message = signingBytes(parseOp(sample.op.bytes).bodyBytes);
    const { privateKey } = generateKeyPairSync('ed25519');
    log(`mutation op: envelope ${sample.op.bytes.length} B, signed message ${message.length} B; raw LevelDB values 300 B`);

    const signFor = (ms: number) => {
      const start = performance.now();
      let i = 0;
      do {
        for (let k = 0; k < 64; k++) sign(null, message, privateKey);
        i += 64;
      } while (performance.now() - start < ms);
      return (i * 1000) / (performance.now() - start);
    };

    /**
     * The floor of a durable mutation at concurrency 256 on this machine: 256 mutations signed
     * (Ed25519 over the sample's message, then SHA-256 of the envelope for its id), their rows in
     * one synced LevelDB batch, the next 256 signed while it is written. The rows are the least the
     * storage layout needs: the log row by (device, seq), a row by op id, a status row and the
     * entity's row (the envelope standing in for its state). Nothing is validated, encoded or applied.
     */
    const floorFor = async (ms: number, round: string) => {
      const start = performance.now();
      let seq = 0;
      let inflight: Promise<void> | null = null;
      do {
        const batch = floorDb.batch();
        for (let k = 0; k < 256; k++, seq++) {
          const sig = sign(null, message, privateKey);
          const id = createHash('sha256').update(message).update(sig).digest('hex');
          const at = `${round}\u0000${String(seq).padStart(12, '0')}`;
          batch.put(`l\u0001${at}`, sample.op.bytes);
          batch.put(`o\u0001${id}`, sig);
          batch.put(`s\u0001pending\u0000${at}`, sig);
          batch.put(`e\u0001${FLEET_DOMAIN}\u0000m256-${String(k).padStart(3, '0')}`, sample.op.bytes);
        }
        const writing = batch.write({ sync: true } as object);
        if (inflight !== null) await inflight;
        inflight = writing;
      } while (performance.now() - start < ms);
      await inflight;
      return (seq * 1000) / (performance.now() - start);
    };

    log('warming up ...');
    await levelSyncedPuts(putDb, 200, 300, 20, 'w');
    for (const c of CONCURRENCY) await closedLoop(c, 300, update(c));
    signFor(100);
    await floorFor(100, 'w');

    log(`measuring ${ROUNDS} interleaved rounds: synced put, mutate c1/c16/c256, Ed25519 sign, synced batch, mutation floor ...`);
    const puts: { rate: number; latenciesMs: number[] }[] = [];
    const loops = new Map<number, Loop[]>(CONCURRENCY.map((c) => [c, []]));
    const signs: number[] = [];
    const batches: number[] = [];
    const floors: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      puts.push(await levelSyncedPuts(putDb, ROUND_MS.put, 300, 20, `r${r}-`));
      for (const c of CONCURRENCY) loops.get(c)!.push(await closedLoop(c, c === 256 ? ROUND_MS.c256 : ROUND_MS.mutate, update(c)));
      signs.push(signFor(ROUND_MS.sign));
      batches.push(await levelSyncedBatches(batchDb, ROUND_MS.batch, 1000, 300, `r${r}-`));
      floors.push(await floorFor(ROUND_MS.c256, `r${r}`));
      log(
        `  round ${r + 1}: put ${formatNumber(puts[r]!.rate)}/s, ${CONCURRENCY.map((c) => `c${c} ${formatNumber((loops.get(c)![r]!.ops * 1000) / loops.get(c)![r]!.ms)}/s`).join(', ')}, sign ${formatNumber(signs[r]!)}/s, batch ${formatNumber(batches[r]!)} rows/s, floor ${formatNumber(floors[r]!)}/s`,
      );
    }
    const putLatencies = puts.flatMap((p) => p.latenciesMs);
    for (const c of CONCURRENCY) {
      const lat = loops.get(c)!.flatMap((l) => l.latenciesMs);
      log(`  c${c}: ${lat.length} mutations, latency p50 ${percentile(lat, 50).toFixed(2)} ms, p99 ${percentile(lat, 99).toFixed(2)} ms`);
    }
    log(`  synced put: ${putLatencies.length} puts, latency p50 ${percentile(putLatencies, 50).toFixed(2)} ms, p99 ${percentile(putLatencies, 99).toFixed(2)} ms`);

    const put: Result = { name: 'store.level_put_synced', value: median(puts.map((p) => p.rate)), unit: 'puts/s' };
    const putP50: Result = { name: 'store.level_put_synced.p50', value: percentile(putLatencies, 50), unit: 'ms' };
    const putP99: Result = { name: 'store.level_put_synced.p99', value: percentile(putLatencies, 99), unit: 'ms' };
    const signRate: Result = { name: 'store.ed25519_sign_wall', value: median(signs), unit: 'ops/s' };
    const batch: Result = { name: 'store.level_batch1000_synced', value: median(batches), unit: 'rows/s' };
    const results: Result[] = [put, putP50, putP99, signRate, batch];
    for (const c of CONCURRENCY) {
      const target = c === 256 ? { on: 'ratio' as const, op: '>=' as const, value: 10 } : undefined;
      results.push(against({ name: `store.mutate_c${c}`, value: rateOf(loops.get(c)!), unit: 'ops/s', ...(target ? { target } : {}) }, put));
    }
    results.push(against({ name: 'store.mutate_c256.vs_sign', value: rateOf(loops.get(256)!), unit: 'ops/s', target: { on: 'ratio', op: '>=', value: 0.5 } }, signRate));
    const floor = against({ name: 'store.mutate_floor', value: median(floors), unit: 'ops/s' }, put);
    results.push(floor, against({ name: 'store.mutate_c256.vs_floor', value: rateOf(loops.get(256)!), unit: 'ops/s' }, floor));
    const c1 = loops.get(1)!.flatMap((l) => l.latenciesMs);
    results.push(against({ name: 'store.mutate_c1.p50', value: percentile(c1, 50), unit: 'ms', target: { on: 'ratio', op: '<=', value: 1.5 } }, putP50));
    results.push(against({ name: 'store.mutate_c1.p99', value: percentile(c1, 99), unit: 'ms' }, putP99));
    return results;
  } finally {
    await node.close();
    await putDb.close();
    await batchDb.close();
    await floorDb.close();
  }
}

interface OpenReport {
  readonly openMs: number;
  readonly getMs: number;
  readonly rssBytes: number;
  readonly heapUsedBytes: number;
  readonly found: boolean;
}

interface ChildArgs {
  readonly dir: string;
  readonly hqDevice: string;
  readonly entity: string;
}

async function reopen(root: string, log: (line: string) => void): Promise<Result[]> {
  const total = envCount('FIELDMESH_BENCH_REOPEN_OPS', 100_000, { min: REOPEN_SMALL_OPS * 2 });
  const chunkOps = REOPEN_DEVICES * REOPEN_RUN_OPS;
  const chunks = Math.ceil(total / chunkOps);
  const bigOps = chunks * chunkOps;
  const smallChunks = Math.ceil(REOPEN_SMALL_OPS / chunkOps);
  const hq = namedSigner('store-hq');
  const spec: FleetSpec = { name: 'store-field', devices: REOPEN_DEVICES, entitiesPerDevice: 500, startMs: Date.now() - 30 * 24 * 3600 * 1000, stepMs: 100 };
  const devices = fleetSigners(spec).map((s) => s.device);
  const certs = devices.map((d, i) => certify(hq, d, `investigator-${i}`).bytes);
  const dir = join(root, 'reopen');
  const args: ChildArgs = { dir, hqDevice: hq.device, entity: 'ev-0-000000' };
  const open = () => FieldNode.open({ dataDir: dir, team: BENCH_TEAM, user: 'hq-desk', hqDevice: hq.device, domains: DOMAINS });

  log(`building a data dir of ${bigOps.toLocaleString('en-US')} ops of ${REOPEN_DEVICES} devices (signed in a worker thread, ingested in runs of ${REOPEN_RUN_OPS}) ...`);
  const generator = new FleetGenerator(spec, REOPEN_RUN_OPS, chunks);
  let node: FieldNode | null = await open();
  await node.addCertificates(certs);
  const started = performance.now();
  let envelopeBytes = 0;
  let measuredSmall: Measured | null = null;
  try {
    let inflight: Promise<unknown> | null = null;
    for (let i = 0; i < chunks; i++) {
      const chunk = await generator.next();
      envelopeBytes += chunk.bytes;
      const target: FieldNode = node!;
      const writing = Promise.all(chunk.runs.map((run) => target.ingest(run.ops, devices[run.device])));
      if (inflight !== null) await inflight;
      inflight = writing;
      const done = (i + 1) * chunkOps;
      if (i + 1 === smallChunks || i + 1 === chunks) {
        await inflight;
        inflight = null;
        await node!.close();
        node = null;
        const label = i + 1 === chunks ? 'big' : 'small';
        log(`  ${done.toLocaleString('en-US')} ops stored in ${((performance.now() - started) / 1000).toFixed(1)} s; measuring reopen (${label}) ...`);
        const m = await measureOpen(args, log);
        if (label === 'small') {
          measuredSmall = m;
          node = await open();
        } else {
          log(`  ingest rate while building: ${formatNumber(bigOps / ((performance.now() - started - m.spentMs) / 1000))} ops/s (avg envelope ${(envelopeBytes / bigOps).toFixed(0)} B)`);
          return reopenResults(measuredSmall!, m, smallChunks * chunkOps, bigOps);
        }
      } else if ((i + 1) % Math.max(1, Math.round(chunks / 10)) === 0) {
        log(`  ${done.toLocaleString('en-US')} ops in ${((performance.now() - started) / 1000).toFixed(1)} s`);
      }
    }
    throw new Error('unreachable');
  } finally {
    await generator.close();
    await node?.close();
  }
}

interface Measured {
  /** First open after the writer closed the dir (replays LevelDB's log). */
  readonly first: OpenReport;
  readonly node: OpenReport[];
  readonly rawMs: number[];
  readonly spentMs: number;
}

async function measureOpen(args: ChildArgs, log: (line: string) => void): Promise<Measured> {
  const t = performance.now();
  const json = JSON.stringify(args);
  const first = await runChild<OpenReport>(THIS_FILE, ['--open-child', json], 300_000);
  if (!first.found) throw new Error(`reopened dir does not hold ${args.entity}`);
  const nodeRuns: OpenReport[] = [];
  const rawMs: number[] = [];
  for (let r = 0; r < REOPEN_RUNS; r++) {
    rawMs.push((await runChild<{ openMs: number }>(THIS_FILE, ['--raw-open-child', json], 300_000)).openMs);
    nodeRuns.push(await runChild<OpenReport>(THIS_FILE, ['--open-child', json], 300_000));
  }
  const mib = (b: number) => (b / 2 ** 20).toFixed(1);
  log(`    first open ${(first.openMs + first.getMs).toFixed(0)} ms (rss ${mib(first.rssBytes)} MiB); then FieldNode ${nodeRuns.map((r) => (r.openMs + r.getMs).toFixed(0)).join(', ')} ms (rss ${nodeRuns.map((r) => mib(r.rssBytes)).join(', ')} MiB); raw LevelDB open+get ${rawMs.map((m) => m.toFixed(0)).join(', ')} ms`);
  return { first, node: nodeRuns, rawMs, spentMs: performance.now() - t };
}

function reopenResults(small: Measured, big: Measured, smallOps: number, bigOps: number): Result[] {
  const secs = (runs: readonly OpenReport[]) => median(runs.map((r) => (r.openMs + r.getMs) / 1000));
  const rss = (runs: readonly OpenReport[]) => median(runs.map((r) => r.rssBytes / 2 ** 20));
  const smallOpen: Result = { name: 'store.reopen_small', value: secs(small.node), unit: 's' };
  const smallFirst: Result = { name: 'store.reopen_small.first', value: (small.first.openMs + small.first.getMs) / 1000, unit: 's' };
  const raw: Result = { name: 'store.reopen_big.raw_level', value: median(big.rawMs) / 1000, unit: 's' };
  const bigOpen = secs(big.node);
  const smallRss: Result = { name: 'store.reopen_small.rss', value: rss(small.node), unit: 'MiB' };
  return [
    { name: 'store.reopen_small.ops', value: smallOps, unit: 'ops' },
    { name: 'store.reopen_big.ops', value: bigOps, unit: 'ops' },
    smallOpen,
    raw,
    against({ name: 'store.reopen_big', value: bigOpen, unit: 's', target: { on: 'value', op: '<=', value: 2 } }, raw),
    against({ name: 'store.reopen_big.vs_small', value: bigOpen, unit: 's' }, smallOpen),
    smallFirst,
    against({ name: 'store.reopen_big.first', value: (big.first.openMs + big.first.getMs) / 1000, unit: 's', target: { on: 'value', op: '<=', value: 2 } }, smallFirst),
    smallRss,
    against({ name: 'store.reopen_big.rss', value: rss(big.node), unit: 'MiB', target: { on: 'ratio', op: '<=', value: 1.25 } }, smallRss),
  ];
}

// ---------------------------------------------------------------------------------------------
// Child processes: open the dir, read one entity, report time and memory on stdout.

async function openChild(args: ChildArgs): Promise<OpenReport> {
  const t0 = performance.now();
  const node = await FieldNode.open({ dataDir: args.dir, team: BENCH_TEAM, user: 'hq-desk', hqDevice: args.hqDevice, domains: DOMAINS });
  const t1 = performance.now();
  const view = await node.get(FLEET_DOMAIN, args.entity);
  const t2 = performance.now();
  const { rss, heapUsed } = process.memoryUsage();
  await node.close();
  return { openMs: t1 - t0, getMs: t2 - t1, rssBytes: rss, heapUsedBytes: heapUsed, found: view !== null };
}

async function rawOpenChild(args: ChildArgs): Promise<{ openMs: number }> {
  const t0 = performance.now();
  const db = new Level<string, Uint8Array>(join(args.dir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'view' });
  await db.open();
  for await (const _ of db.keys({ limit: 1 })) break;
  const openMs = performance.now() - t0;
  await db.close();
  return { openMs };
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [mode, json] = process.argv.slice(2);
  const args = JSON.parse(json ?? '{}') as ChildArgs;
  if (mode === '--open-child') console.log(JSON.stringify(await openChild(args)));
  else if (mode === '--raw-open-child') console.log(JSON.stringify(await rawOpenChild(args)));
  else {
    console.error('bench/store.ts is a suite: run it with `node bench/run.ts store`');
    process.exitCode = 2;
  }
}
