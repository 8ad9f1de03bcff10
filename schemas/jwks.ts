import { Type } from 'typebox'

export const JwksSchema = Type.Object({
  keys: Type.Array(Type.Object({
    kty: Type.String(),
    kid: Type.String(),
    alg: Type.String(),
    use: Type.String()
  }, { additionalProperties: true }))
}, { additionalProperties: false })
