// `agentrt/server`: the HTTP front of a runtime.
export { createServer } from "./app.js";
export type { ServerOptions } from "./app.js";
export { HTTP_ERROR_CODES, STATUS_BY_CODE } from "./errors.js";
export type { HttpErrorCode } from "./errors.js";
export { AGENT_HEADER, REQUEST_SCHEMAS } from "./schemas.js";
export type { JsonSchema } from "./schemas.js";
