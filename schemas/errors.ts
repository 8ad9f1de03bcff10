import { Type, type Static } from 'typebox'

export const ErrorSchema = Type.Object({
  statusCode: Type.Integer(),
  code: Type.String({ description: 'stable error code, part of the API' }),
  error: Type.String(),
  message: Type.String()
}, { $id: 'Error', additionalProperties: false })
export type ErrorResponse = Static<typeof ErrorSchema>

export const EmptySchema = Type.Object({}, { additionalProperties: false })

/** The error answers a route may give, each with the one error envelope. */
export function errorResponses (...statuses: number[]): Record<number, typeof ErrorSchema> {
  return Object.fromEntries(statuses.map((status) => [status, ErrorSchema]))
}
