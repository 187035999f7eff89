/**
 * The simulated team: HQ, gateways and field devices with keys derived from the seed, HQ-issued
 * enrollment certificates, the domains every node shares, and HQ's acceptance policy (the real
 * hq/policy.ts), so that some ops are rejected and statuses have receipts to agree with.
 */
import { createHash } from 'node:crypto';
import { issueCertificate, type Role } from '../core/cert.ts';
import { signerFromSeed, type DeviceSigner } from '../core/keys.ts';
import { MERGE_FUNCTIONS, type ResolutionConfig, type DomainPolicy, type Strategy } from '../core/strategies.ts';
import { Policy } from '../hq/policy.ts';

export const SIM_TEAM = 'sim-team';
/** Virtual time 0 is this physical time (2026-11-25T08:00:00Z) on a clock without drift. */
export const SIM_EPOCH_MS = Date.UTC(2026, 10, 25, 8, 0, 0);
const DAY_MS = 24 * 3600 * 1000;

/** One domain per conflict strategy, so every strategy sees concurrent writes. */
export const SIM_DOMAINS: Readonly<Record<string, DomainPolicy | Strategy>> = {
  evidence: { strategy: 'merge', merge: { tags: MERGE_FUNCTIONS.union } },
  case: 'manual',
  asset: 'server-wins',
  task: 'client-wins',
};

/**
 * HQ rejects an op whose `score` is 0 (SCHEMA) and field devices' writes to `asset`
 * (ROLE_NOT_ALLOWED): both happen often enough in every run to exercise failed statuses.
 */
export const SIM_POLICY = new Policy({
  evidence: { schema: { type: 'object', properties: { score: { type: 'integer', minimum: 1 } } } },
  case: { schema: { type: 'object', properties: { score: { type: 'integer', minimum: 1 } } } },
  asset: { writers: ['gateway', 'server'] },
  task: {},
});

export interface Member {
  readonly index: number;
  readonly name: string;
  readonly role: Role;
  readonly signer: DeviceSigner;
  readonly cert: Uint8Array;
}

export interface Team {
  readonly hq: Member;
  readonly members: readonly Member[];
  readonly resolution: ResolutionConfig;
}

/** Member 0 is HQ, members 1..gateways are gateways, the rest field devices. */
export function createTeam(seed: number, nodes: number, gateways: number): Team {
  const signers = Array.from({ length: nodes }, (_, i) => signerFromSeed(createHash('sha256').update(`fieldmesh-sim/${seed}/${i}`).digest()));
  const hqSigner = signers[0]!;
  const members = signers.map((signer, index): Member => {
    const role: Role = index === 0 ? 'server' : index <= gateways ? 'gateway' : 'field';
    const name = index === 0 ? 'hq' : role === 'gateway' ? `gw${index}` : `f${index}`;
    const issuedMs = SIM_EPOCH_MS - DAY_MS;
    const cert = issueCertificate({ team: SIM_TEAM, device: signer.device, user: `user-${name}`, role, issuedMs, expiresMs: issuedMs + 3650 * DAY_MS }, hqSigner);
    return { index, name, role, signer, cert: cert.bytes };
  });
  return { hq: members[0]!, members, resolution: { hqDevice: hqSigner.device, domains: SIM_DOMAINS } };
}
