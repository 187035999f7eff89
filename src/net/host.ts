/**
 * What the network layer needs from the node it serves: the seam between net/ and the node
 * (FieldNode implements it; a simulator can too). Everything here is the node's own data.
 */
import type { PrivateKey } from '@libp2p/interface';
import type { Certificate } from '../core/cert.ts';
import type { ForkProof } from '../core/chain.ts';
import type { DeviceId } from '../core/keys.ts';
import type { OpId } from '../core/op.ts';
import type { Tips } from '../core/sync/frames.ts';
import type { VersionVector } from '../core/version-vector.ts';

export interface MeshHost {
  readonly device: DeviceId;
  readonly team: string;
  readonly hqDevice: DeviceId;
  readonly certificate: Certificate | null;
  readonly privateKey: PrivateKey;
  versionVector(): VersionVector;
  /** Our tips as a sync session offers them (below every proven fork point), with their op ids. */
  syncTips(): Promise<Tips>;
  certificates(): Uint8Array[];
  /** The certificate held for a device (who a peer is, its role), or null. */
  certificateOf(device: DeviceId): Certificate | null;
  forkProofs(): Promise<ForkProof[]>;
  loadRange(device: DeviceId, fromSeq: number, toSeq: number, maxBytes: number): Promise<Uint8Array[]>;
  /** All or nothing; throws a FieldmeshError for a bad run. */
  ingest(encoded: readonly Uint8Array[], device?: DeviceId): Promise<unknown>;
  addCertificates(encoded: readonly Uint8Array[]): Promise<DeviceId[]>;
  addForkProof(proof: ForkProof): Promise<boolean>;
  /** Ids of ops we do not hold that parked ops wait for (at most `limit`, none of `exclude`). */
  missingBases(limit: number, exclude: ReadonlySet<OpId>): Promise<OpId[]>;
  /** Envelopes of the void ops (past a fork point) among `ids` that we hold. */
  voidOps(ids: readonly OpId[]): Promise<Uint8Array[]>;
  /** Keeps void ops a peer sent by id; throws a FieldmeshError for a bad one (nothing kept). */
  addVoidOps(encoded: readonly Uint8Array[]): Promise<unknown>;
  isRevoked(device: DeviceId): boolean;
  /** The time peers' certificates are judged at (core/cert.ts admissionTimeMs). */
  admissionNowMs(): number;
  onAdvanced(listener: (tips: Readonly<Record<DeviceId, number>>) => void): () => void;
  onFork(listener: (proof: ForkProof) => void): () => void;
  /** Void ops newly kept (fetched by id), for the peers that asked for them. */
  onVoids(listener: (envelopes: readonly Uint8Array[]) => void): () => void;
}
