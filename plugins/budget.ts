import type { BudgetCount, BudgetRef } from './store/types.js'

/**
 * A request's rate-limit budget whose count rides on the request's rotation (plugins/rate-limit.ts):
 * one round trip to Redis for both. `pending` until counted, by the rotation's script (`counted`,
 * with what it answered) or, when the request ends any other way (refused before its rotation, a
 * body that does not parse, a legacy token's exchange), on its own (`spend`). Counted either way,
 * exactly once, before the answer leaves.
 */
export interface DeferredBudget extends BudgetRef {
  pending: boolean
  /** The count, once there is one: its headers go on the answer (limitHeaders). */
  count: BudgetCount | null
  /** Takes the count the rotation's script answered (the request is no longer pending). */
  counted(count: BudgetCount): void
  /** The 429 for a count over the limit, its headers with it. */
  exceeded(): Error
  /** Counts the request on its own (while pending only); over the limit, rejects with the 429. Redis failing, lets it through (as the plugin does). */
  spend(): Promise<void>
}

declare module 'fastify' {
  interface FastifyRequest {
    /** Set by the rate limit for a request it left to the rotation to count; null otherwise. */
    budget: DeferredBudget | null
  }
}

/** The headers @fastify/rate-limit puts on an answer within the limit, and on the 429 (with Retry-After). */
export function limitHeaders (max: number, count: BudgetCount): Record<string, string> {
  const reset = String(Math.ceil(count.ttlMs / 1000))
  if (count.current > max) return { 'x-ratelimit-limit': String(max), 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': reset, 'retry-after': reset }
  return { 'x-ratelimit-limit': String(max), 'x-ratelimit-remaining': String(Math.max(0, max - count.current)), 'x-ratelimit-reset': reset }
}
