/**
 * Shared by the store and net suites: a team of devices with fixed keys and HQ-issued
 * certificates, a streaming generator of their signed ops (run in a worker thread so that signing
 * overlaps the node's ingest), data dirs enrolled without an HQ data dir, raw LevelDB baselines
 * (synced single puts, synced batches) and small helpers (temp dirs, percentiles, child processes).
 *
 * When this module is a worker's entry (workerData.fieldmeshFleet set), it runs the generator and
 * answers `next` messages with chunks of ops; imported normally it only exports.
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { generateKeyPairFromSeed, privateKeyToProtobuf } from '@libp2p/crypto/keys';
import { Level } from 'level';
import { authorOp, type AuthorState } from '../src/core/author.ts';
import { issueCertificate, type Certificate, type Role } from '../src/core/cert.ts';
import { EMPTY_TIP } from '../src/core/chain.ts';
import { HLC_ZERO } from '../src/core/hlc.ts';
import { signerFromSeed, type DeviceId, type DeviceSigner } from '../src/core/keys.ts';
import type { OpId } from '../src/core/op.ts';
import type { Fields } from '../src/core/value.ts';
import { DEVICE_KEY_FILE, loadOrCreateDeviceKey } from '../src/node/device-key.ts';
import { saveCertificate } from '../src/node/enroll.ts';

export const BENCH_TEAM = 'sar-north';
const YEAR_MS = 365 * 24 * 3600 * 1000;

/** The key seed of the device named `name` (see namedSigner). */
export function namedSeed(name: string): Uint8Array {
  return createHash('sha256').update(`fieldmesh-bench/${name}`).digest();
}

/** A signer whose key is derived from a name: the same name gives the same device everywhere. */
export function namedSigner(name: string): DeviceSigner {
  return signerFromSeed(namedSeed(name));
}

/**
 * Creates `dataDir` holding the named device's key as its device.key, so that a FieldNode opened
 * there is namedSigner(name)'s device and can take in ops signed in advance with that key.
 */
export async function namedDeviceDir(dataDir: string, name: string): Promise<DeviceId> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const privateKey = await generateKeyPairFromSeed('Ed25519', namedSeed(name));
  await writeFile(join(dataDir, DEVICE_KEY_FILE), privateKeyToProtobuf(privateKey), { mode: 0o600 });
  return namedSigner(name).device;
}

/** A certificate by `hq` for `device`, valid from a day ago (real clock) for a year. */
export function certify(hq: DeviceSigner, device: DeviceId, user: string, role: Role = 'field', team: string = BENCH_TEAM): Certificate {
  const issuedMs = Date.now() - 24 * 3600 * 1000;
  return issueCertificate({ team, device, user, role, issuedMs, expiresMs: issuedMs + YEAR_MS }, hq);
}

/**
 * Enrolls a data dir by hand (as `enroll` does, but with an HQ key held in memory): creates the
 * device key if missing and writes the certificate beside it. Returns the device id.
 */
export async function enrollDir(dataDir: string, hq: DeviceSigner, user: string, role: Role = 'field', team: string = BENCH_TEAM): Promise<DeviceId> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const { key } = await loadOrCreateDeviceKey(dataDir);
  await saveCertificate(dataDir, certify(hq, key.signer.device, user, role, team));
  return key.signer.device;
}

/** A fresh directory under the OS temp dir. */
export function tempRoot(name: string): Promise<string> {
  return mkdtemp(join(tmpdir(), `fieldmesh-bench-${name}-`));
}

export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true, maxRetries: 3 });
}

/** The p-th percentile (0..100) by nearest rank; NaN for no samples. */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

export const median = (xs: readonly number[]): number => percentile(xs, 50);

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Runs `node <file> ...args` and parses the last line of its stdout as JSON. */
export function runChild<T>(file: string, args: readonly string[], timeoutMs: number): Promise<T> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [file, ...args], { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err !== null) {
        reject(new Error(`child ${file} ${args[0] ?? ''} failed: ${err.message}\n${stderr}`));
        return;
      }
      const lines = stdout.trim().split('\n');
      try {
        resolve(JSON.parse(lines[lines.length - 1]!) as T);
      } catch {
        reject(new Error(`child ${file} printed no JSON result: ${stdout.slice(-500)}\n${stderr}`));
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Raw LevelDB baselines: a fresh database in `dir`, values of `valueBytes` random bytes.

export interface LevelPutResult {
  readonly rate: number;
  readonly latenciesMs: number[];
}

/** Random values, so that LevelDB's compression does not shrink them. */
function values(count: number, bytes: number): Uint8Array[] {
  return Array.from({ length: count }, () => new Uint8Array(randomBytes(bytes)));
}

/** A fresh LevelDB database for baselines; close it with `close()`. */
export async function openRawLevel(dir: string): Promise<Level<string, Uint8Array>> {
  const db = new Level<string, Uint8Array>(dir, { keyEncoding: 'utf8', valueEncoding: 'view' });
  await db.open();
  return db;
}

/** Sequential synced single puts for about `ms` (at least `minPuts`): rate and every latency. */
export async function levelSyncedPuts(db: Level<string, Uint8Array>, ms: number, valueBytes = 300, minPuts = 20, prefix = 'p'): Promise<LevelPutResult> {
  const pool = values(64, valueBytes);
  const latenciesMs: number[] = [];
  const start = performance.now();
  let i = 0;
  while (i < minPuts || performance.now() - start < ms) {
    const t = performance.now();
    await db.put(`${prefix}${String(i).padStart(10, '0')}`, pool[i % pool.length]!, { sync: true });
    latenciesMs.push(performance.now() - t);
    i++;
  }
  return { rate: (i * 1000) / (performance.now() - start), latenciesMs };
}

/** Sequential synced batches of `batchSize` puts for about `ms` (at least 2 batches): rows per second. */
export async function levelSyncedBatches(db: Level<string, Uint8Array>, ms: number, batchSize = 1000, valueBytes = 300, prefix = 'b'): Promise<number> {
  const pool = values(1024, valueBytes);
  const start = performance.now();
  let rows = 0;
  let batches = 0;
  while (batches < 2 || performance.now() - start < ms) {
    const ops = [];
    for (let j = 0; j < batchSize; j++) ops.push({ type: 'put' as const, key: `${prefix}${String(rows + j).padStart(12, '0')}`, value: pool[(rows + j) % pool.length]! });
    await db.batch(ops, { sync: true });
    rows += batchSize;
    batches++;
  }
  return (rows * 1000) / (performance.now() - start);
}

// ---------------------------------------------------------------------------------------------
// The fleet: field devices writing evidence records, each to its own entities.

export interface FleetSpec {
  /** Name prefix of the devices' keys (field devices are `${name}-0` ...). */
  readonly name: string;
  readonly devices: number;
  /** Entities each device writes; its n-th op writes entity n mod this (create first, then updates). */
  readonly entitiesPerDevice: number;
  /** Physical time of the first op; ops of one device are `stepMs` apart. */
  readonly startMs: number;
  readonly stepMs: number;
  readonly team?: string;
}

export const FLEET_DOMAIN = 'evidence';

/** An evidence record as a field tablet writes it (12 fields, an op of about 330 B). */
export function evidence(i: number): Fields {
  return {
    case: `case-${1000 + (i % 97)}`,
    kind: 'photo',
    lat: 48.858372 + (i % 1000) * 1e-6,
    lon: 2.294481 - (i % 1000) * 1e-6,
    acc: 4.5,
    at: 1_764_000_000_000 + i * 1000,
    count: 3,
    floor: i % 4,
    tags: ['exterior', 'ballistic', 'night'],
    note: '9mm casing, partly buried',
    status: ['collected', 'bagged', 'sent', 'logged'][i % 4]!,
    unit: 'team-4',
  };
}

export function fleetSigners(spec: FleetSpec): DeviceSigner[] {
  return Array.from({ length: spec.devices }, (_, d) => namedSigner(`${spec.name}-${d}`));
}

/** Per device, the ops it writes next: one device's run of `count` chained ops per call. */
export class FleetWriter {
  private readonly spec: FleetSpec;
  private readonly signers: DeviceSigner[];
  private readonly states: AuthorState[];
  private readonly heads: Map<number, OpId>[];
  private readonly written: number[];

  constructor(spec: FleetSpec) {
    this.spec = spec;
    this.signers = fleetSigners(spec);
    this.states = this.signers.map(() => ({ tip: EMPTY_TIP, clock: HLC_ZERO }));
    this.heads = this.signers.map(() => new Map());
    this.written = this.signers.map(() => 0);
  }

  run(d: number, count: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    const signer = this.signers[d]!;
    const author = { signer, team: this.spec.team ?? BENCH_TEAM, user: `investigator-${d}` };
    for (let k = 0; k < count; k++) {
      const n = this.written[d]!++;
      const e = n % this.spec.entitiesPerDevice;
      const head = this.heads[d]!.get(e);
      const entity = `ev-${d}-${String(e).padStart(6, '0')}`;
      const draft = head === undefined
        ? { type: 'create' as const, domain: FLEET_DOMAIN, entity, base: [], fields: evidence(n) }
        : { type: 'update' as const, domain: FLEET_DOMAIN, entity, base: [head], fields: { status: ['collected', 'bagged', 'sent', 'logged'][n % 4]!, at: 1_764_000_000_000 + n * 1000, note: `checked again, round ${n}`, tags: ['exterior', 'night'] } };
      const { op, state } = authorOp(author, this.states[d]!, this.spec.startMs + n * this.spec.stepMs, draft);
      this.states[d] = state;
      this.heads[d]!.set(e, op.id);
      out.push(op.bytes);
    }
    return out;
  }
}

/** A chunk: for every device, one run of chained ops (packed into one transferable buffer). */
export interface FleetChunk {
  readonly runs: { device: number; ops: Uint8Array[] }[];
  readonly ops: number;
  readonly bytes: number;
}

interface PackedChunk {
  readonly buffer: ArrayBuffer;
  /** Per run: device index, op count, then each op's length. */
  readonly layout: number[];
}

function pack(runs: { device: number; ops: Uint8Array[] }[]): PackedChunk {
  let total = 0;
  for (const r of runs) for (const op of r.ops) total += op.length;
  const buffer = new ArrayBuffer(total);
  const view = new Uint8Array(buffer);
  const layout: number[] = [];
  let at = 0;
  for (const r of runs) {
    layout.push(r.device, r.ops.length);
    for (const op of r.ops) {
      view.set(op, at);
      at += op.length;
      layout.push(op.length);
    }
  }
  return { buffer, layout };
}

function unpack(packed: PackedChunk): FleetChunk {
  const view = new Uint8Array(packed.buffer);
  const runs: { device: number; ops: Uint8Array[] }[] = [];
  let at = 0;
  let i = 0;
  let ops = 0;
  while (i < packed.layout.length) {
    const device = packed.layout[i++]!;
    const count = packed.layout[i++]!;
    const run: Uint8Array[] = [];
    for (let k = 0; k < count; k++) {
      const len = packed.layout[i++]!;
      run.push(view.subarray(at, at + len));
      at += len;
    }
    ops += count;
    runs.push({ device, ops: run });
  }
  return { runs, ops, bytes: view.length };
}

/**
 * Generates a fleet's ops in a worker thread, `runOps` per device per chunk, keeping up to
 * `ahead` chunks generated ahead of the one being taken. Call `close()` when done.
 */
export class FleetGenerator {
  private readonly worker: Worker;
  private readonly ready: FleetChunk[] = [];
  private readonly waiting: { resolve: (c: FleetChunk) => void; reject: (e: Error) => void }[] = [];
  private failure: Error | null = null;
  private requested = 0;
  private readonly chunks: number;

  /** `chunks`: how many chunks will be taken in all (the worker generates no more). */
  constructor(spec: FleetSpec, runOps: number, chunks: number, ahead = 2) {
    this.chunks = chunks;
    this.worker = new Worker(new URL(import.meta.url), { workerData: { fieldmeshFleet: { spec, runOps } } });
    this.worker.on('message', (packed: PackedChunk) => {
      const chunk = unpack(packed);
      const waiter = this.waiting.shift();
      if (waiter !== undefined) waiter.resolve(chunk);
      else this.ready.push(chunk);
    });
    this.worker.on('error', (err) => {
      this.failure = err;
      for (const w of this.waiting.splice(0)) w.reject(err);
    });
    for (let i = 0; i < ahead; i++) this.request();
  }

  private request(): void {
    if (this.requested >= this.chunks) return;
    this.requested++;
    this.worker.postMessage('next');
  }

  /** The next chunk (and asks the worker for one more). */
  async next(): Promise<FleetChunk> {
    if (this.failure !== null) throw this.failure;
    this.request();
    const ready = this.ready.shift();
    if (ready !== undefined) return ready;
    return new Promise<FleetChunk>((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}

if (!isMainThread && (workerData as { fieldmeshFleet?: unknown } | null)?.fieldmeshFleet !== undefined) {
  const { spec, runOps } = (workerData as { fieldmeshFleet: { spec: FleetSpec; runOps: number } }).fieldmeshFleet;
  const writer = new FleetWriter(spec);
  parentPort!.on('message', () => {
    const runs = Array.from({ length: spec.devices }, (_, d) => ({ device: d, ops: writer.run(d, runOps) }));
    const packed = pack(runs);
    parentPort!.postMessage(packed, [packed.buffer]);
  });
}
