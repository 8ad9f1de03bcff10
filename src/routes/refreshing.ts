import type { FastifyReply, FastifyRequest } from 'fastify'
import { contextOf } from '../context.js'
import { tokenHeader } from '../../plugins/keyring.js'
import { isLegacyHeader } from '../../plugins/legacy-tokens.js'
import { exchangeLegacy } from '../legacy.js'
import { refresh, type Refreshed } from '../rotation.js'
import type { Metrics } from '../../plugins/metrics.js'
import type { Evicted } from '../../plugins/store/index.js'
import { currentNonce, requestUrl, type ProofRequest } from '../dpop.js'
import { issuerUrl } from '../config.js'
import { limitHeaders } from '../../plugins/budget.js'

/** Counts what listing a session did: the sessions the cap ended, or a session the index did not take. */
export function countListing (metrics: Metrics, evicted: Evicted | null): void {
  if (evicted === null) metrics.sessionsUnlisted.inc()
  else if (evicted.length > 0) metrics.sessionsRevoked.inc({ reason: 'limit' }, evicted.length)
}

/** Every `DPoP` header of a request (Node joins repeated ones into one value: the raw headers tell them apart). */
function proofsOf (request: FastifyRequest): string[] {
  const raw = request.raw.rawHeaders
  const proofs: string[] = []
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if ((raw[i] as string).toLowerCase() === 'dpop') proofs.push(raw[i + 1] as string)
  }
  return proofs
}

/** What a bound session's DPoP proof must match in this request; `htu` from the issuer when it is a URL. */
function proofRequestOf (request: FastifyRequest): ProofRequest {
  return { proofs: proofsOf(request), method: request.method, url: requestUrl(issuerUrl(request.server.config.jwtIssuer), request) }
}

/**
 * A refresh as every refresh route answers it: rotated (or a legacy token exchanged), counted,
 * logged once. A session bound to a DPoP key needs the request's proof; with DPOP_NONCES every
 * answer to a bound refresh carries the next nonce (`DPoP-Nonce`), so clients keep up without a
 * refusal.
 */
export async function refreshFor (request: FastifyRequest, reply: FastifyReply, presented: string): Promise<Refreshed> {
  const ctx = contextOf(request)
  // Only while the migration's key is set does the header decide between exchange and refresh;
  // it is then read once, here, and handed to the keyring (which otherwise reads it itself).
  const { legacyTokens } = request.server
  const header = legacyTokens === null ? undefined : tokenHeader(presented)
  const { budget } = request
  let result: Refreshed
  if (legacyTokens !== null && isLegacyHeader(header ?? null)) {
    // An exchange writes no rotation to count the request with: it is counted first.
    await budget?.spend()
    result = await exchangeLegacy(ctx, legacyTokens.read(presented))
  } else {
    result = await refresh(ctx, presented, Date.now(), header, () => proofRequestOf(request), budget)
  }
  if (budget !== null && budget.count !== null) reply.headers(limitHeaders(budget.max, budget.count))
  const { metrics, config, keyring } = request.server
  if (config.dpopNonces && result.session.jkt !== undefined) reply.header('dpop-nonce', currentNonce(keyring, config, Date.now()))
  metrics.refreshed.inc({ retry: String(result.isRetry) })
  countListing(metrics, result.evicted)
  request.log.info({
    event: 'token.refreshed', sub: result.session.sub, sid: result.session.sid, jti: result.refreshJti, previous_jti: result.previousJti, retry: result.isRetry
  }, 'pair refreshed')
  return result
}
