/**
 * The part of the @frost-beta/mlx binding this engine uses, typed here rather than imported: the package's
 * index.d.ts re-exports its `nn` sources as .ts files, which fail this project's strict type check, and a few of
 * its declarations do not match the shipped binary (quantizedMatmul's argument order, `load`'s return type).
 */

export interface MxDtype {
  readonly size: number;
}

export interface MxSlice {
  start: number | null;
  stop: number | null;
  step: number | null;
}

export type MxIndex = null | MxSlice | "..." | MxArray | number;
export type MxScalarOrArray = number | boolean | MxArray | number[] | number[][];

export interface MxArray {
  readonly shape: number[];
  readonly dtype: MxDtype;
  readonly size: number;
  readonly ndim: number;
  readonly itemsize: number;
  readonly nbytes?: number;
  readonly T: MxArray;
  astype(dtype: MxDtype): MxArray;
  item(): number | boolean;
  tolist(): unknown;
  reshape(...shape: (number | number[])[]): MxArray;
  transpose(...axes: number[]): MxArray;
  index(...index: MxIndex[]): MxArray;
  /** Writes `value` at `index` and rebinds this array to the result (Python's `a[idx] = value`). */
  indexPut_(index: MxIndex | MxIndex[], value: MxScalarOrArray): MxArray;
}

export interface Mx {
  readonly cpu: unknown;
  readonly float32: MxDtype;
  readonly float16: MxDtype;
  readonly bfloat16: MxDtype;
  readonly int32: MxDtype;
  readonly uint32: MxDtype;
  array: ((value: MxScalarOrArray, dtype?: MxDtype) => MxArray) & (abstract new (...args: never[]) => MxArray);
  Slice(start?: number | null, stop?: number | null, step?: number | null): MxSlice;
  setDefaultDevice(device: unknown): void;
  eval(...arrays: MxArray[]): void;
  zeros(shape: number[], dtype?: MxDtype): MxArray;
  arange(start: number, stop: number, step?: number, dtype?: MxDtype): MxArray;
  where(condition: MxArray, x: MxScalarOrArray, y: MxScalarOrArray): MxArray;
  greaterEqual(a: MxScalarOrArray, b: MxScalarOrArray): MxArray;
  add(a: MxScalarOrArray, b: MxScalarOrArray): MxArray;
  subtract(a: MxScalarOrArray, b: MxScalarOrArray): MxArray;
  multiply(a: MxScalarOrArray, b: MxScalarOrArray): MxArray;
  negative(a: MxArray): MxArray;
  abs(a: MxArray): MxArray;
  max(a: MxArray): MxArray;
  matmul(a: MxArray, b: MxArray): MxArray;
  take(a: MxArray, indices: MxArray, axis?: number): MxArray;
  sigmoid(a: MxArray): MxArray;
  cos(a: MxArray): MxArray;
  sin(a: MxArray): MxArray;
  concatenate(arrays: MxArray[], axis?: number): MxArray;
  stack(arrays: MxArray[], axis?: number): MxArray;
  argmax(a: MxArray): MxArray;
  argpartition(a: MxArray, kth: number, axis?: number): MxArray;
  dequantize(w: MxArray, scales: MxArray, biases: MxArray, groupSize: number, bits: number): MxArray;
  /** Binary order (x first); the package typings list (w, x). */
  quantizedMatmul(x: MxArray, w: MxArray, scales: MxArray, biases: MxArray, transpose: boolean, groupSize: number, bits: number): MxArray;
  /** A name → array map for safetensors and GGUF files. */
  load(filePath: string): Record<string, MxArray> | MxArray;
  saveSafetensors(filePath: string, arrays: Record<string, MxArray>, metadata?: Record<string, string>): void;
  fast: {
    rmsNorm(x: MxArray, weight: MxArray, eps: number): MxArray;
    rope(x: MxArray, dims: number, traditional: boolean, base: number, scale: number, offset: number): MxArray;
    scaledDotProductAttention(q: MxArray, k: MxArray, v: MxArray, scale: number, mask?: MxArray): MxArray;
  };
}
