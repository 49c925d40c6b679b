import { readFile } from "node:fs/promises";
import type { FastifyInstance } from "fastify";

/** The dashboard's files, next to this module in src/ and in dist/ (the build copies the folder). */
const DASHBOARD_DIR = new URL("./dashboard/", import.meta.url);

const FILES = [
  { path: "/", file: "index.html", type: "text/html; charset=utf-8" },
  { path: "/dashboard/app.js", file: "app.js", type: "text/javascript; charset=utf-8" },
  { path: "/dashboard/style.css", file: "style.css", type: "text/css; charset=utf-8" },
] as const;

/**
 * `GET /`: a small live page (agents, memory bars, recent events, a message box) that talks to the
 * same HTTP API as any client. Its files are read at startup, so a missing copy fails loudly there.
 */
export async function registerDashboard(app: FastifyInstance): Promise<void> {
  for (const { path, file, type } of FILES) {
    const content = await readFile(new URL(file, DASHBOARD_DIR));
    app.get(path, async (_request, reply) => reply.type(type).header("cache-control", "no-cache").send(content));
  }
}
