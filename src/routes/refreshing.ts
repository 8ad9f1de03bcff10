import type { FastifyRequest } from 'fastify'
import { contextOf } from '../context.js'
import { tokenHeader } from '../../plugins/keyring.js'
import { isLegacyHeader } from '../../plugins/legacy-tokens.js'
import { exchangeLegacy } from '../legacy.js'
import { refresh, type Refreshed } from '../rotation.js'

/** A refresh as both refresh routes answer it: rotated (or a legacy token exchanged), counted, logged once. */
export async function refreshFor (request: FastifyRequest, presented: string): Promise<Refreshed> {
  const ctx = contextOf(request)
  // The header is read once: it says whether this is a SimpleJWT token to exchange (while the
  // migration's key is set), and the keyring picks Rotor's verifier by its kid.
  const header = tokenHeader(presented)
  const { legacyTokens } = request.server
  const result = legacyTokens !== null && isLegacyHeader(header)
    ? await exchangeLegacy(ctx, legacyTokens.read(presented))
    : await refresh(ctx, presented, Date.now(), header)
  request.server.metrics.refreshed.inc({ retry: String(result.isRetry) })
  request.log.info({
    event: 'token.refreshed', sub: result.session.sub, sid: result.session.sid, jti: result.refreshJti, previous_jti: result.previousJti, retry: result.isRetry
  }, 'pair refreshed')
  return result
}
