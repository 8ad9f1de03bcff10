/**
 * A subject's revocation mark as microseconds. Marks written before Rotor 0.2 hold seconds (every
 * session issued up to the end of that second was revoked): read as the last microsecond of it.
 */
export function revokedUntilUs (mark: number): number {
  return mark < 1e11 ? (mark + 1) * 1_000_000 - 1 : mark
}
