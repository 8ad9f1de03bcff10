/**
 * The naive refresh service Rotor is measured against (issue #18): what a team writes in an
 * afternoon with the same parts. Fastify without a logger, @fastify/jwt with its signers built
 * once at registration, ioredis, and per refresh: verify, `EXISTS` the jti, `SET ... EX` it, sign
 * two tokens. No rate limit, no reuse detection, no grace window, no session, no metrics, no
 * atomicity (two concurrent refreshes of one token can both pass EXISTS).
 *
 * Two shapes of it (`NAIVE_REFRESH_KEY`):
 * - `refresh` (the default, the scenarios `naive` and `naive-hs256`): refresh tokens are HS256 with
 *   Rotor's refresh key, as Rotor's are (a second @fastify/jwt namespace), so it takes the same
 *   pre-minted tokens as Rotor and differs from it only in what it does per refresh;
 * - `access` (the scenario `naive-one-key`): @fastify/jwt's one secret, as the issue describes the
 *   service: both tokens signed, and the refresh token verified, with the access-token algorithm
 *   and key (an Ed25519 verification and two signatures per refresh with EdDSA). It takes tokens
 *   of its own (bench/tokens.ts, `Minter.oneKeyRefreshBodies`).
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

/** Which key signs and verifies the naive service's refresh tokens (see above). */
type NaiveRefreshKey = 'refresh' | 'access'

function naiveRefreshKey (env: Record<string, string | undefined>): NaiveRefreshKey {
  const value = env.NAIVE_REFRESH_KEY ?? 'refresh'
  if (value !== 'refresh' && value !== 'access') throw new Error(`NAIVE_REFRESH_KEY must be refresh or access, not ${value}`)
  return value
}

export async function buildNaive (env: Record<string, string | undefined>): Promise<FastifyInstance> {
  const config = loadConfig(env)
  const oneKey = naiveRefreshKey(env) === 'access'
  const { active } = loadKeyMaterial(config)
  if (config.redis.kind !== 'single') throw new Error('the naive service takes REDIS_URL only')
  const redis = new Redis(config.redis.url)
  const prefix = config.redisKeyPrefix
  const app = Fastify({ logger: false })
  // @fastify/jwt's secret for the access-token key: the key pair, or the shared secret.
  const accessSecret = typeof active.signingKey === 'string' ? { private: active.signingKey, public: active.verifyingKey } : active.signingKey
  await app.register(fastifyJwt, {
    secret: accessSecret,
    sign: { algorithm: active.algorithm, expiresIn: config.accessTokenTtl, iss: config.jwtIssuer }
  })
  await app.register(fastifyJwt, {
    namespace: 'refresh',
    ...(oneKey
      ? {
          secret: accessSecret,
          sign: { algorithm: active.algorithm, expiresIn: config.refreshTokenTtl, iss: config.jwtIssuer },
          verify: { algorithms: [active.algorithm] }
        }
      : {
          secret: active.refreshKey,
          sign: { algorithm: 'HS256', expiresIn: config.refreshTokenTtl, iss: config.jwtIssuer },
          verify: { algorithms: ['HS256'] }
        })
  })
  app.addHook('onClose', async () => { redis.disconnect() })
  app.post<{ Body: { refresh_token: string } }>('/v1/tokens/refresh', async (request, reply) => {
    let claims: RefreshClaims
    try {
      claims = (app.jwt as unknown as { refresh: { verify: (token: string) => RefreshClaims } }).refresh.verify(request.body.refresh_token)
    } catch {
      return await reply.code(401).send({ code: 'token_invalid' })
    }
    // With one key, an access token would verify as a refresh token too.
    if (claims.token_type !== 'refresh') return await reply.code(401).send({ code: 'token_invalid' })
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
