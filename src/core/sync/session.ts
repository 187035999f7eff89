/**
 * One sync session with one peer, as a sans-I/O state machine: frames and completions in,
 * commands out. It never touches a socket, a disk or a clock; the driver (src/net) executes
 * its commands and reports back.
 *
 * Flow: both sides send hello (certificate, version vector, limits) and then their certificates
 * and fork proofs. Each side then sends the other the missing suffix of every log, oldest first,
 * one chained run per frame, while it has credit: the receiver grants credit for every frame it
 * has durably ingested, so a slow peer never makes the sender buffer without bound. After the
 * initial suffixes a side sends caughtUp; from then on new ops are pushed as they arrive.
 */
import { FieldmeshError, InvalidInputError, RuleViolationError } from '../errors.ts';
import type { DeviceId } from '../keys.ts';
import { LIMITS } from '../limits.ts';
import { seqOf, type VersionVector } from '../version-vector.ts';
import { decodeFrame, encodeFrame, SYNC_VERSION, type Frame } from './frames.ts';
import { parseOp } from '../op.ts';

export interface SyncLimits {
  /** Largest frame we accept (and the most we ever send the peer its own limit permitting). @default 1 MiB */
  readonly maxFrameBytes: number;
  /** Op-frame bytes we accept before granting more credit: our inbound buffer bound. @default 4 MiB */
  readonly windowBytes: number;
  /** Most certificates in one certs frame. @default 1024 */
  readonly maxCertsPerFrame: number;
}

export const DEFAULT_SYNC_LIMITS: SyncLimits = { maxFrameBytes: 1024 * 1024, windowBytes: 4 * 1024 * 1024, maxCertsPerFrame: 1024 };
/** The smallest frame limit a peer may declare: a fork proof of two ops of the largest size, plus framing. */
export const MIN_FRAME_BYTES = 2 * LIMITS.maxOpBytes + 1024;
/** Bytes of an ops frame besides the ops themselves (type, device id, array heads), bounded. */
export const OPS_FRAME_OVERHEAD = 128;

export interface LocalState {
  readonly team: string;
  readonly hq: DeviceId;
  readonly cert: Uint8Array;
  readonly vv: VersionVector;
  /** Certificates and fork proofs we hold, read when the peer is admitted (they may grow meanwhile). */
  readonly certs: () => readonly Uint8Array[];
  readonly forks: () => readonly { device: DeviceId; seq: number; ops: readonly [Uint8Array, Uint8Array] }[];
}

export type Command =
  | { readonly kind: 'send'; readonly bytes: Uint8Array; readonly frame: Frame }
  /** Read up to maxBytes of `device`'s log from fromSeq (at most to toSeq) and call `loaded`. */
  | { readonly kind: 'load'; readonly device: DeviceId; readonly fromSeq: number; readonly toSeq: number; readonly maxBytes: number }
  /** Ingest these ops (validated all-or-nothing) and call `ingested`. */
  | { readonly kind: 'ingest'; readonly device: DeviceId; readonly ops: readonly Uint8Array[] }
  /** Store these certificates, then call `settled(frameBytes)`. */
  | { readonly kind: 'certs'; readonly certs: readonly Uint8Array[]; readonly frameBytes: number }
  /** Check and store this fork proof, then call `settled(frameBytes)`. */
  | { readonly kind: 'fork'; readonly device: DeviceId; readonly seq: number; readonly ops: readonly [Uint8Array, Uint8Array]; readonly frameBytes: number }
  /** The peer is admitted: `device` from its certificate. */
  | { readonly kind: 'admitted'; readonly device: DeviceId; readonly cert: Uint8Array }
  | { readonly kind: 'caughtUp' }
  /** Close the stream. `blame` means the peer broke the protocol: back off before accepting it again. */
  | { readonly kind: 'close'; readonly code: string; readonly message: string; readonly blame: boolean };

/** Checks a peer's certificate; returns its device or throws a FieldmeshError. Supplied by the driver. */
export type Admit = (cert: Uint8Array) => DeviceId;

type Phase = 'hello' | 'open' | 'closed';

export class SyncSession {
  private readonly local: LocalState;
  private readonly limits: SyncLimits;
  private readonly admit: Admit;
  private phase: Phase = 'hello';
  private peerMaxFrame = MIN_FRAME_BYTES;
  private credit = 0;
  /** What we know the peer holds: its hello, plus what went either way since. */
  private peerVV: Record<DeviceId, number> = {};
  /** What we hold, as far as this session knows. */
  private ourVV: Record<DeviceId, number>;
  private loading = false;
  private ingesting = false;
  private readonly inbound: { device: DeviceId; ops: readonly Uint8Array[]; bytes: number }[] = [];
  private inboundBytes = 0;
  private initialPending = true;
  private peerDevice: DeviceId | null = null;
  /** Ops frames sent and received, op bytes sent and received. */
  readonly stats = { framesOut: 0, framesIn: 0, opsOut: 0, opsIn: 0, bytesOut: 0, bytesIn: 0 };
  peerCaughtUp = false;

  constructor(local: LocalState, admit: Admit, limits: SyncLimits = DEFAULT_SYNC_LIMITS) {
    if (limits.windowBytes < limits.maxFrameBytes || limits.maxFrameBytes < MIN_FRAME_BYTES) {
      throw new InvalidInputError('BAD_SYNC_LIMITS', `need windowBytes >= maxFrameBytes >= ${MIN_FRAME_BYTES}`);
    }
    this.local = local;
    this.admit = admit;
    this.limits = limits;
    this.ourVV = { ...local.vv };
  }

  get device(): DeviceId | null {
    return this.peerDevice;
  }

  get closed(): boolean {
    return this.phase === 'closed';
  }

  /** How many ops of ours the peer lacks, as far as we know. */
  get peerBehind(): number {
    let n = 0;
    for (const [device, seq] of Object.entries(this.ourVV)) n += Math.max(0, seq - seqOf(this.peerVV, device));
    return n;
  }

  /** How many ops the peer has that we lack, as of what it told us. */
  get weAreBehind(): number {
    let n = 0;
    for (const [device, seq] of Object.entries(this.peerVV)) n += Math.max(0, seq - seqOf(this.ourVV, device));
    return n;
  }

  start(): Command[] {
    const { team, hq, cert, vv } = this.local;
    return [this.send({ type: 'hello', version: SYNC_VERSION, team, hq, cert, vv, maxFrameBytes: this.limits.maxFrameBytes, windowBytes: this.limits.windowBytes })];
  }

  /** One frame from the peer (without its length prefix). */
  receive(bytes: Uint8Array): Command[] {
    if (this.phase === 'closed') return [];
    let frame: Frame;
    try {
      frame = decodeFrame(bytes, this.limits.maxFrameBytes);
    } catch (err) {
      return this.fail(err as FieldmeshError);
    }
    this.stats.framesIn++;
    if (this.phase === 'hello') {
      if (frame.type !== 'hello') return this.violation('EXPECTED_HELLO', `first frame must be hello, got ${frame.type}`);
      return this.onHello(frame);
    }
    switch (frame.type) {
      case 'hello':
        return this.violation('DUPLICATE_HELLO', 'hello sent twice');
      case 'certs':
        if (frame.certs.length > this.limits.maxCertsPerFrame) return this.violation('TOO_MANY_CERTS', `more than ${this.limits.maxCertsPerFrame} certificates in one frame`);
        if (!this.takeWindow(bytes.length)) return this.violation('FLOW_CONTROL', `peer sent ${this.inboundBytes} bytes beyond the ${this.limits.windowBytes}-byte window`);
        return [{ kind: 'certs', certs: frame.certs, frameBytes: bytes.length }];
      case 'fork':
        if (!this.takeWindow(bytes.length)) return this.violation('FLOW_CONTROL', `peer sent ${this.inboundBytes} bytes beyond the ${this.limits.windowBytes}-byte window`);
        return [{ kind: 'fork', device: frame.device, seq: frame.seq, ops: frame.ops, frameBytes: bytes.length }];
      case 'credit':
        this.credit += frame.bytes;
        return this.pump();
      case 'caughtUp':
        this.peerCaughtUp = true;
        return [];
      case 'goodbye':
        this.phase = 'closed';
        return [{ kind: 'close', code: frame.code, message: `peer said goodbye: ${frame.message}`, blame: false }];
      case 'ops': {
        // The peer holds what it sends: never offer these back, even before they are stored.
        let last;
        try {
          last = parseOp(frame.ops[frame.ops.length - 1]!).op;
        } catch (err) {
          return this.fail(err as FieldmeshError);
        }
        if (last.device !== frame.device) return this.violation('WRONG_DEVICE', `ops frame of ${frame.device} holds an op of ${last.device}`);
        this.peerVV[frame.device] = Math.max(seqOf(this.peerVV, frame.device), last.seq);
        if (!this.takeWindow(bytes.length)) return this.violation('FLOW_CONTROL', `peer sent ${this.inboundBytes} bytes beyond the ${this.limits.windowBytes}-byte window`);
        this.stats.opsIn += frame.ops.length;
        this.stats.bytesIn += bytes.length;
        this.inbound.push({ device: frame.device, ops: frame.ops, bytes: bytes.length });
        return this.nextIngest();
      }
    }
  }

  private onHello(hello: Frame & { type: 'hello' }): Command[] {
    if (hello.version !== SYNC_VERSION) return this.violation('VERSION', `peer speaks sync version ${hello.version}, we speak ${SYNC_VERSION}`);
    if (hello.team !== this.local.team || hello.hq !== this.local.hq) return this.violation('WRONG_TEAM', `peer is of team ${hello.team} (HQ ${hello.hq})`);
    if (hello.maxFrameBytes < MIN_FRAME_BYTES || hello.windowBytes < hello.maxFrameBytes) {
      return this.violation('BAD_LIMITS', `peer limits too small: frame ${hello.maxFrameBytes}, window ${hello.windowBytes}`);
    }
    try {
      this.peerDevice = this.admit(hello.cert);
    } catch (err) {
      return this.fail(err as FieldmeshError);
    }
    this.phase = 'open';
    this.peerMaxFrame = Math.min(hello.maxFrameBytes, this.limits.maxFrameBytes);
    this.credit = hello.windowBytes;
    this.peerVV = { ...hello.vv };
    const out: Command[] = [{ kind: 'admitted', device: this.peerDevice, cert: hello.cert }];
    out.push(...this.sendCerts(this.local.certs()));
    out.push(...this.sendForks(this.local.forks()));
    out.push(...this.pump());
    return out;
  }

  /** Certificates to forward to the peer (new ones we learned, or all at the start). */
  sendCerts(certs: readonly Uint8Array[]): Command[] {
    if (this.phase !== 'open') return [];
    const out: Command[] = [];
    let batch: Uint8Array[] = [];
    let bytes = 0;
    for (const cert of certs) {
      // Each frame within the peer's limit (certificates are at most 1 KiB) and the count limit.
      if (batch.length > 0 && (bytes + cert.length + 8 > this.peerMaxFrame - OPS_FRAME_OVERHEAD || batch.length >= this.limits.maxCertsPerFrame)) {
        out.push(this.sendCosting({ type: 'certs', certs: batch }));
        batch = [];
        bytes = 0;
      }
      batch.push(cert);
      bytes += cert.length + 8;
    }
    if (batch.length > 0) out.push(this.sendCosting({ type: 'certs', certs: batch }));
    return out;
  }

  sendForks(forks: ReturnType<LocalState['forks']>): Command[] {
    if (this.phase !== 'open') return [];
    return forks.map((f) => this.sendCosting({ type: 'fork', device: f.device, seq: f.seq, ops: f.ops }));
  }

  /** We hold more now (our own writes, or ops from any peer): push what this peer lacks. */
  localAdvanced(vv: VersionVector): Command[] {
    for (const [device, seq] of Object.entries(vv)) if (seq > seqOf(this.ourVV, device)) this.ourVV[device] = seq;
    return this.pump();
  }

  /** The driver read ops for a `load` command (fewer than asked, or none, is fine). */
  loaded(device: DeviceId, fromSeq: number, ops: readonly Uint8Array[]): Command[] {
    this.loading = false;
    if (this.phase !== 'open') return [];
    if (ops.length === 0) {
      // We do not hold what we thought (e.g. refused past a fork): stop offering it.
      this.ourVV[device] = Math.min(seqOf(this.ourVV, device), fromSeq - 1);
      return this.pump();
    }
    const cmd = this.send({ type: 'ops', device, ops });
    this.credit -= cmd.bytes.length;
    this.stats.opsOut += ops.length;
    this.stats.bytesOut += cmd.bytes.length;
    this.peerVV[device] = Math.max(seqOf(this.peerVV, device), fromSeq + ops.length - 1);
    return [cmd, ...this.pump()];
  }

  /**
   * The driver finished the last `ingest` command: the seq of the frame's last op once stored,
   * or why the frame was refused (the session then closes, blaming the peer).
   */
  ingested(outcome: { readonly lastSeq: number } | { readonly error: FieldmeshError }): Command[] {
    this.ingesting = false;
    if (this.phase !== 'open') return [];
    const done = this.inbound.shift()!;
    if ('error' in outcome) return this.fail(outcome.error);
    this.inboundBytes -= done.bytes;
    this.peerVV[done.device] = Math.max(seqOf(this.peerVV, done.device), outcome.lastSeq);
    this.ourVV[done.device] = Math.max(seqOf(this.ourVV, done.device), outcome.lastSeq);
    return [this.send({ type: 'credit', bytes: done.bytes }), ...this.nextIngest()];
  }

  /** The driver stored a certs or fork frame: its bytes return to the peer as credit. */
  settled(frameBytes: number): Command[] {
    if (this.phase !== 'open') return [];
    this.inboundBytes -= frameBytes;
    return [this.send({ type: 'credit', bytes: frameBytes })];
  }

  /** Counts a frame against our window: every frame but hello, credit, caughtUp and goodbye does. */
  private takeWindow(bytes: number): boolean {
    this.inboundBytes += bytes;
    return this.inboundBytes <= this.limits.windowBytes;
  }

  /** Local reasons to end the session (stop, shutdown, timeouts). */
  close(code: string, message: string): Command[] {
    if (this.phase === 'closed') return [];
    const out = this.phase === 'open' ? [this.send({ type: 'goodbye', code, message })] : [];
    this.phase = 'closed';
    return [...out, { kind: 'close', code, message, blame: false }];
  }

  private nextIngest(): Command[] {
    if (this.ingesting || this.inbound.length === 0) return [];
    this.ingesting = true;
    const next = this.inbound[0]!;
    return [{ kind: 'ingest', device: next.device, ops: next.ops }];
  }

  private pump(): Command[] {
    if (this.phase !== 'open' || this.loading) return [];
    if (this.credit >= this.peerMaxFrame) {
      for (const device of Object.keys(this.ourVV).sort()) {
        const have = seqOf(this.peerVV, device);
        const top = this.ourVV[device]!;
        if (top > have) {
          this.loading = true;
          return [{ kind: 'load', device, fromSeq: have + 1, toSeq: top, maxBytes: this.peerMaxFrame - OPS_FRAME_OVERHEAD }];
        }
      }
    } else return [];
    if (this.initialPending) {
      this.initialPending = false;
      return [this.send({ type: 'caughtUp' }), { kind: 'caughtUp' }];
    }
    return [];
  }

  /**
   * Certificates and fork proofs count against the peer's window like ops (so a peer cannot be
   * made to queue them without bound); they are few and small, so they go out at once and the
   * credit they use comes back when the peer has stored them.
   */
  private sendCosting(frame: Frame): Command & { kind: 'send' } {
    const cmd = this.send(frame);
    this.credit -= cmd.bytes.length;
    return cmd;
  }

  private send(frame: Frame): Command & { kind: 'send' } {
    const bytes = encodeFrame(frame);
    this.stats.framesOut++;
    return { kind: 'send', bytes, frame };
  }

  private violation(code: string, message: string): Command[] {
    return this.fail(new RuleViolationError(code, message));
  }

  private fail(err: FieldmeshError): Command[] {
    if (this.phase === 'closed') return [];
    const code = err.code ?? 'ERROR';
    const out = [this.send({ type: 'goodbye', code, message: err.message })];
    this.phase = 'closed';
    return [...out, { kind: 'close', code, message: err.message, blame: true }];
  }
}
