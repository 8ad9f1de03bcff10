import { AppError, TokenRejectedError, TokenReusedError } from '../plugins/errors.js'
import type { Payload } from '../plugins/keyring.js'
import { remainingLifeMs, sessionRevocationTtlMs, type TokenContext } from './context.js'
import { mintAccessToken, mintPair, mintRefreshToken, pairResponse, randomId, sessionOf, type Session, type TokenPair } from './minting.js'
import { entryOf, recordSession, reportEvicted } from './sessions.js'
import type { Evicted } from '../plugins/store/index.js'
import { checkProof, type ProofRequest } from './dpop.js'
import type { DeferredBudget } from '../plugins/budget.js'

/** A request without DPoP: what callers that have no request (tests, tools) refresh with. */
const NO_PROOF = (): ProofRequest => ({ proofs: [], method: 'POST', url: '' })

function replayed (): AppError {
  return new AppError('invalid_dpop_proof', 'this DPoP proof was used before: sign a new one for each request')
}

export interface Refreshed {
  pair: TokenPair
  session: Session
  /** The jti of the refresh token presented, and of the one answered (the same when not rotating). */
  previousJti: string
  refreshJti: string
  /** A retry within the grace window: the answer repeats the first rotation's pair. */
  isRetry: boolean
  /** Sessions of the subject the cap ended as this one was listed again; null: the index did not answer. */
  evicted: Evicted | null
}

/**
 * Refreshes a pair. With the denylist on, the old jti is recorded and the successor's ids are
 * derived from it (HMAC with a key only Rotor holds), and its `iat` is the recorded rotation
 * time: a retry within the grace window re-derives the very same pair, so however many tabs
 * refresh at once, one refresh token lives on.
 *
 * @param ctx - the keyring, the store, the settings and the request's logger
 * @param presented - the refresh token as the client sent it (anything: it is verified here)
 * @param nowMs - the time of the request, in ms (tests pass their own)
 * @param header - the token's JOSE header when the caller has read it already (see `tokenHeader`)
 * @param proof - reads the request's DPoP proofs, method and URL, for a session bound to a key only (none given: a request without)
 * @param budget - the request's rate-limit budget, when the rate limit left it to the rotation to count (see DeferredBudget)
 * @returns the new pair (or, for a retry within the grace window, the same one again), its session and the jtis
 * @throws TokenRejectedError `token_invalid`, `token_expired`, `token_revoked`, or `TokenReusedError` for a reuse
 * @throws AppError `invalid_dpop_proof` or `use_dpop_nonce` for a bound session's proof (see checkProof), also a proof used before
 * @throws AppError `rate_limited` when the rotation counted `budget` over its limit (nothing else was done)
 * @throws StoreUnavailableError when the store cannot be reached (answered 503; the token stays good)
 *
 * @example
 * const { pair, isRetry } = await refresh(contextOf(request), body.refresh_token)
 * reply.send(pair) // { access_token, refresh_token, token_type, expires_in, refresh_expires_in }
 */
export async function refresh (
  ctx: TokenContext, presented: unknown, nowMs = Date.now(), header?: Payload | null, proof: () => ProofRequest = NO_PROOF, budget: DeferredBudget | null = null
): Promise<Refreshed> {
  const { keyring, denylist, config } = ctx
  const { payload, key } = keyring.verify(presented, 'refresh', nowMs, header)
  const session = sessionOf(payload)
  const previousJti = payload['jti'] as string
  const nowSec = Math.floor(nowMs / 1000)
  const token = { sub: session.sub, sid: session.sid, jti: previousJti }
  if (config.denylistEnabled && config.storeLoss === 'refuse' && (payload['iat'] as number) < Math.floor(denylist.epoch() / 1000)) {
    // The store lost what it knew of this token (its rotations, its session's revocation) after it was minted.
    throw new TokenRejectedError('token_revoked', 'the token store lost its data after this token was minted; sign in again', token)
  }
  // A bound session's proof is checked before the store is asked anything; its replay record is
  // written with the rotation (or, not rotating, on its own), and only with the denylist on.
  const proven = session.jkt === undefined ? undefined : checkProof(keyring, config, proof(), session.jkt, nowMs)

  if (!config.rotateRefreshTokens) {
    if (config.denylistEnabled) {
      const state = await denylist.state({ ...token, issuedUs: session.issuedUs })
      if (state !== 'active') throw new TokenRejectedError('token_revoked', 'the session has been revoked', token)
      if (proven !== undefined && !await denylist.consumeOnce(session.sub, proven.id, proven.ttlMs)) throw replayed()
    }
    const access = mintAccessToken(keyring, config, session, nowSec, randomId())
    const refreshToken = { token: presented as string, exp: payload['exp'] as number }
    const pair = pairResponse(access, refreshToken, nowSec)
    const evicted = await recordSession(ctx, { ...entryOf(ctx, session, nowSec), expiresAt: refreshToken.exp }, session.sub, nowMs)
    return { pair, session, previousJti, refreshJti: previousJti, isRetry: false, evicted }
  }

  if (!config.denylistEnabled) {
    const ids = { access: randomId(), refresh: randomId() }
    return { pair: mintPair(keyring, config, session, nowSec, ids, nowSec), session, previousJti, refreshJti: ids.refresh, isRetry: false, evicted: [] }
  }

  const ids = { access: keyring.deriveId(key, 'access', previousJti), refresh: keyring.deriveId(key, 'refresh', previousJti) }
  const outcome = await denylist.rotate({
    sub: session.sub,
    sid: session.sid,
    jti: previousJti,
    issuedUs: session.issuedUs,
    childJti: ids.refresh,
    nowMs,
    ttlMs: remainingLifeMs(config, payload['exp'] as number, nowMs),
    graceMs: config.refreshReuseGrace * 1000,
    enforce: config.reuseDetection === 'enforce',
    sessionTtlMs: sessionRevocationTtlMs(config, session.authTime, nowMs),
    entry: entryOf(ctx, session, nowSec),
    proof: proven,
    budget: budget ?? undefined
  })
  if (outcome.spent !== undefined) budget!.counted(outcome.spent)
  switch (outcome.status) {
    case 'limited':
      throw budget!.exceeded()
    case 'replayed':
      throw replayed()
    case 'revoked':
      throw new TokenRejectedError('token_revoked', 'the session has been revoked', token)
    case 'reused': {
      const enforced = config.reuseDetection === 'enforce'
      ctx.log.warn({ event: 'token.reuse', ...token, enforced }, enforced
        ? 'a rotated refresh token was presented again: its session is revoked'
        : 'a rotated refresh token was presented again (REUSE_DETECTION=log: nothing revoked)')
      throw new TokenReusedError(token, enforced)
    }
    default: {
      // A retry gets the rotation's refresh token again. Its access token too within the window;
      // a later retry (of a rotation answered 503, see the store) gets a fresh one.
      const iat = Math.floor(outcome.rotatedAtMs / 1000)
      const late = nowMs - outcome.rotatedAtMs > config.refreshReuseGrace * 1000
      const pair = pairResponse(
        mintAccessToken(keyring, config, session, late ? nowSec : iat, ids.access), mintRefreshToken(keyring, config, session, iat, ids.refresh), nowSec
      )
      reportEvicted(ctx, session.sub, outcome.evicted)
      return { pair, session, previousJti, refreshJti: ids.refresh, isRetry: outcome.status === 'grace', evicted: outcome.evicted }
    }
  }
}
