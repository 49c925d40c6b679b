/**
 * SVG plots for the benchmarks: Vega-Lite specs compiled to Vega and rendered headless with
 * `view.toSVG()` (pure JavaScript, no canvas or native module). Files go to bench/results/ next to
 * the JSON results; the SVGs are committed so bench/README.md can show them.
 */
import { mkdir, writeFile } from "node:fs/promises";
import { resolve } from "node:path";
import { parse, View } from "vega";
import { compile, type TopLevelSpec } from "vega-lite";
import { RESULTS_DIR } from "./lib.js";

export interface Point {
  x: number;
  y: number;
  /** Line (series) the point belongs to: one colour and one legend entry each. */
  series: string;
}

export interface ChartOptions {
  title: string;
  xTitle: string;
  yTitle: string;
  logX?: boolean;
  logY?: boolean;
  /** Whole-number ticks on the x axis (thread counts, agent counts). */
  integerX?: boolean;
  /** Start the y axis at zero (linear axes only). Default true. */
  zeroY?: boolean;
  width?: number;
  height?: number;
}

const CONFIG = {
  font: "sans-serif",
  axis: { labelFontSize: 11, titleFontSize: 12, grid: true },
  legend: { labelFontSize: 11, titleFontSize: 12, orient: "bottom", columns: 3, labelLimit: 320 },
  title: { fontSize: 14 },
} as const;

/** What every chart shares: schema, title, size, background and style. */
function frame(options: Pick<ChartOptions, "title" | "width" | "height">) {
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: options.title,
    width: options.width ?? 520,
    height: options.height ?? 300,
    background: "white",
    config: CONFIG,
  };
}

async function render(name: string, spec: TopLevelSpec): Promise<string> {
  const view = new View(parse(compile(spec).spec), { renderer: "none" });
  const svg = await view.toSVG();
  view.finalize();
  await mkdir(RESULTS_DIR, { recursive: true });
  const path = resolve(RESULTS_DIR, `${name}.svg`);
  await writeFile(path, svg + "\n");
  return path;
}

/** Most points drawn per series: a committed SVG stays small (a 15 000-turn run drew 3.8 MB). */
const MAX_POINTS_PER_SERIES = 400;

/** Every k-th point of each series (its first and last kept), so that none has over MAX_POINTS_PER_SERIES. */
function thin(points: readonly Point[]): Point[] {
  const bySeries = new Map<string, Point[]>();
  for (const point of points) {
    const series = bySeries.get(point.series);
    if (series) series.push(point);
    else bySeries.set(point.series, [point]);
  }
  return [...bySeries.values()].flatMap((series) => {
    const step = Math.ceil(series.length / MAX_POINTS_PER_SERIES);
    return series.filter((_, index) => index % step === 0 || index === series.length - 1);
  });
}

/** One line (with point marks) per series. */
export function lineChart(name: string, points: readonly Point[], options: ChartOptions): Promise<string> {
  return render(name, {
    ...frame(options),
    data: { values: thin(points).map((p) => ({ ...p })) },
    mark: { type: "line", point: true },
    encoding: {
      x: {
        field: "x",
        type: "quantitative",
        title: options.xTitle,
        scale: options.logX ? { type: "log", base: 2, nice: false } : { zero: false },
        ...(options.integerX ? { axis: { format: "d", tickMinStep: 1 } } : {}),
      },
      y: {
        field: "y",
        type: "quantitative",
        title: options.yTitle,
        scale: options.logY ? { type: "log" } : { zero: options.zeroY ?? true },
      },
      color: { field: "series", type: "nominal", title: null, sort: null },
    },
  });
}

export interface Bar {
  /** Position on the x axis. */
  group: string;
  /** Bars side by side within a group, one colour each. */
  series: string;
  value: number;
}

/** Grouped bars: one group per `group`, one bar per `series` within it. */
export function barChart(name: string, bars: readonly Bar[], options: Omit<ChartOptions, "logX" | "logY" | "zeroY">): Promise<string> {
  return render(name, {
    ...frame(options),
    data: { values: bars.map((b) => ({ ...b })) },
    mark: { type: "bar" },
    encoding: {
      x: { field: "group", type: "nominal", title: options.xTitle, sort: null, axis: { labelAngle: 0, labelLimit: 240 } },
      xOffset: { field: "series", type: "nominal", sort: null },
      y: { field: "value", type: "quantitative", title: options.yTitle, scale: { zero: true } },
      color: { field: "series", type: "nominal", title: null, sort: null },
    },
  });
}
