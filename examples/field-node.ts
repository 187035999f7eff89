// Run: bash scripts/run.sh example   (or: node examples/field-node.ts with Node >= 22)
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FieldNode } from '../src/node/field-node.ts';
import { MERGE_FUNCTIONS } from '../src/core/strategies.ts';

const dir = await mkdtemp(join(tmpdir(), 'fieldmesh-example-'));
const domains = { case: 'manual', evidence: { strategy: 'merge', merge: { tags: MERGE_FUNCTIONS.union } } } as const;
// HQ's device id is the team's root of trust; here HQ is a second data dir on the same machine.
const hq = await FieldNode.open({ dataDir: join(dir, 'hq'), team: 'demo', user: 'hq-staff', role: 'server', domains });
const tablet = await FieldNode.open({ dataDir: join(dir, 'tablet'), team: 'demo', user: 'alice', hqDevice: hq.device, domains });

const events = tablet.subscribe({ kinds: ['status'] });
const created = await tablet.mutate({ type: 'create', domain: 'evidence', entity: 'ev-1', fields: { kind: 'photo', tags: ['exterior'] } });
await tablet.mutate({ type: 'update', domain: 'evidence', entity: 'ev-1', fields: { tags: ['exterior', 'smoke'] } });
console.log('op', created.id.slice(0, 12), 'is', created.status); // pending: HQ has not answered yet
console.log('ev-1 =', (await tablet.get('evidence', 'ev-1'))?.fields);
console.log('queue:', (await tablet.queue()).map((o) => `${o.type} #${o.seq}`).join(', '));
console.log('counts:', await tablet.counts());
console.log('first event:', (await events.next()).value);
events.close();
await tablet.close();
await hq.close();
await rm(dir, { recursive: true, force: true });
