/**
 * The sync frame codec (src/core/sync/frames.ts): every frame type round-trips byte-exactly, and
 * anything that is not exactly a well-formed, canonical frame is refused with a typed error.
 */
import { encode } from 'cborg';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { InvalidInputError } from '../../src/core/errors.ts';
import { decodeFrame, encodeFrame, MAX_WANT_IDS, SYNC_VERSION, type Frame } from '../../src/core/sync/frames.ts';
import { expectCoreError, runs, signerOf } from './helpers.ts';

const A = signerOf('frames-a').device;
const B = signerOf('frames-b').device;
const HQ = signerOf('frames-hq').device;
const MAX = 1024 * 1024;
const bytes = (n: number, fill = 7) => new Uint8Array(n).fill(fill);
/** Byte equality without a deep, element-by-element diff (slow on large arrays). */
const same = (a: Uint8Array, b: Uint8Array): boolean => Buffer.from(a).equals(Buffer.from(b));
const ID1 = 'a1'.repeat(32);
const ID2 = '07'.repeat(32);

const samples: Frame[] = [
  { type: 'hello', version: SYNC_VERSION, team: 'team-1', hq: HQ, cert: bytes(200), tips: { [B]: { seq: 3, id: ID1 }, [A]: { seq: 17, id: ID2 } }, maxFrameBytes: 70_000, windowBytes: 140_000 },
  { type: 'hello', version: SYNC_VERSION, team: 't', hq: HQ, cert: bytes(1), tips: {}, maxFrameBytes: 0, windowBytes: 0 },
  { type: 'certs', certs: [] },
  { type: 'certs', certs: [bytes(3, 1), bytes(5, 2)] },
  { type: 'ops', device: A, ops: [bytes(10, 1), bytes(300, 2), bytes(3000, 3)] },
  { type: 'fork', device: A, seq: 9, ops: [bytes(20, 1), bytes(20, 2)] },
  { type: 'credit', bytes: 0 },
  { type: 'credit', bytes: Number.MAX_SAFE_INTEGER },
  { type: 'caughtUp' },
  { type: 'goodbye', code: 'SHUTDOWN', message: 'node stopping' },
  { type: 'goodbye', code: '', message: '' },
  { type: 'query', device: A, seq: 1 },
  { type: 'answer', device: A, seq: 12, op: bytes(300, 4) },
  { type: 'answer', device: B, seq: 3, op: null },
  { type: 'want', ids: [ID1, ID2] },
  { type: 'voids', ops: [bytes(300, 5)] },
];

describe('encodeFrame / decodeFrame', () => {
  it.each(samples.map((f) => [f.type, f] as const))('round-trips a %s frame', (_type, frame) => {
    const encoded = encodeFrame(frame);
    const decoded = decodeFrame(encoded, MAX);
    expect(decoded).toEqual(frame);
    expect(encodeFrame(decoded)).toEqual(encoded);
  });

  it('round-trips an ops frame holding ops of the largest size', () => {
    const ops = [bytes(64 * 1024, 1), bytes(64 * 1024, 2), bytes(1, 3)];
    const encoded = encodeFrame({ type: 'ops', device: A, ops });
    const decoded = decodeFrame(encoded, MAX);
    if (decoded.type !== 'ops') throw new Error(`decoded a ${decoded.type} frame`);
    expect(decoded.device).toBe(A);
    expect(decoded.ops.map((op, i) => same(op, ops[i]!))).toEqual([true, true, true]);
  });

  it('encodes the tips sorted by device whatever the key order', () => {
    const base = samples[0] as Frame & { type: 'hello' };
    const reordered = { ...base, tips: { [A]: { seq: 17, id: ID2 }, [B]: { seq: 3, id: ID1 } } };
    expect(encodeFrame(reordered)).toEqual(encodeFrame(base));
  });

  it('round-trips arbitrary frames of every type', () => {
    const blob = fc.uint8Array({ maxLength: 64 });
    const uint = fc.nat({ max: Number.MAX_SAFE_INTEGER });
    const text = (max: number) => fc.string({ maxLength: max });
    const frameArb: fc.Arbitrary<Frame> = fc.oneof(
      fc.record({
        type: fc.constant('hello' as const),
        version: uint,
        team: text(64),
        hq: text(64),
        cert: blob,
        tips: fc.dictionary(fc.string({ minLength: 1, maxLength: 64 }), fc.record({ seq: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }), id: fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => Buffer.from(b).toString('hex')) }), { maxKeys: 5 }),
        maxFrameBytes: uint,
        windowBytes: uint,
      }),
      fc.record({ type: fc.constant('certs' as const), certs: fc.array(blob, { maxLength: 4 }) }),
      fc.record({ type: fc.constant('ops' as const), device: text(64), ops: fc.array(blob, { minLength: 1, maxLength: 4 }) }),
      fc.record({ type: fc.constant('fork' as const), device: text(64), seq: uint, ops: fc.tuple(blob, blob) }),
      fc.record({ type: fc.constant('credit' as const), bytes: uint }),
      fc.constant({ type: 'caughtUp' as const }),
      fc.record({ type: fc.constant('goodbye' as const), code: text(64), message: text(512) }),
      fc.record({ type: fc.constant('query' as const), device: text(64), seq: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }) }),
      fc.record({ type: fc.constant('answer' as const), device: text(64), seq: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }), op: fc.option(blob, { nil: null }) }),
      fc.record({ type: fc.constant('want' as const), ids: fc.array(fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => Buffer.from(b).toString('hex')), { minLength: 1, maxLength: MAX_WANT_IDS }) }),
      fc.record({ type: fc.constant('voids' as const), ops: fc.array(blob, { minLength: 1, maxLength: 4 }) }),
    );
    fc.assert(
      fc.property(frameArb, (frame) => {
        // Keys that are not valid in a JS object literal round-trip are filtered by the record itself.
        if (frame.type === 'hello' && Object.keys(frame.tips).includes('__proto__')) return;
        const encoded = encodeFrame(frame);
        expect(same(encodeFrame(decodeFrame(encoded, MAX)), encoded)).toBe(true);
      }),
      { numRuns: runs(300) },
    );
  });

  it('cuts a goodbye message to 512 characters', () => {
    const decoded = decodeFrame(encodeFrame({ type: 'goodbye', code: 'X', message: 'm'.repeat(5000) }), MAX);
    expect(decoded).toEqual({ type: 'goodbye', code: 'X', message: 'm'.repeat(512) });
  });
});

describe('decodeFrame refuses malformed frames', () => {
  const cert = bytes(4);
  const hello = (patch: Partial<Record<number, unknown>> = {}, length = 8): Uint8Array => {
    const items: unknown[] = [1, SYNC_VERSION, 'team-1', HQ, cert, [[A, 1, bytes(32)]], 70_000, 140_000];
    for (const [i, v] of Object.entries(patch)) items[Number(i)] = v;
    return encode(items.slice(0, length));
  };

  it('refuses a frame over the size limit with TOO_LARGE, before decoding it', () => {
    const frame = encodeFrame({ type: 'ops', device: A, ops: [bytes(2000)] });
    const err = expectCoreError(() => decodeFrame(frame, 1000), InvalidInputError, 'TOO_LARGE');
    expect(err.details).toMatchObject({ limit: 1000, found: frame.length });
    // Exactly at the limit is fine.
    expect(decodeFrame(frame, frame.length).type).toBe('ops');
    // Garbage over the limit is refused for its size, not its content.
    expectCoreError(() => decodeFrame(bytes(1001, 0xff), 1000), InvalidInputError, 'TOO_LARGE');
  });

  const malformed: [string, Uint8Array][] = [
    ['empty input', new Uint8Array(0)],
    ['random garbage', Uint8Array.of(0xff, 0x00, 0x13)],
    ['a truncated frame', encodeFrame({ type: 'credit', bytes: 100_000 }).subarray(0, 3)],
    ['trailing bytes', Uint8Array.from([...encodeFrame({ type: 'caughtUp' }), 0x00])],
    ['a non-canonical integer', Uint8Array.of(0x82, 0x05, 0x18, 0x05)], // [5, 5] with 5 in two bytes
    ['an indefinite-length array', Uint8Array.of(0x9f, 0x06, 0xff)],
    ['a map instead of an array', encode({ type: 6 })],
    ['a bare integer', encode(6)],
    ['an empty array', encode([])],
    ['an unknown frame type', encode([99])],
    ['frame type 0', encode([0])],
    ['a frame type as a string', encode(['caughtUp'])],
    ['caughtUp with an extra item', encode([6, 1])],
    ['credit without its amount', encode([5])],
    ['credit with a negative amount', encode([5, -1])],
    ['credit with a fractional amount', encode([5, 1.5])],
    ['credit with a string amount', encode([5, '100'])],
    ['credit beyond safe integers', Uint8Array.of(0x82, 0x05, 0x1b, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00)],
    ['ops with no ops', encode([3, A, []])],
    ['want with no ids', encode([10, []])],
    ['want with a short id', encode([10, [bytes(31)]])],
    ['want with more than MAX_WANT_IDS ids', encode([10, Array.from({ length: MAX_WANT_IDS + 1 }, () => bytes(32))])],
    ['voids with no ops', encode([11, []])],
    ['voids holding a string', encode([11, ['op']])],
    ['ops whose op is not bytes', encode([3, A, ['op']])],
    ['ops with a non-string device', encode([3, 7, [bytes(3)]])],
    ['ops with an over-long device', encode([3, 'x'.repeat(65), [bytes(3)]])],
    ['ops with an extra item', encode([3, A, [bytes(3)], 1])],
    ['certs that are not a list', encode([2, bytes(3)])],
    ['certs holding a string', encode([2, [bytes(3), 'cert']])],
    ['fork missing its second op', encode([4, A, 3, bytes(3)])],
    ['fork with a negative seq', encode([4, A, -3, bytes(3), bytes(3)])],
    ['goodbye with a non-string code', encode([7, 1, 'x'])],
    ['goodbye with an over-long message', encode([7, 'X', 'm'.repeat(513)])],
    ['goodbye with an over-long code', encode([7, 'C'.repeat(65), 'x'])],
    ['hello with 7 items', hello({}, 7)],
    ['hello with a string version', hello({ 1: '1' })],
    ['hello with a non-string team', hello({ 2: 5 })],
    ['hello with an over-long team', hello({ 2: 't'.repeat(65) })],
    ['hello with a non-bytes cert', hello({ 4: 'cert' })],
    ['hello with a negative frame limit', hello({ 6: -1 })],
    ['hello with a fractional window', hello({ 7: 0.5 })],
    ['hello with tips that are a map', hello({ 5: { [A]: 1 } })],
    ['hello with unsorted tips', hello({ 5: [[B, 1, bytes(32)], [A, 1, bytes(32)]].sort(([a], [b]) => ((a as string) < (b as string) ? 1 : -1)) })],
    ['hello with a duplicate device in its tips', hello({ 5: [[A, 1, bytes(32)], [A, 2, bytes(32)]] })],
    ['hello with a tip of 2 items (a version 1 entry)', hello({ 5: [[A, 1]] })],
    ['hello with a tip of 4 items', hello({ 5: [[A, 1, bytes(32), 2]] })],
    ['hello with a tip at seq 0', hello({ 5: [[A, 0, bytes(32)]] })],
    ['hello with a negative seq', hello({ 5: [[A, -1, bytes(32)]] })],
    ['hello with a tip id of 31 bytes', hello({ 5: [[A, 1, bytes(31)]] })],
    ['hello with a tip id as text', hello({ 5: [[A, 1, 'a1'.repeat(32)]] })],
    ['hello with an empty device id', hello({ 5: [['', 1, bytes(32)]] })],
    ['query without its seq', encode([8, A])],
    ['query at seq 0', encode([8, A, 0])],
    ['query with an over-long device', encode([8, 'x'.repeat(65), 1])],
    ['answer without its op', encode([9, A, 1])],
    ['answer with an op as text', encode([9, A, 1, 'op'])],
    ['answer at seq 0', encode([9, A, 0, null])],
  ];

  it.each(malformed)('refuses %s with DECODE', (_what, frame) => {
    expectCoreError(() => decodeFrame(frame, MAX), InvalidInputError, 'DECODE');
  });

  it('never throws anything but InvalidInputError on arbitrary bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (input) => {
        try {
          decodeFrame(input, MAX);
        } catch (err) {
          expect(err).toBeInstanceOf(InvalidInputError);
          expect(['DECODE', 'TOO_LARGE']).toContain((err as InvalidInputError).code);
        }
      }),
      { numRuns: runs(1000) },
    );
  });

  it('never throws anything but InvalidInputError on mutated valid frames', () => {
    const valid = samples.map(encodeFrame);
    fc.assert(
      fc.property(fc.nat({ max: valid.length - 1 }), fc.nat(), fc.nat({ max: 255 }), (which, at, value) => {
        const frame = Uint8Array.from(valid[which]!);
        frame[at % frame.length] = value;
        try {
          const decoded = decodeFrame(frame, MAX);
          // Whatever decodes must encode back to the same bytes (one frame, one encoding).
          expect(same(encodeFrame(decoded), frame)).toBe(true);
        } catch (err) {
          expect(err).toBeInstanceOf(InvalidInputError);
        }
      }),
      { numRuns: runs(1000) },
    );
  });
});
