/**
 * Every bound the core enforces, with its default. docs/architecture.md lists them all;
 * keep the two in step.
 */
export const LIMITS = {
  /** Largest encoded op (envelope: body + signature). */
  maxOpBytes: 64 * 1024,
  /** Most fields one op may write. */
  maxFieldsPerOp: 256,
  /** Deepest nesting of arrays/maps inside one field value. */
  maxValueDepth: 16,
  /** Most op ids in an op's `base` (the entity heads its author had seen). */
  maxBaseOps: 64,
  /** Most verdicts in one receipt op. */
  maxVerdictsPerReceipt: 4096,
  /** Longest identifier strings. */
  maxTeamChars: 64,
  maxDomainChars: 64,
  maxEntityChars: 128,
  maxFieldNameChars: 64,
  maxUserChars: 128,
  maxReasonChars: 512,
  /** Highest HLC physical time we can encode: 48 bits of milliseconds. */
  maxHlcWallMs: 2 ** 48 - 1,
  /** Highest HLC logical counter: 16 bits; overflow is an error, never a wrap. */
  maxHlcCounter: 0xffff,
} as const;
