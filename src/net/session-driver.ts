/**
 * Pumps bytes between one libp2p stream and one SyncSession, and carries out the session's
 * commands against the MeshHost: loading log ranges and single ops, ingesting frames, storing
 * certificates, fork proofs and void ops. Sends go out in order through one queue; every await has a timeout.
 */
import type { Connection, Stream } from '@libp2p/interface';
import { InvalidDataLengthLengthError, lpStream } from '@libp2p/utils';
import { decode as decodeVarint, encodingLength } from 'uint8-varint';
import type { Uint8ArrayList } from 'uint8arraylist';
import { FieldmeshError } from '../core/errors.ts';
import type { DeviceId } from '../core/keys.ts';
import { SyncSession, type Command, type SyncLimits } from '../core/sync/session.ts';
import type { MeshHost } from './host.ts';

export interface DriverHooks {
  /** The peer proved who it is; return false to refuse the session (e.g. a duplicate). */
  admitted(driver: SessionDriver, device: DeviceId): boolean;
  closed(driver: SessionDriver, code: string, blame: boolean, byPeer: boolean): void;
  /** New certificates or fork proofs to pass on to the other peers. */
  learnedCerts(from: SessionDriver, certs: readonly Uint8Array[]): void;
  caughtUp(driver: SessionDriver): void;
}

export interface DriverLimits extends SyncLimits {
  /** Time to receive the peer's hello. @default 10000 */
  readonly handshakeTimeoutMs: number;
  /** Time for one frame to be written (a peer that stops reading is dropped). @default 30000 */
  readonly writeTimeoutMs: number;
  /** Time for the peer to answer our query (a fork search waits for it, and holds its ops back). @default 30000 */
  readonly answerTimeoutMs: number;
}

export class SessionDriver {
  readonly session: SyncSession;
  readonly connection: Connection;
  lastSeenMs: number;
  readonly stream: Stream;
  private readonly node: MeshHost;
  private readonly hooks: DriverHooks;
  private readonly limits: DriverLimits;
  private readonly lp: ReturnType<typeof lpStream>;
  private writes: Promise<void> = Promise.resolve();
  private storeQueue: Promise<void> = Promise.resolve();
  /** Outcomes of ingests in flight, reported to the session in the order they were queued. */
  private ingestReplies: Promise<void> = Promise.resolve();
  private done = false;
  private readonly now: () => number;
  /** The deadline of our unanswered query, if any. */
  private answerTimer: NodeJS.Timeout | null = null;

  constructor(stream: Stream, connection: Connection, session: SyncSession, node: MeshHost, hooks: DriverHooks, limits: DriverLimits, now: () => number) {
    this.stream = stream;
    this.connection = connection;
    this.session = session;
    this.node = node;
    this.hooks = hooks;
    this.limits = limits;
    this.now = now;
    this.lastSeenMs = now();
    const maxLengthLength = encodingLength(limits.maxFrameBytes);
    this.lp = lpStream(stream, {
      maxDataLength: limits.maxFrameBytes,
      maxLengthLength,
      // A length prefix that never ends (0xff 0xff ...) is refused as soon as it is too long.
      lengthDecoder: (data: Uint8ArrayList) => {
        if (data.byteLength > maxLengthLength) throw new InvalidDataLengthLengthError(`frame length prefix longer than ${maxLengthLength} bytes`);
        return decodeVarint(data);
      },
      // Room for a whole window of frames the peer may send before waiting for credit.
      maxBufferSize: limits.windowBytes + 2 * limits.maxFrameBytes,
    });
  }

  private readonly admittedWaiters: (() => void)[] = [];
  /** When the peer was admitted (null before). */
  admittedAt: number | null = null;

  onAdmitted(resolve: () => void): void {
    this.admittedWaiters.push(resolve);
  }

  get closed(): boolean {
    return this.done;
  }

  /** Runs until the stream ends or the session closes. Never throws. */
  async run(): Promise<void> {
    this.dispatch(this.session.start());
    const handshake = setTimeout(() => {
      if (this.session.device === null) this.dispatch(this.session.close('HANDSHAKE_TIMEOUT', `no hello within ${this.limits.handshakeTimeoutMs} ms`));
    }, this.limits.handshakeTimeoutMs);
    try {
      while (!this.done) {
        const frame = await this.lp.read();
        this.lastSeenMs = this.now();
        this.dispatch(this.session.receive(frame.subarray()));
      }
    } catch (err) {
      if (!this.done) {
        const e = err as Error & { name?: string };
        // An oversized length prefix is the peer's fault; a closed or reset stream is not.
        const blame = ['InvalidDataLengthError', 'InvalidDataLengthLengthError', 'InvalidMessageLengthError', 'StreamBufferError'].includes(e.name);
        this.finish(blame ? 'FRAME_TOO_LARGE' : 'STREAM_ENDED', e.message, blame);
      }
    } finally {
      clearTimeout(handshake);
    }
  }

  /** Local reasons to end (node stopping, peer revoked). */
  stop(code: string, message: string): void {
    this.dispatch(this.session.close(code, message));
  }

  /** Feeds commands produced outside the read loop (local writes, forwarded certs). */
  dispatch(commands: readonly Command[]): void {
    for (const cmd of commands) {
      if (this.done) return;
      switch (cmd.kind) {
        case 'send':
          this.send(cmd.bytes);
          if (cmd.frame.type === 'query') this.awaitAnswer();
          break;
        case 'admitted':
          if (cmd.device !== this.connection.remotePeer.toString()) {
            this.dispatch(this.session.close('WRONG_PEER', `certificate is for ${cmd.device}, the connection is ${this.connection.remotePeer.toString()}`));
            this.finish('WRONG_PEER', 'certificate does not match the connection', true);
            return;
          }
          if (!this.hooks.admitted(this, cmd.device)) {
            this.dispatch(this.session.close('DUPLICATE', 'already syncing with this peer'));
            return;
          }
          this.admittedAt = this.now();
          for (const resolve of this.admittedWaiters.splice(0)) resolve();
          // Its certificate was checked: keep it, before any of its ops need it.
          this.stored(async () => {
            if ((await this.node.addCertificates([cmd.cert])).length > 0) this.hooks.learnedCerts(this, [cmd.cert]);
          });
          break;
        case 'load':
          void this.task(async () => {
            const ops = await this.node.loadRange(cmd.device, cmd.fromSeq, cmd.toSeq, cmd.maxBytes);
            this.dispatch(this.session.loaded(cmd.device, cmd.fromSeq, ops));
          });
          break;
        case 'read':
          void this.task(async () => {
            const [bytes] = await this.node.loadRange(cmd.device, cmd.seq, cmd.seq, Number.MAX_SAFE_INTEGER);
            this.dispatch(this.session.opRead(cmd.purpose, bytes ?? null));
          });
          break;
        case 'proof':
          // A proof we built from the peer's answer and our own op: a failure is ours, not the peer's.
          this.stored(async () => {
            await this.node.addForkProof(cmd.proof);
          });
          break;
        case 'ingest':
          // Queued in the store in frame order without waiting for the last one to be durable
          // (frames in flight share a batch); the session hears back in the same order.
          this.stored(async () => {
            const outcome = this.node.ingest(cmd.ops, cmd.device).then(
              () => null,
              (err: unknown) => err,
            );
            this.ingestReplies = this.ingestReplies.then(() =>
              this.task(async () => {
                const err = await outcome;
                if (err === null) this.dispatch(this.session.ingested(null));
                else if (err instanceof FieldmeshError) this.dispatch(this.session.ingested(err));
                else throw err;
              }),
            );
          });
          break;
        case 'certs':
          this.storedOrBlame(async () => {
            if ((await this.node.addCertificates(cmd.certs)).length > 0) this.hooks.learnedCerts(this, cmd.certs);
            this.dispatch(this.session.settled(cmd.frameBytes));
          });
          break;
        case 'fork':
          this.storedOrBlame(async () => {
            await this.node.addForkProof({ device: cmd.device, seq: cmd.seq, ops: cmd.ops });
            this.dispatch(this.session.settled(cmd.frameBytes));
          });
          break;
        case 'missing':
          // Behind the store work queued before it: parked ops it left are then known.
          this.stored(async () => {
            this.dispatch(this.session.missing(await this.node.missingBases(cmd.limit, cmd.exclude)));
          });
          break;
        case 'lookup':
          this.stored(async () => {
            this.dispatch(this.session.voidsRead(await this.node.voidOps(cmd.ids), cmd.frameBytes));
          });
          break;
        case 'voids':
          this.storedOrBlame(async () => {
            await this.node.addVoidOps(cmd.ops);
            this.dispatch(this.session.settled(cmd.frameBytes));
          });
          break;
        case 'caughtUp':
          this.hooks.caughtUp(this);
          break;
        case 'close':
          // The peer said goodbye: what we still had queued for it is moot, and its code is why the session ended.
          if (cmd.byPeer === true) {
            this.finish(cmd.code, cmd.message, cmd.blame, true);
            return;
          }
          // Let queued writes (our goodbye frame) go out before closing.
          void this.writes.then(
            () => this.finish(cmd.code, cmd.message, cmd.blame),
            () => this.finish(cmd.code, cmd.message, cmd.blame),
          );
          return;
      }
    }
  }

  /**
   * A peer that leaves our query unanswered is dropped, blamed: the search would wait for ever.
   * While its frames keep coming (the answer may queue behind a window of its ops on a slow
   * link) the wait goes on; with the search running we credit none of its ops, so that is
   * bounded by its window.
   */
  private awaitAnswer(): void {
    if (this.answerTimer !== null) clearTimeout(this.answerTimer);
    const queries = this.session.stats.queriesOut;
    const check = (): void => {
      this.answerTimer = null;
      if (this.done || this.session.stats.queriesOut !== queries || !this.session.awaitingAnswer) return;
      const quietMs = this.now() - this.lastSeenMs;
      if (quietMs < this.limits.answerTimeoutMs) {
        this.answerTimer = setTimeout(check, this.limits.answerTimeoutMs - quietMs);
        return;
      }
      const message = `no answer to our query, and no frame for ${this.limits.answerTimeoutMs} ms`;
      this.dispatch(this.session.close('ANSWER_TIMEOUT', message));
      this.finish('ANSWER_TIMEOUT', message, true);
    };
    this.answerTimer = setTimeout(check, this.limits.answerTimeoutMs);
  }

  private send(bytes: Uint8Array): void {
    this.writes = this.writes.then(async () => {
      if (this.done) return;
      await withTimeout(this.lp.write(bytes), this.limits.writeTimeoutMs, 'write');
    });
    this.writes.catch((err: Error) => this.finish('WRITE_FAILED', err.message, false));
  }

  /** Store work (certificates, fork proofs, ingests) runs in arrival order: certificates before the ops that need them. */
  private stored(work: () => Promise<void>): void {
    this.storeQueue = this.storeQueue.then(() => (this.done ? undefined : this.task(work)));
  }

  /** Store work whose typed failure is the peer's fault (a bad certificate or fork proof): close, blaming it. */
  private storedOrBlame(work: () => Promise<void>): void {
    this.stored(async () => {
      try {
        await work();
      } catch (err) {
        if (!(err instanceof FieldmeshError)) throw err;
        this.dispatch(this.session.close(err.code, err.message));
        this.finish(err.code, err.message, true);
      }
    });
  }

  private async task(work: () => Promise<void>): Promise<void> {
    try {
      await work();
    } catch (err) {
      this.finish('LOCAL_ERROR', (err as Error).message, false);
    }
  }

  private finish(code: string, message: string, blame: boolean, byPeer = false): void {
    if (this.done) return;
    this.done = true;
    if (this.answerTimer !== null) clearTimeout(this.answerTimer);
    if (blame) this.stream.abort(new Error(`${code}: ${message}`));
    else void this.stream.close().catch(() => this.stream.abort(new Error(code)));
    this.hooks.closed(this, code, blame, byPeer);
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise,
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}
