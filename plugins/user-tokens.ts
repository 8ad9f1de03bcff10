// End users authenticated by their own Rotor access token, for the routes where a user acts on
// their own sessions. The token is verified by @fastify/jwt (`request.jwtVerify()`): the stack
// names it, and here, a route authenticating its caller by a bearer JWT, is where it fits. Its
// one-secret API is met by a secret *function* that looks the token's `kid` up in Rotor's keyring
// (the same lookup, keys and checks as every other route), so key rotation and the keys file's
// reloads apply here unchanged.
import fp from 'fastify-plugin'
import fastifyJwt from '@fastify/jwt'
import type { FastifyRequest } from 'fastify'
import { ALGORITHMS } from './config.js'
import { TokenRejectedError } from './errors.js'
import { MAX_TOKEN_LENGTH, type Payload } from './keyring.js'

declare module '@fastify/jwt' {
  interface FastifyJWT {
    payload: Payload
    user: Payload
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    /**
     * A preParsing hook: 401 (`token_invalid`, `token_expired`) unless the request carries a
     * valid access token of Rotor's as `Authorization: Bearer`; sets `request.user` to its claims.
     * Revocation is the caller's to check (it needs the store).
     */
    authenticateUser: (request: FastifyRequest) => Promise<void>
  }
}

const BEARER = /^Bearer +([\w-]+\.[\w-]+\.[\w-]+)$/i

/** A refusal of @fastify/jwt (or of fast-jwt beneath it) as the contract's code; never the token. */
function refusalOf (error: unknown): TokenRejectedError {
  if (error instanceof TokenRejectedError) return error
  const { code } = error as { code?: string }
  // Rotor sets no nbf, and the secret function refused an algorithm the key does not have.
  if (code === 'FST_JWT_AUTHORIZATION_TOKEN_EXPIRED') return new TokenRejectedError('token_expired', 'the access token has expired')
  return new TokenRejectedError('token_invalid', 'the access token is not valid (bad signature, issuer, audience or type)')
}

export default fp(async function userTokensPlugin (app) {
  const { keyring } = app
  await app.register(fastifyJwt, {
    secret: async (_request: FastifyRequest, token: unknown) => {
      const { header } = token as { header: Payload }
      const key = keyring.accessKey(header['kid'])
      if (key === undefined) throw new TokenRejectedError('token_invalid', 'the token names no access-token key of this service')
      // fast-jwt also refuses an algorithm the key cannot have; this says so before it tries.
      if (header['alg'] !== key.algorithm) throw new TokenRejectedError('token_invalid', 'algorithm not allowed')
      return key.verifyingKey
    },
    decode: { complete: true },
    verify: { algorithms: [...ALGORITHMS], ...keyring.accessChecks }
  })

  app.decorate('authenticateUser', async function authenticateUser (request: FastifyRequest) {
    const header = request.headers.authorization
    if (header === undefined) throw new TokenRejectedError('token_invalid', 'an access token is required: Authorization: Bearer <access token>')
    if (header.length > MAX_TOKEN_LENGTH + 16 || !BEARER.test(header)) {
      throw new TokenRejectedError('token_invalid', 'the Authorization header must be Bearer and a compact JWS')
    }
    let payload: Payload
    try {
      payload = await request.jwtVerify<Payload>()
    } catch (error) {
      throw refusalOf(error)
    }
    const refused = keyring.refusalOf(payload, 'access')
    if (refused !== null) throw refused
  })
}, { name: 'user-tokens', dependencies: ['keyring'], fastify: '5.x' })
