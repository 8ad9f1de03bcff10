import { randomBytes } from 'node:crypto'
import { isIP } from 'node:net'
import { ALGORITHMS, type Config, type HostPort, type RedisSetting } from '../plugins/config.js'
import { ConfigError } from '../plugins/errors.js'

export { ALGORITHMS, type Algorithm, type Config, type HostPort, type RedisSetting } from '../plugins/config.js'

const UNITS: Record<string, number> = { '': 1, s: 1, m: 60, h: 3600, d: 86400 }

/** `90`, `90s`, `15m`, `1h`, `7d` → seconds; null when it is not such a form. */
export function parseDuration (text: string): number | null {
  const match = /^(\d{1,9})([smhd]?)$/.exec(text.trim())
  if (match === null) return null
  // The pattern guarantees both groups, and the unit is one of UNITS.
  return Number(match[1]) * UNITS[String(match[2])]!
}

function isAddressOrCidr (text: string): boolean {
  if (['loopback', 'linklocal', 'uniquelocal'].includes(text)) return true
  const [address = '', bits, ...rest] = text.split('/')
  const version = isIP(address)
  if (version === 0 || rest.length > 0) return false
  if (bits === undefined) return true
  return /^\d{1,3}$/.test(bits) && Number(bits) <= (version === 4 ? 32 : 128)
}

function list (text: string | undefined): string[] {
  if (text === undefined) return []
  return text.split(',').map((item) => item.trim()).filter((item) => item !== '')
}

/**
 * Reads the settings from an environment-like record (never `process.env` directly, so that
 * tests pass their own). Throws one {@link ConfigError} listing every bad variable.
 */
export function loadConfig (env: Record<string, string | undefined>): Config {
  const problems: string[] = []
  const read = (name: string): string | undefined => {
    const value = env[name]
    return value === undefined || value.trim() === '' ? undefined : value.trim()
  }

  const optionalDuration = (name: string, min: number): number | null => {
    const raw = read(name)
    return raw === undefined ? null : duration(name, raw, min)
  }
  function duration (name: string, fallback: string, min = 0): number {
    const raw = read(name) ?? fallback
    const seconds = parseDuration(raw)
    if (seconds === null || seconds < min) {
      problems.push(`${name}=${raw}: expected a duration of at least ${min}s, in seconds or with s/m/h/d (e.g. 60, 15m, 7d)`)
      return min
    }
    return seconds
  }
  const integer = (name: string, fallback: number, min: number, max: number): number => {
    const raw = read(name)
    if (raw === undefined) return fallback
    const value = Number(raw)
    if (!/^\d+$/.test(raw) || value < min || value > max) {
      problems.push(`${name}=${raw}: expected a whole number from ${min} to ${max}`)
      return fallback
    }
    return value
  }
  const boolean = (name: string, fallback: boolean): boolean => {
    const raw = read(name)?.toLowerCase()
    if (raw === undefined) return fallback
    if (['true', '1', 'yes', 'on'].includes(raw)) return true
    if (['false', '0', 'no', 'off'].includes(raw)) return false
    problems.push(`${name}=${raw}: expected true or false`)
    return fallback
  }
  const oneOf = <T extends string>(name: string, choices: readonly T[], fallback: T): T => {
    const raw = read(name)
    if (raw === undefined) return fallback
    const found = choices.find((choice) => choice === raw)
    if (found === undefined) problems.push(`${name}=${raw}: expected one of ${choices.join(', ')}`)
    return found ?? fallback
  }
  const hostPorts = (name: string): HostPort[] => list(read(name)).map((item) => {
    // [::1]:7000 is an IPv6 address and port; the brackets are not part of the host.
    const match = /^\[([^\]]+)\]:(\d{1,5})$/.exec(item) ?? /^([^[\]]+):(\d{1,5})$/.exec(item)
    const port = Number(match?.[2])
    if (match === null || port < 1 || port > 65535) {
      problems.push(`${name}: "${item}" is not host:port`)
      return { host: item, port: 0 }
    }
    return { host: String(match[1]), port }
  })

  const nodeEnv = read('NODE_ENV')
  const isProduction = nodeEnv === 'production'

  const redis = readRedis(read, hostPorts, problems)
  const denylistEnabled = boolean('DENYLIST_ENABLED', true)
  const jwtAlgorithm = oneOf('JWT_ALGORITHM', ALGORITHMS, 'EdDSA')
  const jwtKeysFile = read('JWT_KEYS_FILE') ?? null
  const jwtSecret = read('JWT_SECRET') ?? null
  if (jwtSecret !== null) {
    if (jwtAlgorithm !== 'HS256') problems.push(`JWT_SECRET is for HS256 only; JWT_ALGORITHM is ${jwtAlgorithm} (use JWT_KEYS_FILE)`)
    if (Buffer.byteLength(jwtSecret) < 32) problems.push('JWT_SECRET: expected at least 32 bytes')
    if (jwtKeysFile !== null) problems.push('JWT_SECRET and JWT_KEYS_FILE: set one, not both')
  }

  const apiKeys = list(read('API_KEYS'))
  const shortKey = apiKeys.find((key) => key.length < 16)
  if (shortKey !== undefined) problems.push('API_KEYS: every key must be at least 16 characters')

  const corsOrigins = list(read('CORS_ORIGINS') ?? 'http://localhost:3000')
  for (const origin of corsOrigins) {
    if (!/^https?:\/\/[^/\s]+$/.test(origin)) problems.push(`CORS_ORIGINS: "${origin}" is not an exact origin like http://localhost:3000`)
  }

  const trustProxy = list(read('TRUST_PROXY'))
  for (const proxy of trustProxy) {
    if (!isAddressOrCidr(proxy)) problems.push(`TRUST_PROXY: "${proxy}" is not an address, a CIDR, or one of loopback, linklocal, uniquelocal`)
  }
  const rateLimitAllow = list(read('RATE_LIMIT_ALLOW'))
  for (const address of rateLimitAllow) {
    if (isIP(address) === 0) problems.push(`RATE_LIMIT_ALLOW: "${address}" is not an IP address`)
  }

  if (isProduction) {
    if (jwtKeysFile === null && jwtSecret === null) problems.push('NODE_ENV=production needs JWT_KEYS_FILE (or JWT_SECRET for HS256): generated keys would change at every restart')
    if (apiKeys.length === 0) problems.push('NODE_ENV=production needs API_KEYS')
    if (denylistEnabled && redis.kind === 'memory') problems.push('NODE_ENV=production with DENYLIST_ENABLED=true needs REDIS_URL, REDIS_CLUSTER_NODES or REDIS_SENTINELS: an in-process denylist is lost on restart and not shared')
  }

  const host = read('HOST') ?? '127.0.0.1'
  const config: Config = {
    port: integer('PORT', 8080, 0, 65535),
    workers: integer('WORKERS', 1, 1, 64),
    host,
    managementPort: read('MANAGEMENT_PORT') === undefined ? null : integer('MANAGEMENT_PORT', 0, 1, 65535),
    managementHost: read('MANAGEMENT_HOST') ?? host,
    logLevel: oneOf('LOG_LEVEL', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], 'info'),
    isProduction,
    redis,
    redisKeyPrefix: read('REDIS_KEY_PREFIX') ?? 'rotor:',
    redisWaitReplicas: integer('REDIS_WAIT_REPLICAS', 0, 0, 16),
    // Under the command timeout (1 s), so that a write that waits in vain still answers its 503 in time.
    redisWaitTimeoutMs: integer('REDIS_WAIT_TIMEOUT_MS', 100, 1, 500),
    denylistEnabled,
    rotateRefreshTokens: boolean('ROTATE_REFRESH_TOKENS', true),
    accessTokenTtl: duration('ACCESS_TOKEN_TTL', '60m', 1),
    refreshTokenTtl: duration('REFRESH_TOKEN_TTL', '7d', 1),
    sessionMaxTtl: optionalDuration('SESSION_MAX_TTL', 1),
    refreshReuseGrace: duration('REFRESH_REUSE_GRACE', '10s'),
    reuseDetection: oneOf('REUSE_DETECTION', ['enforce', 'log'], 'enforce'),
    leeway: duration('LEEWAY', '0s'),
    jwtAlgorithm,
    jwtKeysFile,
    jwtActiveKid: read('JWT_ACTIVE_KID') ?? null,
    jwtSecret,
    jwtIssuer: read('JWT_ISSUER') ?? 'rotor',
    jwtAudience: list(read('JWT_AUDIENCE')),
    apiKeys,
    generatedApiKey: null,
    corsOrigins,
    rateLimitMax: integer('RATE_LIMIT_MAX', 100, 1, 1_000_000_000),
    rateLimitWindow: duration('RATE_LIMIT_WINDOW', '1m', 1),
    trustProxy: trustProxy.length > 0 ? trustProxy : null,
    rateLimitAllow,
    compatSimpleJwt: boolean('COMPAT_SIMPLEJWT', true),
    legacySimpleJwtSigningKey: read('LEGACY_SIMPLEJWT_SIGNING_KEY') ?? null,
    storeLoss: oneOf('STORE_LOSS', ['refuse', 'accept'], 'refuse')
  }
  if (config.managementPort !== null && config.managementPort === config.port) {
    problems.push(`MANAGEMENT_PORT=${config.managementPort}: expected a port other than PORT (${config.port}); the ops listener needs a port of its own`)
  }
  if (config.redisKeyPrefix.includes('{') || config.redisKeyPrefix.includes('}')) {
    problems.push('REDIS_KEY_PREFIX: must not contain { or } (Rotor places its own hash tags)')
  }
  if (config.workers > 1) {
    // Each worker is a process of its own: whatever one would generate or keep in memory, the others would not share.
    if (jwtKeysFile === null && jwtSecret === null) problems.push('WORKERS > 1 needs JWT_KEYS_FILE (or JWT_SECRET): each worker would generate keys of its own')
    if (apiKeys.length === 0) problems.push('WORKERS > 1 needs API_KEYS: each worker would generate a key of its own')
    if (redis.kind === 'memory') problems.push('WORKERS > 1 needs REDIS_URL, REDIS_CLUSTER_NODES or REDIS_SENTINELS: an in-process denylist and rate limit are not shared between workers')
  }
  if (problems.length > 0) throw new ConfigError(problems)

  if (config.apiKeys.length === 0) {
    config.generatedApiKey = randomBytes(24).toString('base64url')
    config.apiKeys = [config.generatedApiKey]
  }
  return config
}

function readRedis (
  read: (name: string) => string | undefined,
  hostPorts: (name: string) => HostPort[],
  problems: string[]
): RedisSetting {
  const url = read('REDIS_URL')
  const clusterNodes = hostPorts('REDIS_CLUSTER_NODES')
  const sentinels = hostPorts('REDIS_SENTINELS')
  const given = [url !== undefined, clusterNodes.length > 0, sentinels.length > 0].filter(Boolean).length
  if (given > 1) problems.push('REDIS_URL, REDIS_CLUSTER_NODES and REDIS_SENTINELS: set only one of them')
  if (url !== undefined) {
    if (!/^rediss?:\/\/./.test(url)) problems.push('REDIS_URL: expected a redis:// or rediss:// URL')
    return { kind: 'single', url }
  }
  if (clusterNodes.length > 0) return { kind: 'cluster', nodes: clusterNodes }
  if (sentinels.length > 0) {
    const name = read('REDIS_SENTINEL_NAME')
    if (name === undefined) problems.push('REDIS_SENTINEL_NAME: required with REDIS_SENTINELS (the name of the primary)')
    return { kind: 'sentinel', sentinels, name: name ?? '' }
  }
  return { kind: 'memory' }
}
