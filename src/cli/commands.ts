/**
 * The operations the CLI offers on a node, as plain functions of a FieldNode and JSON params.
 * The same table serves a data dir opened by the command itself and a running node reached
 * through its control socket (control.ts), so both give identical answers.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { InvalidInputError } from '../core/errors.ts';
import { STATUSES, type StatusName } from '../core/status.ts';
import type { Fields } from '../core/value.ts';
import type { FieldNode, OpFilter } from '../node/field-node.ts';

type Params = Record<string, unknown>;

const str = (p: Params, k: string): string => {
  const v = p[k];
  if (typeof v !== 'string' || v.length === 0) throw new InvalidInputError('BAD_ARGUMENT', `${k} is required`);
  return v;
};
const optStr = (p: Params, k: string): string | undefined => (typeof p[k] === 'string' ? (p[k] as string) : undefined);
const optNum = (p: Params, k: string): number | undefined => (typeof p[k] === 'number' ? (p[k] as number) : undefined);

export const COMMANDS = {
  put: async (node: FieldNode, p: Params) => {
    const type = (optStr(p, 'type') ?? 'update') as 'create' | 'update';
    const domain = str(p, 'domain');
    const entity = str(p, 'entity');
    const fields = (p.fields ?? {}) as Fields;
    // put = create when missing, else update: what a user typing a command means.
    const effective = type === 'create' || (await node.get(domain, entity)) === null ? 'create' : 'update';
    const r = await node.mutate({ type: effective, domain, entity, fields });
    return { id: r.id, seq: r.op.seq, type: r.op.type, status: r.status };
  },
  delete: async (node: FieldNode, p: Params) => {
    const r = await node.mutate({ type: 'delete', domain: str(p, 'domain'), entity: str(p, 'entity') });
    return { id: r.id, seq: r.op.seq, status: r.status };
  },
  get: async (node: FieldNode, p: Params) => node.get(str(p, 'domain'), str(p, 'entity')),
  query: async (node: FieldNode, p: Params) => node.query(str(p, 'domain'), { where: (p.where ?? {}) as Fields, limit: optNum(p, 'limit') ?? 1000 }),
  ops: async (node: FieldNode, p: Params) => {
    const filter: OpFilter = {
      ...(optStr(p, 'type') ? { type: optStr(p, 'type') as OpFilter['type'] } : {}),
      ...(optStr(p, 'domain') ? { domain: optStr(p, 'domain')! } : {}),
      ...(optStr(p, 'entity') ? { entity: optStr(p, 'entity')! } : {}),
      ...(optStr(p, 'device') ? { device: optStr(p, 'device')! } : {}),
      ...(optStr(p, 'status') ? { status: optStr(p, 'status') as StatusName } : {}),
      limit: optNum(p, 'limit') ?? 1000,
    };
    return node.ops(filter);
  },
  status: async (node: FieldNode) => {
    // Totals from the same per-device rows, so the two always agree.
    const devices = await node.devices();
    const counts = { pending: 0, synced: 0, failed: 0, conflict: 0 };
    for (const d of devices) for (const s of STATUSES) counts[s] += d.counts[s];
    return { device: node.device, team: node.team, role: node.role, counts, devices, links: node.links(), stateHash: await node.stateHash() };
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
    const bytes = await node.exportBundle((p.since ?? {}) as Record<string, number>);
    await writeFile(str(p, 'out'), bytes);
    return { file: str(p, 'out'), bytes: bytes.length };
  },
  bundleImport: async (node: FieldNode, p: Params) => node.importBundle(await readFile(str(p, 'file'))),
  revoke: async (node: FieldNode, p: Params) => {
    const target = str(p, 'device');
    // Ops the device wrote up to what HQ holds stay valid; everything later is refused.
    const afterSeq = optNum(p, 'afterSeq') ?? node.versionVector()[target] ?? 0;
    const op = await node.appendHqOp({ type: 'revoke', target, afterSeq, reason: optStr(p, 'reason') ?? '' });
    return { id: op.id, seq: op.seq, target, afterSeq };
  },
} as const;

export type CommandName = keyof typeof COMMANDS;

export const isCommand = (name: string): name is CommandName => Object.hasOwn(COMMANDS, name);

/** JSON that survives byte strings: Uint8Array becomes { "$bytes": base64 }. */
export const toJson = (value: unknown, space?: number): string =>
  JSON.stringify(value, (_k, v) => (v instanceof Uint8Array ? { $bytes: Buffer.from(v).toString('base64') } : v), space);
