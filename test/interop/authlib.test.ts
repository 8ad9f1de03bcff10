import { test } from 'tap'
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { decodeJwt } from '../support/app.js'
import { startRedis } from '../support/redis.js'
import { ACCESS_TOKEN_TTL, GATEWAY, GATEWAY_SECRET, issueOverSocket, startRotor } from '../support/oauth.js'

/**
 * Python's Authlib, unmodified: `OAuth2Session.refresh_token`, `revoke_token` and
 * `introspect_token` (test/fixtures/authlib/client.py) against a Rotor listening on a real socket,
 * its endpoints read from the RFC 8414 document.
 *
 * Debian's Python is used on purpose: `python3` on PATH may be another one without the packages.
 * Without them this file fails (it never skips): CI installs them (see .ci/run).
 */
const PYTHON = process.env['AUTHLIB_PYTHON'] ?? '/usr/bin/python3'
const SCRIPT = fileURLToPath(new URL('../fixtures/authlib/client.py', import.meta.url))
const APT = 'apt-get install -y python3-authlib python3-requests'

/** One line the script printed: a step, whether the client call returned, and what it gave or raised. */
interface Step {
  step: string
  ok: boolean
  token?: Record<string, unknown>
  status?: number
  body?: unknown
  www_authenticate?: string | null
  retry_after?: string | null
  raised?: string
  error?: string
  description?: string
  [field: string]: unknown
}

interface Run { code: number | null, stderr: string, steps: Step[], step: (name: string) => Step }

/** The environment of the Python child: no pyenv or virtualenv leaking into Debian's interpreter. */
function pythonEnv (extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, PYTHONDONTWRITEBYTECODE: '1', PYTHONUNBUFFERED: '1' }
  for (const name of ['PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV']) delete env[name]
  return { ...env, ...extra }
}

/** Runs Python asynchronously (the Rotor it calls lives in this process); resolves whatever its exit. */
async function python (args: string[], env: Record<string, string> = {}): Promise<{ code: number | null, stdout: string, stderr: string }> {
  return await new Promise((resolve, reject) => {
    execFile(PYTHON, args, { env: pythonEnv(env), encoding: 'utf8', timeout: 60_000 }, (error, stdout, stderr) => {
      if (error !== null && typeof error.code === 'string') {
        reject(new Error(`cannot run ${PYTHON}: ${error.message}. Install Debian's packages: ${APT}`))
        return
      }
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : null, stdout, stderr })
    })
  })
}

/** Runs one scenario of the script against `issuer`; its JSON lines, by step name. */
async function authlib (scenario: string, issuer: string, env: Record<string, string> = {}): Promise<Run> {
  const { code, stdout, stderr } = await python([SCRIPT, scenario], {
    ROTOR_ISSUER: issuer, ROTOR_CLIENT_ID: GATEWAY, ROTOR_CLIENT_SECRET: GATEWAY_SECRET, ...env
  })
  const steps = stdout.split('\n').filter((line) => line !== '').map((line) => JSON.parse(line) as Step)
  const step = (name: string): Step => {
    const found = steps.find((s) => s.step === name)
    if (found === undefined) throw new Error(`the script printed no step "${name}" (exit ${String(code)}):\n${stdout}\n${stderr}`)
    return found
  }
  return { code, stderr, steps, step }
}

const sid = (token: unknown): unknown => decodeJwt(String(token)).payload['sid']

test('Authlib and requests are installed under Debian\'s Python', async (t) => {
  const result = await python(['-c', [
    'import json, importlib.metadata as m',
    'import authlib, requests',
    'from authlib.integrations.requests_client import OAuth2Session',
    'print(json.dumps({n: m.version(n) for n in ["Authlib", "requests"]}))'
  ].join('\n')])
  if (result.code !== 0) throw new Error(`Authlib or requests is missing from ${PYTHON}: ${APT}\n${result.stderr}`)
  const versions = JSON.parse(result.stdout) as Record<string, string>
  t.comment(`authlib stack: ${JSON.stringify(versions)}`)
  t.match(versions, { Authlib: /^\d/, requests: /^\d/ })
})

test('the script reads the endpoints from Rotor\'s RFC 8414 document; Authlib\'s own checks refuse only the empty response_types_supported', async (t) => {
  const rotor = await startRotor(t)
  const run = await authlib('discover', rotor.issuer, { AUTHLIB_INSECURE_TRANSPORT: '1' })
  t.equal(run.code, 0, run.stderr)
  t.match(run.step('discovery').metadata, {
    issuer: rotor.issuer,
    token_endpoint: `${rotor.issuer}/oauth2/token`,
    revocation_endpoint: `${rotor.issuer}/oauth2/revoke`,
    introspection_endpoint: `${rotor.issuer}/oauth2/introspect`
  })
  // Known divergence, not a failure of the flows below: RFC 8414 §2 makes response_types_supported
  // a REQUIRED JSON array, and Rotor has no authorization endpoint, so it publishes []; Authlib's
  // AuthorizationServerMetadata.validate() tests `if not value` and calls [] missing. OAuth2Session
  // never runs that validator; an app that does would refuse Rotor's document.
  t.same(run.step('validation').refused, { response_types_supported: '"response_types_supported" is required' },
    'every other member passes Authlib\'s RFC 8414 checks')
})

test('Authlib\'s OAuth2Session.refresh_token rotates: a new refresh token of the same session', async (t) => {
  const rotor = await startRotor(t)
  const pair = await issueOverSocket(rotor)
  const run = await authlib('rotate', rotor.issuer, { ROTOR_REFRESH_TOKEN: pair.refresh_token })
  t.equal(run.code, 0, run.stderr)
  const first = run.step('refresh')
  t.equal(first.ok, true, 'the refresh grant')
  const token = first.token ?? {}
  t.equal(token['token_type'], 'Bearer')
  t.not(token['refresh_token'], pair.refresh_token, 'a new refresh token')
  t.equal(sid(token['refresh_token']), sid(pair.refresh_token), 'of the same session')
  t.match(decodeJwt(String(token['access_token'])).payload, { sub: 'alice', iss: rotor.issuer, sid: sid(pair.refresh_token) })
  const expiresIn = token['expires_in']
  t.ok(typeof expiresIn === 'number' && expiresIn > ACCESS_TOKEN_TTL - 10 && expiresIn <= ACCESS_TOKEN_TTL, `expires_in ${String(expiresIn)} is about ACCESS_TOKEN_TTL`)
  t.ok(typeof token['expires_at'] === 'number' && Math.abs(token['expires_at'] - (Date.now() / 1000 + ACCESS_TOKEN_TTL)) < 30, 'Authlib derives expires_at from it')

  const second = run.step('refresh again').token ?? {}
  t.not(second['refresh_token'], token['refresh_token'], 'the rotated token rotates again')
  t.equal(sid(second['refresh_token']), sid(pair.refresh_token), 'still the same session')
})

test('Authlib\'s introspect_token, authenticated by HTTP Basic as the backend: active, then inactive once revoke_token ended the session', async (t) => {
  const rotor = await startRotor(t)
  const pair = await issueOverSocket(rotor, 'bob')
  const run = await authlib('introspect', rotor.issuer, { ROTOR_REFRESH_TOKEN: pair.refresh_token, ROTOR_ACCESS_TOKEN: pair.access_token })
  t.equal(run.code, 0, run.stderr)
  t.match(run.step('access token'), { status: 200, body: { active: true, sub: 'bob', token_type: 'Bearer', iss: rotor.issuer, sid: sid(pair.access_token) } })
  t.match(run.step('refresh token'), { status: 200, body: { active: true, sub: 'bob', token_type: 'refresh_token', client_id: GATEWAY } })
  t.match(run.step('revoke'), { status: 200, body: '' }, 'RFC 7009: 200 and no body')
  t.same(run.step('access token after').body, { active: false }, 'the session\'s access token')
  t.same(run.step('refresh token after').body, { active: false }, 'the revoked refresh token')
  t.match(run.step('wrong secret'), { status: 401, body: { error: 'invalid_client' }, www_authenticate: 'Basic realm="rotor"' }, 'a wrong secret')
})

test('Authlib\'s revoke_token (a public client) ends the session: the next refresh_token raises OAuthError invalid_grant', async (t) => {
  const rotor = await startRotor(t)
  const pair = await issueOverSocket(rotor)
  const run = await authlib('revoke', rotor.issuer, { ROTOR_REFRESH_TOKEN: pair.refresh_token })
  t.equal(run.code, 0, run.stderr)
  t.equal(run.step('refresh').ok, true, 'a rotation first')
  t.match(run.step('revoke'), { ok: true, status: 200 })
  t.match(run.step('refresh after'), { ok: false, raised: 'OAuthError', error: 'invalid_grant' }, 'the current refresh token is refused')
  t.same(run.step('introspect after').body, { active: false }, 'and its access token is inactive')
  t.match(run.step('revoke garbage'), { ok: true, status: 200 }, 'RFC 7009 §2.2: an invalid token is no error')
})

test('a reuse through Authlib is detected and revokes the session (REFRESH_REUSE_GRACE=0)', async (t) => {
  const rotor = await startRotor(t, { REFRESH_REUSE_GRACE: '0' })
  const pair = await issueOverSocket(rotor)
  const run = await authlib('reuse', rotor.issuer, { ROTOR_REFRESH_TOKEN: pair.refresh_token })
  t.equal(run.code, 0, run.stderr)
  const rotated = run.step('A to B')
  t.equal(rotated.ok, true, 'A rotated to B')
  t.not(rotated.token?.['refresh_token'], pair.refresh_token)
  t.match(run.step('A again'), { ok: false, raised: 'OAuthError', error: 'invalid_grant', description: /already used/ }, 'A again is refused as a reuse')
  t.match(run.step('B'), { ok: false, raised: 'OAuthError', error: 'invalid_grant' }, 'and B is refused too: the session was revoked')
  t.same(run.step('B\'s access token').body, { active: false }, 'the access token from A\'s rotation is inactive')
})

test('with Redis down, Authlib raises requests\' HTTPError 503 (not an OAuthError: nothing to sign out for), with Retry-After', async (t) => {
  const redis = await startRedis(t)
  const rotor = await startRotor(t, { REDIS_URL: redis.url })
  const pair = await issueOverSocket(rotor)
  await redis.stop()
  const run = await authlib('outage', rotor.issuer, { ROTOR_REFRESH_TOKEN: pair.refresh_token })
  t.equal(run.code, 0, run.stderr)
  t.match(run.step('refresh'), { ok: false, raised: 'HTTPError', status: 503, body: { error: 'temporarily_unavailable' }, retry_after: /^\d+$/ })
})
