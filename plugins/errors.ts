import fp from 'fastify-plugin'
import { BODY_LIMIT, errorHandler, notFoundHandler } from '../src/errors.js'

/**
 * The one error handler and the 404 handler, and JSON as the only body: Fastify's text/plain
 * parser would let a non-JSON body reach a route, so every other type is a 415.
 */
export default fp(async function errorsPlugin (app) {
  app.setErrorHandler(errorHandler)
  app.setNotFoundHandler(notFoundHandler)
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('application/json', { parseAs: 'string', bodyLimit: BODY_LIMIT }, app.getDefaultJsonParser('error', 'error'))
}, { name: 'errors', fastify: '5.x' })
