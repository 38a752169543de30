// How the evaluations print: a heading (title, date, model, settings), plain
// text tables for the terminal, the same tables in Markdown, and Markdown
// sections written into a file between markers so a document can hold
// generated tables next to hand-written text.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';

import type { InfoResponse } from '../gen/smartkv/v1/generation_pb.js';

export interface Column {
  title: string;
  right?: boolean; // numbers align right
}

export interface Table {
  columns: Column[];
  rows: string[][];
}

export interface Report {
  title: string;
  date: string; // ISO 8601, UTC
  command: string;
  settings: [string, string][]; // (name, value) lines of the heading
  sections: { title: string; table: Table; notes?: string[] }[];
  footer: string[];
}

export function nowIso(): string {
  return new Date().toISOString().replace(/\.\d+Z$/, 'Z');
}

export function modelLine(info: InfoResponse): string {
  return `${info.model} (vocabulary ${info.vocab}, ${info.layers} layers, ${info.heads} query heads / ${info.kvHeads} KV heads × ${info.headDim}, context ${info.maxPositions} tokens)`;
}

export function textTable(t: Table): string[] {
  const widths = t.columns.map((c, i) => Math.max(c.title.length, ...t.rows.map((r) => r[i].length)));
  const fmt = (cells: string[]) =>
    cells
      .map((s, i) => (t.columns[i].right ? s.padStart(widths[i]) : s.padEnd(widths[i])))
      .join('  ')
      .trimEnd();
  return [fmt(t.columns.map((c) => c.title)), fmt(widths.map((w) => '-'.repeat(w))), ...t.rows.map(fmt)];
}

export function markdownTable(t: Table): string[] {
  return [
    `| ${t.columns.map((c) => c.title).join(' | ')} |`,
    `| ${t.columns.map((c) => (c.right ? '---:' : '---')).join(' | ')} |`,
    ...t.rows.map((r) => `| ${r.join(' | ')} |`),
  ];
}

export function textReport(r: Report): string[] {
  const out = [r.title, `date: ${r.date}`, ...r.settings.map(([k, v]) => `${k}: ${v}`)];
  for (const s of r.sections) {
    out.push('', s.title, ...textTable(s.table));
    if (s.notes) out.push(...s.notes);
  }
  if (r.footer.length) out.push('', ...r.footer);
  return out;
}

export function markdownReport(r: Report, heading = '##'): string[] {
  const out = [`${heading} ${r.title}`, '', `Generated ${r.date} by:`, '', '```', r.command, '```', ''];
  out.push(...r.settings.map(([k, v]) => `* **${k}**: ${v}`), '');
  for (const s of r.sections) {
    out.push(`**${s.title}**`, '', ...markdownTable(s.table), '');
    if (s.notes) out.push(...s.notes.map((n) => n.trim()), '');
  }
  if (r.footer.length) out.push(...r.footer, '');
  return out;
}

/**
 * Writes `lines` into `file` between `<!-- smartkv eval KEY: begin -->` and
 * its end marker: replaced in place when the markers exist, appended
 * otherwise (the file is created if missing). Other text is left alone.
 */
export function writeMarkdownSection(file: string, key: string, lines: string[]): void {
  const begin = `<!-- smartkv eval ${key}: begin (generated; rerun the command to update) -->`;
  const end = `<!-- smartkv eval ${key}: end -->`;
  const block = [begin, ...lines, end].join('\n');
  const old = existsSync(file) ? readFileSync(file, 'utf8') : '';
  const b = old.indexOf(`<!-- smartkv eval ${key}: begin`);
  const e = old.indexOf(end);
  let text: string;
  if (b >= 0 && e > b) text = old.slice(0, b) + block + old.slice(e + end.length);
  else text = (old ? old.replace(/\n*$/, '\n\n') : '') + block + '\n';
  writeFileSync(file, text);
}

export function pct(x: number, digits = 1): string {
  return Number.isFinite(x) ? `${(100 * x).toFixed(digits)} %` : '—';
}

/** A p-value as the tables print it. */
export function pText(p: number): string {
  return p < 1e-4 ? p.toExponential(1) : p.toFixed(4);
}

export function fixed(x: number | null, digits: number): string {
  return x === null || !Number.isFinite(x) ? '—' : x.toFixed(digits);
}
