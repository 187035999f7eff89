import { createHash } from 'node:crypto';
import { decode, encode } from 'cborg';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FieldmeshError, InvalidInputError, RuleViolationError } from '../../src/core/errors.ts';
import { verifySignature, withContext } from '../../src/core/keys.ts';
import { LIMITS } from '../../src/core/limits.ts';
import { checkBody, decodeOp, isEntityOp, opIdOf, opIdToBytes, parseOp, signingBytes, signOp, type Op, type OpBody } from '../../src/core/op.ts';
import { accept, envelopeParts, expectCoreError, flipBit, reject, resignedWith, runs, signEnvelope, signerOf, T0, TestDevice, thrownBy } from './helpers.ts';

const alice = new TestDevice('op-alice', { user: 'alice' });
const bob = new TestDevice('op-bob');
const hq = new TestDevice('op-hq', { user: 'hq-staff' });

const created = alice.create(T0, 'evidence', 'ev-1', { kind: 'photo', tags: ['exterior'], blob: Uint8Array.of(1, 2, 3), nested: { x: [1.5, null, true, -7] } });
const updated = alice.update(T0 + 1, 'evidence', 'ev-1', { kind: 'video' }, [created.id]);
const deleted = alice.remove(T0 + 2, 'evidence', 'ev-1', [updated.id]);
const resolved = alice.resolve(T0 + 3, 'case', 'case-7', { conflict: 'ab'.repeat(32), exists: true, fields: { status: 'open' }, base: [deleted.id] });
const receipt = hq.receipt(T0, [accept(created), reject(updated, 'INVALID', 'kind may not change')]);
const revoke = hq.revoke(T0 + 1, alice.id, 2, 'tablet stolen');
const samples: [string, Op][] = [
  ['create', created],
  ['update', updated],
  ['delete', deleted],
  ['resolve', resolved],
  ['receipt', receipt],
  ['revoke', revoke],
];

/** A valid seq-1 create body of alice's, to break one rule at a time. */
const validBody = {
  v: 1,
  team: 'team-1',
  device: alice.id,
  seq: 1,
  prev: null,
  hlc: { wallMs: T0, counter: 0 },
  user: 'alice',
  type: 'create',
  domain: 'evidence',
  entity: 'ev-1',
  base: [],
  fields: { a: 1 },
} as const;
const body = (override: Record<string, unknown>): OpBody => ({ ...validBody, ...override }) as unknown as OpBody;
const ID_A = '0a'.repeat(32);
const ID_B = '0b'.repeat(32);

/** Every way a byte change may be refused: a typed decode error, or a signature that no longer verifies. */
function expectRefused(fn: () => unknown): void {
  const err = thrownBy(fn);
  expect(err).toBeInstanceOf(FieldmeshError);
  if (!(err instanceof InvalidInputError)) {
    expect(err).toBeInstanceOf(RuleViolationError);
    expect((err as RuleViolationError).code).toBe('BAD_SIGNATURE');
  }
}

describe('signOp and decodeOp', () => {
  it.each(samples)('round-trip a %s op', (_, op) => {
    const decoded = decodeOp(op.bytes);
    expect(decoded).toEqual(op);
    expect(decoded.id).toBe(createHash('sha256').update(op.bytes).digest('hex'));
    expect(opIdOf(op.bytes)).toBe(op.id);
  });

  it('write an envelope [body, sig] whose signature covers the context-prefixed body', () => {
    const { body: bodyBytes, sig } = envelopeParts(created.bytes);
    expect(sig.length).toBe(64);
    const message = withContext(new TextEncoder().encode('fieldmesh/op/1\n'), bodyBytes);
    expect(signingBytes(bodyBytes)).toEqual(message);
    expect(verifySignature(alice.id, message, sig)).toBe(true);
    // Without the context the same signature is worthless.
    expect(verifySignature(alice.id, bodyBytes, sig)).toBe(false);
    const parsed = parseOp(created.bytes);
    expect(parsed.bodyBytes).toEqual(bodyBytes);
    expect(parsed.sig).toEqual(sig);
  });

  it('lay the body out as the documented array', () => {
    const raw = decode(envelopeParts(updated.bytes).body) as unknown[];
    const createdId = new Uint8Array(opIdToBytes(created.id));
    expect(raw).toEqual([1, 2, 'team-1', alice.id, 2, createdId, updated.hlc.wallMs, updated.hlc.counter, 'alice', 'evidence', 'ev-1', [createdId], { kind: 'video' }]);
  });

  it('are deterministic: the same body gives the same bytes and id', () => {
    const a = signOp(body({}), alice.author.signer);
    const b = signOp(body({}), alice.author.signer);
    expect(b.bytes).toEqual(a.bytes);
    expect(b.id).toBe(a.id);
  });

  it('keep fields named like Object.prototype members', () => {
    const op = signOp(body({ fields: { constructor: 'c', toString: 't', valueOf: 1 } }), alice.author.signer);
    const decoded = decodeOp(op.bytes);
    expect(decoded).toEqual(op);
    expect(isEntityOp(decoded) && decoded.fields).toEqual({ constructor: 'c', toString: 't', valueOf: 1 });
  });

  it('refuse to sign for another device', () => {
    expectCoreError(() => signOp(body({}), bob.author.signer), InvalidInputError, 'BAD_OP_FIELD', { field: 'device' });
  });

  it('parseOp does not check the signature; decodeOp does', () => {
    const { body: bodyBytes } = envelopeParts(created.bytes);
    const forged = encode([bodyBytes, new Uint8Array(64)]);
    expect(parseOp(forged).op.seq).toBe(1);
    expectCoreError(() => decodeOp(forged), RuleViolationError, 'BAD_SIGNATURE', { device: alice.id, seq: 1 });
  });
});

describe('checkBody rules', () => {
  it('accepts names at their maximum length', () => {
    expect(() =>
      checkBody(body({ team: 't'.repeat(LIMITS.maxTeamChars), domain: 'd'.repeat(LIMITS.maxDomainChars), entity: 'e'.repeat(LIMITS.maxEntityChars), user: 'u'.repeat(LIMITS.maxUserChars) })),
    ).not.toThrow();
    expect(() => checkBody(body({ base: Array.from({ length: LIMITS.maxBaseOps }, (_, i) => i.toString(16).padStart(64, '0')) }))).not.toThrow();
  });

  const broken: [string, Record<string, unknown>, string][] = [
    ['another format version', { v: 2 }, 'v'],
    ['an empty team', { team: '' }, 'team'],
    ['a team with a space', { team: 'team 1' }, 'team'],
    ['a team starting with a dash', { team: '-team' }, 'team'],
    ['a team name too long', { team: 't'.repeat(LIMITS.maxTeamChars + 1) }, 'team'],
    ['a device that is no PeerId', { device: 'device-1' }, 'device'],
    ['seq 0', { seq: 0 }, 'seq'],
    ['a fractional seq', { seq: 1.5 }, 'seq'],
    ['a prev at seq 1', { prev: ID_A }, 'prev'],
    ['no prev after seq 1', { seq: 2 }, 'prev'],
    ['a prev that is no op id', { seq: 2, prev: 'xyz' }, 'prev'],
    ['a prev in upper-case hex', { seq: 2, prev: ID_A.toUpperCase() }, 'prev'],
    ['a negative wall time', { hlc: { wallMs: -1, counter: 0 } }, 'hlc.wallMs'],
    ['a fractional counter', { hlc: { wallMs: T0, counter: 0.5 } }, 'hlc.counter'],
    ['a wall time beyond 48 bits', { hlc: { wallMs: 2 ** 48, counter: 0 } }, 'hlc'],
    ['a counter beyond 16 bits', { hlc: { wallMs: T0, counter: 0x10000 } }, 'hlc'],
    ['an empty user', { user: '' }, 'user'],
    ['a user with a control character', { user: 'a\nb' }, 'user'],
    ['a user name too long', { user: 'u'.repeat(LIMITS.maxUserChars + 1) }, 'user'],
    ['an unknown type', { type: 'merge' }, 'type'],
    ['an upper-case domain', { domain: 'Evidence' }, 'domain'],
    ['a domain starting with a digit', { domain: '1x' }, 'domain'],
    ['a domain with a slash', { domain: 'a/b' }, 'domain'],
    ['a domain name too long', { domain: 'd'.repeat(LIMITS.maxDomainChars + 1) }, 'domain'],
    ['an empty entity', { entity: '' }, 'entity'],
    ['an entity with a slash', { entity: 'ev/1' }, 'entity'],
    ['an entity starting with a dot', { entity: '.ev' }, 'entity'],
    ['an entity name too long', { entity: 'e'.repeat(LIMITS.maxEntityChars + 1) }, 'entity'],
    ['an unsorted base', { base: [ID_B, ID_A] }, 'base'],
    ['a duplicate in base', { base: [ID_A, ID_A] }, 'base'],
    ['too many base ops', { base: Array.from({ length: LIMITS.maxBaseOps + 1 }, (_, i) => i.toString(16).padStart(64, '0')) }, 'base'],
    ['a base id that is no op id', { base: ['abc'] }, 'base'],
    ['a base id in upper-case hex', { base: [ID_A.toUpperCase()] }, 'base'],
    ['a delete with fields', { type: 'delete', fields: { a: 1 } }, 'fields'],
    ['a deleting resolution with fields', { type: 'resolve', conflict: ID_A, exists: false, fields: { a: 1 } }, 'fields'],
    ['a resolution of a conflict id that is no op id', { type: 'resolve', conflict: 'conflict-1', exists: true }, 'conflict'],
    ['a receipt without verdicts', { type: 'receipt', verdicts: [] }, 'verdicts'],
    ['a receipt with too many verdicts', { type: 'receipt', verdicts: Array.from({ length: LIMITS.maxVerdictsPerReceipt + 1 }, () => ({ op: ID_A, accepted: true, reason: '', detail: '' })) }, 'verdicts'],
    ['an acceptance with a reason', { type: 'receipt', verdicts: [{ op: ID_A, accepted: true, reason: 'OK', detail: '' }] }, 'verdicts'],
    ['a rejection without a reason', { type: 'receipt', verdicts: [{ op: ID_A, accepted: false, reason: '', detail: 'why' }] }, 'verdicts'],
    ['a rejection reason too long', { type: 'receipt', verdicts: [{ op: ID_A, accepted: false, reason: 'R'.repeat(LIMITS.maxReasonChars + 1), detail: '' }] }, 'verdicts'],
    ['a verdict on something that is no op id', { type: 'receipt', verdicts: [{ op: 'op-1', accepted: true, reason: '', detail: '' }] }, 'verdicts.op'],
    ['a revocation of no device', { type: 'revoke', target: 'device-1', afterSeq: 0, reason: '' }, 'target'],
    ['a revocation after a negative seq', { type: 'revoke', target: bob.id, afterSeq: -1, reason: '' }, 'afterSeq'],
    ['a revocation reason too long', { type: 'revoke', target: bob.id, afterSeq: 0, reason: 'r'.repeat(LIMITS.maxReasonChars + 1) }, 'reason'],
  ];

  it.each(broken.map(([label, override, field]) => [label, field, override] as const))('refuses %s (BAD_OP_FIELD %s)', (_, field, override) => {
    const err = expectCoreError(() => checkBody(body(override)), InvalidInputError, 'BAD_OP_FIELD', { field });
    // signOp runs the same checks before anything is signed.
    if (field !== 'device') expect(thrownBy(() => signOp(body(override), alice.author.signer))).toEqual(err);
  });

  it('refuses bad field names and values with their own codes', () => {
    expectCoreError(() => signOp(body({ fields: { '1st': 1 } }), alice.author.signer), InvalidInputError, 'BAD_FIELD_NAME');
    expectCoreError(() => signOp(body({ fields: JSON.parse('{"__proto__": {"a": 1}}') }), alice.author.signer), InvalidInputError, 'BAD_FIELD_NAME');
    expectCoreError(() => signOp(body({ fields: { a: Number.NaN } }), alice.author.signer), InvalidInputError, 'BAD_VALUE');
    expectCoreError(() => signOp(body({ fields: [1] }), alice.author.signer), InvalidInputError, 'BAD_FIELDS');
    const many = Object.fromEntries(Array.from({ length: LIMITS.maxFieldsPerOp + 1 }, (_, i) => [`f${i}`, i]));
    expectCoreError(() => signOp(body({ fields: many }), alice.author.signer), InvalidInputError, 'TOO_MANY_FIELDS');
  });
});

describe('oversized ops', () => {
  it('refuses to sign a body over the limit (TOO_LARGE)', () => {
    const err = expectCoreError(() => signOp(body({ fields: { a: 'x'.repeat(70_000) } }), alice.author.signer), InvalidInputError, 'TOO_LARGE', { limit: LIMITS.maxOpBytes });
    expect(err.details.found as number).toBeGreaterThan(LIMITS.maxOpBytes);
  });

  // An envelope is 0x82, a 3-byte body head, the body, then 2 + 64 bytes of signature.
  const ENVELOPE_OVERHEAD = 70;
  const bodyOverhead = envelopeParts(signOp(body({ fields: { a: 'x'.repeat(1000) } }), alice.author.signer).bytes).body.length - 1000;
  const withText = (n: number) => body({ fields: { a: 'x'.repeat(n) } });

  it('refuses to sign an op whose body fits but whose envelope does not', () => {
    const n = LIMITS.maxOpBytes - 10 - bodyOverhead;
    const err = expectCoreError(() => signOp(withText(n), alice.author.signer), InvalidInputError, 'TOO_LARGE', { limit: LIMITS.maxOpBytes });
    expect(err.details.found).toBe(LIMITS.maxOpBytes - 10 + ENVELOPE_OVERHEAD);
  });

  it('signs and decodes an op of exactly the limit, and refuses one byte more', () => {
    const n = LIMITS.maxOpBytes - ENVELOPE_OVERHEAD - bodyOverhead;
    const op = signOp(withText(n), alice.author.signer);
    expect(op.bytes.length).toBe(LIMITS.maxOpBytes);
    expect(decodeOp(op.bytes).id).toBe(op.id);
    expectCoreError(() => signOp(withText(n + 1), alice.author.signer), InvalidInputError, 'TOO_LARGE', { limit: LIMITS.maxOpBytes, found: LIMITS.maxOpBytes + 1 });
  });

  it('refuses oversized input before decoding it', () => {
    expectCoreError(() => parseOp(new Uint8Array(LIMITS.maxOpBytes + 1)), InvalidInputError, 'TOO_LARGE', { limit: LIMITS.maxOpBytes, found: LIMITS.maxOpBytes + 1 });
    expectCoreError(() => decodeOp(created.bytes, created.bytes.length - 1), InvalidInputError, 'TOO_LARGE', { limit: created.bytes.length - 1, found: created.bytes.length });
    expect(decodeOp(created.bytes, created.bytes.length).id).toBe(created.id);
  });
});

describe('decoding bad bytes', () => {
  it('refuses non-bytes', () => {
    expectCoreError(() => parseOp('op' as unknown as Uint8Array), InvalidInputError, 'DECODE');
  });

  it.each(samples)('refuses every truncation of a %s op (DECODE)', (_, op) => {
    for (let length = 0; length < op.bytes.length; length++) {
      expectCoreError(() => decodeOp(op.bytes.subarray(0, length)), InvalidInputError, 'DECODE');
    }
  });

  it('refuses trailing bytes', () => {
    expectCoreError(() => decodeOp(Uint8Array.from([...created.bytes, 0])), InvalidInputError, 'DECODE');
  });

  it.each(samples)('refuses every single-bit flip of a %s op', (_, op) => {
    for (let bit = 0; bit < op.bytes.length * 8; bit++) expectRefused(() => decodeOp(flipBit(op.bytes, bit)));
  });

  it('refuses random bytes with a typed error', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        expect(thrownBy(() => decodeOp(bytes))).toBeInstanceOf(InvalidInputError);
      }),
      { numRuns: runs(500) },
    );
  });

  it('refuses random CBOR bodies inside a well-formed, well-signed envelope', () => {
    const anything = fc.array(fc.oneof(fc.integer(), fc.string({ maxLength: 8 }), fc.constant(null), fc.boolean(), fc.uint8Array({ maxLength: 40 })), { maxLength: 16 });
    fc.assert(
      fc.property(anything, (raw) => {
        expect(thrownBy(() => decodeOp(signEnvelope(encode(raw), alice.author.signer)))).toBeInstanceOf(InvalidInputError);
      }),
      { numRuns: runs(300) },
    );
  });
});

describe('well-signed bodies that break a rule', () => {
  it('refuses a body signed by another device\'s key (BAD_SIGNATURE)', () => {
    expectCoreError(() => decodeOp(resignedWith(created, () => {}, bob.author.signer)), RuleViolationError, 'BAD_SIGNATURE', { device: alice.id, seq: 1 });
    // Another op's signature does not fit either.
    const { body: bodyBytes } = envelopeParts(created.bytes);
    expectCoreError(() => decodeOp(encode([bodyBytes, envelopeParts(updated.bytes).sig])), RuleViolationError, 'BAD_SIGNATURE');
    // Claiming to be bob while signing as alice.
    expectCoreError(() => decodeOp(resignedWith(created, (raw) => void (raw[3] = bob.id))), RuleViolationError, 'BAD_SIGNATURE', { device: bob.id });
  });

  it('accepts an unchanged body re-signed by its device (the helper itself is faithful)', () => {
    expect(resignedWith(created, () => {})).toEqual(created.bytes);
  });

  it('refuses unknown op types', () => {
    for (const code of [0, 7, 255, 'create', null]) {
      expectCoreError(() => decodeOp(resignedWith(created, (raw) => void (raw[1] = code))), InvalidInputError, 'BAD_OP_FIELD', { field: 'type' });
    }
  });

  it('refuses bodies of the wrong length: unknown or missing fields', () => {
    expectCoreError(() => decodeOp(resignedWith(created, (raw) => void raw.push('extra'))), InvalidInputError, 'BAD_OP_FIELD', { field: 'body' });
    expectCoreError(() => decodeOp(resignedWith(created, (raw) => void raw.pop())), InvalidInputError, 'BAD_OP_FIELD', { field: 'body' });
    expectCoreError(() => decodeOp(resignedWith(receipt, (raw) => void raw.push([]))), InvalidInputError, 'BAD_OP_FIELD', { field: 'body' });
    expectCoreError(() => decodeOp(resignedWith(resolved, (raw) => void raw.pop())), InvalidInputError, 'BAD_OP_FIELD', { field: 'body' });
    expectCoreError(() => decodeOp(resignedWith(created, (raw) => void raw.splice(8))), InvalidInputError, 'DECODE');
    // The body must be an array at all.
    expectCoreError(() => decodeOp(signEnvelope(encode({ v: 1 }), alice.author.signer)), InvalidInputError, 'DECODE');
  });

  it('refuses wrong types in known positions', () => {
    const cases: [Op, number, unknown, string][] = [
      [created, 2, 7, 'team'],
      [created, 4, 'one', 'seq'],
      [created, 5, new Uint8Array(31), 'prev'],
      [updated, 5, 'ab'.repeat(32), 'prev'],
      [created, 6, '0', 'hlc.wallMs'],
      [created, 8, new Uint8Array(1), 'user'],
      [created, 9, 1, 'domain'],
      [created, 11, 'base', 'base'],
      [created, 11, [new Uint8Array(31)], 'base'],
      [resolved, 13, new Uint8Array(32).fill(1).subarray(1), 'conflict'],
      [resolved, 14, 1, 'exists'],
      [receipt, 9, 'verdicts', 'verdicts'],
      [receipt, 9, [[opIdToBytes(created.id), 'yes', '', '']], 'verdicts'],
      [receipt, 9, [[opIdToBytes(created.id), true, '']], 'verdicts'],
      [revoke, 10, '2', 'afterSeq'],
    ];
    for (const [op, index, value, field] of cases) {
      expectCoreError(() => decodeOp(resignedWith(op, (raw) => void (raw[index] = value))), InvalidInputError, 'BAD_OP_FIELD', { field });
    }
  });

  it('runs every checkBody rule on decoded ops: bad names, delete with fields, resolutions', () => {
    const cases: [Op, number, unknown, string][] = [
      [created, 0, 2, 'v'],
      [created, 2, 'team one', 'team'],
      [created, 8, 'a\u0000b', 'user'],
      [created, 9, 'Evidence', 'domain'],
      [created, 10, 'ev/1', 'entity'],
      [created, 4, 0, 'seq'],
      [created, 7, 0x10000, 'hlc'],
      [deleted, 12, { a: 1 }, 'fields'],
    ];
    for (const [op, index, value, field] of cases) {
      expectCoreError(() => decodeOp(resignedWith(op, (raw) => void (raw[index] = value))), InvalidInputError, 'BAD_OP_FIELD', { field });
    }
    const deletingResolution = resignedWith(resolved, (raw) => void (raw[14] = false));
    expectCoreError(() => decodeOp(deletingResolution), InvalidInputError, 'BAD_OP_FIELD', { field: 'fields' });
    expectCoreError(() => decodeOp(resignedWith(created, (raw) => void (raw[12] = { '1st': 1 }))), InvalidInputError, 'BAD_FIELD_NAME');
    expectCoreError(() => decodeOp(resignedWith(created, (raw) => void (raw[12] = { ['__proto__']: 1 }))), InvalidInputError, 'BAD_FIELD_NAME');
    expectCoreError(() => decodeOp(resignedWith(created, (raw) => void (raw[12] = [1]))), InvalidInputError, 'BAD_FIELDS');
  });
});

describe('non-canonical encodings', () => {
  it('refuses an envelope whose body length is written non-minimally', () => {
    const { body: bodyBytes, sig } = envelopeParts(created.bytes);
    const n = bodyBytes.length;
    const padded = Uint8Array.from([0x82, 0x5a, (n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff, ...bodyBytes, 0x58, 0x40, ...sig]);
    // Same body, same signature: only the encoding differs.
    expect(decode(padded)).toEqual([bodyBytes, sig]);
    expectCoreError(() => decodeOp(padded), InvalidInputError, 'DECODE');
  });

  it('refuses malformed envelopes', () => {
    const { body: bodyBytes, sig } = envelopeParts(created.bytes);
    const envelopes = [
      encode([bodyBytes]),
      encode([bodyBytes, sig, sig]),
      encode([new TextDecoder().decode(bodyBytes), sig]),
      encode([bodyBytes, sig.subarray(0, 63)]),
      encode([bodyBytes, Uint8Array.from([...sig, 0])]),
      encode({ body: bodyBytes, sig }),
      Uint8Array.from([0x9f, ...encode(bodyBytes), ...encode(sig), 0xff]),
    ];
    for (const bytes of envelopes) expectCoreError(() => decodeOp(bytes), InvalidInputError, 'DECODE');
  });

  it('refuses a validly signed body whose field map keys are out of order', () => {
    const op = signOp(body({ fields: { bb: 1, a: 2 } }), alice.author.signer);
    const raw = decode(envelopeParts(op.bytes).body) as unknown[];
    const reversed = { mapSorter: (x: { value: string }[], y: { value: string }[]) => (x[0]!.value < y[0]!.value ? 1 : -1) };
    const bodyBytes = encode(raw, reversed as never);
    expect(bodyBytes).not.toEqual(envelopeParts(op.bytes).body);
    expectCoreError(() => decodeOp(signEnvelope(bodyBytes, alice.author.signer)), InvalidInputError, 'DECODE');
  });

  it('refuses a validly signed body with a float written longer than needed', () => {
    const raw = decode(envelopeParts(created.bytes).body) as unknown[];
    expectCoreError(() => decodeOp(signEnvelope(encode(raw, { float64: true }), alice.author.signer)), InvalidInputError, 'DECODE');
  });

  it('refuses a validly signed body with an integer written longer than needed', () => {
    const { body: bodyBytes } = envelopeParts(created.bytes);
    // Body starts with the array head (0x8d) then v = 1 (0x01): write v as 0x18 0x01.
    expect([bodyBytes[0], bodyBytes[1]]).toEqual([0x8d, 0x01]);
    const longer = Uint8Array.from([0x8d, 0x18, 0x01, ...bodyBytes.subarray(2)]);
    expectCoreError(() => decodeOp(signEnvelope(longer, alice.author.signer)), InvalidInputError, 'DECODE');
  });
});

describe('bit flips (property)', () => {
  const value = fc.oneof(fc.integer(), fc.string({ maxLength: 12 }), fc.boolean(), fc.constant(null), fc.double({ noNaN: true, noDefaultInfinity: true }).filter((d) => !Number.isInteger(d) || Number.isSafeInteger(d)), fc.array(fc.string({ maxLength: 4 }), { maxLength: 3 }));
  const fields = fc.dictionary(fc.stringMatching(/^[a-z][a-z0-9_]{0,6}$/), value, { maxKeys: 5, noNullPrototype: true });
  const signer = signerOf('op-flip');

  it('any single-bit change to any encoded op fails decodeOp', () => {
    fc.assert(
      fc.property(fields, fc.constantFrom('create', 'update', 'delete'), fc.integer({ min: 1, max: 1000 }), fc.nat(), (f, type, seq, bitSeed) => {
        const op = signOp(body({ device: signer.device, type, seq, prev: seq === 1 ? null : ID_A, fields: type === 'delete' ? {} : f }), signer);
        expect(decodeOp(op.bytes).id).toBe(op.id);
        expectRefused(() => decodeOp(flipBit(op.bytes, bitSeed % (op.bytes.length * 8))));
      }),
      { numRuns: runs(300) },
    );
  });
});
