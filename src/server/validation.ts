import type { FastifyRequest, FastifySchema, FastifySchemaValidationError, RouteOptions } from "fastify";
import type { ErrorCode } from "../errors.js";
import { HttpError, STATUS_BY_CODE, type HttpErrorCode } from "./errors.js";

/** The schema keyword that names the error code of a field (see schemas.ts). */
export const ERROR_CODE_KEYWORD = "x-error-code";

/** How fastify's ajv compiles the schemas (the `ajv` server option). */
export const AJV_OPTIONS = {
  customOptions: {
    // JSON bodies are typed: "5" is not a number, 5 is not a string (fastify's default coerces both).
    // The query's numbers are converted on purpose instead, by numericQuery.
    coerceTypes: false as const,
    // An unknown key is left for the handler and the runtime to judge, never silently stripped.
    removeAdditional: false,
    keywords: [ERROR_CODE_KEYWORD],
  },
};

type Code = ErrorCode | HttpErrorCode;
type SchemaNode = Record<string, unknown>;

const isNode = (value: unknown): value is SchemaNode => typeof value === "object" && value !== null;
const codeOf = (node: unknown): Code | undefined => (isNode(node) ? (node[ERROR_CODE_KEYWORD] as Code | undefined) : undefined);

/** `/messages/0/role` → `messages[0].role`. */
function fieldName(instancePath: string, missing?: string): string {
  const segments = instancePath.split("/").slice(1);
  if (missing !== undefined) segments.push(missing);
  return segments
    .map((segment) => segment.replaceAll("~1", "/").replaceAll("~0", "~"))
    .reduce((name, segment) => (/^\d+$/.test(segment) ? `${name}[${segment}]` : name ? `${name}.${segment}` : segment), "");
}

/**
 * The code of a failed check: the nearest `x-error-code` on the way from the schema's root to the
 * keyword that failed (for a missing property, the property's own). Default ERR_INVALID_ARGUMENT.
 */
function errorCode(root: unknown, error: FastifySchemaValidationError): Code {
  const path = error.schemaPath
    .replace(/^#\/?/, "")
    .split("/")
    .filter((segment) => segment !== "");
  let node = root;
  let code = codeOf(node);
  // The last segment is the keyword that failed; its parents are schemas.
  for (const segment of path.slice(0, -1)) {
    node = isNode(node) ? node[segment.replaceAll("~1", "/").replaceAll("~0", "~")] : undefined;
    code = codeOf(node) ?? code;
  }
  if (error.keyword === "required" && isNode(node) && isNode(node.properties)) {
    code = codeOf(node.properties[String(error.params.missingProperty)]) ?? code;
  }
  return code ?? "ERR_INVALID_ARGUMENT";
}

/** Of ajv's errors (one per `anyOf` branch, then the `anyOf`), the one deepest in the data says most. */
function mostSpecific(errors: FastifySchemaValidationError[]): FastifySchemaValidationError {
  return errors.reduce((best, error) => (error.instancePath.length > best.instancePath.length ? error : best));
}

function message(error: FastifySchemaValidationError, field: string, dataVar: string): string {
  if (field === "") return `The ${dataVar === "querystring" ? "query string" : dataVar} ${error.message ?? "is invalid"}`;
  const { keyword, params } = error;
  if (keyword === "required") return `${field} is required`;
  if (keyword === "enum") return `${field} must be one of ${(params.allowedValues as unknown[]).map((value) => JSON.stringify(value)).join(", ")}`;
  if (keyword === "const") return `${field} must be ${JSON.stringify(params.allowedValue)}`;
  if (keyword === "type") return `${field} must be ${String(params.type).replaceAll(",", " or ")}`;
  return `${field} ${error.message ?? "is invalid"}`;
}

/**
 * The route's schema failures as agentrt errors: the code from the schema (`x-error-code`, else
 * ERR_INVALID_ARGUMENT, both 400), a message naming the field, and the field as OpenAI's `param`.
 */
export function schemaErrorFormatter(schema: FastifySchema): NonNullable<RouteOptions["schemaErrorFormatter"]> {
  return (errors, dataVar) => {
    const error = mostSpecific(errors);
    const missing = error.keyword === "required" ? String(error.params.missingProperty) : undefined;
    const field = fieldName(error.instancePath, missing);
    if (dataVar === "body" && field === "" && error.keyword === "type") {
      return new HttpError("ERR_INVALID_ARGUMENT", "The body must be a JSON object");
    }
    const code = errorCode((schema as Record<string, unknown>)[dataVar], error);
    return new HttpError(code, message(error, field, dataVar), field || undefined);
  };
}

/** Throws at startup when a schema names a code that does not exist (it would answer 500 otherwise). */
export function checkErrorCodes(schema: unknown, where: string): void {
  if (Array.isArray(schema)) schema.forEach((item) => checkErrorCodes(item, where));
  if (!isNode(schema)) return;
  const code = schema[ERROR_CODE_KEYWORD];
  if (code !== undefined && !Object.hasOwn(STATUS_BY_CODE, code as string)) {
    throw new TypeError(`${where}: ${ERROR_CODE_KEYWORD} ${String(code)} is not an error code`);
  }
  for (const value of Object.values(schema)) checkErrorCodes(value, where);
}

/**
 * A `preValidation` hook that makes the named query values numbers, as `Number()` reads them, so the
 * schema can check them as numbers (query values are all text, and ajv coerces nothing here).
 */
export function numericQuery(...names: string[]) {
  return async (request: FastifyRequest): Promise<void> => {
    const query = request.query as Record<string, unknown>;
    for (const name of names) {
      if (typeof query[name] === "string") query[name] = Number(query[name]);
    }
  };
}
