import fp from 'fastify-plugin'
import cors from '@fastify/cors'

/**
 * CORS for the browser-facing routes: exactly the configured origins, on every answer (errors
 * included, so a page can read `token_reused`), preflights cached for ten minutes. No
 * credentials: Rotor's tokens travel in JSON bodies, never in cookies.
 */
export default fp(async function corsPlugin (app, opts: { origins: string[] }) {
  const origins = new Set(opts.origins)
  await app.register(cors, {
    origin: (origin, callback) => { callback(null, origin !== undefined && origins.has(origin)) },
    methods: ['GET', 'POST', 'DELETE'],
    allowedHeaders: ['content-type', 'authorization', 'dpop'],
    exposedHeaders: ['retry-after', 'x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset', 'dpop-nonce'],
    credentials: false,
    maxAge: 600,
    // A malformed preflight is answered like any other, not with a text/plain 400.
    strictPreflight: false
  })
}, { name: 'cors', fastify: '5.x' })
