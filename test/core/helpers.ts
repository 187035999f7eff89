/**
 * Shared test helpers for the core: deterministic devices from names, an op-writing helper built
 * on src/core/author.ts, byte surgery (bit flips, re-signed bodies), and typed-error assertions.
 * Nothing here mocks the core: every op is really encoded, signed and hashed.
 */
import { createHash } from 'node:crypto';
import { decode, encode } from 'cborg';
import { expect } from 'vitest';
import { authorOp, type Author, type AuthorState, type OpDraft } from '../../src/core/author.ts';
import { EMPTY_TIP } from '../../src/core/chain.ts';
import { FieldmeshError } from '../../src/core/errors.ts';
import { HLC_ZERO } from '../../src/core/hlc.ts';
import { signerFromSeed, type DeviceId, type DeviceSigner } from '../../src/core/keys.ts';
import { stateHash, type Materialized } from '../../src/core/materialize.ts';
import { isEntityOp, signingBytes, type EntityOp, type Op, type OpId, type ReceiptBody, type RevokeBody, type Verdict } from '../../src/core/op.ts';
import type { Fields } from '../../src/core/value.ts';
import type { EntityView } from '../../src/core/view.ts';

/**
 * fast-check runs for a property: `n` by default, scaled by FIELDMESH_FC_SCALE for a deeper search
 * (e.g. FIELDMESH_FC_SCALE=50 npx vitest run test/core).
 */
export const runs = (n: number): number => Math.max(1, Math.round(n * Number(process.env.FIELDMESH_FC_SCALE ?? 1)));

/** 2026-01-01T00:00:00Z: a realistic physical time to start clocks at. */
export const T0 = Date.UTC(2026, 0, 1);

export const seedOf = (name: string): Uint8Array => new Uint8Array(createHash('sha256').update(`fieldmesh-test/${name}`).digest());

const signersByName = new Map<string, DeviceSigner>();
const signersByDevice = new Map<DeviceId, DeviceSigner>();

/** The signer of the device named `name` (same name, same key, in every run). */
export function signerOf(name: string): DeviceSigner {
  let signer = signersByName.get(name);
  if (signer === undefined) {
    signer = signerFromSeed(seedOf(name));
    signersByName.set(name, signer);
    signersByDevice.set(signer.device, signer);
  }
  return signer;
}

/** The signer of a device created through signerOf. */
export function signerOfDevice(device: DeviceId): DeviceSigner {
  const signer = signersByDevice.get(device);
  if (signer === undefined) throw new Error(`no test signer for ${device}`);
  return signer;
}

export const sortedIds = (ids: Iterable<OpId>): OpId[] => [...new Set(ids)].sort();

export interface ResolveDraft {
  readonly conflict: OpId;
  readonly exists: boolean;
  readonly fields: Fields;
  readonly base: Iterable<OpId>;
}

/** A device writing to its own log through authorOp, keeping its tip and HLC like a node would. */
export class TestDevice {
  readonly name: string;
  readonly author: Author;
  state: AuthorState = { tip: EMPTY_TIP, clock: HLC_ZERO };
  /** Every op this device wrote, in the order written (forks included). */
  readonly written: Op[] = [];

  constructor(name: string, options: { team?: string; user?: string } = {}) {
    this.name = name;
    this.author = { signer: signerOf(name), team: options.team ?? 'team-1', user: options.user ?? `user-${name}` };
  }

  get id(): DeviceId {
    return this.author.signer.device;
  }

  write(physicalMs: number, draft: OpDraft): Op {
    const { op, state } = authorOp(this.author, this.state, physicalMs, draft);
    this.state = state;
    this.written.push(op);
    return op;
  }

  private entityOp(physicalMs: number, draft: OpDraft): EntityOp {
    const op = this.write(physicalMs, draft);
    if (!isEntityOp(op)) throw new Error('expected an entity op');
    return op;
  }

  create(physicalMs: number, domain: string, entity: string, fields: Fields, base: Iterable<OpId> = []): EntityOp {
    return this.entityOp(physicalMs, { type: 'create', domain, entity, base: sortedIds(base), fields });
  }

  update(physicalMs: number, domain: string, entity: string, fields: Fields, base: Iterable<OpId>): EntityOp {
    return this.entityOp(physicalMs, { type: 'update', domain, entity, base: sortedIds(base), fields });
  }

  remove(physicalMs: number, domain: string, entity: string, base: Iterable<OpId>): EntityOp {
    return this.entityOp(physicalMs, { type: 'delete', domain, entity, base: sortedIds(base), fields: {} });
  }

  resolve(physicalMs: number, domain: string, entity: string, draft: ResolveDraft): EntityOp {
    return this.entityOp(physicalMs, { type: 'resolve', domain, entity, base: sortedIds(draft.base), conflict: draft.conflict, exists: draft.exists, fields: draft.fields });
  }

  receipt(physicalMs: number, verdicts: readonly Verdict[]): Op<ReceiptBody> {
    return this.write(physicalMs, { type: 'receipt', verdicts }) as Op<ReceiptBody>;
  }

  revoke(physicalMs: number, target: DeviceId, afterSeq: number, reason = 'lost device'): Op<RevokeBody> {
    return this.write(physicalMs, { type: 'revoke', target, afterSeq, reason }) as Op<RevokeBody>;
  }
}

export const accept = (op: Op): Verdict => ({ op: op.id, accepted: true, reason: '', detail: '' });
export const reject = (op: Op, reason: string, detail = ''): Verdict => ({ op: op.id, accepted: false, reason, detail });

/** Calls `fn` and returns what it threw; fails the test when it returns normally. */
export function thrownBy(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected an error, none was thrown');
}

/** Asserts `fn` throws an instance of `cls` with `code` (and, if given, details containing `details`). */
export function expectCoreError<E extends FieldmeshError>(
  fn: () => unknown,
  cls: abstract new (...args: never[]) => E,
  code: string,
  details?: Record<string, unknown>,
): E {
  const err = thrownBy(fn);
  expect(err).toBeInstanceOf(cls);
  expect((err as E).code).toBe(code);
  if (details !== undefined) expect((err as E).details).toMatchObject(details);
  return err as E;
}

/** A copy of `bytes` with bit `bit` (0 = most significant bit of byte 0) inverted. */
export function flipBit(bytes: Uint8Array, bit: number): Uint8Array {
  const out = Uint8Array.from(bytes);
  out[bit >> 3]! ^= 0x80 >> (bit & 7);
  return out;
}

/** The envelope's parts: body bytes and signature. */
export function envelopeParts(bytes: Uint8Array): { body: Uint8Array; sig: Uint8Array } {
  const [body, sig] = decode(bytes) as [Uint8Array, Uint8Array];
  return { body, sig };
}

/** An envelope of arbitrary body bytes, signed by `signer` as an op body would be. */
export function signEnvelope(body: Uint8Array, signer: DeviceSigner): Uint8Array {
  return new Uint8Array(encode([body, new Uint8Array(signer.sign(signingBytes(body)))]));
}

/**
 * Decodes an op's body into its raw CBOR array (see docs/protocol.md: [v, type, team, device,
 * seq, prev, wallMs, counter, user, ...per type]), lets `edit` change it in place, re-encodes it
 * canonically and signs it again with `signer` (by default the op's own device): a well-signed op
 * whose body breaks a rule, so only the decoder's checks can refuse it.
 */
export function resignedWith(op: Op, edit: (raw: unknown[]) => void, signer: DeviceSigner = signerOfDevice(op.device)): Uint8Array {
  const raw = decode(envelopeParts(op.bytes).body) as unknown[];
  edit(raw);
  return signEnvelope(encode(raw), signer);
}

/** The simulator's seeded PRNG (mulberry32), so fast-check only has to shrink one integer. */
export { mulberry32 as rng } from '../../src/sim/prng.ts';

export const pick = <T>(rand: () => number, list: readonly T[]): T => list[Math.floor(rand() * list.length)]!;

export function shuffled<T>(list: readonly T[], rand: () => number): T[] {
  const out = [...list];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/** A random order of `ops` in which every op comes after the ops of its base that are in the list. */
export function randomCausalOrder(ops: readonly EntityOp[], rand: () => number): EntityOp[] {
  const present = new Set(ops.map((o) => o.id));
  const done = new Set<OpId>();
  const left = [...ops];
  const out: EntityOp[] = [];
  while (left.length > 0) {
    const ready = left.filter((o) => o.base.every((b) => !present.has(b) || done.has(b)));
    if (ready.length === 0) throw new Error('base cycle');
    const next = pick(rand, ready);
    left.splice(left.indexOf(next), 1);
    done.add(next.id);
    out.push(next);
  }
  return out;
}

export const viewsOf = (m: Materialized): EntityView[] => [...m.entities.values()].map((e) => e.view);
export const hashOf = (m: Materialized): string => stateHash(viewsOf(m));

/** Everything a user could observe of a materialization, in a form toEqual compares exactly. */
export function observable(m: Materialized) {
  return {
    hash: hashOf(m),
    statuses: [...m.statuses.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
    waiting: m.waiting,
    views: viewsOf(m),
  };
}

/** The view of one entity; fails when the entity has no ops in the set. */
export function viewIn(m: Materialized, domain: string, entity: string): EntityView {
  const found = m.entities.get(`${domain}/${entity}`);
  if (found === undefined) throw new Error(`no entity ${domain}/${entity}`);
  return found.view;
}

export const statusIn = (m: Materialized, op: Op) => m.statuses.get(op.id);
