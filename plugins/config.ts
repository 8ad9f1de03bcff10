// The settings' shape (src/config.ts reads them from the environment), and the plugin that hands
// them to every other plugin and route.
import fp from 'fastify-plugin'

export const ALGORITHMS = ['EdDSA', 'ES256', 'RS256', 'HS256'] as const
export type Algorithm = typeof ALGORITHMS[number]

export interface HostPort { host: string, port: number }

export type RedisSetting =
  | { kind: 'memory' }
  | { kind: 'single', url: string }
  | { kind: 'cluster', nodes: HostPort[] }
  | { kind: 'sentinel', sentinels: HostPort[], name: string }

/** What an API key may do; a key given no scopes may do all of it. */
export const SCOPES = ['issue', 'introspect', 'revoke', 'sessions'] as const
export type Scope = typeof SCOPES[number]

/** An entry of API_KEYS: `secret`, `name:secret` or `name:secret:scope+scope`. */
export interface ApiKey {
  /** Who calls: in logs, metrics, rate-limit keys, the `client_id` of OAuth and of the tokens it issues. A bare secret's is `key-<12 hex digits of its SHA-256>`. */
  name: string
  secret: string
  scopes: Scope[]
}

/** Every setting of the contract, parsed and checked. Durations are in seconds. */
export interface Config {
  port: number
  host: string
  /** The ops listener (/metrics, /health/*), or null: everything on `port`. */
  managementPort: number | null
  managementHost: string
  /** Processes serving requests (node:cluster); 1: this process alone. */
  workers: number
  logLevel: string
  isProduction: boolean
  redis: RedisSetting
  redisKeyPrefix: string
  /** After every denylist write, wait for this many replicas to confirm it (Redis WAIT); 0: do not wait. */
  redisWaitReplicas: number
  redisWaitTimeoutMs: number
  denylistEnabled: boolean
  rotateRefreshTokens: boolean
  accessTokenTtl: number
  refreshTokenTtl: number
  sessionMaxTtl: number | null
  refreshReuseGrace: number
  reuseDetection: 'enforce' | 'log'
  leeway: number
  jwtAlgorithm: Algorithm
  jwtKeysFile: string | null
  jwtActiveKid: string | null
  jwtSecret: string | null
  jwtIssuer: string
  jwtAudience: string[]
  /** `rfc9068`: access tokens carry `client_id` and `aud` (RFC 9068's JWT profile); null: Rotor's own, SimpleJWT-compatible. */
  accessTokenProfile: 'rfc9068' | null
  apiKeys: ApiKey[]
  /** API_KEYS_FILE: where `apiKeys` were read from, read again on change and on SIGHUP; null: API_KEYS. */
  apiKeysFile: string | null
  /** Set when no API_KEYS were given outside production: the one key generated at start. */
  generatedApiKey: string | null
  corsOrigins: string[]
  rateLimitMax: number
  rateLimitWindow: number
  trustProxy: string[] | null
  rateLimitAllow: string[]
  compatSimpleJwt: boolean
  legacySimpleJwtSigningKey: string | null
  /** When Redis lost its data: refuse refresh tokens minted before, or accept them. */
  storeLoss: 'refuse' | 'accept'
  /** A subject's live sessions at most: issuing one more ends its oldest. */
  maxSessionsPerSubject: number
  /** How old a DPoP proof's `iat` may be (s), LEEWAY beside. */
  dpopProofMaxAge: number
  /** DPoP proofs must carry a current server nonce (RFC 9449 §8). */
  dpopNonces: boolean
}

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
  }
}

/** The parsed settings, for every plugin and route; nothing below reads process.env. */
export default fp(async function configPlugin (app, opts: { config: Config }) {
  app.decorate('config', opts.config)
}, { name: 'config', fastify: '5.x' })
