/**
 * Bundles (data by USB stick) between real FieldNodes with real LevelDB in temp dirs: a full and
 * an incremental round trip, receipts carried by bundle, and bundles that must be refused with a
 * typed error while the importing node stores nothing of them: truncated, a corrupted byte, an op
 * re-signed by an unenrolled key, a flipped signature, an unenrolled device's log, a forged fork
 * proof, a run holding another device's ops, and bundles of another team.
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { authorOp } from '../../src/core/author.ts';
import { decodeBundle, encodeBundle, type Bundle } from '../../src/core/bundle.ts';
import { decodeCanonical, encodeCanonical } from '../../src/core/cbor.ts';
import { issueCertificate } from '../../src/core/cert.ts';
import { FieldmeshError, InvalidInputError, RuleViolationError } from '../../src/core/errors.ts';
import { HLC_ZERO } from '../../src/core/hlc.ts';
import { signerFromSeed, withContext, type DeviceSigner } from '../../src/core/keys.ts';
import { opIdOf, parseOp } from '../../src/core/op.ts';
import { Policy } from '../../src/hq/policy.ts';
import type { FieldNode } from '../../src/node/field-node.ts';
import { expectRejects, useHq } from './helpers.ts';

const DOMAINS = { case: 'manual', evidence: 'merge', task: 'server-wins', note: 'client-wins' } as const;

const hq = useHq();

const signer = (name: string): DeviceSigner => signerFromSeed(new Uint8Array(createHash('sha256').update(`fieldmesh-bundle-test/${name}`).digest()));

/** Everything a node shows of its data. */
async function observe(node: FieldNode) {
  return {
    versionVector: node.versionVector(),
    stateHash: await node.stateHash(),
    ops: (await node.ops({ limit: 100_000 })).map((o) => [o.id, o.status]),
    conflicts: await node.conflicts(),
    forks: await node.forkProofs(),
    certificates: node.certificates().length,
  };
}

/** The op re-signed by another key: the same body (still naming its device), a signature that is not the device's. */
function resign(bytes: Uint8Array, by: DeviceSigner): Uint8Array {
  const { bodyBytes } = parseOp(bytes);
  return encodeCanonical([bodyBytes, by.sign(withContext(new TextEncoder().encode('fieldmesh/op/1\n'), bodyBytes))]);
}

/** The op with one bit of its signature (the envelope's last bytes) flipped. */
function flipSignature(bytes: Uint8Array): Uint8Array {
  const out = Uint8Array.from(bytes);
  out[out.length - 7]! ^= 0x10;
  return out;
}

/** A bundle with its runs replaced, sealed with a fresh checksum (a forgery, not damage). */
function reseal(bundle: Bundle, changes: Partial<Bundle>): Uint8Array {
  return encodeBundle({ ...bundle, ...changes });
}

/** Writes a mix of ops: creates, updates, a delete, byte strings, several domains. */
async function writeMix(node: FieldNode, tag: string, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const entity = `${tag}-${i % 4}`;
    const domain = i % 3 === 0 ? 'evidence' : 'note';
    const exists = (await node.get(domain, entity)) !== null;
    if (exists && i % 7 === 6) await node.mutate({ type: 'delete', domain, entity });
    else await node.mutate({ type: exists ? 'update' : 'create', domain, entity, fields: { i, by: tag, ...(i % 2 === 0 ? { photo: Uint8Array.of(i, 1, 2, 3) } : { tags: [tag, `t${i}`] }) } });
  }
}

describe('bundle round trip', () => {
  it('export from A, import into B gives the same state; an incremental export with B\'s version vector carries only what B lacks', async () => {
    const team = await hq.team(DOMAINS);
    const a = await team.node('alice');
    const b = await team.node('bob');
    await writeMix(a, 'a', 12);
    await a.mutate({ type: 'create', domain: 'case', entity: 'c-1', fields: { title: 'Fire' } });

    const full = await a.exportBundle();
    const decoded = decodeBundle(full);
    expect(decoded).toMatchObject({ team: team.name, hq: team.hqDevice });
    expect(decoded.runs.map((r) => [r.device, r.ops.length])).toEqual([[a.device, 13]]);
    expect(await b.importBundle(full)).toMatchObject({ added: 13, duplicates: 0, refused: 0, certificates: 1, forkProofs: 0 });
    expect(b.versionVector()).toEqual(a.versionVector());
    expect(await b.stateHash()).toBe(await a.stateHash());
    expect(await b.query('note')).toEqual(await a.query('note'));
    expect(await b.query('evidence')).toEqual(await a.query('evidence'));
    expect(await b.ops()).toEqual(await a.ops());

    // Importing it again changes nothing.
    const again = await b.importBundle(full);
    expect(again).toMatchObject({ added: 0, duplicates: 13, refused: 0, certificates: 0 });

    // Incremental: only what B lacks.
    await writeMix(a, 'a2', 5);
    const bVV = b.versionVector();
    const incremental = await a.exportBundle(bVV);
    expect(decodeBundle(incremental).runs.map((r) => [r.device, r.ops.length])).toEqual([[a.device, 5]]);
    expect(incremental.length).toBeLessThan(full.length);
    expect(await b.importBundle(incremental)).toMatchObject({ added: 5, duplicates: 0 });
    expect(await b.stateHash()).toBe(await a.stateHash());
    expect(b.versionVector()).toEqual(a.versionVector());

    // And back: B's own writes reach A the same way.
    await writeMix(b, 'b', 4);
    expect(await a.importBundle(await b.exportBundle(a.versionVector()))).toMatchObject({ added: 4, certificates: 1 });
    expect(await a.stateHash()).toBe(await b.stateHash());
    expect(b.versionVector()).toEqual(a.versionVector());
    // Nothing to send: an empty bundle, harmless.
    const empty = await a.exportBundle(b.versionVector());
    expect(decodeBundle(empty).runs).toEqual([]);
    expect(await b.importBundle(empty)).toMatchObject({ added: 0, duplicates: 0 });
    for (const node of [a, b]) expect((await node.verify()).problems).toEqual([]);
  });

  it('carries HQ\'s receipts: a device that only ever saw bundles shows HQ\'s verdicts', async () => {
    const team = await hq.team(DOMAINS);
    const server = await team.hq();
    const a = await team.node('alice');
    const b = await team.node('bob');
    await a.mutate({ type: 'create', domain: 'case', entity: 'ok', fields: { title: 'Fire' } });
    await a.mutate({ type: 'create', domain: 'case', entity: 'bad', fields: { status: 'open' } });
    await server.importBundle(await a.exportBundle());
    const issuer = hq.issuer(server, new Policy({ case: { schema: { type: 'object', properties: { title: { type: 'string' } }, required: ['title'] } } }));
    await issuer.flush();
    await b.importBundle(await server.exportBundle(b.versionVector()));
    await a.importBundle(await server.exportBundle(a.versionVector()));
    for (const node of [a, b]) {
      expect((await node.ops({ device: a.device })).map((o) => [o.entity, o.status, o.reason ?? null])).toEqual([
        ['ok', 'synced', null],
        ['bad', 'failed', 'REJECTED:SCHEMA'],
      ]);
      expect(await node.get('case', 'bad')).toBeNull();
      expect(await node.stateHash()).toBe(await server.stateHash());
    }
  });
});

describe('bundles that must be refused', () => {
  /** B holds its own ops and the first part of A's log; `good` is A's next part. */
  async function prepared() {
    const team = await hq.team(DOMAINS);
    const a = await team.node('alice');
    const b = await team.node('bob');
    await writeMix(a, 'a', 6);
    await writeMix(b, 'b', 3);
    await b.importBundle(await a.exportBundle());
    await writeMix(a, 'a-more', 6);
    const good = await a.exportBundle(b.versionVector());
    const bundle = decodeBundle(good);
    expect(bundle.runs.map((r) => [r.device, r.ops.length])).toEqual([[a.device, 6]]);
    const before = await observe(b);
    /** The import must fail with `cls`/`code`, and B must show exactly what it showed before. */
    const refused = async (bytes: Uint8Array, cls: typeof InvalidInputError | typeof RuleViolationError, code: string): Promise<FieldmeshError> => {
      const err = await expectRejects(b.importBundle(bytes), cls, code);
      expect(err.message.length).toBeGreaterThan(10);
      expect(await observe(b)).toEqual(before);
      return err;
    };
    return { team, a, b, good, bundle, before, refused };
  }

  it('a truncated bundle and a corrupted byte fail the checksum (DECODE) before anything is parsed', async () => {
    const { b, a, good, refused } = await prepared();
    expect((await refused(good.subarray(0, good.length - 100), InvalidInputError, 'DECODE')).message).toMatch(/truncated or corrupt/);
    expect((await refused(good.subarray(0, good.length - 1), InvalidInputError, 'DECODE')).message).toMatch(/truncated or corrupt/);
    expect((await refused(good.subarray(0, 20), InvalidInputError, 'DECODE')).message).toMatch(/too short/);
    await refused(new Uint8Array(0), InvalidInputError, 'DECODE');
    for (const at of [0, 10, Math.floor(good.length / 2), good.length - 40, good.length - 1]) {
      const corrupt = Uint8Array.from(good);
      corrupt[at]! ^= 0x01;
      expect((await refused(corrupt, InvalidInputError, 'DECODE')).message).toMatch(/checksum mismatch|truncated or corrupt/);
    }
    // Bytes that are not a bundle at all, with a valid checksum.
    const body = encodeCanonical(['not-a-bundle', 1]);
    const sealed = new Uint8Array(body.length + 32);
    sealed.set(body);
    sealed.set(createHash('sha256').update(body).digest(), body.length);
    expect((await refused(sealed, InvalidInputError, 'DECODE')).message).toMatch(/not a fieldmesh bundle/);
    // The intact bundle still imports.
    expect(await b.importBundle(good)).toMatchObject({ added: 6 });
    await a.importBundle(await b.exportBundle(a.versionVector()));
    expect(await b.stateHash()).toBe(await a.stateHash());
  });

  it('forged ops: re-signed by an unenrolled key, a flipped signature, a broken chain, an unenrolled device\'s own log', async () => {
    const { team, a, b, good, bundle, refused } = await prepared();
    const ops = bundle.runs[0]!.ops;
    const mallory = signer('mallory');
    const last = ops.length - 1;
    const withOps = (replaced: Uint8Array[]) => reseal(bundle, { runs: [{ device: a.device, ops: replaced }] });

    // The last op of the run, re-signed by a key that is not alice's: its signature does not verify.
    await refused(withOps(ops.map((op, i) => (i === last ? resign(op, mallory) : op))), RuleViolationError, 'BAD_SIGNATURE');
    // A single op travelling alone, re-signed.
    await refused(withOps([resign(ops[0]!, mallory)]), RuleViolationError, 'BAD_SIGNATURE');
    // One flipped bit in the last op's signature.
    await refused(withOps(ops.map((op, i) => (i === last ? flipSignature(op) : op))), RuleViolationError, 'BAD_SIGNATURE');
    // A forged op in the middle: its id changes, so the next op no longer chains to it.
    await refused(withOps(ops.map((op, i) => (i === 2 ? resign(op, mallory) : op))), RuleViolationError, 'PREV_MISMATCH');
    await refused(withOps(ops.map((op, i) => (i === 2 ? flipSignature(op) : op))), RuleViolationError, 'PREV_MISMATCH');
    // A gap in the run.
    await refused(withOps(ops.filter((_, i) => i !== 1)), RuleViolationError, 'SEQ_GAP');

    // An unenrolled device's own, validly signed log, alone or next to alice's genuine ops.
    let state = { tip: { seq: 0, id: null as string | null }, clock: HLC_ZERO };
    const malloryOps: Uint8Array[] = [];
    for (let i = 0; i < 3; i++) {
      const r = authorOp({ signer: mallory, team: team.name, user: 'mallory' }, state, Date.now() + i, { type: 'create', domain: 'note', entity: `m-${i}`, base: [], fields: { text: 'planted' } });
      state = r.state;
      malloryOps.push(r.op.bytes);
    }
    await refused(reseal(bundle, { runs: [...bundle.runs, { device: mallory.device, ops: malloryOps }] }), RuleViolationError, 'UNENROLLED');
    // ... with a certificate mallory signed for itself (not HQ's): refused as a certificate.
    const selfCert = issueCertificate({ team: team.name, device: mallory.device, user: 'mallory', role: 'field', issuedMs: Date.now() - 1000, expiresMs: Date.now() + 86_400_000 }, mallory);
    await refused(reseal(bundle, { certs: [...bundle.certs, selfCert.bytes], runs: [{ device: mallory.device, ops: malloryOps }] }), RuleViolationError, 'CERT_WRONG_TEAM');
    // ... or with a certificate naming HQ as its issuer but signed by mallory.
    const posingAsHq: DeviceSigner = { device: team.hqDevice, publicKey: mallory.publicKey, sign: (m) => mallory.sign(m) };
    const forgedCert = issueCertificate({ team: team.name, device: mallory.device, user: 'mallory', role: 'gateway', issuedMs: Date.now() - 1000, expiresMs: Date.now() + 86_400_000 }, posingAsHq);
    expect(forgedCert.issuer).toBe(team.hqDevice);
    await refused(reseal(bundle, { certs: [...bundle.certs, forgedCert.bytes], runs: [{ device: mallory.device, ops: malloryOps }] }), RuleViolationError, 'BAD_CERT_SIGNATURE');
    expect(b.isEnrolled(mallory.device)).toBe(false);

    // A run that names alice but holds bob's op.
    const bobOp = (await b.op((await b.ops({ device: b.device }))[0]!.id))!.bytes;
    await refused(reseal(bundle, { runs: [{ device: a.device, ops: [...ops, bobOp] }] }), InvalidInputError, 'WRONG_DEVICE');

    // A forged fork proof against alice (her genuine op 1 and a re-signed copy): alice stays unflagged.
    const aliceOne = (await b.op((await b.ops({ device: a.device }))[0]!.id))!.bytes;
    const forgedTwin = twinOf(aliceOne, mallory);
    expect(parseOp(forgedTwin).op).toMatchObject({ device: a.device, seq: 1 });
    const pair = [aliceOne, forgedTwin].sort((x, y) => (opIdOf(x) < opIdOf(y) ? -1 : 1)) as [Uint8Array, Uint8Array];
    await refused(reseal(bundle, { forks: [{ device: a.device, seq: 1, ops: pair }] }), RuleViolationError, 'BAD_SIGNATURE');
    expect(await b.forkProofs()).toEqual([]);

    // The genuine bundle still imports in full.
    expect(await b.importBundle(good)).toMatchObject({ added: 6, refused: 0 });
    await a.importBundle(await b.exportBundle(a.versionVector()));
    expect(await b.stateHash()).toBe(await a.stateHash());
    expect((await b.verify()).problems).toEqual([]);
  });

  it('a bundle of another team is refused (WRONG_TEAM), also when its header claims ours', async () => {
    const { b, bundle, refused } = await prepared();
    const other = await hq.team(DOMAINS, 'other-team');
    const stranger = await other.node('stranger');
    await writeMix(stranger, 's', 4);
    const theirs = await stranger.exportBundle();
    const err = await refused(theirs, RuleViolationError, 'WRONG_TEAM');
    expect(err.message).toMatch(/other-team/);

    const foreign = decodeBundle(theirs);
    // Our team's name and HQ in the header, their certificates: refused as certificates.
    await refused(reseal(foreign, { team: bundle.team, hq: bundle.hq }), RuleViolationError, 'CERT_WRONG_TEAM');
    // Our header, no certificates, their ops: refused op by op.
    await refused(reseal(foreign, { team: bundle.team, hq: bundle.hq, certs: [] }), InvalidInputError, 'WRONG_TEAM');
    // Our team's name but another HQ: not our team.
    await refused(reseal(bundle, { hq: foreign.hq }), RuleViolationError, 'WRONG_TEAM');
    // Another team of the same name (another HQ) is another team.
    const twin = await hq.team(DOMAINS, bundle.team);
    const impostor = await twin.node('impostor');
    await writeMix(impostor, 'i', 2);
    await refused(await impostor.exportBundle(), RuleViolationError, 'WRONG_TEAM');
    expect(b.versionVector()[impostor.device]).toBeUndefined();
  });
});

/** Alice's op with another entity in its body (still her device and seq), signed by `by`. */
function twinOf(bytes: Uint8Array, by: DeviceSigner): Uint8Array {
  const body = decodeCanonical(parseOp(bytes).bodyBytes, 'op body') as unknown[];
  body[10] = `${String(body[10])}-twin`; // body := [v, type, team, device, seq, prev, wallMs, counter, user, domain, entity, ...]
  const bodyBytes = encodeCanonical(body);
  return encodeCanonical([bodyBytes, by.sign(withContext(new TextEncoder().encode('fieldmesh/op/1\n'), bodyBytes))]);
}

