/**
 * The discrete-event scheduler: (time, sequence) order, virtual time, promise continuations run
 * to completion between events, the trace of recent events, and its stopping rules.
 */
import { describe, expect, it } from 'vitest';
import { Scheduler } from '../../src/sim/scheduler.ts';

describe('Scheduler', () => {
  it('runs events by time, then in the order they were scheduled', async () => {
    const s = new Scheduler();
    const seen: string[] = [];
    s.at(20, 'b', () => seen.push(`b@${s.now}`));
    s.at(10, 'a', () => seen.push(`a@${s.now}`));
    s.at(20, 'c', () => {
      seen.push(`c@${s.now}`);
      s.after(0, 'd', () => seen.push(`d@${s.now}`));
      s.at(5, 'past', () => seen.push(`past@${s.now}`)); // never in the past: runs now
    });
    expect(await s.run({ maxEvents: 100 })).toBe('empty');
    expect(seen).toEqual(['a@10', 'b@20', 'c@20', 'd@20', 'past@20']);
    expect(s.trace().map((e) => e.label)).toEqual(['a', 'b', 'c', 'd', 'past']);
  });

  it('lets the promise chains an event starts finish before the next event', async () => {
    const s = new Scheduler();
    const seen: string[] = [];
    s.at(1, 'start', () => {
      void (async () => {
        for (let i = 0; i < 50; i++) await Promise.resolve();
        seen.push('chain done');
      })();
    });
    s.at(1, 'next', () => seen.push('next event'));
    await s.run({ maxEvents: 10 });
    expect(seen).toEqual(['chain done', 'next event']);
  });

  it('stops at a virtual deadline, at a stop condition and at the event limit', async () => {
    const s = new Scheduler();
    const tick = () => s.after(10, 'tick', tick);
    tick();
    expect(await s.run({ untilMs: 55, maxEvents: 1000 })).toBe('until');
    expect(s.now).toBe(55);
    expect(s.processed).toBe(5);
    expect(await s.run({ maxEvents: 1000, stop: () => s.now >= 100 })).toBe('stopped');
    expect(await s.run({ maxEvents: 20 })).toBe('max-events');
    expect(s.processed).toBe(20);
    expect(s.trace().length).toBeLessThanOrEqual(40);
  });
});
