/**
 * Safetensors headers, read and checked in JavaScript before MLX ever sees a file.
 *
 * MLX's loaders trust the header: a truncated file or an unsupported dtype can fail natively, and some native
 * failures abort the whole process (e.g. float16 reaching a CPU matmul). Checking here lets us refuse a bad file
 * with an AgentRuntimeError instead. The format: 8-byte little-endian header length, a JSON header mapping tensor
 * names to {dtype, shape, data_offsets} (plus an optional "__metadata__" string map), then the raw data.
 */
import { open, stat, writeFile } from "node:fs/promises";

export const DTYPE_BYTES: Record<string, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  U16: 2,
  I16: 2,
  F16: 2,
  BF16: 2,
  U32: 4,
  I32: 4,
  F32: 4,
  U64: 8,
  I64: 8,
  F64: 8,
};

export interface TensorEntry {
  name: string;
  dtype: string;
  shape: number[];
  /** Byte range inside the data section. */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  tensors: Map<string, TensorEntry>;
  metadata: Record<string, string>;
  fileSize: number;
}

/** Largest header we accept: real headers are kilobytes; this bounds what a corrupt length can make us read. */
const MAX_HEADER_BYTES = 64 * 1024 * 1024;

/** Thrown by {@link readSafetensorsHeader}; callers map it to their own error code. */
export class SafetensorsFormatError extends Error {
  override readonly name = "SafetensorsFormatError";
}

export async function readSafetensorsHeader(filePath: string): Promise<SafetensorsHeader> {
  const { size: fileSize } = await stat(filePath);
  if (fileSize < 8) throw new SafetensorsFormatError(`${filePath}: ${fileSize} bytes is too short for safetensors`);
  const handle = await open(filePath, "r");
  let json: string;
  try {
    const lengthBytes = Buffer.alloc(8);
    await handle.read(lengthBytes, 0, 8, 0);
    const headerLength = lengthBytes.readBigUInt64LE(0);
    if (headerLength === 0n || headerLength > BigInt(Math.min(MAX_HEADER_BYTES, fileSize - 8))) {
      throw new SafetensorsFormatError(`${filePath}: header length ${headerLength} does not fit the file (${fileSize} bytes)`);
    }
    const header = Buffer.alloc(Number(headerLength));
    const { bytesRead } = await handle.read(header, 0, header.length, 8);
    if (bytesRead !== header.length) throw new SafetensorsFormatError(`${filePath}: header is truncated`);
    json = header.toString("utf8");
  } finally {
    await handle.close();
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch (error) {
    throw new SafetensorsFormatError(`${filePath}: header is not JSON (${(error as Error).message})`);
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw new SafetensorsFormatError(`${filePath}: header is not a JSON object`);
  }
  const dataSize = fileSize - 8 - Buffer.byteLength(json, "utf8");
  const tensors = new Map<string, TensorEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, value] of Object.entries(parsed as Record<string, unknown>)) {
    if (name === "__metadata__") {
      metadata = checkMetadata(filePath, value);
      continue;
    }
    tensors.set(name, checkEntry(filePath, name, value, dataSize));
  }
  // Every data byte must belong to exactly one tensor: this catches truncation, appended junk and overlaps.
  const ranges = [...tensors.values()].sort((a, b) => a.begin - b.begin);
  let cursor = 0;
  for (const entry of ranges) {
    if (entry.begin !== cursor) {
      throw new SafetensorsFormatError(`${filePath}: tensor ${entry.name} starts at ${entry.begin}, expected ${cursor}`);
    }
    cursor = entry.end;
  }
  if (cursor !== dataSize) {
    throw new SafetensorsFormatError(`${filePath}: tensors cover ${cursor} data bytes but the file holds ${dataSize}`);
  }
  return { tensors, metadata, fileSize };
}

function checkMetadata(filePath: string, value: unknown): Record<string, string> {
  // MLX writes `"__metadata__": null` when given no metadata.
  if (value === null) return {};
  if (typeof value !== "object" || Array.isArray(value)) {
    throw new SafetensorsFormatError(`${filePath}: __metadata__ is not an object`);
  }
  const out: Record<string, string> = {};
  for (const [key, item] of Object.entries(value as Record<string, unknown>)) {
    if (typeof item !== "string") throw new SafetensorsFormatError(`${filePath}: metadata ${key} is not a string`);
    out[key] = item;
  }
  return out;
}

function checkEntry(filePath: string, name: string, value: unknown, dataSize: number): TensorEntry {
  const entry = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown } | null;
  if (entry === null || typeof entry !== "object") throw new SafetensorsFormatError(`${filePath}: tensor ${name} is not an object`);
  const { dtype, shape, data_offsets: offsets } = entry;
  if (typeof dtype !== "string" || !(dtype in DTYPE_BYTES)) {
    throw new SafetensorsFormatError(`${filePath}: tensor ${name} has unknown dtype ${String(dtype)}`);
  }
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new SafetensorsFormatError(`${filePath}: tensor ${name} has an invalid shape`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new SafetensorsFormatError(`${filePath}: tensor ${name} has invalid data_offsets`);
  }
  const [begin, end] = offsets as [number, number];
  const expected = (shape as number[]).reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype]!;
  if (end < begin || end - begin !== expected || end > dataSize) {
    throw new SafetensorsFormatError(
      `${filePath}: tensor ${name} claims bytes ${begin}..${end} for ${expected} bytes of data (data section ${dataSize})`,
    );
  }
  return { name, dtype, shape: shape as number[], begin, end };
}

export interface TensorToWrite {
  name: string;
  dtype: keyof typeof DTYPE_BYTES;
  shape: number[];
  data: Uint8Array;
}

/**
 * Writes a safetensors file from raw little-endian buffers. Used by the converter, which produces uint32 packed
 * 4-bit weights: the binding cannot build uint32 arrays from JavaScript numbers above 2^31 (measured: 2^32-1 → 0).
 */
export async function writeSafetensors(filePath: string, tensors: TensorToWrite[], metadata?: Record<string, string>): Promise<number> {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header["__metadata__"] = metadata;
  let offset = 0;
  for (const tensor of tensors) {
    const bytes = tensor.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[tensor.dtype]!;
    if (bytes !== tensor.data.byteLength) throw new Error(`tensor ${tensor.name}: ${tensor.data.byteLength} bytes for ${bytes}`);
    header[tensor.name] = { dtype: tensor.dtype, shape: tensor.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
  json += " ".repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const jsonBytes = Buffer.from(json, "utf8");
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(jsonBytes.length));
  const out = Buffer.concat([length, jsonBytes, ...tensors.map((t) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength))]);
  await writeFile(filePath, out);
  return out.length;
}
