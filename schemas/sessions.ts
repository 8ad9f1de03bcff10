import { Type } from 'typebox'

/** One session of a subject, as the session routes list it (times in seconds since the epoch). */
const SessionProperties = {
  sid: Type.String({ description: 'the session id (the `sid` claim of its tokens)' }),
  created_at: Type.Integer({ description: 'when the session was issued' }),
  auth_time: Type.Integer({ description: 'the `auth_time` claim of its tokens: when the user signed in' }),
  last_refreshed_at: Type.Integer({ description: 'when a pair was last minted for it (its issuance, then each rotation)' }),
  expires_at: Type.Integer({ description: 'when its refresh token expires, never past SESSION_MAX_TTL' }),
  client_id: Type.Union([Type.String(), Type.Null()], { description: 'the name of the API key that issued it' }),
  device: Type.Union([Type.String(), Type.Null()], { description: 'the label the backend gave at issuance' })
}

export const SessionListSchema = Type.Object({
  sessions: Type.Array(Type.Object(SessionProperties, { additionalProperties: false }), { description: 'newest first' })
}, { additionalProperties: false })

export const MySessionListSchema = Type.Object({
  sessions: Type.Array(Type.Object({
    ...SessionProperties,
    current: Type.Boolean({ description: 'the session of the access token that asked' })
  }, { additionalProperties: false }), { description: 'newest first' })
}, { additionalProperties: false })

const Sid = Type.String({ minLength: 1, maxLength: 64 })

export const SubjectSessionParamsSchema = Type.Object({ sub: Type.String({ minLength: 1, maxLength: 255 }), sid: Sid })
export const SessionParamsSchema = Type.Object({ sid: Sid })
