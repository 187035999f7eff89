/**
 * Deterministic workloads for the benchmarks: devices with fixed keys, a realistic op, chained
 * logs, and a team history (many devices, thousands of entities, creates/updates/deletes with
 * concurrent writes, HQ receipts) for the materializer. Reusable by later suites (store, sim).
 */
import { createHash, createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { authorOp, type Author, type AuthorState, type OpDraft } from '../src/core/author.ts';
import { EMPTY_TIP } from '../src/core/chain.ts';
import { HLC_ZERO } from '../src/core/hlc.ts';
import { signerFromSeed } from '../src/core/keys.ts';
import { entityKey } from '../src/core/materialize.ts';
import type { Op, OpId, Verdict } from '../src/core/op.ts';
import { MERGE_FUNCTIONS, type ResolutionConfig } from '../src/core/strategies.ts';
import type { Fields } from '../src/core/value.ts';
import { mulberry32 as prng } from '../src/sim/prng.ts';

/** The shared seeded PRNG (mulberry32): the same seed gives the same workload everywhere. */
export { prng };

const PKCS8_ED25519_PREFIX = Uint8Array.from([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20]);

export const T0 = Date.UTC(2026, 10, 25, 8, 0, 0);
export const TEAM = 'sar-north';

/** A device writing to its own log, with a key derived from its name. */
export class BenchDevice {
  readonly author: Author;
  /** The same key as raw node:crypto KeyObjects, for baselines. */
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
  state: AuthorState = { tip: EMPTY_TIP, clock: HLC_ZERO };
  constructor(name: string, user: string, team: string = TEAM) {
    const seed = createHash('sha256').update(`fieldmesh-bench/${name}`).digest();
    this.author = { signer: signerFromSeed(seed), team, user };
    this.privateKey = createPrivateKey({ key: Buffer.concat([PKCS8_ED25519_PREFIX, seed]), format: 'der', type: 'pkcs8' });
    this.publicKey = createPublicKey(this.privateKey);
  }
  get device(): string {
    return this.author.signer.device;
  }
  write(physicalMs: number, draft: OpDraft): Op {
    const { op, state } = authorOp(this.author, this.state, physicalMs, draft);
    this.state = state;
    return op;
  }
}

/** Evidence fields as a field investigator's tablet records them: 12 fields, strings, numbers, an array. */
export function evidenceFields(i: number): Fields {
  return {
    case: `case-${1000 + (i % 97)}`,
    kind: 'photo',
    lat: 48.858372 + (i % 1000) * 1e-6,
    lon: 2.294481 - (i % 1000) * 1e-6,
    acc: 4.5,
    at: T0 + i * 1000,
    count: 3,
    floor: 0,
    tags: ['exterior', 'ballistic', 'night'],
    note: '9mm casing, partly buried',
    status: 'collected',
    unit: 'team-4',
  };
}

/** The realistic op of the encode/sign and decode/verify benchmarks: an evidence update with one base op. */
export function realisticDraft(i: number, base: readonly OpId[]): OpDraft {
  return { type: 'update', domain: 'evidence', entity: `ev-${String(i % 5000).padStart(6, '0')}`, base: [...base], fields: evidenceFields(i) };
}

/** `count` chained ops of one device (seq 1..count), each a realistic update naming the previous op as base. */
export function chainedOps(device: BenchDevice, count: number, startMs: number = T0): Op[] {
  const ops: Op[] = [];
  for (let i = 0; i < count; i++) {
    const prev = ops[ops.length - 1];
    ops.push(device.write(startMs + i * 1000, realisticDraft(i, prev === undefined ? [] : [prev.id])));
  }
  return ops;
}

export interface TeamWorkload {
  readonly ops: Op[];
  readonly config: ResolutionConfig;
  readonly devices: number;
  readonly entities: number;
  readonly counts: Readonly<Record<string, number>>;
}

export interface TeamWorkloadOptions {
  /** Total ops, receipts included. */
  readonly ops: number;
  /** Devices, HQ included. */
  readonly devices?: number;
  readonly entities?: number;
  /** Ops written between two "syncs": writes to one entity within a window by different devices are concurrent. */
  readonly syncEvery?: number;
  /** HQ writes one receipt per this many ops, rejecting ~1% of them. */
  readonly receiptEvery?: number;
  readonly seed?: number;
}

/**
 * A team's history: devices write to entities of four domains (one per strategy), each from its
 * own view of the entity heads, which is refreshed at every sync. Between syncs, devices writing
 * the same entity write concurrently. Entity popularity is skewed, so hot entities see most of
 * the concurrency. Ops are returned interleaved across devices, as they would arrive.
 */
export function teamWorkload(options: TeamWorkloadOptions): TeamWorkload {
  const { ops: total, devices: deviceCount = 10, entities: entityCount = 3000, syncEvery = 200, receiptEvery = 1000, seed = 1 } = options;
  const rnd = prng(seed);
  const hq = new BenchDevice('hq', 'hq-staff');
  const devices = [hq, ...Array.from({ length: deviceCount - 1 }, (_, i) => new BenchDevice(`field-${i}`, `investigator-${i}`))];
  const config: ResolutionConfig = {
    hqDevice: hq.device,
    domains: {
      evidence: { strategy: 'merge', merge: { tags: MERGE_FUNCTIONS.union } },
      case: 'manual',
      asset: 'server-wins',
      task: 'client-wins',
    },
  };
  const domains = ['evidence', 'evidence', 'case', 'asset', 'task'] as const;
  const entities = Array.from({ length: entityCount }, (_, i) => ({ domain: domains[i % domains.length]!, entity: `${domains[i % domains.length]!.slice(0, 2)}-${String(i).padStart(6, '0')}` }));

  /** The heads every device has seen (as of the last sync), and whether the entity exists then. */
  const published = new Map<string, { heads: OpId[]; exists: boolean }>();
  /** True heads of every entity (all ops written so far). */
  const heads = new Map<string, Set<OpId>>();
  const exists = new Map<string, boolean>();
  /** Entities written since the last sync. */
  const touched = new Set<string>();
  /** Per device: the entities it wrote since the last sync, with its own heads. */
  const local = devices.map(() => new Map<string, { heads: OpId[]; exists: boolean }>());
  const ops: Op[] = [];
  const counts: Record<string, number> = { create: 0, update: 0, delete: 0, receipt: 0 };
  let sinceReceipt: OpId[] = [];

  for (let i = 0; ops.length < total; i++) {
    const now = T0 + i * 250;
    if (receiptEvery > 0 && sinceReceipt.length >= receiptEvery) {
      const verdicts: Verdict[] = sinceReceipt.map((id) => (rnd() < 0.01 ? { op: id, accepted: false, reason: 'OUT_OF_SCOPE', detail: 'not part of an open case' } : { op: id, accepted: true, reason: '', detail: '' }));
      ops.push(hq.write(now, { type: 'receipt', verdicts }));
      counts.receipt!++;
      sinceReceipt = [];
      continue;
    }
    if (i % syncEvery === 0) {
      for (const key of touched) published.set(key, { heads: [...heads.get(key)!].sort(), exists: exists.get(key)! });
      touched.clear();
      for (const l of local) l.clear();
    }
    const d = Math.floor(rnd() * devices.length);
    const device = devices[d]!;
    // Skewed popularity: squaring a uniform number favours low indexes.
    const target = entities[Math.floor(rnd() * rnd() * entities.length)]!;
    const key = entityKey(target.domain, target.entity);
    const seen = local[d]!.get(key) ?? published.get(key);
    const r = rnd();
    let draft: OpDraft;
    if (seen === undefined || !seen.exists) {
      draft = { type: 'create', domain: target.domain, entity: target.entity, base: seen?.heads ?? [], fields: initialFields(target.domain, i) };
    } else if (r < 0.05) {
      draft = { type: 'delete', domain: target.domain, entity: target.entity, base: seen.heads, fields: {} };
    } else {
      draft = { type: 'update', domain: target.domain, entity: target.entity, base: seen.heads, fields: updateFields(target.domain, i, rnd) };
    }
    const op = device.write(now + d * 7, draft);
    ops.push(op);
    counts[draft.type]!++;
    sinceReceipt.push(op.id);
    const own = draft.type !== 'delete';
    local[d]!.set(key, { heads: [op.id], exists: own });
    const set = heads.get(key) ?? new Set<OpId>();
    for (const b of draft.base) set.delete(b);
    set.add(op.id);
    heads.set(key, set);
    touched.add(key);
    exists.set(key, own || (exists.get(key) === true && set.size > 1));
  }
  return { ops, config, devices: devices.length, entities: heads.size, counts };
}

function initialFields(domain: string, i: number): Fields {
  switch (domain) {
    case 'evidence':
      return evidenceFields(i);
    case 'case':
      return { title: `Incident ${i}`, status: 'open', priority: 1 + (i % 3), lead: `investigator-${i % 9}`, opened: T0 + i };
    case 'asset':
      return { name: `radio-${i % 400}`, holder: `investigator-${i % 9}`, battery: 100, location: 'base' };
    default:
      return { title: `Sweep sector ${i % 40}`, assignee: `investigator-${i % 9}`, done: false, progress: 0 };
  }
}

function updateFields(domain: string, i: number, rnd: () => number): Fields {
  switch (domain) {
    case 'evidence':
      return rnd() < 0.5 ? { status: ['collected', 'bagged', 'sent', 'logged'][i % 4]!, at: T0 + i * 1000 } : { tags: [['exterior'], ['night', 'wet'], ['ballistic']][i % 3]!, note: `seen again at ${i}` };
    case 'case':
      return rnd() < 0.5 ? { status: ['open', 'active', 'escalated', 'closed'][i % 4]! } : { priority: 1 + (i % 3), lead: `investigator-${i % 9}` };
    case 'asset':
      return { holder: `investigator-${i % 9}`, battery: 100 - (i % 100), location: ['base', 'sector-a', 'sector-b'][i % 3]! };
    default:
      return rnd() < 0.3 ? { done: true, progress: 100 } : { progress: i % 100 };
  }
}
