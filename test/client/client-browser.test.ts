import { test } from 'tap'
import { readFile } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Browser, BrowserContext, Page } from 'playwright-core'
import { launchChromium } from '../support/browser.js'
import { API_KEY, build, decodeJwt, introspectToken, listen, type Pair } from '../support/app.js'
import { metric } from '../support/metrics.js'
import { readBody } from '../support/net.js'
import { startRedis } from '../support/redis.js'
import { dpopKey, proofFor } from '../support/dpop.js'
import type { Test } from '../support/tap.js'

// @rotor/client in real Chromium tabs against a real Rotor and Redis, with REFRESH_REUSE_GRACE=0:
// any two refreshes of one token are a reuse, and a reuse ends the session. Tabs of one browser
// context share IndexedDB, BroadcastChannel and Web Locks, as a user's tabs do. The same storm is
// run with the naive client most front ends have (each tab refreshing on its own) for comparison.

const PAGE_HTML = new URL('../fixtures/browser/client-tab.html', import.meta.url)
const CLIENT_DIST = new URL('../../client/dist/', import.meta.url)
const ACCESS_TOKEN_TTL = 3
const TABS = 6
const EVERY_MS = 100

/** What client-tab.html's `tab.seen()` answers. */
interface Seen {
  calls: number
  tokens: number
  nulls: number
  expired: number
  errors: string[]
  signedOut: Array<{ reason: string, at: number }>
  refreshes: number
}

type Kind = 'rotor' | 'rotor-dpop' | 'naive'

/** The site the tabs load: the page, the client package's build, and a login that asks Rotor for a pair. */
async function site (t: Test): Promise<{ origin: string, use: (rotor: string) => void }> {
  const html = await readFile(PAGE_HTML, 'utf8')
  let rotor = ''
  const server = createServer((request: IncomingMessage, response: ServerResponse) => {
    void (async () => {
      const path = new URL(request.url ?? '/', 'http://site').pathname
      const file = /^\/client\/([a-z]+\.js)$/.exec(path)?.[1]
      if (request.method === 'GET' && path === '/') {
        response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(html.replaceAll('%ROTOR_URL%', rotor))
      } else if (request.method === 'GET' && file !== undefined) {
        response.writeHead(200, { 'content-type': 'text/javascript' }).end(await readFile(new URL(file, CLIENT_DIST)))
      } else if (request.method === 'POST' && path === '/login') {
        // The login form's fields, passed on: the subject, and a DPoP key's thumbprint when the tab sends one.
        const { sub, dpop_jkt: jkt } = JSON.parse(await readBody(request)) as { sub: string, dpop_jkt?: string }
        const issued = await fetch(`${rotor}/v1/tokens`, {
          method: 'POST', headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' }, body: JSON.stringify({ sub, dpop_jkt: jkt })
        })
        response.writeHead(issued.status, { 'content-type': 'application/json' }).end(await issued.text())
      } else {
        response.writeHead(404).end()
      }
    })().catch((error: unknown) => { response.writeHead(500).end(String(error)) })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.closeAllConnections(); server.close() })
  return { origin: `http://localhost:${(server.address() as AddressInfo).port}`, use: (url) => { rotor = url } }
}

/** Rotor (grace 0, short access tokens) on a Redis of the test's own that keeps its data when killed. */
async function rotorFor (t: Test, origin: string, accessTokenTtl = ACCESS_TOKEN_TTL) {
  const redis = await startRedis(t, ['--appendonly', 'yes', '--appendfsync', 'always'])
  const app = await build(t, { REDIS_URL: redis.url, ACCESS_TOKEN_TTL: `${accessTokenTtl}s`, REFRESH_REUSE_GRACE: '0', CORS_ORIGINS: origin })
  const base = await listen(app)
  return {
    app,
    base,
    redis,
    rotations: async () => await metric(base, 'rotor_tokens_refreshed_total{retry="false"}'),
    repeats: async () => await metric(base, 'rotor_tokens_refreshed_total{retry="true"}'),
    reuses: async () => await metric(base, 'rotor_refresh_reuse_total{enforced="true"}')
  }
}

/** Calls `window.tab[method]` in the page. */
async function call<T> (page: Page, method: string, ...args: unknown[]): Promise<T> {
  return await page.evaluate(async ([name, params]) => {
    const tab = (globalThis as unknown as { tab: Record<string, (...values: unknown[]) => unknown> }).tab
    return await tab[name as string]?.(...(params as unknown[]))
  }, [method, args] as const) as T
}

/**
 * A user's browser: one context (one profile), `count` tabs of the site. The first tab logs in;
 * the others open afterwards, as tabs a user opens on a site they are signed in to.
 */
async function tabs (t: Test, browser: Browser, origin: string, kind: Kind, count: number): Promise<{ context: BrowserContext, pages: Page[], pair: Pair }> {
  const context = await browser.newContext()
  t.teardown(async () => { await context.close() })
  const open = async (): Promise<Page> => {
    const page = await context.newPage()
    page.setDefaultTimeout(20_000)
    await page.goto(`${origin}/?client=${kind}`)
    await page.waitForFunction(() => 'tab' in globalThis)
    return page
  }
  const first = await open()
  const pair = await call<Pair>(first, 'login', 'alice')
  const pages = [first]
  for (let i = 1; i < count; i++) pages.push(await open())
  return { context, pages, pair }
}

/** Rotor's answers to refresh requests the tabs made, by status. */
function refreshAnswers (context: BrowserContext, rotor: string): Map<number, number> {
  const statuses = new Map<number, number>()
  context.on('response', (response) => {
    if (response.url() === `${rotor}/v1/tokens/refresh` && response.request().method() === 'POST') {
      statuses.set(response.status(), (statuses.get(response.status()) ?? 0) + 1)
    }
  })
  return statuses
}

async function seenBy (pages: Page[]): Promise<Seen[]> {
  return await Promise.all(pages.map(async (page) => await call<Seen>(page, 'seen')))
}

test('@rotor/client in six Chromium tabs, against Rotor with REFRESH_REUSE_GRACE=0', async (t) => {
  const browser = await launchChromium(t)
  const { origin, use } = await site(t)

  t.test('a 30 s storm: every tab asks for a token every 100 ms; one tab is frozen through several rotations, and Redis is killed for 5 s; nobody is signed out, and each expiry costs one refresh', async (t) => {
    const rotor = await rotorFor(t, origin)
    use(rotor.base)
    const { context, pages, pair } = await tabs(t, browser, origin, 'rotor', TABS)
    const answers = refreshAnswers(context, rotor.base)
    const frozen = pages[TABS - 1] as Page
    const started = Date.now()
    for (const page of pages) await call(page, 'start', EVERY_MS)

    await sleep(4000)
    // The tab stops asking (a tab frozen while it holds the session's lock would hold the others
    // back until it wakes), goes to the background, and is frozen as Chromium freezes such tabs.
    await call(frozen, 'stop')
    await pages[0]?.bringToFront()
    const cdp = await context.newCDPSession(frozen)
    await cdp.send('Page.setWebLifecycleState', { state: 'frozen' })
    const rotationsAtFreeze = await rotor.rotations()
    await sleep(8000)
    const rotationsWhileFrozen = await rotor.rotations() - rotationsAtFreeze
    await cdp.send('Page.setWebLifecycleState', { state: 'active' })
    // The others go on rotating (every 1.5 s) while these are read: the woken tab's token must be
    // the one current just before it was asked, or a later one, never the one it was frozen with.
    const current = await call<string | null>(pages[0] as Page, 'token')
    const woke = await call<string | null>(frozen, 'token')
    const iat = (token: string | null): number => Number(decodeJwt(String(token)).payload['iat'])
    t.ok(rotationsWhileFrozen >= 3, `the tab was frozen through ${rotationsWhileFrozen} rotations`)
    t.ok(iat(woke) >= iat(current), 'woken, it hands out the current access token: it adopted the pair the others rotated to')
    t.equal(decodeJwt(String(woke)).payload['sid'], decodeJwt(String(current)).payload['sid'], 'of the same session')
    await call(frozen, 'start', EVERY_MS)

    await sleep(4000)
    await rotor.redis.crash()
    const rotationsAtCrash = await rotor.rotations()
    await sleep(5000)
    await rotor.redis.start()
    const rotationsAtRestart = await rotor.rotations()
    await sleep(Math.max(0, started + 30_000 - Date.now()))
    for (const page of pages) await call(page, 'stop')
    const seconds = (Date.now() - started) / 1000

    const seen = await seenBy(pages)
    const rotations = await rotor.rotations()
    t.same(seen.map((tab) => tab.signedOut), seen.map(() => []), 'no tab was signed out')
    t.same(seen.map((tab) => tab.errors), seen.map(() => []), 'no call failed')
    t.same(seen.map((tab) => tab.nulls), seen.map(() => 0), 'every call got a token')
    t.same(seen.map((tab) => tab.expired), seen.map(() => 0), 'never an expired one')
    t.ok(seen.every((tab, index) => tab.calls >= (index === TABS - 1 ? 50 : 100)), `every tab kept asking: ${seen.map((tab) => tab.calls).join(', ')} calls`)
    t.equal(rotationsAtRestart - rotationsAtCrash, 0, 'while Redis was down nothing rotated')
    t.ok((answers.get(503) ?? 0) >= 1, `the tabs met Rotor's 503 meanwhile (${answers.get(503) ?? 0} times), and waited`)
    t.ok(rotations - rotationsAtRestart >= 2, 'refreshes resumed once Redis was back')
    t.equal(answers.get(200), rotations, `Rotor served ${answers.get(200)} refreshes for ${rotations} rotations: one each`)
    t.equal(await rotor.repeats(), 0, 'no refresh token was presented twice')
    t.equal(await rotor.reuses(), 0, 'no reuse')
    // The client counts a token's life from expires_in less a second (exp counts whole seconds),
    // and refreshes at half of it.
    const perExpiry = Math.ceil(seconds / ((ACCESS_TOKEN_TTL - 1) / 2))
    t.ok(rotations <= perExpiry + 2, `${rotations} rotations in ${seconds.toFixed(1)} s: one per expiry (at most ~${perExpiry}, a refresh at half of a ${ACCESS_TOKEN_TTL} s token's life), not one per tab`)
    t.ok(rotations >= 8, 'and they did go on')
    t.equal((await introspectToken(rotor.app, pair.refresh_token))['active'], false, 'the first refresh token was rotated long ago')
    const last = await call<string | null>(pages[0] as Page, 'token')
    t.equal((await introspectToken(rotor.app, String(last)))['active'], true, 'the session is alive')
    t.comment(`@rotor/client storm: ${TABS} tabs, ${seen.reduce((sum, tab) => sum + tab.calls, 0)} getAccessToken calls in ${seconds.toFixed(1)} s, ${rotations} rotations, ${answers.get(200)} refreshes served, ${answers.get(503) ?? 0} answered 503 while Redis was down, 0 sign-outs`)
  })

  t.test('DPoP: a bound session refreshes across six tabs through a Redis crash; its refresh token and key read out of IndexedDB are useless from Node, a captured proof replayed is refused, and nobody is signed out', async (t) => {
    const rotor = await rotorFor(t, origin)
    use(rotor.base)
    const { context, pages } = await tabs(t, browser, origin, 'rotor-dpop', TABS)
    const refreshUrl = `${rotor.base}/v1/tokens/refresh`
    const captured: Array<{ proof: string, body: string }> = []
    context.on('request', (request) => {
      const proof = request.headers()['dpop']
      if (request.url() === refreshUrl && proof !== undefined) captured.push({ proof, body: request.postData() ?? '' })
    })
    const answers = refreshAnswers(context, rotor.base)
    for (const page of pages) await call(page, 'start', EVERY_MS)
    await sleep(5000)

    const loot = await call<{ refresh: string, jwk: Record<string, unknown>, exported: string }>(pages[1] as Page, 'steal')
    t.equal(loot.exported, 'InvalidAccessError', 'the private key cannot be exported from the page')
    t.notOk('d' in loot.jwk, 'only the public key is stored in the clear')
    const withoutKey = await fetch(refreshUrl, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: loot.refresh }) })
    t.equal(withoutKey.status, 401)
    t.equal((await withoutKey.json() as { code: string }).code, 'token_invalid', 'the stolen refresh token alone is refused')
    const thief = await dpopKey()
    const otherKey = await fetch(refreshUrl, {
      method: 'POST', headers: { 'content-type': 'application/json', dpop: await proofFor(thief, { htu: refreshUrl }) }, body: JSON.stringify({ refresh_token: loot.refresh })
    })
    t.equal((await otherKey.json() as { code: string }).code, 'invalid_dpop_proof', 'and with a proof of the thief\'s own key')
    const [replay] = captured
    t.ok(replay !== undefined, `the tabs' refreshes carried proofs (${captured.length} seen)`)
    const replayed = await fetch(refreshUrl, { method: 'POST', headers: { 'content-type': 'application/json', dpop: replay!.proof }, body: replay!.body })
    t.equal(replayed.status, 400)
    t.equal((await replayed.json() as { code: string }).code, 'invalid_dpop_proof', 'a captured request replayed whole: its proof was used')

    // The proofs' records are Redis's too: a crash (the test's Redis keeps its data) is waited out.
    await rotor.redis.crash()
    await sleep(3000)
    await rotor.redis.start()
    const rotationsAtRestart = await rotor.rotations()
    await sleep(4000)
    for (const page of pages) await call(page, 'stop')
    const seen = await seenBy(pages)
    t.ok((answers.get(503) ?? 0) >= 1, `the tabs met Rotor's 503 while Redis was down (${answers.get(503) ?? 0} times), and waited`)
    t.ok(await rotor.rotations() - rotationsAtRestart >= 2, 'refreshes resumed once Redis was back')
    t.same(seen.map((tab) => tab.signedOut), seen.map(() => []), 'nobody was signed out')
    t.same(seen.map((tab) => tab.errors), seen.map(() => []), 'no call failed')
    t.same(seen.map((tab) => tab.expired), seen.map(() => 0), 'never an expired token')
    const rotations = await rotor.rotations()
    t.ok(rotations >= 4, `the tabs kept refreshing (${rotations} rotations)`)
    t.equal(answers.get(200), rotations, 'one refresh per rotation across the tabs')
    t.equal(await rotor.reuses(), 0, 'no reuse: the thief\'s tries were refused before the store')
    const last = await call<string | null>(pages[0] as Page, 'token')
    t.equal((await introspectToken(rotor.app, String(last)))['active'], true, 'the session is alive')
  })

  t.test('the naive client in the same storm: tabs refresh the same token, Rotor sees a reuse, and everyone is signed out', async (t) => {
    const rotor = await rotorFor(t, origin)
    use(rotor.base)
    const { context, pages } = await tabs(t, browser, origin, 'naive', TABS)
    const answers = refreshAnswers(context, rotor.base)
    const started = Date.now()
    for (const page of pages) await call(page, 'start', EVERY_MS)
    let seen = await seenBy(pages)
    while (Date.now() - started < 30_000 && !seen.every((tab) => tab.signedOut.length > 0)) {
      await sleep(250)
      seen = await seenBy(pages)
    }
    for (const page of pages) await call(page, 'stop')
    seen = await seenBy(pages)
    const signedOut = seen.filter((tab) => tab.signedOut.length > 0)
    const seconds = (Math.max(...signedOut.map((tab) => tab.signedOut[0]?.at ?? 0)) - started) / 1000
    t.equal(signedOut.length, TABS, 'every tab was signed out')
    t.ok(signedOut.every((tab) => ['token_reused', 'token_revoked'].includes(tab.signedOut[0]?.reason ?? '')), 'for reuse')
    t.ok(await rotor.reuses() >= 1, 'Rotor detected the reuse and ended the session')
    const sent = seen.reduce((sum, tab) => sum + tab.refreshes, 0)
    t.comment(`naive client storm: ${TABS} tabs, ${sent} refreshes sent for ${await rotor.rotations()} rotations, ${await rotor.reuses()} reuse detected, ${signedOut.length} of ${TABS} tabs signed out ${seconds.toFixed(1)} s in (${answers.get(401) ?? 0} refreshes answered 401)`)
  })

  t.test('signOut() in one tab: every tab\'s onSignedOut fires within a second, and the session is over at Rotor', async (t) => {
    const rotor = await rotorFor(t, origin, 600)
    use(rotor.base)
    const { pages, pair } = await tabs(t, browser, origin, 'rotor', TABS)
    for (const page of pages) t.equal(await call(page, 'token'), pair.access_token, 'every tab is signed in')
    const at = await call<number>(pages[2] as Page, 'now')
    t.equal(await call(pages[2] as Page, 'signOut'), true, 'Rotor confirmed the revocation')
    await sleep(1000)
    const seen = await seenBy(pages)
    const delays = seen.map((tab) => Math.round((tab.signedOut[0]?.at ?? Number.POSITIVE_INFINITY) - at))
    t.same(seen.map((tab) => tab.signedOut.map((entry) => entry.reason)), seen.map(() => ['signed_out']), 'every tab was told, once')
    t.ok(delays.every((delay) => delay < 1000), `within ${Math.max(...delays)} ms (${delays.join(', ')})`)
    for (const page of pages) t.equal(await call(page, 'token'), null)
    t.equal((await introspectToken(rotor.app, pair.access_token))['active'], false, 'the access token is revoked with its session')
  })

  t.test('an attacker replays a rotated refresh token from outside the browser: every tab is signed out at its next refresh, for reuse', async (t) => {
    const rotor = await rotorFor(t, origin)
    use(rotor.base)
    const { pages, pair } = await tabs(t, browser, origin, 'rotor', TABS)
    for (const page of pages) await call(page, 'start', EVERY_MS)
    while (await rotor.rotations() < 1) await sleep(100)
    const replay = await fetch(`${rotor.base}/v1/tokens/refresh`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: pair.refresh_token }) })
    t.match({ status: replay.status, body: await replay.json() }, { status: 401, body: { code: 'token_reused' } }, 'the thief is refused, and the session revoked')
    const deadline = Date.now() + ACCESS_TOKEN_TTL * 1000 + 2000
    let seen = await seenBy(pages)
    while (Date.now() < deadline && !seen.every((tab) => tab.signedOut.length > 0)) {
      await sleep(100)
      seen = await seenBy(pages)
    }
    for (const page of pages) await call(page, 'stop')
    t.same(seen.map((tab) => tab.signedOut.length), seen.map(() => 1), 'every tab was signed out, once')
    t.ok(seen.every((tab) => ['token_reused', 'token_revoked'].includes(tab.signedOut[0]?.reason ?? '')), `for ${[...new Set(seen.map((tab) => tab.signedOut[0]?.reason))].join(', ')}`)
    t.same(seen.map((tab) => tab.errors), seen.map(() => []))
  })
})
