// Reads and checks a safetensors header without reading the tensor data:
//   [u64 little-endian header length N][N bytes of JSON][data]
// The data is memory-mapped later by the native runtime at the offsets found here.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';

import { ModelLoadError } from './model-error.js';

export type TensorDtype = 'F32' | 'F16' | 'BF16';
const dtypeBytes: Record<TensorDtype, number> = { F32: 4, F16: 2, BF16: 2 };

export interface TensorEntry {
  name: string;
  file: string;
  dtype: TensorDtype;
  shape: number[];
  /** Absolute byte offset of the data in the file. */
  offset: number;
  bytes: number;
}

const maxHeaderBytes = 100 * 1024 * 1024;

function readExactly(fd: number, length: number, position: number, file: string): Buffer {
  const buf = Buffer.alloc(length);
  const got = readSync(fd, buf, 0, length, position);
  if (got !== length) throw new ModelLoadError(file, `truncated: wanted ${length} bytes at ${position}, got ${got}`);
  return buf;
}

export function readSafetensorsHeader(file: string): Map<string, TensorEntry> {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (e) {
    throw new ModelLoadError(file, `cannot open: ${(e as Error).message}`);
  }
  try {
    const size = fstatSync(fd).size;
    if (size < 8) throw new ModelLoadError(file, `truncated: ${size} bytes, a safetensors file starts with an 8-byte header length`);
    const headerLen = Number(readExactly(fd, 8, 0, file).readBigUInt64LE(0));
    if (headerLen > maxHeaderBytes || 8 + headerLen > size) {
      throw new ModelLoadError(file, `malformed header: length ${headerLen} does not fit a ${size}-byte file`);
    }
    let header: Record<string, unknown>;
    try {
      header = JSON.parse(readExactly(fd, headerLen, 8, file).toString('utf8'));
    } catch (e) {
      throw new ModelLoadError(file, `malformed header: ${(e as Error).message}`);
    }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) {
      throw new ModelLoadError(file, 'malformed header: not a JSON object');
    }
    const dataStart = 8 + headerLen;
    const tensors = new Map<string, TensorEntry>();
    for (const [name, raw] of Object.entries(header)) {
      if (name === '__metadata__') continue;
      tensors.set(name, checkEntry(name, raw, file, dataStart, size));
    }
    return tensors;
  } finally {
    closeSync(fd);
  }
}

function checkEntry(name: string, raw: unknown, file: string, dataStart: number, size: number): TensorEntry {
  const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
  if (typeof e !== 'object' || e === null) throw new ModelLoadError(file, 'malformed entry', name);
  if (e.dtype !== 'F32' && e.dtype !== 'F16' && e.dtype !== 'BF16') {
    throw new ModelLoadError(file, `unsupported dtype ${JSON.stringify(e.dtype)} (F32, F16 or BF16)`, name);
  }
  const shape = e.shape;
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new ModelLoadError(file, 'malformed shape', name);
  }
  const offsets = e.data_offsets;
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isInteger(o) && o >= 0)) {
    throw new ModelLoadError(file, 'malformed data_offsets', name);
  }
  const [begin, end] = offsets as [number, number];
  const bytes = shape.reduce((a: number, b: number) => a * b, 1) * dtypeBytes[e.dtype];
  if (end - begin !== bytes) {
    throw new ModelLoadError(file, `data_offsets span ${end - begin} bytes but ${e.dtype}${JSON.stringify(shape)} needs ${bytes}`, name);
  }
  if (dataStart + end > size) throw new ModelLoadError(file, `truncated: tensor data ends past the end of the file`, name);
  return { name, file, dtype: e.dtype, shape: shape as number[], offset: dataStart + begin, bytes };
}
