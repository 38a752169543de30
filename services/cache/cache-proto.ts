// Conversions between the cache API's plain types and its protobuf messages,
// used by both sides of the wire (cache-server.ts, cache-client.ts).
import { create } from '@bufbuild/protobuf';
import { StorageKind as PbStorage } from '../../gen/smartkv/v1/cache_pb.js';
import { CacheBytesSchema, type CacheBytes } from '../../gen/smartkv/v1/common_pb.js';
import type { StorageKind } from '../../native/kv-engine.js';
import type { Bytes } from './cache-api.js';
import type { MethodCodec } from '../common/rpc.js';
import { decodeAttendRequest, decodeAttendResponse, encodeAttendRequest, encodeAttendResponse } from './attend-codec.js';

export const OWNER_HEADER = 'smartkv-owner';

/** Attend and AttendStream use the hand-written codec (attend-codec.ts). */
export const ATTEND_CODECS: Record<string, MethodCodec> = Object.fromEntries(
  ['attend', 'attendStream'].map((m) => [
    m,
    {
      serializeRequest: encodeAttendRequest,
      deserializeRequest: decodeAttendRequest,
      serializeResponse: encodeAttendResponse,
      deserializeResponse: decodeAttendResponse,
    } as MethodCodec,
  ]),
);

const STORAGE: ReadonlyArray<[PbStorage, StorageKind]> = [
  [PbStorage.MIXED, 'mixed'],
  [PbStorage.KIVI_2, 'kivi-2'],
  [PbStorage.KIVI_4, 'kivi-4'],
  [PbStorage.KIVI_2_ROTATED, 'kivi-2-rot'],
  [PbStorage.KIVI_4_ROTATED, 'kivi-4-rot'],
];

export function storageFromPb(s: PbStorage): StorageKind | undefined {
  if (s === PbStorage.UNSPECIFIED) return 'mixed';
  return STORAGE.find(([p]) => p === s)?.[1];
}

export function storageToPb(s: StorageKind): PbStorage {
  return STORAGE.find(([, k]) => k === s)![0];
}

export function bytesToPb(b: Bytes): CacheBytes {
  return create(CacheBytesSchema, {
    payloadBytes: BigInt(b.payloadBytes),
    paramBytes: BigInt(b.paramBytes),
    metadataBytes: BigInt(b.metadataBytes),
    heldBytes: BigInt(b.heldBytes),
    fp16Bytes: BigInt(b.fp16Bytes),
    masterBytes: BigInt(b.masterBytes),
    tokens: BigInt(b.tokens),
    tokensByFormat: b.tokensByFormat.map(BigInt),
  });
}

export function bytesFromPb(b: CacheBytes | undefined): Bytes {
  return {
    payloadBytes: Number(b?.payloadBytes ?? 0n),
    paramBytes: Number(b?.paramBytes ?? 0n),
    metadataBytes: Number(b?.metadataBytes ?? 0n),
    heldBytes: Number(b?.heldBytes ?? 0n),
    fp16Bytes: Number(b?.fp16Bytes ?? 0n),
    masterBytes: Number(b?.masterBytes ?? 0n),
    tokens: Number(b?.tokens ?? 0n),
    tokensByFormat: [0, 1, 2, 3].map((i) => Number(b?.tokensByFormat[i] ?? 0n)),
    kiviTokens: 0,
  };
}
