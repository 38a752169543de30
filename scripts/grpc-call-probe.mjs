#!/usr/bin/env node
// What one call costs between two local processes with grpc-js: a unary call
// against a message on a long-lived bidirectional stream, back to back and
// after 5 ms idle (as a reallocation's calls come, every R steps), for a
// small and a 100 KB message. No SmartKV code: an echo service, to separate
// gRPC's own cost from ours. Cited in docs/services.md ("Reallocation calls on
// streams"). Run: node scripts/grpc-call-probe.mjs; SIZE=100000 node scripts/grpc-call-probe.mjs
import * as grpc from '@grpc/grpc-js';
import { fork } from 'node:child_process';
const ser = (b) => b, de = (b) => b;
const def = {
  Echo: { path: '/p.P/Echo', requestStream: false, responseStream: false, requestSerialize: ser, requestDeserialize: de, responseSerialize: ser, responseDeserialize: de },
  EchoStream: { path: '/p.P/EchoStream', requestStream: true, responseStream: true, requestSerialize: ser, requestDeserialize: de, responseSerialize: ser, responseDeserialize: de },
};
const SIZE = Number(process.env.SIZE ?? 64);
if (process.argv[2] === 'server') {
  const s = new grpc.Server();
  s.addService(def, { Echo: (call, cb) => cb(null, call.request), EchoStream: (call) => call.on('data', (m) => call.write(m)) });
  s.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, port) => process.send(port));
} else {
  const child = fork(new URL(import.meta.url).pathname, ['server']);
  const port = await new Promise((r) => child.once('message', r));
  const C = grpc.makeGenericClientConstructor(def, 'P');
  const c = new C(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  const payload = Buffer.alloc(SIZE, 7);
  const unary = () => new Promise((res, rej) => c.Echo(payload, (e, r) => (e ? rej(e) : res(r))));
  const st = c.EchoStream(); let waiter = null; st.on('data', (m) => waiter(m));
  const stream = () => new Promise((res) => { waiter = res; st.write(payload); });
  for (let i = 0; i < 50; i++) { await unary(); await stream(); }
  for (const gap of [0, 5]) for (const [name, f] of [['unary', unary], ['stream', stream]]) {
    const t = [];
    for (let i = 0; i < 150; i++) { if (gap) await new Promise((r) => setTimeout(r, gap)); const t0 = performance.now(); await f(); t.push((performance.now() - t0) * 1000); }
    t.sort((x, y) => x - y);
    console.log(`${SIZE} B ${name.padEnd(6)} gap ${gap} ms: p50 ${t[75].toFixed(0)} µs p90 ${t[135].toFixed(0)}`);
  }
  st.end(); c.close(); child.kill(); process.exit(0);
}
