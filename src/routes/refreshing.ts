import type { FastifyRequest } from 'fastify'
import { contextOf } from '../context.js'
import { refreshOrExchange } from '../legacy.js'
import type { Refreshed } from '../rotation.js'

/** A refresh as both refresh routes answer it: rotated (or a legacy token exchanged), counted, logged once. */
export async function refreshFor (request: FastifyRequest, presented: unknown): Promise<Refreshed> {
  const result = await refreshOrExchange(contextOf(request), request.server.legacyTokens, presented)
  request.server.metrics.refreshed.inc({ retry: String(result.isRetry) })
  request.log.info({
    event: 'token.refreshed', sub: result.session.sub, sid: result.session.sid, jti: result.refreshJti, previous_jti: result.previousJti, retry: result.isRetry
  }, 'pair refreshed')
  return result
}
