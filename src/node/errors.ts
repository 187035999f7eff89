import { InvalidInputError, RuleViolationError } from '../core/errors.ts';

export const unknownDomain = (domain: string, known: readonly string[]) =>
  new InvalidInputError('UNKNOWN_DOMAIN', `unknown domain ${JSON.stringify(domain)}; declared: ${known.join(', ') || '(none)'}`, { domain, known });

export const entityExists = (domain: string, entity: string) =>
  new RuleViolationError('ENTITY_EXISTS', `${domain}/${entity} already exists`, { domain, entity });

export const entityNotFound = (domain: string, entity: string) =>
  new RuleViolationError('ENTITY_NOT_FOUND', `${domain}/${entity} does not exist`, { domain, entity });

export const conflictNotFound = (conflict: string) =>
  new RuleViolationError('CONFLICT_NOT_FOUND', `no open conflict ${conflict} (resolved already, or changed since: list conflicts again)`, { conflict });

export const badChoice = (conflict: string, missing: readonly string[]) =>
  new InvalidInputError('BAD_RESOLUTION', `resolution of ${conflict} must choose a value for ${missing.join(', ')}`, { conflict, missing });

export const badResolution = (conflict: string) =>
  new InvalidInputError('BAD_RESOLUTION', `resolution of ${conflict} must be {fields: {...}} or {delete: true}`, { conflict });
