/**
 * The operations the CLI offers on a node, as plain functions of a FieldNode and JSON params.
 * The same table serves a data dir opened by the command itself and a running node reached
 * through its control socket (control.ts), so both give identical answers.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { InvalidInputError } from '../core/errors.ts';
import type { DeviceId } from '../core/keys.ts';
import { STATUSES, type StatusName } from '../core/status.ts';
import type { Fields } from '../core/value.ts';
import type { VersionVector } from '../core/version-vector.ts';
import type { FieldNode, OpFilter } from '../node/field-node.ts';
import { unknownDomain } from '../node/errors.ts';

/** Most entities or ops one `query`/`ops` call lists (`--limit`). @default 1000 */
export const MAX_LIST_LIMIT = 100_000;

type Params = Record<string, unknown>;

const str = (p: Params, k: string): string => {
  const v = p[k];
  if (typeof v !== 'string' || v.length === 0) throw new InvalidInputError('BAD_ARGUMENT', `${k} is required`);
  return v;
};
const optStr = (p: Params, k: string): string | undefined => (typeof p[k] === 'string' ? (p[k] as string) : undefined);
/** An optional integer parameter within min..max (the CLI checks its options the same way). */
const optInt = (p: Params, k: string, min: number, max: number): number | undefined => {
  const v = p[k];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) throw new InvalidInputError('BAD_ARGUMENT', `${k} must be an integer from ${min} to ${max}, got ${JSON.stringify(v)}`, { param: k, min, max });
  return v;
};

/** Reads of a domain the team does not declare are errors, not empty answers. */
const knownDomain = (node: FieldNode, domain: string): string => {
  const declared = node.resolution.domains ?? {};
  if (!Object.hasOwn(declared, domain)) throw unknownDomain(domain, Object.keys(declared));
  return domain;
};

/**
 * A version vector as given to `bundle export --since` (parsed JSON): a plain object mapping
 * device ids to non-negative integer seqs, checked by the node's own rule (`checkVersionVector`,
 * which `exportBundle` applies too). Throws `BAD_VERSION_VECTOR` naming the first bad entry.
 */
export async function parseVersionVector(value: unknown): Promise<VersionVector> {
  const check: (value: unknown) => asserts value is VersionVector = (await import('../node/field-node.ts')).checkVersionVector;
  try {
    check(value);
  } catch (err) {
    if (!(err instanceof InvalidInputError)) throw err;
    throw new InvalidInputError(err.code, `a version vector is a JSON object {"<device id>": seq, ...} (as \`fieldmesh vv\` prints): ${String(err.details.why)}`, err.details);
  }
  return { ...value };
}

export interface Refusal {
  readonly device: DeviceId;
  /** Ops of the device the import refused. */
  readonly ops: number;
  /** `revoked`: HQ revoked the device after `afterSeq`; `forked`: it signed two ops at `atSeq`. */
  readonly reason: 'revoked' | 'forked';
  readonly afterSeq?: number;
  readonly atSeq?: number;
}

/** Why ops of a bundle were refused: per device, those at or past its fork point or past its revocation. */
async function refusalsOf(node: FieldNode, bytes: Uint8Array): Promise<Refusal[]> {
  const [{ decodeBundle }, { parseOp }] = await Promise.all([import('../core/bundle.ts'), import('../core/op.ts')]);
  const { forkPoints: forkedAt, revocations: revokedAfter } = node;
  const out: Refusal[] = [];
  for (const run of decodeBundle(bytes).runs) {
    const seqs = run.ops.map((bytes) => parseOp(bytes).op.seq);
    const fork = forkedAt.get(run.device);
    const after = revokedAfter.get(run.device);
    const forked = fork === undefined ? 0 : seqs.filter((s) => s >= fork).length;
    const revoked = after === undefined ? 0 : seqs.filter((s) => s > after && (fork === undefined || s < fork)).length;
    if (forked > 0) out.push({ device: run.device, ops: forked, reason: 'forked', atSeq: fork! });
    if (revoked > 0) out.push({ device: run.device, ops: revoked, reason: 'revoked', afterSeq: after! });
  }
  return out;
}

export const COMMANDS = {
  put: async (node: FieldNode, p: Params) => {
    const domain = str(p, 'domain');
    const entity = str(p, 'entity');
    const fields = (p.fields ?? {}) as Fields;
    // put = create when missing, else update (decided atomically with the write): what a user typing a command means.
    const r = await node.mutate({ type: optStr(p, 'type') === 'create' ? 'create' : 'put', domain, entity, fields });
    return { id: r.id, seq: r.op.seq, type: r.op.type, status: r.status };
  },
  delete: async (node: FieldNode, p: Params) => {
    const r = await node.mutate({ type: 'delete', domain: str(p, 'domain'), entity: str(p, 'entity') });
    return { id: r.id, seq: r.op.seq, status: r.status };
  },
  get: async (node: FieldNode, p: Params) => node.get(knownDomain(node, str(p, 'domain')), str(p, 'entity')),
  query: async (node: FieldNode, p: Params) => node.query(knownDomain(node, str(p, 'domain')), { where: (p.where ?? {}) as Fields, limit: optInt(p, 'limit', 1, MAX_LIST_LIMIT) ?? 1000 }),
  ops: async (node: FieldNode, p: Params) => {
    // A filter that can never match is a typo: refused, as HQ's API refuses it, not answered with [].
    const [{ OP_TYPES }, { isDeviceId }] = await Promise.all([import('../core/op.ts'), import('../core/keys.ts')]);
    const oneOf = (k: string, allowed: readonly string[]) => {
      const v = optStr(p, k);
      if (v && !allowed.includes(v)) throw new InvalidInputError('BAD_ARGUMENT', `${k} must be one of ${allowed.join(', ')}, got ${JSON.stringify(v)}`, { param: k });
      return v;
    };
    const type = oneOf('type', OP_TYPES);
    const status = oneOf('status', STATUSES);
    const domain = optStr(p, 'domain');
    if (domain) knownDomain(node, domain);
    const device = optStr(p, 'device');
    if (device && !isDeviceId(device)) throw new InvalidInputError('BAD_DEVICE_ID', `device must be a device id (an Ed25519 PeerId), got ${JSON.stringify(p.device).slice(0, 90)}`, { param: 'device' });
    const filter: OpFilter = {
      ...(type ? { type: type as OpFilter['type'] } : {}),
      ...(domain ? { domain } : {}),
      ...(optStr(p, 'entity') ? { entity: optStr(p, 'entity')! } : {}),
      ...(device ? { device } : {}),
      ...(status ? { status: status as StatusName } : {}),
      limit: optInt(p, 'limit', 1, MAX_LIST_LIMIT) ?? 1000,
    };
    return node.ops(filter);
  },
  status: async (node: FieldNode) => {
    // Totals from the same per-device rows, so the two always agree.
    const devices = await node.devices();
    const counts = { pending: 0, synced: 0, failed: 0, conflict: 0 };
    for (const d of devices) for (const s of STATUSES) counts[s] += d.counts[s];
    const forks = [...node.forkPoints].map(([device, seq]) => ({ device, seq }));
    const revoked = [...node.revocations].map(([device, afterSeq]) => ({ device, afterSeq }));
    return { device: node.device, team: node.team, role: node.role, counts, devices, forks, revoked, clockSkews: await node.clockSkews(), links: node.links(), stateHash: await node.stateHash() };
  },
  conflicts: async (node: FieldNode) => node.conflicts(),
  resolve: async (node: FieldNode, p: Params) => {
    const choice = p.delete === true ? ({ delete: true } as const) : { fields: (p.fields ?? {}) as Fields };
    const r = await node.resolve(str(p, 'conflict'), choice);
    return { id: r.id, seq: r.op.seq, status: r.status };
  },
  peers: async (node: FieldNode) => node.peers(),
  verify: async (node: FieldNode) => node.verify(),
  addresses: async (node: FieldNode) => node.addresses(),
  vv: async (node: FieldNode) => node.versionVector(),
  bundleExport: async (node: FieldNode, p: Params) => {
    const bytes = await node.exportBundle(await parseVersionVector(p.since ?? {}));
    await writeFile(str(p, 'out'), bytes);
    const { decodeBundle } = await import('../core/bundle.ts');
    return { file: str(p, 'out'), ops: decodeBundle(bytes).runs.reduce((n, run) => n + run.ops.length, 0), bytes: bytes.length };
  },
  bundleImport: async (node: FieldNode, p: Params) => {
    const bytes = await readFile(str(p, 'file'));
    const result = await node.importBundle(bytes);
    // The ingest result only counts refused ops; say whose, and why.
    return result.refused > 0 ? { ...result, refusals: await refusalsOf(node, bytes) } : result;
  },
  revoke: async (node: FieldNode, p: Params) => {
    // The node's rules, as HQ's API applies them: a device revoked already gets its revocation
    // back (nothing appended), one never enrolled is DEVICE_NOT_FOUND; ops the device wrote up to
    // --after-seq (default: all HQ holds) stay valid.
    const afterSeq = optInt(p, 'afterSeq', 0, Number.MAX_SAFE_INTEGER);
    const { op, created } = await node.revoke(str(p, 'device'), { ...(afterSeq !== undefined ? { afterSeq } : {}), reason: optStr(p, 'reason') ?? '' });
    return { id: op.id, seq: op.seq, target: op.target, afterSeq: op.afterSeq, created };
  },
  enrollDevice: async (node: FieldNode, p: Params) => {
    // HQ's node signs and keeps the certificate (as HQ's API does), so HQ knows the device before it ever connects.
    const role = str(p, 'role');
    if (role !== 'field' && role !== 'gateway') throw new InvalidInputError('BAD_ARGUMENT', `role must be field or gateway, got ${JSON.stringify(role)}`, { param: 'role' });
    const cert = await node.enrollDevice(str(p, 'device'), str(p, 'user'), role, optInt(p, 'validDays', 1, 3650)! * 86_400_000);
    return { device: cert.device, user: cert.user, role: cert.role, expiresMs: cert.expiresMs, certificate: Buffer.from(cert.bytes).toString('base64') };
  },
} as const;

export type CommandName = keyof typeof COMMANDS;

export const isCommand = (name: string): name is CommandName => Object.hasOwn(COMMANDS, name);

/** JSON that survives byte strings: Uint8Array becomes { "$bytes": base64 }. */
export const toJson = (value: unknown, space?: number): string =>
  JSON.stringify(value, (_k, v) => (v instanceof Uint8Array ? { $bytes: Buffer.from(v).toString('base64') } : v), space);
