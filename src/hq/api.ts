/**
 * HQ's HTTP API for HQ staff and the systems around HQ (Fastify; OpenAPI at /v1/openapi.json;
 * reference in docs/api.md). Every request needs `Authorization: Bearer <token>`; every error,
 * Fastify's own included (unknown route, wrong method, wrong content type, body too large), is
 * a 4xx/5xx with { error: { code, message } }. Live status changes stream as Server-Sent Events
 * on /v1/events; close() ends those streams so that it returns promptly.
 */
import swagger from '@fastify/swagger';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { timingSafeEqual } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import { decodeCertificate, ROLES, type Role } from '../core/cert.ts';
import { FieldmeshError, InvalidInputError, RuleViolationError } from '../core/errors.ts';
import { isDeviceId, type DeviceId } from '../core/keys.ts';
import { LIMITS } from '../core/limits.ts';
import { STATUSES, type StatusName } from '../core/status.ts';
import { nestsDeeperThan, type Fields } from '../core/value.ts';
import type { FieldNode, NodeEvent } from '../node/field-node.ts';
import { unknownDomain } from '../node/errors.ts';
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

/**
 * Deepest nesting of a JSON request body: a body holds `fields`, whose members are field values
 * (at most LIMITS.maxValueDepth deep), and a `{"$bytes": ...}` value adds one level for its string.
 * Checked iteratively right after parsing, before any recursive walk of the body.
 */
export const MAX_BODY_DEPTH = LIMITS.maxValueDepth + 3;

const tooDeep = (what: string, limit: number) => new InvalidInputError('VALUE_TOO_DEEP', `${what} nests deeper than ${limit}`, { limit });

const error = { type: 'object', properties: { error: { type: 'object', properties: { code: { type: 'string' }, message: { type: 'string' } } } } } as const;
/** What a PUT answers: the op written, and whether it created or updated the entity. */
const written = {
  type: 'object',
  required: ['id', 'seq', 'type', 'status'],
  properties: { id: { type: 'string' }, seq: { type: 'integer' }, type: { enum: ['create', 'update'] }, status: { enum: [...STATUSES] } },
} as const;
const anyObject = { type: 'object', additionalProperties: true } as const;
/** Longest path parameter ({domain}, {entity}, {device}, {id}). */
const MAX_PARAM_CHARS = 200;
const limitQuery = { type: 'integer', minimum: 1, maximum: 10_000, default: 1000 } as const;
/**
 * The query string of a route that takes none: any parameter is a typo, refused (400) rather than
 * ignored. `properties` is there for @fastify/swagger, which would list `type` as a parameter.
 */
const noQuery = { type: 'object', additionalProperties: false, properties: {} } as const;
/** A text filter: an empty one (`?entity=`) could never match, so it is refused like any typo. */
const filterText = { type: 'string', minLength: 1, maxLength: MAX_PARAM_CHARS } as const;
/** The query string of a list that takes only `limit`. */
const limitOnly = { type: 'object', additionalProperties: false, properties: { limit: limitQuery } } as const;

/** Byte strings in field values travel as { "$bytes": base64 }, both ways; undefined members are left out. */
function toJson(value: unknown): unknown {
  if (value instanceof Uint8Array) return { $bytes: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64') };
  if (Array.isArray(value)) return value.map(toJson);
  if (value === null || typeof value !== 'object') return value;
  const out: Record<string, unknown> = {};
  for (const [key, member] of Object.entries(value)) if (member !== undefined) out[key] = toJson(member);
  return out;
}

/** Standard base64 with its padding, as toJson writes it (Buffer.from would skip any other character silently). */
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * One field value from JSON: a map whose only member is "$bytes" is a byte string. The depth is
 * checked on the way down, as checkValue counts it, so no input recurses past maxValueDepth + 1.
 */
function fromJson(value: unknown, path: string, depth = 0): unknown {
  if (depth > LIMITS.maxValueDepth) throw new InvalidInputError('VALUE_TOO_DEEP', `${path} nests deeper than ${LIMITS.maxValueDepth}`, { path });
  if (Array.isArray(value)) return value.map((item, i) => fromJson(item, `${path}[${i}]`, depth + 1));
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value);
    if (entries.length === 1 && entries[0]![0] === '$bytes') {
      const encoded = entries[0]![1];
      if (typeof encoded !== 'string' || !BASE64.test(encoded)) throw new InvalidInputError('BAD_BYTES', `${path}: "$bytes" must be a string of padded standard base64`, { path });
      return new Uint8Array(Buffer.from(encoded, 'base64'));
    }
    return Object.fromEntries(entries.map(([k, v]) => [k, fromJson(v, `${path}.${k}`, depth + 1)]));
  }
  return value;
}

/** Fields from JSON (a plain object is checked by the node; anything else is left for it to refuse). */
function fieldsFromJson(fields: unknown): Fields {
  if (fields === null || typeof fields !== 'object' || Array.isArray(fields)) return fields as Fields;
  return Object.fromEntries(Object.entries(fields).map(([name, value]) => [name, fromJson(value, name)])) as Fields;
}

/** Our codes for the 4xx errors Fastify raises itself (body parsing, limits). */
const FASTIFY_CODES: Readonly<Record<number, string>> = { 400: 'BAD_REQUEST', 404: 'NOT_FOUND', 405: 'METHOD_NOT_ALLOWED', 413: 'TOO_LARGE', 415: 'UNSUPPORTED_MEDIA_TYPE' };

/**
 * What Node's HTTP parser refuses before Fastify sees a request (an unknown method, a malformed
 * request line or header, headers over Node's limit, a request too slow to arrive), answered in
 * our error shape like everything else; the connection then closes, as Node's own answer does.
 */
function clientError(err: Error & { code?: string }, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const [status, code, message] =
    err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
      ? [408, 'TIMEOUT', 'the request did not arrive in time']
      : err.code === 'HPE_HEADER_OVERFLOW'
        ? [431, 'TOO_LARGE', 'the request headers are too large']
        : [400, 'BAD_REQUEST', `malformed HTTP request (${err.code ?? err.message})`];
  const body = JSON.stringify({ error: { code, message } });
  socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
}

export async function buildApi(node: FieldNode, options: ApiOptions): Promise<FastifyInstance> {
  // No request can send an empty token (nor one with spaces around it): it would lock everyone out.
  if (options.token.trim() === '' || options.token !== options.token.trim()) throw new InvalidInputError('BAD_TOKEN', 'the API token must be non-empty, without spaces around it');
  const expected = Buffer.from(options.token);
  const authorized = (request: FastifyRequest) => {
    // The scheme is case-insensitive (RFC 9110 §11.1); the token is compared in constant time.
    const header = request.headers.authorization ?? '';
    const space = header.indexOf(' ');
    if (space < 0 || header.slice(0, space).toLowerCase() !== 'bearer') return false;
    const given = Buffer.from(header.slice(space + 1));
    return given.length === expected.length && timingSafeEqual(given, expected);
  };
  const unauthorized = (reply: FastifyReply) => reply.code(401).header('www-authenticate', 'Bearer').send({ error: { code: 'UNAUTHORIZED', message: 'missing or wrong bearer token' } });

  // removeAdditional: false, so unknown properties are refused (400) rather than silently dropped;
  // coerceTypes: false, so a body's "afterSeq": "3" or "delete": "true" is refused rather than read
  // as 3 or true (the query's limit, text by nature, is read as a number in preValidation below).
  // return503OnClosing: false, so a request that arrives while closing gets our error shape (onRequest below).
  // maxParamLength: path parameters are 1..200 chars (Fastify's default of 100 cut off valid
  // entity ids of 101..128 chars); frameworkErrors answers a longer one, or a malformed
  // %-escape, which the router refuses before any hook runs.
  const app = Fastify({
    bodyLimit: options.bodyLimitBytes ?? 1024 * 1024,
    logger: false,
    return503OnClosing: false,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false } },
    routerOptions: { maxParamLength: MAX_PARAM_CHARS },
    clientErrorHandler: clientError,
    frameworkErrors: (err, request: FastifyRequest, reply: FastifyReply) => {
      if (!authorized(request)) return unauthorized(reply);
      const message = err.code === 'FST_ERR_MAX_PARAM_LENGTH' ? `a path parameter is longer than ${MAX_PARAM_CHARS} chars` : err.message;
      return reply.code(400).send({ error: { code: 'BAD_REQUEST', message } });
    },
  });
  await app.register(swagger, {
    openapi: {
      info: { title: 'fieldmesh HQ API', version: '1.0.0', description: 'Entities, ops, devices, conflicts and live status of a fieldmesh team. Reference: docs/api.md.' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });

  // Bodies are JSON only: Fastify's text/plain parser would hand a string to routes that want an
  // object (a 400 "body must be object"); without it any other type is a 415.
  app.removeAllContentTypeParsers();
  const parseJson = app.getDefaultJsonParser('error', 'error');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    // An empty JSON body is no body: routes whose body fields are all optional take it.
    const text = body as string;
    if (text === '') return done(null, undefined);
    parseJson(request, text, (err, parsed) => {
      if (err !== null) return done(err, undefined);
      // Before anything walks the body recursively (schema checks, $bytes conversion, the core's checks).
      if (nestsDeeperThan(parsed, MAX_BODY_DEPTH)) return done(tooDeep('request body', MAX_BODY_DEPTH), undefined);
      done(null, parsed);
    });
  });

  let closing = false;
  app.addHook('onRequest', async (request, reply) => {
    if (!authorized(request)) return unauthorized(reply);
    if (closing) return reply.code(503).header('connection', 'close').send({ error: { code: 'SHUTTING_DOWN', message: 'HQ\'s API is shutting down' } });
  });
  // The one number a query string carries: digits only, so "1e3" or "5.0" stays text and is refused.
  app.addHook('preValidation', async (request) => {
    const query = request.query as Record<string, unknown>;
    if (typeof query.limit === 'string' && /^\d+$/.test(query.limit)) query.limit = Number(query.limit);
  });
  app.setErrorHandler(async (err: Error & { validation?: unknown; statusCode?: number; code?: string }, _request, reply) => {
    if (err.validation !== undefined) return reply.code(400).send({ error: { code: 'BAD_REQUEST', message: err.message } });
    if (err instanceof InvalidInputError) return reply.code(400).send({ error: { code: err.code, message: err.message } });
    if (err instanceof RuleViolationError) {
      const notFound = err.code === 'ENTITY_NOT_FOUND' || err.code === 'CONFLICT_NOT_FOUND' || err.code === 'DEVICE_NOT_FOUND';
      return reply.code(notFound ? 404 : 409).send({ error: { code: err.code, message: err.message } });
    }
    if (err instanceof FieldmeshError) return reply.code(500).send({ error: { code: err.code, message: err.message } });
    if (typeof err.statusCode === 'number' && err.statusCode < 500) {
      const code = err.code === undefined || err.code.startsWith('FST_') ? (FASTIFY_CODES[err.statusCode] ?? 'BAD_REQUEST') : err.code;
      return reply.code(err.statusCode).send({ error: { code, message: err.message } });
    }
    return reply.code(500).send({ error: { code: 'INTERNAL', message: err.message } });
  });

  // Every route's path and methods, so that a known path with a wrong method is a 405, not a 404.
  const routes: { readonly pattern: RegExp; readonly methods: Set<string> }[] = [];
  app.addHook('onRoute', (route) => {
    const source = `^${route.url.split('/').map((part) => (part.startsWith(':') ? '[^/]+' : part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))).join('/')}$`;
    let entry = routes.find((r) => r.pattern.source === source);
    if (entry === undefined) routes.push((entry = { pattern: new RegExp(source), methods: new Set() }));
    for (const method of [route.method].flat()) entry.methods.add(method.toUpperCase());
    if (entry.methods.has('GET')) entry.methods.add('HEAD');
  });
  app.setNotFoundHandler(async (request, reply) => {
    const path = request.url.split('?')[0]!;
    const allowed = new Set(routes.filter((r) => r.pattern.test(path)).flatMap((r) => [...r.methods]));
    if (allowed.size > 0) {
      const allow = ['GET', 'HEAD', 'PUT', 'POST', 'DELETE'].filter((m) => allowed.has(m));
      return reply.code(405).header('allow', allow.join(', ')).send({ error: { code: 'METHOD_NOT_ALLOWED', message: `${request.method} is not allowed on ${path}; allowed: ${allow.join(', ')}` } });
    }
    return reply.code(404).send({ error: { code: 'NOT_FOUND', message: `no route ${request.method} ${path}` } });
  });

  const params = (...names: string[]) => ({ type: 'object', properties: Object.fromEntries(names.map((n) => [n, { type: 'string', minLength: 1, maxLength: MAX_PARAM_CHARS }])), required: names });
  const errors = (...statuses: number[]) => Object.fromEntries(statuses.map((status) => [status, error]));
  // Success answers as documented in docs/api.md, passed through whole (no field is filtered out).
  const anObject = (description: string) => ({ description, type: 'object', additionalProperties: true });
  const aList = (description: string) => ({ description, type: 'array', items: { type: 'object', additionalProperties: true } });

  /** UNKNOWN_DOMAIN (400), as a write to an undeclared domain gives. */
  const checkDomain = (domain: string) => {
    const declared = node.resolution.domains ?? {};
    if (!Object.hasOwn(declared, domain)) throw unknownDomain(domain, Object.keys(declared));
  };
  /** BAD_DEVICE_ID (400) for a `:device` that is no device id; runs before the body and query are validated. */
  const deviceParam = async (request: FastifyRequest) => {
    const { device } = request.params as { device: string };
    const shown = device.slice(0, 80);
    if (!isDeviceId(device)) throw new InvalidInputError('BAD_DEVICE_ID', `${JSON.stringify(shown)} is not a device id (an Ed25519 PeerId)`, { device: shown });
  };
  /** DEVICE_NOT_FOUND (404): HQ holds no certificate for the device (it never enrolled it, nor learned of it). */
  const checkKnownDevice = (device: DeviceId) => {
    if (!node.isEnrolled(device)) throw new RuleViolationError('DEVICE_NOT_FOUND', `device ${device} is not enrolled in team ${node.team}`, { device });
  };

  app.get('/v1/openapi.json', { schema: { summary: 'This OpenAPI document', response: { 200: anObject('the OpenAPI 3 document of every route') } } }, async () => app.swagger());

  app.get('/v1/status', { schema: { summary: 'Counts per status, the state hash, this node', querystring: noQuery } }, async () => ({
    device: node.device,
    team: node.team,
    counts: await node.counts(),
    stateHash: await node.stateHash(),
    receipts: options.receipts?.stats ?? null,
    clockSkews: await node.clockSkews(),
  }));

  app.get<{ Params: { domain: string }; Querystring: { limit: number; where?: string } }>(
    '/v1/entities/:domain',
    {
      schema: {
        summary: 'Entities of a domain (where: JSON object of field equalities); 400 UNKNOWN_DOMAIN for an undeclared domain',
        params: params('domain'),
        querystring: { type: 'object', additionalProperties: false, properties: { limit: limitQuery, where: { type: 'string', maxLength: 4096 } } },
        response: { 200: aList('the entities that match, as views'), ...errors(400) },
      },
    },
    async (request) => {
      checkDomain(request.params.domain);
      let where: Fields = {};
      if (request.query.where !== undefined) {
        let parsed: unknown;
        try {
          parsed = JSON.parse(request.query.where);
        } catch {
          throw new InvalidInputError('BAD_REQUEST', 'where must be a JSON object');
        }
        if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new InvalidInputError('BAD_REQUEST', 'where must be a JSON object');
        if (nestsDeeperThan(parsed, LIMITS.maxValueDepth + 2)) throw tooDeep('where', LIMITS.maxValueDepth + 2);
        where = fieldsFromJson(parsed);
      }
      return toJson(await node.query(request.params.domain, { where, limit: request.query.limit }));
    },
  );

  app.get<{ Params: { domain: string; entity: string } }>('/v1/entities/:domain/:entity', { schema: { summary: 'One entity', params: params('domain', 'entity'), querystring: noQuery, response: { 200: anObject('the entity as a view, with its open conflict'), ...errors(400, 404) } } }, async (request, reply) => {
    checkDomain(request.params.domain);
    const view = await node.get(request.params.domain, request.params.entity);
    if (view === null) return reply.code(404).send({ error: { code: 'ENTITY_NOT_FOUND', message: `${request.params.domain}/${request.params.entity} does not exist` } });
    return toJson(view);
  });

  app.get<{ Params: { domain: string; entity: string }; Querystring: { limit: number } }>(
    '/v1/entities/:domain/:entity/history',
    {
      schema: {
        summary: 'The ops of one entity (a deleted entity keeps its history); 404 ENTITY_NOT_FOUND when no op ever named it',
        params: params('domain', 'entity'),
        querystring: limitOnly,
        response: { 200: aList('the ops that name the entity, oldest first'), ...errors(400, 404) },
      },
    },
    async (request) => {
      const { domain, entity } = request.params;
      checkDomain(domain);
      const history = await node.history(domain, entity, request.query.limit);
      if (history.length === 0) throw new RuleViolationError('ENTITY_NOT_FOUND', `no op names ${domain}/${entity}`, { domain, entity });
      return history;
    },
  );

  app.put<{ Params: { domain: string; entity: string }; Body: { fields: Fields } }>(
    '/v1/entities/:domain/:entity',
    {
      schema: {
        summary: 'HQ staff edit: create (201) or update (200) an entity (an op in HQ\'s log)',
        params: params('domain', 'entity'),
        querystring: noQuery,
        body: { type: 'object', properties: { fields: anyObject }, required: ['fields'], additionalProperties: false },
        response: { 200: written, 201: written, ...errors(400, 409, 413, 415) },
      },
    },
    async (request, reply) => {
      const { domain, entity } = request.params;
      const fields = fieldsFromJson(request.body.fields);
      const r = await node.mutate({ type: 'put', domain, entity, fields });
      return reply.code(r.op.type === 'create' ? 201 : 200).send({ id: r.id, seq: r.op.seq, type: r.op.type, status: r.status });
    },
  );

  app.delete<{ Params: { domain: string; entity: string } }>('/v1/entities/:domain/:entity', { schema: { summary: 'HQ staff delete', params: params('domain', 'entity'), querystring: noQuery, response: { 200: anObject('the delete op written: id, seq, status'), ...errors(400, 404) } } }, async (request) => {
    const r = await node.mutate({ type: 'delete', domain: request.params.domain, entity: request.params.entity });
    return { id: r.id, seq: r.op.seq, status: r.status };
  });

  app.get<{ Querystring: { type?: OpType; domain?: string; entity?: string; device?: string; status?: StatusName; limit: number } }>(
    '/v1/ops',
    {
      schema: {
        summary: 'Ops filtered by type, domain, entity, device, status (400 for an undeclared domain or a malformed device id)',
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { type: { enum: [...OP_TYPES] }, domain: filterText, entity: filterText, device: filterText, status: { enum: [...STATUSES] }, limit: limitQuery },
        },
        response: { 200: aList('ops, filtered, in (device, seq) order'), ...errors(400) },
      },
    },
    async (request) => {
      // A filter that can never match is a typo: refused rather than answered with an empty list.
      if (request.query.domain !== undefined) checkDomain(request.query.domain);
      if (request.query.device !== undefined && !isDeviceId(request.query.device)) throw new InvalidInputError('BAD_DEVICE_ID', 'device must be a device id (an Ed25519 PeerId)');
      return node.ops(request.query);
    },
  );

  app.get('/v1/devices', { schema: { summary: 'Devices (enrolled or with ops): role, user, last op, counts per status, connection', querystring: noQuery } }, async () => {
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

  app.get<{ Params: { device: DeviceId }; Querystring: { limit: number } }>(
    '/v1/devices/:device/queue',
    {
      schema: {
        summary: 'A device\'s ops HQ has not acknowledged, in seq order ([] when none); 404 DEVICE_NOT_FOUND for a device HQ never enrolled',
        params: params('device'),
        querystring: limitOnly,
        response: { 200: aList('the device\'s pending ops in seq order'), ...errors(400, 404) },
      },
      preValidation: deviceParam,
    },
    async (request) => {
      checkKnownDevice(request.params.device);
      return node.queue(request.params.device, request.query.limit);
    },
  );

  app.post<{ Body: { device: string; user: string; role: Role; validDays: number } }>(
    '/v1/devices',
    {
      schema: {
        summary: 'Enroll a device: HQ signs its certificate (base64) for the device\'s data dir (device.cert); enrolling again replaces the certificate',
        querystring: noQuery,
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['device', 'user', 'role'],
          properties: { device: { type: 'string' }, user: { type: 'string', minLength: 1, maxLength: 128 }, role: { enum: ROLES.filter((r) => r !== 'server') }, validDays: { type: 'integer', minimum: 1, maximum: 3650, default: 365 } },
        },
        response: { 201: anObject('the certificate issued: device, role, user, expiresMs, certificate (base64)'), ...errors(400, 409, 415) },
      },
    },
    async (request, reply) => {
      const cert = await node.enrollDevice(request.body.device, request.body.user, request.body.role, request.body.validDays * 86_400_000);
      return reply.code(201).send({ device: cert.device, role: cert.role, user: cert.user, expiresMs: cert.expiresMs, certificate: Buffer.from(cert.bytes).toString('base64') });
    },
  );

  app.post<{ Params: { device: DeviceId }; Body: { reason?: string; afterSeq?: number } }>(
    '/v1/devices/:device/revoke',
    {
      schema: {
        summary: 'Revoke a device: its ops after afterSeq (default: all HQ holds) are refused everywhere. The body is optional; revoking again returns the first revocation',
        params: params('device'),
        querystring: noQuery,
        body: { type: 'object', additionalProperties: false, properties: { reason: { type: 'string', maxLength: 512 }, afterSeq: { type: 'integer', minimum: 0 } } },
        response: { 200: anObject('the revoke op: id, seq, target, afterSeq, created'), ...errors(400, 404, 409, 415) },
      },
      preValidation: [
        async (request) => {
          // Every body field is optional: no body at all is an empty one.
          if (request.body === undefined || request.body === null) request.body = {};
        },
        deviceParam,
      ],
    },
    async (request) => {
      // The node's rules (the CLI's too): DEVICE_NOT_FOUND (404) for a device never enrolled,
      // CANNOT_REVOKE_HQ (409), and a device revoked already gets its first revocation back.
      const { afterSeq, reason } = request.body;
      const { op } = await node.revoke(request.params.device, { ...(afterSeq !== undefined ? { afterSeq } : {}), reason: reason ?? '' });
      return { id: op.id, target: op.target, afterSeq: op.afterSeq };
    },
  );

  app.get('/v1/conflicts', { schema: { summary: 'Open manual conflicts with every candidate', querystring: noQuery } }, async () => toJson(await node.conflicts()));

  app.post<{ Params: { id: string }; Body: { fields?: Fields; delete?: boolean } }>(
    '/v1/conflicts/:id/resolve',
    {
      schema: {
        summary: 'Resolve a conflict with chosen values, or by deleting the entity',
        params: params('id'),
        querystring: noQuery,
        body: { type: 'object', additionalProperties: false, properties: { fields: anyObject, delete: { type: 'boolean' } } },
        response: { 200: anObject('the resolve op written: id, seq, status'), ...errors(400, 404, 409, 415) },
      },
    },
    async (request) => {
      const choice = request.body.delete === true ? ({ delete: true } as const) : { fields: fieldsFromJson(request.body.fields ?? {}) };
      const r = await node.resolve(request.params.id, choice);
      return { id: r.id, seq: r.op.seq, status: r.status };
    },
  );

  app.get('/v1/forks', { schema: { summary: 'Fork proofs: devices that wrote two different ops at one seq', querystring: noQuery } }, async () =>
    (await node.forkProofs()).map((f) => ({ device: f.device, seq: f.seq, ops: f.ops.map((b) => Buffer.from(b).toString('base64')) })),
  );

  app.get('/v1/retries', { schema: { summary: 'Ops whose judging failed transiently: attempts, last error, next attempt', querystring: noQuery } }, async () =>
    [...(options.receipts?.retrying() ?? new Map()).entries()].map(([op, r]) => ({ op, ...r })),
  );

  // Open event streams, each with the function that ends it: close() ends them all (preClose),
  // since the server does not close until every connection has.
  const streams = new Set<() => void>();
  app.addHook('preClose', async () => {
    closing = true;
    for (const end of [...streams]) end();
  });
  let eventClients = 0;
  app.get(
    '/v1/events',
    { schema: { summary: 'Server-Sent Events: op status changes, entity changes and peer events as they happen; the stream ends when HQ\'s API closes', querystring: noQuery, response: { 200: { description: 'a text/event-stream of status, entity and peer events', type: 'string' }, ...errors(503) } } },
    async (request: FastifyRequest, reply: FastifyReply) => {
      // HEAD (Fastify answers it with this handler) has no body to stream: it would stay open forever.
      if (request.method === 'HEAD') return reply.code(200).header('cache-control', 'no-cache').type('text/event-stream').send();
      // Passed onRequest just before close() began: preClose would not know to end this stream.
      if (closing) return reply.code(503).header('connection', 'close').send({ error: { code: 'SHUTTING_DOWN', message: 'HQ\'s API is shutting down' } });
      if (eventClients >= (options.maxEventClients ?? 64)) return reply.code(503).send({ error: { code: 'TOO_MANY_CLIENTS', message: 'too many event streams' } });
      eventClients++;
      reply.hijack();
      const res = reply.raw;
      // connection: close, so that the socket closes when the stream ends (shutdown, slow client)
      // rather than lingering as an idle keep-alive connection.
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'close' });
      res.write(': fieldmesh events\n\n');
      const subscription = node.subscribe();
      const end = () => {
        subscription.close();
        // A client that stopped reading would hold the socket open until its buffer drained.
        if (res.writableNeedDrain) res.destroy();
      };
      streams.add(end);
      res.on('close', end);
      try {
        for await (const event of subscription as AsyncIterable<NodeEvent>) {
          // A slow client is dropped rather than buffered without bound.
          if (!res.write(`event: ${event.kind}\ndata: ${JSON.stringify(toJson(event))}\n\n`) && res.writableLength > 1024 * 1024) break;
        }
      } catch {
        /* subscription overflow: the client fell too far behind */
      } finally {
        eventClients--;
        streams.delete(end);
        res.off('close', end);
        subscription.close();
        res.end();
      }
    },
  );

  await app.ready();
  return app;
}
