/**
 * A simulated disk: memory-level (the same abstract-level interface LevelDB has) whose batches
 * become durable only when the simulator flushes it, a few virtual milliseconds after they were
 * written. The Store's promises resolve only then, exactly as a synced LevelDB batch resolves after
 * fsync. A crash drops every batch not yet flushed; the process that awaited them is gone, so
 * their promises never settle. The disk object itself survives the crash and is reopened.
 */
import { MemoryLevel } from 'memory-level';

interface EncodedOp {
  readonly type: 'put' | 'del';
  readonly key: unknown;
  readonly value?: unknown;
}

type RawBatch = (this: MemoryLevel<string, Uint8Array>, operations: readonly EncodedOp[], options: object) => Promise<void>;
type RawGet = (this: MemoryLevel<string, Uint8Array>, key: unknown, options: object) => unknown;

// memory-level's private write and read (abstract-level calls them with encoded keys and values).
const memoryBatch = (MemoryLevel.prototype as unknown as { _batch: RawBatch })._batch;
const memoryGetSync = (MemoryLevel.prototype as unknown as { _getSync: RawGet })._getSync;

interface Unflushed {
  readonly operations: readonly EncodedOp[];
  /** With ackBeforeFlush: how to undo it if the disk crashes before it is flushed. */
  readonly undo: readonly EncodedOp[] | null;
  readonly resolve: () => void;
}

export class SimDisk extends MemoryLevel<string, Uint8Array> {
  private unflushed: Unflushed[] = [];
  /** Called when a batch starts waiting for a flush (the simulator schedules one). */
  onUnflushed: () => void = () => undefined;
  /**
   * Broken-variant switch: acknowledge a batch as soon as it is written to memory, before it is
   * durable (a disk cache that lies about fsync). A crash then loses acknowledged writes.
   */
  readonly ackBeforeFlush: boolean;
  /** Batches flushed and batches a crash dropped, for the run's statistics. */
  flushed = 0;
  dropped = 0;

  constructor(options: { ackBeforeFlush?: boolean } = {}) {
    super({ keyEncoding: 'utf8', valueEncoding: 'view' });
    this.ackBeforeFlush = options.ackBeforeFlush ?? false;
  }

  get pendingBatches(): number {
    return this.unflushed.length;
  }

  async _batch(operations: readonly EncodedOp[], options: object): Promise<void> {
    if (this.ackBeforeFlush) {
      const undo = operations.map((op): EncodedOp => {
        const previous = memoryGetSync.call(this, op.key, {});
        return previous === undefined ? { type: 'del', key: op.key } : { type: 'put', key: op.key, value: previous };
      });
      await memoryBatch.call(this, operations, options);
      this.unflushed.push({ operations: [], undo: undo.reverse(), resolve: () => undefined });
      this.onUnflushed();
      return;
    }
    await new Promise<void>((resolve) => {
      this.unflushed.push({ operations, undo: null, resolve });
      this.onUnflushed();
    });
  }

  /** Makes every written batch durable, in write order, and resolves their writers. */
  async flush(): Promise<void> {
    const batches = this.unflushed;
    this.unflushed = [];
    for (const batch of batches) {
      if (batch.operations.length > 0) await memoryBatch.call(this, batch.operations, {});
      this.flushed++;
      batch.resolve();
    }
  }

  /** Everything durable on the disk now, copied (a backup); empty when the disk is not open. */
  async backup(): Promise<[Buffer, Buffer][]> {
    if (this.status !== 'open') return [];
    // As stored (memory-level keeps keys and values as buffers): restore() writes them back raw.
    const entries = await this.iterator({ keyEncoding: 'buffer', valueEncoding: 'buffer' }).all();
    return entries.map(([key, value]) => [Buffer.from(key), Buffer.from(value)]);
  }

  /** Restores a backup: the disk holds exactly its entries (any unflushed batch must be gone already). */
  async restore(entries: readonly (readonly [Buffer, Buffer])[]): Promise<void> {
    const keys = await this.keys({ keyEncoding: 'buffer' }).all();
    const operations: EncodedOp[] = [...keys.map((key): EncodedOp => ({ type: 'del', key })), ...entries.map(([key, value]): EncodedOp => ({ type: 'put', key, value: Buffer.from(value) }))];
    await memoryBatch.call(this, operations, {});
  }

  /** Power loss: every batch not flushed is gone (undone, when it was acknowledged early). */
  async crash(): Promise<void> {
    const batches = this.unflushed;
    this.unflushed = [];
    this.dropped += batches.length;
    for (const batch of batches.reverse()) if (batch.undo !== null) await memoryBatch.call(this, batch.undo, {});
  }
}
