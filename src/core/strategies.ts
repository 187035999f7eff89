/**
 * Conflict strategies: how a register's concurrent writes resolve to one value (docs/conflicts.md).
 *
 *  - merge (default): a write beats a concurrent delete (add-wins); among concurrent writes the
 *    field's merge function combines them if one is registered, else the last writer by
 *    (HLC, device) wins.
 *  - server-wins: if HQ (the team's root device) wrote concurrently, only HQ's writes count
 *    (HQ's delete beats a field device's update); then as merge.
 *  - client-wins: if a field device wrote concurrently, only field devices' writes count; then as merge.
 *  - manual: as merge for the value shown meanwhile, but the entity carries an open conflict
 *    listing every candidate until a `resolve` op supersedes them.
 */
import { encodeCanonical } from './cbor.ts';
import { InvalidInputError } from './errors.ts';
import { compareStamped } from './hlc.ts';
import type { DeviceId } from './keys.ts';
import type { Value } from './value.ts';
import { equals } from 'uint8arrays';
import type { Write } from './entity.ts';

export const STRATEGIES = ['merge', 'server-wins', 'client-wins', 'manual'] as const;
export type Strategy = (typeof STRATEGIES)[number];

/** Combines concurrent values of one field (given in (HLC, device) order) into one. Must be pure. */
export type MergeFunction = (values: readonly Value[]) => Value;

export interface DomainPolicy {
  readonly strategy: Strategy;
  /** Per-field merge functions, used by every strategy among the writes it keeps. */
  readonly merge?: Readonly<Record<string, MergeFunction>>;
}

/** Rules every node of a team must share: the same config gives the same state everywhere. */
export interface ResolutionConfig {
  /** The team's HQ device: its receipts and revocations count, and server-wins prefers it. */
  readonly hqDevice: DeviceId;
  /** Domain -> policy; unlisted domains use `merge` without merge functions. */
  readonly domains?: Readonly<Record<string, DomainPolicy | Strategy>>;
}

export function policyOf(config: ResolutionConfig, domain: string): DomainPolicy {
  // Own entries only: a domain named 'constructor' must not read Object.prototype.constructor.
  const entry = config.domains !== undefined && Object.hasOwn(config.domains, domain) ? config.domains[domain] : undefined;
  if (entry === undefined) return { strategy: 'merge' };
  const policy = typeof entry === 'string' ? { strategy: entry } : entry;
  if (!(STRATEGIES as readonly string[]).includes(policy.strategy)) {
    throw new InvalidInputError('BAD_STRATEGY', `domain ${domain}: unknown strategy ${policy.strategy}`, { domain });
  }
  return policy;
}

/** Built-in merge functions. */
export const MERGE_FUNCTIONS = {
  /** Set union of arrays (non-arrays count as one element), sorted by canonical encoding. */
  union: ((values) => {
    const seen = new Map<string, Value>();
    for (const value of values) {
      for (const item of Array.isArray(value) ? (value as Value[]) : [value]) {
        seen.set(Buffer.from(encodeCanonical(item)).toString('hex'), item);
      }
    }
    return [...seen.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, v]) => v);
  }) as MergeFunction,
  max: ((values) => values.reduce((a, b) => ((b as number) > (a as number) ? b : a))) as MergeFunction,
  min: ((values) => values.reduce((a, b) => ((b as number) < (a as number) ? b : a))) as MergeFunction,
} as const;

const byStamp = (a: Write, b: Write) => compareStamped(a.hlc, a.device, b.hlc, b.device);

export interface Resolved {
  readonly deleted: boolean;
  readonly value: Value;
}

export const ABSENT: Resolved = { deleted: true, value: null };

/** The value a register shows under a policy. Candidates are the register's maximal writes. */
export function resolveRegister(candidates: readonly Write[], policy: DomainPolicy, field: string, hqDevice: DeviceId): Resolved {
  if (candidates.length === 0) return ABSENT;
  let pool = candidates;
  if (candidates.length > 1 && policy.strategy === 'server-wins') {
    const hq = candidates.filter((c) => c.device === hqDevice);
    if (hq.length > 0) pool = hq;
  } else if (candidates.length > 1 && policy.strategy === 'client-wins') {
    const clients = candidates.filter((c) => c.device !== hqDevice);
    if (clients.length > 0) pool = clients;
  }
  const live = pool.filter((c) => !c.deleted).sort(byStamp);
  if (live.length === 0) return ABSENT;
  if (live.length === 1) return { deleted: false, value: live[0]!.value };
  // Own entries only, as in policyOf: a field named 'toString' has no merge function.
  const mergeFn = policy.merge !== undefined && Object.hasOwn(policy.merge, field) ? policy.merge[field] : undefined;
  if (mergeFn !== undefined) return { deleted: false, value: mergeFn(live.map((c) => c.value)) };
  return { deleted: false, value: live[live.length - 1]!.value };
}

/** Whether concurrent candidates really disagree (two devices writing the same value do not). */
export function disagree(candidates: readonly Write[]): boolean {
  if (candidates.length < 2) return false;
  const first = candidates[0]!;
  const firstBytes = encodeCanonical(first.value);
  return candidates.some((c) => c.deleted !== first.deleted || !equals(encodeCanonical(c.value), firstBytes));
}
