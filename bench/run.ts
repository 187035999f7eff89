/**
 * Runs the benchmark suites, prints one table and writes bench/results.json.
 *
 *   node bench/run.ts            every suite
 *   node bench/run.ts core ...   only the named suites
 *
 * A suite is registered in SUITES below (one file per suite). Timings never make the run fail:
 * targets are reported in the table's `met` column only. The exit code is non-zero only when a
 * suite throws or an unknown suite is named.
 */
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { coreSuite } from './core.ts';
import { storeSuite } from './store.ts';
import { netSuite } from './net.ts';
import { hqSuite } from './hq.ts';
import { simSuite } from './sim.ts';
import { formatTable, toJson, type Result, type Suite } from './harness.ts';

const SUITES: readonly Suite[] = [coreSuite, storeSuite, netSuite, hqSuite, simSuite];

const RESULTS_FILE = fileURLToPath(new URL('./results.json', import.meta.url));

async function main(args: string[]): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) {
    console.log(`usage: node bench/run.ts [suite...]\nsuites:\n${SUITES.map((s) => `  ${s.name.padEnd(10)} ${s.description}`).join('\n')}`);
    return 0;
  }
  const unknown = args.filter((a) => !SUITES.some((s) => s.name === a));
  if (unknown.length > 0) {
    console.error(`unknown suite(s): ${unknown.join(', ')}; known: ${SUITES.map((s) => s.name).join(', ')}`);
    return 2;
  }
  const selected = args.length === 0 ? SUITES : SUITES.filter((s) => args.includes(s.name));
  const results: Result[] = [];
  let failed = false;
  console.log(`fieldmesh bench: node ${process.version}, ${process.platform}/${process.arch}`);
  for (const suite of selected) {
    const log = (line: string) => console.log(`[${suite.name}] ${line}`);
    log(`start${suite.approxSeconds === undefined ? '' : ` (about ${suite.approxSeconds} s)`}`);
    const started = performance.now();
    try {
      results.push(...(await suite.run(log)));
    } catch (err) {
      failed = true;
      console.error(`[${suite.name}] failed:`, err);
    }
    log(`done in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  }
  console.log(`\n${formatTable(results)}\n`);
  writeFileSync(RESULTS_FILE, `${JSON.stringify(toJson(results), null, 2)}\n`);
  console.log(`wrote ${results.length} results to bench/results.json`);
  return failed ? 1 : 0;
}

process.exitCode = await main(process.argv.slice(2));
