import { Type } from 'typebox'

/** SimpleJWT's bodies are DRF serializers: extra fields are ignored, so they are allowed here. */
export const SimpleRefreshBodySchema = Type.Object({ refresh: Type.Optional(Type.Unknown()) }, { additionalProperties: true })
export const SimpleTokenBodySchema = Type.Object({ token: Type.Optional(Type.Unknown()) }, { additionalProperties: true })

export const SimplePairSchema = Type.Object({ access: Type.String(), refresh: Type.String() }, { additionalProperties: false })

/** `401 {"detail": "Token is invalid or expired", "code": "token_not_valid"}`, as SimpleJWT answers. */
export const SimpleErrorSchema = Type.Object({ detail: Type.String(), code: Type.String() }, { additionalProperties: false })

/** `400 {"refresh": ["This field is required."]}` as DRF answers a field error, or `400 {"detail": "JSON parse error"}`. */
export const SimpleFieldErrorsSchema = Type.Record(Type.String(), Type.Union([Type.Array(Type.String()), Type.String()]))
