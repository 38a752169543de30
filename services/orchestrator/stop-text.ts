// Streaming text with stop strings: what may be sent now, what must wait.
// Text that could still become a stop string, or an incomplete UTF-8
// character (decoded as U+FFFD), is held back until the next token decides.

export interface StopCheck {
  /** Text to send now. */
  emit: string;
  /** A stop string ended the generation (the text before it has been emitted). */
  stopped: boolean;
}

export class StopText {
  private sent = 0; // characters of the decoded text already emitted

  constructor(private readonly stops: readonly string[]) {}

  /** `full`: the whole generated text so far. */
  next(full: string): StopCheck {
    for (const s of this.stops) {
      const at = full.indexOf(s, Math.max(0, this.sent - s.length + 1));
      if (at >= 0) {
        const emit = full.slice(this.sent, Math.max(this.sent, at));
        this.sent = full.length;
        return { emit, stopped: true };
      }
    }
    let hold = 0;
    while (hold < full.length && full[full.length - 1 - hold] === '\uFFFD') hold++;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, full.length); k > hold; k--) {
        if (full.endsWith(s.slice(0, k))) {
          hold = k;
          break;
        }
      }
    }
    const upto = Math.max(this.sent, full.length - hold);
    const emit = full.slice(this.sent, upto);
    this.sent = upto;
    return { emit, stopped: false };
  }

  /** Whatever was held back, at the end of the generation. */
  flush(full: string): string {
    const rest = full.slice(this.sent).replace(/\uFFFD+$/, '');
    this.sent = full.length;
    return rest;
  }
}
