// Waiting in a test for what happens asynchronously.

/** Polls until `check` holds (or throws past the deadline): for states reached asynchronously. */
export async function until (what: string, check: () => Promise<boolean>, withinMs = 10_000): Promise<void> {
  const deadline = Date.now() + withinMs
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}
