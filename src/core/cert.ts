/**
 * Enrollment certificates: HQ's signed statement that a device belongs to the team.
 *
 *   cert     := cbor [ body: bstr, sig: bstr(64) ]
 *   body     := cbor [ v=1, team, device, user, role, issuedMs, expiresMs, issuer ]
 *   sig      := Ed25519(issuer key, "fieldmesh/cert/1\n" || body)
 *
 * The issuer is the team's HQ device (its root of trust). HQ's own certificate is self-issued.
 */
import { decodeCanonical, encodeCanonical } from './cbor.ts';
import { decodeError, InvalidInputError, RuleViolationError } from './errors.ts';
import { isDeviceId, verifySignature, withContext, type DeviceId, type DeviceSigner } from './keys.ts';
import { LIMITS } from './limits.ts';
import { compare } from 'uint8arrays';

export const ROLES = ['field', 'gateway', 'server'] as const;
export type Role = (typeof ROLES)[number];

const CERT_CONTEXT = new TextEncoder().encode('fieldmesh/cert/1\n');
export const MAX_CERT_BYTES = 1024;

export interface CertBody {
  readonly team: string;
  readonly device: DeviceId;
  readonly user: string;
  readonly role: Role;
  readonly issuedMs: number;
  readonly expiresMs: number;
  readonly issuer: DeviceId;
}

export interface Certificate extends CertBody {
  readonly bytes: Uint8Array;
}

function checkCertBody(body: CertBody): void {
  const bad = (field: string, rule: string) => {
    throw new InvalidInputError('BAD_CERT_FIELD', `certificate field '${field}' ${rule}`, { field });
  };
  if (typeof body.team !== 'string' || body.team.length === 0 || body.team.length > LIMITS.maxTeamChars) bad('team', `must be 1..${LIMITS.maxTeamChars} chars`);
  if (!isDeviceId(body.device)) bad('device', 'must be an Ed25519 PeerId');
  if (!isDeviceId(body.issuer)) bad('issuer', 'must be an Ed25519 PeerId');
  if (typeof body.user !== 'string' || body.user.length === 0 || body.user.length > LIMITS.maxUserChars) bad('user', `must be 1..${LIMITS.maxUserChars} chars`);
  if (!(ROLES as readonly string[]).includes(body.role)) bad('role', `must be one of ${ROLES.join('|')}`);
  for (const f of ['issuedMs', 'expiresMs'] as const) if (!Number.isSafeInteger(body[f]) || body[f] < 0) bad(f, 'must be a non-negative integer');
  if (body.expiresMs <= body.issuedMs) bad('expiresMs', 'must be after issuedMs');
}

/** HQ signs a certificate for a device. */
export function issueCertificate(body: Omit<CertBody, 'issuer'>, hq: DeviceSigner): Certificate {
  const full: CertBody = { ...body, issuer: hq.device };
  checkCertBody(full);
  const bodyBytes = encodeCanonical([1, full.team, full.device, full.user, full.role, full.issuedMs, full.expiresMs, full.issuer]);
  const bytes = encodeCanonical([bodyBytes, hq.sign(withContext(CERT_CONTEXT, bodyBytes))]);
  return { ...full, bytes };
}

/**
 * Certificates already decoded and verified, by their bytes: the result is a pure function of
 * them, and a node looks up the same few certificates for every peer, session and judged op.
 */
const verified = new Map<string, Certificate>();
const MAX_VERIFIED = 4096;

/** Decodes a certificate and checks its signature (by its own issuer). Who may issue is checkAdmission's business. */
export function decodeCertificate(bytes: Uint8Array): Certificate {
  if (!(bytes instanceof Uint8Array) || bytes.length > MAX_CERT_BYTES) throw decodeError('certificate', `must be at most ${MAX_CERT_BYTES} bytes`);
  const key = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('base64');
  let cert = verified.get(key);
  if (cert === undefined) {
    cert = decodeAndVerify(bytes);
    if (verified.size >= MAX_VERIFIED) verified.clear();
    verified.set(key, cert);
  }
  return cert;
}

function decodeAndVerify(bytes: Uint8Array): Certificate {
  const envelope = decodeCanonical(bytes, 'certificate');
  if (!Array.isArray(envelope) || envelope.length !== 2 || !(envelope[0] instanceof Uint8Array) || !(envelope[1] instanceof Uint8Array)) {
    throw decodeError('certificate', 'must be [body: bytes, sig: bytes]');
  }
  const [bodyBytes, sig] = envelope as [Uint8Array, Uint8Array];
  const raw = decodeCanonical(bodyBytes, 'certificate body');
  if (!Array.isArray(raw) || raw.length !== 8 || raw[0] !== 1) throw decodeError('certificate body', 'must be [1, team, device, user, role, issuedMs, expiresMs, issuer]');
  const body: CertBody = { team: raw[1], device: raw[2], user: raw[3], role: raw[4], issuedMs: raw[5], expiresMs: raw[6], issuer: raw[7] };
  checkCertBody(body);
  if (!verifySignature(body.issuer, withContext(CERT_CONTEXT, bodyBytes), sig)) {
    throw new RuleViolationError('BAD_CERT_SIGNATURE', `certificate of ${body.device} has an invalid signature`, { device: body.device });
  }
  return { ...body, bytes };
}

/**
 * The time a peer's certificate is judged at: the wall clock, but never before HQ's clock as HQ's
 * ops told it (each bounded by its arrival time plus the drift bound), nor its own enrollment
 * (both stamped by HQ). A device whose clock was set back (a dead RTC battery, a jump) knows time
 * has passed at least that far, and so does not refuse (and blame) honest peers. Its own HLC is no
 * floor: a clock that once ran far ahead left it there, and every certificate would look expired
 * long after the clock was set right.
 */
export const admissionTimeMs = (wallMs: number, hqWallMs: number, ownIssuedMs: number): number => Math.max(wallMs, hqWallMs, ownIssuedMs);

export interface TrustRoot {
  readonly team: string;
  readonly hqDevice: DeviceId;
}

/**
 * Whether a certificate admits its device to our team at `nowMs`.
 * Rules: CERT_WRONG_TEAM (another team or another HQ), CERT_NOT_YET_VALID, CERT_EXPIRED,
 * CERT_REVOKED (HQ revoked the device).
 */
export function checkAdmission(cert: Certificate, root: TrustRoot, nowMs: number, revoked: (device: DeviceId) => boolean): void {
  if (cert.team !== root.team || cert.issuer !== root.hqDevice) {
    throw new RuleViolationError('CERT_WRONG_TEAM', `certificate of ${cert.device} is for team ${cert.team} by ${cert.issuer}, not ${root.team}`, { device: cert.device, team: cert.team, issuer: cert.issuer });
  }
  if (cert.role === 'server' && cert.device !== root.hqDevice) {
    throw new RuleViolationError('CERT_WRONG_TEAM', `only the team's HQ device may hold the server role`, { device: cert.device });
  }
  if (nowMs < cert.issuedMs) throw new RuleViolationError('CERT_NOT_YET_VALID', `certificate of ${cert.device} is valid from ${new Date(cert.issuedMs).toISOString()}`, { device: cert.device, issuedMs: cert.issuedMs });
  if (nowMs >= cert.expiresMs) throw new RuleViolationError('CERT_EXPIRED', `certificate of ${cert.device} expired at ${new Date(cert.expiresMs).toISOString()}`, { device: cert.device, expiresMs: cert.expiresMs });
  if (revoked(cert.device)) throw new RuleViolationError('CERT_REVOKED', `device ${cert.device} was revoked by HQ`, { device: cert.device });
}

/**
 * Whether `a` supersedes `b` (two certificates of one device): the later issued, then the later
 * expiring, then the greater bytes, so that every node keeps the same one whatever the order.
 */
export function newerCertificate(a: Certificate, b: Certificate): boolean {
  if (a.issuedMs !== b.issuedMs) return a.issuedMs > b.issuedMs;
  if (a.expiresMs !== b.expiresMs) return a.expiresMs > b.expiresMs;
  return compare(a.bytes, b.bytes) > 0;
}
