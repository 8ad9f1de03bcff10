import { spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { test, type Test } from 'tap'
import { loadConfig, parseDuration, type Algorithm, type Config } from '../../src/config.js'
import { ConfigError } from '../../plugins/errors.js'
import { loadKeyMaterial, type KeyMaterial } from '../../plugins/key-material.js'
import { startRedis } from '../support/redis.js'
import { freePort } from '../support/net.js'

type Env = Record<string, string>
const ROOT = fileURLToPath(new URL('../..', import.meta.url))

/** The keys a configuration loads, the active one first. */
function ordered (config: Config): KeyMaterial[] {
  const { active, keys } = loadKeyMaterial(config)
  return [active, ...keys.filter((key) => key !== active)]
}

/** The error loadConfig throws for these settings; fails the test when it accepts them. */
function configError (env: Env): ConfigError {
  try {
    loadConfig(env)
  } catch (error) {
    if (error instanceof ConfigError) return error
    throw error
  }
  throw new Error(`loadConfig accepted ${JSON.stringify(env)}`)
}

function keyError (config: Config): ConfigError {
  try {
    loadKeyMaterial(config)
  } catch (error) {
    if (error instanceof ConfigError) return error
    throw new Error(`expected a ConfigError, got ${String(error)}`)
  }
  throw new Error('loadKeyMaterial accepted the keys')
}

type Jwk = Record<string, unknown>
function privateJwk (algorithm: Exclude<Algorithm, 'HS256'>, kid: string, extra: Jwk = {}): Jwk {
  const { privateKey } = algorithm === 'EdDSA'
    ? generateKeyPairSync('ed25519')
    : algorithm === 'ES256'
      ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
      : generateKeyPairSync('rsa', { modulusLength: 2048 })
  return { ...privateKey.export({ format: 'jwk' }), kid, ...extra }
}

/** Writes `content` as the keys file in a fresh directory; the settings that name it. */
function keysFileEnv (t: Test, content: unknown, env: Env = {}): Env {
  const dir = t.testdir({ 'jwks.json': typeof content === 'string' ? content : JSON.stringify(content) })
  return { JWT_KEYS_FILE: join(dir, 'jwks.json'), ...env }
}

function withKeysFile (t: Test, content: unknown, env: Env = {}): Config {
  return loadConfig(keysFileEnv(t, content, env))
}

test('with no settings every default of the contract applies', async (t) => {
  const config = loadConfig({})
  t.has(config, {
    port: 8080,
    host: '127.0.0.1',
    managementPort: null,
    managementHost: '127.0.0.1',
    logLevel: 'info',
    isProduction: false,
    redis: { kind: 'memory' },
    denylistEnabled: true,
    rotateRefreshTokens: true,
    accessTokenTtl: 3600,
    refreshTokenTtl: 7 * 86400,
    sessionMaxTtl: null,
    refreshReuseGrace: 10,
    reuseDetection: 'enforce',
    leeway: 0,
    jwtAlgorithm: 'EdDSA',
    jwtKeysFile: null,
    jwtActiveKid: null,
    jwtSecret: null,
    jwtIssuer: 'rotor',
    rateLimitMax: 100,
    rateLimitWindow: 60,
    trustProxy: null,
    compatSimpleJwt: true,
    legacySimpleJwtSigningKey: null
  })
  t.strictSame(config.corsOrigins, ['http://localhost:3000'])
  t.strictSame(config.jwtAudience, [])
  t.strictSame(config.rateLimitAllow, [])
})

test('MANAGEMENT_HOST defaults to HOST', async (t) => {
  t.has(loadConfig({ HOST: '0.0.0.0', MANAGEMENT_PORT: '9100' }), { managementPort: 9100, managementHost: '0.0.0.0' })
  t.has(loadConfig({ HOST: '0.0.0.0', MANAGEMENT_PORT: '9100', MANAGEMENT_HOST: '127.0.0.1' }), { managementHost: '127.0.0.1' })
})

test('outside production a missing API_KEYS gets one generated key, different at every start', async (t) => {
  const first = loadConfig({})
  const second = loadConfig({})
  t.type(first.generatedApiKey, 'string')
  t.ok((first.generatedApiKey ?? '').length >= 32, 'long enough to be a secret')
  t.strictSame(first.apiKeys.map((key) => key.secret), [first.generatedApiKey], 'the generated key is the one accepted')
  t.not(first.generatedApiKey, second.generatedApiKey)
  const given = loadConfig({ API_KEYS: 'key-one-0123456789, key-two-0123456789' })
  t.equal(given.generatedApiKey, null, 'nothing generated when keys are given')
  t.strictSame(given.apiKeys.map((key) => key.secret), ['key-one-0123456789', 'key-two-0123456789'])
})

test('API_KEYS entries: a bare secret (named by a short digest of itself), name:secret, name:secret:scope+scope', async (t) => {
  const [bare, named, scoped] = loadConfig({ API_KEYS: 'bare-secret-0123456789, gateway:gateway-secret-0123456789, support.tool:support-secret-0123456789:introspect+sessions' }).apiKeys
  t.match(bare, { secret: 'bare-secret-0123456789', scopes: ['issue', 'introspect', 'revoke', 'sessions'] })
  t.match(bare?.name, /^key-[0-9a-f]{12}$/, 'a bare secret is named key-<12 hex digits>')
  t.notOk('bare-secret-0123456789'.includes(String(bare?.name).slice(4)), 'and the name is no part of the secret')
  t.strictSame(named, { name: 'gateway', secret: 'gateway-secret-0123456789', scopes: ['issue', 'introspect', 'revoke', 'sessions'] }, 'no scopes: all of them')
  t.strictSame(scoped, { name: 'support.tool', secret: 'support-secret-0123456789', scopes: ['introspect', 'sessions'] })
  const faults: Array<[string, RegExp]> = [
    ['a:b:c:d-0123456789abcdef', /entry #1: expected secret, name:secret or name:secret:scope\+scope/],
    ['bad name!:secret-0123456789abcdef', /entry #1: a name is 1 to 64/],
    [':secret-0123456789abcdef', /entry #1: a name is 1 to 64/],
    ['ok-0123456789abcdef, gw:short', /entry #2: a key must be at least 16 characters/],
    ['gw:secret-0123456789abcdef:issue+admin', /entry #1: scopes are issue, introspect, revoke, sessions/],
    ['gw:secret-0123456789abcdef:', /entry #1: scopes are/],
    ['gw:secret-0123456789abcdef, gw:other-secret-0123456789', /two entries are named gw/],
    ['same-secret-0123456789, same-secret-0123456789', /two entries are named key-[0-9a-f]{12} \(or the same key is given twice\)/]
  ]
  for (const [value, expected] of faults) {
    const error = configError({ API_KEYS: value })
    t.match(error.message, expected, value)
    for (const secret of value.split(/[,:]/).filter((part) => part.includes('0123456789'))) {
      t.notOk(error.message.includes(secret.trim()), `the message repeats no secret of ${value}`)
    }
  }
})

test('ACCESS_TOKEN_PROFILE=rfc9068 needs JWT_AUDIENCE', async (t) => {
  t.match(configError({ ACCESS_TOKEN_PROFILE: 'rfc9068' }).message, /ACCESS_TOKEN_PROFILE=rfc9068 needs JWT_AUDIENCE/)
  t.match(configError({ ACCESS_TOKEN_PROFILE: 'jwt' }).message, /ACCESS_TOKEN_PROFILE=jwt: expected one of rfc9068/)
  t.equal(loadConfig({ ACCESS_TOKEN_PROFILE: 'rfc9068', JWT_AUDIENCE: 'api' }).accessTokenProfile, 'rfc9068')
  t.equal(loadConfig({}).accessTokenProfile, null)
})

test('durations accept seconds and s/m/h/d forms', async (t) => {
  const forms: Array<[string, number]> = [['90', 90], ['90s', 90], ['15m', 900], ['1h', 3600], ['7d', 604800], [' 2m ', 120]]
  for (const [text, seconds] of forms) {
    t.equal(loadConfig({ ACCESS_TOKEN_TTL: text }).accessTokenTtl, seconds, `ACCESS_TOKEN_TTL=${text}`)
    t.equal(parseDuration(text), seconds, `parseDuration(${text})`)
  }
  t.equal(loadConfig({ REFRESH_TOKEN_TTL: '30d' }).refreshTokenTtl, 30 * 86400)
  t.equal(loadConfig({ SESSION_MAX_TTL: '90d' }).sessionMaxTtl, 90 * 86400)
  t.equal(loadConfig({ REFRESH_REUSE_GRACE: '0' }).refreshReuseGrace, 0, 'a grace of 0 turns the window off')
  t.equal(loadConfig({ LEEWAY: '30s' }).leeway, 30)
  t.equal(loadConfig({ RATE_LIMIT_WINDOW: '15m' }).rateLimitWindow, 900)
})

test('durations refuse negative, unknown-unit, non-numeric and (for lifetimes) zero forms', async (t) => {
  for (const value of ['-1', 'abc', '1w', '0', '1.5h', '10 m']) {
    const error = configError({ ACCESS_TOKEN_TTL: value })
    t.match(error.message, /ACCESS_TOKEN_TTL/, `ACCESS_TOKEN_TTL=${value}`)
    t.equal(error.problems.length, 1)
  }
  for (const name of ['REFRESH_TOKEN_TTL', 'SESSION_MAX_TTL', 'RATE_LIMIT_WINDOW']) {
    t.match(configError({ [name]: '0' }).message, name, `${name}=0`)
  }
  for (const name of ['REFRESH_REUSE_GRACE', 'LEEWAY']) {
    t.match(configError({ [name]: '-1' }).message, name, `${name}=-1`)
  }
})

test('every bad value is a ConfigError naming its variable', async (t) => {
  const bad: Env[] = [
    { PORT: '65536' }, { PORT: 'http' }, { PORT: '-1' }, { LOG_LEVEL: 'verbose' },
    { REDIS_URL: 'http://localhost:6379' }, { REDIS_CLUSTER_NODES: 'redis-a' }, { REDIS_SENTINELS: 'sentinel:0' },
    { DENYLIST_ENABLED: 'maybe' }, { ROTATE_REFRESH_TOKENS: 'sometimes' }, { COMPAT_SIMPLEJWT: '2' },
    { REUSE_DETECTION: 'block' }, { JWT_ALGORITHM: 'none' }, { JWT_ALGORITHM: 'HS512' },
    { API_KEYS: 'short' }, { CORS_ORIGINS: 'http://localhost:3000/' }, { CORS_ORIGINS: '*' },
    { RATE_LIMIT_MAX: '0' }, { RATE_LIMIT_MAX: '1e3' }, { RATE_LIMIT_ALLOW: 'next-server' },
    { REDIS_KEY_PREFIX: 'rotor:{a}:' }, { MANAGEMENT_PORT: 'ops' }, { MANAGEMENT_PORT: '0' }, { MANAGEMENT_PORT: '65536' },
    { MANAGEMENT_PORT: '8080' }
  ]
  for (const env of bad) {
    const [name = ''] = Object.keys(env)
    const error = configError(env)
    t.equal(error.name, 'ConfigError')
    t.match(error.message, name, `${name}=${env[name] ?? ''} is named`)
  }
})

test('several bad variables are all listed in one error', async (t) => {
  const error = configError({ PORT: 'x', LEEWAY: 'soon', JWT_ALGORITHM: 'none', DENYLIST_ENABLED: 'perhaps' })
  t.equal(error.problems.length, 4)
  for (const name of ['PORT', 'LEEWAY', 'JWT_ALGORITHM', 'DENYLIST_ENABLED']) t.match(error.message, name)
})

test('TRUST_PROXY accepts addresses and CIDRs and refuses anything else by name', async (t) => {
  t.strictSame(loadConfig({ TRUST_PROXY: '10.0.0.0/8, 127.0.0.1' }).trustProxy, ['10.0.0.0/8', '127.0.0.1'])
  // Unchecked today: proxy-addr throws a bare TypeError inside buildApp, naming no variable.
  t.strictSame(loadConfig({ TRUST_PROXY: 'loopback,::1/128,fd00::/8' }).trustProxy, ['loopback', '::1/128', 'fd00::/8'])
  for (const value of ['garbage', '10.0.0.0/33', '::1/129', '10.0.0.0/8/1', '10.0.0.0/x']) {
    t.match(configError({ TRUST_PROXY: value }).message, 'TRUST_PROXY', `TRUST_PROXY=${value}`)
  }
})

test('NODE_ENV=production refuses to start without keys, API keys, or Redis for the denylist', async (t) => {
  const error = configError({ NODE_ENV: 'production' })
  t.equal(error.problems.length, 3)
  t.match(error.message, 'JWT_KEYS_FILE')
  t.match(error.message, 'API_KEYS')
  t.match(error.message, 'REDIS_URL')
  const ready = { NODE_ENV: 'production', JWT_ALGORITHM: 'HS256', JWT_SECRET: 'x'.repeat(32), API_KEYS: 'prod-key-0123456789abcdef' }
  t.match(configError(ready).message, /REDIS_URL/, 'still needs a Redis while the denylist is on')
  const noDenylist = loadConfig({ ...ready, DENYLIST_ENABLED: 'false' })
  t.has(noDenylist, { isProduction: true, denylistEnabled: false, redis: { kind: 'memory' }, generatedApiKey: null })
  t.has(loadConfig({ ...ready, REDIS_URL: 'rediss://redis.internal:6380' }), { redis: { kind: 'single' } })
  t.has(loadConfig({ ...ready, REDIS_CLUSTER_NODES: 'a:7000' }), { redis: { kind: 'cluster' } })
  t.ok(loadConfig({ ...ready, ...keysFileEnv(t, { keys: [privateJwk('EdDSA', 'a')] }), JWT_SECRET: '', JWT_ALGORITHM: 'EdDSA', DENYLIST_ENABLED: 'off' }),
    'JWT_KEYS_FILE satisfies the key requirement')
})

test('JWT_SECRET is for HS256 only and needs at least 32 bytes', async (t) => {
  t.match(configError({ JWT_SECRET: 'x'.repeat(40) }).message, /JWT_SECRET.*HS256/, 'refused with the default EdDSA')
  t.match(configError({ JWT_ALGORITHM: 'HS256', JWT_SECRET: 'x'.repeat(31) }).message, /JWT_SECRET.*32 bytes/)
  t.match(configError({ JWT_ALGORITHM: 'HS256', JWT_SECRET: 'x'.repeat(32), JWT_KEYS_FILE: '/k.json' }).message, /JWT_SECRET and JWT_KEYS_FILE/)
  const config = loadConfig({ JWT_ALGORITHM: 'HS256', JWT_SECRET: 'é'.repeat(16) })
  t.equal(config.jwtSecret, 'é'.repeat(16), '16 two-byte characters are 32 bytes')
  const [key, ...others] = ordered(config)
  t.equal(others.length, 0)
  t.equal(key?.algorithm, 'HS256')
  t.equal(key?.publicJwk, null, 'a secret is never published')
  t.notMatch(key?.kid ?? '', 'é', 'the kid does not reveal the secret')
})

test('Redis: one of REDIS_URL, REDIS_CLUSTER_NODES, REDIS_SENTINELS, each parsed', async (t) => {
  t.strictSame(loadConfig({ REDIS_URL: 'redis://:pw@redis:6379/2' }).redis, { kind: 'single', url: 'redis://:pw@redis:6379/2' })
  t.strictSame(loadConfig({ REDIS_CLUSTER_NODES: 'redis-a:7000, redis-b:7001,' }).redis,
    { kind: 'cluster', nodes: [{ host: 'redis-a', port: 7000 }, { host: 'redis-b', port: 7001 }] })
  t.strictSame(loadConfig({ REDIS_SENTINELS: '10.0.0.1:26379,10.0.0.2:26379', REDIS_SENTINEL_NAME: 'primary' }).redis,
    { kind: 'sentinel', sentinels: [{ host: '10.0.0.1', port: 26379 }, { host: '10.0.0.2', port: 26379 }], name: 'primary' })
  t.match(configError({ REDIS_SENTINELS: 's1:26379' }).message, 'REDIS_SENTINEL_NAME')
  for (const pair of [{ REDIS_CLUSTER_NODES: 'a:1' }, { REDIS_SENTINELS: 's:26379', REDIS_SENTINEL_NAME: 'p' }]) {
    const error = configError({ REDIS_URL: 'redis://r:6379', ...pair })
    t.match(error.message, /REDIS_URL, REDIS_CLUSTER_NODES and REDIS_SENTINELS: set only one/)
  }
  t.match(configError({ REDIS_CLUSTER_NODES: 'a:1', REDIS_SENTINELS: 's:2', REDIS_SENTINEL_NAME: 'p' }).message, 'set only one')
  for (const item of ['redis-a', 'redis-a:', ':7000', 'redis-a:70000', 'redis-a:port']) {
    t.match(configError({ REDIS_CLUSTER_NODES: item }).message, `REDIS_CLUSTER_NODES: "${item}" is not host:port`)
  }
})

test('an IPv6 host:port in brackets is parsed to the bare address', async (t) => {
  t.strictSame(loadConfig({ REDIS_CLUSTER_NODES: '[::1]:7000' }).redis, { kind: 'cluster', nodes: [{ host: '::1', port: 7000 }] })
})

test('a JWKS of private Ed25519 keys loads, the first key active unless JWT_ACTIVE_KID says otherwise', async (t) => {
  const keys = [privateJwk('EdDSA', 'k1'), privateJwk('EdDSA', 'k2', { alg: 'EdDSA', use: 'sig' }), privateJwk('EdDSA', 'k3')]
  const material = ordered(withKeysFile(t, { keys }))
  t.strictSame(material.map((key) => key.kid), ['k1', 'k2', 'k3'])
  const [active] = material
  t.has(active?.publicJwk, { kty: 'OKP', crv: 'Ed25519', kid: 'k1', alg: 'EdDSA', use: 'sig', x: keys[0]?.['x'] })
  t.notOk('d' in (active?.publicJwk ?? {}), 'the published JWK has no private part')
  t.not(active?.refreshKid, 'k1', 'the refresh kid is not a JWKS kid')
  const chosen = ordered(withKeysFile(t, { keys }, { JWT_ACTIVE_KID: 'k2' }))
  t.strictSame(chosen.map((key) => key.kid), ['k2', 'k1', 'k3'], 'JWT_ACTIVE_KID first, the others still verify')
  t.equal(chosen[0]?.refreshKid, material[1]?.refreshKid, 'the refresh key follows the signing key')
})

test('ES256, RS256 and HS256 key files load too', async (t) => {
  const es = ordered(withKeysFile(t, { keys: [privateJwk('ES256', 'ec-1')] }, { JWT_ALGORITHM: 'ES256' }))
  t.has(es[0]?.publicJwk, { kty: 'EC', crv: 'P-256', alg: 'ES256', kid: 'ec-1' })
  const rs = ordered(withKeysFile(t, { keys: [privateJwk('RS256', 'rsa-1', { alg: 'RS256' })] }, { JWT_ALGORITHM: 'RS256' }))
  t.has(rs[0]?.publicJwk, { kty: 'RSA', alg: 'RS256', kid: 'rsa-1' })
  const oct = { kty: 'oct', kid: 'hs-1', k: randomBytes(32).toString('base64url') }
  const hs = ordered(withKeysFile(t, { keys: [oct] }, { JWT_ALGORITHM: 'HS256' }))
  t.equal(hs[0]?.kid, 'hs-1')
  t.equal(hs[0]?.publicJwk, null)
})

test('a bad keys file is a ConfigError of the settings, naming JWT_KEYS_FILE (or JWT_ACTIVE_KID) and the fault', async (t) => {
  const ed = privateJwk('EdDSA', 'a')
  const { d: _d, ...publicOnly } = ed
  const cases: Array<[string, unknown, Env, RegExp]> = [
    ['not JSON', '{"keys": [', {}, /JWT_KEYS_FILE=.*JSON/],
    ['not a JWKS', [ed], {}, /JWT_KEYS_FILE=.*expected a JWKS/],
    ['empty keys', { keys: [] }, {}, /JWT_KEYS_FILE=.*at least one/],
    ['missing kid', { keys: [{ ...ed, kid: undefined }] }, {}, /JWT_KEYS_FILE: key #1: needs a "kid"/],
    ['duplicate kid', { keys: [ed, privateJwk('EdDSA', 'a')] }, {}, /JWT_KEYS_FILE=.*share a kid/],
    ['wrong kty', { keys: [privateJwk('ES256', 'ec')] }, {}, /JWT_KEYS_FILE: key #1 \(ec\): kty must be OKP/],
    ['alg mismatch', { keys: [privateJwk('EdDSA', 'b'), { ...ed, alg: 'ES256' }] }, {}, /JWT_KEYS_FILE: key #2 \(a\): alg ES256/],
    ['public key only', { keys: [publicOnly] }, {}, /JWT_KEYS_FILE: key #1 \(a\): not a valid private JWK/],
    ['P-384 for ES256', { keys: [{ ...generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey.export({ format: 'jwk' }), kid: 'p384' }] },
      { JWT_ALGORITHM: 'ES256' }, /JWT_KEYS_FILE: key #1 \(p384\): not an ES256 key/],
    ['short oct key', { keys: [{ kty: 'oct', kid: 'h', k: randomBytes(31).toString('base64url') }] }, { JWT_ALGORITHM: 'HS256' }, /JWT_KEYS_FILE: key #1 \(h\).*32 bytes/],
    ['oct key with no string k', { keys: [{ kty: 'oct', kid: 'h', k: 42 }] }, { JWT_ALGORITHM: 'HS256' }, /JWT_KEYS_FILE: key #1 \(h\).*32 bytes/],
    ['RSA of 1024 bits', { keys: [{ ...generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ format: 'jwk' }), kid: 'r1024' }] },
      { JWT_ALGORITHM: 'RS256' }, /JWT_KEYS_FILE: key #1 \(r1024\): not an RS256 key/],
    ['unknown active kid', { keys: [ed] }, { JWT_ACTIVE_KID: 'zz' }, /JWT_ACTIVE_KID=zz/]
  ]
  for (const [label, content, env, expected] of cases) {
    t.match(configError(keysFileEnv(t, content, env)).message, expected, label)
  }
  const missing = configError({ JWT_KEYS_FILE: join(t.testdir({}), 'absent.json') })
  t.match(missing.message, /JWT_KEYS_FILE=.*absent\.json: cannot read/, 'unreadable file')
  t.match(configError({ ...keysFileEnv(t, '{"keys": ['), PORT: 'x' }).message, /PORT=x/, 'with another bad setting, that one is said first')
})

test('a keys file that turns bad after the start is a ConfigError of the key material (a reload keeps the current keys)', async (t) => {
  const env = keysFileEnv(t, { keys: [privateJwk('EdDSA', 'a')] })
  const config = loadConfig(env)
  writeFileSync(String(env['JWT_KEYS_FILE']), '{"keys": [')
  t.match(keyError(config).message, /JWT_KEYS_FILE=.*JSON/)
})

test('a keys file whose entry is not an object is a ConfigError, not a TypeError', async (t) => {
  t.match(configError(keysFileEnv(t, { keys: [null] })).message, /JWT_KEYS_FILE/)
})

// ---- the process itself ----

const SETTINGS = [
  'PORT', 'HOST', 'LOG_LEVEL', 'REDIS_URL', 'REDIS_CLUSTER_NODES', 'REDIS_SENTINELS', 'REDIS_SENTINEL_NAME', 'REDIS_KEY_PREFIX',
  'DENYLIST_ENABLED', 'ROTATE_REFRESH_TOKENS', 'ACCESS_TOKEN_TTL', 'REFRESH_TOKEN_TTL', 'SESSION_MAX_TTL', 'REFRESH_REUSE_GRACE',
  'REUSE_DETECTION', 'LEEWAY', 'JWT_ALGORITHM', 'JWT_KEYS_FILE', 'JWT_ACTIVE_KID', 'JWT_SECRET', 'JWT_ISSUER', 'JWT_AUDIENCE',
  'API_KEYS', 'CORS_ORIGINS', 'RATE_LIMIT_MAX', 'RATE_LIMIT_WINDOW', 'TRUST_PROXY', 'RATE_LIMIT_ALLOW', 'COMPAT_SIMPLEJWT',
  'LEGACY_SIMPLEJWT_SIGNING_KEY', 'NODE_ENV', 'MANAGEMENT_PORT', 'MANAGEMENT_HOST', 'ACCESS_TOKEN_PROFILE'
]

interface Run { code: number | null, signal: NodeJS.Signals | null, stdout: string, stderr: string, timedOut: boolean }

/**
 * Runs src/server.ts with tap's own TypeScript loader (process.execArgv) and the runner's env
 * (it carries TS_NODE_TRANSPILE_ONLY; without it the loader type-checks and takes seconds more),
 * minus every Rotor setting, plus `env`. `onStdout` may signal the child; SIGKILL after 30 s.
 */
async function runServer (env: Env, onStdout?: (text: string, kill: (signal: NodeJS.Signals) => void) => void, cwd = ROOT): Promise<Run> {
  const inherited: Env = {}
  for (const [name, value] of Object.entries(process.env)) if (value !== undefined && !SETTINGS.includes(name)) inherited[name] = value
  const child = spawn(process.execPath, [...process.execArgv, join(ROOT, 'src/server.ts')], { cwd, env: { ...inherited, ...env } })
  const run: Run = { code: null, signal: null, stdout: '', stderr: '', timedOut: false }
  const timer = setTimeout(() => { run.timedOut = true; child.kill('SIGKILL') }, 30_000)
  child.stderr.on('data', (chunk: Buffer) => { run.stderr += chunk.toString() })
  child.stdout.on('data', (chunk: Buffer) => {
    run.stdout += chunk.toString()
    onStdout?.(run.stdout, (signal) => child.kill(signal))
  })
  await new Promise<void>((resolve) => {
    child.on('close', (code, signal) => { run.code = code; run.signal = signal; resolve() })
  })
  clearTimeout(timer)
  return run
}

test('the server exits with code 1 and names the bad variable on stderr', async (t) => {
  const run = await runServer({ ACCESS_TOKEN_TTL: '1w', LOG_LEVEL: 'info' })
  t.notOk(run.timedOut)
  t.equal(run.code, 1)
  t.match(run.stderr, /ACCESS_TOKEN_TTL=1w/)
  t.notMatch(run.stdout, 'Server listening')
})

test('the server exits with code 1 when MANAGEMENT_PORT is PORT, naming it', async (t) => {
  const run = await runServer({ PORT: '9090', MANAGEMENT_PORT: '9090', LOG_LEVEL: 'info' })
  t.notOk(run.timedOut)
  t.equal(run.code, 1)
  t.match(run.stderr, /MANAGEMENT_PORT=9090: expected a port other than PORT \(9090\)/)
  t.notMatch(run.stdout, 'Server listening')
})

test('the server exits with code 1 on a keys file it cannot read, naming JWT_KEYS_FILE', async (t) => {
  const run = await runServer({ JWT_KEYS_FILE: join(t.testdir({}), 'absent.json'), LOG_LEVEL: 'info' })
  t.notOk(run.timedOut)
  t.equal(run.code, 1)
  t.match(run.stderr, /JWT_KEYS_FILE=.*absent\.json/)
  t.notMatch(run.stderr, /\n\s+at /, 'a message, not a stack trace')
})

test('with valid settings the server listens, and SIGTERM shuts it down with exit code 0', async (t) => {
  let signalled = false
  const managementPort = await freePort()
  const opsAnswers: number[] = []
  const run = await runServer({ PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', MANAGEMENT_PORT: String(managementPort) }, (stdout, kill) => {
    if (!signalled && stdout.split('Server listening').length === 3) {
      signalled = true
      // The ops listener answers over its own socket before the shutdown.
      fetch(`http://127.0.0.1:${managementPort}/health/live`)
        .then((response) => { opsAnswers.push(response.status) }, () => { opsAnswers.push(0) })
        .finally(() => { kill('SIGTERM') })
    }
  })
  t.notOk(run.timedOut, 'exited before the timeout')
  t.ok(signalled, 'logged "Server listening"')
  t.equal(run.signal, null)
  t.equal(run.code, 0, 'graceful shutdown exits 0')
  const lines = run.stdout.split('\n').filter((line) => line !== '').map((line) => JSON.parse(line) as Record<string, unknown>)
  t.ok(lines.some((line) => typeof line['msg'] === 'string' && line['msg'].startsWith('Server listening at http://127.0.0.1:')))
  t.ok(lines.some((line) => line['msg'] === `Server listening at http://127.0.0.1:${managementPort}` && line['listener'] === 'management'), 'the ops listener on MANAGEMENT_PORT')
  t.same(opsAnswers, [200], 'which answers /health/live')
  t.ok(lines.some((line) => line['msg'] === 'shutting down' && line['signal'] === 'SIGTERM'))
  t.ok(lines.some((line) => /denylist is in this process only/.test(String(line['msg']))), 'the in-process store is said at start')
  const generated = /generated one for this run only:\s+(\S+)/.exec(run.stderr)?.[1]
  t.type(generated, 'string', 'the generated API key is printed on stderr')
  t.notMatch(run.stdout, generated ?? '<none>', 'and never lands in the log')
})

test('the server reads a .env file in its working directory', async (t) => {
  const dir = t.testdir({ '.env': 'ACCESS_TOKEN_TTL=2w\n' })
  const run = await runServer({ LOG_LEVEL: 'info' }, undefined, dir)
  t.equal(run.code, 1)
  t.match(run.stderr, /ACCESS_TOKEN_TTL=2w/, 'the setting came from .env')
})

test('in production the server refuses a Redis that may evict keys', async (t) => {
  const redis = await startRedis(t, ['--maxmemory-policy', 'allkeys-lru'])
  const run = await runServer({
    NODE_ENV: 'production', JWT_ALGORITHM: 'HS256', JWT_SECRET: 'a'.repeat(40), API_KEYS: 'production-key-0123456789', REDIS_URL: redis.url, LOG_LEVEL: 'info'
  })
  t.notOk(run.timedOut)
  t.equal(run.code, 1)
  t.match(run.stderr, /maxmemory-policy allkeys-lru/)
  t.match(run.stdout, /may evict denylist keys/, 'and says why in the log first')
})
