// A tiny authoritative DNS server for tests: UDP on 127.0.0.1, A records the
// test sets and changes at run time (TTL 0, so no resolver caches them).
// Names it does not know get NXDOMAIN; AAAA and other types get an empty
// answer (NOERROR, no data). Enough for node:dns's Resolver (c-ares).
//
// Message layout (RFC 1035 §4.1): a 12-byte header
//   [id u16][flags u16][qdcount u16][ancount u16][nscount u16][arcount u16]
// then the question (name as length-prefixed labels, type u16, class u16),
// then answer records (name, type, class, ttl u32, rdlength u16, rdata).
import { createSocket, type Socket } from 'node:dgram';

const TYPE_A = 1;
const CLASS_IN = 1;

export class TestDnsServer {
  private readonly records = new Map<string, string[]>();
  queries = 0;

  private constructor(
    private readonly socket: Socket,
    readonly address: string, // IP:PORT, for Resolver.setServers / --cache-dns-server
  ) {}

  static async start(): Promise<TestDnsServer> {
    const socket = createSocket('udp4');
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(0, '127.0.0.1', () => resolve());
    });
    const srv = new TestDnsServer(socket, `127.0.0.1:${socket.address().port}`);
    socket.on('message', (msg, rinfo) => {
      const reply = srv.answer(msg);
      if (reply) socket.send(reply, rinfo.port, rinfo.address);
    });
    return srv;
  }

  /** Sets the A records of a name (an empty list: the name exists, no addresses). */
  set(name: string, ips: string[]): void {
    this.records.set(name.toLowerCase().replace(/\.$/, ''), [...ips]);
  }

  delete(name: string): void {
    this.records.delete(name.toLowerCase().replace(/\.$/, ''));
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.socket.close(() => resolve()));
  }

  private answer(q: Buffer): Buffer | null {
    if (q.length < 12 || q.readUInt16BE(4) !== 1) return null; // one question, as resolvers send
    this.queries++;
    const labels: string[] = [];
    let off = 12;
    while (off < q.length && q[off] !== 0) {
      const n = q[off];
      if (n > 63 || off + 1 + n > q.length) return null; // no compression in questions
      labels.push(q.toString('latin1', off + 1, off + 1 + n));
      off += 1 + n;
    }
    off += 1;
    if (off + 4 > q.length) return null;
    const qtype = q.readUInt16BE(off);
    const qclass = q.readUInt16BE(off + 2);
    const question = q.subarray(12, off + 4);
    const ips = this.records.get(labels.join('.').toLowerCase());
    const answers = ips && qtype === TYPE_A && qclass === CLASS_IN ? ips : [];

    const header = Buffer.alloc(12);
    header.writeUInt16BE(q.readUInt16BE(0), 0); // id
    const rd = q.readUInt16BE(2) & 0x0100;
    // QR, AA, RD copied, RA; RCODE 3 (NXDOMAIN) for an unknown name.
    header.writeUInt16BE(0x8000 | 0x0400 | rd | 0x0080 | (ips ? 0 : 3), 2);
    header.writeUInt16BE(1, 4);
    header.writeUInt16BE(answers.length, 6);
    const rrs = answers.map((ip) => {
      const rr = Buffer.alloc(16);
      rr.writeUInt16BE(0xc00c, 0); // name: pointer to the question's name
      rr.writeUInt16BE(TYPE_A, 2);
      rr.writeUInt16BE(CLASS_IN, 4);
      rr.writeUInt32BE(0, 6); // TTL 0: never cached
      rr.writeUInt16BE(4, 10);
      ip.split('.').forEach((b, i) => rr.writeUInt8(Number(b), 12 + i));
      return rr;
    });
    return Buffer.concat([header, question, ...rrs]);
  }
}
