/**
 * Shared helpers for the store and FieldNode tests: temp dirs removed after each test, nodes
 * closed after each test, devices that author signed ops outside any node (through the real
 * core/author.ts), and typed-error assertions. Nothing here mocks the store: every test runs a
 * real LevelDB in a temp dir.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect } from 'vitest';
import { authorOp, type Author, type AuthorState, type OpDraft } from '../../src/core/author.ts';
import { EMPTY_TIP } from '../../src/core/chain.ts';
import { FieldmeshError } from '../../src/core/errors.ts';
import { HLC_ZERO } from '../../src/core/hlc.ts';
import { signerFromSeed, type DeviceId, type DeviceSigner } from '../../src/core/keys.ts';
import type { Op, OpId, ReceiptBody, Verdict } from '../../src/core/op.ts';
import type { DomainPolicy, Strategy } from '../../src/core/strategies.ts';
import type { Fields } from '../../src/core/value.ts';
import { issueCertificate } from '../../src/core/cert.ts';
import { FieldNode, type FieldNodeOptions } from '../../src/node/field-node.ts';
export { rng, pick } from '../core/helpers.ts';

/** 2026-01-01T00:00:00Z. */
export const T0 = Date.UTC(2026, 0, 1);

export const TEAM = 'team-t';

export const DOMAINS: Readonly<Record<string, DomainPolicy | Strategy>> = {
  case: 'manual',
  evidence: 'merge',
  asset: 'server-wins',
  note: 'client-wins',
};

export const seedOf = (name: string): Uint8Array => new Uint8Array(createHash('sha256').update(`fieldmesh-store-test/${name}`).digest());

export const signerOf = (name: string): DeviceSigner => signerFromSeed(seedOf(name));

/** The team's HQ for node tests: a key outside any data dir, authoring receipts with TestAuthor. */
export const HQ = signerOf('hq');

/**
 * Enrollment: HQ certifies every device the tests use (nodes and TestAuthors of the test team), and
 * `introduce` hands a node the certificates of every device certified so far, so it accepts their
 * ops (a node refuses ops of devices it holds no certificate for: UNENROLLED).
 */
const certificates = new Map<DeviceId, Uint8Array>();

/** HQ's certificate for `device` (issued once per device, valid from a day ago for a year). */
export function certFor(device: DeviceId, user = 'user', options: { team?: string; role?: 'field' | 'gateway' } = {}): Uint8Array {
  const known = certificates.get(device);
  if (known !== undefined && options.team === undefined) return known;
  const issuedMs = Date.now() - 24 * 3600 * 1000;
  const cert = issueCertificate({ team: options.team ?? TEAM, device, user, role: options.role ?? 'field', issuedMs, expiresMs: issuedMs + 366 * 24 * 3600 * 1000 }, HQ);
  if (options.team === undefined) certificates.set(device, cert.bytes);
  return cert.bytes;
}

/** Gives each node the certificates of every device certified so far. */
export async function introduce(...nodes: FieldNode[]): Promise<void> {
  for (const node of nodes) if (node.team === TEAM && node.hqDevice === HQ.device) await node.addCertificates([...certificates.values()]);
}

/**
 * Temp dirs under os.tmpdir() and nodes that are removed/closed after each test, also when the
 * test fails. Call once at the top level of a test file (it registers an afterEach hook).
 */
export function useTemp() {
  const dirs: string[] = [];
  const nodes: FieldNode[] = [];
  afterEach(async () => {
    for (const node of nodes.splice(0).reverse()) await node.close().catch(() => undefined);
    for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
  });
  return {
    async dir(prefix = 'fm-test-'): Promise<string> {
      const dir = await mkdtemp(join(tmpdir(), prefix));
      dirs.push(dir);
      return dir;
    },
    /**
     * Opens a FieldNode (closed after the test) with the test team, HQ and domains unless
     * overridden, certifies its device and introduces it to every device certified so far.
     */
    async open(dataDir: string, options: Partial<FieldNodeOptions> = {}): Promise<FieldNode> {
      const node = await FieldNode.open({ dataDir, team: TEAM, user: 'alice', hqDevice: HQ.device, domains: DOMAINS, ...options });
      nodes.push(node);
      if (node.team === TEAM && node.hqDevice === HQ.device) {
        certFor(node.device, node.user);
        await introduce(node);
      }
      return node;
    },
    track(node: FieldNode): FieldNode {
      nodes.push(node);
      return node;
    },
  };
}

/** A device writing its own log outside any node, through core/author.ts, like a node would. */
export class TestAuthor {
  readonly author: Author;
  state: AuthorState = { tip: EMPTY_TIP, clock: HLC_ZERO };
  readonly written: Op[] = [];
  private physical: number;

  constructor(signer: DeviceSigner, options: { team?: string; user?: string; startMs?: number; enrolled?: boolean } = {}) {
    this.author = { signer, team: options.team ?? TEAM, user: options.user ?? 'user' };
    this.physical = options.startMs ?? T0;
    if (this.author.team === TEAM && signer.device !== HQ.device && options.enrolled !== false) certFor(signer.device, this.author.user);
  }

  get device(): DeviceId {
    return this.author.signer.device;
  }

  write(draft: OpDraft, physicalMs?: number): Op {
    this.physical = physicalMs ?? this.physical + 1;
    const { op, state } = authorOp(this.author, this.state, this.physical, draft);
    this.state = state;
    this.written.push(op);
    return op;
  }

  create(domain: string, entity: string, fields: Fields, base: Iterable<OpId> = []): Op {
    return this.write({ type: 'create', domain, entity, base: [...new Set(base)].sort(), fields });
  }

  update(domain: string, entity: string, fields: Fields, base: Iterable<OpId>): Op {
    return this.write({ type: 'update', domain, entity, base: [...new Set(base)].sort(), fields });
  }

  remove(domain: string, entity: string, base: Iterable<OpId>): Op {
    return this.write({ type: 'delete', domain, entity, base: [...new Set(base)].sort(), fields: {} });
  }

  receipt(verdicts: readonly Verdict[]): Op<ReceiptBody> {
    return this.write({ type: 'receipt', verdicts }) as Op<ReceiptBody>;
  }
}

export const accept = (id: OpId): Verdict => ({ op: id, accepted: true, reason: '', detail: '' });
export const reject = (id: OpId, reason: string, detail = 'refused by HQ'): Verdict => ({ op: id, accepted: false, reason, detail });

/** Awaits `promise`, which must reject with an instance of `cls` carrying `code`; returns the error. */
export async function expectRejects<E extends FieldmeshError>(promise: Promise<unknown>, cls: abstract new (...args: never[]) => E, code: string | readonly string[]): Promise<E> {
  let err: unknown;
  try {
    await promise;
  } catch (e) {
    err = e;
  }
  if (err === undefined) throw new Error(`expected a ${cls.name} (${String(code)}), nothing was thrown`);
  expect(err, String(err)).toBeInstanceOf(cls);
  const codes = typeof code === 'string' ? [code] : code;
  expect(codes, `${(err as E).code}: ${(err as Error).message}`).toContain((err as E).code);
  return err as E;
}



/** Everything a user can observe of a node, in a form toEqual compares exactly. */
export async function snapshot(node: FieldNode, domains: readonly string[] = Object.keys(DOMAINS), entities: readonly [string, string][] = []) {
  const devices = Object.keys(node.versionVector());
  const queues: Record<string, unknown> = {};
  const counts: Record<string, unknown> = { all: await node.counts() };
  for (const d of devices) {
    queues[d] = await node.queue(d);
    counts[d] = await node.counts(d);
  }
  const query: Record<string, unknown> = {};
  for (const d of domains) query[d] = await node.query(d);
  const gets: unknown[] = [];
  for (const [d, e] of entities) gets.push(await node.get(d, e));
  return {
    gets,
    query,
    ops: await node.ops({ limit: 1_000_000 }),
    queues,
    counts,
    devices: await node.devices(),
    conflicts: await node.conflicts(),
    stateHash: await node.stateHash(),
    versionVector: node.versionVector(),
  };
}

/** The signed bytes of a device's log as a node holds it, in seq order (default: the node's own). */
export async function logOf(node: FieldNode, device: DeviceId = node.device, fromSeq = 1): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for (const summary of await node.ops({ device, limit: 1_000_000 })) {
    if (summary.seq < fromSeq) continue;
    const op = await node.op(summary.id);
    if (op === undefined) throw new Error(`op ${summary.id} listed but not readable`);
    out.push(op.bytes);
  }
  return out;
}
