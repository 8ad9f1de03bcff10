import { Type } from 'typebox'

// The OAuth wire's bodies are forms (every value a string); parameters a route does not know are
// ignored, as RFC 6749 §3.2 asks. Token values are plain strings: a malformed token is
// `invalid_grant` (or inactive), not a malformed request.
const Parameter = Type.String({ maxLength: 16 * 1024 })

export const OAuthTokenBodySchema = Type.Object({
  grant_type: Type.String({ description: 'refresh_token: the only grant Rotor answers' }),
  refresh_token: Type.Optional(Parameter),
  client_id: Type.Optional(Type.String({ description: 'a public client may name itself; it is not checked' })),
  scope: Type.Optional(Type.String({ description: 'ignored: Rotor grants no scopes' }))
}, { additionalProperties: true })

export const OAuthTokenParamsSchema = Type.Object({
  token: Parameter,
  token_type_hint: Type.Optional(Type.String({ description: 'access_token or refresh_token; a hint only, ignored when unknown' }))
}, { additionalProperties: true })

export const OAuthTokenResponseSchema = Type.Object({
  access_token: Type.String(),
  token_type: Type.Union([Type.Literal('Bearer'), Type.Literal('DPoP')], { description: 'DPoP for a session bound to a DPoP key (RFC 9449 §5), else Bearer' }),
  expires_in: Type.Integer({ description: 'seconds until the access token expires' }),
  refresh_token: Type.String(),
  refresh_expires_in: Type.Integer({ description: 'seconds until the refresh token expires (beyond RFC 6749)' })
}, { additionalProperties: false })

export const OAuthIntrospectionSchema = Type.Object({
  active: Type.Boolean(),
  client_id: Type.Optional(Type.String()),
  token_type: Type.Optional(Type.String({ description: 'Bearer for an access token, refresh_token for a refresh token' })),
  exp: Type.Optional(Type.Integer()),
  iat: Type.Optional(Type.Integer()),
  nbf: Type.Optional(Type.Integer()),
  sub: Type.Optional(Type.String()),
  aud: Type.Optional(Type.Union([Type.String(), Type.Array(Type.String())])),
  iss: Type.Optional(Type.String()),
  jti: Type.Optional(Type.String()),
  scope: Type.Optional(Type.String())
}, { additionalProperties: true, description: 'RFC 7662 §2.2; Rotor\'s claims (sid, auth_time, custom claims) beside the standard members' })

export const OAuthErrorSchema = Type.Object({
  error: Type.String({ description: 'RFC 6749 §5.2 error code' }),
  error_description: Type.String()
}, { additionalProperties: false })

/** The error answers an OAuth route may give, each in RFC 6749's shape. */
export function oauthErrorResponses (...statuses: number[]): Record<number, typeof OAuthErrorSchema> {
  return Object.fromEntries(statuses.map((status) => [status, OAuthErrorSchema]))
}

export const AuthorizationServerMetadataSchema = Type.Object({
  issuer: Type.String(),
  jwks_uri: Type.String(),
  token_endpoint: Type.String(),
  revocation_endpoint: Type.String(),
  introspection_endpoint: Type.String(),
  grant_types_supported: Type.Array(Type.String()),
  response_types_supported: Type.Array(Type.String()),
  token_endpoint_auth_methods_supported: Type.Array(Type.String()),
  revocation_endpoint_auth_methods_supported: Type.Array(Type.String()),
  introspection_endpoint_auth_methods_supported: Type.Array(Type.String()),
  dpop_signing_alg_values_supported: Type.Array(Type.String())
}, { additionalProperties: true, description: 'RFC 8414 authorization server metadata' })
