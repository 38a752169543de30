// The accuracy–memory frontier as SVG: one panel per task (and context), one
// curve per policy, accuracy (or Δ bits/byte) against bytes held relative to
// FP16 — hot bytes alone, hot + master bytes (everything the cache holds), or
// the peak of hot bytes while a request ran (the prompt at 16 bits, with the
// `end` budget horizon).
// Also the ablations as a forest plot (difference from the default with its
// interval). Rendered headless with Vega-Lite → Vega → SVG (no browser, no canvas).
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';

export interface PlotRow {
  task: string;
  context: number;
  policy: string;
  mode: string;
  hot_bytes: number; // at the end
  peak_hot_bytes?: number; // the most held at any time (absent: the end's)
  master_bytes: number;
  fp16_bytes: number;
  value: number; // accuracy in [0, 1], or Δ bits per byte against fp16
}

/** hot: at the end (β achieved); total: hot + master; peak: the most hot bytes held at any time. */
export type BytesAxis = 'hot' | 'total' | 'peak';

const AXIS_TITLE: Record<BytesAxis, string> = {
  hot: 'hot bytes / FP16 bytes (β achieved)',
  total: '(hot + master) bytes / FP16 bytes',
  peak: 'peak hot bytes / FP16 bytes',
};

function axisBytes(r: PlotRow, axis: BytesAxis): number {
  if (axis === 'hot') return r.hot_bytes;
  if (axis === 'total') return r.hot_bytes + r.master_bytes;
  return Math.max(r.hot_bytes, r.peak_hot_bytes ?? 0);
}

/** One Vega-Lite spec: x = bytes / FP16 bytes, y = value, colour = policy, facets = task × context. */
export function frontierSpec(rows: readonly PlotRow[], axis: BytesAxis, yTitle: string, title: string): TopLevelSpec {
  const values = rows
    .filter((r) => r.fp16_bytes > 0)
    .map((r) => ({
      ...r,
      bytes: axisBytes(r, axis) / r.fp16_bytes,
      panel: `${r.task} @ ${r.context}`,
      curve: `${r.policy} (${r.mode})`,
    }));
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    data: { values },
    facet: { field: 'panel', type: 'nominal', title: null },
    columns: 3,
    spec: {
      width: 220,
      height: 160,
      mark: { type: 'line', point: true },
      encoding: {
        x: {
          field: 'bytes',
          type: 'quantitative',
          title: AXIS_TITLE[axis],
          scale: { zero: true },
        },
        y: { field: 'value', type: 'quantitative', title: yTitle },
        color: { field: 'curve', type: 'nominal', title: 'policy (mode)' },
        order: { field: 'bytes', type: 'quantitative' },
        tooltip: [{ field: 'curve' }, { field: 'bytes', format: '.3f' }, { field: 'value', format: '.3f' }],
      },
    },
    resolve: { scale: { x: 'shared', y: 'shared' } },
  };
}

/** Render a Vega-Lite spec to an SVG string. */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** One variant's difference from the default row, with its 95 % paired interval. */
export interface AblationPoint {
  panel: string; // task @ context: metric
  variant: string;
  diff: number;
  lo: number;
  hi: number;
}

/** Ablations as a forest plot: one panel per (task, context, metric), a point and
 * its interval per variant, a rule at zero (no difference from the default). */
export function ablationSpec(points: readonly AblationPoint[], title: string): TopLevelSpec {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    data: { values: [...points] },
    facet: { field: 'panel', type: 'nominal', title: null },
    columns: 2,
    spec: {
      width: 260,
      height: { step: 14 },
      layer: [
        { mark: { type: 'rule', color: '#999' }, encoding: { x: { datum: 0, type: 'quantitative' } } },
        {
          mark: { type: 'rule' },
          encoding: {
            y: { field: 'variant', type: 'nominal', title: null, sort: null },
            x: { field: 'lo', type: 'quantitative', title: 'difference from default (95 % paired interval)' },
            x2: { field: 'hi' },
          },
        },
        {
          mark: { type: 'point', filled: true },
          encoding: {
            y: { field: 'variant', type: 'nominal', sort: null },
            x: { field: 'diff', type: 'quantitative' },
            tooltip: [{ field: 'variant' }, { field: 'diff', format: '.4f' }, { field: 'lo', format: '.4f' }, { field: 'hi', format: '.4f' }],
          },
        },
      ],
    },
    resolve: { scale: { x: 'independent', y: 'shared' } },
  };
}
