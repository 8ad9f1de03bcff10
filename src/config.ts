import { randomBytes } from 'node:crypto'
import { isIP } from 'node:net'
import { ALGORITHMS, SCOPES, type ApiKey, type Config, type HostPort, type RedisSetting } from '../plugins/config.js'
import { nameOfSecret, parseApiKeys, readApiKeysFile } from '../plugins/api-keys.js'
import { ConfigError } from '../plugins/errors.js'
import { loadKeyMaterial } from '../plugins/key-material.js'

export { ALGORITHMS, SCOPES, type Algorithm, type ApiKey, type Config, type HostPort, type RedisSetting, type Scope } from '../plugins/config.js'

// ---------------------------------------------------------------- how a variable's text is read

/** What was wrong with a variable (each message names it), and the value the other checks go on with. */
class Problem<T> {
  readonly messages: string[]
  readonly standIn: T
  constructor (messages: string[], standIn: T) {
    this.messages = messages
    this.standIn = standIn
  }
}

/** One environment variable: its name, and how its text (undefined when unset or blank) becomes a value. */
interface Setting<T> {
  readonly env: string
  readonly parse: (raw: string | undefined) => T | Problem<T>
}

const UNITS: Record<string, number> = { '': 1, s: 1, m: 60, h: 3600, d: 86400 }

/** `90`, `90s`, `15m`, `1h`, `7d` → seconds; null when it is not such a form. */
export function parseDuration (text: string): number | null {
  const match = /^(\d{1,9})([smhd]?)$/.exec(text.trim())
  if (match === null) return null
  // The pattern guarantees both groups, and the unit is one of UNITS.
  return Number(match[1]) * UNITS[String(match[2])]!
}

function text (env: string): Setting<string | null>
function text (env: string, fallback: string): Setting<string>
function text (env: string, fallback: string | null = null): Setting<string | null> {
  return { env, parse: (raw) => raw ?? fallback }
}

function integer (env: string, fallback: number, min: number, max: number): Setting<number> {
  return {
    env,
    parse: (raw) => {
      if (raw === undefined) return fallback
      const value = Number(raw)
      if (!/^\d+$/.test(raw) || value < min || value > max) return new Problem([`${env}=${raw}: expected a whole number from ${min} to ${max}`], fallback)
      return value
    }
  }
}

/** A duration in seconds, at least `min`; its default is written as a user would write it. */
function duration (env: string, fallback: string, min = 0): Setting<number> {
  return {
    env,
    parse: (raw = fallback) => {
      const seconds = parseDuration(raw)
      if (seconds === null || seconds < min) {
        return new Problem([`${env}=${raw}: expected a duration of at least ${min}s, in seconds or with s/m/h/d (e.g. 60, 15m, 7d)`], min)
      }
      return seconds
    }
  }
}

/** The setting when the variable is given, null when it is not. */
function optional<T> (setting: Setting<T>): Setting<T | null> {
  return { env: setting.env, parse: (raw) => raw === undefined ? null : setting.parse(raw) }
}

function boolean (env: string, fallback: boolean): Setting<boolean> {
  return {
    env,
    parse: (raw) => {
      const value = raw?.toLowerCase()
      if (value === undefined) return fallback
      if (['true', '1', 'yes', 'on'].includes(value)) return true
      if (['false', '0', 'no', 'off'].includes(value)) return false
      return new Problem([`${env}=${value}: expected true or false`], fallback)
    }
  }
}

function oneOf<T extends string> (env: string, choices: readonly T[], fallback: T): Setting<T> {
  return {
    env,
    parse: (raw) => {
      if (raw === undefined) return fallback
      return choices.find((choice) => choice === raw) ?? new Problem([`${env}=${raw}: expected one of ${choices.join(', ')}`], fallback)
    }
  }
}

/** A comma-separated list; `fault` says what is wrong with one item (null: nothing). */
function list (env: string, options: { fallback?: string, fault?: (item: string) => string | null } = {}): Setting<string[]> {
  return {
    env,
    parse: (raw = options.fallback) => {
      const items = (raw ?? '').split(',').map((item) => item.trim()).filter((item) => item !== '')
      const faults = items.map((item) => options.fault?.(item) ?? null).filter((fault) => fault !== null)
      return faults.length === 0 ? items : new Problem(faults.map((fault) => `${env}: ${fault}`), items)
    }
  }
}

/** `host:port` items; `[::1]:7000` is an IPv6 address and port (the brackets are not part of the host). */
function hostPorts (env: string): Setting<HostPort[]> {
  return {
    env,
    parse: (raw) => {
      const faults: string[] = []
      const items = (list(env).parse(raw) as string[]).map((item) => {
        const match = /^\[([^\]]+)\]:(\d{1,5})$/.exec(item) ?? /^([^[\]]+):(\d{1,5})$/.exec(item)
        const port = Number(match?.[2])
        if (match === null || port < 1 || port > 65535) {
          faults.push(`${env}: "${item}" is not host:port`)
          return { host: item, port: 0 }
        }
        return { host: String(match[1]), port }
      })
      return faults.length === 0 ? items : new Problem(faults, items)
    }
  }
}

/** API keys: `secret`, `name:secret` or `name:secret:scope+scope` (see parseApiKeys). */
function apiKeys (env: string): Setting<ApiKey[]> {
  return {
    env,
    parse: (raw) => {
      const { keys, faults } = parseApiKeys(list(env).parse(raw) as string[], env)
      return faults.length === 0 ? keys : new Problem(faults, keys)
    }
  }
}

function isAddressOrCidr (item: string): boolean {
  if (['loopback', 'linklocal', 'uniquelocal'].includes(item)) return true
  const [address = '', bits, ...rest] = item.split('/')
  const version = isIP(address)
  if (version === 0 || rest.length > 0) return false
  if (bits === undefined) return true
  return /^\d{1,3}$/.test(bits) && Number(bits) <= (version === 4 ? 32 : 128)
}

// ---------------------------------------------------------------- the settings, one line each

/** Every variable of the contract (and Rotor's own), its default and its form. Rules between them: {@link crossCheck}. */
const SCHEMA = {
  nodeEnv: text('NODE_ENV'),
  port: integer('PORT', 8080, 0, 65535),
  host: text('HOST', '127.0.0.1'),
  workers: integer('WORKERS', 1, 1, 64),
  managementPort: optional(integer('MANAGEMENT_PORT', 0, 1, 65535)),
  managementHost: text('MANAGEMENT_HOST'),
  logLevel: oneOf('LOG_LEVEL', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], 'info'),
  redisUrl: text('REDIS_URL'),
  redisClusterNodes: hostPorts('REDIS_CLUSTER_NODES'),
  redisSentinels: hostPorts('REDIS_SENTINELS'),
  redisSentinelName: text('REDIS_SENTINEL_NAME'),
  redisKeyPrefix: text('REDIS_KEY_PREFIX', 'rotor:'),
  redisWaitReplicas: integer('REDIS_WAIT_REPLICAS', 0, 0, 16),
  // Under the command timeout (1 s), so that a write that waits in vain still answers its 503 in time.
  redisWaitTimeoutMs: integer('REDIS_WAIT_TIMEOUT_MS', 100, 1, 500),
  denylistEnabled: boolean('DENYLIST_ENABLED', true),
  rotateRefreshTokens: boolean('ROTATE_REFRESH_TOKENS', true),
  accessTokenTtl: duration('ACCESS_TOKEN_TTL', '60m', 1),
  refreshTokenTtl: duration('REFRESH_TOKEN_TTL', '7d', 1),
  sessionMaxTtl: optional(duration('SESSION_MAX_TTL', '', 1)),
  refreshReuseGrace: duration('REFRESH_REUSE_GRACE', '10s'),
  reuseDetection: oneOf('REUSE_DETECTION', ['enforce', 'log'], 'enforce'),
  leeway: duration('LEEWAY', '0s'),
  jwtAlgorithm: oneOf('JWT_ALGORITHM', ALGORITHMS, 'EdDSA'),
  jwtKeysFile: text('JWT_KEYS_FILE'),
  jwtActiveKid: text('JWT_ACTIVE_KID'),
  jwtSecret: text('JWT_SECRET'),
  jwtIssuer: text('JWT_ISSUER', 'rotor'),
  jwtAudience: list('JWT_AUDIENCE'),
  accessTokenProfile: optional(oneOf('ACCESS_TOKEN_PROFILE', ['rfc9068'] as const, 'rfc9068')),
  apiKeys: apiKeys('API_KEYS'),
  apiKeysFile: text('API_KEYS_FILE'),
  corsOrigins: list('CORS_ORIGINS', {
    fallback: 'http://localhost:3000',
    fault: (origin) => /^https?:\/\/[^/\s]+$/.test(origin) ? null : `"${origin}" is not an exact origin like http://localhost:3000`
  }),
  rateLimitMax: integer('RATE_LIMIT_MAX', 100, 1, 1_000_000_000),
  rateLimitWindow: duration('RATE_LIMIT_WINDOW', '1m', 1),
  trustProxy: list('TRUST_PROXY', {
    fault: (proxy) => isAddressOrCidr(proxy) ? null : `"${proxy}" is not an address, a CIDR, or one of loopback, linklocal, uniquelocal`
  }),
  rateLimitAllow: list('RATE_LIMIT_ALLOW', { fault: (address) => isIP(address) === 0 ? `"${address}" is not an IP address` : null }),
  compatSimpleJwt: boolean('COMPAT_SIMPLEJWT', true),
  legacySimpleJwtSigningKey: text('LEGACY_SIMPLEJWT_SIGNING_KEY'),
  storeLoss: oneOf('STORE_LOSS', ['refuse', 'accept'], 'refuse'),
  maxSessionsPerSubject: integer('MAX_SESSIONS_PER_SUBJECT', 100, 1, 10_000),
  dpopProofMaxAge: duration('DPOP_PROOF_MAX_AGE', '60s', 1),
  dpopNonces: boolean('DPOP_NONCES', false)
}

/** The name of every environment variable Rotor reads (the docs are checked against it). */
export const SETTING_NAMES: readonly string[] = Object.values(SCHEMA).map((setting) => setting.env)

type Settings = { [K in keyof typeof SCHEMA]: typeof SCHEMA[K] extends Setting<infer T> ? T : never }

/** Each variable on its own: its value, or its problems and a stand-in value. */
function readSettings (env: Record<string, string | undefined>, problems: string[]): Settings {
  const values: Record<string, unknown> = {}
  for (const [key, setting] of Object.entries(SCHEMA) as Array<[string, Setting<unknown>]>) {
    const raw = env[setting.env]?.trim()
    const value = setting.parse(raw === '' ? undefined : raw)
    if (value instanceof Problem) problems.push(...value.messages)
    values[key] = value instanceof Problem ? value.standIn : value
  }
  return values as Settings
}

// ---------------------------------------------------------------- the rules between settings

/** The one Redis among REDIS_URL, REDIS_CLUSTER_NODES and REDIS_SENTINELS, or none. */
function redisOf (s: Settings, problems: string[]): RedisSetting {
  const given = [s.redisUrl !== null, s.redisClusterNodes.length > 0, s.redisSentinels.length > 0].filter(Boolean).length
  if (given > 1) problems.push('REDIS_URL, REDIS_CLUSTER_NODES and REDIS_SENTINELS: set only one of them')
  if (s.redisUrl !== null) {
    if (!/^rediss?:\/\/./.test(s.redisUrl)) problems.push('REDIS_URL: expected a redis:// or rediss:// URL')
    return { kind: 'single', url: s.redisUrl }
  }
  if (s.redisClusterNodes.length > 0) return { kind: 'cluster', nodes: s.redisClusterNodes }
  if (s.redisSentinels.length > 0) {
    if (s.redisSentinelName === null) problems.push('REDIS_SENTINEL_NAME: required with REDIS_SENTINELS (the name of the primary)')
    return { kind: 'sentinel', sentinels: s.redisSentinels, name: s.redisSentinelName ?? '' }
  }
  return { kind: 'memory' }
}

/** Every rule that joins two settings or more, in one place. */
function crossCheck (s: Settings, redis: RedisSetting, problems: string[]): void {
  if (s.jwtSecret !== null) {
    if (s.jwtAlgorithm !== 'HS256') problems.push(`JWT_SECRET is for HS256 only; JWT_ALGORITHM is ${s.jwtAlgorithm} (use JWT_KEYS_FILE)`)
    if (Buffer.byteLength(s.jwtSecret) < 32) problems.push('JWT_SECRET: expected at least 32 bytes')
    if (s.jwtKeysFile !== null) problems.push('JWT_SECRET and JWT_KEYS_FILE: set one, not both')
  }
  if (s.nodeEnv === 'production') {
    if (s.jwtKeysFile === null && s.jwtSecret === null) problems.push('NODE_ENV=production needs JWT_KEYS_FILE (or JWT_SECRET for HS256): generated keys would change at every restart')
    if (s.apiKeys.length === 0 && s.apiKeysFile === null) problems.push('NODE_ENV=production needs API_KEYS (or API_KEYS_FILE)')
    if (s.denylistEnabled && redis.kind === 'memory') problems.push('NODE_ENV=production with DENYLIST_ENABLED=true needs REDIS_URL, REDIS_CLUSTER_NODES or REDIS_SENTINELS: an in-process denylist is lost on restart and not shared')
  }
  if (s.apiKeys.length > 0 && s.apiKeysFile !== null) problems.push('API_KEYS and API_KEYS_FILE: set one, not both')
  if (s.accessTokenProfile === 'rfc9068' && s.jwtAudience.length === 0) {
    problems.push('ACCESS_TOKEN_PROFILE=rfc9068 needs JWT_AUDIENCE: an RFC 9068 access token always names its audience')
  }
  if (s.managementPort !== null && s.managementPort === s.port) {
    problems.push(`MANAGEMENT_PORT=${s.managementPort}: expected a port other than PORT (${s.port}); the ops listener needs a port of its own`)
  }
  if (s.redisKeyPrefix.includes('{') || s.redisKeyPrefix.includes('}')) {
    problems.push('REDIS_KEY_PREFIX: must not contain { or } (Rotor places its own hash tags)')
  }
  if (s.workers > 1) {
    // Each worker is a process of its own: whatever one would generate or keep in memory, the others would not share.
    if (s.jwtKeysFile === null && s.jwtSecret === null) problems.push('WORKERS > 1 needs JWT_KEYS_FILE (or JWT_SECRET): each worker would generate keys of its own')
    if (s.apiKeys.length === 0 && s.apiKeysFile === null) problems.push('WORKERS > 1 needs API_KEYS (or API_KEYS_FILE): each worker would generate a key of its own')
    if (redis.kind === 'memory') problems.push('WORKERS > 1 needs REDIS_URL, REDIS_CLUSTER_NODES or REDIS_SENTINELS: an in-process denylist and rate limit are not shared between workers')
  }
}

/** The problems a file reader found (it throws nothing but ConfigError; anything else is a bug). */
function faultsOf (read: () => void): string[] {
  try {
    read()
    return []
  } catch (error) {
    /* c8 ignore next: as said */
    if (!(error instanceof ConfigError)) throw error
    return error.problems
  }
}

/**
 * Reads the settings from an environment-like record (never `process.env` directly, so that
 * tests pass their own). Throws one {@link ConfigError} listing every bad variable, the keys file
 * included (read and checked here, so a bad one stops the start before anything is built).
 *
 * @example
 * const config = loadConfig({ REDIS_URL: 'redis://127.0.0.1:6379', ACCESS_TOKEN_TTL: '15m' })
 * config.accessTokenTtl // 900
 */
export function loadConfig (env: Record<string, string | undefined>): Config {
  const problems: string[] = []
  const s = readSettings(env, problems)
  const redis = redisOf(s, problems)
  crossCheck(s, redis, problems)
  const { nodeEnv, redisUrl, redisClusterNodes, redisSentinels, redisSentinelName, trustProxy, ...same } = s
  const config: Config = {
    ...same,
    isProduction: nodeEnv === 'production',
    managementHost: s.managementHost ?? s.host,
    redis,
    trustProxy: trustProxy.length > 0 ? trustProxy : null,
    generatedApiKey: null
  }
  // The files, once every setting is right: read and checked now, so a bad one stops the start.
  if (problems.length === 0) {
    problems.push(...faultsOf(() => { if (config.jwtKeysFile !== null) loadKeyMaterial(config) }))
    problems.push(...faultsOf(() => { if (config.apiKeysFile !== null) config.apiKeys = readApiKeysFile(config.apiKeysFile) }))
  }
  if (problems.length > 0) throw new ConfigError(problems)

  if (config.apiKeys.length === 0) {
    const secret = randomBytes(24).toString('base64url')
    config.generatedApiKey = secret
    config.apiKeys = [{ name: nameOfSecret(secret), secret, scopes: [...SCOPES] }]
  }
  return config
}

/** The issuer as RFC 8414 §2 wants it (an http(s) URL, no query, no fragment), or null. */
export function issuerUrl (issuer: string): URL | null {
  if (!URL.canParse(issuer)) return null
  const url = new URL(issuer)
  return ['http:', 'https:'].includes(url.protocol) && url.search === '' && url.hash === '' ? url : null
}
