import { createHash, timingSafeEqual } from "node:crypto";
import type { FastifyInstance, FastifyRequest } from "fastify";
import { HttpError, sendError } from "./errors.js";

/** Paths anyone may read: the health check and the dashboard's static files (they hold no data). */
const PUBLIC = new Set(["/healthz", "/", "/dashboard/app.js", "/dashboard/style.css", "/favicon.ico"]);

function digest(text: string): Buffer {
  // Hashing first gives equal-length buffers, so the comparison time says nothing about the token.
  return createHash("sha256").update(text).digest();
}

function bearer(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization;
  if (typeof header !== "string") return undefined;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match?.[1];
}

/**
 * Bearer-token auth, on only when a token is configured: every request except {@link PUBLIC} paths
 * needs `Authorization: Bearer <token>`, else 401 with code ERR_UNAUTHORIZED.
 */
export function registerAuth(app: FastifyInstance, token: string | undefined): void {
  if (token === undefined || token === "") return;
  const expected = digest(token);
  app.addHook("onRequest", async (request, reply) => {
    const path = request.url.split("?", 1)[0]!;
    if (request.method === "GET" && PUBLIC.has(path)) return;
    const given = bearer(request);
    if (given !== undefined && timingSafeEqual(digest(given), expected)) return;
    reply.header("www-authenticate", 'Bearer realm="agentrt"');
    return sendError(
      request,
      reply,
      new HttpError("ERR_UNAUTHORIZED", given === undefined ? "A bearer token is required" : "The bearer token is wrong"),
    );
  });
}
