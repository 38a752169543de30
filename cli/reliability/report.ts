// What the reliability suite reports: one row per scenario with the fields
// issue 18 names, the tally that fills it, and the goals a row must meet.
import { statusName } from '../../services/common/rpc-error.js';

export interface Row {
  scenario: string;
  requests: number; // calls and streams the scenario made
  ok: number; // of those, how many ended OK
  codes: Record<string, number>; // count by the status the client saw
  unexpected: number; // INTERNAL or UNKNOWN, a code the scenario does not allow, or a crashed process
  leaked_sequences: number; // live sequences left on the shards once the scenario is over
  leaked_bytes: number; // hot bytes held or reserved on the shards once it is over
  max_stall_ms: number; // longest token gap of requests on healthy shards
  rss_growth_mb: number; // resident memory of all processes, end − start (soak: end − after warm-up)
}

/** A goal the row missed. `timing` goals depend on the machine's load (a
 * stall, an exit time); the others (leaks, unexpected codes, a stranger let
 * in, a crash) do not. */
export interface Miss {
  scenario: string;
  what: string;
  timing: boolean;
}

/** Counts outcomes by status; codes outside `allowed` (and INTERNAL/UNKNOWN always) are unexpected. */
export class Tally {
  requests = 0;
  ok = 0;
  unexpected = 0;
  maxStallMs = 0;
  readonly codes: Record<string, number> = {};
  readonly notes: string[] = []; // the first few unexpected outcomes, for the report

  constructor(private readonly allowed: readonly number[]) {}

  add(code: number, details = '', allowed = this.allowed): void {
    this.requests++;
    if (code === 0) this.ok++;
    const name = statusName(code);
    this.codes[name] = (this.codes[name] ?? 0) + 1;
    if (code === 0) return;
    if (name === 'INTERNAL' || name === 'UNKNOWN' || !allowed.includes(code)) this.flag(`${name}: ${details}`);
  }

  /** Something that must not happen (a crash, a stranger let in, a failure after the first token). */
  flag(note: string): void {
    this.unexpected++;
    if (this.notes.length < 5) this.notes.push(note.slice(0, 300));
  }

  stall(ms: number): void {
    this.maxStallMs = Math.max(this.maxStallMs, ms);
  }
}

export function rowOf(scenario: string, t: Tally, leaks: { sequences: number; bytes: number }, rssGrowthMb: number): Row {
  return {
    scenario,
    requests: t.requests,
    ok: t.ok,
    codes: t.codes,
    unexpected: t.unexpected,
    leaked_sequences: leaks.sequences,
    leaked_bytes: leaks.bytes,
    max_stall_ms: Math.round(t.maxStallMs),
    rss_growth_mb: Math.round(rssGrowthMb * 10) / 10,
  };
}

/** The goals every row shares: nothing leaked, nothing unexpected. */
export function commonMisses(r: Row): Miss[] {
  const out: Miss[] = [];
  if (r.leaked_sequences > 0 || r.leaked_bytes > 0) out.push({ scenario: r.scenario, what: `leaked ${r.leaked_sequences} sequences, ${r.leaked_bytes} bytes`, timing: false });
  if (r.unexpected > 0) out.push({ scenario: r.scenario, what: `${r.unexpected} unexpected outcomes`, timing: false });
  return out;
}

const COLUMNS: [string, (r: Row) => string][] = [
  ['scenario', (r) => r.scenario],
  ['requests', (r) => String(r.requests)],
  ['ok', (r) => String(r.ok)],
  ['unexpected', (r) => String(r.unexpected)],
  ['leaked seq', (r) => String(r.leaked_sequences)],
  ['leaked B', (r) => String(r.leaked_bytes)],
  ['max stall ms', (r) => String(r.max_stall_ms)],
  ['RSS +MB', (r) => r.rss_growth_mb.toFixed(1)],
  ['codes', (r) => Object.entries(r.codes).map(([k, v]) => `${k} ${v}`).join(', ')],
];

export function table(rows: Row[]): string {
  const cells = [COLUMNS.map(([h]) => h), ...rows.map((r) => COLUMNS.map(([, f]) => f(r)))];
  const widths = COLUMNS.map((_, i) => Math.max(...cells.map((c) => c[i].length)));
  return cells.map((c) => c.map((x, i) => (i === c.length - 1 ? x : x.padEnd(widths[i]))).join('  ')).join('\n');
}
