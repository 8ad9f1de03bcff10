import fp from 'fastify-plugin'

/**
 * The response headers that fit a JSON API (what @fastify/helmet would set, minus the HTML-page
 * ones that would break /docs): no MIME sniffing, no framing, no referrer, and no caching of
 * anything that carries a token (RFC 6749 §5.1). Fastify sends no x-powered-by.
 */
const HEADERS = {
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-resource-policy': 'same-site'
}
const NO_STORE = { ...HEADERS, 'cache-control': 'no-store' }

export default fp(async function securityHeadersPlugin (app) {
  // A callback hook, not an async one: it runs on every answer, and a promise per request shows on the profile.
  app.addHook('onSend', (request, reply, payload, done) => {
    reply.headers(request.method === 'POST' ? NO_STORE : HEADERS)
    done(null, payload)
  })
}, { name: 'security-headers', fastify: '5.x' })
