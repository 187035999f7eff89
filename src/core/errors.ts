/**
 * Typed errors of the core. Callers branch on `code` (or `instanceof`), never on message text.
 * `InvalidInputError`s mean malformed bytes or values (the sender is at fault);
 * `RuleViolationError`s mean well-formed data that breaks a rule (a gap, a fork, a bad signature).
 */
export class FieldmeshError extends Error {
  readonly code: string;
  readonly details: Record<string, unknown>;
  constructor(code: string, message: string, details: Record<string, unknown> = {}) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.details = details;
  }
}

/** Malformed input: bytes that do not decode, values of the wrong shape, sizes over a limit. */
export class InvalidInputError extends FieldmeshError {}

/** Well-formed input that breaks a rule of the log, the signature scheme or the clock. */
export class RuleViolationError extends FieldmeshError {}

export const decodeError = (what: string, reason: string, details: Record<string, unknown> = {}) =>
  new InvalidInputError('DECODE', `cannot decode ${what}: ${reason}`, details);

export const tooLargeError = (what: string, limit: number, found: number) =>
  new InvalidInputError('TOO_LARGE', `${what} is ${found} bytes, over the limit of ${limit}`, {
    limit,
    found,
  });
