// The server side of a stream of calls answered by id (ReallocStream,
// AllocateStream; the client is call-stream.ts): each message is handled on
// its own, as its unary twin would handle it, and answered with its id —
// with the status the unary call would have failed with in error_code and
// error_message. Answers may leave in another order than the requests came.
import * as grpc from '@grpc/grpc-js';

import { MalformedMessage, malformedStatus, statusOf } from './rpc.js';

/**
 * handle: the unary twin's work for one message (throws what it would fail with);
 * failed: the answer that carries an error for id;
 * onMessage: called for every well-formed message before it is handled (a lease's heartbeat).
 */
export function answerCalls<Req extends { id: bigint }, Res>(
  handle: (req: Req) => Promise<Res>,
  failed: (id: bigint, code: grpc.status, message: string) => Res,
  log: (line: string) => void,
  onMessage: () => void = () => undefined,
): grpc.handleBidiStreamingCall<Req, Res> {
  return (call) => {
    call.on('data', (req: Req | MalformedMessage) => {
      // No id to answer a malformed message with: the stream ends with INVALID_ARGUMENT.
      if (req instanceof MalformedMessage) return void (!call.destroyed && call.emit('error', malformedStatus(req)));
      onMessage();
      handle(req).then(
        (res) => !call.destroyed && call.write(res),
        (err) => {
          const code = statusOf(err);
          if (code === grpc.status.INTERNAL) log(`internal error: ${(err as Error)?.stack ?? err}`);
          if (!call.destroyed) call.write(failed(req.id, code, err instanceof Error ? err.message : String(err)));
        },
      );
    });
    call.on('end', () => call.end());
  };
}
