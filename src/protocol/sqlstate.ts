// The catalogue of PostgreSQL SQLSTATEs pgbastion itself reports to clients.
// Codes and their meaning follow PostgreSQL's errcodes.txt; never invent new ones.

export const SqlState = {
  PROTOCOL_VIOLATION: '08P01',
  CONNECTION_FAILURE: '08006',
  CONNECTION_EXCEPTION: '08000',
  FEATURE_NOT_SUPPORTED: '0A000',
  INVALID_AUTHORIZATION: '28000',
  INVALID_PASSWORD: '28P01',
  TOO_MANY_CONNECTIONS: '53300',
  CANNOT_CONNECT_NOW: '57P03',
  ADMIN_SHUTDOWN: '57P01',
  QUERY_CANCELED: '57014',
  IDLE_IN_TRANSACTION_TIMEOUT: '25P03',
  INSUFFICIENT_PRIVILEGE: '42501',
  INVALID_PARAMETER_VALUE: '22023',
  DUPLICATE_PSTATEMENT: '42P05',
  UNDEFINED_PSTATEMENT: '26000',
  INTERNAL_ERROR: 'XX000',
} as const;

export type SqlStateCode = (typeof SqlState)[keyof typeof SqlState];
