/**
 * What HQ accepts: per domain, the roles that may write it and a JSON Schema for the fields an
 * op writes (checked with Ajv). Pure: an op and its author's role in, a verdict out.
 *
 * Rules (reason codes): ROLE_NOT_ALLOWED (the author's role may not write the domain),
 * UNKNOWN_DOMAIN (HQ declares no such domain), SCHEMA (the fields break the domain's schema).
 */
import { Ajv, type ValidateFunction } from 'ajv';
import type { Role } from '../core/cert.ts';
import { InvalidInputError, RuleViolationError } from '../core/errors.ts';
import type { EntityOp } from '../core/op.ts';

/** What the rules look at in an op (or in a change before it is signed). */
type Change = Pick<EntityOp, 'type' | 'domain' | 'fields'> & { readonly exists?: boolean };

export interface DomainRules {
  /** Roles allowed to write the domain. @default all roles */
  readonly writers?: readonly Role[];
  /**
   * JSON Schema of an op's fields object. Partial updates are checked against the schema with
   * `required` dropped, since an update writes only some fields.
   */
  readonly schema?: Record<string, unknown>;
}

export type Verdict = { readonly accepted: true } | { readonly accepted: false; readonly reason: string; readonly detail: string };

export class Policy {
  private readonly rules = new Map<string, { writers: readonly Role[] | null; full: ValidateFunction | null; partial: ValidateFunction | null }>();

  constructor(domains: Readonly<Record<string, DomainRules>>) {
    const ajv = new Ajv({ allErrors: false, strict: true });
    for (const [domain, rules] of Object.entries(domains)) {
      let full: ValidateFunction | null = null;
      let partial: ValidateFunction | null = null;
      if (rules.schema !== undefined) {
        try {
          full = ajv.compile(rules.schema);
          const { required: _required, ...optional } = rules.schema;
          partial = ajv.compile(optional);
        } catch (err) {
          throw new InvalidInputError('BAD_SCHEMA', `domain ${domain}: invalid JSON Schema: ${(err as Error).message}`, { domain });
        }
      }
      this.rules.set(domain, { writers: rules.writers ?? null, full, partial });
    }
  }

  /**
   * The same rules as a check a node runs on its own changes before signing them
   * (FieldNodeOptions.checkChange): a refused change throws with the reason as its code, an
   * InvalidInputError for bad fields or domain (SCHEMA, UNKNOWN_DOMAIN), a RuleViolationError for
   * a role that may not write the domain (ROLE_NOT_ALLOWED).
   */
  checker(role: Role): (change: Change) => void {
    return (change) => {
      const verdict = this.judge(change, role);
      if (verdict.accepted) return;
      const Refusal = verdict.reason === 'ROLE_NOT_ALLOWED' ? RuleViolationError : InvalidInputError;
      throw new Refusal(verdict.reason, `${change.domain}: ${verdict.detail}`, { domain: change.domain, reason: verdict.reason });
    };
  }

  judge(op: Change, authorRole: Role | null): Verdict {
    const rules = this.rules.get(op.domain);
    if (rules === undefined) return { accepted: false, reason: 'UNKNOWN_DOMAIN', detail: `HQ declares no domain ${op.domain}` };
    if (rules.writers !== null && (authorRole === null || !rules.writers.includes(authorRole))) {
      return { accepted: false, reason: 'ROLE_NOT_ALLOWED', detail: `role ${authorRole ?? 'unknown'} may not write ${op.domain} (allowed: ${rules.writers.join(', ')})` };
    }
    const check = op.type === 'create' ? rules.full : op.type === 'update' || (op.type === 'resolve' && op.exists) ? rules.partial : null;
    if (check !== null && !check(toPlain(op.fields))) {
      const e = check.errors?.[0];
      return { accepted: false, reason: 'SCHEMA', detail: `${e?.instancePath || '(fields)'} ${e?.message ?? 'does not match the schema'}`.slice(0, 500) };
    }
    return { accepted: true };
  }
}

/** Byte strings become base64 strings for the schema check (JSON Schema knows no bytes). */
function toPlain(value: unknown): unknown {
  if (value instanceof Uint8Array) return Buffer.from(value).toString('base64');
  if (Array.isArray(value)) return value.map(toPlain);
  if (value !== null && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toPlain(v)]));
  return value;
}
