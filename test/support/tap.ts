// The part of tap's test object the support modules use, so that they need not import tap.

/** The tap test object, as much of it as the helpers use. */
export interface Test {
  teardown: (fn: () => unknown) => void
}

/** The assertions the shared checks make. */
export interface Assertions {
  // Method syntax: tap's own signatures take more than these, and methods compare bivariantly.
  same (found: unknown, wanted: unknown, message: string): unknown
  equal (found: unknown, wanted: unknown, message: string): unknown
  ok (found: unknown, message: string): unknown
}
