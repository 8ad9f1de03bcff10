import { Type, type Static } from 'typebox'

const Audience = Type.Union([
  Type.String({ minLength: 1, maxLength: 255 }),
  Type.Array(Type.String({ minLength: 1, maxLength: 255 }), { minItems: 1, maxItems: 16 })
])

export const IssueBodySchema = Type.Object({
  sub: Type.String({ minLength: 1, maxLength: 255, description: 'the subject, as the calling backend knows it' }),
  claims: Type.Optional(Type.Record(Type.String({ maxLength: 64 }), Type.Unknown(), {
    description: 'custom claims: carried by the refresh token and copied into every access token'
  })),
  aud: Type.Optional(Audience),
  device: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'a label for the session, as its "your devices" list shows it (e.g. "Firefox on Linux")' })),
  dpop_jkt: Type.Optional(Type.String({
    pattern: '^[A-Za-z0-9_-]{43}$',
    description: 'binds the session to a DPoP key (RFC 9449): the key\'s RFC 7638 SHA-256 thumbprint, base64url; every token carries it as cnf.jkt and every refresh needs a proof signed with that key'
  }))
}, { additionalProperties: false })
export type IssueBody = Static<typeof IssueBodySchema>

/** Token fields are plain strings here: a malformed token is a 401 token_invalid, not a 400. */
const TokenString = Type.String({ minLength: 1 })

export const RefreshBodySchema = Type.Object({ refresh_token: TokenString }, { additionalProperties: false })
export type RefreshBody = Static<typeof RefreshBodySchema>

export const TokenBodySchema = Type.Object({ token: TokenString }, { additionalProperties: false })
export type TokenBody = Static<typeof TokenBodySchema>

export const TokenPairSchema = Type.Object({
  access_token: Type.String(),
  refresh_token: Type.String(),
  token_type: Type.Literal('Bearer'),
  expires_in: Type.Integer({ description: 'seconds until the access token expires' }),
  refresh_expires_in: Type.Integer({ description: 'seconds until the refresh token expires' })
}, { additionalProperties: false })
export type TokenPairResponse = Static<typeof TokenPairSchema>

export const IntrospectionSchema = Type.Object({
  active: Type.Boolean(),
  sub: Type.Optional(Type.String()),
  sid: Type.Optional(Type.String()),
  jti: Type.Optional(Type.String()),
  exp: Type.Optional(Type.Integer()),
  iat: Type.Optional(Type.Integer()),
  iss: Type.Optional(Type.String()),
  token_type: Type.Optional(Type.String())
}, { additionalProperties: true, description: 'RFC 7662; custom claims appear beside the standard ones' })

export const SubjectParamsSchema = Type.Object({ sub: Type.String({ minLength: 1, maxLength: 255 }) })
