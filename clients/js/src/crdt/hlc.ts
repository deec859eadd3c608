/** The hybrid logical clock of crdt/hlc.py: timestamps that follow physical time, never backwards. */

import { cmpStr } from "./compact.js";

export const DEFAULT_MAX_DRIFT_MS = 60_000;

export interface Timestamp {
  readonly wallMs: number;
  readonly logical: number;
  readonly replica: string;
}

export function cmpTimestamp(a: Timestamp, b: Timestamp): number {
  return a.wallMs - b.wallMs || a.logical - b.logical || cmpStr(a.replica, b.replica);
}

export class HybridClock {
  last: Timestamp;

  constructor(
    readonly replica: string,
    private readonly physicalMs: () => number = () => Date.now(),
    readonly maxDriftMs = DEFAULT_MAX_DRIFT_MS,
  ) {
    this.last = { wallMs: 0, logical: 0, replica };
  }

  /** A timestamp for a local write, later than every timestamp this clock issued or observed. */
  now(): Timestamp {
    const wall = Math.max(this.physicalMs(), this.last.wallMs);
    const logical = wall === this.last.wallMs ? this.last.logical + 1 : 0;
    this.last = { wallMs: wall, logical, replica: this.replica };
    return this.last;
  }

  clamp(remote: Timestamp): Timestamp {
    const bound = this.physicalMs() + this.maxDriftMs;
    return remote.wallMs <= bound ? remote : { wallMs: bound, logical: remote.logical, replica: remote.replica };
  }

  /** Take a received timestamp into account (after clamping it); return the clamped one. */
  observe(remote: Timestamp): Timestamp {
    const clamped = this.clamp(remote);
    if (clamped.wallMs > this.last.wallMs || (clamped.wallMs === this.last.wallMs && clamped.logical > this.last.logical)) {
      this.last = { wallMs: clamped.wallMs, logical: clamped.logical, replica: this.replica };
    }
    return clamped;
  }
}
