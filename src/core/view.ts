/**
 * What users see of an entity: its resolved fields and, under the manual strategy, its open
 * conflict. A pure function of the entity's causal state and the team's resolution config.
 */
import { hash } from 'node:crypto';
import { encodeCanonical } from './cbor.ts';
import { EXISTS, type EntityState, type Write } from './entity.ts';
import type { Hlc } from './hlc.ts';
import type { DeviceId } from './keys.ts';
import type { OpId } from './op.ts';
import { disagree, policyOf, resolveRegister, type ResolutionConfig } from './strategies.ts';
import type { Value } from './value.ts';

export interface ConflictCandidate {
  readonly op: OpId;
  readonly device: DeviceId;
  readonly user: string;
  readonly hlc: Hlc;
  readonly deleted: boolean;
  readonly value: Value;
}

export interface ConflictField {
  readonly field: string;
  readonly candidates: readonly ConflictCandidate[];
}

/** An open manual conflict: the entity's registers whose concurrent writes disagree. */
export interface Conflict {
  /** SHA-256 (hex) of the canonical [domain, entity, [[field, [op ids]]...]]: changes when the candidates do. */
  readonly id: OpId;
  readonly domain: string;
  readonly entity: string;
  readonly fields: readonly ConflictField[];
}

export interface EntityView {
  readonly domain: string;
  readonly entity: string;
  readonly exists: boolean;
  /** Resolved field values (absent fields left out), keys sorted. */
  readonly fields: Readonly<Record<string, Value>>;
  readonly conflict: Conflict | null;
  readonly heads: readonly OpId[];
}

const candidate = (w: Write): ConflictCandidate => ({ op: w.op, device: w.device, user: w.user, hlc: w.hlc, deleted: w.deleted, value: w.value });

export function viewOf(state: EntityState, config: ResolutionConfig): EntityView {
  const policy = policyOf(config, state.domain);
  const fields: Record<string, Value> = {};
  const conflicted: ConflictField[] = [];
  let exists = false;
  for (const field of Object.keys(state.registers).sort()) {
    const candidates = state.registers[field]!;
    const resolved = resolveRegister(candidates, policy, field, config.hqDevice);
    if (field === EXISTS) exists = !resolved.deleted;
    else if (!resolved.deleted) fields[field] = resolved.value;
    if (policy.strategy === 'manual' && disagree(candidates)) conflicted.push({ field, candidates: candidates.map(candidate) });
  }
  let conflict: Conflict | null = null;
  if (conflicted.length > 0) {
    const digest = encodeCanonical([state.domain, state.entity, conflicted.map((f) => [f.field, f.candidates.map((c) => c.op)])]);
    conflict = { id: hash('sha256', digest, 'hex'), domain: state.domain, entity: state.entity, fields: conflicted };
  }
  return { domain: state.domain, entity: state.entity, exists, fields: exists ? fields : {}, conflict, heads: state.heads.map((h) => h.op) };
}

/** Whether the entity exists: the same answer as `viewOf(state, config).exists`, resolving only the `$exists` register. */
export function existsIn(state: EntityState, config: ResolutionConfig): boolean {
  const policy = policyOf(config, state.domain);
  return Object.hasOwn(state.registers, EXISTS) && !resolveRegister(state.registers[EXISTS]!, policy, EXISTS, config.hqDevice).deleted;
}

/**
 * Whether `op` is a candidate of the entity's open conflict: the same answer as
 * `conflictOps(viewOf(state, config)).includes(op)`, without resolving every field.
 */
export function inOpenConflict(state: EntityState, op: OpId, config: ResolutionConfig): boolean {
  if (policyOf(config, state.domain).strategy !== 'manual') return false;
  for (const candidates of Object.values(state.registers)) {
    if (candidates.some((w) => w.op === op) && disagree(candidates)) return true;
  }
  return false;
}

/** The op ids that are candidates of an open conflict (their status is `conflict`). */
export const conflictOps = (view: EntityView): OpId[] => view.conflict?.fields.flatMap((f) => f.candidates.map((c) => c.op)) ?? [];
