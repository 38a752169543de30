// Hostile request bodies for any method, built at the wire level from the
// method's message descriptor: every field may carry an extreme value (0,
// −1, 2^32−1, 2^63, NaN), bytes of odd lengths, invalid UTF-8, the wrong
// wire type or a nested message of garbage; some bodies are cut short or are
// random bytes. What a generated client could never send, and what a
// stranger or a broken client can.
import { ScalarType, type DescField, type DescMessage } from '@bufbuild/protobuf';

type Rand = () => number;

const VARINT = 0, I64 = 1, LEN = 2, I32 = 5;

function varint(v: bigint): number[] {
  let x = BigInt.asUintN(64, v);
  const out: number[] = [];
  do {
    let b = Number(x & 0x7fn);
    x >>= 7n;
    if (x > 0n) b |= 0x80;
    out.push(b);
  } while (x > 0n);
  return out;
}

const tag = (field: number, wire: number) => varint(BigInt((field << 3) | wire));
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)];

const EXTREME_INTS = [0n, 1n, -1n, 2n ** 31n - 1n, -(2n ** 31n), 2n ** 32n - 1n, 2n ** 63n - 1n, 2n ** 64n - 1n, 4096n, 1_000_000n];

function randomBytes(r: Rand, n: number): number[] {
  return Array.from({ length: n }, () => Math.floor(r() * 256));
}

function lengthDelimited(field: number, body: number[]): number[] {
  return [...tag(field, LEN), ...varint(BigInt(body.length)), ...body];
}

function fixed(r: Rand, bytes: 4 | 8): number[] {
  const buf = Buffer.alloc(8);
  const choice = r();
  if (choice < 0.2) buf.writeDoubleLE(NaN);
  else if (choice < 0.4) buf.writeDoubleLE(bytes === 8 ? Infinity : 0);
  else if (choice < 0.5 && bytes === 4) buf.writeFloatLE(-Infinity);
  else return randomBytes(r, bytes);
  return [...buf.subarray(0, bytes)];
}

function scalarValue(r: Rand, field: number, t: ScalarType): number[] {
  switch (t) {
    case ScalarType.DOUBLE:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return [...tag(field, I64), ...fixed(r, 8)];
    case ScalarType.FLOAT:
    case ScalarType.FIXED32:
    case ScalarType.SFIXED32:
      return [...tag(field, I32), ...fixed(r, 4)];
    case ScalarType.STRING:
      // Sometimes invalid UTF-8 (a lone continuation byte).
      return lengthDelimited(field, r() < 0.3 ? [0x61, 0x80, 0xff] : [...Buffer.from('x'.repeat(Math.floor(r() * 64)))]);
    case ScalarType.BYTES:
      return lengthDelimited(field, randomBytes(r, pick(r, [0, 1, 3, 7, 8, 64, 255, 1024, 4096])));
    default:
      return [...tag(field, VARINT), ...varint(r() < 0.7 ? pick(r, EXTREME_INTS) : BigInt(Math.floor(r() * 2 ** 20)))];
  }
}

function fieldValue(r: Rand, f: DescField, depth: number): number[] {
  // The wrong wire type for the field, now and then.
  if (r() < 0.1) return [...tag(f.number, pick(r, [VARINT, I64, LEN, I32])), ...randomBytes(r, 8)];
  switch (f.fieldKind) {
    case 'scalar':
      return scalarValue(r, f.number, f.scalar);
    case 'enum':
      return [...tag(f.number, VARINT), ...varint(pick(r, [0n, 1n, 2n, 7n, 99n, -1n, 2n ** 31n - 1n]))];
    case 'message':
      return lengthDelimited(f.number, depth < 3 && r() < 0.8 ? message(r, f.message, depth + 1) : randomBytes(r, 12));
    case 'list': {
      const n = Math.floor(r() * 5);
      const out: number[] = [];
      for (let i = 0; i < n; i++) {
        if (f.listKind === 'message') out.push(...lengthDelimited(f.number, depth < 3 ? message(r, f.message, depth + 1) : randomBytes(r, 6)));
        else if (f.listKind === 'enum') out.push(...tag(f.number, VARINT), ...varint(pick(r, [0n, 1n, 99n, -1n])));
        else out.push(...scalarValue(r, f.number, f.scalar));
      }
      return out;
    }
    default:
      return lengthDelimited(f.number, randomBytes(r, 10)); // maps: garbage entries
  }
}

function message(r: Rand, schema: DescMessage, depth: number): number[] {
  const out: number[] = [];
  for (const f of schema.fields) if (r() < 0.6) out.push(...fieldValue(r, f, depth));
  // An unknown field, sometimes: parsers must skip it.
  if (r() < 0.1) out.push(...lengthDelimited(9999, randomBytes(r, 4)));
  return out;
}

/** One hostile body for a request of type `schema`. */
export function fuzzBody(r: Rand, schema: DescMessage): Buffer {
  const kind = r();
  if (kind < 0.1) return Buffer.from(randomBytes(r, Math.floor(r() * 200))); // noise
  const body = message(r, schema, 0);
  if (kind < 0.25 && body.length > 1) return Buffer.from(body.slice(0, Math.floor(r() * body.length))); // cut short
  return Buffer.from(body);
}
