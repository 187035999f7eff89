/**
 * HQ's HTTP API for HQ staff and the systems around HQ (Fastify; OpenAPI at /v1/openapi.json).
 * Every request needs `Authorization: Bearer <token>`; bad requests get a 4xx with
 * { error: { code, message } }. Live status changes stream as Server-Sent Events on /v1/events.
 */
import swagger from '@fastify/swagger';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { timingSafeEqual } from 'node:crypto';
import { decodeCertificate, ROLES, type Role } from '../core/cert.ts';
import { FieldmeshError, InvalidInputError, RuleViolationError } from '../core/errors.ts';
import { isDeviceId } from '../core/keys.ts';
import { STATUSES, type StatusName } from '../core/status.ts';
import type { Fields } from '../core/value.ts';
import type { FieldNode, NodeEvent } from '../node/field-node.ts';
import { OP_TYPES, type OpType } from '../core/op.ts';
import type { ReceiptIssuer } from './receipts.ts';

export interface ApiOptions {
  /** Bearer token every request must present. */
  readonly token: string;
  readonly receipts?: ReceiptIssuer;
  /** Most concurrent SSE clients. @default 64 */
  readonly maxEventClients?: number;
  /** Largest request body. @default 1 MiB */
  readonly bodyLimitBytes?: number;
}

const error = { type: 'object', properties: { error: { type: 'object', properties: { code: { type: 'string' }, message: { type: 'string' } } } } } as const;
const anyObject = { type: 'object', additionalProperties: true } as const;
const limitQuery = { type: 'integer', minimum: 1, maximum: 10_000, default: 1000 } as const;

/** Byte strings in field values travel as { "$bytes": base64 }, both ways; undefined members are left out. */
function toJson(value: unknown): unknown {
  if (value instanceof Uint8Array) return { $bytes: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64') };
  if (Array.isArray(value)) return value.map(toJson);
  if (value === null || typeof value !== 'object') return value;
  const out: Record<string, unknown> = {};
  for (const [key, member] of Object.entries(value)) if (member !== undefined) out[key] = toJson(member);
  return out;
}
function fromJson(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(fromJson);
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value);
    if (entries.length === 1 && entries[0]![0] === '$bytes' && typeof entries[0]![1] === 'string') return new Uint8Array(Buffer.from(entries[0]![1], 'base64'));
    return Object.fromEntries(entries.map(([k, v]) => [k, fromJson(v)]));
  }
  return value;
}

export async function buildApi(node: FieldNode, options: ApiOptions): Promise<FastifyInstance> {
  // removeAdditional: false, so unknown properties are refused (400) rather than silently dropped.
  const app = Fastify({ bodyLimit: options.bodyLimitBytes ?? 1024 * 1024, logger: false, ajv: { customOptions: { removeAdditional: false } } });
  await app.register(swagger, {
    openapi: {
      info: { title: 'fieldmesh HQ API', version: '1.0.0', description: 'Entities, ops, devices, conflicts and live status of a fieldmesh team.' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });
  const expected = Buffer.from(`Bearer ${options.token}`);
  app.addHook('onRequest', async (request, reply) => {
    const given = Buffer.from(request.headers.authorization ?? '');
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      await reply.code(401).header('www-authenticate', 'Bearer').send({ error: { code: 'UNAUTHORIZED', message: 'missing or wrong bearer token' } });
    }
  });
  app.setErrorHandler(async (err: Error & { validation?: unknown; statusCode?: number; code?: string }, _request, reply) => {
    if (err.validation !== undefined) return reply.code(400).send({ error: { code: 'BAD_REQUEST', message: err.message } });
    if (err instanceof InvalidInputError) return reply.code(400).send({ error: { code: err.code, message: err.message } });
    if (err instanceof RuleViolationError) {
      const notFound = err.code === 'ENTITY_NOT_FOUND' || err.code === 'CONFLICT_NOT_FOUND';
      return reply.code(notFound ? 404 : 409).send({ error: { code: err.code, message: err.message } });
    }
    if (err instanceof FieldmeshError) return reply.code(500).send({ error: { code: err.code, message: err.message } });
    if (typeof err.statusCode === 'number' && err.statusCode < 500) return reply.code(err.statusCode).send({ error: { code: err.code ?? 'BAD_REQUEST', message: err.message } });
    return reply.code(500).send({ error: { code: 'INTERNAL', message: err.message } });
  });

  const params = (...names: string[]) => ({ type: 'object', properties: Object.fromEntries(names.map((n) => [n, { type: 'string', minLength: 1, maxLength: 200 }])), required: names });

  app.get('/v1/openapi.json', { schema: { hide: true } }, async () => app.swagger());

  app.get('/v1/status', { schema: { summary: 'Counts per status, the state hash, this node' } }, async () => ({
    device: node.device,
    team: node.team,
    counts: await node.counts(),
    stateHash: await node.stateHash(),
    receipts: options.receipts?.stats ?? null,
  }));

  app.get<{ Params: { domain: string }; Querystring: { limit: number; where?: string } }>(
    '/v1/entities/:domain',
    { schema: { summary: 'Entities of a domain (where: JSON object of field equalities)', params: params('domain'), querystring: { type: 'object', properties: { limit: limitQuery, where: { type: 'string', maxLength: 4096 } } } } },
    async (request) => {
      let where: Fields = {};
      if (request.query.where !== undefined) {
        try {
          where = JSON.parse(request.query.where) as Fields;
        } catch {
          throw new InvalidInputError('BAD_REQUEST', 'where must be a JSON object');
        }
        if (typeof where !== 'object' || where === null || Array.isArray(where)) throw new InvalidInputError('BAD_REQUEST', 'where must be a JSON object');
      }
      return toJson(await node.query(request.params.domain, { where, limit: request.query.limit }));
    },
  );

  app.get<{ Params: { domain: string; entity: string } }>('/v1/entities/:domain/:entity', { schema: { summary: 'One entity', params: params('domain', 'entity'), response: { 404: error } } }, async (request, reply) => {
    const view = await node.get(request.params.domain, request.params.entity);
    if (view === null) return reply.code(404).send({ error: { code: 'ENTITY_NOT_FOUND', message: `${request.params.domain}/${request.params.entity} does not exist` } });
    return toJson(view);
  });

  app.get<{ Params: { domain: string; entity: string }; Querystring: { limit: number } }>(
    '/v1/entities/:domain/:entity/history',
    { schema: { summary: 'The ops of one entity', params: params('domain', 'entity'), querystring: { type: 'object', properties: { limit: limitQuery } } } },
    async (request) => node.history(request.params.domain, request.params.entity, request.query.limit),
  );

  app.put<{ Params: { domain: string; entity: string }; Body: { fields: Fields } }>(
    '/v1/entities/:domain/:entity',
    { schema: { summary: 'HQ staff edit: create or update an entity (an op in HQ\'s log)', params: params('domain', 'entity'), body: { type: 'object', properties: { fields: anyObject }, required: ['fields'], additionalProperties: false } } },
    async (request) => {
      const { domain, entity } = request.params;
      const type = (await node.get(domain, entity)) === null ? 'create' : 'update';
      const r = await node.mutate({ type, domain, entity, fields: fromJson(request.body.fields) as Fields });
      return { id: r.id, seq: r.op.seq, type, status: r.status };
    },
  );

  app.delete<{ Params: { domain: string; entity: string } }>('/v1/entities/:domain/:entity', { schema: { summary: 'HQ staff delete', params: params('domain', 'entity') } }, async (request) => {
    const r = await node.mutate({ type: 'delete', domain: request.params.domain, entity: request.params.entity });
    return { id: r.id, seq: r.op.seq, status: r.status };
  });

  app.get<{ Querystring: { type?: OpType; domain?: string; entity?: string; device?: string; status?: StatusName; limit: number } }>(
    '/v1/ops',
    {
      schema: {
        summary: 'Ops filtered by type, domain, entity, device, status',
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { type: { enum: [...OP_TYPES] }, domain: { type: 'string' }, entity: { type: 'string' }, device: { type: 'string' }, status: { enum: [...STATUSES] }, limit: limitQuery },
        },
      },
    },
    async (request) => node.ops(request.query),
  );

  app.get('/v1/devices', { schema: { summary: 'Devices (enrolled or with ops): role, user, last op, counts per status, connection' } }, async () => {
    const peers = new Map(node.peers().map((p) => [p.device, p]));
    const byDevice = new Map((await node.devices()).map((d) => [d.device, d]));
    const enrolled = new Map(node.certificates().map((b) => decodeCertificate(b)).map((c) => [c.device, c]));
    const zero = { pending: 0, synced: 0, failed: 0, conflict: 0 };
    return [...new Set([...enrolled.keys(), ...byDevice.keys()])].sort().map((device) => {
      const peer = peers.get(device);
      return {
        device,
        user: enrolled.get(device)?.user ?? null,
        role: enrolled.get(device)?.role ?? null,
        lastSeq: byDevice.get(device)?.lastSeq ?? 0,
        lastSyncedSeq: byDevice.get(device)?.lastSyncedSeq ?? 0,
        counts: byDevice.get(device)?.counts ?? zero,
        revoked: node.isRevoked(device),
        connected: peer !== undefined,
        behind: peer?.theyLack ?? null,
        lastSeenMs: peer?.lastSeenMs ?? null,
      };
    });
  });

  app.get<{ Params: { device: string }; Querystring: { limit: number } }>(
    '/v1/devices/:device/queue',
    { schema: { summary: 'A device\'s ops HQ has not acknowledged, in seq order', params: params('device'), querystring: { type: 'object', properties: { limit: limitQuery } } } },
    async (request) => node.queue(request.params.device, request.query.limit),
  );

  app.post<{ Body: { device: string; user: string; role: Role; validDays: number } }>(
    '/v1/devices',
    {
      schema: {
        summary: 'Enroll a device: HQ signs its certificate (base64) for the device\'s data dir (device.cert)',
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['device', 'user', 'role'],
          properties: { device: { type: 'string' }, user: { type: 'string', minLength: 1, maxLength: 128 }, role: { enum: ROLES.filter((r) => r !== 'server') }, validDays: { type: 'integer', minimum: 1, maximum: 3650, default: 365 } },
        },
      },
    },
    async (request, reply) => {
      if (!isDeviceId(request.body.device)) throw new InvalidInputError('BAD_DEVICE_ID', 'device must be an Ed25519 PeerId');
      const cert = await node.enrollDevice(request.body.device, request.body.user, request.body.role, request.body.validDays * 86_400_000);
      return reply.code(201).send({ device: cert.device, role: cert.role, user: cert.user, expiresMs: cert.expiresMs, certificate: Buffer.from(cert.bytes).toString('base64') });
    },
  );

  app.post<{ Params: { device: string }; Body: { reason?: string; afterSeq?: number } }>(
    '/v1/devices/:device/revoke',
    { schema: { summary: 'Revoke a device: its ops after afterSeq (default: all HQ holds) are refused everywhere', params: params('device'), body: { type: 'object', additionalProperties: false, properties: { reason: { type: 'string', maxLength: 512 }, afterSeq: { type: 'integer', minimum: 0 } } } } },
    async (request) => {
      const target = request.params.device;
      if (!isDeviceId(target)) throw new InvalidInputError('BAD_DEVICE_ID', 'device must be an Ed25519 PeerId');
      const afterSeq = request.body?.afterSeq ?? node.versionVector()[target] ?? 0;
      const op = await node.appendHqOp({ type: 'revoke', target, afterSeq, reason: request.body?.reason ?? '' });
      return { id: op.id, target, afterSeq };
    },
  );

  app.get('/v1/conflicts', { schema: { summary: 'Open manual conflicts with every candidate' } }, async () => toJson(await node.conflicts()));

  app.post<{ Params: { id: string }; Body: { fields?: Fields; delete?: boolean } }>(
    '/v1/conflicts/:id/resolve',
    { schema: { summary: 'Resolve a conflict with chosen values, or by deleting the entity', params: params('id'), body: { type: 'object', additionalProperties: false, properties: { fields: anyObject, delete: { type: 'boolean' } } } } },
    async (request) => {
      const choice = request.body.delete === true ? ({ delete: true } as const) : { fields: fromJson(request.body.fields ?? {}) as Fields };
      const r = await node.resolve(request.params.id, choice);
      return { id: r.id, seq: r.op.seq, status: r.status };
    },
  );

  app.get('/v1/forks', { schema: { summary: 'Fork proofs: devices that wrote two different ops at one seq' } }, async () =>
    (await node.forkProofs()).map((f) => ({ device: f.device, seq: f.seq, ops: f.ops.map((b) => Buffer.from(b).toString('base64')) })),
  );

  app.get('/v1/retries', { schema: { summary: 'Ops whose judging failed transiently: attempts, last error, next attempt' } }, async () =>
    [...(options.receipts?.retrying() ?? new Map()).entries()].map(([op, r]) => ({ op, ...r })),
  );

  let eventClients = 0;
  app.get('/v1/events', { schema: { summary: 'Server-Sent Events: op status changes, entity changes and peer events as they happen' } }, async (request: FastifyRequest, reply: FastifyReply) => {
    if (eventClients >= (options.maxEventClients ?? 64)) return reply.code(503).send({ error: { code: 'TOO_MANY_CLIENTS', message: 'too many event streams' } });
    eventClients++;
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    res.write(': fieldmesh events\n\n');
    const subscription = node.subscribe();
    const close = () => subscription.close();
    request.raw.on('close', close);
    try {
      for await (const event of subscription as AsyncIterable<NodeEvent>) {
        // A slow client is dropped rather than buffered without bound.
        if (!res.write(`event: ${event.kind}\ndata: ${JSON.stringify(toJson(event))}\n\n`) && res.writableLength > 1024 * 1024) break;
      }
    } catch {
      /* subscription overflow: the client fell too far behind */
    } finally {
      eventClients--;
      subscription.close();
      res.end();
    }
  });

  await app.ready();
  return app;
}
