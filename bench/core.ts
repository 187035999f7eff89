/**
 * Core suite: signing, verification, range verification and materialization, each next to the
 * physical or library limit it is bounded by (raw node:crypto Ed25519 and SHA-256), measured in
 * the same run and interleaved with it so that machine load affects both alike.
 */
import { hash, sign, verify } from 'node:crypto';
import { authorOp, type AuthorState } from '../src/core/author.ts';
import { EMPTY_TIP, verifyRange } from '../src/core/chain.ts';
import { HLC_ZERO } from '../src/core/hlc.ts';
import { materialize } from '../src/core/materialize.ts';
import { decodeOp, parseOp, signingBytes } from '../src/core/op.ts';
import { against, measureRates, timeRuns, type Clock, type Result, type Suite } from './harness.ts';
import { BenchDevice, chainedOps, realisticDraft, T0, teamWorkload } from './workload.ts';

const RANGE = 1000;
const MATERIALIZE_OPS = 100_000;
/**
 * Everything here is synchronous computation, so rates and times are taken on the process's CPU
 * time (GC threads included): on a shared 2-core machine other processes then skew them (and their
 * ratios) far less than they skew wall time. BENCH_CLOCK=wall (or thread) picks another clock.
 */
const CLOCK: Clock = process.env.BENCH_CLOCK === 'wall' || process.env.BENCH_CLOCK === 'thread' ? process.env.BENCH_CLOCK : 'cpu';

export const coreSuite: Suite = {
  name: 'core',
  description: 'op signing/verification, range verification and materialization vs raw node:crypto',
  approxSeconds: 30,
  async run(log) {
    const results: Result[] = [];
    log(`clock: ${CLOCK === 'cpu' ? 'process CPU time (all threads)' : CLOCK === 'thread' ? 'main thread CPU time' : 'wall time'}`);
    const device = new BenchDevice('bench-core', 'investigator');

    // A log of realistic chained ops: the pool for decode+verify and the range for verifyRange.
    const chain = chainedOps(device, RANGE);
    const encoded = chain.map((op) => op.bytes);
    const sample = parseOp(encoded[RANGE - 1]!);
    const message = signingBytes(sample.bodyBytes);
    log(`realistic op: ${Object.keys(sample.op.type === 'update' ? sample.op.fields : {}).length} fields, envelope ${sample.op.bytes.length} B, signed message ${message.length} B`);

    // Raw limits: node:crypto with cached KeyObjects, over a message as long as the op's signed bytes.
    const { privateKey, publicKey } = device;
    const sig = sign(null, message, privateKey);
    if (!verify(null, message, publicKey, sig) || !Buffer.from(sig).equals(Buffer.from(sample.sig))) throw new Error('raw Ed25519 self-check failed');
    const sha300 = new Uint8Array(300).map((_, i) => i * 7);
    if (verifyRange(EMPTY_TIP, encoded).length !== RANGE || decodeOp(encoded[0]!).id !== chain[0]!.id) throw new Error('range self-check failed');

    // 1+2: raw sign vs encode+sign (authorOp: HLC, validation, canonical CBOR, Ed25519, op id).
    log('measuring Ed25519 sign vs encode+sign ...');
    let state: AuthorState = { tip: EMPTY_TIP, clock: HLC_ZERO };
    let n = 0;
    // Drafts are built beforehand: building one is the application's work, not encoding or signing.
    const drafts = Array.from({ length: 1000 }, (_, i) => realisticDraft(i, [chain[i]!.id]));
    const signRates = measureRates(
      {
        rawSign: () => sign(null, message, privateKey),
        encodeSign: () => {
          const out = authorOp(device.author, state, T0 + n * 1000, drafts[n % drafts.length]!);
          state = out.state;
          n++;
          return out.op;
        },
      },
      { minMs: 3000, rounds: 12, clock: CLOCK },
    );
    const rawSign: Result = { name: 'core.ed25519_sign', value: signRates.rawSign.rate, unit: 'ops/s' };
    results.push(rawSign);

    // 1+3+4: raw verify and SHA-256 vs decode+verify and range verification.
    log('measuring Ed25519 verify, SHA-256, decode+verify and verifyRange ...');
    let k = 0;
    const verifyRates = measureRates(
      {
        rawVerify: () => verify(null, message, publicKey, sig),
        sha256: () => hash('sha256', sha300, 'buffer'),
        decodeVerify: () => decodeOp(encoded[k++ % RANGE]!),
        range: () => verifyRange(EMPTY_TIP, encoded),
      },
      { minMs: 2000, rounds: 10, clock: CLOCK },
    );
    const rawVerify: Result = { name: 'core.ed25519_verify', value: verifyRates.rawVerify.rate, unit: 'ops/s' };
    const sha: Result = { name: 'core.sha256_300B', value: verifyRates.sha256.rate, unit: 'hashes/s' };
    results.push(rawVerify, sha);

    results.push(against({ name: 'core.encode_sign', value: signRates.encodeSign.rate, unit: 'ops/s', target: { on: 'ratio', op: '>=', value: 0.7 } }, rawSign));
    const decodeVerify = against({ name: 'core.decode_verify', value: verifyRates.decodeVerify.rate, unit: 'ops/s', target: { on: 'ratio', op: '>=', value: 0.7 } }, rawVerify);
    results.push(decodeVerify);
    const rangeRate = verifyRates.range.rate * RANGE;
    results.push(against({ name: `core.verify_range_${RANGE}`, value: rangeRate, unit: 'ops/s', target: { on: 'ratio', op: '>=', value: 10 } }, decodeVerify));
    results.push(against({ name: `core.verify_range_${RANGE}.vs_sha256`, value: rangeRate, unit: 'ops/s' }, sha));

    // 5: materialize a team's history.
    log(`generating ${MATERIALIZE_OPS.toLocaleString('en-US')} signed ops (10 devices, 3000 entities, 4 strategies) ...`);
    const started = performance.now();
    const workload = teamWorkload({ ops: MATERIALIZE_OPS });
    log(
      `  ${((performance.now() - started) / 1000).toFixed(1)} s: ${Object.entries(workload.counts)
        .map(([t, c]) => `${c} ${t}`)
        .join(', ')}; ${workload.entities} entities`,
    );
    log('measuring materialize ...');
    let last: ReturnType<typeof materialize> | undefined;
    const timing = timeRuns(() => (last = materialize(workload.ops, workload.config)), { runs: 3, warmup: 1, clock: CLOCK });
    const conflicts = [...last!.entities.values()].filter((e) => e.view.conflict !== null).length;
    const statuses = new Map<string, number>();
    for (const s of last!.statuses.values()) statuses.set(s.status, (statuses.get(s.status) ?? 0) + 1);
    log(`  runs ${timing.runsMs.map((ms) => ms.toFixed(0)).join(', ')} ms (${CLOCK}; wall ${timing.wallMs.map((ms) => ms.toFixed(0)).join(', ')} ms)`);
    log(`  ${last!.entities.size} entities, ${conflicts} open conflicts; statuses ${[...statuses].map(([s, c]) => `${c} ${s}`).join(', ')}; ${last!.waiting.length} waiting`);
    const seconds = timing.medianMs / 1000;
    results.push({ name: 'core.materialize_100k', value: seconds, unit: 's', target: { on: 'value', op: '<=', value: 1 } });
    results.push({ name: 'core.materialize_100k.rate', value: workload.ops.length / seconds, unit: 'ops/s' });
    return results;
  },
};

