/**
 * Bundles: ops (with the certificates and fork proofs needed to accept them) in a file, so data
 * can move by USB stick. Read through the same validation path as the network.
 *
 *   bundle := cbor [ "fieldmesh-bundle", 1, team, hq, [cert: bstr]*, [fork]*, [run]* ] • sha256(preceding bytes)
 *   fork   := [ device, seq, opA: bstr, opB: bstr ]
 *   run    := [ device, [op: bstr]+ ]                  consecutive ops of one device's log
 *
 * The trailing SHA-256 detects truncation and corruption before anything is parsed further;
 * forgery is caught by the op signatures and chains at ingest.
 */
import { createHash } from 'node:crypto';
import { equals } from 'uint8arrays';
import { decodeCanonical, encodeCanonical } from './cbor.ts';
import { decodeError } from './errors.ts';
import type { ForkProof } from './chain.ts';
import type { DeviceId } from './keys.ts';

const MAGIC = 'fieldmesh-bundle';
const VERSION = 1;

export interface Bundle {
  readonly team: string;
  readonly hq: DeviceId;
  readonly certs: readonly Uint8Array[];
  readonly forks: readonly ForkProof[];
  readonly runs: readonly { readonly device: DeviceId; readonly ops: readonly Uint8Array[] }[];
}

export function encodeBundle(bundle: Bundle): Uint8Array {
  const body = encodeCanonical([
    MAGIC,
    VERSION,
    bundle.team,
    bundle.hq,
    bundle.certs,
    bundle.forks.map((f) => [f.device, f.seq, f.ops[0], f.ops[1]]),
    bundle.runs.map((r) => [r.device, r.ops]),
  ]);
  const digest = createHash('sha256').update(body).digest();
  const out = new Uint8Array(body.length + 32);
  out.set(body);
  out.set(digest, body.length);
  return out;
}

export function decodeBundle(bytes: Uint8Array): Bundle {
  if (bytes.length < 33) throw decodeError('bundle', 'too short to be a bundle (truncated?)');
  const body = bytes.subarray(0, bytes.length - 32);
  const digest = createHash('sha256').update(body).digest();
  if (!equals(new Uint8Array(digest), bytes.subarray(bytes.length - 32))) throw decodeError('bundle', 'checksum mismatch: the file is truncated or corrupt');
  const raw = decodeCanonical(body, 'bundle');
  if (!Array.isArray(raw) || raw.length !== 7 || raw[0] !== MAGIC) throw decodeError('bundle', 'not a fieldmesh bundle');
  if (raw[1] !== VERSION) throw decodeError('bundle', `bundle version ${String(raw[1])} is not supported (${VERSION})`);
  const [, , team, hq, certs, forks, runs] = raw as [unknown, unknown, unknown, unknown, unknown, unknown, unknown];
  const isBytes = (v: unknown): v is Uint8Array => v instanceof Uint8Array;
  if (typeof team !== 'string' || typeof hq !== 'string' || !Array.isArray(certs) || !certs.every(isBytes) || !Array.isArray(forks) || !Array.isArray(runs)) throw decodeError('bundle', 'malformed header');
  return {
    team,
    hq,
    certs,
    forks: forks.map((f: unknown) => {
      if (!Array.isArray(f) || f.length !== 4 || typeof f[0] !== 'string' || typeof f[1] !== 'number' || !isBytes(f[2]) || !isBytes(f[3])) throw decodeError('bundle', 'malformed fork proof');
      return { device: f[0], seq: f[1], ops: [f[2], f[3]] as const };
    }),
    runs: runs.map((r: unknown) => {
      if (!Array.isArray(r) || r.length !== 2 || typeof r[0] !== 'string' || !Array.isArray(r[1]) || !(r[1] as unknown[]).every(isBytes)) throw decodeError('bundle', 'malformed run');
      return { device: r[0], ops: r[1] as Uint8Array[] };
    }),
  };
}
