/**
 * Enrollment: HQ signs a certificate for a device (team, device, user, role, expiry). The device
 * key is created in the device's data dir if missing, and the certificate is written beside it
 * (`device.cert`). HQ's key is read from HQ's own data dir (for now on the same machine; the
 * certificate file can also be carried to the device by hand).
 */
import { access, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { decodeCertificate, issueCertificate, type Certificate, type Role } from '../core/cert.ts';
import { FieldmeshError, RuleViolationError } from '../core/errors.ts';
import type { DeviceId } from '../core/keys.ts';
import { DEVICE_KEY_FILE, KeyFileError, loadOrCreateDeviceKey, type DeviceKey } from './device-key.ts';

export const DEVICE_CERT_FILE = 'device.cert';
/** @default 365 days */
export const DEFAULT_CERT_VALIDITY_MS = 365 * 24 * 3600 * 1000;

export interface EnrollOptions {
  /** HQ's data dir, holding HQ's device.key (the team root) and its self-issued certificate. */
  readonly hqDataDir: string;
  /** The device's data dir (created if missing). */
  readonly dataDir: string;
  readonly team: string;
  readonly user: string;
  readonly role: Role;
  readonly nowMs?: number;
  readonly validForMs?: number;
  /**
   * Replace the certificate the device already holds (re-enrollment under another user, role or
   * expiry, same team). Never allowed for an HQ data dir, nor to move a device to another team.
   * @default false
   */
  readonly force?: boolean;
}

const isHqCertificate = (cert: Certificate) => cert.role === 'server' || cert.issuer === cert.device;

/**
 * HQ's key, checked to be the team root: `hqDataDir` must hold a key and a self-issued `server`
 * certificate for it, of `team`. Creates nothing.
 */
export async function loadHqKey(hqDataDir: string, team: string): Promise<DeviceKey> {
  const cert = await readDeviceCertificate(hqDataDir);
  try {
    await access(join(hqDataDir, DEVICE_KEY_FILE));
  } catch {
    throw new RuleViolationError('NOT_HQ', `${hqDataDir} is not an HQ data dir: it holds no device key`, { path: hqDataDir });
  }
  if (cert === null) throw new RuleViolationError('NOT_HQ', `${hqDataDir} is not an HQ data dir: it holds no certificate (set HQ up with \`fieldmesh init --role server\`)`, { path: hqDataDir });
  if (!isHqCertificate(cert)) {
    throw new RuleViolationError('NOT_HQ', `${hqDataDir} is not an HQ data dir: it is a ${cert.role} device (${cert.device}) of team ${cert.team}`, { path: hqDataDir, role: cert.role });
  }
  const { key } = await loadOrCreateDeviceKey(hqDataDir);
  if (cert.device !== key.signer.device) throw new RuleViolationError('CERT_MISMATCH', `${hqDataDir}: certificate is for ${cert.device}, the key is ${key.signer.device}`, { path: hqDataDir });
  if (cert.team !== team) throw new RuleViolationError('TEAM_MISMATCH', `${hqDataDir} is HQ of team ${cert.team}, not ${team}`, { expected: team, found: cert.team });
  return key;
}

/**
 * Signs and writes the device's certificate. Refuses (and writes nothing) when the HQ dir is not
 * HQ's (`NOT_HQ`) and in every case `prepareDeviceDir` refuses.
 */
export async function enroll(options: EnrollOptions): Promise<Certificate> {
  const hq = await loadHqKey(options.hqDataDir, options.team);
  const device = await prepareDeviceDir({ dataDir: options.dataDir, hqDataDir: options.hqDataDir, team: options.team, hqDevice: hq.signer.device, force: options.force === true });
  const issuedMs = options.nowMs ?? Date.now();
  const cert = issueCertificate(
    { team: options.team, device: device.key.signer.device, user: options.user, role: options.role, issuedMs, expiresMs: issuedMs + (options.validForMs ?? DEFAULT_CERT_VALIDITY_MS) },
    hq.signer,
  );
  await saveCertificate(options.dataDir, cert);
  await recordIssued(options.hqDataDir, cert);
  return cert;
}

/**
 * Checks a device's data dir before HQ signs its certificate, then returns its key (created if
 * missing). Refuses, writing nothing, when the target is an HQ data dir or HQ's own dir
 * (`IS_HQ`), when it already holds a certificate and `force` is not set (`ALREADY_ENROLLED`), and
 * when it holds one of another team or HQ (`OTHER_TEAM`: its log and database belong to that team).
 */
export async function prepareDeviceDir(options: { dataDir: string; hqDataDir: string; team: string; hqDevice: DeviceId; force: boolean }): Promise<{ key: DeviceKey; created: boolean }> {
  const dataDir = resolve(options.dataDir);
  if (dataDir === resolve(options.hqDataDir)) throw new RuleViolationError('IS_HQ', `${dataDir} is HQ's own data dir: HQ cannot enroll itself`, { path: dataDir });
  const existing = await readDeviceCertificate(dataDir);
  if (existing !== null) {
    const holder = `device ${existing.device}, user ${existing.user}, role ${existing.role} in team ${existing.team}`;
    if (isHqCertificate(existing)) throw new RuleViolationError('IS_HQ', `${dataDir} is an HQ data dir (${holder}): it cannot be enrolled`, { path: dataDir });
    if (existing.team !== options.team || existing.issuer !== options.hqDevice) {
      throw new RuleViolationError('OTHER_TEAM', `${dataDir} is enrolled in team ${existing.team} by HQ ${existing.issuer} (${holder}); its data cannot move to team ${options.team}: use a new data dir`, {
        path: dataDir,
        team: existing.team,
        issuer: existing.issuer,
      });
    }
    if (!options.force) {
      throw new RuleViolationError('ALREADY_ENROLLED', `${dataDir} is already enrolled (${holder}, until ${new Date(existing.expiresMs).toISOString()}); re-enroll with force (\`fieldmesh enroll --force\`) to replace its certificate`, {
        path: dataDir,
        device: existing.device,
        user: existing.user,
        role: existing.role,
      });
    }
  }
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  await refuseLostKey(dataDir);
  const device = await loadOrCreateDeviceKey(dataDir);
  if (device.key.signer.device === options.hqDevice) throw new RuleViolationError('IS_HQ', `${dataDir} holds HQ's key: HQ cannot enroll itself`, { path: dataDir });
  return device;
}

/**
 * A data dir that holds a certificate but no device key lost its key: a new one would be another
 * device, under whose name this dir's certificate and log no longer fit (and re-enrolling it would
 * strand the ops it holds). Refused, saying what to do, before anything is made.
 */
export async function refuseLostKey(dataDir: string): Promise<void> {
  const present = async (name: string) => access(join(dataDir, name)).then(() => true, () => false);
  if ((await present(DEVICE_KEY_FILE)) || !(await present(DEVICE_CERT_FILE))) return;
  throw new KeyFileError('KEY_MISSING', `${join(dataDir, DEVICE_KEY_FILE)} is missing, but ${dataDir} holds a certificate: restore device.key from a backup of this dir (a new key would be another device), or set up a new data dir and enroll it`, { path: join(dataDir, DEVICE_KEY_FILE) });
}

/** Where HQ's data dir keeps the certificates signed for it outside a running node. */
export const ISSUED_DIR = 'issued';

/**
 * Keeps a copy of a certificate HQ signed in HQ's data dir (`issued/<device>.cert`), without
 * opening HQ's database (HQ may be running): HQ can then revoke a device enrolled this way even
 * before any of its ops or its certificate reached HQ through the mesh.
 */
async function recordIssued(hqDataDir: string, cert: Certificate): Promise<void> {
  const dir = join(hqDataDir, ISSUED_DIR);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFile(join(dir, `${cert.device}.cert`), cert.bytes, { mode: 0o600 });
}

/** The certificate HQ signed for `device` by `enroll`, if its data dir holds one (null otherwise). */
export async function readIssued(hqDataDir: string, device: string): Promise<Uint8Array | null> {
  try {
    return await readFile(join(hqDataDir, ISSUED_DIR, `${device}.cert`));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/** The device's certificate in its data dir, or null when it has not been enrolled. */
export async function readDeviceCertificate(dataDir: string): Promise<Certificate | null> {
  const path = join(dataDir, DEVICE_CERT_FILE);
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return null;
    throw new FieldmeshError('CERT_CORRUPT', `certificate ${path} is unreadable: ${code === 'EISDIR' ? 'it is a directory' : (err as Error).message}`, { path });
  }
  try {
    return decodeCertificate(bytes);
  } catch (err) {
    throw new FieldmeshError('CERT_CORRUPT', `certificate ${path} is unusable: ${(err as Error).message}`, { path });
  }
}

/**
 * HQ's own certificate: self-issued on HQ's first start. `fresh` means it is not on disk yet:
 * the caller writes it (saveCertificate) only once the data dir proved to be HQ's.
 */
export async function hqCertificate(dataDir: string, team: string, user: string, nowMs: number): Promise<{ cert: Certificate; fresh: boolean }> {
  const existing = await readDeviceCertificate(dataDir);
  if (existing !== null) return { cert: existing, fresh: false };
  const { key } = await loadOrCreateDeviceKey(dataDir);
  const cert = issueCertificate({ team, device: key.signer.device, user, role: 'server', issuedMs: nowMs, expiresMs: nowMs + 10 * DEFAULT_CERT_VALIDITY_MS }, key.signer);
  return { cert, fresh: true };
}

export async function saveCertificate(dataDir: string, cert: Certificate): Promise<void> {
  await writeFile(join(dataDir, DEVICE_CERT_FILE), cert.bytes, { mode: 0o644 });
}
