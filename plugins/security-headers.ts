import fp from 'fastify-plugin'

/**
 * The response headers that fit a JSON API (what @fastify/helmet would set, minus the HTML-page
 * ones that would break /docs): no MIME sniffing, no framing, no referrer, and no caching of
 * anything that carries a token (RFC 6749 §5.1). Fastify sends no x-powered-by.
 */
export default fp(async function securityHeadersPlugin (app) {
  app.addHook('onSend', async (request, reply) => {
    reply.header('x-content-type-options', 'nosniff')
    reply.header('x-frame-options', 'DENY')
    reply.header('referrer-policy', 'no-referrer')
    reply.header('cross-origin-resource-policy', 'same-site')
    if (request.method === 'POST') reply.header('cache-control', 'no-store')
  })
}, { name: 'security-headers', fastify: '5.x' })
