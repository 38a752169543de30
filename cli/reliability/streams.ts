// Generate streams as the reliability suite drives them: each may be
// cancelled after some time or some tokens, or carry a deadline, and reports
// how it ended (the status the client saw), how many tokens it got, the
// longest gap between two of them, and on which shard it ran.
import * as grpc from '@grpc/grpc-js';

import type { GenerateResponse } from '../../gen/smartkv/v1/generation_pb.js';
import { generateRequest, type GenerateOptions, type SmartKvClient } from '../../services/common/generation-client.js';

export interface StreamPlan extends GenerateOptions {
  cancelAfterMs?: number; // the client cancels this long after opening the stream
  cancelAfterTokens?: number; // … or after this many tokens
  deadlineMs?: number; // a gRPC deadline
}

export interface StreamResult {
  code: number; // the status the client saw (0: OK)
  details: string;
  tokens: number;
  maxGapMs: number; // the longest wait between two tokens of this stream
  tokenTimes: number[]; // performance.now() of each token
  shardAddress: string; // from the summary ('' when it did not finish)
  failedAfterFirstToken: boolean; // a server-side failure once tokens flowed (cancel/deadline excluded)
  openedAt: number;
  endedAt: number; // performance.now()
}

export interface OpenStream {
  done: Promise<StreamResult>;
  firstToken: Promise<void>; // settles at the first token (never, if none comes)
  cancel(): void;
}

export function openStream(client: SmartKvClient, plan: StreamPlan): OpenStream {
  const openedAt = performance.now();
  const call = client.stream(generateRequest(plan), { deadlineMs: plan.deadlineMs });
  let tokens = 0, last = 0, maxGapMs = 0, shardAddress = '', cancelledByUs = false;
  const tokenTimes: number[] = [];
  let onFirst!: () => void;
  const firstToken = new Promise<void>((r) => (onFirst = r));
  const cancel = () => {
    cancelledByUs = true;
    call.cancel();
  };
  const timer = plan.cancelAfterMs !== undefined ? setTimeout(cancel, plan.cancelAfterMs) : undefined;
  call.on('data', (m: GenerateResponse) => {
    const now = performance.now();
    if (m.kind.case === 'token') {
      tokenTimes.push(now);
      if (tokens++ === 0) onFirst();
      else maxGapMs = Math.max(maxGapMs, now - last);
      last = now;
      if (plan.cancelAfterTokens !== undefined && tokens >= plan.cancelAfterTokens) cancel();
    } else if (m.kind.case === 'summary') shardAddress = m.kind.value.shardAddress;
  });
  call.on('error', () => {}); // the status event carries it
  const done = new Promise<StreamResult>((resolve) =>
    call.on('status', (s: grpc.StatusObject) => {
      clearTimeout(timer);
      const clientSide = cancelledByUs || s.code === grpc.status.DEADLINE_EXCEEDED;
      resolve({
        code: s.code,
        details: s.details,
        tokens,
        maxGapMs,
        tokenTimes,
        shardAddress,
        failedAfterFirstToken: s.code !== 0 && tokens > 0 && !clientSide,
        openedAt,
        endedAt: performance.now(),
      });
    }),
  );
  return { done, firstToken, cancel };
}

/** The longest token gap of `r` that ends after `t` (a gap spanning `t` counts
 * whole; the wait from `t` to the end counts when no token came after it). */
export function maxGapAfter(r: StreamResult, t: number): number {
  const times = r.tokenTimes;
  let gap = 0;
  for (let i = 1; i < times.length; i++) if (times[i] > t) gap = Math.max(gap, times[i] - times[i - 1]);
  const last = times.length ? times[times.length - 1] : r.openedAt;
  if (last <= t && r.code === 0) gap = Math.max(gap, r.endedAt - last);
  return gap;
}

/** The longest token gap of `r` that ends by `t`. */
export function maxGapBefore(r: StreamResult, t: number): number {
  const times = r.tokenTimes;
  let gap = 0;
  for (let i = 1; i < times.length && times[i] <= t; i++) gap = Math.max(gap, times[i] - times[i - 1]);
  return gap;
}

/** Runs `count` jobs with at most `parallel` at a time. */
export async function pool<T>(count: number, parallel: number, job: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = new Array(count);
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      out[i] = await job(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, count) }, worker));
  return out;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A seeded generator (mulberry32): the suite's random choices repeat run to run. */
export { mulberry32 as rng } from '../../services/common/random.js';
