import { Type } from 'typebox'

export const HealthSchema = Type.Object({
  status: Type.String(),
  store: Type.Optional(Type.String())
}, { additionalProperties: false })
