/**
 * Text the simulator prints: a failing run (its first violation, the events leading to it and the
 * command that replays it) and a soak's summary table.
 */
import { FAULT_TYPES, replayCommand } from './config.ts';
import type { SimResult } from './simulation.ts';
import type { SoakSummary } from './soak.ts';

const seconds = (ms: number): string => (ms / 1000).toFixed(3);

export function formatFailure(result: SimResult): string {
  const v = result.violations[0];
  if (v === undefined) return `seed ${result.config.seed}: ok`;
  const lines = [
    `seed ${result.config.seed} FAILED: ${v.invariant}: ${v.message}`,
    `  found at virtual ${seconds(v.atMs)} s, event ${v.event}; ${result.violations.length} violation(s) in all`,
    '  events leading to it:',
    ...v.trace.map((e) => `    #${e.index} ${seconds(e.atMs)} s ${e.label}`),
    ...result.violations.slice(1, 5).map((o) => `  also: ${o.invariant}: ${o.message.split('\n')[0]}`),
    `  replay: ${replayCommand(result.config)}`,
  ];
  return lines.join('\n');
}

export function formatResult(result: SimResult): string {
  const s = result.stats;
  return [
    `seed ${result.config.seed}: ${result.ok ? 'ok' : 'FAILED'} (${result.config.nodes} nodes, ${result.links} links, variant ${result.config.variant})`,
    `  events ${result.events}, ops ${result.ops}, mutations ${s.mutations}, receipts ${s.receipts}, sessions ${s.sessionsOpened}, frames ${s.framesSent}, wire ${s.wireBytes} B`,
    `  faults ${FAULT_TYPES.map((f) => `${f} ${s.faults[f]}`).join(', ')}`,
    `  convergence ${seconds(result.convergenceMs)} virtual s after healing; most events queued ${result.maxQueuedEvents}; largest in flight ${s.maxInFlightBytes} B`,
    ...(s.voidsFetched > 0 ? [`  void ops fetched by id ${s.voidsFetched}`] : []),
    `  fingerprint ${result.fingerprint}; ${result.wallMs.toFixed(0)} ms`,
  ].join('\n');
}

export function formatSummary(summary: SoakSummary): string {
  const rows: [string, string][] = [
    ['seeds', `${summary.seeds} (${summary.failed.length} failed)`],
    ['seeds/s', (summary.seeds / (summary.wallMs / 1000)).toFixed(2)],
    ['events', `${summary.events} (${(summary.events / (summary.wallMs / 1000)).toFixed(0)}/s)`],
    ['faults injected', `${FAULT_TYPES.reduce((n, f) => n + summary.faults[f], 0)} (${FAULT_TYPES.map((f) => `${f} ${summary.faults[f]}`).join(', ')})`],
    ['ops', `${summary.ops} in final logs, ${summary.mutations} mutations`],
    ['wire bytes', String(summary.wireBytes)],
    ['void ops fetched', `${summary.voidsFetched} in ${summary.voidsFetchedSeeds} seeds`],
    ['max convergence', `${seconds(summary.maxConvergenceMs)} virtual s${summary.maxConvergenceSeed === null ? '' : ` (seed ${summary.maxConvergenceSeed})`}`],
    ['wall time', `${seconds(summary.wallMs)} s`],
  ];
  const width = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`).join('\n');
}
