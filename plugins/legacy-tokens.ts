import fp from 'fastify-plugin'
import type { Config } from '../src/config.js'
import { LegacyTokens } from '../src/legacy.js'

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
