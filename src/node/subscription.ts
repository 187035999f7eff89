/**
 * An async-iterable view of node events with a bounded buffer: a consumer that falls more than
 * `maxBuffered` events behind gets an error rather than unbounded memory growth.
 */
import { FieldmeshError } from '../core/errors.ts';

export class SubscriptionOverflowError extends FieldmeshError {}

export class Subscription<T> implements AsyncIterableIterator<T> {
  private readonly buffer: T[] = [];
  private readonly waiters: ((r: IteratorResult<T>) => void)[] = [];
  private failure: Error | null = null;
  private ended = false;
  private readonly maxBuffered: number;
  private readonly onClose: () => void;

  constructor(maxBuffered: number, onClose: () => void) {
    this.maxBuffered = maxBuffered;
    this.onClose = onClose;
  }

  push(event: T): void {
    if (this.ended) return;
    const waiter = this.waiters.shift();
    if (waiter !== undefined) {
      waiter({ value: event, done: false });
      return;
    }
    if (this.buffer.length >= this.maxBuffered) {
      this.failure = new SubscriptionOverflowError('SUBSCRIPTION_OVERFLOW', `subscriber fell ${this.maxBuffered} events behind`, { maxBuffered: this.maxBuffered });
      this.close();
      return;
    }
    this.buffer.push(event);
  }

  next(): Promise<IteratorResult<T>> {
    if (this.buffer.length > 0) return Promise.resolve({ value: this.buffer.shift()!, done: false });
    if (this.failure !== null) return Promise.reject(this.failure);
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => {
      this.waiters.push(resolve);
    });
  }

  return(): Promise<IteratorResult<T>> {
    this.close();
    return Promise.resolve({ value: undefined, done: true });
  }

  close(): void {
    if (this.ended) return;
    this.ended = true;
    this.onClose();
    for (const waiter of this.waiters.splice(0)) waiter({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}
