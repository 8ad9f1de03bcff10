import { test } from 'tap'
import { readFile } from 'node:fs/promises'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { Browser, BrowserContext, Page } from 'playwright-core'
import { launchChromium } from '../support/browser.js'
import { API_KEY, build, decodeJwt, introspectToken, listen, type Pair } from '../support/app.js'
import { readBody } from '../support/net.js'
import type { Test } from '../support/tap.js'

// A real browser against a real Rotor: Debian's Chromium, driven by playwright-core, loads a
// small "Next.js-like" site on http://localhost:3000 (the origin CORS_ORIGINS allows by default).
// The site's own backend logs the user in by calling Rotor's issue route with the API key; the
// page then talks to Rotor cross-origin with fetch, as a front end written for SimpleJWT does.

const SITE_PORT = 3000
const SITE = `http://localhost:${SITE_PORT}`
const PASSWORD = 'correct horse battery staple'
const ACCESS_TOKEN_TTL = '3s'
const PAGE_HTML = new URL('../fixtures/browser/app.html', import.meta.url)

interface Answer { status: number, body: Record<string, unknown> }
interface MeAnswer extends Answer { refreshed: boolean, firstStatus?: number, refresh?: Answer }
interface Tokens { access: string, refresh: string }

/** What test/fixtures/browser/app.html puts on `window.app`. */
interface PageApp {
  login: (username: string, password: string) => Promise<Answer>
  tokens: () => Tokens | null
  waitForAccessExpiry: () => Promise<number>
  accessStillWithinExp: () => boolean
  verify: (token?: string) => Promise<Answer>
  refresh: () => Promise<Answer>
  refreshV1: () => Promise<Answer>
  me: () => Promise<MeAnswer>
  logout: () => Promise<Answer>
  blacklist: () => Promise<Answer>
}

type Method = keyof PageApp

/** Calls a method of the page's auth code inside the browser and brings back its plain answer. */
async function call<M extends Method> (page: Page, method: M, ...args: Parameters<PageApp[M]>): Promise<Awaited<ReturnType<PageApp[M]>>> {
  const result: unknown = await page.evaluate(async ([name, params]) => {
    const app = (globalThis as unknown as { app: Record<string, (...values: unknown[]) => unknown> }).app
    const method = app[name]
    if (method === undefined) throw new Error(`the page has no app.${name}`)
    return await method(...params)
  }, [method, args] as [string, unknown[]])
  return result as Awaited<ReturnType<PageApp[M]>>
}

/** What a fetch inside the page came to: a readable answer, or the error it rejected with. */
interface FetchOutcome { status?: number, type?: string, text?: string, error?: { name: string, message: string } }

/** Waits (at most two seconds) for a condition on events the browser reports asynchronously. */
async function until (condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 2000
  while (!condition() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
}

function sendJson (response: ServerResponse, status: number, body: unknown): void {
  response.writeHead(status, { 'content-type': 'application/json' })
  response.end(JSON.stringify(body))
}

/**
 * The site: the page, and its backend. POST /login "authenticates" the user and asks Rotor for a
 * pair with the API key, server-side; GET /api/me is a protected action that checks the access
 * token with Rotor's introspection (API key again). Answers are shaped as Django + SimpleJWT
 * shapes them, since the page is a SimpleJWT front end.
 */
function site (rotor: string, html: string) {
  const rotorCall = async (path: string, payload: unknown): Promise<Response> => fetch(`${rotor}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify(payload)
  })
  return async (request: IncomingMessage, response: ServerResponse): Promise<void> => {
    const path = new URL(request.url ?? '/', 'http://site').pathname
    if (request.method === 'GET' && path === '/') {
      response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' })
      response.end(html)
    } else if (request.method === 'POST' && path === '/login') {
      const body = JSON.parse(await readBody(request)) as { username?: unknown, password?: unknown }
      if (typeof body.username !== 'string' || body.password !== PASSWORD) {
        sendJson(response, 401, { detail: 'No active account found with the given credentials' })
        return
      }
      const issued = await rotorCall('/v1/tokens', { sub: body.username })
      if (issued.status !== 200) {
        sendJson(response, 502, { detail: `Rotor answered ${issued.status}` })
        return
      }
      const pair = await issued.json() as Pair
      sendJson(response, 200, { access: pair.access_token, refresh: pair.refresh_token })
    } else if (request.method === 'GET' && path === '/api/me') {
      const token = /^Bearer (.+)$/.exec(request.headers.authorization ?? '')?.[1] ?? ''
      const state = await (await rotorCall('/v1/tokens/introspect', { token })).json() as Record<string, unknown>
      if (state['active'] !== true || state['token_type'] !== 'access') {
        sendJson(response, 401, { detail: 'Given token not valid for any token type', code: 'token_not_valid' })
        return
      }
      sendJson(response, 200, { sub: state['sub'] })
    } else {
      sendJson(response, 404, { detail: 'Not found.' })
    }
  }
}

/** Serves the site on 127.0.0.1:port (0: any free port); answers the port. */
async function serve (t: Test, port: number, handler: ReturnType<typeof site>): Promise<number> {
  const server = createServer((request, response) => {
    handler(request, response).catch((error: unknown) => { sendJson(response, 500, { detail: String(error) }) })
  })
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, '127.0.0.1', () => { server.off('error', reject); resolve() })
    })
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EADDRINUSE') {
      throw new Error(`port ${port} on 127.0.0.1 is taken: the browser test serves its page on ${SITE}, ` +
        'the origin CORS_ORIGINS allows by default, and will not pick another port. Stop whatever listens there.')
    }
    throw error
  }
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  const address = server.address()
  if (address === null || typeof address === 'string') throw new Error('no address')
  return address.port
}

/** A fresh browser profile with one page open on `url`, closed with the test. */
async function open (t: Test, browser: Browser, url: string, rotor: string): Promise<{ context: BrowserContext, page: Page }> {
  const context = await browser.newContext()
  t.teardown(async () => { await context.close() })
  const page = await context.newPage()
  page.setDefaultTimeout(10_000)
  await page.goto(url)
  const served = await page.locator('meta[name="rotor-url"]').getAttribute('content')
  if (served !== rotor) throw new Error(`${url} is not the test's page (another server answers for localhost there?)`)
  return { context, page }
}

test('a real browser logs in, refreshes, survives an access-token expiry and logs out through Rotor with CORS', async (t) => {
  const browser = await launchChromium(t)
  const app = await build(t, { ACCESS_TOKEN_TTL, CORS_ORIGINS: SITE })
  const rotor = await listen(app)
  const html = (await readFile(PAGE_HTML, 'utf8')).replaceAll('%ROTOR_URL%', rotor)
  await serve(t, SITE_PORT, site(rotor, html))

  t.test('the page logs in through its own backend, and the API key never reaches the browser', async (t) => {
    const { context, page } = await open(t, browser, SITE, rotor)
    const seen: Array<Promise<string>> = []
    context.on('request', (request) => {
      seen.push(request.allHeaders().then((headers) => `${request.url()} ${JSON.stringify(headers)} ${request.postData() ?? ''}`))
    })
    context.on('response', (response) => {
      seen.push(Promise.all([response.allHeaders(), response.text().catch(() => '')]).then(([headers, text]) => `${JSON.stringify(headers)} ${text}`))
    })
    const refused = await call(page, 'login', 'alice', 'wrong password')
    t.equal(refused.status, 401, 'a wrong password gets no pair')
    t.equal(await call(page, 'tokens'), null)
    const login = await call(page, 'login', 'alice', PASSWORD)
    t.equal(login.status, 200)
    t.same(Object.keys(login.body).sort(), ['access', 'refresh'], 'SimpleJWT\'s TokenObtainPairView shape')
    t.equal(decodeJwt(String(login.body['access'])).payload['sub'], 'alice')
    t.equal(await page.locator('#status').textContent(), 'Signed in as alice')
    const me = await call(page, 'me')
    t.same({ status: me.status, body: me.body, refreshed: me.refreshed }, { status: 200, body: { sub: 'alice' }, refreshed: false }, 'the protected action accepts the access token')
    const everything = (await Promise.all(seen)).join('\n') + await page.content()
    t.ok(seen.length >= 4, 'the requests and answers were observed')
    t.notOk(everything.includes(API_KEY), 'no request, answer or page the browser saw holds the API key')
  })

  t.test('the page refreshes through Rotor with fetch and CORS on both refresh routes, and each new access token verifies', async (t) => {
    const { page } = await open(t, browser, SITE, rotor)
    const rotorAnswers: Array<{ url: string, status: number, allowOrigin: string | undefined }> = []
    page.on('response', (response) => {
      if (response.url().startsWith(rotor)) rotorAnswers.push({ url: response.url(), status: response.status(), allowOrigin: response.headers()['access-control-allow-origin'] })
    })
    await call(page, 'login', 'bob', PASSWORD)
    const first = await call(page, 'tokens')
    const verified = await call(page, 'verify')
    t.same(verified, { status: 200, body: {} }, 'SimpleJWT\'s verify answers {} for an active access token')

    const simple = await call(page, 'refresh')
    t.equal(simple.status, 200)
    t.same(Object.keys(simple.body).sort(), ['access', 'refresh'], 'SimpleJWT\'s {access, refresh}')
    const second = await call(page, 'tokens')
    t.not(second?.refresh, first?.refresh, 'the refresh token rotated')
    t.equal(decodeJwt(String(second?.access)).payload['sid'], decodeJwt(String(first?.access)).payload['sid'], 'same session')
    t.same(await call(page, 'verify'), { status: 200, body: {} })

    const v1 = await call(page, 'refreshV1')
    t.equal(v1.status, 200)
    t.match(v1.body, { token_type: 'Bearer', expires_in: Number, refresh_expires_in: Number })
    const third = await call(page, 'tokens')
    t.not(third?.refresh, second?.refresh, 'rotated again, on Rotor\'s own route')
    t.same(await call(page, 'verify'), { status: 200, body: {} })
    t.equal((await call(page, 'me')).status, 200)

    await until(() => rotorAnswers.length >= 5)
    t.equal(rotorAnswers.length, 5, 'every call reached Rotor from the page')
    for (const answer of rotorAnswers) t.equal(answer.allowOrigin, SITE, `${answer.url} allows ${SITE}`)
  })

  t.test('the page survives an access-token expiry: verify and the protected action answer 401, a SimpleJWT refresh brings them back', async (t) => {
    const { page } = await open(t, browser, SITE, rotor)
    await call(page, 'login', 'carol', PASSWORD)
    t.same(await call(page, 'verify'), { status: 200, body: {} })
    const before = await call(page, 'tokens')
    const waited = await call(page, 'waitForAccessExpiry')
    t.ok(waited > 0 && waited < 5000, `waited ${waited} ms for the access token to expire`)

    const expired = await call(page, 'verify')
    t.same(expired, { status: 401, body: { detail: 'Token is invalid or expired', code: 'token_not_valid' } }, 'the page reads SimpleJWT\'s 401 for the expired token')

    const me = await call(page, 'me')
    t.equal(me.firstStatus, 401, 'the backend refused the expired access token')
    t.equal(me.refreshed, true, 'the interceptor refreshed through /api/auth/token/refresh/')
    t.same({ status: me.status, body: me.body }, { status: 200, body: { sub: 'carol' } }, 'and the retried action succeeded')
    const after = await call(page, 'tokens')
    t.not(after?.access, before?.access)
    t.not(after?.refresh, before?.refresh)
    t.same(await call(page, 'verify'), { status: 200, body: {} }, 'the new access token verifies')
    t.same(await call(page, 'verify', String(before?.access)), { status: 401, body: { detail: 'Token is invalid or expired', code: 'token_not_valid' } }, 'the old one still does not')
  })

  t.test('logging out with revoke ends the session, and the page reads the 401 bodies that follow', async (t) => {
    const { page } = await open(t, browser, SITE, rotor)
    const errorAnswers: Array<string | undefined> = []
    page.on('response', (response) => {
      if (response.url().startsWith(rotor) && response.status() === 401) errorAnswers.push(response.headers()['access-control-allow-origin'])
    })
    await call(page, 'login', 'dave', PASSWORD)
    t.equal((await call(page, 'refresh')).status, 200)
    t.same(await call(page, 'logout'), { status: 200, body: {} }, 'RFC 7009 revoke answers {}')

    t.same(await call(page, 'refresh'), { status: 401, body: { detail: 'Token is blacklisted', code: 'token_not_valid' } }, 'SimpleJWT\'s refresh: blacklisted')
    const v1 = await call(page, 'refreshV1')
    t.equal(v1.status, 401)
    t.match(v1.body, { statusCode: 401, code: 'token_revoked', error: 'Unauthorized', message: String }, 'Rotor\'s refresh: token_revoked, readable by the page')
    t.ok(await call(page, 'accessStillWithinExp'), 'the access token has not expired yet')
    t.same(await call(page, 'verify'), { status: 401, body: { detail: 'Token is invalid or expired', code: 'token_not_valid' } }, 'its access token is refused too')
    const me = await call(page, 'me')
    t.equal(me.status, 401, 'the protected action is refused and the interceptor cannot refresh')
    t.match(me.refresh, { status: 401, body: { code: 'token_not_valid' } })
    t.same(await call(page, 'logout'), { status: 200, body: {} }, 'logging out twice is still 200 (RFC 7009)')
    await until(() => errorAnswers.length >= 4)
    t.equal(errorAnswers.length, 4, 'two refreshes, a verify and the interceptor\'s refresh were refused')
    t.ok(errorAnswers.every((allowOrigin) => allowOrigin === SITE), 'every 401 carried Access-Control-Allow-Origin')
  })

  t.test('logging out with SimpleJWT\'s blacklist route ends the session too', async (t) => {
    const { page } = await open(t, browser, SITE, rotor)
    await call(page, 'login', 'erin', PASSWORD)
    t.same(await call(page, 'blacklist'), { status: 200, body: {} })
    t.same(await call(page, 'refresh'), { status: 401, body: { detail: 'Token is blacklisted', code: 'token_not_valid' } })
    t.match((await call(page, 'refreshV1')).body, { code: 'token_revoked' })
    t.same(await call(page, 'blacklist'), { status: 401, body: { detail: 'Token is invalid or expired', code: 'token_not_valid' } }, 'a second blacklist: SimpleJWT\'s 401')
  })

  t.test('a "your devices" page lists the user\'s sessions and ends another device, cross-origin with the access token', async (t) => {
    const laptop = await open(t, browser, SITE, rotor)
    const phone = await open(t, browser, SITE, rotor)
    await call(phone.page, 'login', 'grace', PASSWORD)
    await call(laptop.page, 'login', 'grace', PASSWORD)
    const phoneTokens = await call(phone.page, 'tokens')
    // An Authorization header makes every one of these calls preflighted: that fetch reads the
    // answers at all proves CORS allowed the method and the header (a refusal rejects, see below).
    const devices = async (method: string, path: string): Promise<Answer> => laptop.page.evaluate(async ([rotorUrl, verb, route]) => {
      const app = (globalThis as unknown as { app: { tokens: () => { access: string } } }).app
      const response = await fetch(`${rotorUrl}${route}`, { method: verb, headers: { authorization: `Bearer ${app.tokens().access}` } })
      return { status: response.status, body: await response.json() as Record<string, unknown> }
    }, [rotor, method, path] as const)

    const listed = await devices('GET', '/v1/sessions')
    t.equal(listed.status, 200, 'the page reads its sessions')
    const sessions = listed.body['sessions'] as Array<{ sid: string, current: boolean }>
    const phoneSid = String(decodeJwt(String(phoneTokens?.refresh)).payload['sid'])
    t.same(sessions.map((session) => session.current), [true, false], 'this one (newest) marked current')
    t.equal(sessions[1]?.sid, phoneSid, 'the other is the phone')
    t.same(await devices('DELETE', `/v1/sessions/${phoneSid}`), { status: 200, body: {} }, 'the page ends the phone\'s session')
    t.same(await call(phone.page, 'refresh'), { status: 401, body: { detail: 'Token is blacklisted', code: 'token_not_valid' } }, 'the phone is logged out')
    t.same(await devices('DELETE', `/v1/sessions/${phoneSid}`), {
      status: 404, body: { statusCode: 404, code: 'not_found', error: 'Not Found', message: 'no such session: unknown, ended or expired' }
    }, 'a second time: the page reads the 404')
    t.same(await devices('POST', '/v1/sessions/revoke-others'), { status: 200, body: {} }, 'log out my other devices')
    t.equal((await call(laptop.page, 'refresh')).status, 200, 'this device goes on')
  })

  t.test('a page served on another port is refused by CORS: fetch rejects with a TypeError and cannot read Rotor\'s answer', async (t) => {
    const otherPort = await serve(t, 0, site(rotor, html))
    const other = `http://localhost:${otherPort}`
    const { context, page } = await open(t, browser, other, rotor)
    const cdp = await context.newCDPSession(page)
    const corsErrors: Array<{ url: string, corsError: string | undefined }> = []
    const urls = new Map<string, string>()
    cdp.on('Network.requestWillBeSent', (event) => { urls.set(event.requestId, event.request.url) })
    cdp.on('Network.loadingFailed', (event) => { corsErrors.push({ url: urls.get(event.requestId) ?? '', corsError: event.corsErrorStatus?.corsError }) })
    await cdp.send('Network.enable')
    const failed: Array<{ url: string, error: string | undefined }> = []
    page.on('requestfailed', (request) => { failed.push({ url: request.url(), error: request.failure()?.errorText }) })

    const login = await call(page, 'login', 'mallory', PASSWORD)
    t.equal(login.status, 200, 'its own backend still logs in (server-side, no CORS involved)')
    const tokens = await call(page, 'tokens')

    const attempt = async (action: 'refresh' | 'refreshV1' | 'verify' | 'logout'): Promise<FetchOutcome> => page.evaluate(async (name) => {
      const app = (globalThis as unknown as { app: Record<string, () => Promise<unknown>> }).app
      try {
        const answer = await app[name]?.()
        return { text: JSON.stringify(answer) }
      } catch (error) {
        return { error: { name: (error as Error).name, message: (error as Error).message } }
      }
    }, action)
    for (const action of ['refresh', 'refreshV1', 'verify', 'logout'] as const) {
      t.same(await attempt(action), { error: { name: 'TypeError', message: 'Failed to fetch' } }, `${action}: fetch rejects with a TypeError`)
    }

    // A "simple" request needs no preflight: it reaches Rotor, but the page still cannot read the answer.
    const simple: FetchOutcome = await page.evaluate(async (url) => {
      try {
        const response = await fetch(url, { method: 'POST', body: '{"refresh_token": "x"}' })
        return { status: response.status, text: await response.text() }
      } catch (error) {
        return { error: { name: (error as Error).name, message: (error as Error).message } }
      }
    }, `${rotor}/v1/tokens/refresh`)
    t.same(simple, { error: { name: 'TypeError', message: 'Failed to fetch' } }, 'a request without preflight: its answer is withheld')
    // Chromium reports a failure over CDP a moment after the page's fetch has rejected.
    await until(() => failed.length >= 5 && corsErrors.length >= 5)
    t.same(failed.map((entry) => entry.error), ['net::ERR_FAILED', 'net::ERR_FAILED', 'net::ERR_FAILED', 'net::ERR_FAILED', 'net::ERR_FAILED'], 'Chromium failed every cross-origin request')
    const refusals = corsErrors.filter((entry) => entry.url.startsWith(rotor)).map((entry) => entry.corsError)
    t.same(refusals, ['PreflightMissingAllowOriginHeader', 'PreflightMissingAllowOriginHeader', 'PreflightMissingAllowOriginHeader', 'PreflightMissingAllowOriginHeader', 'MissingAllowOriginHeader'],
      'the preflights were not approved (no Access-Control-Allow-Origin), nor was the simple request\'s answer')

    // mode: 'no-cors' gets at most an opaque answer (or none, where Cross-Origin-Resource-Policy forbids it).
    const opaque: FetchOutcome = await page.evaluate(async (url) => {
      try {
        const response = await fetch(url, { method: 'POST', mode: 'no-cors', body: '{"refresh_token": "x"}' })
        return { status: response.status, type: response.type, text: await response.text() }
      } catch (error) {
        return { error: { name: (error as Error).name, message: (error as Error).message } }
      }
    }, `${rotor}/v1/tokens/refresh`)
    t.ok(opaque.error?.name === 'TypeError' || (opaque.type === 'opaque' && opaque.status === 0 && opaque.text === ''),
      `mode: no-cors reads no status and no body either: ${JSON.stringify(opaque)}`)

    const state = await introspectToken(app, String(tokens?.refresh))
    t.equal(state['active'], true, 'the refused refresh and logout never reached Rotor: the refresh token is still live')
  })
})
