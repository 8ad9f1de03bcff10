import { createVerifier, TokenError } from 'fast-jwt'
import fp from 'fastify-plugin'
import type { Config } from './config.js'
import { TokenRejectedError } from './errors.js'
import type { Payload } from './keyring.js'

/** What Rotor reads of a refresh token minted by djangorestframework-simplejwt. */
export interface LegacyRefreshToken {
  sub: string
  jti: string
  exp: number
}

/**
 * Refresh tokens of the old Django service (SimpleJWT: HS256 under Django's signing key,
 * `token_type: refresh`, `user_id`, a header with no `kid`), accepted once each so that moving
 * to Rotor logs nobody out.
 */
export class LegacyTokens {
  private readonly verifier: (token: string) => Record<string, unknown>

  constructor (signingKey: string, leeway: number) {
    this.verifier = createVerifier({
      key: signingKey,
      algorithms: ['HS256'],
      clockTolerance: leeway * 1000,
      requiredClaims: ['token_type', 'exp', 'jti', 'user_id']
    })
  }

  /**
   * The claims of a token whose header says it is SimpleJWT's (see {@link isLegacyHeader});
   * throws TokenRejectedError when it does not verify.
   */
  read (token: string): LegacyRefreshToken {
    let payload: Record<string, unknown>
    try {
      payload = this.verifier(token)
    } catch (error) {
      if ((error as TokenError).code === TokenError.codes.expired) throw new TokenRejectedError('token_expired', 'the token has expired')
      throw new TokenRejectedError('token_invalid', 'not a valid token')
    }
    const userId = payload['user_id']
    if (payload['token_type'] !== 'refresh' || (typeof userId !== 'string' && typeof userId !== 'number') || typeof payload['jti'] !== 'string') {
      throw new TokenRejectedError('token_invalid', 'not a SimpleJWT refresh token')
    }
    return { sub: String(userId), jti: payload['jti'], exp: payload['exp'] as number }
  }
}

/** Rotor's own tokens carry a `kid`; SimpleJWT's never do. */
export function isLegacyHeader (header: Payload | null): boolean {
  return header !== null && !('kid' in header)
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The SimpleJWT migration's verifier, or null when LEGACY_SIMPLEJWT_SIGNING_KEY is unset. */
    legacyTokens: LegacyTokens | null
  }
}

export default fp(async function legacyTokensPlugin (app, opts: { config: Config }) {
  const { legacySimpleJwtSigningKey, leeway } = opts.config
  app.decorate<LegacyTokens | null>('legacyTokens', legacySimpleJwtSigningKey === null ? null : new LegacyTokens(legacySimpleJwtSigningKey, leeway))
}, { name: 'legacy-tokens', fastify: '5.x' })
