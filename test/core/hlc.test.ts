import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RuleViolationError } from '../../src/core/errors.ts';
import { compareHlc, compareStamped, decodeHlc, encodeHlc, HLC_ZERO, hlcNow, hlcReceive, hlcToString, type Hlc } from '../../src/core/hlc.ts';
import { LIMITS } from '../../src/core/limits.ts';
import { expectCoreError, runs } from './helpers.ts';

const MAX_COUNTER = LIMITS.maxHlcCounter;
const sign = (n: number) => Math.sign(n);
const hlcArb = fc.record({ wallMs: fc.integer({ min: 0, max: LIMITS.maxHlcWallMs }), counter: fc.integer({ min: 0, max: MAX_COUNTER }) });

describe('compareHlc / compareStamped', () => {
  it('orders by wall time, then counter', () => {
    expect(compareHlc({ wallMs: 1, counter: 9 }, { wallMs: 2, counter: 0 })).toBeLessThan(0);
    expect(compareHlc({ wallMs: 2, counter: 0 }, { wallMs: 1, counter: 9 })).toBeGreaterThan(0);
    expect(compareHlc({ wallMs: 2, counter: 1 }, { wallMs: 2, counter: 3 })).toBeLessThan(0);
    expect(compareHlc({ wallMs: 2, counter: 3 }, { wallMs: 2, counter: 3 })).toBe(0);
  });

  it('breaks clock ties on the device id, giving a total order', () => {
    const h = { wallMs: 5, counter: 1 };
    expect(compareStamped(h, 'a', h, 'b')).toBe(-1);
    expect(compareStamped(h, 'b', h, 'a')).toBe(1);
    expect(compareStamped(h, 'a', h, 'a')).toBe(0);
    // The clock decides before the device does.
    expect(compareStamped({ wallMs: 4, counter: 0 }, 'z', h, 'a')).toBe(-1);
  });
});

describe('hlcNow', () => {
  it('takes physical time when it is ahead, with counter 0', () => {
    expect(hlcNow({ wallMs: 1000, counter: 7 }, 2000)).toEqual({ wallMs: 2000, counter: 0 });
    expect(hlcNow(HLC_ZERO, 1)).toEqual({ wallMs: 1, counter: 0 });
  });

  it('counts up within one millisecond and when physical time goes backwards', () => {
    expect(hlcNow({ wallMs: 1000, counter: 7 }, 1000)).toEqual({ wallMs: 1000, counter: 8 });
    expect(hlcNow({ wallMs: 1000, counter: 7 }, 10)).toEqual({ wallMs: 1000, counter: 8 });
  });

  it('uses whole milliseconds of physical time', () => {
    expect(hlcNow(HLC_ZERO, 1500.9)).toEqual({ wallMs: 1500, counter: 0 });
    expect(hlcNow({ wallMs: 1500, counter: 0 }, 1500.9)).toEqual({ wallMs: 1500, counter: 1 });
  });

  it('reaches the last counter value, and past it carries into the next millisecond, never a wrap', () => {
    expect(hlcNow({ wallMs: 1000, counter: MAX_COUNTER - 1 }, 1000)).toEqual({ wallMs: 1000, counter: MAX_COUNTER });
    expect(hlcNow({ wallMs: 1000, counter: MAX_COUNTER }, 1000)).toEqual({ wallMs: 1001, counter: 0 });
    // Physical time moving on clears the counter as before.
    expect(hlcNow({ wallMs: 1000, counter: MAX_COUNTER }, 1005)).toEqual({ wallMs: 1005, counter: 0 });
    // 200,000 events in one millisecond: strictly increasing, never past the 16 bits.
    let clock = { wallMs: 1000, counter: 0 };
    for (let i = 0; i < 200_000; i++) {
      const next = hlcNow(clock, 1000);
      expect(compareHlc(next, clock)).toBeGreaterThan(0);
      clock = next;
    }
    expect(clock).toEqual({ wallMs: 1003, counter: 200_000 - 3 * (MAX_COUNTER + 1) });
  });

  it('refuses wall times beyond 48 bits', () => {
    expect(hlcNow(HLC_ZERO, LIMITS.maxHlcWallMs)).toEqual({ wallMs: LIMITS.maxHlcWallMs, counter: 0 });
    expectCoreError(() => hlcNow(HLC_ZERO, LIMITS.maxHlcWallMs + 1), RuleViolationError, 'HLC_WALL_OVERFLOW');
  });
});

describe('hlcReceive', () => {
  const drift = 60_000;

  it('ticks past the local clock when the remote is behind', () => {
    const r = hlcReceive({ wallMs: 1000, counter: 5 }, { wallMs: 900, counter: 9 }, 950, drift);
    expect(r).toEqual({ clock: { wallMs: 1000, counter: 6 }, driftFlagged: false, aheadMs: 0 });
  });

  it('takes physical time when it is ahead of both clocks', () => {
    const r = hlcReceive({ wallMs: 1000, counter: 5 }, { wallMs: 1100, counter: 3 }, 2000, drift);
    expect(r).toEqual({ clock: { wallMs: 2000, counter: 0 }, driftFlagged: false, aheadMs: 0 });
  });

  it('follows a remote clock ahead within the drift bound', () => {
    const r = hlcReceive({ wallMs: 1000, counter: 5 }, { wallMs: 1500, counter: 7 }, 1000, drift);
    expect(r).toEqual({ clock: { wallMs: 1500, counter: 8 }, driftFlagged: false, aheadMs: 500 });
  });

  it('takes the larger counter plus one when both clocks share a wall time', () => {
    expect(hlcReceive({ wallMs: 1500, counter: 9 }, { wallMs: 1500, counter: 3 }, 1400, drift).clock).toEqual({ wallMs: 1500, counter: 10 });
    expect(hlcReceive({ wallMs: 1500, counter: 3 }, { wallMs: 1500, counter: 9 }, 1400, drift).clock).toEqual({ wallMs: 1500, counter: 10 });
  });

  it('does not flag a remote exactly maxDrift ahead', () => {
    const r = hlcReceive(HLC_ZERO, { wallMs: 1000 + drift, counter: 2 }, 1000, drift);
    expect(r.driftFlagged).toBe(false);
    expect(r.aheadMs).toBe(drift);
    expect(r.clock).toEqual({ wallMs: 1000 + drift, counter: 3 });
  });

  it('flags a clock far ahead and never lets it drag ours past physical + maxDrift', () => {
    const farAhead = { wallMs: 1000 + 10_000_000, counter: 4 };
    const r = hlcReceive({ wallMs: 1000, counter: 0 }, farAhead, 1000, drift);
    expect(r.driftFlagged).toBe(true);
    expect(r.aheadMs).toBe(10_000_000);
    expect(r.clock).toEqual({ wallMs: 1000 + drift, counter: 1 });
    // Again at the same physical time: stays at the bound, only the counter moves.
    const again = hlcReceive(r.clock, farAhead, 1000, drift);
    expect(again.driftFlagged).toBe(true);
    expect(again.clock).toEqual({ wallMs: 1000 + drift, counter: 2 });
    // The flagged remote stays ahead of us: the caller keeps the op but it is not causally "seen".
    expect(compareHlc(again.clock, farAhead)).toBeLessThan(0);
  });

  it('never moves backwards when our clock is already past the bound', () => {
    const r = hlcReceive({ wallMs: 500_000, counter: 3 }, { wallMs: 9_000_000, counter: 0 }, 1000, drift);
    expect(r.driftFlagged).toBe(true);
    expect(r.clock).toEqual({ wallMs: 500_000, counter: 4 });
  });

  it('only checks forward drift: a week-old remote clock is fine', () => {
    const week = 7 * 24 * 3600 * 1000;
    const r = hlcReceive({ wallMs: week + 10, counter: 0 }, { wallMs: 10, counter: 0 }, week + 10, drift);
    expect(r.driftFlagged).toBe(false);
    expect(r.aheadMs).toBe(0);
    expect(r.clock).toEqual({ wallMs: week + 10, counter: 1 });
  });

  it('carries a full counter into the next millisecond', () => {
    expect(hlcReceive({ wallMs: 5000, counter: 0 }, { wallMs: 5000, counter: MAX_COUNTER }, 5000, drift).clock).toEqual({ wallMs: 5001, counter: 0 });
    expect(hlcReceive({ wallMs: 5000, counter: MAX_COUNTER }, { wallMs: 10, counter: 0 }, 5000, drift).clock).toEqual({ wallMs: 5001, counter: 0 });
    expect(hlcReceive(HLC_ZERO, { wallMs: 6000, counter: MAX_COUNTER }, 5000, drift).clock).toEqual({ wallMs: 6001, counter: 0 });
  });
});

describe('HLC encoding', () => {
  it('is 8 bytes big-endian: 48 bits of wall time, then 16 bits of counter', () => {
    expect([...encodeHlc({ wallMs: 0x010203040506, counter: 0x0708 })]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(decodeHlc(Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8))).toEqual({ wallMs: 0x010203040506, counter: 0x0708 });
    const max = { wallMs: LIMITS.maxHlcWallMs, counter: MAX_COUNTER };
    expect(decodeHlc(encodeHlc(max))).toEqual(max);
  });

  it('decodes from a view into a larger buffer', () => {
    const buf = Uint8Array.of(9, 9, 0, 0, 0, 0, 1, 0, 0, 2, 9);
    expect(decodeHlc(buf.subarray(2, 10))).toEqual({ wallMs: 256, counter: 2 });
  });

  it('refuses other lengths', () => {
    expectCoreError(() => decodeHlc(new Uint8Array(7)), RuleViolationError, 'HLC_BYTES');
    expectCoreError(() => decodeHlc(new Uint8Array(9)), RuleViolationError, 'HLC_BYTES');
  });

  it('round-trips, and sorts bytewise and as strings exactly like compareHlc', () => {
    fc.assert(
      fc.property(hlcArb, hlcArb, (a, b) => {
        expect(decodeHlc(encodeHlc(a))).toEqual(a);
        expect(sign(Buffer.compare(encodeHlc(a), encodeHlc(b)))).toBe(sign(compareHlc(a, b)));
        const [sa, sb] = [hlcToString(a), hlcToString(b)];
        expect(sign(sa < sb ? -1 : sa > sb ? 1 : 0)).toBe(sign(compareHlc(a, b)));
      }),
      { numRuns: runs(500) },
    );
  });
});

describe('HLC properties', () => {
  type Event = { kind: 'now'; dt: number } | { kind: 'receive'; dt: number; remoteOffset: number; remoteCounter: number };
  const dt = fc.integer({ min: -5_000_000, max: 5_000_000 });
  const event: fc.Arbitrary<Event> = fc.oneof(
    fc.record({ kind: fc.constant('now' as const), dt }),
    fc.record({
      kind: fc.constant('receive' as const),
      dt,
      remoteOffset: fc.integer({ min: -20_000_000, max: 20_000_000 }),
      remoteCounter: fc.integer({ min: 0, max: 1000 }),
    }),
  );

  it('hlcNow and hlcReceive are strictly monotonic for any physical times, preserve causality and respect the drift bound', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 41 }), fc.integer({ min: 0, max: 10_000_000 }), fc.array(event, { maxLength: 120 }), (start, maxDrift, events) => {
        let clock: Hlc = HLC_ZERO;
        let physical = start;
        for (const e of events) {
          // Physical time jumps forwards and backwards, but never below zero.
          physical = Math.max(0, physical + e.dt);
          const before = clock;
          if (e.kind === 'now') {
            clock = hlcNow(before, physical);
            expect(clock.wallMs).toBeLessThanOrEqual(Math.max(before.wallMs, physical));
          } else {
            const remote = { wallMs: Math.max(0, physical + e.remoteOffset), counter: e.remoteCounter };
            const r = hlcReceive(before, remote, physical, maxDrift);
            clock = r.clock;
            expect(r.aheadMs).toBe(Math.max(0, remote.wallMs - physical));
            expect(r.driftFlagged).toBe(remote.wallMs - physical > maxDrift);
            // Causality: what we send next is ordered after what we received.
            if (!r.driftFlagged) expect(compareHlc(clock, remote)).toBeGreaterThan(0);
            // A remote clock never drags ours beyond physical + maxDrift.
            expect(clock.wallMs).toBeLessThanOrEqual(Math.max(before.wallMs, physical + maxDrift));
          }
          expect(compareHlc(clock, before)).toBeGreaterThan(0);
          expect(clock.wallMs).toBeGreaterThanOrEqual(physical);
        }
      }),
      { numRuns: runs(300) },
    );
  });
});
