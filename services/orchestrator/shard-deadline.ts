// The deadline of every orchestrator → cache shard call (one tracker per
// shard and method). Without one, a hung shard (SIGSTOPped, a stuck engine)
// stalled every request: a step waits for every shard's attend, and the
// reallocations and frees between steps were awaited with 30 s deadlines.
// The deadline follows what this shard's calls of the same method have been
// taking: `factor` × the slowest of the last `window`, and no less than
// `floorMs` (--shard-deadline-ms), so a slow model gets the time its calls
// need and a stopped shard is given up on within ~floorMs. A call that
// misses it fails only the sequences on that shard (DEADLINE_EXCEEDED); the
// health checks take the shard out of placement until it answers again.
export class ShardDeadline {
  private readonly recent: number[] = []; // ms of the last `window` calls that answered

  constructor(
    readonly floorMs: number,
    private readonly factor = 10,
    private readonly window = 64,
    private readonly capMs = 60_000,
  ) {}

  get ms(): number {
    let slowest = 0;
    for (const x of this.recent) slowest = Math.max(slowest, x);
    return Math.min(this.capMs, Math.max(this.floorMs, Math.ceil(this.factor * slowest)));
  }

  /** A call that answered (successfully or with an error status) took `ms`. */
  record(ms: number): void {
    this.recent.push(ms);
    if (this.recent.length > this.window) this.recent.shift();
  }
}
