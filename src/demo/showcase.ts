/**
 * The core on its own: three devices write concurrently while offline, then every node merges
 * the same ops in a different order and shows the same data. No network, no disk.
 */
import { createHash } from 'node:crypto';
import { authorOp, type Author, type AuthorState, type OpDraft } from '../core/author.ts';
import { EMPTY_TIP } from '../core/chain.ts';
import { HLC_ZERO } from '../core/hlc.ts';
import { signerFromSeed } from '../core/keys.ts';
import { materialize, stateHash, entityKey } from '../core/materialize.ts';
import type { Op } from '../core/op.ts';
import { MERGE_FUNCTIONS, type ResolutionConfig } from '../core/strategies.ts';

const seed = (name: string) => createHash('sha256').update(`fieldmesh-showcase/${name}`).digest();

class Device {
  readonly author: Author;
  private state: AuthorState = { tip: EMPTY_TIP, clock: HLC_ZERO };
  constructor(name: string, user: string) {
    this.author = { signer: signerFromSeed(seed(name)), team: 'demo', user };
  }
  write(physicalMs: number, draft: OpDraft): Op {
    const { op, state } = authorOp(this.author, this.state, physicalMs, draft);
    this.state = state;
    return op;
  }
}

const hq = new Device('hq', 'hq-staff');
const alice = new Device('alice-tablet', 'alice');
const bob = new Device('bob-laptop', 'bob');
const config: ResolutionConfig = {
  hqDevice: hq.author.signer.device,
  domains: {
    case: 'manual',
    evidence: { strategy: 'merge', merge: { tags: MERGE_FUNCTIONS.union } },
  },
};

const t0 = Date.UTC(2026, 10, 25, 8, 0, 0);
const created = hq.write(t0, { type: 'create', domain: 'case', entity: 'case-7', base: [], fields: { title: 'Warehouse fire', status: 'open' } });
const evidence = alice.write(t0 + 1000, { type: 'create', domain: 'evidence', entity: 'ev-1', base: [], fields: { case: 'case-7', kind: 'photo', tags: ['exterior'] } });
// Everyone has seen both creates; now the network is gone and three people edit at once.
const concurrent = [
  alice.write(t0 + 60_000, { type: 'update', domain: 'case', entity: 'case-7', base: [created.id], fields: { status: 'closed' } }),
  bob.write(t0 + 61_000, { type: 'update', domain: 'case', entity: 'case-7', base: [created.id], fields: { status: 'escalated', lead: 'bob' } }),
  alice.write(t0 + 62_000, { type: 'update', domain: 'evidence', entity: 'ev-1', base: [evidence.id], fields: { tags: ['exterior', 'smoke-damage'] } }),
  bob.write(t0 + 63_000, { type: 'update', domain: 'evidence', entity: 'ev-1', base: [evidence.id], fields: { tags: ['exterior', 'accelerant'], note: 'petrol smell' } }),
];
const ops = [created, evidence, ...concurrent];

const rotate = (list: Op[], by: number) => [...list.slice(by), ...list.slice(0, by)];
const nodes = { hq: ops, alice: rotate(ops, 2), bob: [...ops].reverse() };

const show = (label: string, list: Op[]) => {
  const m = materialize(list, config);
  console.log(`${label.padEnd(6)} state ${stateHash([...m.entities.values()].map((e) => e.view)).slice(0, 16)}  arrival order ${list.map((o) => o.id.slice(0, 4)).join(' ')}`);
  return m;
};

console.log('fieldmesh core showcase: HQ, alice and bob edit case-7 and ev-1 concurrently while offline.\n');
const results = Object.entries(nodes).map(([name, list]) => show(name, list));
const m = results[0]!;
const caseView = m.entities.get(entityKey('case', 'case-7'))!.view;
const evView = m.entities.get(entityKey('evidence', 'ev-1'))!.view;
console.log('\nevidence/ev-1 (merge, tags merged by set union, other fields last-writer-wins):');
console.log(' ', JSON.stringify(evView.fields));
console.log('case/case-7 (manual): shows', JSON.stringify(caseView.fields), 'with an open conflict:');
for (const f of caseView.conflict!.fields) {
  console.log(`  ${f.field}: ${f.candidates.map((c) => `${JSON.stringify(c.value)} by ${c.user}`).join(' vs ')}`);
}

// HQ staff resolve the conflict; the resolution supersedes both candidates on every node.
const conflict = caseView.conflict!;
const resolution = hq.write(t0 + 120_000, { type: 'resolve', domain: 'case', entity: 'case-7', base: [...caseView.heads], conflict: conflict.id, exists: true, fields: { status: 'escalated' } });
const after = materialize([...ops, resolution], config);
console.log('after HQ resolves:', JSON.stringify(after.entities.get(entityKey('case', 'case-7'))!.view.fields), 'conflict:', after.entities.get(entityKey('case', 'case-7'))!.view.conflict);
const hashes = new Set(results.map((r) => stateHash([...r.entities.values()].map((e) => e.view))));
console.log(`\n${hashes.size === 1 ? 'identical' : 'DIFFERENT'} state on all ${results.length} nodes.`);
process.exitCode = hashes.size === 1 ? 0 : 1;
