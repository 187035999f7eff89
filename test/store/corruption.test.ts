/**
 * Damaged and foreign data dirs. A damaged dir must either refuse to open with a typed error that
 * names its path, or open and serve only data that was really written (never a wrong value),
 * with verify() reporting what it finds. A foreign dir, another team's or device's dir, a
 * garbled device key and a dir opened twice each fail with their own typed error.
 */
import { cp, mkdir, readdir, readFile, rm, stat, truncate, unlink, writeFile, mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Level } from 'level';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FieldmeshError } from '../../src/core/errors.ts';
import { deviceIdFromPublicKey } from '../../src/core/keys.ts';
import { opIdOf } from '../../src/core/op.ts';
import type { EntityView } from '../../src/core/view.ts';
import { KeyFileError } from '../../src/node/device-key.ts';
import { FieldNode } from '../../src/node/field-node.ts';
import { StoreCorruptError, StoreLockedError, StoreMismatchError } from '../../src/store/errors.ts';
import { entityKeyOf, logKey } from '../../src/store/keys.ts';
import { Store } from '../../src/store/store.ts';
import { TABLES, tableKey } from '../../src/store/tables.ts';
import { DOMAINS, expectRejects, HQ, logOf, signerOf, TEAM, useTemp } from '../node/helpers.ts';

const temp = useTemp();

/** Views compared as JSON with byte strings spelled out. */
const canon = (view: EntityView | null): string => JSON.stringify(view, (_, v: unknown) => (v instanceof Uint8Array ? `bytes:${Buffer.from(v).toString('hex')}` : v));

interface Base {
  readonly dir: string;
  /** Entity key -> every view it had (null before creation or after deletion). */
  readonly history: Map<string, Set<string>>;
  /** Entity key -> its view when the base was closed. */
  readonly final: Map<string, string>;
  /** Op id -> its bytes as written. */
  readonly ops: Map<string, Uint8Array>;
  readonly device: string;
  readonly seq: number;
}

const ENTITIES = Array.from({ length: 240 }, (_, i) => [i % 3 === 0 ? 'case' : 'evidence', `ent-${i}`] as const);

let base: Base;
let baseRoot = '';

/**
 * A data dir with a table file (.ldb) and a write-ahead log (.log): phase 1 creates every entity,
 * a reopen flushes it into a table, phase 2 updates and deletes some of them (in the log).
 */
beforeAll(async () => {
  baseRoot = await mkdtemp(join(tmpdir(), 'fm-corrupt-base-'));
  const dir = join(baseRoot, 'node');
  const history = new Map<string, Set<string>>();
  const final = new Map<string, string>();
  const remember = async (node: FieldNode) => {
    for (const [d, e] of ENTITIES) {
      const set = history.get(`${d}/${e}`) ?? new Set([canon(null)]);
      const view = canon(await node.get(d, e));
      set.add(view);
      history.set(`${d}/${e}`, set);
      final.set(`${d}/${e}`, view);
    }
  };
  let node = await FieldNode.open({ dataDir: dir, team: TEAM, user: 'alice', hqDevice: HQ.device, domains: DOMAINS });
  for (let i = 0; i < ENTITIES.length; i += 40) {
    await Promise.all(ENTITIES.slice(i, i + 40).map(([d, e], k) => node.mutate({ type: 'create', domain: d, entity: e, fields: { i: i + k, text: `entity ${e} `.repeat(20), bytes: Uint8Array.of(i, k) } })));
  }
  await remember(node);
  await node.close();
  node = await FieldNode.open({ dataDir: dir, team: TEAM, user: 'alice', hqDevice: HQ.device, domains: DOMAINS });
  await Promise.all(ENTITIES.slice(0, 120).map(([d, e], i) => (i % 6 === 5 ? node.mutate({ type: 'delete', domain: d, entity: e }) : node.mutate({ type: 'update', domain: d, entity: e, fields: { i: -i, phase: 2 } }))));
  await remember(node);
  const ops = new Map<string, Uint8Array>();
  for (const bytes of await logOf(node)) ops.set(opIdOf(bytes), bytes);
  const seq = node.versionVector()[node.device]!;
  const device = node.device;
  await node.close();
  base = { dir, history, final, ops, device, seq };
  const files = await readdir(join(dir, 'db'));
  expect(files.some((f) => f.endsWith('.ldb'))).toBe(true);
  expect(files.some((f) => f.endsWith('.log'))).toBe(true);
}, 60_000);

afterAll(async () => {
  if (baseRoot !== '') await rm(baseRoot, { recursive: true, force: true });
});

const openAt = (dataDir: string, options: Partial<Parameters<typeof FieldNode.open>[0]> = {}) =>
  FieldNode.open({ dataDir, team: TEAM, user: 'alice', hqDevice: HQ.device, domains: DOMAINS, ...options });

/** A typed error about a damaged store: StoreCorruptError, naming the db path. */
function expectTypedCorruption(err: unknown, dbPath: string, what: string): void {
  expect(err, `${what}: ${String(err)}`).toBeInstanceOf(StoreCorruptError);
  expect(['STORE_CORRUPT', 'STORE_FOREIGN'], `${what}: ${(err as FieldmeshError).code}`).toContain((err as FieldmeshError).code);
  expect((err as Error).message, what).toContain(dbPath);
}

/** Runs a read that may fail only with a typed corruption error; returns its value or undefined. */
async function read<T>(run: () => Promise<T>, dbPath: string, what: string): Promise<T | undefined> {
  try {
    return await run();
  } catch (err) {
    expectTypedCorruption(err, dbPath, what);
    return undefined;
  }
}

type Damage = (dbDir: string) => Promise<void>;

function garble(at: number, length = 32): (file: string) => Damage {
  return (file) => async (dbDir) => {
    const path = join(dbDir, file);
    const bytes = await readFile(path);
    const start = Math.min(Math.max(0, Math.floor(bytes.length * at)), Math.max(0, bytes.length - length));
    for (let k = start; k < Math.min(bytes.length, start + length); k++) bytes[k]! ^= 0xa5;
    await writeFile(path, bytes);
  };
}

function cut(keep: (size: number) => number): (file: string) => Damage {
  return (file) => async (dbDir) => {
    const path = join(dbDir, file);
    await truncate(path, keep((await stat(path)).size));
  };
}

const FILE_DAMAGES: [string, (file: string) => Damage][] = [
  ['truncated to half', cut((n) => Math.floor(n / 2))],
  ['truncated by 7 bytes', cut((n) => Math.max(0, n - 7))],
  ['truncated to 0', cut(() => 0)],
  ['garbled at 10%', garble(0.1)],
  ['garbled in the middle', garble(0.5)],
  ['garbled at 90%', garble(0.9)],
  ['garbled in its last bytes', garble(1, 16)],
];

/** The damage cases, named after the base dir's files (read once the base exists). */
async function damageCases(): Promise<[string, Damage][]> {
  const files = await readdir(join(base.dir, 'db'));
  const cases: [string, Damage][] = [];
  for (const file of files.filter((f) => f.endsWith('.ldb') || f.endsWith('.log')).sort()) {
    const kind = file.endsWith('.ldb') ? 'table' : 'log';
    for (const [name, damage] of FILE_DAMAGES) cases.push([`${kind} ${file} ${name}`, damage(file)]);
    cases.push([`${kind} ${file} deleted`, async (db) => unlink(join(db, file))]);
  }
  const manifest = files.find((f) => f.startsWith('MANIFEST-'))!;
  cases.push(['CURRENT deleted', async (db) => unlink(join(db, 'CURRENT'))]);
  cases.push(['CURRENT naming a missing manifest', async (db) => writeFile(join(db, 'CURRENT'), 'MANIFEST-999999\n')]);
  cases.push(['junk written into MANIFEST', async (db) => writeFile(join(db, manifest), 'this is not a manifest at all\n'.repeat(4))]);
  cases.push(['MANIFEST garbled in the middle', garble(0.5, 8)(manifest)]);
  cases.push(['MANIFEST truncated to 0', cut(() => 0)(manifest)]);
  return cases;
}

describe('a damaged data dir', () => {
  it('either refuses to open with a typed error naming its path, or serves only data that was written', async () => {
    const cases = await damageCases();
    expect(cases.length).toBeGreaterThan(20);
    const failures: string[] = [];
    const outcomes: string[] = [];
    for (const [name, damage] of cases) {
      const dataDir = join(await temp.dir('fm-corrupt-'), 'node');
      await cp(base.dir, dataDir, { recursive: true });
      const dbPath = join(dataDir, 'db');
      await damage(dbPath);
      try {
        outcomes.push(`${name}: ${await judge(dataDir, dbPath, name)}`);
      } catch (err) {
        failures.push(`${name}: ${(err as Error).message.split('\n')[0]}`);
      }
    }
    expect(failures, `outcomes:\n${outcomes.join('\n')}`).toEqual([]);
  }, 120_000);

  /** Opens a damaged dir and checks every read; returns a one-line outcome. */
  async function judge(dataDir: string, dbPath: string, name: string): Promise<string> {
    let node: FieldNode;
    try {
      node = await openAt(dataDir);
    } catch (err) {
      expectTypedCorruption(err, dbPath, `${name}: open`);
      return `refused (${(err as FieldmeshError).code})`;
    }
    try {
      let served = 0;
      for (const [d, e] of ENTITIES) {
        const view = await read(() => node.get(d, e), dbPath, `${name}: get ${d}/${e}`);
        if (view === undefined) continue;
        expect(base.history.get(`${d}/${e}`)!.has(canon(view)), `${name}: ${d}/${e} served a value never written: ${canon(view).slice(0, 200)}`).toBe(true);
        served++;
      }
      for (const domain of ['case', 'evidence']) {
        const views = await read(() => node.query(domain, { limit: 10_000 }), dbPath, `${name}: query ${domain}`);
        for (const view of views ?? []) expect(base.history.get(`${view.domain}/${view.entity}`)?.has(canon(view)), `${name}: query served ${view.domain}/${view.entity} wrongly`).toBe(true);
      }
      for (const [id, bytes] of base.ops) {
        const op = await read(() => node.op(id), dbPath, `${name}: op ${id}`);
        if (op !== undefined) expect(Buffer.from(op.bytes).equals(Buffer.from(bytes)), `${name}: op ${id} has other bytes`).toBe(true);
      }
      expect(node.versionVector()[base.device] ?? 0).toBeLessThanOrEqual(base.seq);
      // verify() reports problems (or none); it does not stop at the first damaged record.
      let report;
      try {
        report = await node.verify();
      } catch (err) {
        throw new Error(`verify() threw instead of reporting: ${(err as Error).constructor.name} ${(err as FieldmeshError).code}: ${(err as Error).message}`);
      }
      return `opened; ${served} entities readable; verify: ${report.ops} ops, ${report.problems.length} problems`;
    } finally {
      await node.close();
    }
  }

  it('serves everything unchanged when nothing is damaged (the judge itself)', async () => {
    const dataDir = join(await temp.dir('fm-corrupt-'), 'node');
    await cp(base.dir, dataDir, { recursive: true });
    const node = await openAt(dataDir);
    try {
      expect(await node.verify()).toEqual({ devices: 1, ops: base.seq, problems: [] });
      for (const [d, e] of ENTITIES) expect(canon(await node.get(d, e))).toBe(base.final.get(`${d}/${e}`));
      expect([...base.final.values()].filter((v) => v === 'null')).toHaveLength(20);
    } finally {
      await node.close();
    }
  });
});

describe('a data dir whose database vanished', () => {
  it('is refused (STORE_MISSING), not started empty: new ops would sign seqs the device signed before, a fork', async () => {
    const dataDir = await temp.dir();
    const node = await openAt(dataDir);
    await node.mutate({ type: 'create', domain: 'evidence', entity: 'e1', fields: { i: 1 } });
    await node.close();
    for (const name of await readdir(join(dataDir, 'db'))) await rm(join(dataDir, 'db', name), { recursive: true });
    const err = await expectRejects(openAt(dataDir), StoreCorruptError, 'STORE_MISSING');
    expect(err.message).toContain('restore it from a backup');
    expect(await readdir(join(dataDir, 'db'))).toEqual([]); // nothing was created
    await rm(join(dataDir, 'db'), { recursive: true });
    await expectRejects(openAt(dataDir), StoreCorruptError, 'STORE_MISSING');
  });
});

describe('a foreign data dir', () => {
  it('refuses a dir of random files with STORE_FOREIGN (Store and FieldNode)', async () => {
    const dir = await temp.dir();
    await writeFile(join(dir, 'notes.txt'), 'shopping list');
    await writeFile(join(dir, '000001.log'), Buffer.from([1, 2, 3, 4, 5]));
    await mkdir(join(dir, 'photos'));
    const err = await expectRejects(Store.open({ dir, identity: { team: TEAM, device: signerOf('x').device, hqDevice: HQ.device }, resolution: { hqDevice: HQ.device, domains: DOMAINS } }), StoreCorruptError, 'STORE_FOREIGN');
    expect(err.message).toContain(dir);
    expect(await readdir(dir)).toEqual(['000001.log', 'notes.txt', 'photos']); // nothing written into it

    const dataDir = await temp.dir();
    await mkdir(join(dataDir, 'db'));
    await writeFile(join(dataDir, 'db', 'random.bin'), Buffer.from('PK\u0003\u0004 not a database'));
    const err2 = await expectRejects(openAt(dataDir), StoreCorruptError, 'STORE_FOREIGN');
    expect(err2.message).toContain(join(dataDir, 'db'));
  });

  it('refuses a LevelDB database that is not a fieldmesh store with STORE_FOREIGN', async () => {
    const dataDir = await temp.dir();
    const other = new Level<string, string>(join(dataDir, 'db'));
    await other.put('user:1', 'someone else\'s data');
    await other.close();
    const err = await expectRejects(openAt(dataDir), StoreCorruptError, 'STORE_FOREIGN');
    expect(err.message).toContain(join(dataDir, 'db'));
    // And leaves it alone.
    const again = new Level<string, string>(join(dataDir, 'db'));
    expect(await again.keys().all()).toEqual(['user:1']);
    await again.close();
  });
});

describe('a data dir of another team or device', () => {
  it('refuses another team, another HQ and another device with STORE_IDENTITY', async () => {
    const dataDir = await temp.dir();
    const node = await openAt(dataDir);
    await node.mutate({ type: 'create', domain: 'case', entity: 'c1', fields: {} });
    await node.close();
    const dbPath = join(dataDir, 'db');

    const team = await expectRejects(openAt(dataDir, { team: 'other-team' }), StoreMismatchError, 'STORE_IDENTITY');
    expect(team.message).toContain(dbPath);
    expect(team.details).toMatchObject({ field: 'team', expected: 'other-team', found: TEAM });
    const hq = await expectRejects(openAt(dataDir, { hqDevice: signerOf('other-hq').device }), StoreMismatchError, 'STORE_IDENTITY');
    expect(hq.details).toMatchObject({ field: 'hqDevice' });

    // The db of this device copied next to another device's key.
    const otherDir = await temp.dir();
    const otherNode = await openAt(otherDir);
    await otherNode.close();
    await rm(join(otherDir, 'db'), { recursive: true });
    await cp(dbPath, join(otherDir, 'db'), { recursive: true });
    const device = await expectRejects(openAt(otherDir), StoreMismatchError, 'STORE_IDENTITY');
    expect(device.details).toMatchObject({ field: 'device', expected: otherNode.device, found: node.device });
    expect(device.message).toContain(join(otherDir, 'db'));

    // Nothing was changed by the refusals: the right options still open it.
    const again = await openAt(dataDir);
    expect((await again.get('case', 'c1'))!.exists).toBe(true);
    await again.close();
  });
});

describe('a refused open', () => {
  it('leaves the data dir as it was: a field device dir opened by mistake as HQ still opens as itself', async () => {
    const dataDir = await temp.dir();
    const node = await openAt(dataDir);
    await node.mutate({ type: 'create', domain: 'case', entity: 'c1', fields: {} });
    await node.close();
    const before = (await readdir(dataDir)).sort();
    // As HQ its own key would be the team root: the store of a field device belongs to another HQ.
    await expectRejects(openAt(dataDir, { role: 'server', hqDevice: undefined }), StoreMismatchError, 'STORE_IDENTITY');
    expect((await readdir(dataDir)).sort(), 'the refused open left files behind').toEqual(before);
    const again = await openAt(dataDir);
    expect((await again.get('case', 'c1'))!.exists).toBe(true);
    await again.close();
  });
});

describe('a garbled device key', () => {
  async function withKey(edit: (key: Buffer) => Buffer, keepDb: boolean) {
    const dataDir = await temp.dir();
    const node = await openAt(dataDir);
    const device = node.device;
    await node.close();
    const path = join(dataDir, 'device.key');
    await writeFile(path, edit(await readFile(path)));
    if (!keepDb) await rm(join(dataDir, 'db'), { recursive: true });
    return { dataDir, path, device };
  }

  const edits: [string, (key: Buffer) => Buffer][] = [
    ['junk', () => Buffer.from('this is not a key, not even close')],
    ['empty', () => Buffer.alloc(0)],
    ['truncated', (k) => k.subarray(0, 40)],
    ['garbled header', (k) => Buffer.from(k.map((b, i) => (i === 0 ? b ^ 0xff : b)))],
    ['garbled in the middle (private seed)', (k) => Buffer.from(k.map((b, i) => (i === k.length >> 1 ? b ^ 0x01 : b)))],
    ['garbled near the end (public key)', (k) => Buffer.from(k.map((b, i) => (i === k.length - 10 ? b ^ 0x01 : b)))],
  ];

  for (const [name, edit] of edits) {
    for (const keepDb of [true, false]) {
      it(`refuses a key file ${name} with KEY_CORRUPT${keepDb ? '' : ' (no database yet)'}`, async () => {
        const { dataDir, path } = await withKey(edit, keepDb);
        let opened: FieldNode | undefined;
        try {
          opened = await openAt(dataDir);
        } catch (err) {
          expect(err, String(err)).toBeInstanceOf(KeyFileError);
          expect((err as KeyFileError).code, (err as Error).message).toBe('KEY_CORRUPT');
          expect((err as Error).message).toContain(path);
          return;
        }
        const consistent = deviceIdFromPublicKey(opened.privateKey.publicKey.raw) === opened.device;
        await opened.close();
        expect.fail(`a garbled key file opened as device ${opened.device} (its libp2p public key ${consistent ? 'matches' : 'does NOT match'} that device id)`);
      });
    }
  }
});

describe('a data dir opened twice', () => {
  it('refuses the second open in the same process with STORE_LOCKED, and opens again after close', async () => {
    const dataDir = await temp.dir();
    const first = await openAt(dataDir);
    const err = await expectRejects(openAt(dataDir), StoreLockedError, 'STORE_LOCKED');
    expect(err.message).toContain(join(dataDir, 'db'));
    // The first is unaffected.
    await first.mutate({ type: 'create', domain: 'case', entity: 'c1', fields: {} });
    await first.close();
    const second = await openAt(dataDir);
    expect((await second.get('case', 'c1'))!.exists).toBe(true);
    await second.close();
  });
});

describe('a damaged record inside an intact LevelDB', () => {
  /** A closed data dir with a few ops, and raw access to its LevelDB to damage single records. */
  async function damaged(edit: (db: Level<string, Uint8Array>, device: string) => Promise<void>) {
    const dataDir = await temp.dir();
    const node = await openAt(dataDir);
    for (let i = 0; i < 5; i++) await node.mutate({ type: 'create', domain: 'evidence', entity: `e${i}`, fields: { i } });
    const device = node.device;
    await node.close();
    const db = new Level<string, Uint8Array>(join(dataDir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'view' });
    await db.open();
    await edit(db, device);
    await db.close();
    return { node: await openAt(dataDir), dbPath: join(dataDir, 'db'), device };
  }
  const flip = async (db: Level<string, Uint8Array>, key: string, index = 3) => {
    const value = Uint8Array.from((await db.get(key))!);
    value[index]! ^= 0x01;
    await db.put(key, value);
  };

  it('get(), query() and stateHash() refuse a garbled entity row with STORE_CORRUPT, never a wrong value', async () => {
    const { node, dbPath } = await damaged((db) => flip(db, tableKey(TABLES.entity, entityKeyOf('evidence', 'e2')), 20));
    try {
      expect((await node.get('evidence', 'e1'))!.fields).toEqual({ i: 1 });
      const err = await expectRejects(node.get('evidence', 'e2'), StoreCorruptError, 'STORE_CORRUPT');
      expect(err.message).toContain(dbPath);
      await expectRejects(node.query('evidence'), StoreCorruptError, 'STORE_CORRUPT');
      await expectRejects(node.stateHash(), StoreCorruptError, 'STORE_CORRUPT');
      // Writing to the damaged entity fails typed too, and stores nothing.
      await expectRejects(node.mutate({ type: 'update', domain: 'evidence', entity: 'e2', fields: { i: 9 } }), StoreCorruptError, 'STORE_CORRUPT');
      expect(node.versionVector()[node.device]).toBe(5);
    } finally {
      await node.close();
    }
  });

  it('verify() reports damaged derived rows (entity state, tip, status counter), and a reopen that rebuilds the derived tables repairs them', async () => {
    const { node, dbPath, device } = await damaged((db) => flip(db, tableKey(TABLES.entity, entityKeyOf('evidence', 'e2')), 20));
    await node.close();
    const db = new Level<string, Uint8Array>(dbPath, { keyEncoding: 'utf8', valueEncoding: 'view' });
    await db.open();
    await flip(db, tableKey(TABLES.tip, device), 2);
    await db.close();
    // The tip is read on open: the damaged one keeps the node from opening at all, with a typed error.
    await expectRejects(openAt(join(dbPath, '..')), StoreCorruptError, 'STORE_CORRUPT');
    const repaired = await openAt(join(dbPath, '..'), { rebuildDerived: true });
    try {
      expect((await repaired.get('evidence', 'e2'))!.fields).toEqual({ i: 2 });
      expect(repaired.versionVector()[device]).toBe(5);
      expect((await repaired.verify()).problems).toEqual([]);
    } finally {
      await repaired.close();
    }
    // A damaged entity row alone: the node opens, and verify() names the row.
    const { node: again } = await damaged((db) => flip(db, tableKey(TABLES.entity, entityKeyOf('evidence', 'e3')), 20));
    try {
      const report = await again.verify();
      expect(report.problems).toEqual([expect.objectContaining({ code: 'BAD_ROW', message: expect.stringContaining('e\\u0001evidence\\u0000e3') })]);
    } finally {
      await again.close();
    }
  });

  it('refuses a record served under another key (the checksum covers the key)', async () => {
    const { node } = await damaged(async (db) => {
      const e3 = (await db.get(tableKey(TABLES.entity, entityKeyOf('evidence', 'e3'))))!;
      await db.put(tableKey(TABLES.entity, entityKeyOf('evidence', 'e4')), e3);
    });
    try {
      await expectRejects(node.get('evidence', 'e4'), StoreCorruptError, 'STORE_CORRUPT');
      expect((await node.get('evidence', 'e3'))!.fields).toEqual({ i: 3 });
    } finally {
      await node.close();
    }
  });

  it('verify() reports every garbled log record as a problem instead of stopping at the first', async () => {
    const { node, device } = await damaged(async (db, dev) => {
      await flip(db, tableKey(TABLES.log, logKey(dev, 2)), 30);
      await flip(db, tableKey(TABLES.log, logKey(dev, 4)), 30);
    });
    try {
      let report;
      try {
        report = await node.verify();
      } catch (err) {
        expect.fail(`verify() threw instead of reporting: ${(err as FieldmeshError).code}: ${(err as Error).message}`);
      }
      expect(report.ops).toBe(5);
      expect(report.problems.map((p) => [p.device, p.seq])).toEqual(
        expect.arrayContaining([
          [device, 2],
          [device, 4],
        ]),
      );
      // The entity rows are intact and still served.
      expect((await node.get('evidence', 'e1'))!.fields).toEqual({ i: 1 });
      // Reading the damaged op fails typed.
      const meta = (await node.ops({ device }))[1]!;
      await expectRejects(node.op(meta.id), StoreCorruptError, 'STORE_CORRUPT');
    } finally {
      await node.close();
    }
  });

  it('verify() reports a log entry whose metadata row is missing, and a tip that runs past the log', async () => {
    const { node, device } = await damaged(async (db, dev) => {
      await db.del(tableKey(TABLES.log, logKey(dev, 5)));
    });
    try {
      const report = await node.verify();
      expect(report.ops).toBe(4);
      expect(report.problems).toEqual([expect.objectContaining({ device, code: 'TIP_MISMATCH' })]);
    } finally {
      await node.close();
    }
  });
});
