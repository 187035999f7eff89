/**
 * The simulated disk under the real Store: a write resolves only once flushed, a crash loses
 * what was not flushed (and nothing else), and the Store reopens on the same disk.
 */
import { describe, expect, it } from 'vitest';
import { decodeCertificate, issueCertificate } from '../../src/core/cert.ts';
import { Store } from '../../src/store/store.ts';
import { SimDisk } from '../../src/sim/disk.ts';
import { T0, TestDevice } from '../core/helpers.ts';

const hq = new TestDevice('disk-hq');
const device = new TestDevice('disk-device');
const certOf = (d: TestDevice) => decodeCertificate(issueCertificate({ team: 'team-1', device: d.id, user: 'u', role: 'field', issuedMs: T0, expiresMs: T0 + 1e9 }, hq.author.signer).bytes);
const open = (disk: SimDisk) => Store.open({ dir: 'sim:disk', identity: { team: 'team-1', device: device.id, hqDevice: hq.id }, resolution: { hqDevice: hq.id }, database: disk });

/** Runs `work` while flushing the disk whenever it waits, as the simulator's fsync events do. */
async function flushing<T>(disk: SimDisk, work: Promise<T>): Promise<T> {
  let done = false;
  const result = work.finally(() => (done = true));
  while (!done) {
    await new Promise((resolve) => setImmediate(resolve));
    await disk.flush();
  }
  return result;
}

describe('SimDisk', () => {
  it('resolves a store write only after the flush, and loses unflushed writes in a crash', async () => {
    const disk = new SimDisk();
    let waiting = 0;
    disk.onUnflushed = () => waiting++;
    const store = await flushing(disk, open(disk));
    await flushing(disk, store.addCertificates([certOf(device)]));

    let resolved = false;
    void store.addCertificates([certOf(hq)]).then(() => (resolved = true));
    await new Promise((resolve) => setImmediate(resolve));
    expect(resolved).toBe(false);
    expect(disk.pendingBatches).toBe(1);
    expect(waiting).toBeGreaterThan(0);

    await disk.crash(); // the store is dropped without close()
    expect(disk.dropped).toBe(1);
    const reopened = await flushing(disk, open(disk));
    expect([...reopened.certificates.keys()]).toEqual([device.id]);
    expect(resolved).toBe(false);
  });

  it('ack-before-flush acknowledges at once and a crash undoes it (the broken variant)', async () => {
    const disk = new SimDisk({ ackBeforeFlush: true });
    const store = await flushing(disk, open(disk));
    await disk.flush();
    await store.addCertificates([certOf(device)]); // resolves without a flush
    await disk.crash();
    const reopened = await flushing(disk, open(disk));
    expect([...reopened.certificates.keys()]).toEqual([]);
  });
});
