import { test } from 'tap'
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { createHmac, createPublicKey, generateKeyPairSync, sign } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { API_KEY, build, decodeJwt, issue, listen } from '../support/app.js'
import { startRedis } from '../support/redis.js'
import { freePort } from '../support/net.js'
import type { Test } from '../support/tap.js'

/**
 * The old backend keeps working: a Django + DRF + djangorestframework-simplejwt project
 * (test/fixtures/django) verifies Rotor's access tokens through SimpleJWT's JWK_URL.
 *
 * Debian's Python is used on purpose: `python3` on PATH may be another one without the packages.
 * Without them this file fails (it never skips): CI installs them (see .ci/run).
 */
const PYTHON = process.env['DJANGO_PYTHON'] ?? '/usr/bin/python3'
const PROJECT = fileURLToPath(new URL('../fixtures/django/', import.meta.url))
const APT = 'apt-get install -y python3-django python3-djangorestframework python3-djangorestframework-simplejwt python3-jwt python3-cryptography'

/** The environment of a Python child: no pyenv or virtualenv leaking into Debian's interpreter. */
function pythonEnv (extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, PYTHONDONTWRITEBYTECODE: '1', PYTHONUNBUFFERED: '1' }
  for (const name of ['PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV', 'DJANGO_SETTINGS_MODULE']) delete env[name]
  return { ...env, ...extra }
}

function python (code: string, env: Record<string, string> = {}): { status: number | null, stdout: string, stderr: string } {
  const result = spawnSync(PYTHON, ['-c', code], { cwd: PROJECT, env: pythonEnv(env), encoding: 'utf8', timeout: 30_000 })
  if (result.error !== undefined) throw new Error(`cannot run ${PYTHON}: ${result.error.message}. Install Debian's packages: ${APT}`)
  return { status: result.status, stdout: result.stdout, stderr: result.stderr }
}

let stack: Record<string, string> | undefined

/** Versions of the old stack; throws (the test fails, loudly) when a package is missing. */
function djangoStack (): Record<string, string> {
  if (stack !== undefined) return stack
  const result = python([
    'import json, importlib.metadata as m',
    'import django, rest_framework, rest_framework_simplejwt, jwt, cryptography',
    'print(json.dumps({n: m.version(n) for n in ["Django", "djangorestframework", "djangorestframework-simplejwt", "PyJWT", "cryptography"]}))'
  ].join('\n'))
  if (result.status !== 0) {
    throw new Error(`Django, DRF, SimpleJWT, PyJWT or cryptography is missing from ${PYTHON}: ${APT}\n${result.stderr}`)
  }
  stack = JSON.parse(result.stdout) as Record<string, string>
  return stack
}

interface Django { url: string, output: () => string }

/**
 * Starts the fixture project with `manage.py runserver` (no autoreloader) on a free port, for
 * the Rotor at `rotorUrl`; waits until it answers; stops it (by its own pid) in teardown.
 */
async function startDjango (t: Test, rotorUrl: string, env: Record<string, string> = {}): Promise<Django> {
  djangoStack()
  for (let attempt = 1; ; attempt++) {
    const port = await freePort()
    let output = ''
    const child: ChildProcess = spawn(PYTHON, ['manage.py', 'runserver', `127.0.0.1:${port}`, '--noreload'], {
      cwd: PROJECT,
      env: pythonEnv({ ROTOR_URL: rotorUrl, ROTOR_API_KEY: API_KEY, ROTOR_JWT_ALGORITHM: 'ES256', ...env }),
      stdio: ['ignore', 'pipe', 'pipe']
    })
    child.stdout?.on('data', (chunk: Buffer) => { output += chunk.toString() })
    child.stderr?.on('data', (chunk: Buffer) => { output += chunk.toString() })
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
    t.teardown(async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM')
        await exited
      }
    })
    const url = `http://127.0.0.1:${port}`
    const deadline = Date.now() + 20_000
    while (Date.now() < deadline && child.exitCode === null) {
      try {
        await (await fetch(`${url}/api/me/`)).text()
        return { url, output: () => output }
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
    }
    if (child.exitCode !== null && /already in use/.test(output) && attempt < 3) continue
    child.kill('SIGTERM')
    throw new Error(`Django did not start on ${url}:\n${output}`)
  }
}

async function me (django: Django, token?: string, path = '/api/me/'): Promise<{ status: number, body: Record<string, unknown> }> {
  const response = await fetch(`${django.url}${path}`, token === undefined ? {} : { headers: { authorization: `Bearer ${token}` } })
  const text = await response.text()
  let body: Record<string, unknown>
  try {
    body = JSON.parse(text) as Record<string, unknown>
  } catch {
    body = { raw: text }
  }
  return { status: response.status, body }
}

const b64 = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')

test('the old stack is installed: Django, DRF, SimpleJWT, PyJWT and cryptography under Debian\'s Python', async (t) => {
  const versions = djangoStack()
  t.comment(`old stack: ${JSON.stringify(versions)}`)
  t.match(versions, { Django: /^\d/, djangorestframework: /^\d/, 'djangorestframework-simplejwt': /^\d/, PyJWT: /^\d/, cryptography: /^\d/ })
})

test('SimpleJWT refuses EdDSA in its ALGORITHM allow-list, though PyJWT supports it: Rotor must sign with ES256 or RS256', async (t) => {
  const result = python([
    'import django',
    'django.setup()',
    'import jwt',
    'from rest_framework_simplejwt.backends import TokenBackend, ALLOWED_ALGORITHMS',
    'print("pyjwt-eddsa" if "EdDSA" in jwt.algorithms.get_default_algorithms() else "pyjwt-no-eddsa")',
    'print(" ".join(sorted(ALLOWED_ALGORITHMS)))',
    'try:',
    '    TokenBackend("EdDSA")',
    '    print("accepted")',
    'except Exception as error:',
    '    print("refused:", error)'
  ].join('\n'), { DJANGO_SETTINGS_MODULE: 'legacy.settings' })
  t.equal(result.status, 0, result.stderr)
  const [pyjwt, allowed = '', verdict = ''] = result.stdout.trim().split('\n')
  t.equal(pyjwt, 'pyjwt-eddsa', 'PyJWT itself verifies Ed25519')
  t.notMatch(allowed, /EdDSA/)
  t.match(allowed, /ES256/)
  t.match(allowed, /RS256/)
  t.match(verdict, /^refused: Unrecognized algorithm type 'EdDSA'/)
})

for (const algorithm of ['ES256', 'RS256']) {
  test(`Django accepts a Rotor ${algorithm} access token (typ at+jwt) through JWK_URL, and refuses its refresh token and no token`, async (t) => {
    const app = await build(t, { JWT_ALGORITHM: algorithm })
    const django = await startDjango(t, await listen(app), { ROTOR_JWT_ALGORITHM: algorithm })
    const pair = await issue(app, { sub: 'user-42', claims: { role: 'editor' } })
    t.equal(decodeJwt(pair.access_token).header['typ'], 'at+jwt', 'PyJWT does not mind the at+jwt type')

    const ok = await me(django, pair.access_token)
    t.equal(ok.status, 200, 'a Rotor access token is accepted')
    if (ok.status !== 200) t.comment(django.output())
    t.equal(ok.body['user_id'], 'user-42', 'USER_ID_CLAIM=sub: the TokenUser is the token\'s subject')
    t.match(ok.body['claims'], { sub: 'user-42', role: 'editor', token_type: 'access', iss: 'rotor' }, 'custom claims reach the view')

    const refresh = await me(django, pair.refresh_token)
    t.equal(refresh.status, 401, 'a refresh token: its kid is not in the JWKS (and its token_type is refresh)')
    t.equal(refresh.body['code'], 'token_not_valid')

    const none = await me(django)
    t.equal(none.status, 401)
    t.same(none.body, { detail: 'Authentication credentials were not provided.' })

    const rotated = await app.inject({ method: 'POST', url: '/api/auth/token/refresh/', payload: { refresh: pair.refresh_token } })
    t.equal(rotated.statusCode, 200)
    const after = await me(django, rotated.json<{ access: string }>().access)
    t.equal(after.status, 200, 'an access token from a rotation works the same')
    t.equal(after.body['user_id'], 'user-42')
  })
}

test('Django refuses forged tokens: another key under Rotor\'s kid, alg none, HS256 keyed with the public key, an altered payload, another Rotor\'s token', async (t) => {
  const app = await build(t, { JWT_ALGORITHM: 'ES256' })
  const rotorUrl = await listen(app)
  const django = await startDjango(t, rotorUrl)
  const pair = await issue(app, { sub: 'user-1' })
  t.equal((await me(django, pair.access_token)).status, 200, 'the genuine token passes')
  const { header, payload } = decodeJwt(pair.access_token)
  const [genuineHeader = '', , genuineSignature = ''] = pair.access_token.split('.')
  const elevated = b64({ ...payload, sub: 'admin' })

  const attacker = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey
  const forgedInput = `${b64(header)}.${elevated}`
  const otherKey = `${forgedInput}.${sign('sha256', Buffer.from(forgedInput), { key: attacker, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`

  const algNone = `${b64({ ...header, alg: 'none' })}.${elevated}.`

  const jwks = await (await fetch(`${rotorUrl}/.well-known/jwks.json`)).json() as { keys: Array<Record<string, unknown>> }
  const publicPem = createPublicKey({ key: jwks.keys[0] as import('node:crypto').JsonWebKey, format: 'jwk' }).export({ format: 'pem', type: 'spki' })
  const hsInput = `${b64({ ...header, alg: 'HS256' })}.${elevated}`
  const confusion = `${hsInput}.${createHmac('sha256', publicPem).update(hsInput).digest('base64url')}`

  const altered = `${genuineHeader}.${elevated}.${genuineSignature}`

  const other = await build(t)
  const foreign = (await issue(other, { sub: 'user-1' })).access_token

  for (const [name, token] of Object.entries({ otherKey, algNone, confusion, altered, foreign, garbage: 'not.a.jwt' })) {
    const response = await me(django, token)
    t.equal(response.status, 401, name)
    t.equal(response.body['code'], 'token_not_valid', name)
  }
})

test('Django checks the audience when ROTOR_AUDIENCE is set: a token for another audience is refused', async (t) => {
  const app = await build(t, { JWT_ALGORITHM: 'ES256', JWT_AUDIENCE: 'legacy-api,billing-api' })
  const django = await startDjango(t, await listen(app), { ROTOR_AUDIENCE: 'legacy-api' })
  const ours = await issue(app, { sub: 'user-2' })
  t.equal((await me(django, ours.access_token)).status, 200, 'the default audience, the first of JWT_AUDIENCE')
  const theirs = await issue(app, { sub: 'user-2', aud: 'billing-api' })
  t.equal((await me(django, theirs.access_token)).status, 401, 'a token meant for billing-api')
})

test('a revoked session\'s access token passes Django\'s local verification until it expires; the introspecting view refuses it at once', async (t) => {
  const app = await build(t, { JWT_ALGORITHM: 'ES256', ACCESS_TOKEN_TTL: '4s' })
  const django = await startDjango(t, await listen(app))
  const pair = await issue(app, { sub: 'user-3' })
  const exp = decodeJwt(pair.access_token).payload['exp'] as number
  t.equal((await me(django, pair.access_token, '/api/me/strict/')).status, 200, 'introspection: active')

  const revoked = await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: pair.refresh_token } })
  t.equal(revoked.statusCode, 200, 'logout: the session is revoked in Rotor')
  t.ok(Date.now() < exp * 1000, 'still before exp')
  const local = await me(django, pair.access_token)
  t.equal(local.status, 200, 'local verification cannot know: the token passes until it expires (expected)')
  const strict = await me(django, pair.access_token, '/api/me/strict/')
  t.equal(strict.status, 401, 'a backend that calls introspection refuses it at once')
  t.same(strict.body, { detail: 'Token has been revoked', code: 'token_not_valid' })

  const another = await issue(app, { sub: 'user-3' })
  t.equal((await me(django, another.access_token, '/api/me/strict/')).status, 200, 'another session of the subject is still active')
  const everywhere = await app.inject({ method: 'POST', url: '/v1/subjects/user-3/revoke', headers: { authorization: `Bearer ${API_KEY}` } })
  t.equal(everywhere.statusCode, 200)
  t.equal((await me(django, another.access_token, '/api/me/strict/')).status, 401, '"log out everywhere" reaches it through introspection')
  t.equal((await me(django, another.access_token)).status, 200, 'but not through local verification')

  await new Promise((resolve) => setTimeout(resolve, Math.max(0, exp * 1000 - Date.now()) + 1100))
  const expired = await me(django, pair.access_token)
  t.equal(expired.status, 401, 'once expired, local verification refuses it too')
  t.equal(expired.body['code'], 'token_not_valid')
})

test('the introspecting view answers 503, not 401, when Rotor cannot say (its Redis is down)', async (t) => {
  const redis = await startRedis(t)
  const app = await build(t, { JWT_ALGORITHM: 'ES256', REDIS_URL: redis.url })
  const django = await startDjango(t, await listen(app))
  const pair = await issue(app, { sub: 'user-4' })
  t.equal((await me(django, pair.access_token, '/api/me/strict/')).status, 200)
  await redis.stop()
  const strict = await me(django, pair.access_token, '/api/me/strict/')
  t.equal(strict.status, 503, 'the user is not logged out by an outage')
  t.match(strict.body, { detail: /retry later/ })
  t.equal((await me(django, pair.access_token)).status, 200, 'local verification needs no store')
})
