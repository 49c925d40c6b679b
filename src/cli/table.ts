/** Formats rows as an aligned text table (numbers right-aligned), for the demo and the benchmarks. */
export function formatTable(rows: ReadonlyArray<Record<string, string | number>>): string {
  if (rows.length === 0) return "(no rows)";
  const columns = Object.keys(rows[0]!);
  const cell = (value: string | number | undefined) =>
    typeof value === "number" ? (Number.isInteger(value) ? String(value) : value.toFixed(2)) : (value ?? "");
  const widths = columns.map((column) => Math.max(column.length, ...rows.map((row) => cell(row[column]).length)));
  const line = (values: string[], numeric: boolean[]) =>
    values.map((value, i) => (numeric[i] ? value.padStart(widths[i]!) : value.padEnd(widths[i]!))).join("  ");
  const numeric = columns.map((column) => typeof rows[0]![column] === "number");
  return [
    line(columns, numeric),
    line(
      widths.map((width) => "-".repeat(width)),
      numeric,
    ),
    ...rows.map((row) =>
      line(
        columns.map((column) => cell(row[column])),
        numeric,
      ),
    ),
  ].join("\n");
}

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 ** 2) return `${(bytes / 1024).toFixed(1)} KiB`;
  if (bytes < 1024 ** 3) return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
  return `${(bytes / 1024 ** 3).toFixed(2)} GiB`;
}
