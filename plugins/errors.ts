import fp from 'fastify-plugin'
import { BODY_LIMIT, DrainingError, errorHandler, notFoundHandler } from '../src/errors.js'

/**
 * The one error handler and the 404 handler, the draining answer, and JSON as the only body: Fastify's text/plain
 * parser would let a non-JSON body reach a route, so every other type is a 415.
 */
export default fp(async function errorsPlugin (app) {
  app.setErrorHandler(errorHandler)
  app.setNotFoundHandler(notFoundHandler)
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('application/json', { parseAs: 'string', bodyLimit: BODY_LIMIT }, app.getDefaultJsonParser('error', 'error'))

  // From the start of a shutdown, requests that still arrive (on a kept-alive connection, or
  // pipelined) get the envelope's 503 with Retry-After rather than Fastify's bare one; those in
  // flight finish. A callback hook: it runs on every request.
  let draining = false
  app.addHook('preClose', (done) => {
    draining = true
    done()
  })
  app.addHook('onRequest', (_request, _reply, done) => {
    done(draining ? new DrainingError() : undefined)
  })
}, { name: 'errors', fastify: '5.x' })
