/** Stream positions "epoch:offset" (docs/protocol.md, Positions). */

export interface Position {
  epoch: string;
  offset: number;
}

export function parsePosition(text: string | null | undefined): Position | null {
  if (!text) return null;
  const i = text.lastIndexOf(":");
  if (i < 0) return null;
  const offset = Number(text.slice(i + 1));
  return Number.isInteger(offset) ? { epoch: text.slice(0, i), offset } : null;
}

/** Whether `position` is past `last` (a position of another epoch counts as new: the hub resyncs those). */
export function isAfter(position: string | null | undefined, last: string | null | undefined): boolean {
  const p = parsePosition(position);
  const l = parsePosition(last);
  if (p === null || l === null || p.epoch !== l.epoch) return true;
  return p.offset > l.offset;
}

/** The earliest of positions of one stream (null when none is known). */
export function earliest(positions: (string | null)[]): string | null {
  let best: string | null = null;
  for (const p of positions) {
    if (p === null) continue;
    if (best === null || !isAfter(p, best)) best = p;
  }
  return best;
}
