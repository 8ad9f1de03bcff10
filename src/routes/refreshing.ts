import type { FastifyRequest } from 'fastify'
import { contextOf } from '../context.js'
import { tokenHeader } from '../../plugins/keyring.js'
import { isLegacyHeader } from '../../plugins/legacy-tokens.js'
import { exchangeLegacy } from '../legacy.js'
import { refresh, type Refreshed } from '../rotation.js'
import type { Metrics } from '../../plugins/metrics.js'
import type { Evicted } from '../../plugins/store/index.js'

/** Counts what listing a session did: the sessions the cap ended, or a session the index did not take. */
export function countListing (metrics: Metrics, evicted: Evicted | null): void {
  if (evicted === null) metrics.sessionsUnlisted.inc()
  else if (evicted.length > 0) metrics.sessionsRevoked.inc({ reason: 'limit' }, evicted.length)
}

/** A refresh as both refresh routes answer it: rotated (or a legacy token exchanged), counted, logged once. */
export async function refreshFor (request: FastifyRequest, presented: string): Promise<Refreshed> {
  const ctx = contextOf(request)
  // Only while the migration's key is set does the header decide between exchange and refresh;
  // it is then read once, here, and handed to the keyring (which otherwise reads it itself).
  const { legacyTokens } = request.server
  const header = legacyTokens === null ? undefined : tokenHeader(presented)
  const result = legacyTokens !== null && isLegacyHeader(header ?? null)
    ? await exchangeLegacy(ctx, legacyTokens.read(presented))
    : await refresh(ctx, presented, Date.now(), header)
  const { metrics } = request.server
  metrics.refreshed.inc({ retry: String(result.isRetry) })
  countListing(metrics, result.evicted)
  request.log.info({
    event: 'token.refreshed', sub: result.session.sub, sid: result.session.sid, jti: result.refreshJti, previous_jti: result.previousJti, retry: result.isRetry
  }, 'pair refreshed')
  return result
}
