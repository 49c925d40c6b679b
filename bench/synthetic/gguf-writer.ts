/**
 * A small GGUF v3 writer that streams tensor data to disk.
 *
 * Layout (little-endian throughout):
 *   magic "GGUF" | u32 version = 3 | u64 tensor_count | u64 kv_count
 *   kv_count × (string key | u32 value_type | value)
 *   tensor_count × (string name | u32 n_dims | u64 ne[n_dims] (ne0 innermost) | u32 ggml_type | u64 offset)
 *   zero padding up to `alignment`
 *   tensor data, each tensor starting at data_start + offset, offsets multiples of `alignment`,
 *   each tensor padded with zeros to `alignment` (the last one too, as gguf-py does).
 * A string is u64 byte length + UTF-8 bytes (no terminator). An array is u32 item type + u64 count + items.
 *
 * `@huggingface/gguf` (the npm GGUF package) only parses files, and no maintained npm package writes GGUF
 * tensors, so this one is written here. Nothing is held in memory but the header and one data chunk.
 */
import { open } from "node:fs/promises";

/** GGUF metadata value types (gguf_type). */
export enum GgufValueType {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
}

/** The ggml tensor types this writer knows the sizes of (ggml_type ids). */
export enum GgmlType {
  F32 = 0,
  F16 = 1,
  Q8_0 = 8,
}

/** Elements per block and bytes per block of each tensor type. */
export const GGML_TYPE_LAYOUT: Readonly<Record<GgmlType, { blockElements: number; blockBytes: number }>> = {
  [GgmlType.F32]: { blockElements: 1, blockBytes: 4 },
  [GgmlType.F16]: { blockElements: 1, blockBytes: 2 },
  // Q8_0: one f16 scale followed by 32 int8 quants.
  [GgmlType.Q8_0]: { blockElements: 32, blockBytes: 34 },
};

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;

type ScalarType = Exclude<GgufValueType, GgufValueType.ARRAY>;
type ScalarValue = number | bigint | boolean | string;

interface KvEntry {
  key: string;
  type: GgufValueType;
  value: ScalarValue | readonly ScalarValue[];
  itemType?: ScalarType;
}

/**
 * Fills `chunk` with the tensor's bytes starting at byte `byteOffset` within the tensor.
 * `chunk.length` is always a whole number of blocks of the tensor's type.
 */
export type TensorFiller = (chunk: Buffer, byteOffset: number) => void;

export interface TensorSpec {
  name: string;
  /** Dimensions in GGUF order: ne0 (innermost, contiguous) first. */
  dims: readonly number[];
  type: GgmlType;
  fill: TensorFiller;
}

interface PlacedTensor extends TensorSpec {
  nbytes: number;
  offset: number;
}

export interface WriteProgress {
  bytesWritten: number;
  totalBytes: number;
  tensor: string;
}

export function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}

/** Bytes of a tensor of `type` with dimensions `dims` (throws if ne0 is not a multiple of the block size). */
export function tensorNbytes(dims: readonly number[], type: GgmlType): number {
  const layout = GGML_TYPE_LAYOUT[type];
  if (layout === undefined) throw new Error(`unsupported ggml type ${type}`);
  const ne0 = dims[0];
  if (ne0 === undefined) throw new Error("a tensor needs at least one dimension");
  if (ne0 % layout.blockElements !== 0) {
    throw new Error(`ne0 = ${ne0} is not a multiple of the block size ${layout.blockElements} of type ${GgmlType[type]}`);
  }
  let elements = 1;
  for (const d of dims) {
    if (!Number.isInteger(d) || d <= 0) throw new Error(`bad dimension ${d}`);
    elements *= d;
  }
  return (elements / layout.blockElements) * layout.blockBytes;
}

/** Growable little-endian byte buffer for the header. */
class ByteSink {
  private buf = Buffer.alloc(1 << 16);
  length = 0;

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = Buffer.alloc(size);
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }

  u8(v: number): void {
    this.reserve(1);
    this.buf.writeUInt8(v, this.length);
    this.length += 1;
  }
  i8(v: number): void {
    this.reserve(1);
    this.buf.writeInt8(v, this.length);
    this.length += 1;
  }
  u16(v: number): void {
    this.reserve(2);
    this.buf.writeUInt16LE(v, this.length);
    this.length += 2;
  }
  i16(v: number): void {
    this.reserve(2);
    this.buf.writeInt16LE(v, this.length);
    this.length += 2;
  }
  u32(v: number): void {
    this.reserve(4);
    this.buf.writeUInt32LE(v, this.length);
    this.length += 4;
  }
  i32(v: number): void {
    this.reserve(4);
    this.buf.writeInt32LE(v, this.length);
    this.length += 4;
  }
  f32(v: number): void {
    this.reserve(4);
    this.buf.writeFloatLE(v, this.length);
    this.length += 4;
  }
  f64(v: number): void {
    this.reserve(8);
    this.buf.writeDoubleLE(v, this.length);
    this.length += 8;
  }
  u64(v: number | bigint): void {
    this.reserve(8);
    this.buf.writeBigUInt64LE(BigInt(v), this.length);
    this.length += 8;
  }
  i64(v: number | bigint): void {
    this.reserve(8);
    this.buf.writeBigInt64LE(BigInt(v), this.length);
    this.length += 8;
  }
  string(s: string): void {
    const bytes = Buffer.from(s, "utf8");
    this.u64(bytes.length);
    this.reserve(bytes.length);
    bytes.copy(this.buf, this.length);
    this.length += bytes.length;
  }
  zeros(n: number): void {
    this.reserve(n);
    this.buf.fill(0, this.length, this.length + n);
    this.length += n;
  }
  bytes(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}

function writeScalar(sink: ByteSink, type: ScalarType, value: ScalarValue): void {
  const num = (): number => {
    if (typeof value !== "number") throw new Error(`expected a number for ${GgufValueType[type]}, got ${typeof value}`);
    return value;
  };
  switch (type) {
    case GgufValueType.UINT8:
      return sink.u8(num());
    case GgufValueType.INT8:
      return sink.i8(num());
    case GgufValueType.UINT16:
      return sink.u16(num());
    case GgufValueType.INT16:
      return sink.i16(num());
    case GgufValueType.UINT32:
      return sink.u32(num());
    case GgufValueType.INT32:
      return sink.i32(num());
    case GgufValueType.FLOAT32:
      return sink.f32(num());
    case GgufValueType.FLOAT64:
      return sink.f64(num());
    case GgufValueType.UINT64:
      if (typeof value !== "number" && typeof value !== "bigint") throw new Error("expected a number or bigint for UINT64");
      return sink.u64(value);
    case GgufValueType.INT64:
      if (typeof value !== "number" && typeof value !== "bigint") throw new Error("expected a number or bigint for INT64");
      return sink.i64(value);
    case GgufValueType.BOOL:
      if (typeof value !== "boolean") throw new Error("expected a boolean for BOOL");
      return sink.u8(value ? 1 : 0);
    case GgufValueType.STRING:
      if (typeof value !== "string") throw new Error("expected a string for STRING");
      return sink.string(value);
  }
}

/**
 * Collects metadata and tensor descriptions, then writes the file in one pass with `write()`.
 * Tensor bytes come from each tensor's `fill` callback, one chunk at a time.
 */
export class GgufWriter {
  private readonly kvs: KvEntry[] = [];
  private readonly tensors: PlacedTensor[] = [];
  private readonly keys = new Set<string>();
  private dataBytes = 0;
  readonly alignment: number;

  constructor(options: { alignment?: number } = {}) {
    this.alignment = options.alignment ?? GGUF_DEFAULT_ALIGNMENT;
    if (this.alignment <= 0 || this.alignment % 8 !== 0) throw new Error("alignment must be a positive multiple of 8");
    // Written explicitly, as the format allows, so readers need not assume the default.
    this.addUint32("general.alignment", this.alignment);
  }

  private addKv(entry: KvEntry): this {
    if (this.keys.has(entry.key)) throw new Error(`duplicate metadata key ${entry.key}`);
    this.keys.add(entry.key);
    this.kvs.push(entry);
    return this;
  }

  addScalar(key: string, type: ScalarType, value: ScalarValue): this {
    return this.addKv({ key, type, value });
  }
  addUint32(key: string, value: number): this {
    return this.addScalar(key, GgufValueType.UINT32, value);
  }
  addInt32(key: string, value: number): this {
    return this.addScalar(key, GgufValueType.INT32, value);
  }
  addUint64(key: string, value: number | bigint): this {
    return this.addScalar(key, GgufValueType.UINT64, value);
  }
  addFloat32(key: string, value: number): this {
    return this.addScalar(key, GgufValueType.FLOAT32, value);
  }
  addBool(key: string, value: boolean): this {
    return this.addScalar(key, GgufValueType.BOOL, value);
  }
  addString(key: string, value: string): this {
    return this.addScalar(key, GgufValueType.STRING, value);
  }
  addArray(key: string, itemType: ScalarType, values: readonly ScalarValue[]): this {
    return this.addKv({ key, type: GgufValueType.ARRAY, itemType, value: values });
  }

  /** Adds a tensor; its data offset is assigned in the order tensors are added. */
  addTensor(spec: TensorSpec): this {
    if (this.tensors.some((t) => t.name === spec.name)) throw new Error(`duplicate tensor ${spec.name}`);
    if (Buffer.byteLength(spec.name, "utf8") >= 64) throw new Error(`tensor name too long for ggml: ${spec.name}`);
    if (spec.dims.length < 1 || spec.dims.length > 4) throw new Error(`tensor ${spec.name} must have 1 to 4 dimensions`);
    const nbytes = tensorNbytes(spec.dims, spec.type);
    this.tensors.push({ ...spec, nbytes, offset: this.dataBytes });
    this.dataBytes += alignUp(nbytes, this.alignment);
    return this;
  }

  /** Header bytes (metadata + tensor infos), already padded to the alignment. */
  buildHeader(): Buffer {
    const sink = new ByteSink();
    sink.u32(GGUF_MAGIC);
    sink.u32(GGUF_VERSION);
    sink.u64(this.tensors.length);
    sink.u64(this.kvs.length);
    for (const kv of this.kvs) {
      sink.string(kv.key);
      sink.u32(kv.type);
      if (kv.type === GgufValueType.ARRAY) {
        const items = kv.value as readonly ScalarValue[];
        const itemType = kv.itemType;
        if (itemType === undefined) throw new Error(`array ${kv.key} has no item type`);
        sink.u32(itemType);
        sink.u64(items.length);
        for (const item of items) writeScalar(sink, itemType, item);
      } else {
        writeScalar(sink, kv.type as ScalarType, kv.value as ScalarValue);
      }
    }
    for (const t of this.tensors) {
      sink.string(t.name);
      sink.u32(t.dims.length);
      for (const d of t.dims) sink.u64(d);
      sink.u32(t.type);
      sink.u64(t.offset);
    }
    sink.zeros(alignUp(sink.length, this.alignment) - sink.length);
    return Buffer.from(sink.bytes());
  }

  /** Bytes of the tensor data section, padding included. */
  get tensorDataBytes(): number {
    return this.dataBytes;
  }

  get tensorCount(): number {
    return this.tensors.length;
  }

  /**
   * Writes the whole file to `path` (replacing it), streaming tensor data in chunks of about `chunkBytes`.
   * Returns the file size.
   */
  async write(path: string, options: { chunkBytes?: number; onProgress?: (p: WriteProgress) => void } = {}): Promise<number> {
    const header = this.buildHeader();
    const totalBytes = header.length + this.dataBytes;
    const targetChunk = options.chunkBytes ?? 4 * 1024 * 1024;
    // One reusable chunk, sized for the largest block size (34 bytes) times a multiple of 4.
    const pool = Buffer.from(new ArrayBuffer(alignUp(targetChunk + 34 * 4, 8)));
    const zeros = Buffer.alloc(this.alignment);
    const file = await open(path, "w");
    try {
      let position = 0;
      const put = async (buf: Buffer): Promise<void> => {
        let done = 0;
        while (done < buf.length) {
          const { bytesWritten } = await file.write(buf, done, buf.length - done, position);
          done += bytesWritten;
          position += bytesWritten;
        }
      };
      await put(header);
      const dataStart = position;
      for (const t of this.tensors) {
        if (position - dataStart !== t.offset) throw new Error(`internal: tensor ${t.name} offset mismatch`);
        const { blockBytes } = GGML_TYPE_LAYOUT[t.type];
        // A whole number of blocks and a multiple of 4 bytes, so fillers may view it as Uint32Array.
        const unit = blockBytes % 4 === 0 ? blockBytes : blockBytes % 2 === 0 ? blockBytes * 2 : blockBytes * 4;
        const chunkLen = Math.max(unit, Math.floor(targetChunk / unit) * unit);
        for (let off = 0; off < t.nbytes; off += chunkLen) {
          const len = Math.min(chunkLen, t.nbytes - off);
          const chunk = pool.subarray(0, len);
          t.fill(chunk, off);
          await put(chunk);
          options.onProgress?.({ bytesWritten: position, totalBytes, tensor: t.name });
        }
        const pad = alignUp(t.nbytes, this.alignment) - t.nbytes;
        if (pad > 0) await put(zeros.subarray(0, pad));
      }
      if (position !== totalBytes) throw new Error(`internal: wrote ${position} bytes, expected ${totalBytes}`);
      return totalBytes;
    } finally {
      await file.close();
    }
  }
}
