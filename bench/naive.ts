/**
 * The naive refresh service Rotor is measured against (issue #18): what a team writes in an
 * afternoon with the same parts. Fastify without a logger, @fastify/jwt with its signers built
 * once at registration (one namespace for access tokens, the configured algorithm and key; one for
 * refresh tokens, HS256 with Rotor's refresh key, so it takes the bench's pre-minted tokens),
 * ioredis, and per refresh: verify, `EXISTS` the jti, `SET ... EX` it, sign two tokens. No rate
 * limit, no reuse detection, no grace window, no session, no metrics, no atomicity (two
 * concurrent refreshes of one token can both pass EXISTS).
 *
 * Its denylist key is Rotor's rotated-token key (`<prefix>{<sub>}:j:<jti>`), so the bench counts its
 * rotations as it counts Rotor's.
 */
import { randomBytes } from 'node:crypto'
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyJwt from '@fastify/jwt'
import { Redis } from 'ioredis'
import { loadConfig } from '../src/config.js'
import { loadKeyMaterial } from '../plugins/key-material.js'

interface RefreshClaims { sub: string, sid: string, jti: string, exp: number, auth_time: number, [claim: string]: unknown }

export async function buildNaive (env: Record<string, string | undefined>): Promise<FastifyInstance> {
  const config = loadConfig(env)
  const { active } = loadKeyMaterial(config)
  if (config.redis.kind !== 'single') throw new Error('the naive service takes REDIS_URL only')
  const redis = new Redis(config.redis.url)
  const prefix = config.redisKeyPrefix
  const app = Fastify({ logger: false })
  const asymmetric = typeof active.signingKey === 'string'
  await app.register(fastifyJwt, {
    secret: asymmetric ? { private: active.signingKey, public: active.verifyingKey } : active.signingKey,
    sign: { algorithm: active.algorithm, expiresIn: config.accessTokenTtl, iss: config.jwtIssuer }
  })
  await app.register(fastifyJwt, {
    namespace: 'refresh',
    secret: active.refreshKey,
    sign: { algorithm: 'HS256', expiresIn: config.refreshTokenTtl, iss: config.jwtIssuer },
    verify: { algorithms: ['HS256'] }
  })
  app.addHook('onClose', async () => { redis.disconnect() })
  app.post<{ Body: { refresh_token: string } }>('/v1/tokens/refresh', async (request, reply) => {
    let claims: RefreshClaims
    try {
      claims = (app.jwt as unknown as { refresh: { verify: (token: string) => RefreshClaims } }).refresh.verify(request.body.refresh_token)
    } catch {
      return await reply.code(401).send({ code: 'token_invalid' })
    }
    const key = `${prefix}{${claims.sub}}:j:${claims.jti}`
    if (await redis.exists(key) === 1) return await reply.code(401).send({ code: 'token_reused' })
    await redis.set(key, '1', 'EX', Math.max(1, claims.exp - Math.floor(Date.now() / 1000)))
    const { sub, sid, auth_time: authTime } = claims
    const jti = randomBytes(16).toString('base64url')
    return {
      access_token: app.jwt.sign({ sub, sid, auth_time: authTime, token_type: 'access', jti: randomBytes(16).toString('base64url') }),
      refresh_token: (app.jwt as unknown as { refresh: { sign: (payload: object) => string } }).refresh.sign({ sub, sid, auth_time: authTime, token_type: 'refresh', jti }),
      token_type: 'Bearer',
      expires_in: config.accessTokenTtl,
      refresh_expires_in: config.refreshTokenTtl
    }
  })
  return app
}
