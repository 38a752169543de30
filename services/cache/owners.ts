// Who may act on a cache service's sequences, and for how long they hold them.
//
// A sequence belongs to the owner token its creator sent in the
// `smartkv-owner` header: a secret of at least 128 random bits (32 hex
// characters; the orchestrator makes one per process). A sequence handle is
// therefore (owner token, sequence id): the id alone is a small per-service
// number, but no call can reach a sequence without its owner's token, so a
// stranger cannot guess its way in — every call about someone else's
// sequence answers NOT_FOUND, exactly as for an id that does not exist.
//
// Every owner holds its sequences under a lease:
//   - an open AttendStream holds it (the orchestrator's case): when the
//     owner's last stream closes, its sequences are freed at once;
//   - otherwise any call carrying the token renews it (a heartbeat is any
//     cheap call, e.g. Stats with the header); an owner not heard from for
//     --lease-ms loses its sequences (a tool that created some by unary
//     CreateSequence and went away: 20,000 such sequences used to stay).
import { createHash } from 'node:crypto';

export const MIN_OWNER_CHARS = 32;

interface Lease {
  streams: number; // open AttendStreams of this owner
  lastSeen: number; // ms, the last call that carried the token
}

export class OwnerLeases {
  private readonly owners = new Map<string, Lease>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly leaseMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** A call carried `owner`'s token: its lease runs from now. */
  touch(owner: string): void {
    if (!validOwner(owner)) return; // an invalid token owns nothing: no entry to keep
    const l = this.owners.get(owner);
    if (l) l.lastSeen = this.now();
    else this.owners.set(owner, { streams: 0, lastSeen: this.now() });
  }

  openStream(owner: string): void {
    this.touch(owner);
    const l = this.owners.get(owner);
    if (l) l.streams++;
  }

  /** True when that was the owner's last open stream (its sequences go now). */
  closeStream(owner: string): boolean {
    const l = this.owners.get(owner);
    if (!l || l.streams === 0) return false;
    l.streams--;
    if (l.streams > 0) return false;
    this.owners.delete(owner);
    return true;
  }

  /** Owners with no open stream whose lease has run out; forgotten here. */
  expired(): string[] {
    const t = this.now();
    const out: string[] = [];
    for (const [o, l] of this.owners) if (l.streams === 0 && t - l.lastSeen > this.leaseMs) out.push(o);
    for (const o of out) this.owners.delete(o);
    return out;
  }

  /** Calls free(owner) for every expired owner, every quarter lease. */
  start(free: (owner: string) => void): void {
    this.timer = setInterval(() => this.expired().forEach(free), Math.max(50, this.leaseMs / 4));
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

export function validOwner(owner: string): boolean {
  return owner.length >= MIN_OWNER_CHARS;
}

/** For logs: the token is a secret, so never print it. */
export function ownerTag(owner: string): string {
  return owner ? 'owner#' + createHash('sha256').update(owner).digest('hex').slice(0, 8) : 'anonymous';
}
