// A progress bar for long evaluation runs: requests done / total, elapsed
// time and an estimate of what is left. On a terminal it redraws one line;
// otherwise (a pipe, a test) it prints a plain line every 10 % or so, so logs
// stay readable.

export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '?';
  const s = Math.round(ms / 1000);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : m > 0 ? `${m}m${String(r).padStart(2, '0')}s` : `${r}s`;
}

export interface ProgressSink {
  write(s: string): void;
  isTTY?: boolean;
}

export class Progress {
  private done = 0;
  private doneWork = 0;
  private readonly t0 = performance.now();
  private lastLineAt = 0;
  private lastDecile = -1;
  private timer: NodeJS.Timeout | null = null;

  /** `totalWork` weighs requests (e.g. by tokens) for the ETA; defaults to one unit each. */
  constructor(
    private readonly label: string,
    private readonly total: number,
    private readonly sink: ProgressSink,
    private readonly totalWork = total,
  ) {
    // Redraw once a second on a terminal so the elapsed time moves even between requests.
    if (sink.isTTY) {
      this.timer = setInterval(() => this.draw(), 1000);
      this.timer.unref();
    }
    this.draw();
  }

  get elapsedMs(): number {
    return performance.now() - this.t0;
  }

  tick(work = 1): void {
    this.done++;
    this.doneWork += work;
    this.draw();
  }

  /** Ends the bar (a final line) and stops redrawing. */
  finish(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.sink.isTTY) this.sink.write(`\r${this.line()}\n`);
    else if (this.lastDecile < 10) this.sink.write(`${this.line()}\n`);
  }

  private line(): string {
    const frac = this.total > 0 ? this.done / this.total : 1;
    const width = 24;
    const filled = Math.round(frac * width);
    const elapsed = this.elapsedMs;
    const workFrac = this.totalWork > 0 ? this.doneWork / this.totalWork : 1;
    const eta = workFrac > 0 ? (elapsed * (1 - workFrac)) / workFrac : NaN;
    return (
      `${this.label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${this.done}/${this.total} requests` +
      `  elapsed ${formatDuration(elapsed)}  ETA ${this.done === this.total ? '0s' : this.done === 0 ? '?' : formatDuration(eta)}`
    );
  }

  private draw(): void {
    if (this.sink.isTTY) {
      this.sink.write(`\r${this.line()}\x1b[K`);
      return;
    }
    const decile = this.total > 0 ? Math.floor((10 * this.done) / this.total) : 10;
    const now = performance.now();
    if (decile > this.lastDecile || now - this.lastLineAt > 30_000) {
      this.lastDecile = decile;
      this.lastLineAt = now;
      this.sink.write(`${this.line()}\n`);
    }
  }
}
